//! Model weights on the device, in their GGUF block format (uploaded once per model, never
//! dequantized as a whole), and the hyper-parameters the forward needs.
//!
//! Matrices keep their own GGML type: a Q4_K_M file mixes Q4_K, Q6_K (and Q5_0/Q8_0 where rows
//! are not a multiple of 256), and the matmul dispatch ([`super::matmul`]) picks the kernel from each
//! tensor's type.
//! Norm weights are small and are decoded to f32 once, on the device, by the same decoders.

use cudarc::driver::CudaSlice;

use super::device::{Arg, Device, NULL, grid_1d, int};
use crate::error::{Error, Result};
use crate::model::arch::RopePairing;
use crate::model::config::ModelConfig;
use crate::model::quant::GgmlType;
use crate::trace::stage::Stage;

/// A tensor as the model file holds it: name, GGML type, dims in ggml order (`dims[0]` is the
/// row length) and the raw bytes.
#[derive(Clone, Copy, Debug)]
pub struct HostTensor<'a> {
    pub name: &'a str,
    pub ty: GgmlType,
    pub dims: &'a [u64],
    pub bytes: &'a [u8],
}

/// Hyper-parameters of a model, as the forward uses them; `config` is the whole model config,
/// whose architecture description (`model::arch`) says which stages there are and their shapes.
#[derive(Clone, Debug, PartialEq)]
pub struct Dims {
    pub config: ModelConfig,
    /// Routed experts (qwen3moe, Mixtral, qwen2moe) or a dense FFN.
    pub moe: bool,
    pub n_layers: usize,
    pub hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Experts per layer (MoE only; 0 for dense).
    pub n_experts: usize,
    /// Experts per token (MoE only; 0 for dense).
    pub top_k: usize,
    /// FFN width: `feed_forward_length` (dense) or `expert_feed_forward_length` (MoE).
    pub ffn: usize,
    pub vocab: usize,
    /// Longest prompt the model takes (`{arch}.context_length`).
    pub context_length: usize,
    pub eps: f32,
    pub rope_theta: f32,
    /// Renormalise the top-k router weights to sum 1 (qwen3moe, Mixtral).
    pub norm_topk: bool,
    /// Per-head q/k RMSNorm before RoPE (qwen3).
    pub qk_norm: bool,
    /// q/k/v projection biases (qwen2).
    pub qkv_bias: bool,
    pub rope: RopePairing,
    /// The shared expert's width (qwen2moe); 0 without one.
    pub shared_ffn: usize,
}

impl Dims {
    pub fn from_config(c: &ModelConfig) -> Dims {
        let moe = c.is_moe();
        let desc = c.desc();
        Dims {
            config: c.clone(),
            moe,
            n_layers: c.n_layers,
            hidden: c.hidden,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            n_experts: if moe { c.n_experts } else { 0 },
            top_k: if moe { c.n_experts_used } else { 0 },
            ffn: if moe { c.expert_ffn_dim } else { c.ffn_dim },
            vocab: c.vocab,
            context_length: c.context_length,
            eps: c.rms_eps,
            rope_theta: c.rope_theta,
            norm_topk: c.norm_topk_prob,
            qk_norm: desc.qk_norm,
            qkv_bias: desc.qkv_bias,
            rope: desc.rope,
            shared_ffn: if c.has_stage(Stage::FfnSharedOut) {
                c.shared_ffn_dim
            } else {
                0
            },
        }
    }
}

/// The kernel-name suffix of a GGML type the device decodes, or `None`.
pub fn kernel_suffix(ty: GgmlType) -> Option<&'static str> {
    use GgmlType::*;
    Some(match ty {
        F32 => "f32",
        F16 => "f16",
        BF16 => "bf16",
        Q8_0 => "q8_0",
        Q4_0 => "q4_0",
        Q4_1 => "q4_1",
        Q5_0 => "q5_0",
        Q5_1 => "q5_1",
        Q4_K => "q4_k",
        Q5_K => "q5_k",
        Q6_K => "q6_k",
        IQ2_XXS => "iq2_xxs",
        IQ2_XS => "iq2_xs",
        IQ2_S => "iq2_s",
        IQ3_XXS => "iq3_xxs",
        IQ3_S => "iq3_s",
        IQ1_S => "iq1_s",
        IQ1_M => "iq1_m",
        IQ4_NL => "iq4_nl",
        IQ4_XS => "iq4_xs",
        TQ1_0 => "tq1_0",
        TQ2_0 => "tq2_0",
        MXFP4 => "mxfp4",
        _ => return None,
    })
}

/// Zero bytes after each weight tensor on the device: the 8-value decoders' word loads may read
/// up to 2 bytes past the values they decode (kernels/common.cuh, `ld8`).
pub const WEIGHT_PADDING: usize = 16;

/// A weight matrix (or a stack of expert matrices) on the device: `mats` matrices of `rows`
/// rows (outputs) of `cols` values (inputs), each row `row_bytes` bytes of blocks.
pub struct DeviceMatrix {
    pub name: String,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub mats: usize,
    pub row_bytes: usize,
    pub data: CudaSlice<u8>,
}

impl DeviceMatrix {
    /// Upload `t`, checking that it is `mats` x `rows` x `cols` (ggml dims `[cols, rows, mats]`)
    /// and that its byte size matches its type.
    pub fn upload(
        dev: &Device,
        t: &HostTensor<'_>,
        cols: usize,
        rows: usize,
        mats: usize,
    ) -> Result<DeviceMatrix> {
        let mut want: Vec<u64> = vec![cols as u64, rows as u64];
        if mats > 1 {
            want.push(mats as u64);
        }
        // ggml drops trailing dims of 1 in some writers: compare without them
        let trim = |d: &[u64]| -> Vec<u64> {
            let mut v = d.to_vec();
            while v.len() > 1 && v.last() == Some(&1) {
                v.pop();
            }
            v
        };
        if trim(t.dims) != trim(&want) {
            return Err(Error::input(format!(
                "tensor {}: dims {:?} (ggml order), expected {:?}",
                t.name, t.dims, want
            )));
        }
        let Some(suffix) = kernel_suffix(t.ty) else {
            return Err(Error::input(format!(
                "tensor {}: type {} is not supported by the CUDA backend",
                t.name, t.ty
            )));
        };
        // compile the type's kernels now, at open, not inside the first (timed) forward
        dev.load_types(&[suffix])?;
        let row_bytes = t.ty.bytes_for(cols as u64).ok_or_else(|| {
            Error::input(format!(
                "tensor {}: rows of {cols} values are not whole {} blocks",
                t.name, t.ty
            ))
        })?;
        let total = row_bytes
            .checked_mul(rows as u64)
            .and_then(|b| b.checked_mul(mats as u64));
        if total != Some(t.bytes.len() as u64) {
            return Err(Error::input(format!(
                "tensor {}: {} bytes of data, expected {total:?} for {mats} x {rows} x {cols} {}",
                t.name,
                t.bytes.len(),
                t.ty
            )));
        }
        let data = dev.upload_padded(t.bytes, WEIGHT_PADDING, t.name)?;
        Ok(DeviceMatrix {
            name: t.name.to_string(),
            ty: t.ty,
            rows,
            cols,
            mats,
            row_bytes: row_bytes as usize,
            data,
        })
    }

    /// Bytes of one matrix of the stack.
    pub fn mat_bytes(&self) -> usize {
        self.row_bytes * self.rows
    }

    /// Decode rows `ids` (or row 0 when `ids` is NULL) to f32 into `out` (`n_ids x cols`).
    pub fn gather(
        &self,
        dev: &Device,
        stage: &str,
        ids: Arg,
        n_ids: usize,
        out: &CudaSlice<f32>,
    ) -> Result<()> {
        let suffix = kernel_suffix(self.ty)
            .ok_or_else(|| Error::internal(format!("{}: no decoder for {}", self.name, self.ty)))?;
        let n = n_ids * self.cols;
        dev.launch(
            &format!("gather_{suffix}"),
            stage,
            grid_1d(n)?,
            &[
                Arg::Ptr(dev.ptr(&self.data)),
                Arg::I64(self.row_bytes as i64),
                ids,
                Arg::Ptr(dev.ptr(out)),
                int(n_ids, "rows")?,
                int(self.cols, "row length")?,
            ],
        )
    }
}

/// One transformer layer's weights; the parts an architecture lacks are `None`.
pub struct LayerWeights {
    pub attn_norm: CudaSlice<f32>,
    pub q: DeviceMatrix,
    pub k: DeviceMatrix,
    pub v: DeviceMatrix,
    /// q/k/v biases (qwen2, qwen2moe).
    pub qkv_bias: Option<[CudaSlice<f32>; 3]>,
    /// q/k norm gains (qwen3, qwen3moe).
    pub qk_norm: Option<[CudaSlice<f32>; 2]>,
    pub o: DeviceMatrix,
    pub ffn_norm: CudaSlice<f32>,
    pub ffn: FfnWeights,
}

/// The FFN of a layer: dense SwiGLU or routed experts.
pub enum FfnWeights {
    Dense {
        gate: DeviceMatrix,
        up: DeviceMatrix,
        down: DeviceMatrix,
    },
    Moe {
        router: DeviceMatrix,
        gate: DeviceMatrix,
        up: DeviceMatrix,
        down: DeviceMatrix,
        shared: Option<Box<SharedExpert>>,
    },
}

/// qwen2moe's shared expert: the gate logit row `[1][H]` and its SwiGLU FFN.
pub struct SharedExpert {
    pub gate_inp: DeviceMatrix,
    pub gate: DeviceMatrix,
    pub up: DeviceMatrix,
    pub down: DeviceMatrix,
}

/// All weights of a model, on the device.
pub struct DeviceWeights {
    pub dims: Dims,
    pub token_embd: DeviceMatrix,
    pub layers: Vec<LayerWeights>,
    pub output_norm: CudaSlice<f32>,
    /// `output.weight`, or `None` when the model ties it to `token_embd`.
    pub output: Option<DeviceMatrix>,
    /// RoPE frequency divisors `[D/2]` (llama 3 `rope_freqs`), when the model has them.
    pub rope_freqs: Option<CudaSlice<f32>>,
}

impl DeviceWeights {
    /// Upload a model. `get` returns a tensor by its llama.cpp name.
    pub fn upload<'a>(
        dev: &Device,
        dims: Dims,
        get: &dyn Fn(&str) -> Option<HostTensor<'a>>,
    ) -> Result<DeviceWeights> {
        check_dims(&dims)?;
        let need = |name: &str| -> Result<HostTensor<'a>> {
            get(name).ok_or_else(|| Error::input(format!("model has no tensor {name}")))
        };
        let (h, nh, nkv, d, f) = (
            dims.hidden,
            dims.n_heads,
            dims.n_kv_heads,
            dims.head_dim,
            dims.ffn,
        );
        let mat = |name: &str, cols: usize, rows: usize| -> Result<DeviceMatrix> {
            DeviceMatrix::upload(dev, &need(name)?, cols, rows, 1)
        };
        let vec_f32 = |name: &str, n: usize| -> Result<CudaSlice<f32>> {
            let m = mat(name, n, 1)?;
            let out = dev.zeros::<f32>(n, name)?;
            m.gather(dev, name, NULL, 1, &out)?;
            Ok(out)
        };
        let token_embd = mat("token_embd.weight", h, dims.vocab)?;
        let mut layers = Vec::with_capacity(dims.n_layers);
        for i in 0..dims.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            let ffn = if dims.moe {
                let e = dims.n_experts;
                let sf = dims.shared_ffn;
                let shared = if sf > 0 {
                    Some(Box::new(SharedExpert {
                        gate_inp: mat(&n("ffn_gate_inp_shexp"), h, 1)?,
                        gate: mat(&n("ffn_gate_shexp"), h, sf)?,
                        up: mat(&n("ffn_up_shexp"), h, sf)?,
                        down: mat(&n("ffn_down_shexp"), sf, h)?,
                    }))
                } else {
                    None
                };
                FfnWeights::Moe {
                    router: mat(&n("ffn_gate_inp"), h, e)?,
                    gate: DeviceMatrix::upload(dev, &need(&n("ffn_gate_exps"))?, h, f, e)?,
                    up: DeviceMatrix::upload(dev, &need(&n("ffn_up_exps"))?, h, f, e)?,
                    down: DeviceMatrix::upload(dev, &need(&n("ffn_down_exps"))?, f, h, e)?,
                    shared,
                }
            } else {
                FfnWeights::Dense {
                    gate: mat(&n("ffn_gate"), h, f)?,
                    up: mat(&n("ffn_up"), h, f)?,
                    down: mat(&n("ffn_down"), f, h)?,
                }
            };
            let bias = |s: &str, len: usize| vec_f32(&format!("blk.{i}.{s}.bias"), len);
            let qkv_bias = if dims.qkv_bias {
                Some([
                    bias("attn_q", nh * d)?,
                    bias("attn_k", nkv * d)?,
                    bias("attn_v", nkv * d)?,
                ])
            } else {
                None
            };
            let qk_norm = if dims.qk_norm {
                Some([
                    vec_f32(&n("attn_q_norm"), d)?,
                    vec_f32(&n("attn_k_norm"), d)?,
                ])
            } else {
                None
            };
            layers.push(LayerWeights {
                attn_norm: vec_f32(&n("attn_norm"), h)?,
                q: mat(&n("attn_q"), h, nh * d)?,
                k: mat(&n("attn_k"), h, nkv * d)?,
                v: mat(&n("attn_v"), h, nkv * d)?,
                qkv_bias,
                qk_norm,
                o: mat(&n("attn_output"), nh * d, h)?,
                ffn_norm: vec_f32(&n("ffn_norm"), h)?,
                ffn,
            });
        }
        let output_norm = vec_f32("output_norm.weight", h)?;
        let output = match get("output.weight") {
            Some(t) => Some(DeviceMatrix::upload(dev, &t, h, dims.vocab, 1)?),
            None => None,
        };
        let rope_freqs = match get("rope_freqs.weight") {
            Some(_) => Some(vec_f32("rope_freqs.weight", d / 2)?),
            None => None,
        };
        dev.sync("weight upload")?;
        Ok(DeviceWeights {
            dims,
            token_embd,
            layers,
            output_norm,
            output,
            rope_freqs,
        })
    }

    /// The lm_head matrix: `output.weight`, or the tied embedding.
    pub fn lm_head(&self) -> &DeviceMatrix {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }
}

/// Shapes the kernels rely on.
fn check_dims(d: &Dims) -> Result<()> {
    let bad = |why: String| Err(Error::input(format!("model hyper-parameters: {why}")));
    if d.hidden == 0 || d.n_heads == 0 || d.n_kv_heads == 0 || d.head_dim == 0 || d.vocab == 0 {
        return bad(format!("a zero size in {d:?}"));
    }
    if !d.head_dim.is_multiple_of(2) {
        return bad(format!(
            "head_dim {} is odd; RoPE pairs need an even head size",
            d.head_dim
        ));
    }
    if !d.n_heads.is_multiple_of(d.n_kv_heads) {
        return bad(format!(
            "{} query heads are not a multiple of {} kv heads",
            d.n_heads, d.n_kv_heads
        ));
    }
    if d.moe && (d.n_experts == 0 || d.top_k == 0 || d.top_k > d.n_experts) {
        return bad(format!("top-{} of {} experts", d.top_k, d.n_experts));
    }
    // the top-k kernel keeps a 64-bit mask of chosen experts per lane of a warp
    if d.moe && d.n_experts > 32 * 64 {
        return bad(format!(
            "{} experts; the CUDA router handles at most {}",
            d.n_experts,
            32 * 64
        ));
    }
    Ok(())
}
