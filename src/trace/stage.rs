//! The stage vocabulary of docs/design.md. Stage names are an interface: reports, contracts and trace
//! files use them, so they are spelled here once and never renamed.
//!
//! A trace key is either model-level (`tokens`, `embedding`, `final_norm`, `logits`) or per layer
//! (`layer.{i}.{stage}`). [`Key`]'s ordering is forward order: tokens, embedding, then every
//! layer's stages in the order the forward computes them, then final_norm and logits.

use std::fmt;
use std::str::FromStr;

/// One stage of the forward. Model-level stages and per-layer stages share one enum so that a
/// plan, a contract or a report row can name either.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    // model level, before the layers
    Tokens,
    Embedding,
    // per layer, in forward order
    AttnNorm,
    QProj,
    KProj,
    VProj,
    QNorm,
    KNorm,
    QRope,
    KRope,
    AttnProbs,
    AttnCtx,
    AttnOut,
    AttnResidual,
    FfnNorm,
    RouterLogits,
    RouterProbs,
    TopkIds,
    TopkWeights,
    FfnGate,
    FfnUp,
    FfnAct,
    /// Shared-expert MoE (qwen2moe): the sigmoid gate of the shared expert.
    FfnSharedGate,
    /// Shared-expert MoE: the gated shared expert's output (ffn_out = routed + this).
    FfnSharedOut,
    FfnOut,
    LayerOut,
    // model level, after the layers
    FinalNorm,
    Logits,
}

/// Where a stage lives in the model.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Before the first layer (tokens, embedding).
    Head,
    /// Inside every layer (`layer.{i}.{stage}`).
    Layer,
    /// After the last layer (final_norm, logits).
    Tail,
}

/// Element type of a captured stage.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum StageDtype {
    F32,
    I32,
}

impl Stage {
    /// Every stage, in forward order.
    pub const ALL: [Stage; 28] = [
        Stage::Tokens,
        Stage::Embedding,
        Stage::AttnNorm,
        Stage::QProj,
        Stage::KProj,
        Stage::VProj,
        Stage::QNorm,
        Stage::KNorm,
        Stage::QRope,
        Stage::KRope,
        Stage::AttnProbs,
        Stage::AttnCtx,
        Stage::AttnOut,
        Stage::AttnResidual,
        Stage::FfnNorm,
        Stage::RouterLogits,
        Stage::RouterProbs,
        Stage::TopkIds,
        Stage::TopkWeights,
        Stage::FfnGate,
        Stage::FfnUp,
        Stage::FfnAct,
        Stage::FfnSharedGate,
        Stage::FfnSharedOut,
        Stage::FfnOut,
        Stage::LayerOut,
        Stage::FinalNorm,
        Stage::Logits,
    ];

    /// The canonical name, as in trace keys and contracts.
    pub const fn name(self) -> &'static str {
        match self {
            Stage::Tokens => "tokens",
            Stage::Embedding => "embedding",
            Stage::AttnNorm => "attn_norm",
            Stage::QProj => "q_proj",
            Stage::KProj => "k_proj",
            Stage::VProj => "v_proj",
            Stage::QNorm => "q_norm",
            Stage::KNorm => "k_norm",
            Stage::QRope => "q_rope",
            Stage::KRope => "k_rope",
            Stage::AttnProbs => "attn_probs",
            Stage::AttnCtx => "attn_ctx",
            Stage::AttnOut => "attn_out",
            Stage::AttnResidual => "attn_residual",
            Stage::FfnNorm => "ffn_norm",
            Stage::RouterLogits => "router_logits",
            Stage::RouterProbs => "router_probs",
            Stage::TopkIds => "topk_ids",
            Stage::TopkWeights => "topk_weights",
            Stage::FfnGate => "ffn_gate",
            Stage::FfnUp => "ffn_up",
            Stage::FfnAct => "ffn_act",
            Stage::FfnSharedGate => "ffn_shared_gate",
            Stage::FfnSharedOut => "ffn_shared_out",
            Stage::FfnOut => "ffn_out",
            Stage::LayerOut => "layer_out",
            Stage::FinalNorm => "final_norm",
            Stage::Logits => "logits",
        }
    }

    pub const fn scope(self) -> Scope {
        match self {
            Stage::Tokens | Stage::Embedding => Scope::Head,
            Stage::FinalNorm | Stage::Logits => Scope::Tail,
            _ => Scope::Layer,
        }
    }

    pub const fn is_layer_stage(self) -> bool {
        matches!(self.scope(), Scope::Layer)
    }

    pub const fn dtype(self) -> StageDtype {
        match self {
            Stage::Tokens | Stage::TopkIds => StageDtype::I32,
            _ => StageDtype::F32,
        }
    }

    /// Stages only a mixture-of-experts layer has.
    pub const fn is_moe_only(self) -> bool {
        matches!(
            self,
            Stage::RouterLogits | Stage::RouterProbs | Stage::TopkIds | Stage::TopkWeights
        )
    }

    /// Stages only a dense FFN layer has.
    pub const fn is_dense_only(self) -> bool {
        matches!(self, Stage::FfnGate | Stage::FfnUp | Stage::FfnAct)
    }

    /// Stages only a MoE layer with a gated shared expert has (qwen2moe; no architecture the
    /// backends run today).
    pub const fn is_shared_expert_only(self) -> bool {
        matches!(self, Stage::FfnSharedGate | Stage::FfnSharedOut)
    }

    /// Position in forward order (0 = tokens).
    pub fn order(self) -> usize {
        self as usize
    }

    /// Stages of one layer, in forward order.
    pub fn layer_stages() -> impl Iterator<Item = Stage> {
        Stage::ALL.into_iter().filter(|s| s.is_layer_stage())
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for a stage or key name outside the vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownStage(pub String);

impl fmt::Display for UnknownStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
        write!(
            f,
            "unknown stage `{}` (known: {})",
            self.0,
            names.join(", ")
        )
    }
}

impl std::error::Error for UnknownStage {}

impl FromStr for Stage {
    type Err = UnknownStage;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stage::ALL
            .into_iter()
            .find(|st| st.name() == s)
            .ok_or_else(|| UnknownStage(s.to_string()))
    }
}

/// A trace key: a model-level stage, or a layer stage at layer `i`.
///
/// Ordering is forward order, so a `BTreeMap<Key, _>` iterates in the order the forward ran.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub layer: Option<usize>,
    pub stage: Stage,
}

impl Key {
    pub const fn model(stage: Stage) -> Key {
        Key { layer: None, stage }
    }

    pub const fn layer(layer: usize, stage: Stage) -> Key {
        Key {
            layer: Some(layer),
            stage,
        }
    }

    /// Forward-order sort key: (phase, layer, stage order).
    fn sort_key(&self) -> (u8, usize, usize) {
        let phase = match self.stage.scope() {
            Scope::Head => 0,
            Scope::Layer => 1,
            Scope::Tail => 2,
        };
        (phase, self.layer.unwrap_or(0), self.stage.order())
    }

    /// Whether layer and stage scope agree (a layer stage has a layer, a model stage has none).
    pub fn is_well_formed(&self) -> bool {
        self.layer.is_some() == self.stage.is_layer_stage()
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.sort_key().cmp(&other.sort_key())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.layer {
            Some(i) => write!(f, "layer.{i}.{}", self.stage),
            None => f.write_str(self.stage.name()),
        }
    }
}

/// Error for a malformed trace key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadKey(pub String);

impl fmt::Display for BadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad trace key `{}`: expected `layer.{{i}}.{{stage}}` or a model-level stage (tokens, embedding, final_norm, logits)",
            self.0
        )
    }
}

impl std::error::Error for BadKey {}

impl FromStr for Key {
    type Err = BadKey;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadKey(s.to_string());
        let key = if let Some(rest) = s.strip_prefix("layer.") {
            let (idx, stage) = rest.split_once('.').ok_or_else(bad)?;
            // reject "+1", " 1", "01"-style ambiguity: plain decimal only
            if idx.is_empty() || !idx.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let layer: usize = idx.parse().map_err(|_| bad())?;
            Key::layer(layer, stage.parse().map_err(|_| bad())?)
        } else {
            Key::model(s.parse().map_err(|_| bad())?)
        };
        if key.is_well_formed() {
            Ok(key)
        } else {
            Err(bad())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Stage::ALL {
            assert_eq!(s.name().parse::<Stage>().unwrap(), s);
        }
        assert!("q".parse::<Stage>().is_err());
    }

    #[test]
    fn keys_parse_and_print() {
        for text in [
            "tokens",
            "logits",
            "layer.0.attn_norm",
            "layer.47.layer_out",
        ] {
            let k: Key = text.parse().unwrap();
            assert_eq!(k.to_string(), text);
        }
        for bad in [
            "layer.x.attn_norm",
            "layer.1",
            "layer.1.tokens",
            "attn_norm",
            "layer.+1.q_proj",
            "",
        ] {
            assert!(bad.parse::<Key>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forward_order() {
        let mut keys: Vec<Key> = [
            "logits",
            "layer.1.attn_norm",
            "layer.0.layer_out",
            "embedding",
            "final_norm",
            "tokens",
            "layer.0.q_proj",
            "layer.10.attn_norm",
            "layer.2.attn_norm",
        ]
        .iter()
        .map(|k| k.parse().unwrap())
        .collect();
        keys.sort();
        let got: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        assert_eq!(
            got,
            [
                "tokens",
                "embedding",
                "layer.0.q_proj",
                "layer.0.layer_out",
                "layer.1.attn_norm",
                "layer.2.attn_norm",
                "layer.10.attn_norm",
                "final_norm",
                "logits"
            ]
        );
    }
}
