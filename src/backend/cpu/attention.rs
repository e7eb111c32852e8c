//! Attention kernels: RoPE (NeoX or adjacent pairs), causal softmax probabilities with grouped-query heads, and the
//! probability-weighted sum of values.
//!
//! Layouts follow docs/design.md: q/k/v are `[T, heads, D]`, probabilities `[nh, T, T]`, the context
//! `[T, nh·D]`. Query head `h` reads kv head `h / (nh / nkv)`.

use std::ops::Range;

use rayon::prelude::*;

use super::ops::{Precision, dot, softmax_in_place};

/// Shape of one attention call.
#[derive(Copy, Clone, Debug)]
pub struct AttnShape {
    pub t: usize,
    pub nh: usize,
    pub nkv: usize,
    pub d: usize,
}

impl AttnShape {
    /// kv head read by query head `h`.
    fn kv_head(&self, h: usize) -> usize {
        h / (self.nh / self.nkv).max(1)
    }
}

pub use crate::model::arch::RopePairing;

/// Rotate every head of `x` (`[T, heads, D]`) by its position's angles, positions `0..T`
/// (see [`rope_at`]).
pub fn rope(
    x: &[f32],
    t: usize,
    d: usize,
    theta: f32,
    freq_factors: Option<&[f32]>,
    pairing: RopePairing,
    p: Precision,
) -> Vec<f32> {
    rope_at(x, 0, t, d, theta, freq_factors, pairing, p)
}

/// Rotate every head of `x` (`[t, heads, D]`, rows at absolute positions `pos0..pos0+t`) by its
/// position's angles. `inv_freq[j] = theta^(-2j/D) / freq_factors[j]` (the divisors of
/// `rope_freqs`, llama 3 scaling; 1 without) and `angle = pos · inv_freq[j]` are computed in
/// f64, then the rotation runs in `p`. A row's result depends only on the row and its absolute
/// position, so a chunk or decode step rotates exactly as the full forward does.
#[allow(clippy::too_many_arguments)]
pub fn rope_at(
    x: &[f32],
    pos0: usize,
    t: usize,
    d: usize,
    theta: f32,
    freq_factors: Option<&[f32]>,
    pairing: RopePairing,
    p: Precision,
) -> Vec<f32> {
    let mut out = x.to_vec();
    let half = d / 2;
    if d == 0 || t == 0 {
        return out;
    }
    let heads = x.len() / (t * d);
    let inv_freq: Vec<f64> = (0..half)
        .map(|j| {
            let factor = freq_factors
                .and_then(|f| f.get(j))
                .map_or(1.0, |&f| f as f64);
            (theta as f64).powf(-((2 * j) as f64) / d as f64) / factor
        })
        .collect();
    for row in 0..t {
        let pos = pos0 + row;
        let cs: Vec<(f64, f64)> = inv_freq
            .iter()
            .map(|f| {
                let a = pos as f64 * f;
                (a.cos(), a.sin())
            })
            .collect();
        for h in 0..heads {
            let base = (row * heads + h) * d;
            for (j, &(c, s)) in cs.iter().enumerate() {
                let (i1, i2) = match pairing {
                    RopePairing::NeoX => (base + j, base + j + half),
                    RopePairing::Adjacent => (base + 2 * j, base + 2 * j + 1),
                };
                let (x1, x2) = (x[i1], x[i2]);
                let (y1, y2) = match p {
                    Precision::F64 => {
                        let (x1, x2) = (x1 as f64, x2 as f64);
                        ((x1 * c - x2 * s) as f32, (x2 * c + x1 * s) as f32)
                    }
                    Precision::F32 => {
                        let (c, s) = (c as f32, s as f32);
                        (x1 * c - x2 * s, x2 * c + x1 * s)
                    }
                };
                out[i1] = y1;
                out[i2] = y2;
            }
        }
    }
    out
}

/// The key slots each query of an attention call sees, by the query's row in the call: `0..=p`
/// for the query at absolute position `p` with a correct causal mask. The one description of
/// the mask, so that the full forward, chunks, decode steps and the planted mask faults share
/// every kernel below.
pub type Keys<'a> = &'a (dyn Fn(usize) -> Range<usize> + Sync);

/// The causal keys of a full forward of `t` positions: `0..=qi`, or `0..=qi+lookahead` (capped
/// at `t-1`) with the planted off-by-one.
fn causal(t: usize, lookahead: usize) -> impl Fn(usize) -> Range<usize> + Sync {
    move |qi| 0..(qi + lookahead).min(t - 1) + 1
}

/// Probabilities of query `qi` under head `h` over key slots `keys` (the visible ones, `row`
/// has one value per slot): scaled dot products, then softmax. The one place a probability is
/// computed, so the materialised and the fused paths agree bit for bit.
#[allow(clippy::too_many_arguments)]
fn probs_row(
    q: &[f32],
    k: &[f32],
    s: AttnShape,
    qi: usize,
    h: usize,
    keys: Range<usize>,
    row: &mut [f32],
    p: Precision,
) {
    let AttnShape { nh, nkv, d, .. } = s;
    let scale = 1.0 / (d as f64).sqrt();
    let kh = s.kv_head(h);
    let qv = &q[(qi * nh + h) * d..][..d];
    for (ki, o) in keys.zip(row.iter_mut()) {
        let kv = &k[(ki * nkv + kh) * d..][..d];
        let raw = dot(qv, kv, p);
        *o = match p {
            Precision::F64 => (raw * scale) as f32,
            Precision::F32 => raw as f32 * scale as f32,
        };
    }
    softmax_in_place(row, p);
}

/// `out[j] = Σ_s ph[s] · v[first + s, kv(h), j]` over the visible keys, in slot order (a masked
/// position is skipped, not multiplied by 0, so a NaN there cannot leak backwards).
fn ctx_head(
    ph: &[f32],
    first: usize,
    v: &[f32],
    s: AttnShape,
    h: usize,
    out: &mut [f32],
    p: Precision,
) {
    let AttnShape { nkv, d, .. } = s;
    let kh = s.kv_head(h);
    let at = |si: usize| ((first + si) * nkv + kh) * d;
    for (j, o) in out.iter_mut().enumerate() {
        *o = match p {
            Precision::F64 => {
                let mut acc = 0f64;
                for (si, &w) in ph.iter().enumerate() {
                    acc += w as f64 * v[at(si) + j] as f64;
                }
                acc as f32
            }
            Precision::F32 => {
                let mut acc = 0f32;
                for (si, &w) in ph.iter().enumerate() {
                    acc += w * v[at(si) + j];
                }
                acc
            }
        };
    }
}

/// `softmax(q·kᵀ/√D + causal mask)` as `[nh, T, T]`; masked entries are exactly 0.
pub fn attn_probs(q: &[f32], k: &[f32], s: AttnShape, lookahead: usize, p: Precision) -> Vec<f32> {
    if s.t == 0 {
        return Vec::new();
    }
    probs_rows(q, k, s, s.t, &causal(s.t, lookahead), p)
}

/// `ctx[t, h·D + j] = Σ_s probs[h, t, s] · v[s, kv(h), j]` over the positions the mask let in.
pub fn attn_ctx(
    probs: &[f32],
    v: &[f32],
    s: AttnShape,
    lookahead: usize,
    p: Precision,
) -> Vec<f32> {
    if s.t == 0 {
        return Vec::new();
    }
    ctx_rows(probs, s.t, v, s, &causal(s.t, lookahead), p)
}

/// `attn_ctx(attn_probs(q, k), v)` without the `[nh, T, T]` tensor (see [`ctx_rows_fused`]).
pub fn attn_ctx_fused(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttnShape,
    lookahead: usize,
    p: Precision,
) -> Vec<f32> {
    if s.t == 0 {
        return Vec::new();
    }
    ctx_rows_fused(q, k, v, s, &causal(s.t, lookahead), p)
}

/// The probabilities of `s.t` queries (`q` is `[s.t, nh, D]`) over key slots of `k`
/// (`[slots, nkv, D]`, a KV cache or the prompt's own keys), as `[nh, s.t, width]`: query `qi`
/// fills its `keys(qi)` columns, every other column is exactly 0.
pub fn probs_rows(
    q: &[f32],
    k: &[f32],
    s: AttnShape,
    width: usize,
    keys: Keys,
    p: Precision,
) -> Vec<f32> {
    let AttnShape { t, nh, .. } = s;
    let mut probs = vec![0f32; nh * t * width];
    if t == 0 || width == 0 {
        return probs;
    }
    probs
        .par_chunks_mut(t * width)
        .enumerate()
        .for_each(|(h, ph)| {
            for (qi, row) in ph.chunks_exact_mut(width).enumerate() {
                let r = keys(qi);
                probs_row(q, k, s, qi, h, r.clone(), &mut row[r], p);
            }
        });
    probs
}

/// The context `[s.t, nh·D]` from probabilities `[nh, s.t, width]` ([`probs_rows`]) and values
/// `v` (`[slots, nkv, D]`), summing each query's `keys(qi)` slots in order.
pub fn ctx_rows(
    probs: &[f32],
    width: usize,
    v: &[f32],
    s: AttnShape,
    keys: Keys,
    p: Precision,
) -> Vec<f32> {
    let AttnShape { t, nh, d, .. } = s;
    let mut ctx = vec![0f32; t * nh * d];
    if t == 0 {
        return ctx;
    }
    ctx.par_chunks_mut(nh * d)
        .enumerate()
        .for_each(|(qi, row)| {
            let r = keys(qi);
            for h in 0..nh {
                let ph = &probs[(h * t + qi) * width..][r.clone()];
                ctx_head(ph, r.start, v, s, h, &mut row[h * d..(h + 1) * d], p);
            }
        });
    ctx
}

/// [`ctx_rows`] of [`probs_rows`] without the `[nh, s.t, width]` tensor, for a forward that
/// keeps no probabilities: each (query, head) row of probabilities lives in a scratch row
/// (memory O(T) per thread instead of O(nh·T²): 60,000 tokens would need 57.6 GB).
/// Bit-identical to the two-step path: the same row and sum functions in the same order.
pub fn ctx_rows_fused(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttnShape,
    keys: Keys,
    p: Precision,
) -> Vec<f32> {
    let AttnShape { t, nh, d, .. } = s;
    let mut ctx = vec![0f32; t * nh * d];
    if t == 0 {
        return ctx;
    }
    ctx.par_chunks_mut(nh * d).enumerate().for_each_init(
        Vec::new,
        |scratch: &mut Vec<f32>, (qi, row)| {
            let r = keys(qi);
            scratch.resize(r.len(), 0.0);
            for h in 0..nh {
                probs_row(q, k, s, qi, h, r.clone(), scratch, p);
                ctx_head(scratch, r.start, v, s, h, &mut row[h * d..(h + 1) * d], p);
            }
        },
    );
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;

    fn vals(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 7919 % 211) as f32 - 105.0) / 60.0)
            .collect()
    }

    #[test]
    fn rope_neox_matches_rotate_half() {
        let (t, heads, d, theta) = (3, 2, 8, 10000.0f32);
        let x = vals(t * heads * d, 1);
        let y = rope(&x, t, d, theta, None, RopePairing::NeoX, Precision::F64);
        for pos in 0..t {
            for h in 0..heads {
                for j in 0..d / 2 {
                    let a = pos as f64 * (theta as f64).powf(-(2.0 * j as f64) / d as f64);
                    let b = (pos * heads + h) * d;
                    let (x1, x2) = (x[b + j] as f64, x[b + j + d / 2] as f64);
                    assert!((y[b + j] as f64 - (x1 * a.cos() - x2 * a.sin())).abs() < 1e-6);
                    assert!((y[b + j + d / 2] as f64 - (x2 * a.cos() + x1 * a.sin())).abs() < 1e-6);
                }
            }
        }
        // position 0 is the identity
        assert_eq!(&y[..heads * d], &x[..heads * d]);
        let z = rope(&x, t, d, theta, None, RopePairing::Adjacent, Precision::F64);
        assert_eq!(&z[..heads * d], &x[..heads * d]);
        assert_ne!(z, y);
    }

    /// Naive reference: full score matrix with -inf mask, GQA by head repetition.
    fn naive(q: &[f32], k: &[f32], v: &[f32], s: AttnShape) -> (Vec<f64>, Vec<f64>) {
        let AttnShape { t, nh, nkv, d } = s;
        let rep = nh / nkv;
        let mut probs = vec![0f64; nh * t * t];
        let mut ctx = vec![0f64; t * nh * d];
        for h in 0..nh {
            for i in 0..t {
                let sc: Vec<f64> = (0..t)
                    .map(|j| {
                        if j > i {
                            f64::NEG_INFINITY
                        } else {
                            (0..d)
                                .map(|x| {
                                    q[(i * nh + h) * d + x] as f64
                                        * k[(j * nkv + h / rep) * d + x] as f64
                                })
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        }
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for j in 0..t {
                    probs[(h * t + i) * t + j] = e[j] / z;
                    for x in 0..d {
                        ctx[i * nh * d + h * d + x] +=
                            e[j] / z * v[(j * nkv + h / rep) * d + x] as f64;
                    }
                }
            }
        }
        (probs, ctx)
    }

    #[test]
    fn probs_and_ctx_match_naive_gqa() {
        let s = AttnShape {
            t: 5,
            nh: 4,
            nkv: 2,
            d: 6,
        };
        let q = vals(s.t * s.nh * s.d, 3);
        let k = vals(s.t * s.nkv * s.d, 5);
        let v = vals(s.t * s.nkv * s.d, 7);
        let (np, nc) = naive(&q, &k, &v, s);
        for p in [Precision::F64, Precision::F32] {
            let probs = attn_probs(&q, &k, s, 0, p);
            let ctx = attn_ctx(&probs, &v, s, 0, p);
            for (a, b) in probs.iter().zip(&np) {
                assert!((*a as f64 - b).abs() < 1e-6, "{p:?}");
                if *b == 0.0 {
                    assert_eq!(*a, 0.0);
                }
            }
            for (a, b) in ctx.iter().zip(&nc) {
                assert!((*a as f64 - b).abs() < 1e-5, "{p:?}");
            }
        }
        // the fused path (no [nh, T, T] tensor) is the two-step path bit for bit
        for p in [Precision::F64, Precision::F32] {
            for look in [0, 1] {
                let two_step = attn_ctx(&attn_probs(&q, &k, s, look, p), &v, s, look, p);
                let fused = attn_ctx_fused(&q, &k, &v, s, look, p);
                let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&fused), bits(&two_step), "{p:?}, lookahead {look}");
            }
        }
        // off-by-one mask: position 0 now sees position 1
        let probs = attn_probs(&q, &k, s, 1, Precision::F64);
        assert!(probs[1] > 0.0);
        assert_eq!(probs[2], 0.0);
        let last = (s.t - 1) * s.t;
        assert_abs_diff_eq!(
            probs[last..last + s.t].iter().sum::<f32>(),
            1.0,
            epsilon = 1e-6
        );
    }
}
