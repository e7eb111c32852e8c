//! Synthetic models: deterministic qwen3moe / qwen3 GGUF files of any shape, from a seed.
//!
//! The metadata, tensor names and order, and the byte-level tokenizer mirror the golden GGUF
//! (fixtures/qwen3moe-tiny, written with gguf-py), so llama.cpp can load what we write. Weights
//! come from a hand-written PRNG using only integer and basic IEEE arithmetic (no libm), so a
//! seed gives the same bytes on every machine. Every tensor is cut into slices of whole rows,
//! each with its own stream seeded from (seed, tensor name, slice index); slices are generated
//! and quantized in parallel but written in order, so memory stays bounded (a few hundred MB
//! for the 30B-A3B shape) and the bytes do not depend on the thread count.
//!
//! Quantization: `f32`, `f16`, `bf16`, `q8_0` and `q4_0` follow convert_hf_to_gguf / the golden
//! script (1-D tensors, `*_norm` and `ffn_gate_inp` stay F32; a row that is not whole blocks
//! falls back to F16). `iq4_nl` and `mxfp4` put every such tensor in that one type (a row that
//! is not whole 32-value blocks falls back to F16; llama-quantize would refuse it). `q4_k_m` and
//! `iq4_xs` follow llama.cpp's `llama_tensor_get_type` for LLAMA_FTYPE_MOSTLY_Q4_K_M and
//! LLAMA_FTYPE_MOSTLY_IQ4_XS (no importance matrix), fallbacks included.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::model::GgmlType;
use crate::model::config::{Arch, ModelConfig};
use crate::model::gguf::{GgufWriter, MetaValue};
use crate::model::quant::quantize::quantize;
use crate::progress::{NoProgress, Progress};

/// Values per generated slice (rounded to whole rows, at least one row).
const SLICE_VALUES: usize = 1 << 20;

/// The quantization schemes the generator writes.
#[allow(non_camel_case_types)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SynthQuant {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_K_M,
    IQ4_NL,
    IQ4_XS,
    MXFP4,
}

impl SynthQuant {
    pub const ALL: [SynthQuant; 9] = [
        SynthQuant::F32,
        SynthQuant::F16,
        SynthQuant::BF16,
        SynthQuant::Q8_0,
        SynthQuant::Q4_0,
        SynthQuant::Q4_K_M,
        SynthQuant::IQ4_NL,
        SynthQuant::IQ4_XS,
        SynthQuant::MXFP4,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SynthQuant::F32 => "F32",
            SynthQuant::F16 => "F16",
            SynthQuant::BF16 => "BF16",
            SynthQuant::Q8_0 => "Q8_0",
            SynthQuant::Q4_0 => "Q4_0",
            SynthQuant::Q4_K_M => "Q4_K_M",
            SynthQuant::IQ4_NL => "IQ4_NL",
            SynthQuant::IQ4_XS => "IQ4_XS",
            SynthQuant::MXFP4 => "MXFP4",
        }
    }

    /// Case-insensitive (`q4_k_m`, `BF16`).
    pub fn from_name(s: &str) -> Option<SynthQuant> {
        SynthQuant::ALL
            .into_iter()
            .find(|q| q.name().eq_ignore_ascii_case(s))
    }

    /// llama.cpp's `enum llama_ftype`, written as `general.file_type`.
    pub fn file_type(self) -> u32 {
        match self {
            SynthQuant::F32 => 0,
            SynthQuant::F16 => 1,
            SynthQuant::Q4_0 => 2,
            SynthQuant::Q8_0 => 7,
            SynthQuant::Q4_K_M => 15,
            SynthQuant::IQ4_NL => 25,
            SynthQuant::IQ4_XS => 30,
            // LLAMA_FTYPE_MOSTLY_MXFP4_MOE, the only MXFP4 file type llama.cpp names
            SynthQuant::MXFP4 => 38,
            SynthQuant::BF16 => 32,
        }
    }

    /// The type most tensors get (convert's target type, or llama-quantize's default).
    fn base_type(self) -> GgmlType {
        match self {
            SynthQuant::F32 => GgmlType::F32,
            SynthQuant::F16 => GgmlType::F16,
            SynthQuant::BF16 => GgmlType::BF16,
            SynthQuant::Q8_0 => GgmlType::Q8_0,
            SynthQuant::Q4_0 => GgmlType::Q4_0,
            SynthQuant::Q4_K_M => GgmlType::Q4_K,
            SynthQuant::IQ4_NL => GgmlType::IQ4_NL,
            SynthQuant::IQ4_XS => GgmlType::IQ4_XS,
            SynthQuant::MXFP4 => GgmlType::MXFP4,
        }
    }

    /// Whether this is a llama-quantize mix (per-tensor types and llama.cpp's fallbacks for
    /// rows that are not whole blocks) rather than one type for every weight.
    pub fn is_mix(self) -> bool {
        matches!(self, SynthQuant::Q4_K_M | SynthQuant::IQ4_XS)
    }
}

/// Preset names, for help and error messages: a tiny model and a real shape per architecture.
pub const PRESETS: [&str; 11] = [
    "tiny-moe",
    "tiny-dense",
    "qwen3-30b-a3b",
    "tiny-llama",
    "tiny-mixtral",
    "tiny-qwen2",
    "tiny-qwen2moe",
    "llama3-8b",
    "mixtral-8x7b",
    "qwen2.5-7b",
    "qwen2-57b-a14b",
];

/// The shape of a named preset. Real shapes are the models' own (their Hugging Face configs as
/// llama.cpp's converter writes them); a contract or `--layers` cuts the layer count where the
/// whole model cannot be generated and checked in one go (Mixtral 8x7B is 47 B weights).
pub fn preset(name: &str) -> Option<ModelConfig> {
    let tiny = ModelConfig {
        arch: Arch::Qwen3Moe,
        moe: true,
        n_layers: 3,
        hidden: 64,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 32,
        vocab: 260,
        rope_theta: 1e6,
        rms_eps: 1e-6,
        context_length: 256,
        ffn_dim: 128,
        n_experts: 8,
        n_experts_used: 2,
        expert_ffn_dim: 32,
        shared_ffn_dim: 0,
        norm_topk_prob: true,
        rope_freqs: false,
    };
    let dense = |arch| ModelConfig {
        arch,
        moe: false,
        n_layers: 2,
        n_experts: 0,
        n_experts_used: 0,
        expert_ffn_dim: 0,
        norm_topk_prob: false,
        ..tiny.clone()
    };
    match name {
        "tiny-moe" => Some(tiny),
        "tiny-dense" => Some(dense(Arch::Qwen3)),
        "qwen3-30b-a3b" => Some(ModelConfig {
            arch: Arch::Qwen3Moe,
            moe: true,
            n_layers: 48,
            hidden: 2048,
            n_heads: 32,
            n_kv_heads: 4,
            head_dim: 128,
            vocab: 151936,
            rope_theta: 1e7,
            rms_eps: 1e-6,
            context_length: 40960,
            ffn_dim: 6144,
            n_experts: 128,
            n_experts_used: 8,
            expert_ffn_dim: 768,
            shared_ffn_dim: 0,
            norm_topk_prob: true,
            rope_freqs: false,
        }),
        // Llama 3 style: GQA, head_dim 16, RoPE scaled through rope_freqs
        "tiny-llama" => Some(ModelConfig {
            head_dim: 16,
            rope_theta: 5e5,
            rms_eps: 1e-5,
            rope_freqs: true,
            ..dense(Arch::Llama)
        }),
        // Mixtral: llama with experts, the expert width written as feed_forward_length
        "tiny-mixtral" => Some(ModelConfig {
            arch: Arch::Llama,
            head_dim: 16,
            rms_eps: 1e-5,
            ffn_dim: 32,
            n_layers: 2,
            ..tiny.clone()
        }),
        "tiny-qwen2" => Some(ModelConfig {
            head_dim: 16,
            ..dense(Arch::Qwen2)
        }),
        "tiny-qwen2moe" => Some(ModelConfig {
            arch: Arch::Qwen2Moe,
            head_dim: 16,
            n_layers: 2,
            shared_ffn_dim: 64,
            norm_topk_prob: false,
            ..tiny.clone()
        }),
        // Meta-Llama-3.1-8B: rope_freqs from its llama3 rope_scaling
        "llama3-8b" => Some(ModelConfig {
            arch: Arch::Llama,
            moe: false,
            n_layers: 32,
            hidden: 4096,
            n_heads: 32,
            n_kv_heads: 8,
            head_dim: 128,
            vocab: 128256,
            rope_theta: 5e5,
            rms_eps: 1e-5,
            context_length: 131072,
            ffn_dim: 14336,
            n_experts: 0,
            n_experts_used: 0,
            expert_ffn_dim: 0,
            shared_ffn_dim: 0,
            norm_topk_prob: false,
            rope_freqs: true,
        }),
        "mixtral-8x7b" => Some(ModelConfig {
            arch: Arch::Llama,
            moe: true,
            n_layers: 32,
            hidden: 4096,
            n_heads: 32,
            n_kv_heads: 8,
            head_dim: 128,
            vocab: 32000,
            rope_theta: 1e6,
            rms_eps: 1e-5,
            context_length: 32768,
            ffn_dim: 14336,
            n_experts: 8,
            n_experts_used: 2,
            expert_ffn_dim: 14336,
            shared_ffn_dim: 0,
            norm_topk_prob: true,
            rope_freqs: false,
        }),
        "qwen2.5-7b" => Some(ModelConfig {
            arch: Arch::Qwen2,
            moe: false,
            n_layers: 28,
            hidden: 3584,
            n_heads: 28,
            n_kv_heads: 4,
            head_dim: 128,
            vocab: 152064,
            rope_theta: 1e6,
            rms_eps: 1e-6,
            context_length: 32768,
            ffn_dim: 18944,
            n_experts: 0,
            n_experts_used: 0,
            expert_ffn_dim: 0,
            shared_ffn_dim: 0,
            norm_topk_prob: false,
            rope_freqs: false,
        }),
        "qwen2-57b-a14b" => Some(ModelConfig {
            arch: Arch::Qwen2Moe,
            moe: true,
            n_layers: 28,
            hidden: 3584,
            n_heads: 28,
            n_kv_heads: 4,
            head_dim: 128,
            vocab: 151936,
            rope_theta: 1e6,
            rms_eps: 1e-6,
            context_length: 32768,
            ffn_dim: 18944,
            n_experts: 64,
            n_experts_used: 8,
            expert_ffn_dim: 2560,
            shared_ffn_dim: 20480,
            norm_topk_prob: false,
            rope_freqs: false,
        }),
        _ => None,
    }
}

/// Changes to a preset's shape, as `falsifier gen-model`'s flags and a contract model's keys
/// spell them; `None` keeps the preset's value.
#[derive(Clone, Copy, Debug, Default)]
pub struct Overrides {
    pub layers: Option<usize>,
    pub hidden: Option<usize>,
    pub heads: Option<usize>,
    pub kv_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub ffn: Option<usize>,
    pub vocab: Option<usize>,
    pub experts: Option<usize>,
    pub top_k: Option<usize>,
    pub expert_ffn: Option<usize>,
}

impl Overrides {
    /// Apply to `c`. Expert fields on a dense preset are an error (the message names them).
    pub fn apply(&self, c: &mut ModelConfig) -> std::result::Result<(), String> {
        let set = |field: &mut usize, v: Option<usize>| {
            if let Some(v) = v {
                *field = v;
            }
        };
        set(&mut c.n_layers, self.layers);
        set(&mut c.hidden, self.hidden);
        set(&mut c.n_heads, self.heads);
        set(&mut c.n_kv_heads, self.kv_heads);
        set(&mut c.head_dim, self.head_dim);
        set(&mut c.ffn_dim, self.ffn);
        set(&mut c.vocab, self.vocab);
        if c.is_moe() {
            set(&mut c.n_experts, self.experts);
            set(&mut c.n_experts_used, self.top_k);
            set(&mut c.expert_ffn_dim, self.expert_ffn);
        } else if self.experts.is_some() || self.top_k.is_some() || self.expert_ffn.is_some() {
            return Err("a dense model has no experts (experts, top_k, expert_ffn)".to_string());
        }
        Ok(())
    }
}

/// Most layers a synthetic model may have: real models have at most a few hundred, and lint
/// lists every tensor of a preset (12 per layer) without generating it.
pub const MAX_LAYERS: usize = 1 << 12;
/// Largest single size (hidden, heads, head_dim, ffn, vocab, experts, ctx) of a synthetic
/// model: 2^24, far above real models (vocabularies of 262,144, hidden sizes of 16,384), low
/// enough that the tokenizer the generator writes (one string per token) stays small.
pub const MAX_SIZE: usize = 1 << 24;
/// Most weights a synthetic model may have: 2^42 (4.4 T parameters, 17.6 TB as f32).
pub const MAX_PARAMS: u64 = 1 << 42;

/// Check that a (possibly overridden) shape makes a model, within the bounds above, so that
/// neither lint nor the generator ever sizes work or memory by an absurd count.
pub fn check_shape(c: &ModelConfig) -> Result<()> {
    let bad = |msg: String| Err(Error::input(format!("model shape: {msg}")));
    let sizes = [
        ("layers", c.n_layers),
        ("hidden", c.hidden),
        ("heads", c.n_heads),
        ("kv-heads", c.n_kv_heads),
        ("head-dim", c.head_dim),
        ("vocab", c.vocab),
        ("ctx", c.context_length),
    ];
    if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
        return bad(format!("--{name} must be positive"));
    }
    if c.n_layers > MAX_LAYERS {
        return bad(format!(
            "--layers {} exceeds the limit of {MAX_LAYERS}",
            c.n_layers
        ));
    }
    let bounded = [
        ("hidden", c.hidden),
        ("heads", c.n_heads),
        ("kv-heads", c.n_kv_heads),
        ("head-dim", c.head_dim),
        ("ffn", c.ffn_dim),
        ("vocab", c.vocab),
        ("experts", c.n_experts),
        ("expert-ffn", c.expert_ffn_dim),
        ("ctx", c.context_length),
    ];
    if let Some((name, v)) = bounded.iter().find(|(_, v)| *v > MAX_SIZE) {
        return bad(format!(
            "--{name} {v} exceeds the limit of {MAX_SIZE} (2^24)"
        ));
    }
    c.check_products().or_else(bad)?;
    match c.n_params() {
        Some(n) if n <= MAX_PARAMS => {}
        Some(n) => {
            return bad(format!(
                "{n} parameters exceed the limit of {MAX_PARAMS} (2^42)"
            ));
        }
        None => return bad("the parameter count overflows 64 bits".into()),
    }
    if !c.n_heads.is_multiple_of(c.n_kv_heads) {
        return bad(format!(
            "--kv-heads {} does not divide --heads {}",
            c.n_kv_heads, c.n_heads
        ));
    }
    if c.is_moe() {
        if c.n_experts == 0 || c.n_experts_used == 0 || c.expert_ffn_dim == 0 {
            return bad("--experts, --top-k and --expert-ffn must be positive for MoE".into());
        }
        if c.n_experts_used > c.n_experts {
            return bad(format!(
                "--top-k {} exceeds --experts {}",
                c.n_experts_used, c.n_experts
            ));
        }
    } else if c.ffn_dim == 0 {
        return bad("--ffn must be positive for a dense model".into());
    }
    if !(c.rope_theta.is_finite() && c.rope_theta > 0.0) {
        return bad(format!("--rope-theta {} must be positive", c.rope_theta));
    }
    Ok(())
}

/// ggml type of tensor `name` (ggml `dims`) under `quant`.
pub fn tensor_type(c: &ModelConfig, quant: SynthQuant, name: &str, dims: &[u64]) -> GgmlType {
    let row = dims.first().copied().unwrap_or(1);
    fit_row(quant, intended_type(c, quant, name, dims), row)
}

/// The type `name` gets under `quant` when its rows are whole blocks of that type.
fn intended_type(c: &ModelConfig, quant: SynthQuant, name: &str, dims: &[u64]) -> GgmlType {
    // convert_hf_to_gguf keeps these F32, and llama-quantize does not touch them
    if dims.len() <= 1 || name.ends_with("_norm.weight") || name.contains(".ffn_gate_inp.") {
        return GgmlType::F32;
    }
    match quant {
        SynthQuant::Q4_K_M => q4_k_m_type(c, name),
        SynthQuant::IQ4_XS => iq4_xs_type(c, name),
        _ => quant.base_type(),
    }
}

/// The type a row of `row` values gets when `t` was intended: `t` when the row is whole blocks
/// of it; else convert_hf_to_gguf falls back to F16, and llama-quantize (Q4_K_M, IQ4_XS) first
/// to a type of about the same size with 32-value blocks, then to F16.
fn fit_row(quant: SynthQuant, t: GgmlType, row: u64) -> GgmlType {
    let fits = |t: GgmlType| row.is_multiple_of(t.block_values() as u64);
    if fits(t) {
        return t;
    }
    if quant.is_mix() {
        let legacy = match t {
            GgmlType::Q4_K => GgmlType::Q5_0,
            GgmlType::Q5_K => GgmlType::Q5_1,
            GgmlType::Q6_K => GgmlType::Q8_0,
            GgmlType::IQ4_XS => GgmlType::IQ4_NL,
            other => other,
        };
        if fits(legacy) {
            return legacy;
        }
    }
    GgmlType::F16
}

/// The type of every tensor of shape `c` under `quant`, in file order.
pub fn tensor_types(c: &ModelConfig, quant: SynthQuant) -> Vec<GgmlType> {
    c.expected_tensors()
        .iter()
        .map(|(name, dims)| tensor_type(c, quant, name, dims))
        .collect()
}

/// A tensor that did not get its intended type because its rows are not whole blocks of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Fallback {
    pub name: String,
    /// Values per row (the tensor's first ggml dimension).
    pub row: u64,
    pub intended: GgmlType,
    pub written: GgmlType,
}

/// The tensors of shape `c` under `quant` that fall back to another type, in file order.
pub fn fallbacks(c: &ModelConfig, quant: SynthQuant) -> Vec<Fallback> {
    c.expected_tensors()
        .into_iter()
        .filter_map(|(name, dims)| {
            let row = dims.first().copied().unwrap_or(1);
            let intended = intended_type(c, quant, &name, &dims);
            let written = fit_row(quant, intended, row);
            (written != intended).then_some(Fallback {
                name,
                row,
                intended,
                written,
            })
        })
        .collect()
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third
/// layer between.
pub fn use_more_bits(i: usize, n: usize) -> bool {
    // `i - n / 8` cannot underflow: the first test already took i < n / 8
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// `llama_tensor_get_type` for LLAMA_FTYPE_MOSTLY_Q4_K_M (no imatrix, no overrides), before
/// the fallback for rows that are not whole blocks ([`fit_row`]).
fn q4_k_m_type(c: &ModelConfig, name: &str) -> GgmlType {
    let layer = name
        .strip_prefix("blk.")
        .and_then(|s| s.split('.').next())
        .and_then(|s| s.parse::<usize>().ok());
    let more_bits = layer.is_some_and(|i| use_more_bits(i, c.n_layers));
    let eight_experts = c.n_experts == 8;
    let mut t = GgmlType::Q4_K;
    if name == "output.weight" {
        // Q6_K (Q8_0 when rows are not whole 256-value super-blocks, through fit_row)
        t = GgmlType::Q6_K;
    } else if name == "token_embd.weight" {
        // the default type
    } else if name.contains("attn_v.weight") {
        if more_bits {
            t = GgmlType::Q6_K;
        }
        if eight_experts {
            t = GgmlType::Q8_0;
        }
    } else if name.contains("attn_k.weight") {
        if eight_experts {
            t = GgmlType::Q8_0;
        }
    } else if name.contains("ffn_down") {
        if more_bits {
            t = GgmlType::Q6_K;
        }
    } else if name.contains("attn_output.weight") && eight_experts {
        t = GgmlType::Q5_K;
    }
    t
}

/// `llama_tensor_get_type` for LLAMA_FTYPE_MOSTLY_IQ4_XS without an importance matrix, before
/// the fallback for rows that are not whole blocks ([`fit_row`]): IQ4_XS by default and for the
/// embedding; Q6_K for the output; Q5_K for attn_v when 4 or more query heads share a KV head,
/// for ffn_down in the first eighth of the layers, and for attn_output of 8-expert
/// models; Q8_0 for attn_k/attn_v of 8-expert models.
fn iq4_xs_type(c: &ModelConfig, name: &str) -> GgmlType {
    let eight_experts = c.n_experts == 8;
    if name == "output.weight" {
        GgmlType::Q6_K
    } else if name.contains("attn_v.weight") {
        if eight_experts {
            GgmlType::Q8_0
        } else if c.n_kv_heads > 0 && c.n_heads / c.n_kv_heads >= 4 {
            GgmlType::Q5_K
        } else {
            GgmlType::IQ4_XS
        }
    } else if name.contains("attn_k.weight") && eight_experts {
        GgmlType::Q8_0
    } else if (name.contains("ffn_down") && ffn_down_in_first_eighth(c, name))
        || (name.contains("attn_output.weight") && eight_experts)
    {
        GgmlType::Q5_K
    } else {
        GgmlType::IQ4_XS
    }
}

/// llama-quantize's `i_layer < n_layer/8` for an ffn_down tensor. `n_layer` is the model's
/// layer count (llama-quant.cpp sets `n_ffn_down = n_layer`, so a shared expert's ffn_down does
/// not double it), and `i_layer` the layer in the name (for MoE models it parses the name; for
/// dense ones it counts ffn_down tensors, one per layer in order: the same number).
fn ffn_down_in_first_eighth(c: &ModelConfig, name: &str) -> bool {
    name.strip_prefix("blk.")
        .and_then(|s| s.split('.').next())
        .and_then(|s| s.parse::<usize>().ok())
        .is_some_and(|i| i < c.n_layers / 8)
}

/// splitmix64: a 64-bit PRNG whose every step is integer arithmetic.
#[derive(Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// An approximately standard normal value: the Irwin-Hall sum of four 32-bit uniforms,
    /// centred and scaled to unit variance (bounded by +-2*sqrt(3)). Only adds and multiplies,
    /// so every machine gets the same value (Box-Muller's ln/cos come from the platform libm).
    pub fn normal(&mut self) -> f32 {
        let (a, b) = (self.next_u64(), self.next_u64());
        let u = |x: u64| x as f64 * (1.0 / 4_294_967_296.0);
        let s = u(a >> 32) + u(a & 0xffff_ffff) + u(b >> 32) + u(b & 0xffff_ffff);
        ((s - 2.0) * 1.732_050_807_568_877_2) as f32
    }
}

/// FNV-1a, to give each tensor name its own stream.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Combine two words through splitmix64's finaliser, so nearby inputs give unrelated seeds.
fn mix(a: u64, b: u64) -> u64 {
    SplitMix64::new(a ^ b.wrapping_mul(0x2545_f491_4f6c_dd1d)).next_u64()
}

/// How the values of one tensor are drawn.
#[derive(Copy, Clone, Debug)]
enum Init {
    /// N(0,1)
    Normal,
    /// gain * N(0,1) / sqrt(fan_in)
    Linear { fan_in: u64, gain: f64 },
    /// 1 + 0.2 * N(0,1): RMSNorm gains away from 1, so a missing multiply shows
    Norm,
    /// `rope_freqs`: the divisors llama.cpp's converter derives from Llama 3.1's
    /// `rope_scaling` (factor 8, low/high frequency factors 1 and 4, original context 8192)
    Llama3RopeFactors { theta: f64, head_dim: usize },
}

/// Llama 3.1's RoPE frequency divisors, as `convert_hf_to_gguf.py` writes `rope_freqs.weight`:
/// 1 for wavelengths under 8192/4, 8 over 8192, and a smooth blend between.
fn llama3_rope_factors(theta: f64, head_dim: usize) -> Vec<f32> {
    let (factor, low, high, old_ctx) = (8.0f64, 1.0f64, 4.0f64, 8192.0f64);
    (0..head_dim / 2)
        .map(|j| {
            let freq = 1.0 / theta.powf((2 * j) as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < old_ctx / high {
                1.0
            } else if wavelen > old_ctx / low {
                factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}

fn init_for(c: &ModelConfig, name: &str, dims: &[u64]) -> Init {
    let fan_in = dims.first().copied().unwrap_or(1);
    // residual branches scaled so 48 layers of additions keep the stream's scale
    let residual = 1.0 / ((2 * c.n_layers) as f64).sqrt();
    if name == "rope_freqs.weight" {
        Init::Llama3RopeFactors {
            theta: c.rope_theta as f64,
            head_dim: c.head_dim,
        }
    } else if name.ends_with(".bias") {
        // projection biases of the size a trained qwen2 has (a few tenths)
        Init::Linear {
            fan_in: 1,
            gain: 0.1,
        }
    } else if dims.len() <= 1 || name.ends_with("_norm.weight") {
        Init::Norm
    } else if name == "token_embd.weight" {
        Init::Normal
    } else if name.contains(".ffn_gate_inp.") {
        // crisp routing (large top-k margins), like the golden script
        Init::Linear { fan_in, gain: 2.0 }
    } else if name.contains(".attn_output.") || name.contains(".ffn_down") {
        Init::Linear {
            fan_in,
            gain: residual,
        }
    } else {
        Init::Linear { fan_in, gain: 1.0 }
    }
}

/// One tensor to write: name, ggml dims, type and how to draw it.
struct Plan {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    init: Init,
}

impl Plan {
    fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(1) as usize
    }

    fn n_rows(&self) -> usize {
        self.dims.iter().skip(1).product::<u64>() as usize
    }

    fn rows_per_slice(&self) -> usize {
        (SLICE_VALUES / self.row_len().max(1)).max(1)
    }

    fn n_slices(&self) -> usize {
        self.n_rows().div_ceil(self.rows_per_slice())
    }

    /// Values of slice `k` (rows `k*rows_per_slice ..`), quantized.
    fn slice(&self, seed: u64, k: usize) -> Result<Vec<u8>> {
        let rps = self.rows_per_slice();
        let rows = rps.min(self.n_rows() - k * rps);
        let mut rng = SplitMix64::new(mix(mix(seed, fnv1a(&self.name)), k as u64));
        let n = rows * self.row_len();
        let vals: Vec<f32> = match self.init {
            Init::Normal => (0..n).map(|_| rng.normal()).collect(),
            Init::Norm => (0..n).map(|_| 1.0 + 0.2 * rng.normal()).collect(),
            Init::Linear { fan_in, gain } => {
                let scale = (gain / (fan_in as f64).sqrt()) as f32;
                (0..n).map(|_| rng.normal() * scale).collect()
            }
            Init::Llama3RopeFactors { theta, head_dim } => llama3_rope_factors(theta, head_dim),
        };
        let mut out = Vec::new();
        quantize(self.ty, &vals, &mut out)
            .map_err(|e| e.context(format_args!("tensor '{}'", self.name)))?;
        Ok(out)
    }
}

/// The tensors of model `c` under `quant`, in file order.
fn plan(c: &ModelConfig, quant: SynthQuant) -> Vec<Plan> {
    c.expected_tensors()
        .into_iter()
        .map(|(name, dims)| Plan {
            ty: tensor_type(c, quant, &name, &dims),
            init: init_for(c, &name, &dims),
            name,
            dims,
        })
        .collect()
}

/// The metadata the golden script writes (gguf-py's key order), for model `c`.
fn metadata(c: &ModelConfig, quant: SynthQuant, name: &str) -> Vec<(String, MetaValue)> {
    let a = c.arch.name();
    let u = |x: usize| MetaValue::U32(x as u32);
    let mut kv: Vec<(String, MetaValue)> = Vec::new();
    let mut put = |k: String, v: MetaValue| kv.push((k, v));
    put("general.architecture".into(), MetaValue::String(a.into()));
    put("general.type".into(), MetaValue::String("model".into()));
    put("general.name".into(), MetaValue::String(name.into()));
    put(format!("{a}.block_count"), u(c.n_layers));
    put(format!("{a}.context_length"), u(c.context_length));
    put(format!("{a}.embedding_length"), u(c.hidden));
    let mixtral_width = c.is_moe()
        && c.desc()
            .moe()
            .is_some_and(|m| m.width_key == "feed_forward_length");
    let ffn = if mixtral_width {
        c.expert_ffn_dim
    } else {
        c.ffn_dim
    };
    put(format!("{a}.feed_forward_length"), u(ffn));
    put(format!("{a}.attention.head_count"), u(c.n_heads));
    put(format!("{a}.attention.head_count_kv"), u(c.n_kv_heads));
    put(format!("{a}.rope.freq_base"), MetaValue::F32(c.rope_theta));
    put(
        format!("{a}.attention.layer_norm_rms_epsilon"),
        MetaValue::F32(c.rms_eps),
    );
    if let Some(m) = c.desc().moe().filter(|_| c.is_moe()) {
        put(format!("{a}.expert_count"), u(c.n_experts));
        put(format!("{a}.expert_used_count"), u(c.n_experts_used));
        // Mixtral's converter writes the expert width as feed_forward_length (above)
        if m.width_key != "feed_forward_length" {
            put(format!("{a}.{}", m.width_key), u(c.expert_ffn_dim));
        }
        if let Some(shared) = m.shared_expert_width_key {
            put(format!("{a}.{shared}"), u(c.shared_ffn_dim));
        }
    }
    put(format!("{a}.attention.key_length"), u(c.head_dim));
    put(format!("{a}.attention.value_length"), u(c.head_dim));
    if c.arch == Arch::Llama {
        put(format!("{a}.rope.dimension_count"), u(c.head_dim));
    }
    put(
        "general.file_type".into(),
        MetaValue::U32(quant.file_type()),
    );
    put("general.quantization_version".into(), MetaValue::U32(2));
    for (k, v) in tokenizer(c) {
        put(k, v);
    }
    kv
}

/// GPT-2 `bytes_to_unicode`: printable bytes stand for themselves, the rest map to U+0100 on.
fn bytes_to_unicode() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut n = 0;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                n += 1;
                char::from_u32(255 + n).unwrap_or('?')
            }
        })
        .collect()
}

/// The golden script's byte-level tokenizer: token b is byte b, then `<|endoftext|>`,
/// `<|im_start|>`, `<|im_end|>`, the merged token "ĠĠ" (llama.cpp needs a merge for gpt2), and
/// `<|extra_N|>` controls up to the vocabulary size. Below 260 tokens: tokenizer "none".
fn tokenizer(c: &ModelConfig) -> Vec<(String, MetaValue)> {
    const NORMAL: i32 = 1;
    const CONTROL: i32 = 3;
    let s = |x: &str| MetaValue::String(x.to_string());
    if c.vocab < 260 {
        return vec![
            ("tokenizer.ggml.model".into(), s("none")),
            (
                format!("{}.vocab_size", c.arch.name()),
                MetaValue::U32(c.vocab as u32),
            ),
        ];
    }
    let b2u = bytes_to_unicode();
    let mut tokens: Vec<MetaValue> = b2u
        .iter()
        .map(|ch| MetaValue::String(ch.to_string()))
        .collect();
    for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "ĠĠ"] {
        tokens.push(s(t));
    }
    tokens.extend((0..c.vocab - 260).map(|j| MetaValue::String(format!("<|extra_{j}|>"))));
    let mut types = vec![NORMAL; 256];
    types.extend([CONTROL, CONTROL, CONTROL, NORMAL]);
    types.resize(c.vocab, CONTROL);
    vec![
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s("qwen2")),
        ("tokenizer.ggml.tokens".into(), MetaValue::Array(tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            MetaValue::Array(types.into_iter().map(MetaValue::I32).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            MetaValue::Array(vec![s("Ġ Ġ")]),
        ),
        ("tokenizer.ggml.eos_token_id".into(), MetaValue::U32(256)),
        (
            "tokenizer.ggml.padding_token_id".into(),
            MetaValue::U32(256),
        ),
        (
            "tokenizer.ggml.add_bos_token".into(),
            MetaValue::Bool(false),
        ),
    ]
}

/// What `generate` wrote.
#[derive(Clone, Debug)]
pub struct Summary {
    /// All files together.
    pub bytes: u64,
    pub n_params: u64,
    pub n_tensors: usize,
    /// Tensors per ggml type, in order of first use.
    pub types: Vec<(GgmlType, usize)>,
    /// The files written: one, or the shards of a split model in order.
    pub files: Vec<PathBuf>,
    pub elapsed: Duration,
}

/// Write a synthetic model of shape `c` to `out`, quantized with `quant`, weights drawn from
/// `seed`. `name` goes into `general.name`. Reports no progress (see [`generate_with`]).
pub fn generate(
    c: &ModelConfig,
    quant: SynthQuant,
    seed: u64,
    name: &str,
    out: &Path,
) -> Result<Summary> {
    generate_with(c, quant, seed, name, out, &NoProgress)
}

/// [`generate`], reporting to `progress`: the file's length in bytes, each tensor's name as
/// its data is written, and the bytes written.
pub fn generate_with(
    c: &ModelConfig,
    quant: SynthQuant,
    seed: u64,
    name: &str,
    out: &Path,
    progress: &dyn Progress,
) -> Result<Summary> {
    write_model(c, quant, seed, name, out, None, progress)
}

/// [`generate_with`], split into shards of at most `max_size` bytes of tensor data as
/// llama.cpp's gguf-split writes them (`gguf::split`): `PREFIX-00001-of-0000N.gguf`, ..., where
/// PREFIX is `out` without its `.gguf`. The tensors and their bytes are those of the unsplit
/// file.
pub fn generate_split_with(
    c: &ModelConfig,
    quant: SynthQuant,
    seed: u64,
    name: &str,
    out: &Path,
    max_size: u64,
    progress: &dyn Progress,
) -> Result<Summary> {
    write_model(c, quant, seed, name, out, Some(max_size), progress)
}

fn write_model(
    c: &ModelConfig,
    quant: SynthQuant,
    seed: u64,
    name: &str,
    out: &Path,
    split: Option<u64>,
    progress: &dyn Progress,
) -> Result<Summary> {
    check_shape(c)?;
    let start = Instant::now();
    let plans = plan(c, quant);
    let mut w = GgufWriter::new();
    for (k, v) in metadata(c, quant, name) {
        w.add_kv(&k, v);
    }
    for p in &plans {
        w.add_tensor(&p.name, p.dims.clone(), p.ty)?;
    }
    // slices generated at once: enough to keep the cores busy, few enough to bound memory
    // (each slice is ~4 MiB of f32 plus its encoding)
    let batch = (rayon::current_num_threads() * 2).clamp(2, 32);
    let data = |i: usize, sink: &mut dyn Write| {
        let p = &plans[i];
        progress.message(&p.name);
        let n = p.n_slices();
        let mut k = 0;
        while k < n {
            let end = (k + batch).min(n);
            let chunks: Vec<Result<Vec<u8>>> =
                (k..end).into_par_iter().map(|j| p.slice(seed, j)).collect();
            for chunk in chunks {
                let chunk = chunk?;
                sink.write_all(&chunk)
                    .map_err(|e| Error::io(out, "writing tensor data", e))?;
                progress.advance(chunk.len() as u64);
            }
            k = end;
        }
        Ok(())
    };
    let (total, written) = match split {
        None => {
            let total = w.file_len()?;
            progress.start(total);
            (
                total,
                w.write_file(out, data).map(|()| vec![out.to_path_buf()]),
            )
        }
        Some(max_size) => {
            let shards = w.split(max_size)?;
            let total = shards.file_len()?;
            progress.start(total);
            (total, shards.write_files(&split_prefix_of(out), data))
        }
    };
    progress.finish();
    let files = written?;
    let mut types: Vec<(GgmlType, usize)> = Vec::new();
    for p in &plans {
        match types.iter_mut().find(|(t, _)| *t == p.ty) {
            Some((_, n)) => *n += 1,
            None => types.push((p.ty, 1)),
        }
    }
    Ok(Summary {
        bytes: total,
        n_params: plans.iter().map(|p| p.dims.iter().product::<u64>()).sum(),
        n_tensors: plans.len(),
        types,
        files,
        elapsed: start.elapsed(),
    })
}

/// The shard prefix for an output named `out`: `m.gguf` -> `m` (shards `m-00001-of-00003.gguf`).
fn split_prefix_of(out: &Path) -> PathBuf {
    match out.to_str().and_then(|s| s.strip_suffix(".gguf")) {
        Some(stem) if !stem.is_empty() => PathBuf::from(stem),
        _ => out.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::GgufFile;
    use crate::model::quant::dequantize;
    use std::path::PathBuf;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("falsifier-synth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn golden() -> GgufFile {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf");
        GgufFile::open(&p).unwrap()
    }

    fn values(f: &GgufFile, name: &str) -> Vec<f32> {
        let t = f.tensor(name).unwrap();
        let mut out = vec![0f32; t.n_elements() as usize];
        dequantize(t.ty, f.tensor_data(t), &mut out).unwrap();
        out
    }

    /// Issue 11 item 17: shapes past the bounds are refused before lint lists their tensors or
    /// the generator sizes anything by them (vocab 2^64 - 1 panicked in the tokenizer; heads =
    /// head_dim = 2^32 wrapped to 0 and hung the generator).
    #[test]
    fn absurd_shapes_are_refused() {
        let refuse = |o: Overrides| {
            let mut c = preset("tiny-moe").unwrap();
            o.apply(&mut c).unwrap();
            check_shape(&c).unwrap_err().to_string()
        };
        let e = refuse(Overrides {
            vocab: Some(usize::MAX),
            ..Overrides::default()
        });
        assert_eq!(
            e,
            "model shape: --vocab 18446744073709551615 exceeds the limit of 16777216 (2^24)"
        );
        let e = refuse(Overrides {
            heads: Some(1 << 32),
            head_dim: Some(1 << 32),
            ..Overrides::default()
        });
        assert!(e.contains("--heads 4294967296 exceeds the limit"), "{e}");
        let e = refuse(Overrides {
            layers: Some(1_000_000_000_000),
            ..Overrides::default()
        });
        assert_eq!(
            e,
            "model shape: --layers 1000000000000 exceeds the limit of 4096"
        );
        // every size within bounds, but their products are not
        let e = refuse(Overrides {
            hidden: Some(1 << 24),
            vocab: Some(1 << 24),
            ..Overrides::default()
        });
        assert!(
            e.contains("parameters exceed the limit of 4398046511104 (2^42)"),
            "{e}"
        );
        // the presets themselves are within bounds, the 30B-A3B shape included
        for name in PRESETS {
            check_shape(&preset(name).unwrap()).unwrap();
        }
    }

    /// Every tiny preset, of every architecture, reads back as the config it was made from and
    /// runs on the CPU reference with exactly its architecture's stages, all finite; the llama
    /// preset holds Llama 3.1's RoPE divisors, the Mixtral one its expert width under
    /// `feed_forward_length`, the qwen2 ones their biases and the shared expert.
    #[test]
    fn tiny_presets_of_every_architecture_round_trip_and_run() {
        use crate::backend::cpu::CpuBackend;
        use crate::backend::{Backend, ForwardRequest};
        use crate::trace::plan::CapturePlan;
        use crate::trace::stage::Stage;
        let mut archs = Vec::new();
        for name in PRESETS.iter().filter(|n| n.starts_with("tiny-")) {
            let c = preset(name).unwrap();
            archs.push(c.arch);
            for q in [SynthQuant::F32, SynthQuant::Q8_0] {
                let path = tmp(&format!("every-arch-{name}-{}.gguf", q.name()));
                generate(&c, q, 5, name, &path).unwrap();
                let f = GgufFile::open(&path).unwrap();
                let back = ModelConfig::from_gguf(&f).unwrap();
                assert_eq!(back, c, "{name}: the config read back differs");
                back.validate_tensors(&f).unwrap();
                let tokens: Vec<u32> = (0..12).map(|i| (i * 29 + 3) % c.vocab as u32).collect();
                let t = CpuBackend::open(&path)
                    .unwrap()
                    .forward(&ForwardRequest::new(&tokens, &CapturePlan::all()))
                    .unwrap();
                std::fs::remove_file(&path).unwrap();
                for s in Stage::ALL {
                    let present = t.tensors.keys().any(|k| k.stage == s);
                    assert_eq!(present, c.has_stage(s), "{name}: stage {s}");
                }
                for (k, v) in &t.tensors {
                    if let Some(x) = v.as_f32() {
                        assert!(x.iter().all(|v| v.is_finite()), "{name}: {k}");
                    }
                }
            }
        }
        archs.dedup();
        assert_eq!(
            archs.len(),
            crate::model::arch::Arch::ALL.len(),
            "{archs:?}"
        );
        let f = llama3_rope_factors(5e5, 128);
        assert_eq!((f[0], f[63]), (1.0, 8.0));
        assert!(f.iter().any(|&x| x > 1.0 && x < 8.0), "a smooth band");
    }

    #[test]
    fn same_seed_same_bytes() {
        let c = preset("tiny-moe").unwrap();
        let (a, b, d) = (tmp("a.gguf"), tmp("b.gguf"), tmp("d.gguf"));
        generate(&c, SynthQuant::Q4_K_M, 7, "t", &a).unwrap();
        generate(&c, SynthQuant::Q4_K_M, 7, "t", &b).unwrap();
        generate(&c, SynthQuant::Q4_K_M, 8, "t", &d).unwrap();
        let (a, b, d) = (
            std::fs::read(a).unwrap(),
            std::fs::read(b).unwrap(),
            std::fs::read(d).unwrap(),
        );
        assert!(a == b, "same seed, different bytes");
        assert_eq!(a.len(), d.len());
        assert!(a != d, "different seeds, same bytes");
    }

    /// What a progress callback is told: the file's length first, each tensor by name in file
    /// order, bytes that add up to the tensor data written, and the end.
    #[test]
    fn progress_is_reported_through_the_callback() {
        use std::sync::Mutex;
        #[derive(Default)]
        struct Record(Mutex<(Option<u64>, Vec<String>, u64, bool)>);
        impl Progress for Record {
            fn start(&self, total: u64) {
                self.0.lock().unwrap().0 = Some(total);
            }
            fn message(&self, what: &str) {
                self.0.lock().unwrap().1.push(what.to_string());
            }
            fn advance(&self, n: u64) {
                self.0.lock().unwrap().2 += n;
            }
            fn finish(&self) {
                self.0.lock().unwrap().3 = true;
            }
        }
        let c = preset("tiny-moe").unwrap();
        let path = tmp("progress.gguf");
        let rec = Record::default();
        let s = generate_with(&c, SynthQuant::Q4_K_M, 7, "t", &path, &rec).unwrap();
        let (total, names, done, finished) = rec.0.into_inner().unwrap();
        assert_eq!(total, Some(s.bytes));
        let f = GgufFile::open(&path).unwrap();
        let want: Vec<String> = f.tensors().iter().map(|t| t.name.clone()).collect();
        assert_eq!(names, want);
        let data: u64 = f.tensors().iter().map(|t| t.nbytes).sum();
        assert_eq!(done, data);
        assert!(done > 0 && done <= s.bytes);
        assert!(finished);
        std::fs::remove_file(&path).unwrap();
    }

    /// Pins the generator's stream: a change to the PRNG, seeding, slicing or the writer
    /// changes these, and so does a machine whose arithmetic differs.
    #[test]
    fn prng_is_pinned() {
        let path = tmp("pinned.gguf");
        generate(
            &preset("tiny-moe").unwrap(),
            SynthQuant::F32,
            1,
            "pinned",
            &path,
        )
        .unwrap();
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(
            f.sha256_hex(),
            "c2ce8abb6be5cb54f371692eca81e91f9d91ed7da0dae18081f97620854cc5fa"
        );
        std::fs::remove_file(&path).unwrap();
        let mut r = SplitMix64::new(0);
        // splitmix64's published first output for seed 0
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        let xs: Vec<f32> = (0..20000).map(|_| r.normal()).collect();
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.03,
            "mean {mean} var {var}"
        );
        assert!(xs.iter().all(|x| x.abs() <= 3.4642));
    }

    #[test]
    fn tiny_presets_load_and_mirror_the_golden_file() {
        let g = golden();
        for p in ["tiny-moe", "tiny-dense"] {
            let c = preset(p).unwrap();
            for q in SynthQuant::ALL {
                let path = tmp(&format!("{p}-{}.gguf", q.name()));
                let s = generate(&c, q, 1, "x", &path).unwrap();
                let f = GgufFile::open(&path).unwrap();
                // the map keeps the data readable after the unlink
                std::fs::remove_file(&path).unwrap();
                assert_eq!(f.file_len(), s.bytes);
                let got = ModelConfig::from_gguf(&f).unwrap();
                assert_eq!(got, c, "{p} {q:?}");
                got.validate_tensors(&f).unwrap();
                assert_eq!(
                    f.get("general.file_type").unwrap().as_u64(),
                    Some(q.file_type() as u64)
                );
                if p == "tiny-moe" {
                    // the golden file's keys, in its order, with its tokenizer
                    let keys: Vec<_> = f.metadata().iter().map(|(k, _)| k).collect();
                    let want: Vec<_> = g.metadata().iter().map(|(k, _)| k).collect();
                    assert_eq!(keys, want);
                    for (k, v) in g.metadata() {
                        if k != "general.name" && k != "general.file_type" {
                            assert_eq!(f.get(k), Some(v), "{k}");
                        }
                    }
                    let names: Vec<_> = f.tensors().iter().map(|t| (&t.name, &t.dims)).collect();
                    let want: Vec<_> = g.tensors().iter().map(|t| (&t.name, &t.dims)).collect();
                    assert_eq!(names, want);
                }
                for t in f.tensors() {
                    let v = values(&f, &t.name);
                    assert!(v.iter().all(|x| x.is_finite()), "{}", t.name);
                    let (norm, gate) = (
                        t.name.ends_with("_norm.weight"),
                        t.name.contains("gate_inp"),
                    );
                    if norm || gate || q == SynthQuant::F32 {
                        assert_eq!(t.ty, GgmlType::F32, "{}", t.name);
                    }
                    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
                    let rms = (v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / v.len() as f64)
                        .sqrt();
                    let want_rms = match init_for(&c, &t.name, &t.dims) {
                        Init::Normal => 1.0,
                        Init::Norm => (1.0f64 + 0.04).sqrt(),
                        Init::Linear { fan_in, gain } => gain / (fan_in as f64).sqrt(),
                        // exact values, checked in tiny_presets_of_every_architecture_...
                        Init::Llama3RopeFactors { .. } => continue,
                    };
                    // 4-bit blocks add noise; the scale must still be right within 20%
                    assert!(
                        (rms / want_rms - 1.0).abs() < 0.2,
                        "{} rms {rms} want {want_rms}",
                        t.name
                    );
                    if !norm {
                        assert!(mean.abs() < 0.2 * want_rms, "{} mean {mean}", t.name);
                    }
                }
            }
        }
    }

    #[test]
    fn q4_k_m_mix_follows_llama_cpp() {
        // hidden 256 (whole super-blocks), q rows of 128 (attn_output falls back), expert
        // rows of 96 (ffn_down_exps falls back), 4 experts (no 8-expert rule), 8 layers
        let c = ModelConfig {
            n_layers: 8,
            hidden: 256,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 32,
            n_experts: 4,
            expert_ffn_dim: 96,
            ..preset("tiny-moe").unwrap()
        };
        let more: Vec<usize> = (0..8).filter(|&i| use_more_bits(i, 8)).collect();
        assert_eq!(more, [0, 3, 6, 7]);
        let path = tmp("mix.gguf");
        generate(&c, SynthQuant::Q4_K_M, 3, "mix", &path).unwrap();
        let f = GgufFile::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let ty = |n: &str| f.tensor(n).unwrap().ty;
        use GgmlType::*;
        assert_eq!(ty("token_embd.weight"), Q4_K);
        assert_eq!(ty("output.weight"), Q6_K);
        assert_eq!(ty("output_norm.weight"), F32);
        for i in 0..8 {
            let b = |s: &str| ty(&format!("blk.{i}.{s}.weight"));
            let hi = more.contains(&i);
            assert_eq!(b("attn_q"), Q4_K);
            assert_eq!(b("attn_k"), Q4_K);
            assert_eq!(b("attn_v"), if hi { Q6_K } else { Q4_K }, "layer {i}");
            assert_eq!(b("attn_output"), Q5_0, "rows of 128: Q4_K falls back");
            assert_eq!(b("ffn_gate_exps"), Q4_K);
            assert_eq!(b("ffn_up_exps"), Q4_K);
            assert_eq!(
                b("ffn_down_exps"),
                if hi { Q8_0 } else { Q5_0 },
                "rows of 96, layer {i}"
            );
            assert_eq!(b("ffn_gate_inp"), F32);
            assert_eq!(b("attn_q_norm"), F32);
        }
        // eight experts: llama.cpp bumps attn_k/attn_v to Q8_0 and attn_output to Q5_K
        let c8 = ModelConfig {
            n_experts: 8,
            head_dim: 64,
            expert_ffn_dim: 256,
            ..c
        };
        assert_eq!(
            tensor_type(&c8, SynthQuant::Q4_K_M, "blk.1.attn_v.weight", &[256, 128]),
            Q8_0
        );
        assert_eq!(
            tensor_type(&c8, SynthQuant::Q4_K_M, "blk.1.attn_k.weight", &[256, 128]),
            Q8_0
        );
        assert_eq!(
            tensor_type(
                &c8,
                SynthQuant::Q4_K_M,
                "blk.1.attn_output.weight",
                &[256, 256]
            ),
            Q5_K
        );
        assert_eq!(
            tensor_type(
                &c8,
                SynthQuant::Q4_K_M,
                "blk.3.ffn_down_exps.weight",
                &[256, 256, 8]
            ),
            Q6_K
        );
        // rows of 64: the output falls back to Q8_0, Q5_K to Q5_1
        let tiny = preset("tiny-moe").unwrap();
        assert_eq!(
            tensor_type(&tiny, SynthQuant::Q4_K_M, "output.weight", &[64, 260]),
            Q8_0
        );
        assert_eq!(
            tensor_type(
                &tiny,
                SynthQuant::Q4_K_M,
                "blk.0.attn_output.weight",
                &[128, 64]
            ),
            Q5_1
        );
        // the 30B shape: 24 of 48 ffn_down_exps and attn_v get Q6_K, like the published Q4_K_M
        let big = preset("qwen3-30b-a3b").unwrap();
        let q6 = plan(&big, SynthQuant::Q4_K_M)
            .iter()
            .filter(|p| p.ty == Q6_K)
            .count();
        assert_eq!(q6, 24 + 24 + 1);
        // rows that are not whole blocks of the base type fall back to F16 outside Q4_K_M
        assert_eq!(
            tensor_type(&tiny, SynthQuant::Q8_0, "blk.0.attn_q.weight", &[48, 64]),
            F16
        );
    }

    #[test]
    fn iq4_xs_mix_follows_llama_cpp() {
        use GgmlType::*;
        // 8 layers, 4 experts, GQA 4:1 (attn_v -> Q5_K), rows of 256 except attn_output (128)
        let c = ModelConfig {
            n_layers: 8,
            hidden: 256,
            n_heads: 8,
            n_kv_heads: 2,
            head_dim: 16,
            n_experts: 4,
            expert_ffn_dim: 256,
            ..preset("tiny-moe").unwrap()
        };
        let path = tmp("iq4xs-mix.gguf");
        generate(&c, SynthQuant::IQ4_XS, 3, "mix", &path).unwrap();
        let f = GgufFile::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(f.get("general.file_type").unwrap().as_u64(), Some(30));
        let ty = |n: &str| f.tensor(n).unwrap().ty;
        assert_eq!(ty("token_embd.weight"), IQ4_XS);
        assert_eq!(ty("output.weight"), Q6_K);
        for i in 0..8 {
            let b = |s: &str| ty(&format!("blk.{i}.{s}.weight"));
            assert_eq!(b("attn_q"), IQ4_XS);
            assert_eq!(b("attn_k"), IQ4_XS);
            assert_eq!(b("attn_v"), Q5_K, "n_gqa 4");
            assert_eq!(b("attn_output"), IQ4_NL, "rows of 128: IQ4_XS falls back");
            assert_eq!(b("ffn_gate_exps"), IQ4_XS);
            // the first eighth of the ffn_down tensors: layer 0 of 8
            assert_eq!(b("ffn_down_exps"), if i == 0 { Q5_K } else { IQ4_XS });
            assert_eq!(b("ffn_gate_inp"), F32);
        }
        // eight experts: attn_k/attn_v Q8_0, attn_output Q5_K (Q5_1 on rows of 64)
        let tiny = preset("tiny-moe").unwrap();
        let t = |n: &str, d: &[u64]| tensor_type(&tiny, SynthQuant::IQ4_XS, n, d);
        assert_eq!(t("blk.0.attn_k.weight", &[64, 64]), Q8_0);
        assert_eq!(t("blk.0.attn_v.weight", &[64, 64]), Q8_0);
        assert_eq!(t("blk.0.attn_output.weight", &[128, 64]), Q5_1);
        assert_eq!(t("output.weight", &[64, 260]), Q8_0);
        assert_eq!(t("blk.0.attn_q.weight", &[64, 128]), IQ4_NL);
        // the first eighth of the layers, by the layer in the name: 16 layers, the first 2 get
        // Q5_K; a shared expert's ffn_down does not double the count (llama-quant.cpp sets
        // n_ffn_down = n_layer), so on qwen2moe it is still layers 0 and 1, both tensors
        let q2m = ModelConfig {
            n_layers: 16,
            ..preset("tiny-qwen2moe").unwrap()
        };
        let m = |n: &str| tensor_type(&q2m, SynthQuant::IQ4_XS, n, &[256, 256, 8]);
        for l in 0..4 {
            let want = if l < 2 { Q5_K } else { IQ4_XS };
            assert_eq!(
                m(&format!("blk.{l}.ffn_down_exps.weight")),
                want,
                "layer {l}"
            );
            assert_eq!(
                m(&format!("blk.{l}.ffn_down_shexp.weight")),
                want,
                "layer {l}"
            );
        }
        let dense = ModelConfig {
            n_layers: 16,
            ..preset("tiny-dense").unwrap()
        };
        let d = |n: &str| tensor_type(&dense, SynthQuant::IQ4_XS, n, &[256, 256]);
        assert_eq!(d("blk.1.ffn_down.weight"), Q5_K);
        assert_eq!(d("blk.2.ffn_down.weight"), IQ4_XS);
        // one-type schemes: rows not whole 32-value blocks fall back to F16
        let odd = ModelConfig {
            hidden: 48,
            ..tiny.clone()
        };
        for q in [SynthQuant::IQ4_NL, SynthQuant::MXFP4] {
            assert_eq!(tensor_type(&odd, q, "blk.0.attn_q.weight", &[48, 128]), F16);
            assert!(!q.is_mix());
        }
        assert_eq!(
            tensor_type(&tiny, SynthQuant::MXFP4, "output.weight", &[64, 260]),
            MXFP4
        );
    }

    /// iq4_nl, iq4_xs and mxfp4 models (rows of 256, so IQ4_XS is really written) read back as
    /// their config, run on the CPU reference, and stay close to the same seed in F32.
    #[test]
    fn iq4_and_mxfp4_models_round_trip_and_run() {
        use crate::backend::cpu::CpuBackend;
        use crate::backend::{Backend, ForwardRequest};
        use crate::trace::plan::CapturePlan;
        for base in ["tiny-moe", "tiny-dense"] {
            let c = ModelConfig {
                hidden: 256,
                head_dim: 64,
                ffn_dim: 256,
                expert_ffn_dim: if base == "tiny-moe" { 256 } else { 0 },
                ..preset(base).unwrap()
            };
            let tokens: Vec<u32> = (0..6).map(|i| (i * 41 + 5) % c.vocab as u32).collect();
            let run = |q: SynthQuant| {
                let path = tmp(&format!("iq-run-{base}-{}.gguf", q.name()));
                generate(&c, q, 9, base, &path).unwrap();
                let f = GgufFile::open(&path).unwrap();
                let back = ModelConfig::from_gguf(&f).unwrap();
                assert_eq!(back, c, "{base} {q:?}");
                back.validate_tensors(&f).unwrap();
                let types: Vec<GgmlType> = f.tensors().iter().map(|t| t.ty).collect();
                let t = CpuBackend::open(&path)
                    .unwrap()
                    .forward(&ForwardRequest::new(&tokens, &CapturePlan::all()))
                    .unwrap();
                std::fs::remove_file(&path).unwrap();
                (types, t)
            };
            let (_, want) = run(SynthQuant::F32);
            for (q, ty) in [
                (SynthQuant::IQ4_NL, GgmlType::IQ4_NL),
                (SynthQuant::IQ4_XS, GgmlType::IQ4_XS),
                (SynthQuant::MXFP4, GgmlType::MXFP4),
            ] {
                let (types, got) = run(q);
                let n = types.iter().filter(|t| **t == ty).count();
                assert!(n >= 4, "{base} {q:?}: only {n} {ty} tensors");
                let mut worst = 1f64;
                for (k, w) in &want.tensors {
                    let (Some(w), Some(g)) = (w.as_f32(), got.tensors[k].as_f32()) else {
                        continue;
                    };
                    assert!(g.iter().all(|v| v.is_finite()), "{base} {q:?} {k}");
                    let dot: f64 = w.iter().zip(g).map(|(a, b)| *a as f64 * *b as f64).sum();
                    let nw: f64 = w.iter().map(|a| (*a as f64).powi(2)).sum();
                    let ng: f64 = g.iter().map(|a| (*a as f64).powi(2)).sum();
                    if nw > 0.0 && ng > 0.0 {
                        worst = worst.min(dot / (nw * ng).sqrt());
                    }
                }
                println!("{base} {q:?}: worst stage cosine against F32 {worst:.4}");
                // measured: 0.913 (tiny-moe MXFP4) to 0.982 (tiny-dense IQ4_NL/IQ4_XS)
                assert!(worst > 0.85, "{base} {q:?}: cosine {worst}");
            }
        }
    }

    #[test]
    fn big_shape_plan_streams() {
        // no tensor of the 30B shape is generated whole: slices stay at ~1M values
        let big = preset("qwen3-30b-a3b").unwrap();
        check_shape(&big).unwrap();
        let plans = plan(&big, SynthQuant::Q4_K_M);
        assert_eq!(plans.len(), 3 + 48 * 12);
        let n: u64 = plans.iter().map(|p| p.dims.iter().product::<u64>()).sum();
        assert!((30_000_000_000..31_000_000_000).contains(&n), "{n}");
        for p in &plans {
            assert!(p.rows_per_slice() * p.row_len() <= SLICE_VALUES.max(p.row_len()));
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let c = preset("tiny-moe").unwrap();
        for (bad, needle) in [
            (
                ModelConfig {
                    n_kv_heads: 3,
                    ..c.clone()
                },
                "does not divide",
            ),
            (
                ModelConfig {
                    n_experts_used: 9,
                    ..c.clone()
                },
                "exceeds --experts",
            ),
            (
                ModelConfig {
                    hidden: 0,
                    ..c.clone()
                },
                "--hidden must be positive",
            ),
        ] {
            let e = generate(&bad, SynthQuant::F32, 1, "x", &tmp("bad.gguf")).unwrap_err();
            assert!(e.to_string().contains(needle), "{e}");
        }
        // rows of 48 values: not whole Q4_K/Q5_0 blocks, so llama.cpp would fall back to F16
        let odd = ModelConfig { hidden: 48, ..c };
        assert_eq!(
            tensor_type(&odd, SynthQuant::Q4_K_M, "blk.0.attn_q.weight", &[48, 128]),
            GgmlType::F16
        );
    }
}
