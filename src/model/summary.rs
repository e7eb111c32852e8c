//! What a model file is, in numbers, for `falsifier inspect`: its shape from the config, its
//! files (the shards of a split model), and its tensors by type. Everything is read from the
//! [`GgufFile`] and its [`ModelConfig`], never guessed from names.

use serde::Serialize;

use crate::model::config::ModelConfig;
use crate::model::gguf::GgufFile;

/// The shape of a model, as [`ModelConfig`] reads it.
#[derive(Clone, Debug, Serialize)]
pub struct Shape {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// The dense FFN width (`feed_forward_length`; 0 where an MoE file has none).
    pub ffn: usize,
    /// 0 for a dense model.
    pub experts: usize,
    pub experts_used: usize,
    pub expert_ffn: usize,
    /// The shared expert's width (qwen2moe), 0 without one.
    pub shared_expert_ffn: usize,
    pub vocab: usize,
    pub context: usize,
    pub rope_theta: f32,
    /// "rope_freqs.weight" when the file scales RoPE frequencies with it (Llama 3.1), else
    /// "none".
    pub rope_scaling: &'static str,
}

/// One file of the model.
#[derive(Clone, Debug, Serialize)]
pub struct FileSummary {
    pub path: String,
    pub bytes: u64,
    pub tensors: usize,
}

/// The tensors of one ggml type.
#[derive(Clone, Debug, Serialize)]
pub struct TypeSummary {
    #[serde(rename = "type")]
    pub ty: String,
    pub tensors: usize,
    /// Bytes of tensor data.
    pub bytes: u64,
    pub params: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelSummary {
    /// `general.architecture`.
    pub arch: &'static str,
    pub shape: Shape,
    /// One file, or the shards in order.
    pub files: Vec<FileSummary>,
    /// By type, in order of first appearance in the file.
    pub types: Vec<TypeSummary>,
    pub tensors: usize,
    /// Bytes of tensor data, all types.
    pub tensor_bytes: u64,
    /// Parameters (values) of all tensors.
    pub params: u64,
}

impl ModelSummary {
    pub fn of(file: &GgufFile, cfg: &ModelConfig) -> ModelSummary {
        let mut types: Vec<TypeSummary> = Vec::new();
        for t in file.tensors() {
            let name = t.ty.name().to_string();
            let i = match types.iter().position(|s| s.ty == name) {
                Some(i) => i,
                None => {
                    types.push(TypeSummary {
                        ty: name,
                        tensors: 0,
                        bytes: 0,
                        params: 0,
                    });
                    types.len() - 1
                }
            };
            let s = &mut types[i];
            s.tensors += 1;
            s.bytes += t.nbytes;
            s.params += t.n_elements();
        }
        ModelSummary {
            arch: cfg.arch.name(),
            shape: Shape {
                layers: cfg.n_layers,
                hidden: cfg.hidden,
                heads: cfg.n_heads,
                kv_heads: cfg.n_kv_heads,
                head_dim: cfg.head_dim,
                ffn: cfg.ffn_dim,
                experts: cfg.n_experts,
                experts_used: cfg.n_experts_used,
                expert_ffn: cfg.expert_ffn_dim,
                shared_expert_ffn: cfg.shared_ffn_dim,
                vocab: cfg.vocab,
                context: cfg.context_length,
                rope_theta: cfg.rope_theta,
                rope_scaling: if cfg.rope_freqs {
                    "rope_freqs.weight"
                } else {
                    "none"
                },
            },
            files: file
                .shards()
                .iter()
                .map(|s| FileSummary {
                    path: s.path().display().to_string(),
                    bytes: s.file_len(),
                    tensors: s.n_tensors(),
                })
                .collect(),
            tensors: file.tensors().len(),
            tensor_bytes: types.iter().map(|s| s.bytes).sum(),
            params: types.iter().map(|s| s.params).sum(),
            types,
        }
    }
}
