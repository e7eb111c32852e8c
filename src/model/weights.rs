//! A model's weights as typed views into the GGUF memory map.
//!
//! Matrices stay quantized and zero-copy ([`QTensor`]: type, shape and raw bytes); a backend
//! decodes the rows it needs when it needs them. Norm gains are small and are decoded to f32 once.
//! Built from a [`GgufFile`] and its [`ModelConfig`]; every error names the tensor. The CPU and
//! CUDA backends share this.

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::gguf::GgufFile;
use crate::model::quant::GgmlType;
use crate::model::quant::dequant::{dequantize, dequantize_q6k_as_q4k};
use crate::trace::stage::Stage;

/// A quantized 2-D weight `[rows][cols]` (`cols` = row length, ggml `dims[0]`), or a stack of
/// `experts` such matrices `[experts][rows][cols]` (the `*_exps` tensors).
#[derive(Clone, Copy, Debug)]
pub struct QTensor<'a> {
    pub name: &'a str,
    pub ty: GgmlType,
    /// 1 for a plain matrix.
    pub experts: usize,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> QTensor<'a> {
    /// The tensor `name` of `file`, checked against the expected ggml dims `[cols, rows]` or
    /// `[cols, rows, experts]`.
    pub fn load(file: &'a GgufFile, name: &str, dims: &[usize]) -> Result<QTensor<'a>> {
        let label = file.path().display();
        let info = file
            .tensor(name)
            .ok_or_else(|| Error::input(format!("{label}: tensor '{name}' is missing")))?;
        let want: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        if info.dims != want {
            return Err(Error::input(format!(
                "{label}: tensor '{name}': expected dims {want:?} (ggml order), found {:?}",
                info.dims
            )));
        }
        let (cols, rows) = (dims[0], dims.get(1).copied().unwrap_or(1));
        let experts = dims.get(2).copied().unwrap_or(1);
        let data = file.tensor_data(info);
        let row_bytes = info.ty.bytes_for(cols as u64).ok_or_else(|| {
            Error::input(format!(
                "{label}: tensor '{name}': row length {cols} is not a whole number of {} blocks",
                info.ty
            ))
        })?;
        let need = row_bytes
            .checked_mul(rows as u64)
            .and_then(|b| b.checked_mul(experts as u64));
        if need != Some(data.len() as u64) {
            return Err(Error::input(format!(
                "{label}: tensor '{name}': {} data bytes, expected {need:?} for {experts}x{rows}x{cols} {}",
                data.len(),
                info.ty
            )));
        }
        Ok(QTensor {
            name: &info.name,
            ty: info.ty,
            experts,
            rows,
            cols,
            data,
        })
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        // checked at load: cols is a whole number of blocks
        self.cols / self.ty.block_values() * self.ty.block_bytes()
    }

    /// Expert `e`'s matrix of a stacked `*_exps` tensor.
    pub fn expert(&self, e: usize) -> Result<QTensor<'a>> {
        let size = self.rows * self.row_bytes();
        let data = (e < self.experts)
            .then(|| self.data.get(e * size..(e + 1) * size))
            .flatten()
            .ok_or_else(|| {
                Error::input(format!(
                    "tensor '{}': expert {e} out of range (it has {})",
                    self.name, self.experts
                ))
            })?;
        Ok(QTensor {
            experts: 1,
            data,
            ..*self
        })
    }

    /// Raw bytes of rows `r0 .. r0 + n` (of a plain matrix, or of expert 0's).
    pub fn rows_data(&self, r0: usize, n: usize) -> Result<&'a [u8]> {
        let rb = self.row_bytes();
        r0.checked_add(n)
            .filter(|&end| end <= self.rows)
            .and_then(|end| self.data.get(r0 * rb..end * rb))
            .ok_or_else(|| {
                Error::internal(format!(
                    "tensor '{}': rows {r0}..{r0}+{n} out of range ({} rows)",
                    self.name, self.rows
                ))
            })
    }

    /// Decode rows `r0 .. r0 + n` to f32 (`out.len() == n * cols`).
    pub fn decode_rows(&self, r0: usize, n: usize, out: &mut [f32]) -> Result<()> {
        dequantize(self.ty, self.rows_data(r0, n)?, out)
            .map_err(|e| e.context(format!("tensor '{}'", self.name)))
    }

    /// Decode rows through the planted fault `q6k_as_q4k` (a Q6_K row read by a Q4_K decoder).
    pub fn decode_rows_q6k_as_q4k(&self, r0: usize, n: usize, out: &mut [f32]) -> Result<()> {
        let data = self.rows_data(r0, n)?;
        let rb = self.row_bytes();
        for (row, o) in data.chunks_exact(rb).zip(out.chunks_exact_mut(self.cols)) {
            dequantize_q6k_as_q4k(row, o)
                .map_err(|e| e.context(format!("tensor '{}'", self.name)))?;
        }
        Ok(())
    }

    /// The whole (small) tensor as f32: norm gains.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.experts * self.rows * self.cols];
        dequantize(self.ty, self.data, &mut out)
            .map_err(|e| e.context(format!("tensor '{}'", self.name)))?;
        Ok(out)
    }
}

/// Weights of a model of any supported architecture; the parts an architecture lacks are
/// `None` (see `model::arch`).
#[derive(Clone, Debug)]
pub struct ModelWeights<'a> {
    pub token_embd: QTensor<'a>,
    /// RoPE frequency divisors `[D/2]` (llama 3 scaling), when the file has them.
    pub rope_freqs: Option<Vec<f32>>,
    pub output_norm: Vec<f32>,
    /// `output.weight`, or `token_embd.weight` when the file ties them (as llama.cpp does).
    pub output: QTensor<'a>,
    pub layers: Vec<LayerWeights<'a>>,
}

/// One transformer block.
#[derive(Clone, Debug)]
pub struct LayerWeights<'a> {
    pub attn_norm: Vec<f32>,
    pub attn_q: QTensor<'a>,
    pub attn_k: QTensor<'a>,
    pub attn_v: QTensor<'a>,
    /// q/k/v projection biases (qwen2, qwen2moe).
    pub attn_q_bias: Option<Vec<f32>>,
    pub attn_k_bias: Option<Vec<f32>>,
    pub attn_v_bias: Option<Vec<f32>>,
    pub attn_output: QTensor<'a>,
    /// Per-head RMSNorm gains of q and k (qwen3, qwen3moe).
    pub attn_q_norm: Option<Vec<f32>>,
    pub attn_k_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub ffn: FfnWeights<'a>,
}

/// The feed-forward half of a block.
#[derive(Clone, Debug)]
pub enum FfnWeights<'a> {
    /// Routed experts: router `[E][H]`, experts gate/up `[E][F][H]`, down `[E][H][F]`, and
    /// optionally a shared expert.
    Moe {
        ffn_gate_inp: QTensor<'a>,
        ffn_gate_exps: QTensor<'a>,
        ffn_up_exps: QTensor<'a>,
        ffn_down_exps: QTensor<'a>,
        shared: Option<Box<SharedExpert<'a>>>,
    },
    /// Dense SwiGLU: gate/up `[F][H]`, down `[H][F]`.
    Dense {
        ffn_gate: QTensor<'a>,
        ffn_up: QTensor<'a>,
        ffn_down: QTensor<'a>,
    },
}

/// qwen2moe's shared expert: its gate logit row `[1][H]` and a SwiGLU FFN of width `S`.
#[derive(Clone, Debug)]
pub struct SharedExpert<'a> {
    pub ffn_gate_inp_shexp: QTensor<'a>,
    pub ffn_gate_shexp: QTensor<'a>,
    pub ffn_up_shexp: QTensor<'a>,
    pub ffn_down_shexp: QTensor<'a>,
}

impl<'a> ModelWeights<'a> {
    /// The weights of `file`. Names and dims come from the architecture's tensor table
    /// ([`ModelConfig::tensor_table`]), each checked as it is loaded.
    pub fn load(file: &'a GgufFile, cfg: &ModelConfig) -> Result<ModelWeights<'a>> {
        // the expected dims of every tensor the architecture has, by name
        let table: std::collections::HashMap<String, Vec<usize>> = cfg
            .tensor_table()
            .into_iter()
            .map(|(name, dims, _)| (name, dims.into_iter().map(|d| d as usize).collect()))
            .collect();
        let dims_of = |name: &str| {
            table.get(name).ok_or_else(|| {
                Error::internal(format!("{} has no tensor '{name}' in its table", cfg.arch))
            })
        };
        let mat = |name: &str| QTensor::load(file, name, dims_of(name)?);
        let vector = |name: &str| mat(name)?.to_f32();
        let opt_vector = |name: &str| match file.tensor(name) {
            Some(_) if table.contains_key(name) => vector(name).map(Some),
            _ => Ok(None),
        };
        let token_embd = mat("token_embd.weight")?;
        let output = match file.tensor("output.weight") {
            Some(_) => mat("output.weight")?,
            None => token_embd,
        };
        let desc = cfg.desc();
        // sized by what the file holds, never by the count it claims (each layer is tensors)
        let mut layers = Vec::with_capacity(cfg.n_layers.min(file.tensors().len()));
        for i in 0..cfg.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            let m = |s: &str| mat(&n(s));
            let v = |s: &str| vector(&n(s));
            let ffn = if cfg.is_moe() {
                let shared = if cfg.has_stage(Stage::FfnSharedOut) {
                    Some(Box::new(SharedExpert {
                        ffn_gate_inp_shexp: m("ffn_gate_inp_shexp.weight")?,
                        ffn_gate_shexp: m("ffn_gate_shexp.weight")?,
                        ffn_up_shexp: m("ffn_up_shexp.weight")?,
                        ffn_down_shexp: m("ffn_down_shexp.weight")?,
                    }))
                } else {
                    None
                };
                FfnWeights::Moe {
                    ffn_gate_inp: m("ffn_gate_inp.weight")?,
                    ffn_gate_exps: m("ffn_gate_exps.weight")?,
                    ffn_up_exps: m("ffn_up_exps.weight")?,
                    ffn_down_exps: m("ffn_down_exps.weight")?,
                    shared,
                }
            } else {
                FfnWeights::Dense {
                    ffn_gate: m("ffn_gate.weight")?,
                    ffn_up: m("ffn_up.weight")?,
                    ffn_down: m("ffn_down.weight")?,
                }
            };
            let bias = |s: &str| desc.qkv_bias.then(|| v(s)).transpose();
            let qk_norm = |s: &str| desc.qk_norm.then(|| v(s)).transpose();
            layers.push(LayerWeights {
                attn_norm: v("attn_norm.weight")?,
                attn_q: m("attn_q.weight")?,
                attn_k: m("attn_k.weight")?,
                attn_v: m("attn_v.weight")?,
                attn_q_bias: bias("attn_q.bias")?,
                attn_k_bias: bias("attn_k.bias")?,
                attn_v_bias: bias("attn_v.bias")?,
                attn_output: m("attn_output.weight")?,
                attn_q_norm: qk_norm("attn_q_norm.weight")?,
                attn_k_norm: qk_norm("attn_k_norm.weight")?,
                ffn_norm: v("ffn_norm.weight")?,
                ffn,
            });
        }
        Ok(ModelWeights {
            token_embd,
            rope_freqs: opt_vector("rope_freqs.weight")?,
            output_norm: vector("output_norm.weight")?,
            output,
            layers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixture(name: &str) -> GgufFile {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/qwen3moe-tiny")
            .join(name);
        GgufFile::open(&p).unwrap()
    }

    #[test]
    fn loads_tiny_moe_and_slices_experts() {
        for name in ["qwen3moe-tiny-f32.gguf", "qwen3moe-tiny-q8_0.gguf"] {
            let f = fixture(name);
            let cfg = ModelConfig::from_gguf(&f).unwrap();
            let w = ModelWeights::load(&f, &cfg).unwrap();
            assert_eq!(w.layers.len(), cfg.n_layers);
            let FfnWeights::Moe { ffn_down_exps, .. } = &w.layers[0].ffn else {
                panic!("expected MoE weights");
            };
            assert_eq!(ffn_down_exps.experts, cfg.n_experts);
            assert_eq!(
                (ffn_down_exps.rows, ffn_down_exps.cols),
                (cfg.hidden, cfg.expert_ffn_dim)
            );
            let last = ffn_down_exps.expert(cfg.n_experts - 1).unwrap();
            assert_eq!(last.data.len(), ffn_down_exps.data.len() / cfg.n_experts);
            assert!(ffn_down_exps.expert(cfg.n_experts).is_err());
            let mut row = vec![0f32; last.cols];
            last.decode_rows(last.rows - 1, 1, &mut row).unwrap();
            assert!(last.decode_rows(last.rows, 1, &mut row).is_err());
            assert!(row.iter().all(|x| x.is_finite()) && row.iter().any(|x| *x != 0.0));
        }
    }
}
