//! The matmul kernels: which one serves a launch ([`MatmulKernel::choose`], with the
//! `FALSIFIER_CUDA_{PLAIN,EXPERT}_KERNEL` overrides), its launch shape and split-K, and the
//! launch itself ([`MatmulCall`]). Kept apart from [`super::weights`] (what is on the device)
//! and [`super::device`] (how anything is launched), which know nothing of this module.

use cudarc::driver::{CudaSlice, LaunchConfig};

use super::device::{Arg, Device, NULL, grid_1d, int};
use super::weights::{DeviceMatrix, kernel_suffix};
use crate::error::{Error, Result};
use crate::model::quant::GgmlType;

/// Which matmul kernel serves a launch (see kernels/matmul.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    /// `matmulv_*`: decode into registers, up to 8 rows per pass; for few rows per matrix.
    Vector,
    /// `matmulw_*`: as `Vector` with a warp per output feature; for one row per matrix
    /// (decode steps, and experts at very short prompts).
    Wide,
    /// `matmul_*`: shared-memory tiles of `bt` rows x `4096 / bt` features, 4 x 4 a thread.
    Tiled { bt: u32 },
    /// `matmult_*`: shared-memory tiles of 64 rows x `bn` features, 4 x 8 a thread.
    Tall { bn: u32 },
}

/// At most this many rows expected per matrix go to the vector kernel: it decodes every
/// weight once per 8 rows, and a tile of 16 rows would sit mostly empty. Grouped matmuls take
/// it only up to 5 expected rows, since the busiest experts then still fit one or two passes.
const VECTOR_MAX_ROWS: usize = 8;
const VECTOR_MAX_ROWS_GROUPED: usize = 5;
/// A split-K slice covers at least this many k values (so a split still streams whole
/// K-quant blocks, and the partial sums stay few).
const MIN_SPLIT_K: usize = 256;
/// Plain matmuls with at least this many outputs take 128-feature tall tiles.
const WIDE_TALL_MIN_OUTPUTS: usize = 2048;

impl MatmulKernel {
    /// The kernel for a matmul of `n` outputs over `k` inputs whose matrices each expect
    /// `expected` rows (a plain matmul: all of them; grouped experts: the average).
    pub fn choose(k: usize, n: usize, expected: usize, grouped: bool) -> Self {
        let vector_max = if grouped {
            VECTOR_MAX_ROWS_GROUPED
        } else {
            VECTOR_MAX_ROWS
        };
        if expected <= 1 && k.is_multiple_of(8) {
            return MatmulKernel::Wide;
        }
        if expected <= vector_max && k.is_multiple_of(8) {
            return MatmulKernel::Vector;
        }
        // the tall tiles (4 x 8 a thread, 64 rows; see kernels/matmul.cu for the numbers):
        // experts from 25 rows (a warp skips its second row group where an expert's rows
        // end), 64 features wide (128: 3% slower there); plain matmuls from 41 rows, 128
        // features wide from 2048 outputs (the input tile serves twice the outputs: H200,
        // 30B-A3B at T = 512, lm_head 9.6 ms against 10.1), 64 below (more blocks on the
        // card: k_proj 48 against 59 µs a layer). Fewer rows: the 4 x 4 kernels' row tile
        // that the rows fill at least halfway on average (at 32 plain rows 3% faster than a
        // tall tile: T = 32 lm_head).
        if grouped && expected > 24 {
            return MatmulKernel::Tall { bn: 64 };
        }
        if expected > 40 {
            let bn = if n >= WIDE_TALL_MIN_OUTPUTS { 128 } else { 64 };
            return MatmulKernel::Tall { bn };
        }
        MatmulKernel::Tiled {
            bt: if expected > 12 { 32 } else { 16 },
        }
    }

    /// A kernel by its short name (`vector`, `wide`, `tiled16`, `tiled32`, `tiled64`, `tall64`,
    /// `tall128`), as the `FALSIFIER_CUDA_{PLAIN,EXPERT}_KERNEL` overrides name them, for
    /// timing one kernel against another.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.short_name() == name)
    }

    /// The short name [`MatmulKernel::parse`] reads.
    pub fn short_name(self) -> String {
        match self {
            MatmulKernel::Vector => "vector".into(),
            MatmulKernel::Wide => "wide".into(),
            MatmulKernel::Tiled { bt } => format!("tiled{bt}"),
            MatmulKernel::Tall { bn } => format!("tall{bn}"),
        }
    }

    /// (features, rows) of one block's tile.
    fn tile(self) -> (usize, usize) {
        match self {
            MatmulKernel::Vector => (64, usize::MAX),
            MatmulKernel::Wide => (8, usize::MAX),
            MatmulKernel::Tiled { bt } => (4096 / bt as usize, bt as usize),
            MatmulKernel::Tall { bn } => (bn as usize, 64),
        }
    }

    /// Threads per block.
    fn threads(self) -> u32 {
        match self {
            MatmulKernel::Tall { bn } => 2 * bn,
            _ => 256,
        }
    }

    /// Split-K of a plain matmul of `n` outputs x `rows` rows over `k` inputs on a card of
    /// `sms` multiprocessors: `(splits, kspan)`, each split summing `kspan` k values (a
    /// multiple of 32). One split unless the output tiles leave most multiprocessors idle.
    pub fn split_k(self, n: usize, rows: usize, k: usize, sms: usize) -> (usize, usize) {
        if self == MatmulKernel::Wide {
            // a warp per output already puts every output's weights in flight at once
            return (1, k);
        }
        let (bn, bt) = self.tile();
        // in blocks of 4096 outputs (the 4 x 4 kernels' tile; a tall one is one or two of
        // those): the card is full at two per multiprocessor
        let weight = match self {
            MatmulKernel::Tall { bn } => bn as usize / 64,
            _ => 1,
        };
        let blocks = weight * n.div_ceil(bn) * rows.div_ceil(bt.min(rows.max(1)));
        let want = (2 * sms).div_ceil(blocks.max(1));
        let splits = want.min(k / MIN_SPLIT_K).max(1);
        if splits == 1 {
            return (1, k);
        }
        let kspan = k.div_ceil(splits).div_ceil(32) * 32;
        (k.div_ceil(kspan), kspan)
    }

    /// The kernel's name for the weight type's suffix.
    pub fn name(self, suffix: &str) -> String {
        match self {
            MatmulKernel::Vector => format!("matmulv_{suffix}"),
            MatmulKernel::Wide => format!("matmulw_{suffix}"),
            MatmulKernel::Tiled { bt } => format!("matmul_{suffix}_{bt}"),
            MatmulKernel::Tall { bn } => format!("matmult_{suffix}_{bn}"),
        }
    }

    /// Every kernel variant, as named by [`MatmulKernel::name`].
    pub const ALL: [MatmulKernel; 7] = [
        MatmulKernel::Vector,
        MatmulKernel::Wide,
        MatmulKernel::Tiled { bt: 16 },
        MatmulKernel::Tiled { bt: 32 },
        MatmulKernel::Tiled { bt: 64 },
        MatmulKernel::Tall { bn: 64 },
        MatmulKernel::Tall { bn: 128 },
    ];

    /// Launch shape for `n` outputs, up to `max_rows` rows per matrix, and `layers` grid
    /// layers (expert matrices, or K splits of a plain matmul).
    pub fn config(self, n: usize, max_rows: usize, layers: usize) -> Result<LaunchConfig> {
        let (bn, bt) = self.tile();
        let shared = match self {
            MatmulKernel::Vector | MatmulKernel::Wide => 0,
            // Ws [32][bn + 4] and Xs [32][bt + 4] floats
            MatmulKernel::Tiled { .. } | MatmulKernel::Tall { .. } => {
                (32 * (bn + 4 + bt + 4) * 4) as u32
            }
        };
        let gx = u32::try_from(n.div_ceil(bn)).ok();
        let gy = u32::try_from(max_rows.div_ceil(bt))
            .ok()
            .filter(|&y| y <= 65535);
        let gz = u32::try_from(layers).ok().filter(|&z| z <= 65535);
        match (gx, gy, gz) {
            (Some(x), Some(y), Some(z)) => Ok(LaunchConfig {
                grid_dim: (x, y.max(1), z.max(1)),
                block_dim: (self.threads(), 1, 1),
                shared_mem_bytes: shared,
            }),
            _ => Err(Error::input(format!(
                "matmul of {n} outputs x {max_rows} rows x {layers} matrices exceeds the launch grid"
            ))),
        }
    }
}

/// `FALSIFIER_CUDA_PLAIN_KERNEL` and `FALSIFIER_CUDA_EXPERT_KERNEL` (short names, see
/// [`MatmulKernel::parse`]): every plain / grouped matmul through that kernel instead of the
/// chosen one. Read once; an unknown name is ignored with a warning.
fn kernel_overrides() -> (Option<MatmulKernel>, Option<MatmulKernel>) {
    static OVERRIDES: std::sync::OnceLock<(Option<MatmulKernel>, Option<MatmulKernel>)> =
        std::sync::OnceLock::new();
    *OVERRIDES.get_or_init(|| {
        let read = |var: &str| {
            let name = std::env::var(var).ok()?;
            let kernel = MatmulKernel::parse(name.trim());
            if kernel.is_none() {
                eprintln!("warning: {var}={name}: not a matmul kernel (vector, wide, tiled16, tiled32, tiled64, tall64, tall128); ignored");
            }
            kernel
        };
        (
            read("FALSIFIER_CUDA_PLAIN_KERNEL"),
            read("FALSIFIER_CUDA_EXPERT_KERNEL"),
        )
    })
}

/// Device pointers of an expert grouping: rows per expert, their first grouped row, the input
/// row of each grouped row (none: the input is already grouped), a planted expert swap, the
/// expert of each grouped row.
#[derive(Clone, Copy, Debug)]
pub struct GroupPtrs {
    pub counts: u64,
    pub offsets: u64,
    pub in_rows: Option<u64>,
    pub swap: Option<(usize, usize)>,
    /// The expert of each grouped slot: the launch grid then runs over the slots rather than
    /// the experts (kernels/matmul.cu `mm_expert`), for launches with fewer slots than experts.
    pub zmap: Option<u64>,
}

/// One matmul `y = x · Wᵀ` to queue: `w` decoded as `ty` (its own type, or a planted wrong one),
/// `rows` input rows at device address `x` (grouped: all experts' rows; at most `max_rows`
/// per expert).
pub struct MatmulCall<'a> {
    pub w: &'a DeviceMatrix,
    pub ty: GgmlType,
    pub x: u64,
    pub rows: usize,
    pub max_rows: usize,
    pub groups: Option<GroupPtrs>,
}

impl MatmulCall<'_> {
    /// The kernel the forward uses for this call.
    pub fn default_kernel(&self) -> MatmulKernel {
        let expected = match self.groups {
            Some(_) => self.rows.div_ceil(self.w.mats.max(1)),
            None => self.rows,
        };
        let grouped = self.groups.is_some();
        let chosen = MatmulKernel::choose(self.w.cols, self.w.rows, expected, grouped);
        let overrides = kernel_overrides();
        let forced = if grouped { overrides.1 } else { overrides.0 };
        match forced {
            // the vector kernels need K % 8 == 0
            Some(MatmulKernel::Vector | MatmulKernel::Wide) if !self.w.cols.is_multiple_of(8) => {
                chosen
            }
            Some(k) => k,
            None => chosen,
        }
    }

    /// The rows the launch grid covers per matrix: all of them for a plain matmul; for
    /// experts twice the average, capped at the most one can get. The tiled kernels loop over
    /// the row tiles past the grid (kernels/matmul.cu), so a busy expert costs a loop, not a
    /// grid sized for all T rows of which nearly every block would find no rows.
    fn grid_rows(&self) -> usize {
        match self.groups {
            Some(_) => self
                .max_rows
                .min(2 * self.rows.div_ceil(self.w.mats.max(1)))
                .max(1),
            None => self.max_rows,
        }
    }

    /// Queue the call with `kernel` into `y` ([rows, w.rows]), split along K when a plain
    /// matmul has too few output tiles for the card (`stage` names it in errors).
    pub fn launch(
        &self,
        dev: &Device,
        stage: &str,
        kernel: MatmulKernel,
        y: &CudaSlice<f32>,
    ) -> Result<()> {
        let w = self.w;
        let suffix = kernel_suffix(self.ty)
            .ok_or_else(|| Error::internal(format!("{}: no kernel for {}", w.name, self.ty)))?;
        let (splits, kspan) = match self.groups {
            Some(_) => (1, w.cols),
            None => kernel.split_k(w.rows, self.rows, w.cols, dev.sms),
        };
        let partials = if splits > 1 {
            Some(dev.scratch::<f32>(splits * self.rows * w.rows, "split-K partial sums")?)
        } else {
            None
        };
        if kernel == MatmulKernel::Wide
            && self.groups.is_none()
            && self.rows == 1
            && splits == 1
            && self.ty == w.ty
            && merged_matvec_ok(dev, w)
            && w.rows.div_ceil(8) > STREAM_BLOCKS_PER_SM * dev.sms
        {
            // more rows than the card holds warps at once: a full grid that strides over them
            let blocks = u32::try_from(STREAM_BLOCKS_PER_SM * dev.sms)
                .map_err(|_| Error::internal("stream grid too large"))?;
            return dev.launch(
                &format!("matmulws_{suffix}"),
                stage,
                LaunchConfig {
                    grid_dim: (blocks, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                },
                &[
                    Arg::Ptr(dev.ptr(&w.data)),
                    Arg::I64(w.row_bytes as i64),
                    Arg::Ptr(self.x),
                    Arg::Ptr(dev.ptr(y)),
                    int(w.rows, "matmul outputs")?,
                    int(w.cols, "matmul inputs")?,
                ],
            );
        }
        let out = partials.as_ref().map_or_else(|| dev.ptr(y), |p| dev.ptr(p));
        let g = self.groups;
        let (sa, sb) = g
            .and_then(|g| g.swap)
            .map_or((-1, -1), |(a, b)| (a as i32, b as i32));
        let args = [
            Arg::Ptr(dev.ptr(&w.data)),
            Arg::I64(w.row_bytes as i64),
            Arg::I64(w.mat_bytes() as i64),
            Arg::Ptr(self.x),
            Arg::Ptr(out),
            int(w.rows, "matmul outputs")?,
            int(w.cols, "matmul inputs")?,
            int(self.rows, "matmul rows")?,
            g.map_or(NULL, |g| Arg::Ptr(g.counts)),
            g.map_or(NULL, |g| Arg::Ptr(g.offsets)),
            g.and_then(|g| g.in_rows).map_or(NULL, Arg::Ptr),
            Arg::I32(sa),
            Arg::I32(sb),
            int(kspan, "split-K span")?,
            g.and_then(|g| g.zmap).map_or(NULL, Arg::Ptr),
        ];
        // grouped: a grid layer per expert, or per grouped slot (`zmap`); plain: per K split
        let layers = match g {
            Some(GroupPtrs { zmap: Some(_), .. }) => self.rows,
            Some(_) => w.mats,
            None => splits,
        };
        dev.launch(
            &kernel.name(suffix),
            stage,
            kernel.config(w.rows, self.grid_rows(), layers)?,
            &args,
        )?;
        if let Some(p) = &partials {
            let n = self.rows * w.rows;
            dev.launch(
                "sum_splits",
                stage,
                grid_1d(n)?,
                &[
                    Arg::Ptr(dev.ptr(p)),
                    Arg::Ptr(dev.ptr(y)),
                    Arg::I64(n as i64),
                    int(splits, "K splits")?,
                ],
            )?;
        }
        Ok(())
    }
}

/// The kernels of one block type's family (`q4_k`): every matmul variant and the gather, what
/// [`Device::load_types`] loads from that type's module.
pub fn type_kernel_names(suffix: &str) -> Vec<String> {
    MatmulKernel::ALL
        .iter()
        .map(|k| k.name(suffix))
        .chain([
            format!("gather_{suffix}"),
            format!("matmulwr_{suffix}"),
            format!("matmulwn_{suffix}"),
            format!("matmulwn_mix_{suffix}"),
            format!("matmulwn_route_{suffix}"),
            format!("matmulws_{suffix}"),
            format!("gate_up_{suffix}"),
            format!("down_combine_{suffix}"),
        ])
        .collect()
}

/// Blocks per multiprocessor of the striding one-row matvec (`matmulws_*`): as many as its
/// registers let be resident (`MV_MIN_BLOCKS` in kernels/matmul.cu).
const STREAM_BLOCKS_PER_SM: usize = 4;

/// Most inputs the merged one-row kernels stage (`MW_XMAX` in kernels/matmul.cu).
const MERGED_MAX_K: usize = 4096;

/// Whether `w` can go through the merged one-row kernels (`matmulwr_*`, `gate_up_*`): a type
/// they decode in whole 16-byte pieces (Q4_K, Q6_K), rows of whole superblocks within the
/// staged input, and the alignment their loads need.
pub fn merged_matvec_ok(dev: &Device, w: &DeviceMatrix) -> bool {
    let align = match w.ty {
        GgmlType::Q4_K => 16,
        GgmlType::Q6_K => 2,
        _ => return false,
    };
    let expert_bytes = w.rows * w.row_bytes;
    w.cols.is_multiple_of(256)
        && w.cols <= MERGED_MAX_K
        && w.row_bytes.is_multiple_of(align)
        && expert_bytes.is_multiple_of(align)
        && dev.ptr(&w.data).is_multiple_of(align as u64)
}

/// Whether `w` can go through the norm-folding one-row kernel (`matmulwn_*`): what
/// [`merged_matvec_ok`] allows, or F32 rows of a multiple of 4 values within the staged input,
/// 16-byte aligned (its float4 loads).
pub fn norm_matvec_ok(dev: &Device, w: &DeviceMatrix) -> bool {
    merged_matvec_ok(dev, w)
        || (w.ty == GgmlType::F32
            && w.cols.is_multiple_of(4)
            && w.cols <= MERGED_MAX_K
            && w.row_bytes.is_multiple_of(16)
            && dev.ptr(&w.data).is_multiple_of(16))
}

#[cfg(test)]
mod tests {
    use super::MatmulKernel::{self, Tall, Tiled, Vector, Wide};

    #[test]
    fn kernel_choice_follows_the_rows_a_matrix_expects() {
        // plain matmuls: a warp per output at one row (decode steps), the vector kernel up to
        // 8 rows, then the row tile they fill halfway
        assert_eq!(MatmulKernel::choose(2048, 4096, 1, false), Wide);
        assert_eq!(MatmulKernel::choose(2048, 4096, 2, false), Vector);
        assert_eq!(MatmulKernel::choose(2048, 4096, 8, false), Vector);
        assert_eq!(MatmulKernel::choose(2048, 4096, 9, false), Tiled { bt: 16 });
        assert_eq!(
            MatmulKernel::choose(2048, 4096, 32, false),
            Tiled { bt: 32 }
        );
        assert_eq!(
            MatmulKernel::choose(2048, 4096, 40, false),
            Tiled { bt: 32 }
        );
        assert_eq!(
            MatmulKernel::choose(2048, 4096, 41, false),
            Tall { bn: 128 }
        );
        assert_eq!(
            MatmulKernel::choose(2048, 4096, 512, false),
            Tall { bn: 128 }
        );
        // narrow matrices (k_proj, a router) fill the card better with 64-feature tiles
        assert_eq!(MatmulKernel::choose(2048, 512, 512, false), Tall { bn: 64 });
        assert_eq!(MatmulKernel::choose(2048, 128, 512, false), Tall { bn: 64 });
        // experts: a warp per output at one expected row, the vector kernel only up to 5;
        // tall tiles from 25
        assert_eq!(MatmulKernel::choose(2048, 768, 1, true), Wide);
        assert_eq!(MatmulKernel::choose(2048, 4096, 5, true), Vector);
        assert_eq!(MatmulKernel::choose(2048, 4096, 6, true), Tiled { bt: 16 });
        assert_eq!(MatmulKernel::choose(2048, 4096, 24, true), Tiled { bt: 32 });
        assert_eq!(MatmulKernel::choose(2048, 4096, 32, true), Tall { bn: 64 });
        // the vector kernels read runs of 8: a row length off that takes a tile
        assert_eq!(MatmulKernel::choose(54, 4096, 1, false), Tiled { bt: 16 });
    }

    #[test]
    fn every_kernel_parses_from_its_short_name() {
        for k in MatmulKernel::ALL {
            assert_eq!(MatmulKernel::parse(&k.short_name()), Some(k));
        }
        assert_eq!(MatmulKernel::parse("tiled48"), None);
    }

    #[test]
    fn split_k_fills_the_card_and_covers_k_exactly_once() {
        let sms = 132;
        // enough output tiles: no split
        assert_eq!(Tiled { bt: 64 }.split_k(151_936, 512, 2048, sms), (1, 2048));
        // q_proj at T = 512: 4096 / 64 x 512 / 64 = 512 tiles, enough
        assert_eq!(Tall { bn: 64 }.split_k(4096, 512, 2048, sms), (1, 2048));
        assert_eq!(Tall { bn: 128 }.split_k(4096, 512, 2048, sms), (1, 2048));
        for (kernel, n, rows, k) in [
            (Tall { bn: 64 }, 512, 512, 2048),  // k_proj at T = 512: 64 tiles
            (Tall { bn: 128 }, 512, 512, 2048), // the same in 32 tiles of twice the work
            (Tiled { bt: 32 }, 2048, 32, 4096), // attn_out at T = 32: 16 tiles
            (Vector, 128, 4, 2048),             // a router at T = 4: 2 blocks
            (Tiled { bt: 16 }, 4, 5, 4096),     // the GPU tests' small matrices
        ] {
            let (splits, kspan) = kernel.split_k(n, rows, k, sms);
            assert!(splits > 1, "{kernel:?} {n}x{rows}x{k}");
            assert_eq!(kspan % 32, 0, "{kernel:?}: chunks of 32");
            assert!(
                kspan >= 256,
                "{kernel:?}: a split streams whole K-quant blocks"
            );
            // every k in exactly one split: the last one starts before K, none is empty
            assert!(
                (splits - 1) * kspan < k && splits * kspan >= k,
                "{splits} x {kspan} vs {k}"
            );
        }
        // K too short to split
        assert_eq!(Vector.split_k(64, 1, 256, sms), (1, 256));
        // a warp per output is never split
        assert_eq!(Wide.split_k(128, 1, 2048, sms), (1, 2048));
    }
}
