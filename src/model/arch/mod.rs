//! What an architecture is, said once: its GGUF keys, its tensor table (name, dims, the stage
//! each tensor feeds), its stage set, RoPE pairing and position scaling, norms, biases, FFN kind
//! and router. One file per family ([`qwen3`], [`llama`], [`qwen2`]) holds its descriptions.
//!
//! Everything else asks: [`ModelConfig`](super::config::ModelConfig) reads the keys a
//! description names and lists its tensors; the CPU reference and the CUDA backend read the
//! flags (`qk_norm`, `qkv_bias`, `rope`, the router); lint, faults, bench and the generator take
//! stages, shapes and weight names from the config. The backends still compute independently:
//! the description says *what* a model computes, never *how*.

pub mod llama;
pub mod qwen2;
pub mod qwen3;

use crate::trace::stage::Stage;

/// Supported `general.architecture` values.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// Qwen3 mixture of experts (Qwen3-30B-A3B, Qwen3-Coder).
    Qwen3Moe,
    /// Qwen3 dense.
    Qwen3,
    /// Llama 2, Llama 3.x, Mistral; with `expert_count`, Mixtral.
    Llama,
    /// Qwen2 / Qwen2.5 dense.
    Qwen2,
    /// Qwen2-MoE (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B).
    Qwen2Moe,
}

impl Arch {
    pub const ALL: [Arch; 5] = [
        Arch::Qwen3Moe,
        Arch::Qwen3,
        Arch::Llama,
        Arch::Qwen2,
        Arch::Qwen2Moe,
    ];

    /// The description of this architecture.
    pub fn desc(self) -> &'static ArchDesc {
        match self {
            Arch::Qwen3Moe => &qwen3::QWEN3MOE,
            Arch::Qwen3 => &qwen3::QWEN3,
            Arch::Llama => &llama::LLAMA,
            Arch::Qwen2 => &qwen2::QWEN2,
            Arch::Qwen2Moe => &qwen2::QWEN2MOE,
        }
    }

    /// The `general.architecture` string, also the prefix of the arch's keys.
    pub fn name(self) -> &'static str {
        self.desc().name
    }

    pub fn from_name(s: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == s)
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How RoPE pairs the dimensions of a head.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RopePairing {
    /// NeoX (Qwen2, Qwen3; ggml's `LLAMA_ROPE_TYPE_NEOX`): dimension j with j + D/2.
    NeoX,
    /// Adjacent dimensions 2j and 2j+1 (ggml's normal mode), which `llama` uses on the Q and K
    /// rows llama.cpp's converter permuted so that this equals Hugging Face's rotate-half.
    Adjacent,
}

impl RopePairing {
    /// The other pairing: what the planted fault `rope_pair_swap` uses instead.
    pub fn swapped(self) -> RopePairing {
        match self {
            RopePairing::NeoX => RopePairing::Adjacent,
            RopePairing::Adjacent => RopePairing::NeoX,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RopePairing::NeoX => "neox (j, j + D/2)",
            RopePairing::Adjacent => "adjacent (2j, 2j + 1)",
        }
    }
}

/// The feed-forward half of a block.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FfnKind {
    /// Always a dense SwiGLU FFN (`feed_forward_length` wide).
    Dense,
    /// Always routed experts.
    Moe(MoeDesc),
    /// Dense, or routed experts when the file sets `{arch}.expert_count` (llama: Mixtral).
    DenseOrMoe(MoeDesc),
}

/// A mixture-of-experts FFN: the router is a softmax over all experts, then the top k (ties to
/// the lower id), then optionally renormalised; each expert is a SwiGLU FFN.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MoeDesc {
    /// The key of one expert's width (`expert_feed_forward_length`; Mixtral's converter writes
    /// it as `feed_forward_length`).
    pub width_key: &'static str,
    /// Renormalise the k chosen probabilities to sum 1 (as llama.cpp builds the graph).
    pub renorm_topk: bool,
    /// A shared expert, run on every token and scaled by `sigmoid(ffn_gate_inp_shexp · x)`,
    /// added to the routed experts' sum; the key of its width.
    pub shared_expert_width_key: Option<&'static str>,
}

/// A size a tensor dimension takes from the config.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    Hidden,
    Vocab,
    HeadDim,
    /// head_count x head_dim
    QWidth,
    /// head_count_kv x head_dim
    KvWidth,
    /// head_dim / 2 (`rope_freqs`)
    HalfHeadDim,
    /// the dense FFN's width
    Ffn,
    /// one routed expert's width
    ExpertFfn,
    Experts,
    /// the shared expert's width
    SharedFfn,
    One,
}

impl Dim {
    pub fn symbol(self) -> &'static str {
        match self {
            Dim::Hidden => "H",
            Dim::Vocab => "V",
            Dim::HeadDim => "D",
            Dim::QWidth => "nh*D",
            Dim::KvWidth => "nkv*D",
            Dim::HalfHeadDim => "D/2",
            Dim::Ffn => "F",
            Dim::ExpertFfn => "Fe",
            Dim::Experts => "E",
            Dim::SharedFfn => "Fs",
            Dim::One => "1",
        }
    }
}

/// What a tensor is to the forward.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// The weight of the matmul that produces this stage (`x · Wᵀ`).
    Produces(Stage),
    /// A matmul weight whose output is no stage of its own (an expert's gate or up).
    Inner,
    /// The gain of the RMSNorm that produces this stage.
    Gain(Stage),
    /// The bias added to this matmul stage.
    Bias(Stage),
    /// Rows looked up by token id.
    Embedding,
    /// RoPE frequency divisors (`rope_freqs`, llama 3 scaling).
    RopeFreqs,
}

/// When a layer tensor is present.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum When {
    Always,
    /// dense FFN layers
    Dense,
    /// expert layers
    Moe,
    /// expert layers with a shared expert
    SharedExpert,
}

/// One row of a tensor table: its GGUF name (after `blk.N.` for layer tensors), its ggml dims
/// (fastest first), and its role.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: &'static str,
    pub dims: &'static [Dim],
    pub role: Role,
    pub when: When,
    /// A file may omit it: `output.weight` (tied to the embedding), `rope_freqs.weight`.
    pub optional: bool,
}

impl TensorSpec {
    pub const fn new(name: &'static str, dims: &'static [Dim], role: Role) -> TensorSpec {
        TensorSpec {
            name,
            dims,
            role,
            when: When::Always,
            optional: false,
        }
    }

    pub const fn when(self, when: When) -> TensorSpec {
        TensorSpec { when, ..self }
    }

    pub const fn optional(self) -> TensorSpec {
        TensorSpec {
            optional: true,
            ..self
        }
    }
}

/// A size a stage's dimension takes (the stage table of docs/design.md, in symbols).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Size {
    /// T, the prompt length
    Tokens,
    /// H
    Hidden,
    /// nh
    Heads,
    /// nkv
    KvHeads,
    /// D
    HeadDim,
    /// nh * D
    QWidth,
    /// E
    Experts,
    /// k
    TopK,
    /// F, the dense FFN width
    Ffn,
    One,
    /// V
    Vocab,
}

impl Size {
    pub fn symbol(self) -> &'static str {
        match self {
            Size::Tokens => "T",
            Size::Hidden => "H",
            Size::Heads => "nh",
            Size::KvHeads => "nkv",
            Size::HeadDim => "D",
            Size::QWidth => "nh*D",
            Size::Experts => "E",
            Size::TopK => "k",
            Size::Ffn => "F",
            Size::One => "1",
            Size::Vocab => "V",
        }
    }
}

/// The dimensions of a stage's tensor, in symbols; `ModelConfig::stage_shape` gives them
/// numbers.
pub const fn stage_dims(stage: Stage) -> &'static [Size] {
    use Size::*;
    match stage {
        Stage::Tokens => &[Tokens],
        Stage::Embedding
        | Stage::AttnNorm
        | Stage::AttnOut
        | Stage::AttnResidual
        | Stage::FfnNorm
        | Stage::FfnSharedOut
        | Stage::FfnOut
        | Stage::LayerOut
        | Stage::FinalNorm => &[Tokens, Hidden],
        Stage::QProj | Stage::QNorm | Stage::QRope => &[Tokens, Heads, HeadDim],
        Stage::KProj | Stage::VProj | Stage::KNorm | Stage::KRope => &[Tokens, KvHeads, HeadDim],
        Stage::AttnProbs => &[Heads, Tokens, Tokens],
        Stage::AttnCtx => &[Tokens, QWidth],
        Stage::RouterLogits | Stage::RouterProbs => &[Tokens, Experts],
        Stage::TopkIds | Stage::TopkWeights => &[Tokens, TopK],
        Stage::FfnGate | Stage::FfnUp | Stage::FfnAct => &[Tokens, Ffn],
        Stage::FfnSharedGate => &[Tokens, One],
        Stage::Logits => &[Tokens, Vocab],
    }
}

/// One architecture.
#[derive(Debug)]
pub struct ArchDesc {
    /// `general.architecture`, the prefix of its keys.
    pub name: &'static str,
    /// The models it covers, for `falsifier stages --arch`.
    pub models: &'static str,
    /// Per-head RMSNorm of q and k before RoPE (the q_norm / k_norm stages).
    pub qk_norm: bool,
    /// Biases on the q, k and v projections (included in q_proj / k_proj / v_proj).
    pub qkv_bias: bool,
    pub rope: RopePairing,
    pub ffn: FfnKind,
    /// Tensors before the layers, in the order llama.cpp's converter writes them.
    pub head_tensors: &'static [TensorSpec],
    /// Tensors after the layers.
    pub tail_tensors: &'static [TensorSpec],
    /// Tensors of one layer (`blk.N.<name>.weight`/`.bias`), in the converter's order.
    pub layer_tensors: &'static [TensorSpec],
}

impl ArchDesc {
    /// The tensors outside the layers.
    pub fn model_tensors(&self) -> impl Iterator<Item = &'static TensorSpec> + Clone {
        self.head_tensors.iter().chain(self.tail_tensors)
    }

    /// The MoE description, when layers may have experts.
    pub fn moe(&self) -> Option<&MoeDesc> {
        match &self.ffn {
            FfnKind::Dense => None,
            FfnKind::Moe(m) | FfnKind::DenseOrMoe(m) => Some(m),
        }
    }

    /// Whether a model of this architecture computes `stage` (`moe`: its layers have experts).
    pub fn has_stage(&self, moe: bool, stage: Stage) -> bool {
        if matches!(stage, Stage::QNorm | Stage::KNorm) {
            return self.qk_norm;
        }
        if stage.is_shared_expert_only() {
            return moe
                && self
                    .moe()
                    .is_some_and(|m| m.shared_expert_width_key.is_some());
        }
        if stage.is_moe_only() {
            return moe;
        }
        if stage.is_dense_only() {
            return !moe;
        }
        true
    }

    /// The layer tensors a layer has (`moe`: its layers have experts).
    pub fn layer_tensors(&self, moe: bool) -> impl Iterator<Item = &'static TensorSpec> + Clone {
        let shared = moe
            && self
                .moe()
                .is_some_and(|m| m.shared_expert_width_key.is_some());
        self.layer_tensors.iter().filter(move |t| match t.when {
            When::Always => true,
            When::Dense => !moe,
            When::Moe => moe,
            When::SharedExpert => shared,
        })
    }
}

/// Tensors shared by every architecture here, outside the layers.
pub(crate) const TOKEN_EMBD: TensorSpec = TensorSpec::new(
    "token_embd.weight",
    &[Dim::Hidden, Dim::Vocab],
    Role::Embedding,
);
pub(crate) const OUTPUT_NORM: TensorSpec = TensorSpec::new(
    "output_norm.weight",
    &[Dim::Hidden],
    Role::Gain(Stage::FinalNorm),
);
/// llama.cpp ties the output projection to the embedding when the file has none.
pub(crate) const OUTPUT: TensorSpec = TensorSpec::new(
    "output.weight",
    &[Dim::Hidden, Dim::Vocab],
    Role::Produces(Stage::Logits),
)
.optional();

/// The tensors of a llama-style block that every family here shares, by name.
pub(crate) mod common {
    use super::{Dim, Role, TensorSpec, When};
    use crate::trace::stage::Stage;

    pub const ATTN_NORM: TensorSpec = TensorSpec::new(
        "attn_norm.weight",
        &[Dim::Hidden],
        Role::Gain(Stage::AttnNorm),
    );
    pub const ATTN_Q: TensorSpec = TensorSpec::new(
        "attn_q.weight",
        &[Dim::Hidden, Dim::QWidth],
        Role::Produces(Stage::QProj),
    );
    pub const ATTN_K: TensorSpec = TensorSpec::new(
        "attn_k.weight",
        &[Dim::Hidden, Dim::KvWidth],
        Role::Produces(Stage::KProj),
    );
    pub const ATTN_V: TensorSpec = TensorSpec::new(
        "attn_v.weight",
        &[Dim::Hidden, Dim::KvWidth],
        Role::Produces(Stage::VProj),
    );
    pub const ATTN_OUTPUT: TensorSpec = TensorSpec::new(
        "attn_output.weight",
        &[Dim::QWidth, Dim::Hidden],
        Role::Produces(Stage::AttnOut),
    );
    pub const FFN_NORM: TensorSpec = TensorSpec::new(
        "ffn_norm.weight",
        &[Dim::Hidden],
        Role::Gain(Stage::FfnNorm),
    );
    pub const FFN_GATE: TensorSpec = TensorSpec::new(
        "ffn_gate.weight",
        &[Dim::Hidden, Dim::Ffn],
        Role::Produces(Stage::FfnGate),
    )
    .when(When::Dense);
    pub const FFN_UP: TensorSpec = TensorSpec::new(
        "ffn_up.weight",
        &[Dim::Hidden, Dim::Ffn],
        Role::Produces(Stage::FfnUp),
    )
    .when(When::Dense);
    pub const FFN_DOWN: TensorSpec = TensorSpec::new(
        "ffn_down.weight",
        &[Dim::Ffn, Dim::Hidden],
        Role::Produces(Stage::FfnOut),
    )
    .when(When::Dense);
    pub const FFN_GATE_INP: TensorSpec = TensorSpec::new(
        "ffn_gate_inp.weight",
        &[Dim::Hidden, Dim::Experts],
        Role::Produces(Stage::RouterLogits),
    )
    .when(When::Moe);
    pub const FFN_GATE_EXPS: TensorSpec = TensorSpec::new(
        "ffn_gate_exps.weight",
        &[Dim::Hidden, Dim::ExpertFfn, Dim::Experts],
        Role::Inner,
    )
    .when(When::Moe);
    pub const FFN_UP_EXPS: TensorSpec = TensorSpec::new(
        "ffn_up_exps.weight",
        &[Dim::Hidden, Dim::ExpertFfn, Dim::Experts],
        Role::Inner,
    )
    .when(When::Moe);
    /// The routed experts' down projections: their weighted sum is ffn_out (with a shared
    /// expert, ffn_out adds ffn_shared_out to it).
    pub const FFN_DOWN_EXPS: TensorSpec = TensorSpec::new(
        "ffn_down_exps.weight",
        &[Dim::ExpertFfn, Dim::Hidden, Dim::Experts],
        Role::Produces(Stage::FfnOut),
    )
    .when(When::Moe);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every description is internally consistent: names unique, a stage produced by at most
    /// one matmul per FFN kind, and every stage a tensor feeds is one the architecture has.
    #[test]
    fn descriptions_are_consistent() {
        for arch in Arch::ALL {
            let d = arch.desc();
            assert_eq!(Arch::from_name(d.name), Some(arch));
            let moes: &[bool] = match d.ffn {
                FfnKind::Dense => &[false],
                FfnKind::Moe(_) => &[true],
                FfnKind::DenseOrMoe(_) => &[false, true],
            };
            for &moe in moes {
                let layer: Vec<_> = d.layer_tensors(moe).collect();
                let mut names: Vec<_> = layer.iter().map(|t| t.name).collect();
                names.sort();
                names.dedup();
                assert_eq!(names.len(), layer.len(), "{arch}: duplicate tensor");
                for t in layer.iter().copied().chain(d.model_tensors()) {
                    let stage = match t.role {
                        Role::Produces(s) | Role::Gain(s) | Role::Bias(s) => s,
                        _ => continue,
                    };
                    assert!(d.has_stage(moe, stage), "{arch} {}: {stage}", t.name);
                    if let Role::Produces(s) = t.role {
                        let producers = layer
                            .iter()
                            .copied()
                            .chain(d.model_tensors())
                            .filter(|u| u.role == Role::Produces(s))
                            .count();
                        assert_eq!(producers, 1, "{arch}: {s}");
                    }
                }
                assert_eq!(
                    layer.iter().any(|t| t.name == "attn_q_norm.weight"),
                    d.qk_norm
                );
                assert_eq!(
                    layer.iter().any(|t| t.name == "attn_q.bias"),
                    d.qkv_bias,
                    "{arch}"
                );
            }
        }
    }
}
