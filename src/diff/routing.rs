//! MoE routing: `topk_ids` compared as sets per position (the order within the top-k is the
//! order of probabilities, which legitimately swaps on near-equal experts), the reference's
//! top-k margin of each flipped position, and the alignment of `topk_weights` by expert id.

/// One position whose chosen experts differ.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteFlip {
    pub position: usize,
    pub ref_ids: Vec<i32>,
    pub cand_ids: Vec<i32>,
    /// Reference router logit of its k-th expert minus its (k+1)-th; `None` when the reference
    /// has no router_logits (or no (k+1)-th expert).
    pub margin: Option<f64>,
    /// `margin` divided by the L2 norm of the reference's router-logit row.
    pub margin_rel: Option<f64>,
    /// The margin is within what rounding noise can close (see thresholds.rs).
    pub near_tie: bool,
}

/// Outcome of comparing one layer's topk_ids.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Routing {
    pub flips: Vec<RouteFlip>,
    /// Per position: whether the route differs (the positions later stages exclude).
    pub flipped: Vec<bool>,
    /// Positions with the same set in a different order (not a flip).
    pub reordered: usize,
}

impl Routing {
    /// Whether every flip is a near tie (vacuously false without flips).
    pub fn all_near_tie(&self) -> bool {
        !self.flips.is_empty() && self.flips.iter().all(|f| f.near_tie)
    }

    /// Index ranges `(start, end)` over a `[T, row]` tensor covering the positions whose
    /// routes agree.
    pub fn kept_runs(&self, row: usize) -> Vec<(usize, usize)> {
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (p, &f) in self.flipped.iter().enumerate() {
            if f {
                continue;
            }
            let (s, e) = (p * row, (p + 1) * row);
            match runs.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => runs.push((s, e)),
            }
        }
        runs
    }

    pub fn excluded(&self) -> usize {
        self.flipped.iter().filter(|&&f| f).count()
    }
}

/// Compare `[T, k]` expert ids. `ref_logits` is the reference's `[T, E]` router_logits, when
/// present, for the margins; `near_tie` is the relative near-tie margin.
pub fn compare_topk(
    ref_ids: &[i32],
    cand_ids: &[i32],
    k: usize,
    ref_logits: Option<(&[f32], usize)>,
    near_tie: f64,
) -> Routing {
    let mut out = Routing::default();
    if k == 0 {
        return out;
    }
    for (p, (r, c)) in ref_ids
        .chunks_exact(k)
        .zip(cand_ids.chunks_exact(k))
        .enumerate()
    {
        let mut rs = r.to_vec();
        let mut cs = c.to_vec();
        rs.sort_unstable();
        cs.sort_unstable();
        if rs != cs {
            let (margin, margin_rel) = match ref_logits {
                Some((logits, e)) => margin_at(logits, e, p, k),
                None => (None, None),
            };
            out.flips.push(RouteFlip {
                position: p,
                ref_ids: r.to_vec(),
                cand_ids: c.to_vec(),
                margin,
                margin_rel,
                near_tie: margin_rel.is_some_and(|m| m <= near_tie),
            });
            out.flipped.push(true);
        } else {
            if r != c {
                out.reordered += 1;
            }
            out.flipped.push(false);
        }
    }
    out
}

/// The reference's margin at position `p`: k-th largest logit minus the (k+1)-th, absolute and
/// relative to the row's L2 norm. Non-finite rows give no margin.
fn margin_at(logits: &[f32], e: usize, p: usize, k: usize) -> (Option<f64>, Option<f64>) {
    let Some(row) = logits.get(p * e..(p + 1) * e) else {
        return (None, None);
    };
    if e <= k || row.iter().any(|x| !x.is_finite()) {
        return (None, None);
    }
    let mut sorted: Vec<f64> = row.iter().map(|&x| x as f64).collect();
    sorted.sort_unstable_by(|a, b| b.total_cmp(a));
    let margin = sorted[k - 1] - sorted[k];
    let norm = sorted.iter().map(|x| x * x).sum::<f64>().sqrt();
    let rel = if norm > 0.0 { margin / norm } else { 0.0 };
    (Some(margin), Some(rel))
}

/// The candidate's `[T, k]` weights reordered so that, at every position whose routes agree,
/// entry j belongs to the reference's j-th expert. Flipped positions are left as they are (they
/// are excluded from the comparison).
pub fn align_weights(
    ref_ids: &[i32],
    cand_ids: &[i32],
    cand_w: &[f32],
    k: usize,
    routing: &Routing,
) -> Vec<f32> {
    let mut out = cand_w.to_vec();
    if k == 0 {
        return out;
    }
    for (p, &flipped) in routing.flipped.iter().enumerate() {
        if flipped {
            continue;
        }
        let range = p * k..(p + 1) * k;
        let (Some(r), Some(c), Some(w)) = (
            ref_ids.get(range.clone()),
            cand_ids.get(range.clone()),
            cand_w.get(range.clone()),
        ) else {
            break;
        };
        for (j, id) in r.iter().enumerate() {
            if let Some(ci) = c.iter().position(|x| x == id) {
                out[p * k + j] = w[ci];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_not_order_and_margins() {
        // T = 3, k = 2, E = 4
        let r = [0, 1, 2, 3, 1, 0];
        let c = [1, 0, 2, 1, 1, 0];
        let logits = [
            5.0f32, 4.0, 1.0, 0.0, //
            0.0, 0.0, 3.0, 2.9, // p1: top-2 = {2, 3}, third = 0.0 -> margin 2.9
            1.0, 2.0, 0.5, 0.4,
        ];
        let routing = compare_topk(&r, &c, 2, Some((&logits, 4)), 2e-4);
        assert_eq!(routing.flips.len(), 1);
        assert_eq!(routing.reordered, 1);
        let f = &routing.flips[0];
        assert_eq!(f.position, 1);
        assert!((f.margin.unwrap() - 2.9).abs() < 1e-6);
        assert!(!f.near_tie);
        assert_eq!(routing.kept_runs(2), vec![(0, 2), (4, 6)]);
        // a near tie: the 2nd and 3rd logits differ by 1e-5
        let logits = [
            5.0f32, 4.0, 1.0, 0.0, //
            0.0, 3.0, 2.0, 1.99999, //
            1.0, 2.0, 0.5, 0.4,
        ];
        let routing = compare_topk(&r, &c, 2, Some((&logits, 4)), 2e-4);
        assert!(routing.flips[0].near_tie);
        // no logits: margin unknown, not a near tie
        let routing = compare_topk(&r, &c, 2, None, 2e-4);
        assert_eq!(routing.flips[0].margin, None);
        assert!(!routing.flips[0].near_tie);
    }

    #[test]
    fn weights_aligned_by_id() {
        let r = [0, 1];
        let c = [1, 0];
        let routing = compare_topk(&r, &c, 2, None, 2e-4);
        assert_eq!(
            align_weights(&r, &c, &[0.4, 0.6], 2, &routing),
            vec![0.6, 0.4]
        );
    }
}
