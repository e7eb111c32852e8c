//! Integer ids (tokens, topk_ids) out of a tensor view. APRT stores every stage as f32, so f32
//! values are accepted when they sit within 1e-3 of an integer; anything else is bad input.

use crate::error::{Error, Result};
use crate::trace::tensor::{TensorView, ViewData};

/// The ids `v` holds; `what` names the tensor in the error (`reference <path>: `key``).
pub(super) fn integer_ids(v: &TensorView<'_>, what: impl Fn() -> String) -> Result<Vec<i32>> {
    match &v.data {
        ViewData::I32(x) => Ok(x.to_vec()),
        ViewData::F32(x) => x
            .iter()
            .enumerate()
            .map(|(i, &f)| {
                let r = f.round();
                if f.is_finite()
                    && (f - r).abs() <= 1e-3 * r.abs().max(1.0)
                    && r.abs() < 2f32.powi(31)
                {
                    Ok(r as i32)
                } else {
                    Err(Error::input(format!(
                        "{} at index {i}: {f} is not an integer id",
                        what()
                    )))
                }
            })
            .collect(),
    }
}
