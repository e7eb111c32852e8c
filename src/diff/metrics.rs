//! Error metrics between a reference tensor `a` and a candidate `b`, accumulated in f64.
//!
//! One pass computes Σa², Σb², Σab, Σ(a−b)² and max |a−b|. The hot loop runs over blocks with
//! eight independent lanes (so the compiler vectorises it) and has no branch on finiteness: any
//! NaN or Inf makes the block's Σa² or Σb² non-finite (squares of f32 cannot overflow f64), and
//! only such a block is re-run element by element to count non-finite values, honour equal
//! infinities and keep the sums over finite pairs. The index of the maximum is found by
//! re-scanning the one block that raised the running maximum.

/// Non-finite values on one side: how many, and the first flat index.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct NonFinite {
    pub count: u64,
    pub first: Option<usize>,
}

impl NonFinite {
    fn note(&mut self, i: usize) {
        self.count += 1;
        self.first = Some(self.first.map_or(i, |f| f.min(i)));
    }

    fn merge(&mut self, o: NonFinite) {
        self.count += o.count;
        self.first = match (self.first, o.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// Finished metrics of one comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    /// Elements compared (pairs; excluded positions not counted).
    pub n: usize,
    pub cosine: f64,
    /// Σ(a−b)²/Σa² over finite pairs.
    pub nmse: f64,
    /// ‖a−b‖₂/‖a‖₂ = √NMSE.
    pub rel_l2: f64,
    pub max_abs: f64,
    /// Flat index (into the full tensor) of `max_abs`; `None` when no finite pair differs.
    pub max_abs_flat: Option<usize>,
    pub nonfinite_ref: NonFinite,
    pub nonfinite_cand: NonFinite,
    /// Indices where both sides hold the same infinity (not counted as non-finite).
    pub same_inf: u64,
    /// ‖a‖₂ (to judge the scale of `max_abs`).
    pub ref_norm: f64,
}

/// A running accumulation; [`Acc::add`] slices, [`Acc::merge`] partial results from threads.
#[derive(Clone, Debug, Default)]
pub struct Acc {
    saa: f64,
    sbb: f64,
    sab: f64,
    sdd: f64,
    max_abs: f64,
    max_at: Option<usize>,
    n: usize,
    nf_ref: NonFinite,
    nf_cand: NonFinite,
    same_inf: u64,
}

const LANES: usize = 8;
const BLOCK: usize = 4096;

struct BlockSums {
    saa: f64,
    sbb: f64,
    sab: f64,
    sdd: f64,
    max_abs: f64,
}

#[inline]
fn block_sums(a: &[f32], b: &[f32]) -> BlockSums {
    let mut aa = [0f64; LANES];
    let mut bb = [0f64; LANES];
    let mut ab = [0f64; LANES];
    let mut dd = [0f64; LANES];
    let mut mx = [0f64; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            let p = x[i] as f64;
            let q = y[i] as f64;
            let d = p - q;
            aa[i] += p * p;
            bb[i] += q * q;
            ab[i] += p * q;
            dd[i] += d * d;
            let ad = d.abs();
            mx[i] = if ad > mx[i] { ad } else { mx[i] };
        }
    }
    for (i, (&x, &y)) in ra.iter().zip(rb).enumerate() {
        let (p, q) = (x as f64, y as f64);
        let d = p - q;
        aa[i] += p * p;
        bb[i] += q * q;
        ab[i] += p * q;
        dd[i] += d * d;
        let ad = d.abs();
        mx[i] = if ad > mx[i] { ad } else { mx[i] };
    }
    BlockSums {
        saa: aa.iter().sum(),
        sbb: bb.iter().sum(),
        sab: ab.iter().sum(),
        sdd: dd.iter().sum(),
        max_abs: mx.iter().fold(0.0, |m, &x| if x > m { x } else { m }),
    }
}

impl Acc {
    pub fn new() -> Acc {
        Acc::default()
    }

    /// Add pairs `a[i], b[i]` whose flat index in the full tensor is `offset + i`.
    /// The slices must have equal length (the caller checks shapes first); extra elements of the
    /// longer slice are ignored.
    pub fn add(&mut self, a: &[f32], b: &[f32], offset: usize) {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        self.n += n;
        for (bi, (xa, xb)) in a.chunks(BLOCK).zip(b.chunks(BLOCK)).enumerate() {
            let base = offset + bi * BLOCK;
            let s = block_sums(xa, xb);
            if s.saa.is_finite() && s.sbb.is_finite() {
                self.saa += s.saa;
                self.sbb += s.sbb;
                self.sab += s.sab;
                self.sdd += s.sdd;
                if s.max_abs > self.max_abs {
                    self.max_abs = s.max_abs;
                    self.max_at = xa
                        .iter()
                        .zip(xb)
                        .position(|(&p, &q)| (p as f64 - q as f64).abs() == s.max_abs)
                        .map(|i| base + i);
                }
            } else {
                self.add_slow(xa, xb, base);
            }
        }
    }

    /// Element by element, for blocks holding non-finite values.
    fn add_slow(&mut self, a: &[f32], b: &[f32], base: usize) {
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            let (fx, fy) = (x.is_finite(), y.is_finite());
            if fx && fy {
                let (p, q) = (x as f64, y as f64);
                let d = p - q;
                self.saa += p * p;
                self.sbb += q * q;
                self.sab += p * q;
                self.sdd += d * d;
                if d.abs() > self.max_abs {
                    self.max_abs = d.abs();
                    self.max_at = Some(base + i);
                }
                continue;
            }
            if x.is_infinite() && x == y {
                self.same_inf += 1;
                continue;
            }
            if !fx {
                self.nf_ref.note(base + i);
            }
            if !fy {
                self.nf_cand.note(base + i);
            }
        }
    }

    pub fn merge(&mut self, o: Acc) {
        self.saa += o.saa;
        self.sbb += o.sbb;
        self.sab += o.sab;
        self.sdd += o.sdd;
        self.n += o.n;
        self.same_inf += o.same_inf;
        self.nf_ref.merge(o.nf_ref);
        self.nf_cand.merge(o.nf_cand);
        let take = match (self.max_at, o.max_at) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(a), Some(b)) => o.max_abs > self.max_abs || (o.max_abs == self.max_abs && b < a),
        };
        if take {
            self.max_abs = o.max_abs;
            self.max_at = o.max_at;
        }
    }

    pub fn finish(&self) -> Metrics {
        let cosine = match (self.saa > 0.0, self.sbb > 0.0) {
            (false, false) => 1.0,
            (true, true) => (self.sab / (self.saa.sqrt() * self.sbb.sqrt())).clamp(-1.0, 1.0),
            _ => 0.0,
        };
        let nmse = if self.saa > 0.0 {
            self.sdd / self.saa
        } else if self.sdd == 0.0 {
            0.0
        } else {
            f64::INFINITY
        };
        Metrics {
            n: self.n,
            cosine,
            nmse,
            rel_l2: nmse.sqrt(),
            max_abs: self.max_abs,
            max_abs_flat: self.max_at,
            nonfinite_ref: self.nf_ref,
            nonfinite_cand: self.nf_cand,
            same_inf: self.same_inf,
            ref_norm: self.saa.sqrt(),
        }
    }
}

/// Metrics over whole slices, split across rayon's threads when they are large.
pub fn compare(a: &[f32], b: &[f32]) -> Metrics {
    compare_runs(a, b, &[(0, a.len().min(b.len()))])
}

/// Metrics over the index ranges `runs` (`(start, end)`, flat indices) of `a` and `b`: the rows
/// of positions whose routes agree, or everything.
pub fn compare_runs(a: &[f32], b: &[f32], runs: &[(usize, usize)]) -> Metrics {
    use rayon::prelude::*;
    // split into pieces of at least 1 Mi elements so big tensors (logits) use every thread
    const PIECE: usize = 1 << 20;
    let mut pieces = Vec::new();
    for &(s, e) in runs {
        let e = e.min(a.len()).min(b.len());
        let mut s = s;
        while s < e {
            let end = (s + PIECE).min(e);
            pieces.push((s, end));
            s = end;
        }
    }
    let acc = if pieces.len() > 1 {
        pieces
            .par_iter()
            .map(|&(s, e)| {
                let mut acc = Acc::new();
                acc.add(&a[s..e], &b[s..e], s);
                acc
            })
            .reduce(Acc::new, |mut x, y| {
                x.merge(y);
                x
            })
    } else {
        let mut acc = Acc::new();
        for &(s, e) in &pieces {
            acc.add(&a[s..e], &b[s..e], s);
        }
        acc
    };
    acc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_metrics() {
        let a = [1.0f32, 2.0, 3.0, 4.0];
        let m = compare(&a, &a);
        assert_eq!(m.rel_l2, 0.0);
        assert!((m.cosine - 1.0).abs() < 1e-15);
        assert_eq!(m.max_abs_flat, None);
        let b = [1.0f32, 2.0, 3.5, 4.0];
        let m = compare(&a, &b);
        assert_eq!(m.max_abs, 0.5);
        assert_eq!(m.max_abs_flat, Some(2));
        assert!((m.nmse - 0.25 / 30.0).abs() < 1e-15);
        let s: Vec<f32> = a.iter().map(|x| x * 1.01).collect();
        assert!((compare(&a, &s).rel_l2 - 0.01).abs() < 1e-6);
    }

    #[test]
    fn non_finite_counts_and_equal_infinities() {
        let mut a = vec![1.0f32; 10_000];
        let mut b = a.clone();
        b[7000] = f32::NAN;
        b[9000] = f32::NAN;
        a[9500] = f32::INFINITY;
        b[9500] = f32::INFINITY; // same infinity: not counted
        a[9600] = f32::INFINITY;
        b[9600] = f32::NEG_INFINITY; // opposite: counted on both sides
        b[9999] = 2.0;
        let m = compare(&a, &b);
        assert_eq!(m.nonfinite_cand.count, 3);
        assert_eq!(m.nonfinite_cand.first, Some(7000));
        assert_eq!(m.nonfinite_ref.count, 1);
        assert_eq!(m.nonfinite_ref.first, Some(9600));
        assert_eq!(m.same_inf, 1);
        assert_eq!(m.max_abs_flat, Some(9999));
        assert!(m.rel_l2.is_finite());
    }

    #[test]
    fn parallel_pieces_agree_with_serial() {
        let n = 3 << 20;
        let a: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let mut b = a.clone();
        b[2_500_001] += 0.25;
        b[12] = f32::NAN;
        let m = compare(&a, &b);
        assert_eq!(m.max_abs_flat, Some(2_500_001));
        assert_eq!(m.nonfinite_cand.first, Some(12));
        let mut acc = Acc::new();
        acc.add(&a, &b, 0);
        let s = acc.finish();
        assert!((s.rel_l2 - m.rel_l2).abs() <= 1e-12 * s.rel_l2);
        // runs skip the excluded middle
        let r = compare_runs(&a, &b, &[(0, 100), (3_000_000, n)]);
        assert_eq!(r.n, 100 + n - 3_000_000);
        assert_eq!(
            r.max_abs_flat, None,
            "the only differing element is excluded"
        );
        assert_eq!(r.nonfinite_cand.first, Some(12));
    }
}
