//! `falsifier gen-model`: write a deterministic synthetic qwen3moe / qwen3 GGUF from a preset,
//! with optional shape overrides.

use std::path::PathBuf;

use clap::Args;

use super::Outcome;
use crate::error::{Error, Result};
use crate::model::GgmlType;
use crate::model::config::ModelConfig;
use crate::model::gguf::parse_size;
use crate::model::synth::{self, Fallback, PRESETS, SynthQuant};

#[derive(Args, Debug)]
pub struct GenModelArgs {
    /// Shape preset: tiny-moe, tiny-dense, tiny-llama, tiny-mixtral, tiny-qwen2, tiny-qwen2moe,
    /// qwen3-30b-a3b, llama3-8b, mixtral-8x7b, qwen2.5-7b or qwen2-57b-a14b.
    #[arg(long)]
    pub preset: String,
    /// Weight type: f32, f16, bf16, q8_0, q4_0, iq4_nl, mxfp4 (one type for every weight), or a
    /// llama.cpp mix: q4_k_m or iq4_xs (what llama-quantize writes for Q4_K_M / IQ4_XS).
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
    /// Split the model as llama.cpp's gguf-split does, at most SIZE of tensor data per shard
    /// (500M = 500*10^6 bytes, 2G = 2*10^9, or bytes): OUT without .gguf, then
    /// -00001-of-0000N.gguf, ...; the first shard holds the metadata.
    #[arg(long, value_name = "SIZE")]
    pub split_max_size: Option<String>,
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
    let split = a
        .split_max_size
        .as_deref()
        .map(|v| parse_size(v).map_err(|e| e.context("--split-max-size")))
        .transpose()?;
    let bar = super::progress::Bar::bytes();
    let s = match split {
        None => synth::generate_with(&c, quant, a.seed, &name, &a.out, &bar)?,
        Some(max) => synth::generate_split_with(&c, quant, a.seed, &name, &a.out, max, &bar)?,
    };
    let types: Vec<String> = s.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    let wrote = match s.files.as_slice() {
        [one] if split.is_none() => one.display().to_string(),
        [first, .., last] => format!(
            "{} shards {} .. {}",
            s.files.len(),
            first.display(),
            last.display()
        ),
        [one] => format!("1 shard {}", one.display()),
        [] => String::new(),
    };
    println!(
        "wrote {}: {} {} layers, {:.1}M parameters, {} tensors ({}), {:.1} MiB in {:.1}s",
        wrote,
        c.arch,
        c.n_layers,
        s.n_params as f64 / 1e6,
        s.n_tensors,
        types.join(", "),
        s.bytes as f64 / (1 << 20) as f64,
        s.elapsed.as_secs_f64()
    );
    print!("{}", fallback_text(&c, quant));
    Ok(Outcome::Holds)
}

/// Values per K-quant super-block: a row must hold whole super-blocks to be K-quantized.
const SUPER_BLOCK: u64 = 256;

/// Which tensors fell back from their intended type and why, and, when a mix (`q4_k_m`,
/// `iq4_xs`) wrote no tensor of 256-value super-blocks at all, shape flags that give them
/// (checked against the same rules).
fn fallback_text(c: &ModelConfig, quant: SynthQuant) -> String {
    let fallbacks = synth::fallbacks(c, quant);
    let mut out = String::new();
    if fallbacks.is_empty() {
        return out;
    }
    out.push_str(&format!(
        "{} tensor(s) fell back from their intended type, as llama.cpp does, because their rows are not whole blocks of it:\n",
        fallbacks.len()
    ));
    // one line per (intended, written, row length), in file order
    let mut groups: Vec<(&Fallback, Vec<&str>)> = Vec::new();
    for f in &fallbacks {
        match groups
            .iter_mut()
            .find(|(g, _)| (g.intended, g.written, g.row) == (f.intended, f.written, f.row))
        {
            Some((_, names)) => names.push(&f.name),
            None => groups.push((f, vec![&f.name])),
        }
    }
    for (g, names) in &groups {
        let shown: Vec<&str> = names.iter().take(4).copied().collect();
        let more = names.len().saturating_sub(shown.len());
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        out.push_str(&format!(
            "  {} -> {}: {} tensor(s), rows of {} values are not a multiple of {} ({}{more})\n",
            g.intended,
            g.written,
            names.len(),
            g.row,
            g.intended.block_values(),
            shown.join(", ")
        ));
    }
    let wrote_k = synth::tensor_types(c, quant).iter().any(|t| is_k_quant(*t));
    if quant.is_mix() && !wrote_k {
        let what = if quant == SynthQuant::IQ4_XS {
            "IQ4_XS or K-quant"
        } else {
            "K-quant"
        };
        out.push_str(&format!(
            "no {what} tensor was written: they need rows that are multiples of {SUPER_BLOCK} values"
        ));
        match k_quant_shape(c, quant) {
            Some(flags) => out.push_str(&format!("; for a shape that has them, add {flags}\n")),
            None => out.push('\n'),
        }
    }
    out
}

fn is_k_quant(t: GgmlType) -> bool {
    t.block_values() as u64 == SUPER_BLOCK
}

/// Shape flags that make every row of `c` whole super-blocks (the smallest such sizes at or
/// above the current ones), when they leave no K-quant to fall back.
fn k_quant_shape(c: &ModelConfig, quant: SynthQuant) -> Option<String> {
    let up = |x: usize, m: usize| x.div_ceil(m).checked_mul(m);
    let sb = SUPER_BLOCK as usize;
    let mut k = c.clone();
    let mut flags = Vec::new();
    k.hidden = up(c.hidden, sb)?;
    if k.hidden != c.hidden {
        flags.push(format!("--hidden {}", k.hidden));
    }
    // attn_output's rows are heads x head_dim values
    let step = sb / gcd(c.n_heads.max(1), sb);
    k.head_dim = up(c.head_dim, step)?;
    if k.head_dim != c.head_dim {
        flags.push(format!("--head-dim {}", k.head_dim));
    }
    if c.n_experts > 0 {
        k.expert_ffn_dim = up(c.expert_ffn_dim, sb)?;
        if k.expert_ffn_dim != c.expert_ffn_dim {
            flags.push(format!("--expert-ffn {}", k.expert_ffn_dim));
        }
    } else {
        k.ffn_dim = up(c.ffn_dim, sb)?;
        if k.ffn_dim != c.ffn_dim {
            flags.push(format!("--ffn {}", k.ffn_dim));
        }
    }
    let k_fallbacks = synth::fallbacks(&k, quant)
        .iter()
        .any(|f| is_k_quant(f.intended));
    (!flags.is_empty() && !k_fallbacks).then(|| flags.join(" "))
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}
