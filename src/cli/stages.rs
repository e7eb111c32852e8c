//! `falsifier stages`: print the stage vocabulary in forward order, or with `--arch`, what one
//! architecture is (its description in `model::arch`): RoPE, norms, biases, FFN and router,
//! its stages with their shapes, and its tensor table.

use clap::Args;

use super::Outcome;
use crate::error::Error;
use crate::model::arch::{Arch, ArchDesc, FfnKind, Role, TensorSpec, When, stage_dims};
use crate::trace::stage::{Scope, Stage, StageDtype};

#[derive(Args, Debug)]
pub struct StagesArgs {
    /// Describe one architecture (a `general.architecture` value: qwen3moe, qwen3, llama,
    /// qwen2, qwen2moe): its stages with shapes, RoPE, norms, router and tensor table.
    #[arg(long)]
    pub arch: Option<String>,
}

pub fn run(args: &StagesArgs) -> crate::Result<Outcome> {
    match &args.arch {
        None => vocabulary(),
        Some(name) => {
            let arch = Arch::from_name(name).ok_or_else(|| {
                let known: Vec<&str> = Arch::ALL.iter().map(|a| a.name()).collect();
                Error::input(format!(
                    "--arch: unknown architecture '{name}' (known: {})",
                    known.join(", ")
                ))
            })?;
            print!("{}", describe(arch.desc()));
        }
    }
    Ok(Outcome::Holds)
}

fn vocabulary() {
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
        } else if s.is_shared_expert_only() {
            " (MoE layers with a shared expert)"
        } else if matches!(s, Stage::QNorm | Stage::KNorm) {
            " (architectures with q/k norms)"
        } else {
            ""
        };
        println!("{:<16} {scope:<5} {dtype}{only}", s.name());
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// The text `falsifier stages --arch` prints.
pub fn describe(d: &ArchDesc) -> String {
    let mut out = format!("{}: {}\n", d.name, d.models);
    out += &format!("  RoPE pairing     {}\n", d.rope.name());
    let scaled = if d.model_tensors().any(|t| t.role == Role::RopeFreqs) {
        "divided by rope_freqs.weight when the file has it"
    } else {
        "none"
    };
    out += &format!("  RoPE scaling     {scaled}\n");
    out += &format!("  q/k norm         {}\n", yes_no(d.qk_norm));
    out += &format!("  q/k/v biases     {}\n", yes_no(d.qkv_bias));
    let variants: Vec<(bool, &str)> = match &d.ffn {
        FfnKind::Dense => {
            out += "  FFN              dense SwiGLU\n";
            vec![(false, "")]
        }
        FfnKind::Moe(m) | FfnKind::DenseOrMoe(m) => {
            let router = format!(
                "softmax over the experts, top-k{}",
                if m.renorm_topk {
                    ", renormalised to sum 1"
                } else {
                    ", not renormalised"
                }
            );
            let shared = m
                .shared_expert_width_key
                .map(|_| "; a shared expert scaled by sigmoid(ffn_gate_inp_shexp · x), added")
                .unwrap_or("");
            if matches!(d.ffn, FfnKind::DenseOrMoe(_)) {
                out += &format!(
                    "  FFN              dense SwiGLU; with {}.expert_count, experts: {router}{shared}\n",
                    d.name
                );
                vec![(false, " (dense)"), (true, " (with experts)")]
            } else {
                out += &format!("  FFN              experts: {router}{shared}\n");
                vec![(true, "")]
            }
        }
    };
    for (moe, label) in variants {
        out += &format!("stages{label}:\n");
        for s in Stage::ALL.into_iter().filter(|&s| d.has_stage(moe, s)) {
            let dims: Vec<&str> = stage_dims(s).iter().map(|x| x.symbol()).collect();
            out += &format!("  {:<16} [{}]\n", s.name(), dims.join(","));
        }
    }
    out += "tensors (ggml dims, fastest first):\n";
    let layer = d
        .layer_tensors
        .iter()
        .map(|t| (format!("blk.N.{}", t.name), t));
    let model = |ts: &'static [TensorSpec]| ts.iter().map(|t| (t.name.to_string(), t));
    for (name, t) in model(d.head_tensors)
        .chain(layer)
        .chain(model(d.tail_tensors))
    {
        let dims: Vec<&str> = t.dims.iter().map(|x| x.symbol()).collect();
        out += &format!("  {name:<34} [{}] {}\n", dims.join(","), role(t));
    }
    out
}

/// What a tensor is to the forward, in words.
fn role(t: &TensorSpec) -> String {
    let mut s = match t.role {
        Role::Produces(st) => format!("produces {st}"),
        Role::Inner => "matmul inside the FFN".to_string(),
        Role::Gain(st) => format!("gain of {st}"),
        Role::Bias(st) => format!("bias of {st}"),
        Role::Embedding => "embedding rows".to_string(),
        Role::RopeFreqs => "RoPE frequency divisors".to_string(),
    };
    match t.when {
        When::Always => {}
        When::Dense => s += " (dense layers)",
        When::Moe => s += " (expert layers)",
        When::SharedExpert => s += " (shared expert)",
    }
    if t.optional {
        s += " (optional)";
    }
    s
}
