//! Qwen2 and Qwen2-MoE (`qwen2`, `qwen2moe`): RMSNorm, biases on the q, k and v projections,
//! NeoX RoPE, no q/k norm. Qwen2-MoE routes with a softmax over all experts and top-k, without
//! renormalising (as llama.cpp builds it), and adds a shared expert scaled per token by
//! `sigmoid(ffn_gate_inp_shexp · x)`.

use super::common::*;
use super::{ArchDesc, Dim, FfnKind, MoeDesc, OUTPUT, OUTPUT_NORM, Role, RopePairing, TOKEN_EMBD};
use super::{TensorSpec, When};
use crate::trace::stage::Stage;

const ATTN_Q_BIAS: TensorSpec =
    TensorSpec::new("attn_q.bias", &[Dim::QWidth], Role::Bias(Stage::QProj));
const ATTN_K_BIAS: TensorSpec =
    TensorSpec::new("attn_k.bias", &[Dim::KvWidth], Role::Bias(Stage::KProj));
const ATTN_V_BIAS: TensorSpec =
    TensorSpec::new("attn_v.bias", &[Dim::KvWidth], Role::Bias(Stage::VProj));

/// The shared expert: its gate logit per token, then a SwiGLU FFN of its own width.
const FFN_GATE_INP_SHEXP: TensorSpec = TensorSpec::new(
    "ffn_gate_inp_shexp.weight",
    &[Dim::Hidden, Dim::One],
    Role::Produces(Stage::FfnSharedGate),
)
.when(When::SharedExpert);
const FFN_GATE_SHEXP: TensorSpec = TensorSpec::new(
    "ffn_gate_shexp.weight",
    &[Dim::Hidden, Dim::SharedFfn],
    Role::Inner,
)
.when(When::SharedExpert);
const FFN_UP_SHEXP: TensorSpec = TensorSpec::new(
    "ffn_up_shexp.weight",
    &[Dim::Hidden, Dim::SharedFfn],
    Role::Inner,
)
.when(When::SharedExpert);
const FFN_DOWN_SHEXP: TensorSpec = TensorSpec::new(
    "ffn_down_shexp.weight",
    &[Dim::SharedFfn, Dim::Hidden],
    Role::Produces(Stage::FfnSharedOut),
)
.when(When::SharedExpert);

pub static QWEN2: ArchDesc = ArchDesc {
    name: "qwen2",
    models: "Qwen2, Qwen2.5 dense (0.5B .. 72B)",
    qk_norm: false,
    qkv_bias: true,
    rope: RopePairing::NeoX,
    ffn: FfnKind::Dense,
    head_tensors: &[TOKEN_EMBD],
    tail_tensors: &[OUTPUT_NORM, OUTPUT],
    layer_tensors: &[
        ATTN_NORM,
        ATTN_Q,
        ATTN_Q_BIAS,
        ATTN_K,
        ATTN_K_BIAS,
        ATTN_V,
        ATTN_V_BIAS,
        ATTN_OUTPUT,
        FFN_NORM,
        FFN_GATE,
        FFN_UP,
        FFN_DOWN,
    ],
};

pub static QWEN2MOE: ArchDesc = ArchDesc {
    name: "qwen2moe",
    models: "Qwen2-MoE (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B)",
    qk_norm: false,
    qkv_bias: true,
    rope: RopePairing::NeoX,
    ffn: FfnKind::Moe(MoeDesc {
        width_key: "expert_feed_forward_length",
        renorm_topk: false,
        shared_expert_width_key: Some("expert_shared_feed_forward_length"),
    }),
    head_tensors: &[TOKEN_EMBD],
    tail_tensors: &[OUTPUT_NORM, OUTPUT],
    layer_tensors: &[
        ATTN_NORM,
        ATTN_Q,
        ATTN_Q_BIAS,
        ATTN_K,
        ATTN_K_BIAS,
        ATTN_V,
        ATTN_V_BIAS,
        ATTN_OUTPUT,
        FFN_NORM,
        FFN_GATE_INP,
        FFN_GATE_EXPS,
        FFN_UP_EXPS,
        FFN_DOWN_EXPS,
        FFN_GATE_INP_SHEXP,
        FFN_GATE_SHEXP,
        FFN_UP_SHEXP,
        FFN_DOWN_SHEXP,
    ],
};
