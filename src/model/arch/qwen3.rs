//! Qwen3 and Qwen3-MoE (`qwen3`, `qwen3moe`): RMSNorm everywhere, a per-head RMSNorm on q and k
//! before NeoX RoPE, no biases. The MoE router is a softmax over all experts, top-k, and
//! renormalised (llama.cpp hard-codes the renormalisation for qwen3moe).

use super::TensorSpec;
use super::common::*;
use super::{ArchDesc, Dim, FfnKind, MoeDesc, OUTPUT, OUTPUT_NORM, Role, RopePairing, TOKEN_EMBD};
use crate::trace::stage::Stage;

const ATTN_Q_NORM: TensorSpec = TensorSpec::new(
    "attn_q_norm.weight",
    &[Dim::HeadDim],
    Role::Gain(Stage::QNorm),
);
const ATTN_K_NORM: TensorSpec = TensorSpec::new(
    "attn_k_norm.weight",
    &[Dim::HeadDim],
    Role::Gain(Stage::KNorm),
);

const LAYER: &[TensorSpec] = &[
    ATTN_NORM,
    ATTN_Q,
    ATTN_K,
    ATTN_V,
    ATTN_OUTPUT,
    ATTN_Q_NORM,
    ATTN_K_NORM,
    FFN_NORM,
    FFN_GATE,
    FFN_UP,
    FFN_DOWN,
    FFN_GATE_INP,
    FFN_GATE_EXPS,
    FFN_UP_EXPS,
    FFN_DOWN_EXPS,
];

pub static QWEN3: ArchDesc = ArchDesc {
    name: "qwen3",
    models: "Qwen3 dense (0.6B .. 32B)",
    qk_norm: true,
    qkv_bias: false,
    rope: RopePairing::NeoX,
    ffn: FfnKind::Dense,
    head_tensors: &[TOKEN_EMBD],
    tail_tensors: &[OUTPUT_NORM, OUTPUT],
    layer_tensors: LAYER,
};

pub static QWEN3MOE: ArchDesc = ArchDesc {
    name: "qwen3moe",
    models: "Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3-Coder)",
    qk_norm: true,
    qkv_bias: false,
    rope: RopePairing::NeoX,
    ffn: FfnKind::Moe(MoeDesc {
        width_key: "expert_feed_forward_length",
        renorm_topk: true,
        shared_expert_width_key: None,
    }),
    head_tensors: &[TOKEN_EMBD],
    tail_tensors: &[OUTPUT_NORM, OUTPUT],
    layer_tensors: LAYER,
};
