//! The decoder forward on the device: every step of the request's schedule (the whole prompt
//! at once by default; prefill chunks and decode steps through a KV cache), every stage of the
//! stage vocabulary (docs/design.md), planted faults, teacher forcing and capture. A step's
//! rows of each stage are captured into the same rows of the trace's whole-prompt tensors.
//!
//! Semantics mirror the CPU reference stage for stage (see `backend/fault.rs` for the faults
//! and `ForwardRequest` for teacher forcing): a stage's output is final once the faults planted
//! on it have acted, and that final value is both what the next stage reads and what is
//! captured. Capturing never changes what is computed, so traced and untraced forwards give
//! bitwise-equal numbers.
//!
//! Agreement with the f64 CPU reference: weights decode bit-identically (see kernels/
//! common.cuh); matmuls (each output summed in k order by one thread; at one row per matrix
//! by a warp, the Q4_K/Q6_K block scales applied once per group of values sharing them, see
//! kernels/matmul.cu) and attention scores (split over 32 lanes) accumulate in f32 with FMA,
//! whose rounding grows like sqrt(K) * 2^-24 of a dot product's absolute sum (a few 1e-6 at
//! K = 8192, far under the thresholds); norms, softmaxes, RoPE, SiLU and the expert combine
//! run in f64 like the reference. So f32 models agree to about 1e-6 relative L2 per stage, two
//! orders under the 1e-4 the golden data asks.
//!
//! A one-token step merges launches where a stage's output only feeds the next one (q/k norms
//! with RoPE and the cache write; router softmax, top-k and grouping; gate, up and SwiGLU; a
//! projection and its residual add; the expert down projections, their combine and layer_out):
//! the merged kernels compute the separate kernels' values bit for bit, so captures and planted
//! faults see the same stages (a fault planted between two merged stages turns merging off
//! there). The q/k launch serves prefill chunks too.

use std::ops::Range;

use cudarc::driver::{CudaSlice, LaunchConfig};

use super::capture::{Arena, Capture};
use super::device::{Arg, Device, NULL, grid_1d, int};
use super::matmul::{GroupPtrs, MatmulCall};
use super::weights::{DeviceMatrix, DeviceWeights, Dims, FfnWeights, SharedExpert};
use crate::backend::rows::{StepRows, row_axis};
use crate::backend::{Fault, FaultKind, ForwardRequest, Step};
use crate::error::{Error, Result};
use crate::model::arch::RopePairing;
use crate::model::quant::GgmlType;
use crate::trace::stage::{Key, Stage};
use crate::trace::trace::{Trace, TraceMeta};

mod merged;

/// Whether the architecture computes `stage` (its description says; see `model::arch`).
pub fn has_stage(d: &Dims, stage: Stage) -> bool {
    d.config.has_stage(stage)
}

/// Shape of a stage's tensor for a prompt of `t` tokens.
pub fn stage_shape(d: &Dims, t: usize, stage: Stage) -> Vec<usize> {
    d.config.stage_shape(stage, t)
}

/// Check the faults against the model and the schedule's steps before any work is queued (a
/// Q6_K weight for `q6k_as_q4k` is checked where the matmul runs): a fault that cannot fire is
/// an error, never a silent clean run.
fn check_faults(d: &Dims, faults: &[Fault], steps: &[Step]) -> Result<()> {
    for f in faults {
        let bad = |e: String| Error::input(format!("fault {f}: {e}"));
        f.check_model(&d.config).map_err(bad)?;
        f.check_schedule(steps).map_err(bad)?;
    }
    Ok(())
}

/// Expert grouping of one MoE layer, all on the device.
struct Groups<'a> {
    counts: &'a CudaSlice<i32>,
    offsets: &'a CudaSlice<i32>,
    /// Input row of each grouped slot (the token), or none when the input is already grouped.
    in_rows: Option<&'a CudaSlice<i32>>,
    swap: Option<(usize, usize)>,
    /// The expert of each grouped slot, when the matmuls' grid runs over the slots (fewer
    /// slots than experts: a decode step's k of 128).
    zmap: Option<&'a CudaSlice<i32>>,
}

/// Device buffers of one forward, reused by every layer.
struct Buffers {
    x: CudaSlice<f32>,
    layer_in: CudaSlice<f32>,
    attn_norm: CudaSlice<f32>,
    q: CudaSlice<f32>,
    k: CudaSlice<f32>,
    v: CudaSlice<f32>,
    qn: CudaSlice<f32>,
    kn: CudaSlice<f32>,
    qr: CudaSlice<f32>,
    kr: CudaSlice<f32>,
    /// Attention probabilities of `probs_rows` queries, [nh, probs_rows, T]: all T when the
    /// run keeps them, else a bounded block ([`attention_block_rows`]).
    probs: CudaSlice<f32>,
    probs_rows: usize,
    ctx: CudaSlice<f32>,
    attn_out: CudaSlice<f32>,
    resid: CudaSlice<f32>,
    ffn_norm: CudaSlice<f32>,
    ffn_out: CudaSlice<f32>,
    /// Dense: gate, up, act [T, F]. MoE: the same for the T*k grouped slots [T*k, F].
    gate: CudaSlice<f32>,
    up: CudaSlice<f32>,
    act: CudaSlice<f32>,
    /// MoE only: router logits/probs [T, E], top-k ids/weights [T, k], grouping, expert outputs.
    router_logits: CudaSlice<f32>,
    router_probs: CudaSlice<f32>,
    topk_ids: CudaSlice<i32>,
    topk_w: CudaSlice<f32>,
    counts: CudaSlice<i32>,
    offsets: CudaSlice<i32>,
    slot_token: CudaSlice<i32>,
    slot_of: CudaSlice<i32>,
    slot_expert: CudaSlice<i32>,
    /// The blocks of a router launch that routes in its last block (`matmulwn_route_*`) count
    /// themselves here; that last block sets it back to 0.
    route_done: CudaSlice<i32>,
    down: CudaSlice<f32>,
    /// Matmul input after planted Q8_0 rounding (largest input: [T*k, max(H, F, nh*D)]).
    rounded: CudaSlice<f32>,
    /// RoPE (cos, sin) per position and frequency, f64 [T, D/2, 2]: computed once, read by
    /// every layer's q and k.
    rope_angles: CudaSlice<f64>,
    /// Shared expert (qwen2moe): gate [T], its SwiGLU [T, S] x 3, output [T, H].
    sh_gate: CudaSlice<f32>,
    sh_ffn: [CudaSlice<f32>; 3],
    sh_out: CudaSlice<f32>,
}

impl Buffers {
    /// Buffers for steps of at most `t` rows of a prompt of `prompt` positions: the attention
    /// probabilities hold `probs_rows` query rows of `prompt` keys, the RoPE table every
    /// position.
    fn new(dev: &Device, d: &Dims, t: usize, probs_rows: usize, prompt: usize) -> Result<Buffers> {
        let (h, nh, nkv, hd) = (d.hidden, d.n_heads, d.n_kv_heads, d.head_dim);
        let slots = if d.moe { t * d.top_k } else { t };
        let e = d.n_experts.max(1);
        let k = d.top_k.max(1);
        let widest = h.max(d.ffn).max(nh * hd).max(d.shared_ffn);
        let sh = |n: usize| if d.shared_ffn > 0 { n } else { 1 };
        let f = |n: usize, what: &str| dev.zeros::<f32>(n, what);
        let i = |n: usize, what: &str| dev.zeros::<i32>(n, what);
        Ok(Buffers {
            x: f(t * h, "hidden state")?,
            layer_in: f(t * h, "teacher layer input")?,
            attn_norm: f(t * h, "attn_norm")?,
            q: f(t * nh * hd, "q_proj")?,
            k: f(t * nkv * hd, "k_proj")?,
            v: f(t * nkv * hd, "v_proj")?,
            qn: f(t * nh * hd, "q_norm")?,
            kn: f(t * nkv * hd, "k_norm")?,
            qr: f(t * nh * hd, "q_rope")?,
            kr: f(t * nkv * hd, "k_rope")?,
            probs: f(nh * probs_rows * prompt, "attn_probs")?,
            probs_rows,
            ctx: f(t * nh * hd, "attn_ctx")?,
            attn_out: f(t * h, "attn_out")?,
            resid: f(t * h, "attn_residual")?,
            ffn_norm: f(t * h, "ffn_norm")?,
            ffn_out: f(t * h, "ffn_out")?,
            gate: f(slots * d.ffn, "ffn_gate")?,
            up: f(slots * d.ffn, "ffn_up")?,
            act: f(slots * d.ffn, "ffn_act")?,
            router_logits: f(t * e, "router_logits")?,
            router_probs: f(t * e, "router_probs")?,
            topk_ids: i(t * k, "topk_ids")?,
            topk_w: f(t * k, "topk_weights")?,
            counts: i(e, "expert counts")?,
            offsets: i(e, "expert offsets")?,
            slot_token: i(t * k, "expert slots")?,
            slot_of: i(t * k, "expert slots")?,
            slot_expert: i(t * k, "expert slots")?,
            route_done: i(1, "router block counter")?,
            down: f(if d.moe { slots * h } else { 1 }, "expert outputs")?,
            rounded: f(slots * widest, "rounded activations")?,
            rope_angles: dev.zeros::<f64>(prompt * (hd / 2).max(1) * 2, "RoPE angles")?,
            sh_gate: f(sh(t), "ffn_shared_gate")?,
            sh_ffn: [
                f(sh(t * d.shared_ffn), "shared expert gate")?,
                f(sh(t * d.shared_ffn), "shared expert up")?,
                f(sh(t * d.shared_ffn), "shared expert act")?,
            ],
            sh_out: f(sh(t * h), "ffn_shared_out")?,
        })
    }
}

/// Bytes [`Buffers::new`] allocates for a `t`-token forward, without the attention
/// probabilities (`probs`, sized by the caller's block rows): the activation buffers, for
/// `falsifier inspect`'s estimate. Written from the same sizes as `Buffers::new`, which it must
/// follow when a buffer is added there.
pub fn buffer_bytes(d: &Dims, t: usize) -> u64 {
    let (h, nh, nkv, hd) = (d.hidden, d.n_heads, d.n_kv_heads, d.head_dim);
    let slots = if d.moe { t * d.top_k } else { t };
    let e = d.n_experts.max(1);
    let k = d.top_k.max(1);
    let widest = h.max(d.ffn).max(nh * hd).max(d.shared_ffn);
    let sh = |n: usize| if d.shared_ffn > 0 { n } else { 1 };
    let words = 7 * t * h // x, layer_in, attn_norm, attn_out, resid, ffn_norm, ffn_out
        + 4 * t * nh * hd // q, qn, qr, ctx
        + 4 * t * nkv * hd // k, v, kn, kr
        + 3 * slots * d.ffn // gate, up, act
        + 2 * t * e // router logits, probs
        + 5 * t * k // topk ids, weights, slot_token, slot_of, slot_expert
        + 2 * e // counts, offsets
        + 1 // route_done
        + if d.moe { slots * h } else { 1 } // down
        + slots * widest // rounded
        + sh(t) + 3 * sh(t * d.shared_ffn) + sh(t * h); // shared expert
    let rope = t * (hd / 2).max(1) * 2 * 8; // f64 (cos, sin)
    (words * 4 + rope) as u64
}

/// The KV cache of a scheduled forward (or of any forward with an f16 cache): every layer's
/// post-RoPE K and its V, `[T, nkv, D]` each, f32 or IEEE half bits, zero at the start of the
/// forward (a fresh cache, so a slot not written yet reads as zeros, as on the CPU).
struct DeviceKvCache {
    buf: CudaSlice<u8>,
    /// Bytes of one layer's K (or V).
    plane: usize,
    f16: bool,
}

impl DeviceKvCache {
    fn new(dev: &Device, d: &Dims, t: usize, f16: bool) -> Result<DeviceKvCache> {
        let plane = t * d.n_kv_heads * d.head_dim * if f16 { 2 } else { 4 };
        let buf = dev.zeros::<u8>(d.n_layers * 2 * plane, "KV cache")?;
        Ok(DeviceKvCache { buf, plane, f16 })
    }

    /// Layer `l`'s K and V planes.
    fn planes(&self, dev: &Device, l: usize) -> (u64, u64) {
        let k = dev.ptr(&self.buf) + (2 * l * self.plane) as u64;
        (k, k + self.plane as u64)
    }
}

/// How far a layer's norm-folding router launch went, for [`Run::moe`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum RouterDone {
    /// Nothing: the router logits are still to compute.
    No,
    /// The logits (`matmulwn_*`).
    Logits,
    /// The logits and the routing (`matmulwn_route_*`).
    Routed,
}

/// One forward in flight.
struct Run<'a> {
    dev: &'a Device,
    w: &'a DeviceWeights,
    req: &'a ForwardRequest<'a>,
    /// Prompt length: the trace's tensors hold `t` positions.
    t: usize,
    /// The step of the schedule being computed: kernels run over its rows.
    step: Step,
    /// The KV cache, when the forward has more than one step or an f16 cache; the one-step
    /// f32 forward attends over its own k_rope / v_proj.
    cache: Option<DeviceKvCache>,
    /// While a decode step is recorded into a CUDA graph: the device address of its token id,
    /// followed by its position (an i32 each, written before every replay), which the
    /// embedding, RoPE, the cache write and the attention read instead of launch arguments.
    graph_step: Option<u64>,
    /// While recording: where the step's logits row goes (`store_row_at`), row 0 being the
    /// first decode position, when the plan keeps logits.
    graph_logits: Option<(u64, usize)>,
    /// Whether stages whose launches can be merged are ([`Device::merged`]: the kernels
    /// `qk_rope_store`, `moe_route1`, `gate_up_*`, `matmulwr_*` and `down_combine_*`, bit for
    /// bit what the separate ones compute; the GPU test `merged_launches_equal_separate_ones`
    /// holds them to it).
    fused: bool,
    cap: Capture,
}

impl<'a> Run<'a> {
    /// Layer `l`'s attention over the step: its queries, the keys they see (the planted
    /// `chunk_mask` and `causal_mask_off_by_one` act here), the cache's type, the recorded
    /// position.
    fn attn_call(&self, l: usize) -> AttnCall<'a> {
        let fault = |k: FaultKind| self.has_fault(Some(l), Stage::AttnProbs, |f| *f == k);
        let (st, w) = (self.step, self.w);
        AttnCall {
            dims: &w.dims,
            t: self.t,
            qbase: st.start,
            kfirst: if !st.is_decode() && fault(FaultKind::ChunkMask) {
                st.start
            } else {
                0
            },
            kend: st.end,
            lookahead: fault(FaultKind::CausalMaskOffByOne),
            f16: self.cache.as_ref().is_some_and(|c| c.f16),
            position: self.graph_position(),
        }
    }
}

impl Run<'_> {
    /// Rows of the step being computed.
    fn n(&self) -> usize {
        self.step.len()
    }

    /// The device address of the recorded decode step's position (outside a graph: none).
    fn graph_position(&self) -> Option<u64> {
        self.graph_step.map(|p| p + 4)
    }

    /// [`Run::graph_position`] as a kernel argument (null outside a graph).
    fn graph_position_arg(&self) -> Arg {
        self.graph_position().map_or(NULL, Arg::Ptr)
    }

    /// The step's part of a stage's tensor, whose whole-prompt shape is `whole`: its row axis
    /// holds the step's rows.
    fn step_rows(&self, stage: Stage, whole: &[usize]) -> StepRows {
        let mut shape = whole.to_vec();
        let axis = row_axis(stage).min(shape.len().saturating_sub(1));
        if let Some(n) = shape.get_mut(axis) {
            *n = self.n();
        }
        StepRows::of(stage, &shape)
    }

    fn faults_at(&self, layer: Option<usize>, stage: Stage) -> impl Iterator<Item = &Fault> {
        self.req
            .faults
            .iter()
            .filter(move |f| f.is_at(layer, stage))
    }

    fn has_fault(
        &self,
        layer: Option<usize>,
        stage: Stage,
        pred: impl Fn(&FaultKind) -> bool,
    ) -> bool {
        self.faults_at(layer, stage).any(|f| pred(&f.kind))
    }

    /// The step's rows of the stage are computed in `buf`: apply the output faults planted on
    /// it (NaN, scale drift), then queue the copy of its rows if planned.
    fn done(&mut self, layer: Option<usize>, stage: Stage, buf: &CudaSlice<f32>) -> Result<()> {
        let key = Key { layer, stage };
        let shape = stage_shape(&self.w.dims, self.t, stage);
        let rows = self.step_rows(stage, &shape);
        let len = rows.len();
        let faults: Vec<Fault> = self.faults_at(layer, stage).copied().collect();
        for f in faults {
            match f.kind {
                // as the CPU side: the index (of the whole prompt's tensor) wraps around its
                // length, and lands in the step that computes that element
                FaultKind::Nan { index } => {
                    if let Some(i) = rows.local_index(self.t, self.step.start, index) {
                        self.dev.launch(
                            "set_nan",
                            &key.to_string(),
                            LaunchConfig::for_num_elems(1),
                            &[Arg::Ptr(self.dev.ptr(buf)), Arg::I64(i as i64)],
                        )?;
                    }
                }
                FaultKind::ScaleDrift { eps } => {
                    self.dev.launch(
                        "scale_inplace",
                        &key.to_string(),
                        grid_1d(len)?,
                        &[
                            Arg::Ptr(self.dev.ptr(buf)),
                            Arg::I64(len as i64),
                            Arg::F32(1.0 + eps),
                        ],
                    )?;
                }
                _ => {}
            }
        }
        if !self.req.plan.wants(layer, stage) {
            return Ok(());
        }
        if let Some((dst, row0)) = self.graph_logits
            && key == Key::model(Stage::Logits)
        {
            // recorded into a graph: the host address of a copy would be the first step's in
            // every replay, so the row is kept on the device and copied out after the steps
            let len = self.w.dims.vocab;
            return self.dev.launch(
                "store_row_at",
                "logits",
                grid_1d(len)?,
                &[
                    Arg::Ptr(self.dev.ptr(buf)),
                    Arg::Ptr(dst),
                    Arg::I64(len as i64),
                    self.graph_position_arg(),
                    int(row0, "first decode position")?,
                ],
            );
        }
        let (t, start) = (self.t, self.step.start);
        self.cap
            .copy_rows(self.dev, key, shape, rows, t, start, buf)
    }

    fn capture_i32(
        &mut self,
        layer: Option<usize>,
        stage: Stage,
        buf: &CudaSlice<i32>,
    ) -> Result<()> {
        if self.req.plan.wants(layer, stage) {
            let shape = stage_shape(&self.w.dims, self.t, stage);
            let rows = self.step_rows(stage, &shape);
            let (key, t, start) = (Key { layer, stage }, self.t, self.step.start);
            self.cap
                .copy_rows(self.dev, key, shape, rows, t, start, buf)?;
        }
        Ok(())
    }

    /// `y[rows, w.rows] = x[rows, w.cols] · Wᵀ` for the matmul producing `stage`, dispatched on
    /// the weight's own GGML type. Planted faults at this stage act here: `q6k_as_q4k` decodes
    /// a Q6_K weight with the Q4_K kernel, walking 144-byte blocks over the Q6_K row (as the
    /// seed bug did); `act_q8_rounding` rounds the input to Q8_0 blocks first.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        layer: Option<usize>,
        stage: Stage,
        w: &DeviceMatrix,
        x: &CudaSlice<f32>,
        rows: usize,
        y: &CudaSlice<f32>,
        rounded: &CudaSlice<f32>,
        groups: Option<&Groups<'_>>,
    ) -> Result<()> {
        let key = Key { layer, stage }.to_string();
        let dev = self.dev;
        let mut ty = w.ty;
        if self.has_fault(layer, stage, |k| matches!(k, FaultKind::Q6kAsQ4k)) {
            if w.ty != GgmlType::Q6_K {
                return Err(Error::input(format!(
                    "fault q6k_as_q4k@{key}: weight {} is {}, not Q6_K",
                    w.name, w.ty
                )));
            }
            ty = GgmlType::Q4_K;
        }
        let mut input = dev.ptr(x);
        if self.has_fault(layer, stage, |k| matches!(k, FaultKind::ActQ8Rounding)) {
            // grouped inputs read gathered token rows; the rounding acts on the rows as stored
            let in_rows = match groups.and_then(|g| g.in_rows) {
                Some(_) => self.n(),
                None => rows,
            };
            dev.launch(
                "round_q8_0",
                &key,
                grid_1d(in_rows * w.cols.div_ceil(32))?,
                &[
                    Arg::Ptr(input),
                    Arg::Ptr(dev.ptr(rounded)),
                    int(in_rows, "rows")?,
                    int(w.cols, "row length")?,
                ],
            )?;
            input = dev.ptr(rounded);
        }
        self.launch_matmul(&key, w, ty, input, rows, y, groups)
    }

    /// Queue the matmul of `w` decoded as `ty` (see [`MatmulCall`]).
    #[allow(clippy::too_many_arguments)]
    fn launch_matmul(
        &self,
        key: &str,
        w: &DeviceMatrix,
        ty: GgmlType,
        input: u64,
        rows: usize,
        y: &CudaSlice<f32>,
        groups: Option<&Groups<'_>>,
    ) -> Result<()> {
        let dev = self.dev;
        let call = MatmulCall {
            w,
            ty,
            x: input,
            rows,
            // grouped: at most T rows per expert (top-k ids of a token are distinct)
            max_rows: if groups.is_some() { self.n() } else { rows },
            groups: groups.map(|g| GroupPtrs {
                counts: dev.ptr(g.counts),
                offsets: dev.ptr(g.offsets),
                in_rows: g.in_rows.map(|r| dev.ptr(r)),
                swap: g.swap,
                zmap: g.zmap.map(|z| dev.ptr(z)),
            }),
        };
        call.launch(dev, key, call.default_kernel(), y)
    }

    fn rms_norm(
        &self,
        stage: &str,
        x: &CudaSlice<f32>,
        g: &CudaSlice<f32>,
        y: &CudaSlice<f32>,
        rows: usize,
        n: usize,
    ) -> Result<()> {
        let rows = u32::try_from(rows)
            .map_err(|_| Error::input(format!("{stage}: {rows} rows exceed the launch grid")))?;
        self.dev.launch(
            "rms_norm",
            stage,
            LaunchConfig {
                grid_dim: (rows, 1, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            },
            &[
                Arg::Ptr(self.dev.ptr(x)),
                Arg::Ptr(self.dev.ptr(g)),
                Arg::Ptr(self.dev.ptr(y)),
                int(n, "norm width")?,
                Arg::F32(self.w.dims.eps),
            ],
        )
    }

    fn add(
        &self,
        stage: &str,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        y: &CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        self.dev.launch(
            "add",
            stage,
            grid_1d(n)?,
            &[
                Arg::Ptr(self.dev.ptr(a)),
                Arg::Ptr(self.dev.ptr(b)),
                Arg::Ptr(self.dev.ptr(y)),
                Arg::I64(n as i64),
            ],
        )
    }

    /// Upload the step's rows of the teacher's tensor `key` ([T, H]) into `dst`.
    fn teacher_input(&self, key: Key, dst: &mut CudaSlice<f32>) -> Result<()> {
        let Some(teacher) = self.req.teacher else {
            return Err(Error::internal("teacher input without a teacher"));
        };
        let want = self.t * self.w.dims.hidden;
        let data = teacher.get(&key).and_then(|t| t.as_f32()).ok_or_else(|| {
            Error::input(format!(
                "teacher trace has no f32 tensor {key} (teacher forcing needs it)"
            ))
        })?;
        if data.len() != want {
            return Err(Error::input(format!(
                "teacher trace: {key} has {} values, expected {} x {} = {want}",
                data.len(),
                self.t,
                self.w.dims.hidden
            )));
        }
        let h = self.w.dims.hidden;
        let rows = &data[self.step.start * h..self.step.end * h];
        self.dev
            .stream
            .memcpy_htod(rows, dst)
            .map_err(|e| Error::internal(format!("CUDA: upload of teacher {key}: {e:?}")))
    }

    /// Whether the whole [nh, T, T] probabilities of some layer are needed: captured, or
    /// acted on by a planted output fault.
    fn keeps_all_probs(&self) -> bool {
        (0..self.w.dims.n_layers).any(|l| self.req.plan.wants(Some(l), Stage::AttnProbs))
            || self.req.faults.iter().any(|f| f.stage == Stage::AttnProbs)
    }

    /// The step's attention at layer `l`: its K/V into the cache (before or, under the planted
    /// `kv_stale`, after the step attends), then its queries over the visible keys: attn_probs
    /// and attn_ctx. The cache faults act on where K/V go and which keys a query sees, as on
    /// the CPU side (`cpu::kv::CacheUse`). `kv_written`: the merged q/k launch has written the
    /// step's K/V already.
    fn attention(&mut self, l: usize, b: &Buffers, kv_written: bool) -> Result<()> {
        let fault = |k: FaultKind| self.has_fault(Some(l), Stage::AttnProbs, |f| *f == k);
        let st = self.step;
        let decode = st.is_decode();
        let stale = decode && fault(FaultKind::KvStale);
        let shift = decode && fault(FaultKind::KvSlotOffByOne);
        let call = self.attn_call(l);
        let (k, v) = match &self.cache {
            Some(c) => c.planes(self.dev, l),
            None => (self.dev.ptr(&b.kr), self.dev.ptr(&b.v)),
        };
        if !stale && !kv_written {
            self.kv_store(l, b, shift)?;
        }
        let probs_key = Key::layer(l, Stage::AttnProbs).to_string();
        let ctx_key = Key::layer(l, Stage::AttnCtx).to_string();
        let (dev, q, ctx, probs) = (
            self.dev,
            self.dev.ptr(&b.qr),
            self.dev.ptr(&b.ctx),
            self.dev.ptr(&b.probs),
        );
        // a planted NaN or drift on the probabilities must reach the context, so the fused
        // kernel (probabilities handed over in shared memory) serves only steps without one
        let probs_fault = self
            .faults_at(Some(l), Stage::AttnProbs)
            .any(|f| matches!(f.kind, FaultKind::Nan { .. } | FaultKind::ScaleDrift { .. }));
        // (a step may be shorter than the longest one the buffer was sized for)
        let whole = b.probs_rows >= self.n();
        let all = st.start..st.end;
        if self.n() <= FUSED_MAX_QUERIES
            && whole
            && !probs_fault
            && call.fused(dev, &all, [q, k, v, probs, ctx], &probs_key)?
        {
            self.done(Some(l), Stage::AttnProbs, &b.probs)?;
        } else if self.graph_step.is_some() {
            // the recorded step reads its position on the device; only the fused kernel does
            return Err(Error::internal(
                "a decode step recorded into a CUDA graph must take the fused attention kernel",
            ));
        } else {
            // the whole [nh, n, T] in one block when the plan keeps it or a fault acts on it
            // (Buffers::new); otherwise the queries go through the bounded buffer block by
            // block, each block's context rows written in place
            for start in all.clone().step_by(b.probs_rows.max(1)) {
                let rows = start..(start + b.probs_rows).min(st.end);
                call.probs(dev, &rows, q, k, probs, &probs_key)?;
                if whole {
                    self.done(Some(l), Stage::AttnProbs, &b.probs)?;
                }
                call.ctx(dev, &rows, probs, v, ctx, &ctx_key)?;
            }
        }
        if stale {
            self.kv_store(l, b, shift)?;
        }
        self.done(Some(l), Stage::AttnCtx, &b.ctx)
    }

    /// The step's k_rope and v_proj rows into layer `l`'s cache slots, one slot early under
    /// the planted `kv_slot_off_by_one` (slot -1 dropped). Nothing to do without a cache.
    fn kv_store(&self, l: usize, b: &Buffers, shift: bool) -> Result<()> {
        let Some(cache) = &self.cache else {
            return Ok(());
        };
        let d = &self.w.dims;
        let row = d.n_kv_heads * d.head_dim;
        let (kc, vc) = cache.planes(self.dev, l);
        let slot0 = self.step.start as i64 - i64::from(shift);
        let kernel = if cache.f16 {
            "kv_store_f16"
        } else {
            "kv_store"
        };
        self.dev.launch(
            kernel,
            &Key::layer(l, Stage::AttnProbs).to_string(),
            grid_1d(self.n() * row)?,
            &[
                Arg::Ptr(self.dev.ptr(&b.kr)),
                Arg::Ptr(self.dev.ptr(&b.v)),
                Arg::Ptr(kc),
                Arg::Ptr(vc),
                int(self.n(), "rows")?,
                int(row, "K/V row")?,
                Arg::I32(i32::try_from(slot0).map_err(|_| Error::input("KV slot too large"))?),
                self.graph_position_arg(),
            ],
        )
    }

    /// q_rope / k_rope over the step's rows at their absolute positions (from 0 in every step
    /// under the planted `rope_pos_reset`).
    fn rope(
        &self,
        l: usize,
        stage: Stage,
        x: &CudaSlice<f32>,
        y: &CudaSlice<f32>,
        angles: &CudaSlice<f64>,
        heads: usize,
    ) -> Result<()> {
        let d = &self.w.dims;
        let mut pairing = d.rope;
        if self.has_fault(Some(l), stage, |k| matches!(k, FaultKind::RopePairSwap)) {
            pairing = pairing.swapped();
        }
        let pos0 = if self.has_fault(Some(l), stage, |k| matches!(k, FaultKind::RopePosReset)) {
            0
        } else {
            self.step.start
        };
        let adjacent = pairing == RopePairing::Adjacent;
        let n = self.n() * heads * (d.head_dim / 2);
        self.dev.launch(
            "rope",
            &Key::layer(l, stage).to_string(),
            grid_1d(n)?,
            &[
                Arg::Ptr(self.dev.ptr(x)),
                Arg::Ptr(self.dev.ptr(y)),
                Arg::Ptr(self.dev.ptr(angles)),
                int(self.n(), "rows")?,
                int(heads, "heads")?,
                int(d.head_dim, "head_dim")?,
                Arg::I32(i32::from(adjacent)),
                int(pos0, "position")?,
                self.graph_position_arg(),
            ],
        )
    }

    fn layer(&mut self, l: usize, b: &mut Buffers) -> Result<()> {
        let w = self.w;
        let lw = w
            .layers
            .get(l)
            .ok_or_else(|| Error::internal(format!("layer {l} has no weights")))?;
        let d = &w.dims;
        let (n, h, nh, nkv, hd) = (self.n(), d.hidden, d.n_heads, d.n_kv_heads, d.head_dim);
        let ks = |s: Stage| Key::layer(l, s).to_string();
        // the layer's input: our own hidden state, or the teacher's
        if self.req.teacher.is_some() {
            let key = if l == 0 {
                Key::model(Stage::Embedding)
            } else {
                Key::layer(l - 1, Stage::LayerOut)
            };
            self.teacher_input(key, &mut b.layer_in)?;
        } else {
            std::mem::swap(&mut b.x, &mut b.layer_in);
        }
        let r = &b.rounded;
        let projections = [
            (Stage::QProj, &lw.q, &b.q, nh),
            (Stage::KProj, &lw.k, &b.k, nkv),
            (Stage::VProj, &lw.v, &b.v, nkv),
        ];
        let mats = projections.map(|p| (p.0, p.1));
        if let Some(groups) = self.norm_matvec_groups(l, Stage::AttnNorm, &mats) {
            // attn_norm folded into the projections' launches (the first writes it; two staged
            // block types go as one launch)
            let part = |g: &Vec<usize>| -> Vec<_> {
                g.iter()
                    .map(|&j| (projections[j].1, projections[j].2))
                    .collect()
            };
            let norm = (&lw.attn_norm, &b.attn_norm);
            match groups.as_slice() {
                [a, v] if merged::mixable(mats[a[0]].1.ty, mats[v[0]].1.ty) => {
                    let key = ks(projections[a[0]].0);
                    self.norm_matvecs_mixed(&key, &b.layer_in, norm, &part(a), &part(v))?;
                }
                _ => {
                    for (gi, g) in groups.iter().enumerate() {
                        let key = ks(projections[g[0]].0);
                        let x = if gi == 0 { &b.layer_in } else { &b.attn_norm };
                        self.norm_matvecs(&key, x, (gi == 0).then_some(norm), &part(g))?;
                    }
                }
            }
            self.done(Some(l), Stage::AttnNorm, &b.attn_norm)?;
        } else {
            self.rms_norm(
                &ks(Stage::AttnNorm),
                &b.layer_in,
                &lw.attn_norm,
                &b.attn_norm,
                n,
                h,
            )?;
            self.done(Some(l), Stage::AttnNorm, &b.attn_norm)?;
            for (stage, wt, y, _) in projections {
                self.matmul(Some(l), stage, wt, &b.attn_norm, n, y, r, None)?;
            }
        }
        for (j, (stage, _, y, heads)) in projections.into_iter().enumerate() {
            if let Some(bias) = &lw.qkv_bias {
                self.add_bias_rows(&ks(stage), y, &bias[j], n, heads * hd)?;
            }
            self.done(Some(l), stage, y)?;
        }
        let mut kv_written = false;
        let mut attended = false;
        if self.qk_attention_mergeable(l, b) {
            // q/k norms, RoPE, the cache write and the attention in one launch
            self.attention_qk(l, b, lw.qk_norm.as_ref())?;
            if lw.qk_norm.is_some() {
                self.done(Some(l), Stage::QNorm, &b.qn)?;
                self.done(Some(l), Stage::KNorm, &b.kn)?;
            }
            self.done(Some(l), Stage::QRope, &b.qr)?;
            self.done(Some(l), Stage::KRope, &b.kr)?;
            self.done(Some(l), Stage::AttnProbs, &b.probs)?;
            self.done(Some(l), Stage::AttnCtx, &b.ctx)?;
            attended = true;
        } else if self.qk_mergeable(l) {
            kv_written = self.qk_rope_store(l, b, lw.qk_norm.as_ref())?;
            if lw.qk_norm.is_some() {
                self.done(Some(l), Stage::QNorm, &b.qn)?;
                self.done(Some(l), Stage::KNorm, &b.kn)?;
            }
            self.done(Some(l), Stage::QRope, &b.qr)?;
            self.done(Some(l), Stage::KRope, &b.kr)?;
        } else {
            let (q_in, k_in) = match &lw.qk_norm {
                Some([qg, kg]) => {
                    self.rms_norm(&ks(Stage::QNorm), &b.q, qg, &b.qn, n * nh, hd)?;
                    self.done(Some(l), Stage::QNorm, &b.qn)?;
                    self.rms_norm(&ks(Stage::KNorm), &b.k, kg, &b.kn, n * nkv, hd)?;
                    self.done(Some(l), Stage::KNorm, &b.kn)?;
                    (&b.qn, &b.kn)
                }
                None => (&b.q, &b.k),
            };
            self.rope(l, Stage::QRope, q_in, &b.qr, &b.rope_angles, nh)?;
            self.done(Some(l), Stage::QRope, &b.qr)?;
            self.rope(l, Stage::KRope, k_in, &b.kr, &b.rope_angles, nkv)?;
            self.done(Some(l), Stage::KRope, &b.kr)?;
        }
        if !attended {
            self.attention(l, b, kv_written)?;
        }
        if self.one_row_mergeable(l, &[Stage::AttnOut, Stage::AttnResidual], &[&lw.o]) {
            self.matvec_residual(
                &ks(Stage::AttnOut),
                &lw.o,
                &b.ctx,
                &b.attn_out,
                &b.layer_in,
                &b.resid,
            )?;
            self.done(Some(l), Stage::AttnOut, &b.attn_out)?;
        } else {
            self.matmul(
                Some(l),
                Stage::AttnOut,
                &lw.o,
                &b.ctx,
                n,
                &b.attn_out,
                r,
                None,
            )?;
            self.done(Some(l), Stage::AttnOut, &b.attn_out)?;
            self.add(
                &ks(Stage::AttnResidual),
                &b.layer_in,
                &b.attn_out,
                &b.resid,
                n * h,
            )?;
        }
        self.done(Some(l), Stage::AttnResidual, &b.resid)?;
        // an MoE router takes ffn_norm folded into its launch (which writes it) when it may
        let router_with_norm = match &lw.ffn {
            FfnWeights::Moe { router, .. } => self
                .norm_matvec_groups(l, Stage::FfnNorm, &[(Stage::RouterLogits, router)])
                .map(|_| router),
            FfnWeights::Dense { .. } => None,
        };
        // and routes in its last block when the routing may be merged too
        let mut router_done = RouterDone::No;
        if let Some(router) = router_with_norm {
            if self.route_mergeable(l) {
                self.norm_matvec_route(l, b, &lw.ffn_norm, router)?;
                router_done = RouterDone::Routed;
            } else {
                self.norm_matvecs(
                    &ks(Stage::RouterLogits),
                    &b.resid,
                    Some((&lw.ffn_norm, &b.ffn_norm)),
                    &[(router, &b.router_logits)],
                )?;
                router_done = RouterDone::Logits;
            }
        } else {
            self.rms_norm(
                &ks(Stage::FfnNorm),
                &b.resid,
                &lw.ffn_norm,
                &b.ffn_norm,
                n,
                h,
            )?;
        }
        self.done(Some(l), Stage::FfnNorm, &b.ffn_norm)?;
        // the merged expert down projection writes layer_out with ffn_out
        let mut layer_out_written = false;
        match &lw.ffn {
            FfnWeights::Dense { gate, up, down } => {
                let merged = [Stage::FfnGate, Stage::FfnUp, Stage::FfnAct];
                if self.one_row_mergeable(l, &merged, &[gate, up]) {
                    self.gate_up(&ks(Stage::FfnAct), gate, up, b, None, None)?;
                    self.done(Some(l), Stage::FfnGate, &b.gate)?;
                    self.done(Some(l), Stage::FfnUp, &b.up)?;
                } else {
                    self.matmul(
                        Some(l),
                        Stage::FfnGate,
                        gate,
                        &b.ffn_norm,
                        n,
                        &b.gate,
                        r,
                        None,
                    )?;
                    self.done(Some(l), Stage::FfnGate, &b.gate)?;
                    self.matmul(Some(l), Stage::FfnUp, up, &b.ffn_norm, n, &b.up, r, None)?;
                    self.done(Some(l), Stage::FfnUp, &b.up)?;
                    self.silu_mul(&ks(Stage::FfnAct), &b.gate, &b.up, &b.act, n * d.ffn)?;
                }
                self.done(Some(l), Stage::FfnAct, &b.act)?;
                self.matmul(Some(l), Stage::FfnOut, down, &b.act, n, &b.ffn_out, r, None)?;
            }
            FfnWeights::Moe {
                router,
                gate,
                up,
                down,
                shared,
            } => {
                layer_out_written =
                    self.moe(l, b, router, gate, up, down, shared.is_none(), router_done)?;
                if let Some(s) = shared {
                    self.shared_expert(l, b, s)?;
                    self.dev.launch(
                        "accumulate",
                        &ks(Stage::FfnOut),
                        grid_1d(n * h)?,
                        &[
                            Arg::Ptr(self.dev.ptr(&b.ffn_out)),
                            Arg::Ptr(self.dev.ptr(&b.sh_out)),
                            Arg::I64((n * h) as i64),
                        ],
                    )?;
                }
            }
        }
        self.done(Some(l), Stage::FfnOut, &b.ffn_out)?;
        if !layer_out_written {
            self.add(&ks(Stage::LayerOut), &b.resid, &b.ffn_out, &b.x, n * h)?;
        }
        self.done(Some(l), Stage::LayerOut, &b.x)?;
        Ok(())
    }

    /// qwen2moe's shared expert over every token: ffn_shared_gate = sigmoid(x · gate_inp),
    /// ffn_shared_out = gate * down(silu(x · gate) * (x · up)), into `b.sh_out`.
    fn shared_expert(&mut self, l: usize, b: &Buffers, s: &SharedExpert) -> Result<()> {
        let (n, h, sf) = (self.n(), self.w.dims.hidden, self.w.dims.shared_ffn);
        let ks = |s: Stage| Key::layer(l, s).to_string();
        let dev = self.dev;
        let r = &b.rounded;
        let [g, u, a] = &b.sh_ffn;
        // the gate logit lands in sh_gate, then becomes its sigmoid in place
        self.matmul(
            Some(l),
            Stage::FfnSharedGate,
            &s.gate_inp,
            &b.ffn_norm,
            n,
            &b.sh_gate,
            r,
            None,
        )?;
        dev.launch(
            "sigmoid",
            &ks(Stage::FfnSharedGate),
            grid_1d(n)?,
            &[
                Arg::Ptr(dev.ptr(&b.sh_gate)),
                Arg::Ptr(dev.ptr(&b.sh_gate)),
                Arg::I64(n as i64),
            ],
        )?;
        self.done(Some(l), Stage::FfnSharedGate, &b.sh_gate)?;
        // the shared expert's gate and up are no stages: keyed under ffn_shared_out
        let key = ks(Stage::FfnSharedOut);
        let input = dev.ptr(&b.ffn_norm);
        self.launch_matmul(&key, &s.gate, s.gate.ty, input, n, g, None)?;
        self.launch_matmul(&key, &s.up, s.up.ty, input, n, u, None)?;
        self.silu_mul(&key, g, u, a, n * sf)?;
        self.matmul(
            Some(l),
            Stage::FfnSharedOut,
            &s.down,
            a,
            n,
            &b.sh_out,
            r,
            None,
        )?;
        dev.launch(
            "scale_rows",
            &key,
            grid_1d(n * h)?,
            &[
                Arg::Ptr(dev.ptr(&b.sh_out)),
                Arg::Ptr(dev.ptr(&b.sh_gate)),
                Arg::I64(n as i64),
                int(h, "hidden")?,
            ],
        )?;
        self.done(Some(l), Stage::FfnSharedOut, &b.sh_out)
    }

    /// `y[r, c] += bias[c]` for `rows` rows of `n`.
    fn add_bias_rows(
        &self,
        stage: &str,
        y: &CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        rows: usize,
        n: usize,
    ) -> Result<()> {
        self.dev.launch(
            "add_bias_rows",
            stage,
            grid_1d(rows * n)?,
            &[
                Arg::Ptr(self.dev.ptr(y)),
                Arg::Ptr(self.dev.ptr(bias)),
                Arg::I64(rows as i64),
                int(n, "row length")?,
            ],
        )
    }

    fn silu_mul(
        &self,
        stage: &str,
        g: &CudaSlice<f32>,
        u: &CudaSlice<f32>,
        y: &CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        self.dev.launch(
            "silu_mul",
            stage,
            grid_1d(n)?,
            &[
                Arg::Ptr(self.dev.ptr(g)),
                Arg::Ptr(self.dev.ptr(u)),
                Arg::Ptr(self.dev.ptr(y)),
                Arg::I64(n as i64),
            ],
        )
    }

    /// Router (unless `logits_done`: the launch that folded ffn_norm in made the logits),
    /// top-k, grouped expert SwiGLU and the weighted combine into `b.ffn_out`; when the experts
    /// are the `last` part of the FFN (no shared expert), a one-token step may also write
    /// layer_out (`b.x`) in the same launch: returns whether it did.
    #[allow(clippy::too_many_arguments)]
    fn moe(
        &mut self,
        l: usize,
        b: &Buffers,
        router: &DeviceMatrix,
        gate: &DeviceMatrix,
        up: &DeviceMatrix,
        down: &DeviceMatrix,
        last: bool,
        router_done: RouterDone,
    ) -> Result<bool> {
        let n = self.n();
        let r = &b.rounded;
        if router_done == RouterDone::No {
            self.matmul(
                Some(l),
                Stage::RouterLogits,
                router,
                &b.ffn_norm,
                n,
                &b.router_logits,
                r,
                None,
            )?;
        }
        self.done(Some(l), Stage::RouterLogits, &b.router_logits)?;
        let renorm = self.topk_renorm(l);
        if router_done == RouterDone::Routed {
            self.route_captures(l, b)?;
        } else if self.route_mergeable(l) {
            self.route1(l, b, renorm)?;
        } else {
            self.route(l, b, renorm)?;
        }
        self.experts(l, b, gate, up, down, last)
    }

    /// Whether layer `l`'s top-k weights are renormalised: the model's rule, unless
    /// `no_topk_renorm` is planted there.
    fn topk_renorm(&self, l: usize) -> bool {
        self.w.dims.norm_topk
            && !self.has_fault(Some(l), Stage::TopkWeights, |k| {
                matches!(k, FaultKind::NoTopkRenorm)
            })
    }

    /// Router softmax, top-k and the grouping of (token, rank) pairs by expert, one launch
    /// each.
    fn route(&mut self, l: usize, b: &Buffers, renorm: bool) -> Result<()> {
        let d = &self.w.dims;
        let dev = self.dev;
        let (n, e, k) = (self.n(), d.n_experts, d.top_k);
        let ks = |s: Stage| Key::layer(l, s).to_string();
        let rows = u32::try_from(n).map_err(|_| Error::input("too many tokens"))?;
        let warp_per_row = |shared_mem_bytes: u32| LaunchConfig {
            grid_dim: (rows, 1, 1),
            block_dim: (32, 1, 1),
            shared_mem_bytes,
        };
        // softmax_rows keeps a row's exponentials in f64 shared memory
        let shared = u32::try_from(e * 8)
            .ok()
            .filter(|&b| b <= 48 * 1024)
            .ok_or_else(|| Error::input(format!("router softmax over {e} experts: too many")))?;
        dev.launch(
            "softmax_rows",
            &ks(Stage::RouterProbs),
            warp_per_row(shared),
            &[
                Arg::Ptr(dev.ptr(&b.router_logits)),
                Arg::Ptr(dev.ptr(&b.router_probs)),
                int(n, "T")?,
                int(e, "experts")?,
            ],
        )?;
        self.done(Some(l), Stage::RouterProbs, &b.router_probs)?;
        dev.launch(
            "topk",
            &ks(Stage::TopkIds),
            warp_per_row(0),
            &[
                Arg::Ptr(dev.ptr(&b.router_probs)),
                Arg::Ptr(dev.ptr(&b.topk_ids)),
                Arg::Ptr(dev.ptr(&b.topk_w)),
                int(n, "T")?,
                int(e, "experts")?,
                int(k, "top-k")?,
                Arg::I32(i32::from(renorm)),
            ],
        )?;
        self.capture_i32(Some(l), Stage::TopkIds, &b.topk_ids)?;
        self.done(Some(l), Stage::TopkWeights, &b.topk_w)?;
        dev.launch(
            "moe_group",
            &ks(Stage::FfnOut),
            LaunchConfig {
                grid_dim: (u32::try_from(e).unwrap_or(u32::MAX), 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            },
            &[
                Arg::Ptr(dev.ptr(&b.topk_ids)),
                int(n, "T")?,
                int(k, "top-k")?,
                int(e, "experts")?,
                Arg::Ptr(dev.ptr(&b.counts)),
                Arg::Ptr(dev.ptr(&b.offsets)),
                Arg::Ptr(dev.ptr(&b.slot_token)),
                Arg::Ptr(dev.ptr(&b.slot_of)),
                Arg::Ptr(dev.ptr(&b.slot_expert)),
            ],
        )
    }

    /// The grouped expert SwiGLU over the routed slots and the weighted combine into
    /// `b.ffn_out` (and layer_out into `b.x` when [`Run::down_mergeable`]: returns whether).
    fn experts(
        &mut self,
        l: usize,
        b: &Buffers,
        gate: &DeviceMatrix,
        up: &DeviceMatrix,
        down: &DeviceMatrix,
        last: bool,
    ) -> Result<bool> {
        let d = &self.w.dims;
        let dev = self.dev;
        let (n, h, e, k, f) = (self.n(), d.hidden, d.n_experts, d.top_k, d.ffn);
        let ks = |s: Stage| Key::layer(l, s).to_string();
        let r = &b.rounded;
        let swap = self
            .faults_at(Some(l), Stage::FfnOut)
            .find_map(|f| match f.kind {
                FaultKind::ExpertSwap { a, b } => Some((a, b)),
                _ => None,
            });
        let gathered = Groups {
            counts: &b.counts,
            offsets: &b.offsets,
            in_rows: Some(&b.slot_token),
            swap,
            zmap: (n * k < e).then_some(&b.slot_expert),
        };
        let grouped = Groups {
            in_rows: None,
            ..gathered
        };
        let slots = n * k;
        // expert gate/up are no stages of the vocabulary: key them under ffn_out, which they
        // produce (planted matmul faults at ffn_out act on the down projection only)
        if self.expert_gate_up_mergeable(gate, up) {
            let name = format!("layer.{l}.ffn_out (ffn_gate_exps, ffn_up_exps, SwiGLU)");
            self.gate_up(&name, gate, up, b, Some(&b.slot_expert), swap)?;
        } else {
            self.matmul_expert(l, gate, &b.ffn_norm, slots, &b.gate, &gathered)?;
            self.matmul_expert(l, up, &b.ffn_norm, slots, &b.up, &gathered)?;
            self.silu_mul(&ks(Stage::FfnOut), &b.gate, &b.up, &b.act, slots * f)?;
        }
        if last && self.down_mergeable(l, down) {
            self.down_combine(l, b, down, swap)?;
            return Ok(true);
        }
        self.matmul(
            Some(l),
            Stage::FfnOut,
            down,
            &b.act,
            slots,
            &b.down,
            r,
            Some(&grouped),
        )?;
        dev.launch(
            "moe_combine",
            &ks(Stage::FfnOut),
            grid_1d(n * h)?,
            &[
                Arg::Ptr(dev.ptr(&b.down)),
                Arg::Ptr(dev.ptr(&b.slot_of)),
                Arg::Ptr(dev.ptr(&b.topk_w)),
                Arg::Ptr(dev.ptr(&b.ffn_out)),
                int(n, "T")?,
                int(k, "top-k")?,
                int(h, "hidden")?,
            ],
        )?;
        Ok(false)
    }

    /// An expert gate/up matmul over gathered token rows (no planted matmul faults apply).
    fn matmul_expert(
        &self,
        l: usize,
        w: &DeviceMatrix,
        x: &CudaSlice<f32>,
        slots: usize,
        y: &CudaSlice<f32>,
        g: &Groups<'_>,
    ) -> Result<()> {
        let name = w.name.strip_prefix(&format!("blk.{l}.")).unwrap_or(&w.name);
        let key = format!("layer.{l}.ffn_out ({name})");
        self.launch_matmul(&key, w, w.ty, self.dev.ptr(x), slots, y, Some(g))
    }
}

/// Heads up to this size take the tiled attention kernels (kernels/attention.cu).
const ATT_TILE_MAXD: usize = 128;

/// Steps of at most this many queries take the fused attention kernel (decode steps, and
/// one-token prompts): one launch instead of three, where the launches are the cost.
const FUSED_MAX_QUERIES: usize = 1;

/// The attention kernels' probabilities buffer holds the rows of at most this many bytes when
/// the plan does not keep `attn_probs`: the queries are walked in blocks through it. 256 MiB
/// keeps every prompt that fits a 30B-A3B layer's [nh, T, T] in one block (T <= 1448 at 32
/// heads), so the usual runs launch as before, while a 40,000-token prompt at 32 heads holds
/// 64-query blocks of 328 MB rather than 205 GB at once.
pub const ATT_PROBS_BUDGET: usize = 256 << 20;

/// Query rows per block of the attention over `queries` queries with probability rows of
/// `keys` values: all of them when the whole [nh, queries, keys] fits `budget` bytes (or must
/// be kept), else the most whole 64-query tiles that fit it, at least one tile.
pub(super) fn attention_block_rows(
    n_heads: usize,
    queries: usize,
    keys: usize,
    keep_all: bool,
    budget: usize,
) -> usize {
    let row_bytes = n_heads.max(1).saturating_mul(keys).saturating_mul(4);
    let fit = budget / row_bytes.max(1);
    if keep_all || fit >= queries {
        return queries;
    }
    ((fit / 64).max(1) * 64).min(queries)
}

/// Dynamic shared memory of the per-query attention kernels over `keys` keys: 128 doubles and
/// (D + keys) floats, if it fits the 48 KiB a launch gets without opting in.
fn row_shared(dims: &Dims, keys: usize) -> Option<u32> {
    u32::try_from(128 * 8 + 4 * (dims.head_dim + keys))
        .ok()
        .filter(|&s| s <= 48 * 1024)
}

/// One step's attention (kernels/attention.cu): its queries are positions `qbase..kend` (q and
/// ctx hold their rows from `qbase`), its keys the cache slots `kfirst..kend` (a query sees
/// them up to its own position, one past it under `lookahead`), the probabilities' rows are
/// `t` long (the prompt). The full forward is `qbase = kfirst = 0`, `kend = t`, over its own
/// K/V.
pub(super) struct AttnCall<'a> {
    pub dims: &'a Dims,
    pub t: usize,
    pub qbase: usize,
    pub kfirst: usize,
    pub kend: usize,
    pub lookahead: bool,
    /// The keys and values are IEEE half bits (the f16 cache).
    pub f16: bool,
    /// The device address of the query's position for a decode step recorded into a CUDA
    /// graph (the fused kernel reads it, and its shared memory is sized for the whole prompt).
    pub position: Option<u64>,
}

impl AttnCall<'_> {
    /// The full forward's attention over its own f32 K/V (the kernel tests call it this way).
    #[cfg(test)]
    pub fn full(dims: &Dims, t: usize, lookahead: bool) -> AttnCall<'_> {
        AttnCall {
            dims,
            t,
            qbase: 0,
            kfirst: 0,
            kend: t,
            lookahead,
            f16: false,
            position: None,
        }
    }

    fn kernel(&self, name: &str) -> String {
        if self.f16 {
            format!("{name}_f16")
        } else {
            name.to_string()
        }
    }

    /// The shape arguments (`ATT_DIMS`) for the block of queries `rows`, which must be whole
    /// 64-query tiles from the step's first query (or end with the step).
    fn dims_args(&self, rows: &Range<usize>) -> Result<[Arg; 10]> {
        let d = self.dims;
        let from_first = rows.start.checked_sub(self.qbase);
        let whole_tiles = from_first.is_some_and(|s| s.is_multiple_of(64))
            && (rows.end == self.kend || (rows.end - self.qbase).is_multiple_of(64));
        if rows.is_empty() || rows.end > self.kend || !whole_tiles || self.kend > self.t {
            return Err(Error::internal(format!(
                "attention query block {rows:?} of the step {}..{} (prompt {}) is not whole 64-query tiles",
                self.qbase, self.kend, self.t
            )));
        }
        Ok([
            int(self.t, "T")?,
            int(d.n_heads, "heads")?,
            int(d.n_kv_heads, "kv heads")?,
            int(d.head_dim, "head_dim")?,
            Arg::I32(i32::from(self.lookahead)),
            int(rows.start, "first query")?,
            int(rows.len(), "queries")?,
            int(self.qbase, "first step position")?,
            int(self.kfirst, "first key")?,
            int(self.kend, "keys")?,
        ])
    }

    /// A block per (query, head) of `rows`, with `shared` bytes of dynamic shared memory.
    fn rows_grid(&self, rows: &Range<usize>, shared: u32) -> Result<LaunchConfig> {
        let (Ok(qn), Some(nh)) = (
            u32::try_from(rows.len()),
            u32::try_from(self.dims.n_heads)
                .ok()
                .filter(|&h| h <= 65535),
        ) else {
            return Err(Error::input("attention grid too large"));
        };
        Ok(LaunchConfig {
            grid_dim: (qn, nh, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: shared,
        })
    }

    /// Dynamic shared memory of the per-query kernels ([`row_shared`]) over `kend` keys, or
    /// over the whole prompt for a recorded decode step (its position is read at replay).
    fn row_shared(&self) -> Option<u32> {
        let keys = if self.position.is_some() {
            self.t
        } else {
            self.kend
        };
        row_shared(self.dims, keys)
    }

    /// attn_fused of a decode step with its q/k norms, RoPE and cache write folded in
    /// (`attn_decode_qk`, whose `heads` arguments go before `probs` and `ctx`), or false when
    /// its shared memory does not fit.
    pub fn decode_qk(
        &self,
        dev: &Device,
        heads: Vec<Arg>,
        [probs, ctx]: [u64; 2],
        stage: &str,
    ) -> Result<bool> {
        let kernel = self.kernel("attn_decode_qk");
        // (its static shared memory, three rows of QK_MAXD floats and the norms' reductions,
        // as the driver counts it, beside the dynamic part)
        let fixed = dev.static_shared(&kernel, stage)?;
        let Some(shared) = self.row_shared().filter(|&s| s + fixed <= 48 * 1024) else {
            return Ok(false);
        };
        let rows = self.qbase..self.kend;
        let mut args = heads;
        args.extend([
            Arg::Ptr(probs),
            Arg::Ptr(ctx),
            self.position.map_or(NULL, Arg::Ptr),
        ]);
        args.extend(self.dims_args(&rows)?);
        dev.launch(&kernel, stage, self.rows_grid(&rows, shared)?, &args)?;
        Ok(true)
    }

    /// `probs` [nh, rows.len(), T] for the queries `rows` from `q` (the step's rows) and the
    /// keys `k`. Small heads: 64 queries x 64 keys tiles (`attn_tile_scores`, then
    /// `attn_softmax_rows`); larger ones: a block per (query, head) (`attn_probs`).
    pub fn probs(
        &self,
        dev: &Device,
        rows: &Range<usize>,
        q: u64,
        k: u64,
        probs: u64,
        stage: &str,
    ) -> Result<()> {
        let mut args = vec![Arg::Ptr(q), Arg::Ptr(k), Arg::Ptr(probs)];
        args.extend(self.dims_args(rows)?);
        let d = self.dims;
        if d.head_dim <= ATT_TILE_MAXD {
            let (tiles, key_tiles, nh) = (
                u32::try_from(rows.len().div_ceil(64)).ok(),
                u32::try_from(self.kend.div_ceil(64))
                    .ok()
                    .filter(|&n| n <= 65535),
                u32::try_from(d.n_heads).ok().filter(|&h| h <= 65535),
            );
            let (Some(tiles), Some(key_tiles), Some(nh)) = (tiles, key_tiles, nh) else {
                return Err(Error::input("attention grid too large"));
            };
            let tiled = LaunchConfig {
                grid_dim: (tiles, key_tiles, nh),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            dev.launch(&self.kernel("attn_tile_scores"), stage, tiled, &args)?;
            return dev.launch(
                "attn_softmax_rows",
                stage,
                self.rows_grid(rows, 0)?,
                &[
                    Arg::Ptr(probs),
                    int(self.t, "T")?,
                    Arg::I32(i32::from(self.lookahead)),
                    int(rows.start, "first query")?,
                    int(rows.len(), "queries")?,
                    int(self.kfirst, "first key")?,
                    int(self.kend, "keys")?,
                ],
            );
        }
        let shared = self.row_shared().ok_or_else(|| {
            Error::input(format!(
                "attention over {} positions with head_dim {} needs more than 48 KiB of shared memory",
                self.kend, d.head_dim
            ))
        })?;
        dev.launch(
            &self.kernel("attn_probs"),
            stage,
            self.rows_grid(rows, shared)?,
            &args,
        )
    }

    /// `ctx` rows of `rows` ([n, nh * D] from the step's first position) = probs · v over the
    /// visible keys, `probs` holding those rows as [`AttnCall::probs`] wrote them.
    pub fn ctx(
        &self,
        dev: &Device,
        rows: &Range<usize>,
        probs: u64,
        v: u64,
        ctx: u64,
        stage: &str,
    ) -> Result<()> {
        let mut args = vec![Arg::Ptr(probs), Arg::Ptr(v), Arg::Ptr(ctx)];
        args.extend(self.dims_args(rows)?);
        if self.dims.head_dim <= ATT_TILE_MAXD {
            let tiles = u32::try_from(rows.len().div_ceil(64))
                .map_err(|_| Error::input("attention grid too large"))?;
            let nh = self.rows_grid(rows, 0)?.grid_dim.1;
            let cfg = LaunchConfig {
                grid_dim: (tiles, nh, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            return dev.launch(&self.kernel("attn_ctx_tiled"), stage, cfg, &args);
        }
        dev.launch(
            &self.kernel("attn_ctx"),
            stage,
            self.rows_grid(rows, 0)?,
            &args,
        )
    }

    /// Probabilities and context in one launch (`attn_fused`: the per-query kernels' arithmetic,
    /// the probabilities handed over in shared memory), for `[q, k, v, probs, ctx]`. `false`
    /// (nothing launched) when the keys do not fit its shared memory.
    pub fn fused(
        &self,
        dev: &Device,
        rows: &Range<usize>,
        [q, k, v, probs, ctx]: [u64; 5],
        stage: &str,
    ) -> Result<bool> {
        let Some(shared) = self.row_shared() else {
            return Ok(false);
        };
        let mut args = vec![
            Arg::Ptr(q),
            Arg::Ptr(k),
            Arg::Ptr(v),
            Arg::Ptr(probs),
            Arg::Ptr(ctx),
            self.position.map_or(NULL, Arg::Ptr),
        ];
        args.extend(self.dims_args(rows)?);
        dev.launch(
            &self.kernel("attn_fused"),
            stage,
            self.rows_grid(rows, shared)?,
            &args,
        )?;
        Ok(true)
    }
}

/// Run one forward. `arena` is the backend's pinned capture memory, reused across calls;
/// `att_probs_budget` bounds the attention probabilities when the plan keeps none.
pub fn forward(
    dev: &Device,
    w: &DeviceWeights,
    req: &ForwardRequest<'_>,
    arena: &mut Arena,
    mut meta: TraceMeta,
    att_probs_budget: usize,
) -> Result<Trace> {
    let d = &w.dims;
    let t = req.tokens.len();
    crate::backend::check_request(req, &meta.model, d.n_layers, d.context_length)?;
    if let Some((i, tok)) = req
        .tokens
        .iter()
        .enumerate()
        .find(|(_, tok)| **tok as usize >= d.vocab)
    {
        return Err(Error::input(format!(
            "token {tok} at position {i} is outside the vocabulary of {}",
            d.vocab
        )));
    }
    let steps = req.schedule.steps(t).map_err(Error::input)?;
    check_faults(d, req.faults, &steps)?;
    let words: usize = req
        .plan
        .keys(d.n_layers, |s| has_stage(d, s))
        .iter()
        .filter(|k| k.stage != Stage::Tokens)
        .map(|k| stage_shape(d, t, k.stage).iter().product::<usize>())
        .sum();
    let cap = Capture::new(arena, &dev.ctx, words)?;
    // the cache: for more than one step; the one-step f32 forward attends over its own K/V
    let f16 = kv_cache_f16(req);
    let cache = if steps.len() > 1 || f16 {
        Some(DeviceKvCache::new(dev, d, t, f16)?)
    } else {
        None
    };
    let rows = steps.iter().map(Step::len).max().unwrap_or(t);
    let mut run = Run {
        dev,
        w,
        req,
        t,
        step: steps[0],
        cache,
        graph_step: None,
        graph_logits: None,
        fused: dev.merged(),
        cap,
    };
    let probs_rows =
        attention_block_rows(d.n_heads, rows, t, run.keeps_all_probs(), att_probs_budget);
    let mut b = Buffers::new(dev, d, rows, probs_rows, t)?;
    dev.launch(
        "rope_table",
        "RoPE angles",
        grid_1d(t * (d.head_dim / 2).max(1))?,
        &[
            Arg::Ptr(dev.ptr(&b.rope_angles)),
            int(t, "T")?,
            int(d.head_dim, "head_dim")?,
            Arg::F32(d.rope_theta),
            w.rope_freqs.as_ref().map_or(NULL, |f| Arg::Ptr(dev.ptr(f))),
        ],
    )?;
    let toks: Vec<i32> = req.tokens.iter().map(|&v| v as i32).collect();
    let toks_dev = dev.upload(&toks, "tokens")?;
    let logits = dev.zeros::<f32>(rows * d.vocab, "logits")?;
    let logits_words = if req.plan.wants(None, Stage::Logits) {
        t * d.vocab
    } else {
        0
    };
    let mut graph = DecodeGraph::new(dev, &run, &steps, words - logits_words)?;
    for &st in &steps {
        run.step = st;
        match graph.as_mut() {
            Some(g) if st.is_decode() => g.step(&mut run, &mut b, &toks_dev, &logits)?,
            _ => run.step_forward(&mut b, &toks_dev, &logits)?,
        }
    }
    if let Some(g) = &graph {
        g.copy_logits(&mut run, &steps)?;
        let n = steps.iter().filter(|s| s.is_decode()).count();
        meta.extra.insert(
            DECODE_GRAPH_KEY.into(),
            format!("{n} decode steps replayed from one CUDA graph"),
        );
    }
    dev.sync("the forward")?;
    dev.flush_timeline()?;

    let mut trace = Trace::new(meta);
    if req.plan.wants(None, Stage::Tokens) {
        trace.insert(
            Key::model(Stage::Tokens),
            crate::trace::tensor::Tensor::i32(vec![t], toks),
        );
    }
    for (key, tensor) in run.cap.collect() {
        trace.insert(key, tensor);
    }
    Ok(trace)
}

/// The decode steps of an untraced forward, recorded once into a CUDA graph and replayed for
/// each step: a decode step is 12 small launches a layer (23 unmerged), whose launch overhead
/// is much of its time when issued one by one. The graph is the same work (the same kernels,
/// arguments and order) except that the step's token id and position come from a small device
/// buffer written before each replay, so a replayed step computes what a direct one does bit
/// for bit.
struct DecodeGraph {
    /// The token id and position of the step being replayed, `[2]` i32.
    args: CudaSlice<i32>,
    graph: Option<cudarc::driver::CudaGraph>,
    /// The decode steps' logits rows `[N, vocab]`, when the plan keeps logits (the one stage a
    /// recorded step may keep: decode checks compare logits), and the first decode position.
    logits: Option<(CudaSlice<f32>, usize)>,
}

impl DecodeGraph {
    /// A recorder for the decode steps of this forward, or `None` where steps must be issued
    /// one by one: stages other than logits to copy out (`other_words`: their host offsets
    /// differ per step), planted faults or a teacher (which act per step), fewer than two
    /// decode steps, per-launch timing or synchronisation, or a prompt too long for the fused
    /// attention's shared memory.
    fn new(
        dev: &Device,
        run: &Run<'_>,
        steps: &[Step],
        other_words: usize,
    ) -> Result<Option<Self>> {
        let decode_steps = steps.iter().filter(|s| s.is_decode()).count();
        let fits = row_shared(&run.w.dims, run.t).is_some();
        let eligible = decode_steps >= 2
            && other_words == 0
            && run.req.faults.is_empty()
            && run.req.teacher.is_none()
            && run.cache.is_some()
            && fits
            && dev.graphs_allowed();
        if !eligible {
            return Ok(None);
        }
        let first = steps.iter().find(|s| s.is_decode()).map_or(0, |s| s.start);
        let logits = if run.req.plan.wants(None, Stage::Logits) {
            let vocab = run.w.dims.vocab;
            Some((
                dev.zeros::<f32>(decode_steps * vocab, "decode logits")?,
                first,
            ))
        } else {
            None
        };
        Ok(Some(DecodeGraph {
            args: dev.zeros::<i32>(2, "decode step arguments")?,
            graph: None,
            logits,
        }))
    }

    /// Queue the copy of the decode steps' logits rows into the trace's logits.
    fn copy_logits(&self, run: &mut Run<'_>, steps: &[Step]) -> Result<()> {
        let Some((buf, first)) = &self.logits else {
            return Ok(());
        };
        let n = steps.iter().filter(|s| s.is_decode()).count();
        let shape = stage_shape(&run.w.dims, run.t, Stage::Logits);
        let rows = StepRows {
            outer: 1,
            rows: n,
            inner: run.w.dims.vocab,
        };
        run.cap.copy_rows(
            run.dev,
            Key::model(Stage::Logits),
            shape,
            rows,
            run.t,
            *first,
            buf,
        )
    }

    /// Run the decode step `run.step`: write its token and position, record the graph on the
    /// first call, replay it.
    fn step(
        &mut self,
        run: &mut Run<'_>,
        b: &mut Buffers,
        toks: &CudaSlice<i32>,
        logits: &CudaSlice<f32>,
    ) -> Result<()> {
        let dev = run.dev;
        let p = run.step.start;
        let tok = run.req.tokens[p] as i32;
        let pos = i32::try_from(p).map_err(|_| Error::input("position too large"))?;
        dev.stream
            .memcpy_htod(&[tok, pos], &mut self.args)
            .map_err(|e| Error::internal(format!("CUDA: decode step arguments: {e:?}")))?;
        if self.graph.is_none() {
            let mode = cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
            dev.with_timeline(|t, _| {
                t.recording(true);
                Ok(())
            })?;
            dev.stream
                .begin_capture(mode)
                .map_err(|e| Error::internal(format!("CUDA graph capture: {e:?}")))?;
            run.graph_step = Some(dev.ptr(&self.args));
            run.graph_logits = self.logits.as_ref().map(|(l, first)| (dev.ptr(l), *first));
            let recorded = run.step_forward(b, toks, logits);
            let noted = dev.with_timeline(|t, _| {
                t.recording(false);
                Ok(())
            });
            run.graph_step = None;
            run.graph_logits = None;
            let flags = cudarc::driver::sys::CUgraphInstantiate_flags(0);
            // end the capture whatever happened, so the stream is usable for the error path
            let ended = dev.stream.end_capture(flags);
            recorded?;
            noted?;
            let graph = ended
                .map_err(|e| Error::internal(format!("CUDA graph of a decode step: {e:?}")))?
                .ok_or_else(|| Error::internal("CUDA graph of a decode step: nothing recorded"))?;
            self.graph = Some(graph);
        }
        let graph = self
            .graph
            .as_ref()
            .ok_or_else(|| Error::internal("decode graph missing"))?;
        dev.with_timeline(|t, s| t.replayed(s))?;
        graph
            .launch()
            .map_err(|e| Error::internal(format!("CUDA graph replay of a decode step: {e:?}")))
    }
}

/// The `TraceMeta.extra` key a CUDA trace carries when its decode steps were replayed from a
/// CUDA graph rather than launched one by one.
pub const DECODE_GRAPH_KEY: &str = "decode_graph";

/// Whether the request asks for an f16 KV cache (K and V stored as IEEE half, rounded to
/// nearest even as they enter it, as the CPU reference's f16 cache does).
fn kv_cache_f16(req: &ForwardRequest<'_>) -> bool {
    req.schedule.kv == crate::backend::schedule::KvDtype::F16
}

impl Run<'_> {
    /// One step over its rows: embedding, every layer (through its KV cache), final norm,
    /// logits. Teacher forcing replaces each layer's input rows with the teacher's rows.
    fn step_forward(
        &mut self,
        b: &mut Buffers,
        toks: &CudaSlice<i32>,
        logits: &CudaSlice<f32>,
    ) -> Result<()> {
        let (dev, w) = (self.dev, self.w);
        let d = &w.dims;
        let (n, h) = (self.n(), d.hidden);
        // embedding: our hidden state starts here, whether or not a teacher feeds the layers
        let ids = match self.graph_step {
            Some(p) => p,
            None => dev.ptr(toks) + (self.step.start * 4) as u64,
        };
        w.token_embd
            .gather(dev, "embedding", Arg::Ptr(ids), n, &b.x)?;
        self.done(None, Stage::Embedding, &b.x)?;
        for l in 0..d.n_layers {
            self.layer(l, b)?;
        }
        let final_in = if self.req.teacher.is_some() && d.n_layers > 0 {
            self.teacher_input(Key::layer(d.n_layers - 1, Stage::LayerOut), &mut b.layer_in)?;
            &b.layer_in
        } else {
            &b.x
        };
        self.rms_norm("final_norm", final_in, &w.output_norm, &b.attn_norm, n, h)?;
        self.done(None, Stage::FinalNorm, &b.attn_norm)?;
        let lm_in = if self.req.teacher.is_some() {
            self.teacher_input(Key::model(Stage::FinalNorm), &mut b.ffn_norm)?;
            &b.ffn_norm
        } else {
            &b.attn_norm
        };
        self.matmul(
            None,
            Stage::Logits,
            w.lm_head(),
            lm_in,
            n,
            logits,
            &b.rounded,
            None,
        )?;
        self.done(None, Stage::Logits, logits)
    }
}

#[cfg(test)]
mod tests {
    use super::{ATT_PROBS_BUDGET, attention_block_rows};

    /// Blocks are whole 64-query tiles that fit the budget (at least one tile), or the whole
    /// prompt when it fits or must be kept.
    #[test]
    fn attention_blocks_fit_the_budget_in_whole_tiles() {
        let b = ATT_PROBS_BUDGET;
        // the 30B-A3B shape (32 heads): whole up to T = 1448, blocks past it
        assert_eq!(attention_block_rows(32, 1448, 1448, false, b), 1448);
        assert_eq!(attention_block_rows(32, 1449, 1449, false, b), 1408);
        assert_eq!(attention_block_rows(32, 40_000, 40_000, false, b), 64);
        // kept probabilities are never blocked, however large
        assert_eq!(attention_block_rows(32, 40_000, 40_000, true, b), 40_000);
        for (nh, t) in [(4, 70), (32, 2000), (64, 5000), (40, 40_960), (1, 1 << 20)] {
            let rows = attention_block_rows(nh, t, t, false, b);
            assert!(
                rows == t || rows.is_multiple_of(64),
                "{nh} heads, T {t}: {rows}"
            );
            assert!(rows == 64 || rows == t || nh * rows * t * 4 <= b);
        }
        // a budget of one byte walks every prompt longer than a tile in single tiles
        assert_eq!(attention_block_rows(4, 150, 150, false, 1), 64);
        assert_eq!(attention_block_rows(4, 50, 50, false, 1), 50);
    }
}
