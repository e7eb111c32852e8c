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

/// Weights of a Qwen3 or Qwen3-MoE model.
#[derive(Clone, Debug)]
pub struct Qwen3Weights<'a> {
    pub token_embd: QTensor<'a>,
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
    pub attn_output: QTensor<'a>,
    pub attn_q_norm: Vec<f32>,
    pub attn_k_norm: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    pub ffn: FfnWeights<'a>,
}

/// The feed-forward half of a block.
#[derive(Clone, Debug)]
pub enum FfnWeights<'a> {
    /// qwen3moe: router `[E][H]`, experts gate/up `[E][F][H]`, down `[E][H][F]`.
    Moe {
        ffn_gate_inp: QTensor<'a>,
        ffn_gate_exps: QTensor<'a>,
        ffn_up_exps: QTensor<'a>,
        ffn_down_exps: QTensor<'a>,
    },
    /// qwen3: gate/up `[F][H]`, down `[H][F]`.
    Dense {
        ffn_gate: QTensor<'a>,
        ffn_up: QTensor<'a>,
        ffn_down: QTensor<'a>,
    },
}

impl<'a> Qwen3Weights<'a> {
    pub fn load(file: &'a GgufFile, cfg: &ModelConfig) -> Result<Qwen3Weights<'a>> {
        let (h, v, d) = (cfg.hidden, cfg.vocab, cfg.head_dim);
        // ModelConfig::check_products bounds these; saturating keeps a hand-made config from
        // wrapping (its dims then fail to match any tensor)
        let q = cfg.n_heads.saturating_mul(d);
        let kv = cfg.n_kv_heads.saturating_mul(d);
        let norm = |name: &str, n: usize| QTensor::load(file, name, &[n])?.to_f32();
        let token_embd = QTensor::load(file, "token_embd.weight", &[h, v])?;
        let output = match file.tensor("output.weight") {
            Some(_) => QTensor::load(file, "output.weight", &[h, v])?,
            None => token_embd,
        };
        // sized by what the file holds, never by the count it claims (each layer is tensors)
        let mut layers = Vec::with_capacity(cfg.n_layers.min(file.tensors().len()));
        for i in 0..cfg.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            let mat = |s: &str, dims: &[usize]| QTensor::load(file, &n(s), dims);
            let ffn = if cfg.is_moe() {
                let (e, f) = (cfg.n_experts, cfg.expert_ffn_dim);
                FfnWeights::Moe {
                    ffn_gate_inp: mat("ffn_gate_inp", &[h, e])?,
                    ffn_gate_exps: mat("ffn_gate_exps", &[h, f, e])?,
                    ffn_up_exps: mat("ffn_up_exps", &[h, f, e])?,
                    ffn_down_exps: mat("ffn_down_exps", &[f, h, e])?,
                }
            } else {
                let f = cfg.ffn_dim;
                FfnWeights::Dense {
                    ffn_gate: mat("ffn_gate", &[h, f])?,
                    ffn_up: mat("ffn_up", &[h, f])?,
                    ffn_down: mat("ffn_down", &[f, h])?,
                }
            };
            layers.push(LayerWeights {
                attn_norm: norm(&n("attn_norm"), h)?,
                attn_q: mat("attn_q", &[h, q])?,
                attn_k: mat("attn_k", &[h, kv])?,
                attn_v: mat("attn_v", &[h, kv])?,
                attn_output: mat("attn_output", &[q, h])?,
                attn_q_norm: norm(&n("attn_q_norm"), d)?,
                attn_k_norm: norm(&n("attn_k_norm"), d)?,
                ffn_norm: norm(&n("ffn_norm"), h)?,
                ffn,
            });
        }
        Ok(Qwen3Weights {
            token_embd,
            output_norm: norm("output_norm.weight", h)?,
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
            let w = Qwen3Weights::load(&f, &cfg).unwrap();
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
