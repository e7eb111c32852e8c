//! Row-wise kernels of the reference forward: dot products, RMSNorm, softmax, SiLU gating,
//! residual adds and top-k selection.
//!
//! Every reduction accumulates in the [`Precision`] asked for (f64 by default, f32 to measure
//! the f32 noise floor); inputs and outputs are f32, as activations between stages are.

/// Accumulation precision of every reduction.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// Sums in f64, rounded to f32 once per output element: the reference.
    #[default]
    F64,
    /// Sums in f32, as a typical engine does: used to measure the f32 noise floor.
    F32,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F64 => "f64",
            Precision::F32 => "f32",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f64" => Ok(Precision::F64),
            "f32" => Ok(Precision::F32),
            _ => Err(format!("unknown precision `{s}` (use f64 or f32)")),
        }
    }
}

/// Independent accumulators per dot product: breaks the add dependency chain so that the loop
/// vectorizes, while keeping the summation order fixed (results do not depend on the CPU).
const LANES: usize = 8;

/// Accumulators of the f64 dot: four AVX2 registers of four f64, enough to hide the add latency.
const LANES_F64: usize = 16;

/// `Σ a[i]·b[i]` accumulated in `p`, returned as f64 (exact widening of the f32 sum in F32 mode).
#[inline]
pub fn dot(a: &[f32], b: &[f32], p: Precision) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    match p {
        Precision::F64 => dot_f64(a, b),
        Precision::F32 => dot_f32(a, b) as f64,
    }
}

pub fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { dot_f64_avx2(a, b) };
        }
    }
    dot_f64_lanes(a, b)
}

/// [`dot_f64_lanes`] with AVX2 intrinsics: lane `l` of register `r` is portable lane `4r + l`,
/// products and sums are the same IEEE operations in the same order (no FMA), so both paths
/// give bit-identical results.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_f64_avx2(a: &[f32], b: &[f32]) -> f64 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (ca, ra) = a[..n].as_chunks::<LANES_F64>();
    let (cb, rb) = b[..n].as_chunks::<LANES_F64>();
    let mut acc = [_mm256_setzero_pd(); 4];
    for (x, y) in ca.iter().zip(cb) {
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: x and y are [f32; 16]; 4r..4r+4 is in bounds, loads are unaligned.
            let (xv, yv) = unsafe {
                (
                    _mm256_cvtps_pd(_mm_loadu_ps(x.as_ptr().add(4 * r))),
                    _mm256_cvtps_pd(_mm_loadu_ps(y.as_ptr().add(4 * r))),
                )
            };
            *acc = _mm256_add_pd(*acc, _mm256_mul_pd(xv, yv));
        }
    }
    let mut lanes = [0f64; LANES_F64];
    for (r, v) in acc.iter().enumerate() {
        // SAFETY: lanes has 16 f64; 4r..4r+4 is in bounds.
        unsafe { _mm256_storeu_pd(lanes.as_mut_ptr().add(4 * r), *v) };
    }
    let mut tail = 0f64;
    for (x, y) in ra.iter().zip(rb) {
        tail += *x as f64 * *y as f64;
    }
    sum_lanes_f64(lanes) + tail
}

fn dot_f64_lanes(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    let (ca, ra) = a[..n].as_chunks::<LANES_F64>();
    let (cb, rb) = b[..n].as_chunks::<LANES_F64>();
    let mut acc = [0f64; LANES_F64];
    for (x, y) in ca.iter().zip(cb) {
        for l in 0..LANES_F64 {
            acc[l] += x[l] as f64 * y[l] as f64;
        }
    }
    let mut tail = 0f64;
    for (x, y) in ra.iter().zip(rb) {
        tail += *x as f64 * *y as f64;
    }
    sum_lanes_f64(acc) + tail
}

/// Fixed-order reduction of the 16 lanes: register-wise pairs first, then within a register.
#[inline(always)]
fn sum_lanes_f64(acc: [f64; LANES_F64]) -> f64 {
    let mut v = [0f64; 4];
    for (j, v) in v.iter_mut().enumerate() {
        *v = (acc[j] + acc[4 + j]) + (acc[8 + j] + acc[12 + j]);
    }
    (v[0] + v[1]) + (v[2] + v[3])
}

pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (ca, ra) = a[..n].as_chunks::<LANES>();
    let (cb, rb) = b[..n].as_chunks::<LANES>();
    let mut acc = [0f32; LANES];
    for (x, y) in ca.iter().zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Sum of squares of `x`, in `p`.
fn sum_sq(x: &[f32], p: Precision) -> f64 {
    dot(x, x, p)
}

/// RMSNorm of each row of `x` (rows of `g.len()` values): `x / sqrt(mean(x²) + eps) * g`.
/// Used for attn_norm, ffn_norm, final_norm (rows of H) and the per-head q_norm/k_norm (rows of D).
pub fn rms_norm(x: &[f32], g: &[f32], eps: f32, p: Precision) -> Vec<f32> {
    let n = g.len();
    let mut out = vec![0f32; x.len()];
    if n == 0 {
        return out;
    }
    for (row, o) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        match p {
            Precision::F64 => {
                let inv = 1.0 / (sum_sq(row, p) / n as f64 + eps as f64).sqrt();
                for ((o, &v), &w) in o.iter_mut().zip(row).zip(g) {
                    *o = (v as f64 * inv * w as f64) as f32;
                }
            }
            Precision::F32 => {
                let inv = 1.0 / (dot_f32(row, row) / n as f32 + eps).sqrt();
                for ((o, &v), &w) in o.iter_mut().zip(row).zip(g) {
                    *o = v * inv * w;
                }
            }
        }
    }
    out
}

/// Softmax of `row` in place, exponentials and their sum in `p`.
pub fn softmax_in_place(row: &mut [f32], p: Precision) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    match p {
        Precision::F64 => {
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - max as f64).exp()).collect();
            let s: f64 = sum_f64(&e);
            for (o, v) in row.iter_mut().zip(e) {
                *o = (v / s) as f32;
            }
        }
        Precision::F32 => {
            let mut s = 0f32;
            for v in row.iter_mut() {
                *v = (*v - max).exp();
                s += *v;
            }
            for v in row.iter_mut() {
                *v /= s;
            }
        }
    }
}

/// Softmax of each row of `x` (rows of `n`).
pub fn softmax_rows(x: &[f32], n: usize, p: Precision) -> Vec<f32> {
    let mut out = x.to_vec();
    if n > 0 {
        for row in out.chunks_exact_mut(n) {
            softmax_in_place(row, p);
        }
    }
    out
}

/// Sequential f64 sum (softmax denominators and other short sums: order fixed, no lanes needed).
pub fn sum_f64(v: &[f64]) -> f64 {
    v.iter().sum()
}

/// `silu(gate) · up`, element-wise; in F64 mode computed in f64 and rounded once.
pub fn silu_mul(gate: &[f32], up: &[f32], p: Precision) -> Vec<f32> {
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| match p {
            Precision::F64 => {
                let g = g as f64;
                (g / (1.0 + (-g).exp()) * u as f64) as f32
            }
            Precision::F32 => g / (1.0 + (-g).exp()) * u,
        })
        .collect()
}

/// Residual add `a + b` (one f32 rounding per element in both modes).
pub fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// Indices of the `k` largest values of `row`, in descending order; ties go to the lower index
/// (a stable argsort of `-row`, as the golden oracle uses). NaN sorts above every number, so a
/// NaN row still selects deterministically.
pub fn topk_desc(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;

    fn naive_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
    }

    fn seq(n: usize, seed: u32) -> Vec<f32> {
        // small deterministic pseudo-random values
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn dot_matches_naive_and_paths_agree() {
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 33, 257, 2048] {
            let (a, b) = (seq(n, 1), seq(n, 2));
            let d = dot(&a, &b, Precision::F64);
            assert!((d - naive_dot(&a, &b)).abs() < 1e-12, "n={n}");
            assert_eq!(d.to_bits(), dot_f64_lanes(&a, &b).to_bits());
            let f = dot(&a, &b, Precision::F32);
            assert!((f - naive_dot(&a, &b)).abs() < 1e-4, "n={n}");
        }
    }

    #[test]
    fn rms_norm_matches_formula() {
        let x = seq(12, 3);
        let g: Vec<f32> = (0..4).map(|i| 1.0 + i as f32 * 0.1).collect();
        for p in [Precision::F64, Precision::F32] {
            let y = rms_norm(&x, &g, 1e-6, p);
            for r in 0..3 {
                let row = &x[r * 4..r * 4 + 4];
                let ms: f64 = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / 4.0;
                for j in 0..4 {
                    let want = row[j] as f64 / (ms + 1e-6).sqrt() * g[j] as f64;
                    assert!((y[r * 4 + j] as f64 - want).abs() < 1e-5, "{p:?}");
                }
            }
        }
    }

    #[test]
    fn softmax_sums_to_one_and_orders() {
        let x = vec![1.0f32, 2.0, 3.0, -1.0, 0.0, 0.5];
        for p in [Precision::F64, Precision::F32] {
            let y = softmax_rows(&x, 3, p);
            for r in y.chunks(3) {
                assert_abs_diff_eq!(r.iter().sum::<f32>(), 1.0, epsilon = 1e-6);
            }
            assert!(y[0] < y[1] && y[1] < y[2]);
            let e = [1f64.exp(), 2f64.exp(), 3f64.exp()];
            let s: f64 = e.iter().sum();
            assert_abs_diff_eq!(y[2] as f64, e[2] / s, epsilon = 1e-7);
        }
    }

    #[test]
    fn topk_is_descending_and_stable() {
        assert_eq!(topk_desc(&[0.1, 0.5, 0.2, 0.5, 0.0], 3), vec![1, 3, 2]);
        assert_eq!(topk_desc(&[0.3, 0.3, 0.3], 2), vec![0, 1]);
        assert_eq!(topk_desc(&[0.1, f32::NAN, 0.2], 1), vec![1]);
    }

    #[test]
    fn silu_mul_matches_definition() {
        let g = [-2.0f32, 0.0, 1.5];
        let u = [1.0f32, 3.0, -2.0];
        for p in [Precision::F64, Precision::F32] {
            let y = silu_mul(&g, &u, p);
            for i in 0..3 {
                let s = g[i] as f64 / (1.0 + (-g[i] as f64).exp());
                assert_abs_diff_eq!(y[i] as f64, s * u[i] as f64, epsilon = 1e-6);
            }
        }
    }
}
