//! `falsifier stages`: print the stage vocabulary in forward order.

use super::Outcome;
use crate::trace::stage::{Scope, Stage, StageDtype};

pub fn run() -> crate::Result<Outcome> {
    for s in Stage::ALL {
        let scope = match s.scope() {
            Scope::Head | Scope::Tail => "model",
            Scope::Layer => "layer",
        };
        let dtype = match s.dtype() {
            StageDtype::F32 => "f32",
            StageDtype::I32 => "i32",
        };
        let only = if s.is_moe_only() {
            " (MoE layers)"
        } else if s.is_dense_only() {
            " (dense FFN layers)"
        } else {
            ""
        };
        println!("{:<14} {scope:<5} {dtype}{only}", s.name());
    }
    Ok(Outcome::Holds)
}
