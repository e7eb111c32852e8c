//! `falsifier gen-model`: write a deterministic synthetic qwen3moe / qwen3 GGUF from a preset,
//! with optional shape overrides.

use std::path::PathBuf;

use clap::Args;

use super::Outcome;
use crate::error::{Error, Result};
use crate::model::synth::{self, PRESETS, SynthQuant};

#[derive(Args, Debug)]
pub struct GenModelArgs {
    /// Shape preset: tiny-moe, tiny-dense or qwen3-30b-a3b.
    #[arg(long)]
    pub preset: String,
    /// Weight type: f32, f16, bf16, q8_0, q4_0 or q4_k_m (llama.cpp's Q4_K_M mix).
    #[arg(long, default_value = "f32")]
    pub quant: String,
    /// Seed of the weights; the same seed gives the same file.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output GGUF path.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub layers: Option<usize>,
    #[arg(long)]
    pub hidden: Option<usize>,
    #[arg(long)]
    pub heads: Option<usize>,
    #[arg(long)]
    pub kv_heads: Option<usize>,
    #[arg(long)]
    pub head_dim: Option<usize>,
    /// Number of experts (MoE presets).
    #[arg(long)]
    pub experts: Option<usize>,
    /// Experts used per token (MoE presets).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Expert FFN width (MoE presets).
    #[arg(long)]
    pub expert_ffn: Option<usize>,
    /// Dense FFN width (feed_forward_length).
    #[arg(long)]
    pub ffn: Option<usize>,
    #[arg(long)]
    pub vocab: Option<usize>,
    #[arg(long)]
    pub rope_theta: Option<f32>,
    /// Context length written to the metadata.
    #[arg(long)]
    pub ctx: Option<usize>,
}

pub fn run(a: &GenModelArgs) -> Result<Outcome> {
    let mut c = synth::preset(&a.preset).ok_or_else(|| {
        Error::input(format!(
            "--preset {}: unknown preset (known: {})",
            a.preset,
            PRESETS.join(", ")
        ))
    })?;
    let quant = SynthQuant::from_name(&a.quant).ok_or_else(|| {
        let known: Vec<_> = SynthQuant::ALL
            .iter()
            .map(|q| q.name().to_lowercase())
            .collect();
        Error::input(format!(
            "--quant {}: unknown type (known: {})",
            a.quant,
            known.join(", ")
        ))
    })?;
    synth::Overrides {
        layers: a.layers,
        hidden: a.hidden,
        heads: a.heads,
        kv_heads: a.kv_heads,
        head_dim: a.head_dim,
        ffn: a.ffn,
        vocab: a.vocab,
        experts: a.experts,
        top_k: a.top_k,
        expert_ffn: a.expert_ffn,
    }
    .apply(&mut c)
    .map_err(|e| Error::input(format!("--preset {}: {e}", a.preset)))?;
    if let Some(ctx) = a.ctx {
        c.context_length = ctx;
    }
    if let Some(t) = a.rope_theta {
        c.rope_theta = t;
    }
    let name = format!(
        "falsifier-synth-{}-seed{}-{}",
        a.preset,
        a.seed,
        quant.name()
    );
    let s = synth::generate_with(
        &c,
        quant,
        a.seed,
        &name,
        &a.out,
        &super::progress::Bar::bytes(),
    )?;
    let types: Vec<String> = s.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    println!(
        "wrote {}: {} {} layers, {:.1}M parameters, {} tensors ({}), {:.1} MiB in {:.1}s",
        a.out.display(),
        c.arch,
        c.n_layers,
        s.n_params as f64 / 1e6,
        s.n_tensors,
        types.join(", "),
        s.bytes as f64 / (1 << 20) as f64,
        s.elapsed.as_secs_f64()
    );
    Ok(Outcome::Holds)
}
