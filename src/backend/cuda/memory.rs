//! What a traced CUDA forward of a model holds, estimated without a device, for
//! `falsifier inspect`: the weights as `DeviceWeights::upload` keeps them, the activation
//! buffers of `forward::Buffers`, the attention probabilities, the logits, and the trace the
//! capture copies out (every stage kept, as `trace --stages all` and contracts run).
//!
//! Left out, because they depend on the card or the driver rather than on the model: the CUDA
//! context and the NVRTC-compiled kernels (a few hundred MiB on an H200), the split-K partial
//! sums of short prompts (one scratch buffer, sized by the card's multiprocessors), and the
//! allocator's rounding.

use serde::Serialize;

use super::forward::{ATT_PROBS_BUDGET, attention_block_rows, buffer_bytes};
use super::weights::{Dims, WEIGHT_PADDING};
use crate::model::arch::Role;
use crate::model::config::ModelConfig;
use crate::model::gguf::GgufFile;
use crate::trace::CapturePlan;

/// Bytes of one traced forward at `tokens` tokens.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryEstimate {
    pub tokens: usize,
    /// Weights on the device: matrices in their GGUF block formats (plus 16 bytes of padding
    /// each), norm gains, biases and RoPE divisors decoded to f32.
    pub weights: u64,
    /// The forward's activation buffers, reused by every layer.
    pub activations: u64,
    /// Attention probabilities [heads, T, T], kept whole when the trace keeps `attn_probs`.
    pub attention: u64,
    /// What the same attention takes untraced: blocks of 64-query tiles within 256 MiB.
    pub attention_untraced: u64,
    /// Logits [T, vocab] and the token ids.
    pub logits: u64,
    /// Device total: weights + activations + attention + logits.
    pub device: u64,
    /// The KV cache a scheduled run (`--chunk`/`--decode`, or an f16 cache) adds on the device:
    /// every layer's K and V, [T, kv heads, head_dim] each, at 4 bytes a value (half that for an
    /// f16 cache). Not in `device`: the full forward keeps none.
    pub kv_cache: u64,
    /// The captured trace: every stage's shape at T, 4 bytes a value (f32, token ids i32).
    /// It is copied into pinned host memory as each stage is final, and is the payload of the
    /// trace file.
    pub trace: u64,
}

/// The estimate for `file` (with its config) at each of `tokens`.
pub fn estimate(file: &GgufFile, cfg: &ModelConfig, tokens: usize) -> MemoryEstimate {
    let d = Dims::from_config(cfg);
    let t = tokens;
    let probs_row = (d.n_heads * t * 4) as u64;
    let untraced_rows = attention_block_rows(d.n_heads, t, t, false, ATT_PROBS_BUDGET);
    let attention = probs_row * t as u64;
    let logits = ((t * d.vocab + t) * 4) as u64;
    let weights = weight_bytes(file, cfg);
    let activations = buffer_bytes(&d, t);
    let trace = CapturePlan::all()
        .keys(cfg.n_layers, |s| cfg.has_stage(s))
        .iter()
        .map(|k| cfg.stage_shape(k.stage, t).iter().product::<usize>() as u64 * 4)
        .sum();
    MemoryEstimate {
        tokens,
        weights,
        activations,
        attention,
        attention_untraced: probs_row * untraced_rows as u64,
        logits,
        device: weights + activations + attention + logits,
        kv_cache: (2 * d.n_layers * t * d.n_kv_heads * d.head_dim * 4) as u64,
        trace,
    }
}

/// The tensors the backend uploads are the architecture's table; a file that ties the output
/// to the embedding uploads it once.
fn weight_bytes(file: &GgufFile, cfg: &ModelConfig) -> u64 {
    cfg.tensor_table()
        .iter()
        .filter_map(|(name, _, spec)| Some((file.tensor(name)?, spec)))
        .map(|(info, spec)| match spec.role {
            // decoded to f32 by the upload (vec_f32 in weights.rs)
            Role::Gain(_) | Role::Bias(_) | Role::RopeFreqs => info.n_elements() * 4,
            _ => info.nbytes + WEIGHT_PADDING as u64,
        })
        .sum()
}
