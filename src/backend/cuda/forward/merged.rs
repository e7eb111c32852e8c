//! The merged launches of a one-token step (see the module above: each computes what the
//! separate kernels do, bit for bit): when a layer may take them, and how they are launched.

use cudarc::driver::{CudaSlice, LaunchConfig};

use super::{Buffers, Run};
use crate::backend::FaultKind;
use crate::backend::cuda::device::{Arg, Device, NULL, int};
use crate::backend::cuda::matmul::{merged_matvec_ok, norm_matvec_ok};
use crate::backend::cuda::weights::{DeviceMatrix, kernel_suffix};
use crate::error::{Error, Result};
use crate::model::arch::RopePairing;
use crate::model::quant::GgmlType;
use crate::trace::stage::{Key, Stage};

/// Rows of at most this many values take the merged expert down + combine launch (one piece
/// of a row per lane), whose staging holds this many floats (`DC_XMAX` in kernels/matmul.cu).
const DOWN_COMBINE_MAX_K: usize = 1024;
const DOWN_COMBINE_STAGED: usize = 8192;
/// and at most this many picks (its per-output table of the picks' dot products).
const DOWN_COMBINE_MAX_TOPK: usize = 32;

/// The kernel-name suffix of a block type that has kernels.
fn typed_suffix(ty: GgmlType) -> Result<&'static str> {
    kernel_suffix(ty).ok_or_else(|| Error::internal(format!("no CUDA kernels for {ty}")))
}

/// The launch of a merged one-row kernel: a warp per output, 8 a block, `slots` grid layers.
fn merged_grid(outputs: usize, slots: usize) -> Result<LaunchConfig> {
    outputs_grid(outputs, 8, 256, slots)
}

/// `outputs` in blocks of `threads` threads, `per_block` outputs each, `slots` grid layers.
fn outputs_grid(
    outputs: usize,
    per_block: usize,
    threads: u32,
    slots: usize,
) -> Result<LaunchConfig> {
    let x = u32::try_from(outputs.div_ceil(per_block.max(1)))
        .map_err(|_| Error::input(format!("{outputs} outputs exceed the launch grid")))?;
    let z = u32::try_from(slots)
        .ok()
        .filter(|&z| z <= 65535)
        .ok_or_else(|| Error::input(format!("{slots} expert slots exceed the launch grid")))?;
    Ok(LaunchConfig {
        grid_dim: (x, 1, z),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Whether the blocks of `gate_up_<ty>` take more than one unit (a row group of an expert
/// slot): the kernels' `GuStrides`, Q4_K. Q6_K's launch keeps a block a unit.
fn gate_up_strides(ty: GgmlType) -> bool {
    ty == GgmlType::Q4_K
}

/// The grid of a `gate_up_*` launch over `rows` outputs (`per` a block of `threads`) of
/// `slots` expert slots: `wave` blocks striding over the units where the type strides (one
/// wave of the card, [`Device::wave_blocks`]), else a block a unit, grid (groups, 1, slots),
/// which the kernel of a type that does not stride relies on.
fn gate_up_grid(
    rows: usize,
    per: usize,
    threads: u32,
    slots: usize,
    wave: Option<u32>,
) -> Result<LaunchConfig> {
    match wave {
        Some(blocks) => Ok(LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        }),
        None => outputs_grid(rows, per, threads, slots),
    }
}

/// The grid of a launch whose blocks stride over `groups` row groups (`matmulwn_*`): one wave
/// of the card ([`Device::wave_blocks`]).
fn striding_grid(dev: &Device, kernel: &str, key: &str, groups: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (dev.wave_blocks(kernel, key, groups, 256)?, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Whether norm-folding launches of these two block types go as one (`matmulwn_mix_*`): the two
/// staged types, either first.
pub(super) fn mixable(a: GgmlType, b: GgmlType) -> bool {
    matches!(
        (a, b),
        (GgmlType::Q4_K, GgmlType::Q6_K) | (GgmlType::Q6_K, GgmlType::Q4_K)
    )
}

/// The one block type of a norm-folding launch's up to three matrices.
fn one_type(mats: &[(&DeviceMatrix, &CudaSlice<f32>)]) -> Result<GgmlType> {
    let first = mats
        .first()
        .ok_or_else(|| Error::internal("a norm-folding launch without a matrix"))?
        .0;
    if mats.len() > 3 || mats.iter().any(|(w, _)| w.ty != first.ty) {
        return Err(Error::internal(
            "a norm-folding launch takes up to three matrices of one type",
        ));
    }
    Ok(first.ty)
}

/// The row groups (8 rows) of a norm-folding launch's matrices.
fn row_groups(mats: &[(&DeviceMatrix, &CudaSlice<f32>)]) -> usize {
    mats.iter().map(|(w, _)| w.rows.div_ceil(8)).sum()
}

/// One part of a norm-folding launch (`MwnParts` in kernels/matmul.cu): its three matrices,
/// row sizes, row counts and outputs (null and 0 where it has fewer).
fn push_part(
    dev: &Device,
    args: &mut Vec<Arg>,
    mats: &[(&DeviceMatrix, &CudaSlice<f32>)],
) -> Result<()> {
    let part = |j: usize| mats.get(j).copied();
    for j in 0..3 {
        args.push(part(j).map_or(NULL, |(w, _)| Arg::Ptr(dev.ptr(&w.data))));
    }
    for j in 0..3 {
        args.push(Arg::I64(part(j).map_or(0, |(w, _)| w.row_bytes as i64)));
    }
    for j in 0..3 {
        args.push(int(part(j).map_or(0, |(w, _)| w.rows), "outputs")?);
    }
    for j in 0..3 {
        args.push(part(j).map_or(NULL, |(_, y)| Arg::Ptr(dev.ptr(y))));
    }
    Ok(())
}

/// Heads up to this size take the merged q/k norm, RoPE and cache-write launch
/// (`QK_MAXD` in kernels/attention.cu).
const QK_MAXD: usize = 512;

/// At most this many experts and top-k take the merged router launch of a one-token step
/// (`moe_route1`, kernels/moe.cu).
const ROUTE1_MAX_EXPERTS: usize = 256;
const ROUTE1_MAX_TOPK: usize = 32;
/// Its threads, one per expert (`ROUTE1_THREADS`).
const ROUTE1_THREADS: u32 = 256;

impl Run<'_> {
    /// Whether layer `l`'s q/k norms, RoPE and cache write go as one launch: merging is on, no
    /// fault is planted on those stages (each acts between two of them), and the heads and
    /// rows fit the kernel.
    pub(super) fn qk_mergeable(&self, l: usize) -> bool {
        let d = &self.w.dims;
        self.fused
            && d.head_dim <= QK_MAXD
            && d.head_dim.is_multiple_of(2)
            && self.n() <= 65535
            && [Stage::QNorm, Stage::KNorm, Stage::QRope, Stage::KRope]
                .iter()
                .all(|&s| self.faults_at(Some(l), s).next().is_none())
    }

    /// q_norm, k_norm (when the layer has them), q_rope, k_rope and, when the step writes the
    /// cache before its attention (no planted `kv_stale`), the cache write, in one launch
    /// (`qk_rope_store`: the separate kernels' arithmetic, bit for bit). Returns whether it
    /// wrote the cache.
    pub(super) fn qk_rope_store(
        &self,
        l: usize,
        b: &Buffers,
        norms: Option<&[CudaSlice<f32>; 2]>,
    ) -> Result<bool> {
        let d = &self.w.dims;
        let dev = self.dev;
        let st = self.step;
        let fault = |k: FaultKind| self.has_fault(Some(l), Stage::AttnProbs, |f| *f == k);
        let stale = st.is_decode() && fault(FaultKind::KvStale);
        let shift = st.is_decode() && fault(FaultKind::KvSlotOffByOne);
        let cache = self.cache.as_ref().filter(|_| !stale);
        let (kc, vc) = cache.map_or((NULL, NULL), |c| {
            let (k, v) = c.planes(dev, l);
            (Arg::Ptr(k), Arg::Ptr(v))
        });
        let kernel = if self.cache.as_ref().is_some_and(|c| c.f16) {
            "qk_rope_store_f16"
        } else {
            "qk_rope_store"
        };
        let slot0 = st.start as i64 - i64::from(shift);
        let heads = u32::try_from(d.n_heads + d.n_kv_heads)
            .map_err(|_| Error::input("too many attention heads"))?;
        let rows = u32::try_from(self.n()).map_err(|_| Error::input("too many rows"))?;
        let mut args = self.qk_head_args(b, norms);
        args.extend([
            int(d.n_heads, "heads")?,
            int(d.n_kv_heads, "kv heads")?,
            int(d.head_dim, "head_dim")?,
            Arg::F32(d.eps),
            Arg::I32(i32::from(d.rope == RopePairing::Adjacent)),
            int(st.start, "position")?,
            self.graph_position_arg(),
            kc,
            vc,
            Arg::I32(i32::try_from(slot0).map_err(|_| Error::input("KV slot too large"))?),
        ]);
        dev.launch(
            kernel,
            &Key::layer(l, Stage::QRope).to_string(),
            LaunchConfig {
                grid_dim: (heads, rows, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            },
            &args,
        )?;
        Ok(cache.is_some())
    }

    /// The heads' buffers both q/k launches (`qk_rope_store*`, `attn_decode_qk*`) take first:
    /// q, k, v, the q/k norm weights (null without), the normalized and the rotated heads, and
    /// the RoPE angle table.
    fn qk_head_args(&self, b: &Buffers, norms: Option<&[CudaSlice<f32>; 2]>) -> Vec<Arg> {
        let ptr = |x: &CudaSlice<f32>| Arg::Ptr(self.dev.ptr(x));
        vec![
            ptr(&b.q),
            ptr(&b.k),
            ptr(&b.v),
            norms.map_or(NULL, |[qg, _]| ptr(qg)),
            norms.map_or(NULL, |[_, kg]| ptr(kg)),
            ptr(&b.qn),
            ptr(&b.kn),
            ptr(&b.qr),
            ptr(&b.kr),
            Arg::Ptr(self.dev.ptr(&b.rope_angles)),
        ]
    }

    /// Whether layer `l`'s q/k norms, RoPE, cache write and attention go as one launch
    /// (`attn_decode_qk`): a decode step through the cache, whose q/k launch may merge
    /// ([`Run::qk_mergeable`]), with no fault planted on its attention (the cache faults and
    /// the masks act between the cache write and the reads; a NaN or drift on the
    /// probabilities must reach the context through memory), grouped heads that divide
    /// evenly, and its probabilities' rows in the buffer.
    pub(super) fn qk_attention_mergeable(&self, l: usize, b: &Buffers) -> bool {
        let d = &self.w.dims;
        self.qk_mergeable(l)
            && self.step.is_decode()
            && self.n() == 1
            && self.cache.is_some()
            && d.n_kv_heads > 0
            && d.n_heads.is_multiple_of(d.n_kv_heads)
            && b.probs_rows >= 1
            && self.faults_at(Some(l), Stage::AttnProbs).next().is_none()
    }

    /// [`Run::qk_rope_store`] and the fused attention of a decode step in one launch
    /// (`attn_decode_qk`); the captures are the caller's. Falls back to the two launches when
    /// the kernel's shared memory does not fit.
    pub(super) fn attention_qk(
        &mut self,
        l: usize,
        b: &Buffers,
        norms: Option<&[CudaSlice<f32>; 2]>,
    ) -> Result<()> {
        let d = &self.w.dims;
        let dev = self.dev;
        let cache = self
            .cache
            .as_ref()
            .ok_or_else(|| Error::internal("a merged decode attention without a cache"))?;
        let (kc, vc) = cache.planes(dev, l);
        let mut heads = self.qk_head_args(b, norms);
        heads.extend([
            Arg::F32(d.eps),
            Arg::I32(i32::from(d.rope == RopePairing::Adjacent)),
            Arg::Ptr(kc),
            Arg::Ptr(vc),
        ]);
        let call = self.attn_call(l);
        let outs = [dev.ptr(&b.probs), dev.ptr(&b.ctx)];
        let key = Key::layer(l, Stage::AttnProbs).to_string();
        if !call.decode_qk(dev, heads, outs, &key)? {
            let written = self.qk_rope_store(l, b, norms)?;
            self.attention(l, b, written)?;
        }
        Ok(())
    }

    /// Whether a one-token step's expert gate, up and SwiGLU go as one launch over its k
    /// slots: merging is on and both matrices suit the kernel. No fault stands in the way: the
    /// matmul faults planted at ffn_out act on the down projection, the expert swap is an
    /// argument.
    pub(super) fn expert_gate_up_mergeable(&self, gate: &DeviceMatrix, up: &DeviceMatrix) -> bool {
        let d = &self.w.dims;
        self.fused && self.n() == 1 && d.top_k < d.n_experts && self.pair_mergeable(&[gate, up])
    }

    /// Whether a one-row step may merge the launches of `stages` of layer `l`, whose matrices
    /// are `mats`: merging is on, the step is one row, no fault is planted on those stages (a
    /// fault acts between the launches merged), and the matrices suit the merged kernels.
    pub(super) fn one_row_mergeable(
        &self,
        l: usize,
        stages: &[Stage],
        mats: &[&DeviceMatrix],
    ) -> bool {
        self.one_row_fault_free(l, stages) && self.pair_mergeable(mats)
    }

    /// Merging is on, the step is one row, and no fault is planted on any of layer `l`'s
    /// `stages` (a fault acts between the launches merged).
    fn one_row_fault_free(&self, l: usize, stages: &[Stage]) -> bool {
        self.fused
            && self.n() == 1
            && stages
                .iter()
                .all(|&s| self.faults_at(Some(l), s).next().is_none())
    }

    /// Whether `mats` suit the merged one-row kernels, all alike (gate and up go together).
    pub(super) fn pair_mergeable(&self, mats: &[&DeviceMatrix]) -> bool {
        let first = mats[0];
        mats.iter().all(|m| {
            merged_matvec_ok(self.dev, m)
                && m.ty == first.ty
                && m.row_bytes == first.row_bytes
                && m.rows == first.rows
                && m.cols == first.cols
        })
    }

    /// How a one-token step's `norm` stage and the matvecs that read it (`mats`, with their
    /// stages) go as norm-folding launches (`matmulwn_*`): one launch per block type, in the
    /// order of first appearance, the first computing the norm (and writing its stage), the
    /// others reading it. None when they may not: merging off, more than one row, a fault
    /// planted on any of those stages (each acts between two launches), a matrix the kernel
    /// cannot take, or a norm width other than the matrices' inputs.
    pub(super) fn norm_matvec_groups(
        &self,
        l: usize,
        norm: Stage,
        mats: &[(Stage, &DeviceMatrix)],
    ) -> Option<Vec<Vec<usize>>> {
        let h = self.w.dims.hidden;
        let stages: Vec<Stage> = std::iter::once(norm)
            .chain(mats.iter().map(|m| m.0))
            .collect();
        let ok = self.one_row_fault_free(l, &stages)
            && mats
                .iter()
                .all(|(_, w)| w.cols == h && norm_matvec_ok(self.dev, w));
        if !ok {
            return None;
        }
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (j, (_, w)) in mats.iter().enumerate() {
            match groups
                .iter_mut()
                .find(|g| mats[g[0]].1.ty == w.ty && g.len() < 3)
            {
                Some(g) => g.push(j),
                None => groups.push(vec![j]),
            }
        }
        Some(groups)
    }

    /// Up to three one-row matvecs of one input in one launch (`matmulwn_*`), all of one block
    /// type: with `norm` = (gamma, out) the input `x` is RMS-normalised first (and the norm
    /// written to `out`), else `x` is the input as it is.
    pub(super) fn norm_matvecs(
        &self,
        key: &str,
        x: &CudaSlice<f32>,
        norm: Option<(&CudaSlice<f32>, &CudaSlice<f32>)>,
        mats: &[(&DeviceMatrix, &CudaSlice<f32>)],
    ) -> Result<()> {
        let dev = self.dev;
        let ty = one_type(mats)?;
        let mut args = Vec::with_capacity(17);
        push_part(dev, &mut args, mats)?;
        // (the part's outputs go after its inputs here: matmulwn's parameter order)
        let outputs = args.split_off(9);
        self.push_norm_input(&mut args, x, norm);
        args.extend(outputs);
        args.push(int(mats[0].0.cols, "inputs")?);
        let kernel = format!("matmulwn_{}", typed_suffix(ty)?);
        let cfg = striding_grid(dev, &kernel, key, row_groups(mats))?;
        dev.launch(&kernel, key, cfg, &args)
    }

    /// The projections of one normalised input in two staged block types (`mixable`) in one
    /// launch (`matmulwn_mix_*`): each part's blocks as its own [`Run::norm_matvecs`] launch
    /// would take them, every block normalising `x` (the first part's first block writes the
    /// norm to `norm.1`); the outputs are those launches', bit for bit.
    pub(super) fn norm_matvecs_mixed(
        &self,
        key: &str,
        x: &CudaSlice<f32>,
        norm: (&CudaSlice<f32>, &CudaSlice<f32>),
        first: &[(&DeviceMatrix, &CudaSlice<f32>)],
        second: &[(&DeviceMatrix, &CudaSlice<f32>)],
    ) -> Result<()> {
        let dev = self.dev;
        let (ta, tb) = (one_type(first)?, one_type(second)?);
        if !mixable(ta, tb) || first[0].0.cols != second[0].0.cols {
            return Err(Error::internal(format!(
                "a mixed norm-folding launch of {ta} and {tb} rows"
            )));
        }
        let kernel = format!("matmulwn_mix_{}", typed_suffix(ta)?);
        // each part's blocks: at most one wave of the card; the first part's blocks take two
        // row groups at once when the groups outnumber the wave (its own launch's pairs,
        // mwn_blocks), the second's stride over theirs one at a time
        let blocks = |mats: &[(&DeviceMatrix, &CudaSlice<f32>)], pair: bool| -> Result<u32> {
            let groups = row_groups(mats);
            let wave = dev.wave_blocks(&kernel, key, groups, 256)? as usize;
            let taken = if pair && groups > wave {
                wave.min(groups.div_ceil(2))
            } else {
                wave
            };
            u32::try_from(taken)
                .map_err(|_| Error::input(format!("{groups} row groups exceed the launch grid")))
        };
        let (na, nb) = (blocks(first, true)?, blocks(second, false)?);
        let mut args = Vec::with_capacity(30);
        push_part(dev, &mut args, first)?;
        push_part(dev, &mut args, second)?;
        args.push(int(na as usize, "blocks")?);
        self.push_norm_input(&mut args, x, Some(norm));
        args.push(int(first[0].0.cols, "inputs")?);
        let cfg = LaunchConfig {
            grid_dim: (na + nb, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        dev.launch(&kernel, key, cfg, &args)
    }

    /// A norm-folding launch's input, gamma, eps and norm output (null without a norm).
    fn push_norm_input(
        &self,
        args: &mut Vec<Arg>,
        x: &CudaSlice<f32>,
        norm: Option<(&CudaSlice<f32>, &CudaSlice<f32>)>,
    ) {
        let dev = self.dev;
        args.push(Arg::Ptr(dev.ptr(x)));
        args.push(norm.map_or(NULL, |(g, _)| Arg::Ptr(dev.ptr(g))));
        args.push(Arg::F32(self.w.dims.eps));
        args.push(norm.map_or(NULL, |(_, out)| Arg::Ptr(dev.ptr(out))));
    }

    /// `y = x · Wᵀ` and `z = r + y` for one row in one launch (`matmulwr_*`).
    pub(super) fn matvec_residual(
        &self,
        key: &str,
        w: &DeviceMatrix,
        x: &CudaSlice<f32>,
        y: &CudaSlice<f32>,
        r: &CudaSlice<f32>,
        z: &CudaSlice<f32>,
    ) -> Result<()> {
        let dev = self.dev;
        dev.launch(
            &format!("matmulwr_{}", typed_suffix(w.ty)?),
            key,
            merged_grid(w.rows, 1)?,
            &[
                Arg::Ptr(dev.ptr(&w.data)),
                Arg::I64(w.row_bytes as i64),
                Arg::Ptr(dev.ptr(x)),
                Arg::Ptr(dev.ptr(y)),
                int(w.rows, "outputs")?,
                int(w.cols, "inputs")?,
                Arg::Ptr(dev.ptr(r)),
                Arg::Ptr(dev.ptr(z)),
            ],
        )
    }

    /// Gate, up and SwiGLU of a one-token step in one launch (`gate_up_*`): the dense FFN's
    /// (no slots), or the k expert slots' (`slot_expert`, with the planted expert swap).
    pub(super) fn gate_up(
        &self,
        key: &str,
        gate: &DeviceMatrix,
        up: &DeviceMatrix,
        b: &Buffers,
        slot_expert: Option<&CudaSlice<i32>>,
        swap: Option<(usize, usize)>,
    ) -> Result<()> {
        let dev = self.dev;
        let slots = if slot_expert.is_some() {
            self.w.dims.top_k
        } else {
            1
        };
        let (sa, sb) = swap.map_or((-1, -1), |(a, b)| (a as i64, b as i64));
        let kernel = format!("gate_up_{}", typed_suffix(gate.ty)?);
        // a warp per output, the block the kernel declares
        let threads = dev.block_threads(&kernel, key)?;
        let per = threads as usize / 32;
        let wave = if gate_up_strides(gate.ty) {
            let units = gate.rows.div_ceil(per) * slots;
            Some(dev.wave_blocks(&kernel, key, units, threads)?)
        } else {
            None
        };
        dev.launch(
            &kernel,
            key,
            gate_up_grid(gate.rows, per, threads, slots, wave)?,
            &[
                Arg::Ptr(dev.ptr(&gate.data)),
                Arg::Ptr(dev.ptr(&up.data)),
                Arg::I64(gate.row_bytes as i64),
                Arg::I64((gate.rows * gate.row_bytes) as i64),
                Arg::Ptr(dev.ptr(&b.ffn_norm)),
                Arg::Ptr(dev.ptr(&b.gate)),
                Arg::Ptr(dev.ptr(&b.up)),
                Arg::Ptr(dev.ptr(&b.act)),
                int(gate.rows, "outputs")?,
                int(gate.cols, "inputs")?,
                slot_expert.map_or(NULL, |s| Arg::Ptr(dev.ptr(s))),
                Arg::I32(i32::try_from(sa).unwrap_or(-1)),
                Arg::I32(i32::try_from(sb).unwrap_or(-1)),
                int(slots, "expert slots")?,
            ],
        )
    }

    /// Whether layer `l`'s router softmax, top-k and grouping go as one launch: merging is on,
    /// the step is one token, the experts and top-k fit the kernel, and no fault other than
    /// `no_topk_renorm` (an argument) is planted between router_logits and the grouping.
    pub(super) fn route_mergeable(&self, l: usize) -> bool {
        let d = &self.w.dims;
        self.fused
            && self.n() == 1
            && d.n_experts <= ROUTE1_MAX_EXPERTS
            && d.top_k <= ROUTE1_MAX_TOPK
            && d.top_k <= d.n_experts
            && [Stage::RouterProbs, Stage::TopkIds, Stage::TopkWeights]
                .iter()
                .all(|&s| {
                    self.faults_at(Some(l), s)
                        .all(|f| f.kind == FaultKind::NoTopkRenorm)
                })
    }

    /// Router softmax, top-k and grouping of a one-token step in one launch (`moe_route1`),
    /// with the captures of their three stages.
    pub(super) fn route1(&mut self, l: usize, b: &Buffers, renorm: bool) -> Result<()> {
        let d = &self.w.dims;
        let dev = self.dev;
        let (e, k) = (d.n_experts, d.top_k);
        let ks = |s: Stage| Key::layer(l, s).to_string();
        dev.launch(
            "moe_route1",
            &ks(Stage::RouterProbs),
            LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (ROUTE1_THREADS, 1, 1),
                shared_mem_bytes: 0,
            },
            &[
                Arg::Ptr(dev.ptr(&b.router_logits)),
                Arg::Ptr(dev.ptr(&b.router_probs)),
                Arg::Ptr(dev.ptr(&b.topk_ids)),
                Arg::Ptr(dev.ptr(&b.topk_w)),
                int(e, "experts")?,
                int(k, "top-k")?,
                Arg::I32(i32::from(renorm)),
                Arg::Ptr(dev.ptr(&b.counts)),
                Arg::Ptr(dev.ptr(&b.offsets)),
                Arg::Ptr(dev.ptr(&b.slot_token)),
                Arg::Ptr(dev.ptr(&b.slot_of)),
                Arg::Ptr(dev.ptr(&b.slot_expert)),
            ],
        )?;
        self.route_captures(l, b)
    }

    /// The captures of the three stages a one-token routing launch writes.
    pub(super) fn route_captures(&mut self, l: usize, b: &Buffers) -> Result<()> {
        self.done(Some(l), Stage::RouterProbs, &b.router_probs)?;
        self.capture_i32(Some(l), Stage::TopkIds, &b.topk_ids)?;
        self.done(Some(l), Stage::TopkWeights, &b.topk_w)?;
        Ok(())
    }

    /// ffn_norm, the router logits and the one-token routing in one launch
    /// (`matmulwn_route_*`: [`Run::norm_matvecs`] for the router, whose last block then does
    /// what [`Run::route1`] launches), when the router takes the norm-folding launch and the
    /// routing may merge ([`Run::route_mergeable`]). The captures are the caller's.
    pub(super) fn norm_matvec_route(
        &self,
        l: usize,
        b: &Buffers,
        gamma: &CudaSlice<f32>,
        router: &DeviceMatrix,
    ) -> Result<()> {
        let d = &self.w.dims;
        let dev = self.dev;
        let ptr = |x: &CudaSlice<f32>| Arg::Ptr(dev.ptr(x));
        let iptr = |x: &CudaSlice<i32>| Arg::Ptr(dev.ptr(x));
        let kernel = format!("matmulwn_route_{}", typed_suffix(router.ty)?);
        let stage = Key::layer(l, Stage::RouterLogits).to_string();
        let grid = merged_grid(router.rows, 1)?;
        // (its blocks as one cluster where the card allows: the routing block gets the logits
        // through shared memory instead of L2)
        let cluster = dev.whole_grid_cluster(&kernel, &stage, grid.grid_dim.0, grid.block_dim.0)?;
        dev.launch_clustered(
            &kernel,
            &stage,
            grid,
            cluster,
            &[
                Arg::Ptr(dev.ptr(&router.data)),
                Arg::I64(router.row_bytes as i64),
                int(router.rows, "experts")?,
                ptr(&b.resid),
                ptr(gamma),
                Arg::F32(d.eps),
                ptr(&b.ffn_norm),
                ptr(&b.router_logits),
                int(router.cols, "inputs")?,
                ptr(&b.router_probs),
                iptr(&b.topk_ids),
                ptr(&b.topk_w),
                int(d.n_experts, "experts")?,
                int(d.top_k, "top-k")?,
                Arg::I32(i32::from(self.topk_renorm(l))),
                iptr(&b.counts),
                iptr(&b.offsets),
                iptr(&b.slot_token),
                iptr(&b.slot_of),
                iptr(&b.slot_expert),
                iptr(&b.route_done),
            ],
        )
    }

    /// Whether layer `l`'s expert down projections, combine and layer_out add go as one launch
    /// (`down_combine_*`): merging is on, one token, no fault planted on ffn_out but an expert
    /// swap (an argument) nor on layer_out, and `down` suits the kernel: a merged type, rows of
    /// at most 1024 values, and the k activation rows fit its staging (`DC_XMAX` floats).
    pub(super) fn down_mergeable(&self, l: usize, down: &DeviceMatrix) -> bool {
        let k = self.w.dims.top_k;
        let padded = match down.ty {
            GgmlType::Q4_K => down.cols + down.cols / 64 * 4,
            _ => down.cols + down.cols / 128 * 4,
        };
        self.fused
            && self.n() == 1
            && self
                .faults_at(Some(l), Stage::FfnOut)
                .all(|f| matches!(f.kind, FaultKind::ExpertSwap { .. }))
            && self.faults_at(Some(l), Stage::LayerOut).next().is_none()
            && merged_matvec_ok(self.dev, down)
            && down.cols <= DOWN_COMBINE_MAX_K
            && k * padded <= DOWN_COMBINE_STAGED
            && k <= DOWN_COMBINE_MAX_TOPK
    }

    /// The k expert down projections, their combine into `b.ffn_out` and layer_out into `b.x`
    /// in one launch (`down_combine_*`), the planted expert swap an argument.
    pub(super) fn down_combine(
        &self,
        l: usize,
        b: &Buffers,
        down: &DeviceMatrix,
        swap: Option<(usize, usize)>,
    ) -> Result<()> {
        let d = &self.w.dims;
        let dev = self.dev;
        let (h, k, f) = (d.hidden, d.top_k, d.ffn);
        let ks = |s: Stage| Key::layer(l, s).to_string();
        let (sa, sb) = swap.map_or((-1, -1), |(a, b)| (a as i64, b as i64));
        let kernel = format!("down_combine_{}", typed_suffix(down.ty)?);
        let threads = dev.block_threads(&kernel, &ks(Stage::FfnOut))?;
        if threads < 64 {
            return Err(Error::internal(format!(
                "{kernel} allows {threads} threads a block: it needs two warps an output"
            )));
        }
        dev.launch(
            &kernel,
            &ks(Stage::FfnOut),
            // two warps per output (the picks in halves), the block the kernel declares
            outputs_grid(h, threads as usize / 64, threads, 1)?,
            &[
                Arg::Ptr(dev.ptr(&down.data)),
                Arg::I64(down.row_bytes as i64),
                Arg::I64((down.rows * down.row_bytes) as i64),
                Arg::Ptr(dev.ptr(&b.act)),
                int(h, "hidden")?,
                int(f, "expert ffn")?,
                Arg::Ptr(dev.ptr(&b.topk_ids)),
                Arg::Ptr(dev.ptr(&b.slot_of)),
                Arg::Ptr(dev.ptr(&b.topk_w)),
                int(k, "top-k")?,
                Arg::I32(i32::try_from(sa).unwrap_or(-1)),
                Arg::I32(i32::try_from(sb).unwrap_or(-1)),
                Arg::Ptr(dev.ptr(&b.resid)),
                Arg::Ptr(dev.ptr(&b.ffn_out)),
                Arg::Ptr(dev.ptr(&b.x)),
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{gate_up_grid, gate_up_strides, outputs_grid};
    use crate::model::quant::GgmlType;

    #[test]
    fn output_grids_cover_every_output_once() {
        // down + combine of the 30B-A3B shape: 2048 outputs, 8 a block of 512
        let c = outputs_grid(2048, 8, 512, 1).unwrap();
        assert_eq!((c.grid_dim, c.block_dim), ((256, 1, 1), (512, 1, 1)));
        // a partial last block, and expert slots as grid layers
        let c = outputs_grid(769, 8, 256, 8).unwrap();
        assert_eq!(c.grid_dim, (97, 1, 8));
        assert!(outputs_grid(8, 8, 256, 65536).is_err());
    }

    #[test]
    fn gate_up_grids_give_a_type_that_does_not_stride_a_block_a_unit() {
        // the 30B-A3B shape's gate/up (768 rows, 8 slots, 8 outputs a block): Q4_K strides in
        // one wave, Q6_K takes its 96 x 8 units a block each
        assert!(gate_up_strides(GgmlType::Q4_K));
        assert!(!gate_up_strides(GgmlType::Q6_K));
        let c = gate_up_grid(768, 8, 256, 8, Some(528)).unwrap();
        assert_eq!((c.grid_dim, c.block_dim), ((528, 1, 1), (256, 1, 1)));
        let c = gate_up_grid(768, 8, 256, 8, None).unwrap();
        assert_eq!(c.grid_dim, (96, 1, 8));
    }
}
