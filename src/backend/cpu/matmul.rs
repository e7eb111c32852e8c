//! Batched matmul against quantized weights: `y[T,N] = x[T,K] · W[N,K]ᵀ`.
//!
//! Weights stay where they are (zero-copy in the GGUF memory map); each rayon task decodes one
//! chunk of W's rows into its own f32 buffer and computes the T dot products of those rows. The
//! whole model is never dequantized (the 30B-A3B file is 17 GB). Each output element is one dot
//! product in a fixed order, so results are bit-identical whatever the thread count.

use rayon::prelude::*;

use super::ops::{Precision, dot};
use crate::error::{Error, Result};
use crate::model::weights::QTensor;

/// Something that can decode a range of its rows to f32: a quantized weight matrix, a weight
/// decoded through a planted fault, or a plain f32 matrix in tests.
pub trait RowSource: Sync {
    /// Name for error messages (the GGUF tensor name).
    fn name(&self) -> &str;
    /// Number of rows (N: outputs).
    fn rows(&self) -> usize;
    /// Values per row (K: inputs).
    fn cols(&self) -> usize;
    /// Decode rows `r0 .. r0 + n` into `out` (`n * cols()` values, row-major).
    fn decode_rows(&self, r0: usize, n: usize, out: &mut [f32]) -> Result<()>;
}

/// Decoded floats per task: small enough to stay in L2 while the T dot products reuse it.
const CHUNK_VALUES: usize = 1 << 15;

fn rows_per_chunk(n: usize, k: usize) -> usize {
    let by_cache = (CHUNK_VALUES / k.max(1)).max(1);
    // at least a few chunks per thread, so that small matrices still spread over the pool
    let by_threads = n.div_ceil(4 * rayon::current_num_threads()).max(1);
    by_cache.min(by_threads)
}

/// `x` is `[t, w.cols()]` row-major; returns `[t, w.rows()]`.
pub fn matmul<W: RowSource + ?Sized>(x: &[f32], t: usize, w: &W, p: Precision) -> Result<Vec<f32>> {
    let (n, k) = (w.rows(), w.cols());
    if t.checked_mul(k) != Some(x.len()) {
        return Err(Error::internal(format!(
            "matmul with {}: input has {} values, expected {t} x {k}",
            w.name(),
            x.len()
        )));
    }
    if n == 0 || t == 0 {
        return Ok(Vec::new());
    }
    let chunk = rows_per_chunk(n, k);
    let parts: Vec<Vec<f32>> = (0..n.div_ceil(chunk))
        .into_par_iter()
        .map_init(Vec::new, |buf: &mut Vec<f32>, c| -> Result<Vec<f32>> {
            let r0 = c * chunk;
            let rn = chunk.min(n - r0);
            buf.resize(rn * k, 0.0);
            w.decode_rows(r0, rn, buf)?;
            // part is [rn, t]: the weight row stays hot while it meets every token
            let mut part = vec![0f32; rn * t];
            for (wr, out) in buf.chunks_exact(k).zip(part.chunks_exact_mut(t)) {
                for (o, xr) in out.iter_mut().zip(x.chunks_exact(k)) {
                    *o = dot(xr, wr, p) as f32;
                }
            }
            Ok(part)
        })
        .collect::<Result<_>>()?;
    let mut y = vec![0f32; t * n];
    for (c, part) in parts.iter().enumerate() {
        let r0 = c * chunk;
        for (r, col) in part.chunks_exact(t).enumerate() {
            for (ti, v) in col.iter().enumerate() {
                y[ti * n + r0 + r] = *v;
            }
        }
    }
    Ok(y)
}

/// A plain row-major f32 matrix (tests, and small decoded tensors).
#[derive(Clone, Debug)]
pub struct DenseRows {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl RowSource for DenseRows {
    fn name(&self) -> &str {
        &self.name
    }
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn decode_rows(&self, r0: usize, n: usize, out: &mut [f32]) -> Result<()> {
        let src = r0
            .checked_mul(self.cols)
            .and_then(|a| Some((a, a.checked_add(n.checked_mul(self.cols)?)?)))
            .and_then(|(a, b)| self.data.get(a..b))
            .ok_or_else(|| Error::internal(format!("{}: rows {r0}+{n} out of range", self.name)))?;
        out.copy_from_slice(src);
        Ok(())
    }
}

/// A GGUF weight decoded as stored.
impl RowSource for QTensor<'_> {
    fn name(&self) -> &str {
        self.name
    }
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn decode_rows(&self, r0: usize, n: usize, out: &mut [f32]) -> Result<()> {
        QTensor::decode_rows(self, r0, n, out)
    }
}

/// The planted fault `q6k_as_q4k`: a Q6_K weight whose rows are read by a Q4_K decoder.
pub struct Q6kAsQ4k<'a>(pub QTensor<'a>);

impl RowSource for Q6kAsQ4k<'_> {
    fn name(&self) -> &str {
        self.0.name
    }
    fn rows(&self) -> usize {
        self.0.rows
    }
    fn cols(&self) -> usize {
        self.0.cols
    }
    fn decode_rows(&self, r0: usize, n: usize, out: &mut [f32]) -> Result<()> {
        self.0.decode_rows_q6k_as_q4k(r0, n, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_matches_naive() {
        for (t, n, k) in [(1, 1, 1), (3, 5, 7), (8, 70, 33), (2, 1000, 64)] {
            let w = DenseRows {
                name: "w".into(),
                rows: n,
                cols: k,
                data: (0..n * k)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                    .collect(),
            };
            let x: Vec<f32> = (0..t * k)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
                .collect();
            for p in [Precision::F64, Precision::F32] {
                let y = matmul(&x, t, &w, p).unwrap();
                assert_eq!(y.len(), t * n);
                for ti in 0..t {
                    for r in 0..n {
                        let want: f64 = (0..k)
                            .map(|j| x[ti * k + j] as f64 * w.data[r * k + j] as f64)
                            .sum();
                        let got = y[ti * n + r] as f64;
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{p:?} {t} {n} {k}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn matmul_rejects_wrong_input_len() {
        let w = DenseRows {
            name: "w".into(),
            rows: 2,
            cols: 3,
            data: vec![0.0; 6],
        };
        assert!(matmul(&[1.0; 5], 2, &w, Precision::F64).is_err());
    }
}
