//! Agreement of two logits tensors as distributions over the vocabulary, next to the relative L2
//! error every stage gets: the KL divergence of the candidate's next-token distribution from the
//! reference's at each position (KL(P_ref ‖ P_cand), as llama.cpp's perplexity tool computes it
//! in its KL-divergence mode with the reference as the base model), whether the most likely token
//! is the same (top-1 agreement), and how many of the reference's k most likely tokens the
//! candidate also ranks in its k most likely (top-k overlap).
//!
//! Relative L2 says how far the numbers moved; these say whether the model's answer moved. A
//! quantized model can be far in L2 and still pick the same tokens, and a fault can flip a
//! close top-1 while the L2 error stays small.
//!
//! Everything is computed in f64 from the f32 logits: log-softmax with the row maximum
//! subtracted, so no exponent overflows.

use rayon::prelude::*;

use crate::trace::tensor::{TensorView, ViewData};

/// The k of the top-k overlap.
pub const TOP_K: usize = 10;

/// Logits agreement over the positions of a prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct LogitAgreement {
    pub positions: usize,
    pub vocab: usize,
    /// KL(P_ref ‖ P_cand) in nats, per position.
    pub kld: Vec<f64>,
    /// Whether the argmax token is the same, per position (ties go to the lowest id on both
    /// sides, as an argmax does).
    pub top1: Vec<bool>,
    /// |top-k(ref) ∩ top-k(cand)| / k per position, with k = min([`TOP_K`], vocab).
    pub topk_overlap: Vec<f64>,
    pub k: usize,
}

impl LogitAgreement {
    /// Compare two `[T, V]` logits tensors (`positions` gives T when neither side carries a
    /// shape, as APRT dumps do). `None` when they are not f32 of one shape, or when a value is
    /// not finite (a KL divergence of a NaN row means nothing; the row's verdict already says
    /// NaN).
    pub fn of(
        reference: &TensorView<'_>,
        candidate: &TensorView<'_>,
        positions: Option<usize>,
    ) -> Option<LogitAgreement> {
        let (ViewData::F32(a), ViewData::F32(b)) = (&reference.data, &candidate.data) else {
            return None;
        };
        let (t, v) = match reference.shape.as_deref().or(candidate.shape.as_deref()) {
            Some(&[t, v]) => (t, v),
            Some(_) => return None,
            None => {
                let t = positions.filter(|&t| t > 0)?;
                (t, a.len() / t)
            }
        };
        if v == 0 || t == 0 || a.len() != t * v || b.len() != t * v {
            return None;
        }
        if !a.iter().chain(b.iter()).all(|x| x.is_finite()) {
            return None;
        }
        Some(Self::from_rows(a, b, v))
    }

    /// `a` and `b` are `[T, V]` row-major and finite. Positions are independent, so they run
    /// in parallel (a 512 × 152k-vocabulary pair is 78 M exponentials per side).
    pub fn from_rows(a: &[f32], b: &[f32], vocab: usize) -> LogitAgreement {
        let k = TOP_K.min(vocab);
        let per_position: Vec<(f64, bool, f64)> = a
            .par_chunks_exact(vocab)
            .zip(b.par_chunks_exact(vocab))
            .map(|(ra, rb)| {
                let (lp, lq) = (log_softmax(ra), log_softmax(rb));
                let kl: f64 = lp.iter().zip(&lq).map(|(p, q)| p.exp() * (p - q)).sum();
                let (ta, tb) = (top(ra, k), top(rb, k));
                let shared = ta.iter().filter(|i| tb.contains(i)).count();
                // rounding can make a KL of identical distributions a hair negative
                (kl.max(0.0), ta[0] == tb[0], shared as f64 / k as f64)
            })
            .collect();
        LogitAgreement {
            positions: per_position.len(),
            vocab,
            kld: per_position.iter().map(|p| p.0).collect(),
            top1: per_position.iter().map(|p| p.1).collect(),
            topk_overlap: per_position.iter().map(|p| p.2).collect(),
            k,
        }
    }

    pub fn kld_mean(&self) -> f64 {
        mean(&self.kld)
    }

    pub fn kld_max(&self) -> f64 {
        self.kld.iter().copied().fold(0.0, f64::max)
    }

    /// The 99th percentile of the per-position KL divergence (nearest rank).
    pub fn kld_p99(&self) -> f64 {
        percentile(&self.kld, 0.99)
    }

    /// Fraction of positions whose top-1 token agrees.
    pub fn top1_rate(&self) -> f64 {
        if self.top1.is_empty() {
            return 0.0;
        }
        self.top1.iter().filter(|&&s| s).count() as f64 / self.top1.len() as f64
    }

    pub fn topk_overlap_mean(&self) -> f64 {
        mean(&self.topk_overlap)
    }

    /// Positions whose top-1 token differs, in order.
    pub fn top1_misses(&self) -> Vec<usize> {
        (0..self.top1.len()).filter(|&p| !self.top1[p]).collect()
    }

    /// One line: `KL mean 1.2e-3, p99 4.0e-3, max 5.1e-3 nats; top-1 31/32 (96.9%); top-10 overlap 0.94`.
    pub fn summary(&self) -> String {
        format!(
            "KL divergence mean {:.3e}, p99 {:.3e}, max {:.3e} nats over {} position(s); top-1 agreement {}/{} ({:.1}%); top-{} overlap {:.3}",
            self.kld_mean(),
            self.kld_p99(),
            self.kld_max(),
            self.positions,
            self.top1.iter().filter(|&&s| s).count(),
            self.top1.len(),
            100.0 * self.top1_rate(),
            self.k,
            self.topk_overlap_mean()
        )
    }
}

/// Bounds on logits agreement a drift check must meet: contracts' `thresholds.kld` and
/// `thresholds.top1`, `falsifier diff --kld/--top1`.
#[derive(Copy, Clone, Debug, Default, PartialEq)]
pub struct LogitBounds {
    /// Largest allowed mean KL divergence (nats).
    pub kld: Option<f64>,
    /// Smallest allowed top-1 agreement (a fraction, 0..=1).
    pub top1: Option<f64>,
}

impl LogitBounds {
    pub fn is_empty(&self) -> bool {
        self.kld.is_none() && self.top1.is_none()
    }

    /// A `kld` bound must be a finite mean KL divergence: >= 0 nats.
    pub fn kld_ok(v: f64) -> bool {
        v.is_finite() && v >= 0.0
    }

    /// A `top1` bound must be a fraction of positions: within 0..=1.
    pub fn top1_ok(v: f64) -> bool {
        (0.0..=1.0).contains(&v)
    }

    /// `kld <= 0.05, top1 >= 0.9` (the bounds that are set).
    pub fn text(&self) -> String {
        let mut parts = Vec::new();
        if let Some(k) = self.kld {
            parts.push(format!("kld <= {k}"));
        }
        if let Some(t) = self.top1 {
            parts.push(format!("top1 >= {t}"));
        }
        parts.join(", ")
    }

    /// Whether `got` meets every bound that is set, and why, in a sentence. With no logits
    /// compared nothing holds.
    pub fn judge(&self, got: Option<&LogitAgreement>) -> (bool, String) {
        let Some(got) = got else {
            return (
                false,
                "no logits were compared on both sides (or a side is not finite): the drift bounds cannot be checked".to_string(),
            );
        };
        let mut parts = Vec::new();
        let mut holds = true;
        if let Some(max) = self.kld {
            let ok = got.kld_mean() <= max;
            holds &= ok;
            parts.push(format!(
                "mean KL divergence {:.3e} {} {max:.3e}",
                got.kld_mean(),
                if ok { "<=" } else { "exceeds" }
            ));
        }
        if let Some(min) = self.top1 {
            let ok = got.top1_rate() >= min;
            holds &= ok;
            parts.push(format!(
                "top-1 agreement {:.4} {} {min:.4}",
                got.top1_rate(),
                if ok { ">=" } else { "is below" }
            ));
        }
        if parts.is_empty() {
            return (
                false,
                "no drift bound was set (kld, top1): nothing was checked".to_string(),
            );
        }
        (holds, parts.join("; "))
    }
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
    let sum: f64 = row.iter().map(|&x| (f64::from(x) - max).exp()).sum();
    let lse = max + sum.ln();
    row.iter().map(|&x| f64::from(x) - lse).collect()
}

/// Indices of the `k` largest values, largest first; equal values by lower index first.
fn top(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    let order = |&i: &usize, &j: &usize| row[j].total_cmp(&row[i]).then(i.cmp(&j));
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, order);
        idx.truncate(k);
    }
    idx.sort_by(order);
    idx
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Nearest-rank percentile: the smallest value with at least `q` of the values at or below it.
fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    #[test]
    fn identical_logits_agree_exactly() {
        let a = [1.0f32, 2.0, 3.0, -1.0, 0.5, 0.5, 0.25, 4.0];
        let g = LogitAgreement::from_rows(&a, &a, 4);
        assert_eq!(g.positions, 2);
        assert_eq!(g.kld, vec![0.0, 0.0]);
        assert_eq!(g.top1_rate(), 1.0);
        assert_eq!(g.topk_overlap_mean(), 1.0);
        assert_eq!(g.k, 4);
    }

    #[test]
    fn kl_divergence_matches_the_closed_form() {
        // P = softmax(0, ln 3) = (1/4, 3/4), Q = softmax(0, 0) = (1/2, 1/2)
        let a = [0.0f32, 3f32.ln()];
        let b = [5.0f32, 5.0]; // a shift changes nothing
        let g = LogitAgreement::from_rows(&a, &b, 2);
        let want = 0.25 * (0.25f64 / 0.5).ln() + 0.75 * (0.75f64 / 0.5).ln();
        assert_relative_eq!(g.kld[0], want, max_relative = 1e-6);
        // the tie in Q goes to the lower id (0); P's top-1 is 1
        assert!(!g.top1[0]);
        assert_eq!(g.top1_misses(), vec![0]);
    }

    #[test]
    fn top_k_overlap_counts_shared_ids() {
        // vocab 12, k = 10: the candidate swaps one top-10 id for an id outside it
        let a: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let mut b = a.clone();
        b.swap(2, 1); // ranks 10th and 11th swap: id 1 enters, id 2 leaves
        let g = LogitAgreement::from_rows(&a, &b, 12);
        assert_eq!(g.k, 10);
        assert_relative_eq!(g.topk_overlap[0], 0.9);
        assert!(g.top1[0]);
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.99), 198.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
    }

    #[test]
    fn bounds_judge_each_bound_and_refuse_nothing_checked() {
        let g = LogitAgreement::from_rows(&[0.0, 1.0], &[1.0, 0.0], 2);
        let (ok, why) = LogitBounds {
            kld: Some(1.0),
            top1: None,
        }
        .judge(Some(&g));
        assert!(ok, "{why}");
        let (ok, why) = LogitBounds {
            kld: Some(1.0),
            top1: Some(0.5),
        }
        .judge(Some(&g));
        assert!(
            !ok && why.contains("top-1 agreement 0.0000 is below"),
            "{why}"
        );
        assert!(!LogitBounds::default().judge(Some(&g)).0);
        assert!(
            !LogitBounds {
                kld: Some(1.0),
                top1: None
            }
            .judge(None)
            .0
        );
    }
}
