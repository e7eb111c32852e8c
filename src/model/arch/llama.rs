//! Llama (`llama`): Llama 2, Llama 3.x, Mistral 7B, and with experts Mixtral 8x7B / 8x22B.
//! RMSNorm, no q/k norm, no biases. llama.cpp's converter permutes the rows of Q and K so that
//! adjacent-pair RoPE on them equals Hugging Face's rotate-half; traces keep that permuted
//! layout. Llama 3.1+ scales RoPE frequencies by the divisors in `rope_freqs.weight`. Mixtral's
//! router: softmax, top-k, renormalised; its expert width is written as `feed_forward_length`.

use super::TensorSpec;
use super::common::*;
use super::{ArchDesc, Dim, FfnKind, MoeDesc, OUTPUT, OUTPUT_NORM, Role, RopePairing, TOKEN_EMBD};

/// Llama 3 RoPE scaling: angle j of position p is `p * theta^(-2j/D) / rope_freqs[j]`.
const ROPE_FREQS: TensorSpec =
    TensorSpec::new("rope_freqs.weight", &[Dim::HalfHeadDim], Role::RopeFreqs).optional();

pub static LLAMA: ArchDesc = ArchDesc {
    name: "llama",
    models: "Llama 2, Llama 3.x (rope_freqs scaling), Mistral 7B; with experts Mixtral 8x7B / 8x22B",
    qk_norm: false,
    qkv_bias: false,
    rope: RopePairing::Adjacent,
    ffn: FfnKind::DenseOrMoe(MoeDesc {
        width_key: "feed_forward_length",
        renorm_topk: true,
        shared_expert_width_key: None,
    }),
    head_tensors: &[ROPE_FREQS, TOKEN_EMBD],
    tail_tensors: &[OUTPUT_NORM, OUTPUT],
    layer_tensors: &[
        ATTN_NORM,
        ATTN_Q,
        ATTN_K,
        ATTN_V,
        ATTN_OUTPUT,
        FFN_NORM,
        FFN_GATE,
        FFN_DOWN,
        FFN_UP,
        FFN_GATE_INP,
        FFN_GATE_EXPS,
        FFN_DOWN_EXPS,
        FFN_UP_EXPS,
    ],
};
