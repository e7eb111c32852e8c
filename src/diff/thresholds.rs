//! Default per-stage thresholds on the relative L2 error ‖a−b‖₂/‖a‖₂, and why they are what
//! they are. Contracts and `--threshold STAGE=X` override them.
//!
//! ## Where the numbers come from
//!
//! Two correct f32 forwards differ only by rounding. One f32 operation rounds with relative error
//! at most u = 2⁻²⁴ ≈ 6.0e-8; a length-K dot product accumulated in a different order (CPU SIMD
//! lanes vs a GPU tree reduction) differs by about √K·u in relative L2 when the rounding errors
//! are independent (the worst case is K·u, reached only by adversarial sign patterns). The
//! reduction lengths at the largest shape we run, Qwen3-30B-A3B (H = 2048, 32 heads × 128,
//! 128 experts top-8, expert FFN 768), are:
//!
//! | stage | reduction | K | √K·u |
//! |---|---|---|---|
//! | attn_norm, ffn_norm, final_norm | Σx² over H | 2048 | 2.7e-6 |
//! | q/k/v_proj, router_logits, logits | x·W over H | 2048 | 2.7e-6 |
//! | q_norm, k_norm | Σx² over D | 128 | 6.7e-7 |
//! | attn_probs | q·k over D, then Σexp over T | 128 (+T) | 6.7e-7 |
//! | attn_ctx | Σ p·v over T | T | ≤ 1e-6 at T ≤ 256 |
//! | attn_out | over nh·D | 4096 | 3.8e-6 |
//! | ffn_out | over F per expert, 8 experts | 6144 | 4.7e-6 |
//!
//! But a raw (not teacher-forced) trace compares each stage *with the error it inherited*: the
//! residual stream carries every earlier stage's rounding forward, and normalisation does not
//! shrink relative error. Summing the per-layer reductions of that model (5×2048, 4096, 6144,
//! 2×128 and T: about 21 000 per layer) over 48 layers gives ≈ 10⁶ rounded terms feeding the last
//! layer, so the accumulated relative error is about √(10⁶)·u ≈ 6e-5. Every f32 stage therefore
//! gets **1e-4** (that bound rounded up): loose enough for two correct engines at layer 47, and
//! 100× below the smallest drift worth reporting (a planted scale drift of 1e-2, an 8-bit
//! activation rounding of ~5e-3 per stage). It is also 1000× the 1e-7 relative perturbation a
//! re-run may show, so identical-up-to-rounding inputs never alarm.
//!
//! Exceptions:
//! - **Softmax outputs** (attn_probs, router_probs, topk_weights): p = exp(s)/Σexp, so an
//!   absolute error δ in a logit s becomes a relative error δ in p; with the logit's relative
//!   error at the 1e-4 bound and |s| up to ≈ 3 (typical for scaled q·k/√D and router logits),
//!   the probabilities get **3e-4**.
//! - **embedding**: a table lookup (dequantization of the same weights is exact in f32: an f16
//!   scale times a small integer), so only format conversions can move it; **1e-6**.
//! - **tokens, topk_ids**: integers, compared exactly (topk_ids as sets per position, see
//!   routing.rs), threshold **0**.
//!
//! ## Near-tie route flips
//!
//! A route flip at a position whose reference top-k margin (logit of the k-th expert minus the
//! (k+1)-th) is small may come from rounding alone. A candidate whose router logits sit at the
//! rel-L2 threshold t differs in a typical row by about t·‖row‖₂; moving the two logits that
//! decide the k-th place in opposite directions by that much closes a gap of 2·t·‖row‖₂. So a
//! flip is a near tie when `margin ≤ NEAR_TIE · ‖reference router_logits row‖₂`, with
//! `NEAR_TIE = 2 × 1e-4 = 2e-4`. Near-tie flips are reported (verdict RouteFlip, `near_tie:
//! true`) but do not fail a diff on their own: the noise the thresholds accept explains them.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::trace::stage::Stage;

/// Relative L2 threshold of every f32 stage without a stage-specific reason (see module docs).
pub const DEFAULT_REL_L2: f64 = 1e-4;
/// Softmax outputs: attn_probs, router_probs, topk_weights.
pub const SOFTMAX_REL_L2: f64 = 3e-4;
/// Embedding lookups.
pub const EMBEDDING_REL_L2: f64 = 1e-6;
/// Default near-tie margin, relative to the L2 norm of the reference's router-logit row.
pub const NEAR_TIE: f64 = 2.0 * DEFAULT_REL_L2;

/// The default rel-L2 threshold of a stage.
pub fn default_rel_l2(stage: Stage) -> f64 {
    match stage {
        Stage::Tokens | Stage::TopkIds => 0.0,
        Stage::Embedding => EMBEDDING_REL_L2,
        Stage::AttnProbs | Stage::RouterProbs | Stage::TopkWeights => SOFTMAX_REL_L2,
        _ => DEFAULT_REL_L2,
    }
}

/// Where a stage's threshold came from.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ThresholdSource {
    Default,
    Override,
}

impl ThresholdSource {
    pub fn name(self) -> &'static str {
        match self {
            ThresholdSource::Default => "default",
            ThresholdSource::Override => "override",
        }
    }
}

/// The threshold one row was judged by.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Threshold {
    pub rel_l2: f64,
    pub source: ThresholdSource,
}

/// Per-stage thresholds: the defaults above plus overrides (CLI, contracts).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Thresholds {
    overrides: BTreeMap<Stage, f64>,
}

impl Thresholds {
    pub fn new() -> Thresholds {
        Thresholds::default()
    }

    /// Override one stage's rel-L2 threshold. Must be finite and non-negative.
    pub fn set(&mut self, stage: Stage, rel_l2: f64) -> Result<()> {
        if !(rel_l2.is_finite() && rel_l2 >= 0.0) {
            return Err(Error::input(format!(
                "threshold for {stage}: {rel_l2} is not a finite non-negative number"
            )));
        }
        self.overrides.insert(stage, rel_l2);
        Ok(())
    }

    /// Parse and apply `STAGE=RELL2` (the CLI's `--threshold`).
    pub fn set_from_str(&mut self, spec: &str) -> Result<()> {
        let bad = |why: String| {
            Error::input(format!(
                "--threshold {spec}: {why} (form: STAGE=RELL2 or default=RELL2, e.g. ffn_out=1e-3)"
            ))
        };
        let (stage, value) = spec
            .split_once('=')
            .ok_or_else(|| bad("missing `=`".into()))?;
        let value: f64 = value
            .trim()
            .parse()
            .map_err(|_| bad(format!("`{value}` is not a number")))?;
        // `default` is every stage without its own entry, as in contracts, whatever the order
        if stage.trim() == "default" {
            for st in Stage::ALL {
                if !self.overrides.contains_key(&st) {
                    self.set(st, value).map_err(|e| bad(e.to_string()))?;
                }
            }
            return Ok(());
        }
        let stage: Stage = stage.trim().parse().map_err(|e| bad(format!("{e}")))?;
        self.set(stage, value).map_err(|e| bad(e.to_string()))
    }

    pub fn get(&self, stage: Stage) -> Threshold {
        match self.overrides.get(&stage) {
            Some(&rel_l2) => Threshold {
                rel_l2,
                source: ThresholdSource::Override,
            },
            None => Threshold {
                rel_l2: default_rel_l2(stage),
                source: ThresholdSource::Default,
            },
        }
    }

    pub fn overrides(&self) -> &BTreeMap<Stage, f64> {
        &self.overrides
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let mut t = Thresholds::new();
        assert_eq!(t.get(Stage::FfnOut).rel_l2, 1e-4);
        assert_eq!(t.get(Stage::AttnProbs).rel_l2, 3e-4);
        assert_eq!(t.get(Stage::TopkIds).rel_l2, 0.0);
        t.set_from_str("ffn_out=2e-3").unwrap();
        assert_eq!(t.get(Stage::FfnOut).rel_l2, 2e-3);
        assert_eq!(t.get(Stage::FfnOut).source, ThresholdSource::Override);
        for bad in [
            "ffn_out",
            "nope=1",
            "ffn_out=x",
            "ffn_out=-1",
            "ffn_out=nan",
        ] {
            assert!(t.set_from_str(bad).is_err(), "{bad}");
        }
        // `default` fills every stage without its own entry, in either order
        for specs in [
            ["default=1e-6", "ffn_out=2e-3"],
            ["ffn_out=2e-3", "default=1e-6"],
        ] {
            let mut t = Thresholds::new();
            for s in specs {
                t.set_from_str(s).unwrap();
            }
            assert_eq!(t.get(Stage::FfnOut).rel_l2, 2e-3);
            assert_eq!(t.get(Stage::AttnProbs).rel_l2, 1e-6);
            assert_eq!(t.get(Stage::Logits).source, ThresholdSource::Override);
        }
    }

    #[test]
    fn every_default_is_far_from_rounding_and_from_real_faults() {
        for s in Stage::ALL {
            let t = default_rel_l2(s);
            if matches!(s, Stage::Tokens | Stage::TopkIds) {
                continue;
            }
            // at least 10x above a 1e-7 re-run perturbation, at least 10x below a 1e-2 drift
            assert!((1e-6..=1e-3).contains(&t), "{s}: {t}");
        }
    }
}

/// A threshold proposed from a measured noise floor.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    pub stage: Stage,
    /// Largest rel-L2 error of the stage over all layers in the calibration diff.
    pub measured: f64,
    pub proposed: f64,
    pub default: f64,
}

/// Calibration: given a diff of the reference computed in f32 against the same forward in f64
/// (the noise floor of f32 rounding on this model and prompt), propose per-stage thresholds of
/// `factor` × the worst rel-L2 error seen at that stage, rounded up to one significant digit and
/// never below 1e-7 (a threshold under the perturbation of a single f32 rounding would alarm on
/// a re-run). Integer stages and stages with nothing compared are skipped.
pub fn propose(report: &super::DiffReport, factor: f64) -> Vec<Proposal> {
    let mut worst: BTreeMap<Stage, f64> = BTreeMap::new();
    for r in &report.rows {
        if r.key.stage.dtype() != crate::trace::stage::StageDtype::F32 {
            continue;
        }
        if let Some(m) = r
            .metrics
            .as_ref()
            .filter(|m| m.n > 0 && m.rel_l2.is_finite())
        {
            let w = worst.entry(r.key.stage).or_insert(0.0);
            *w = w.max(m.rel_l2);
        }
    }
    worst
        .into_iter()
        .map(|(stage, measured)| Proposal {
            stage,
            measured,
            proposed: round_up_1sig((measured * factor).max(1e-7)),
            default: default_rel_l2(stage),
        })
        .collect()
}

/// 3.2e-5 -> 4e-5; 1e-4 -> 1e-4.
fn round_up_1sig(x: f64) -> f64 {
    if !(x.is_finite() && x > 0.0) {
        return x;
    }
    let e = x.log10().floor();
    let scale = 10f64.powf(e);
    let m = x / scale;
    // tolerate representation error so an exact 1e-4 stays 1e-4
    let mc = if (m - m.round()).abs() < 1e-9 {
        m.round()
    } else {
        m.ceil()
    };
    mc * scale
}

#[cfg(test)]
mod calibration_tests {
    use super::*;

    #[test]
    fn rounding_up() {
        assert!((round_up_1sig(3.2e-5) - 4e-5).abs() < 1e-18);
        assert!((round_up_1sig(1e-4) - 1e-4).abs() < 1e-18);
        assert!((round_up_1sig(9.01) - 10.0).abs() < 1e-12);
    }
}
