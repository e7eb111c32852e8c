//! What lint needs to know about a model: its architecture, sizes, and the weight type of each
//! tensor, so a planted fault can be checked against the place it is planted at. Files are read
//! with [`GgufFile`] (mapped, not read) and validated with [`ModelConfig`]; synthetic models are
//! not generated at lint time: their shape comes from [`synth::preset`] plus the contract's
//! overrides, and their tensor types from the generator's own rule ([`synth::tensor_type`], which
//! is llama.cpp's for Q4_K_M), so lint sees exactly the file `gen-model` would write.

use std::collections::HashMap;
use std::path::Path;

use super::schema::ModelSpec;
use crate::model::config::ModelConfig;
use crate::model::gguf::GgufFile;
use crate::model::quant::GgmlType;
use crate::model::synth::{self, SynthQuant};
use crate::trace::stage::Stage;

#[derive(Clone, Debug, PartialEq)]
pub struct ModelShape {
    pub config: ModelConfig,
    /// Tensor name -> weight type.
    pub weights: HashMap<String, GgmlType>,
}

impl ModelShape {
    pub fn is_moe(&self) -> bool {
        self.config.is_moe()
    }

    pub fn arch(&self) -> &'static str {
        self.config.arch.name()
    }

    pub fn layers(&self) -> usize {
        self.config.n_layers
    }

    /// 0 for dense models.
    pub fn experts(&self) -> usize {
        self.config.n_experts
    }

    /// Whether the forward of this model computes `stage` (dense: no router/top-k; MoE: no
    /// dense FFN stages).
    pub fn has_stage(&self, stage: Stage) -> bool {
        self.config.has_stage(stage)
    }

    /// The weight tensor of the matmul producing `stage` at `layer`, as llama.cpp names it
    /// (from the architecture's tensor table).
    pub fn weight_of(&self, layer: Option<usize>, stage: Stage) -> Option<String> {
        let spec = self.config.weight_producing(stage)?;
        if stage.is_layer_stage() {
            layer.map(|l| format!("blk.{l}.{}", spec.name))
        } else {
            Some(spec.name.to_string())
        }
    }

    /// Weight type of the matmul producing `stage` (a tied output reads token_embd).
    pub fn weight_type(&self, layer: Option<usize>, stage: Stage) -> Option<(String, GgmlType)> {
        let name = self.weight_of(layer, stage)?;
        if let Some(t) = self.weights.get(&name) {
            return Some((name, *t));
        }
        if stage == Stage::Logits {
            let tied = "token_embd.weight".to_string();
            return self.weights.get(&tied).map(|t| (tied, *t));
        }
        None
    }
}

/// Read and validate a model file's shape.
pub fn read_shape(path: &Path) -> crate::Result<ModelShape> {
    let f = GgufFile::open(path)?;
    let config = ModelConfig::from_gguf(&f)?;
    config.validate_tensors(&f)?;
    Ok(ModelShape {
        config,
        weights: f.tensors().iter().map(|t| (t.name.clone(), t.ty)).collect(),
    })
}

/// The shape and weight type of a synthetic model spec, as `falsifier gen-model` would write it.
/// Errors are messages for lint (unknown preset or quant, overrides that make no model).
pub fn preset_config(spec: &ModelSpec) -> Result<(ModelConfig, SynthQuant), String> {
    let name = spec.preset.as_deref().unwrap_or("");
    let mut c = synth::preset(name).ok_or_else(|| {
        format!(
            "unknown preset `{name}` (known: {})",
            synth::PRESETS.join(", ")
        )
    })?;
    let q = spec.quant.as_deref().ok_or("a preset needs a quant")?;
    let quant = SynthQuant::from_name(q).ok_or_else(|| {
        let known: Vec<String> = SynthQuant::ALL
            .iter()
            .map(|q| q.name().to_lowercase())
            .collect();
        format!("unknown quant `{q}` (known: {})", known.join(", "))
    })?;
    synth::Overrides {
        layers: spec.layers,
        hidden: spec.hidden,
        heads: spec.heads,
        kv_heads: spec.kv_heads,
        head_dim: spec.head_dim,
        ffn: spec.ffn,
        vocab: spec.vocab,
        experts: spec.experts,
        top_k: spec.top_k,
        expert_ffn: spec.expert_ffn,
    }
    .apply(&mut c)
    .map_err(|e| format!("preset {name}: {e}"))?;
    synth::check_shape(&c).map_err(|e| e.to_string())?;
    Ok((c, quant))
}

/// Shape of a synthetic model spec, with the tensor types the generator gives it.
pub fn preset_shape(spec: &ModelSpec) -> Result<ModelShape, String> {
    let (config, quant) = preset_config(spec)?;
    let weights = config
        .expected_tensors()
        .into_iter()
        .map(|(name, dims)| {
            let t = synth::tensor_type(&config, quant, &name, &dims);
            (name, t)
        })
        .collect();
    Ok(ModelShape { config, weights })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_shape_and_weights() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let s = read_shape(&root.join("fixtures/qwen3moe-tiny/qwen3moe-tiny-q8_0.gguf")).unwrap();
        assert_eq!((s.arch(), s.layers(), s.experts()), ("qwen3moe", 3, 8));
        let (name, ty) = s.weight_type(Some(2), Stage::FfnOut).unwrap();
        assert_eq!(name, "blk.2.ffn_down_exps.weight");
        assert_eq!(ty, GgmlType::Q8_0);
        assert!(s.weight_type(None, Stage::Logits).is_some());
        assert!(s.weight_type(Some(0), Stage::AttnNorm).is_none());
        assert!(read_shape(&root.join("Cargo.toml")).is_err());
    }

    #[test]
    fn q4_k_m_preset_puts_q6_k_where_llama_cpp_does() {
        // 4 layers: use_more_bits is true for layers 2 and 3
        let spec = ModelSpec {
            preset: Some("tiny-moe".into()),
            quant: Some("q4_k_m".into()),
            seed: Some(1),
            hidden: Some(256),
            expert_ffn: Some(256),
            layers: Some(4),
            experts: Some(16),
            ..ModelSpec::default()
        };
        let s = preset_shape(&spec).unwrap();
        let ty = |l, st| s.weight_type(Some(l), st).unwrap().1;
        assert_eq!(ty(1, Stage::FfnOut), GgmlType::Q4_K);
        assert_eq!(ty(2, Stage::FfnOut), GgmlType::Q6_K);
        assert_eq!(ty(3, Stage::VProj), GgmlType::Q6_K);
        assert_eq!(ty(0, Stage::VProj), GgmlType::Q4_K);
        // eight experts: llama.cpp bumps attn_v to Q8_0
        let eight = ModelSpec {
            experts: None,
            ..spec.clone()
        };
        let s = preset_shape(&eight).unwrap();
        assert_eq!(
            s.weight_type(Some(3), Stage::VProj).unwrap().1,
            GgmlType::Q8_0
        );
        // a dense preset takes no experts
        let bad = ModelSpec {
            preset: Some("tiny-dense".into()),
            ..spec
        };
        assert!(preset_shape(&bad).unwrap_err().contains("dense"));
    }
}
