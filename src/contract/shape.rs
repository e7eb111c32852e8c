//! What lint needs to know about a model: its architecture, layer and expert counts, and (for
//! model files) the weight type of each tensor, so a planted fault can be checked against the
//! place it is planted at. Files are read with [`crate::model::gguf::GgufFile`] (mapped, not
//! read) and validated with [`crate::model::config::ModelConfig`]; presets come from
//! [`super::PRESETS`] and the contract's overrides.

use std::collections::HashMap;
use std::path::Path;

use crate::model::config::ModelConfig;
use crate::model::gguf::GgufFile;
use crate::model::quant::GgmlType;
use crate::trace::stage::Stage;

#[derive(Clone, Debug, PartialEq)]
pub struct ModelShape {
    /// `qwen3moe` or `qwen3`.
    pub arch: String,
    pub layers: usize,
    /// 0 for dense models.
    pub experts: usize,
    /// Tensor name -> weight type; None for synthetic presets (not generated at lint time).
    pub weights: Option<HashMap<String, GgmlType>>,
}

impl ModelShape {
    pub fn is_moe(&self) -> bool {
        self.experts > 0 || self.arch == "qwen3moe"
    }

    /// Whether the forward of this model computes `stage` (dense: no router/top-k; MoE: no
    /// dense FFN stages).
    pub fn has_stage(&self, stage: Stage) -> bool {
        if self.is_moe() {
            !stage.is_dense_only()
        } else {
            !stage.is_moe_only()
        }
    }

    /// The weight tensor of the matmul producing `stage` at `layer`, as llama.cpp names it.
    pub fn weight_of(&self, layer: Option<usize>, stage: Stage) -> Option<String> {
        let exps = if self.is_moe() { "_exps" } else { "" };
        let name = match stage {
            Stage::QProj => "attn_q".to_string(),
            Stage::KProj => "attn_k".to_string(),
            Stage::VProj => "attn_v".to_string(),
            Stage::AttnOut => "attn_output".to_string(),
            Stage::RouterLogits => "ffn_gate_inp".to_string(),
            Stage::FfnGate => format!("ffn_gate{exps}"),
            Stage::FfnUp => format!("ffn_up{exps}"),
            Stage::FfnOut => format!("ffn_down{exps}"),
            Stage::Logits => return Some("output.weight".to_string()),
            _ => return None,
        };
        layer.map(|l| format!("blk.{l}.{name}.weight"))
    }

    /// Weight type of the matmul producing `stage` (a tied output reads token_embd).
    pub fn weight_type(&self, layer: Option<usize>, stage: Stage) -> Option<(String, GgmlType)> {
        let weights = self.weights.as_ref()?;
        let name = self.weight_of(layer, stage)?;
        if let Some(t) = weights.get(&name) {
            return Some((name, *t));
        }
        if stage == Stage::Logits {
            let tied = "token_embd.weight".to_string();
            return weights.get(&tied).map(|t| (tied, *t));
        }
        None
    }
}

/// Read and validate a model file's shape.
pub fn read_shape(path: &Path) -> crate::Result<ModelShape> {
    let f = GgufFile::open(path)?;
    let cfg = ModelConfig::from_gguf(&f)?;
    cfg.validate_tensors(&f)?;
    Ok(ModelShape {
        arch: cfg.arch.name().to_string(),
        layers: cfg.n_layers,
        experts: cfg.n_experts,
        weights: Some(f.tensors().iter().map(|t| (t.name.clone(), t.ty)).collect()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_shape_and_weights() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let s = read_shape(&root.join("fixtures/qwen3moe-tiny/qwen3moe-tiny-q8_0.gguf")).unwrap();
        assert_eq!((s.arch.as_str(), s.layers, s.experts), ("qwen3moe", 3, 8));
        let (name, ty) = s.weight_type(Some(2), Stage::FfnOut).unwrap();
        assert_eq!(name, "blk.2.ffn_down_exps.weight");
        assert_eq!(ty, GgmlType::Q8_0);
        assert!(s.weight_type(Some(0), Stage::Logits).is_some());
        assert!(s.weight_type(Some(0), Stage::AttnNorm).is_none());
        assert!(read_shape(&root.join("Cargo.toml")).is_err());
    }
}
