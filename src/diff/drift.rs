//! Where a second model file loses accuracy: the layers (and the embedding and output head)
//! ranked by their *own* error.
//!
//! When the two sides of a diff are two model files of one architecture and shape (BF16 and
//! Q4_K_M, say), every stage drifts, and the free-running diff only says how the error grows.
//! The teacher-forced replay (runner::attribution) starts every layer of the candidate from the
//! reference's input to that layer, so a layer's replayed `layer_out` differs from the
//! reference's only by what that layer's own weights compute differently. Ranking layers by that
//! own error answers "which layer loses the most when I quantize this model?"; the accumulated
//! error (free-running, the same stage) is shown next to it, so inherited error is not mistaken
//! for a layer's own.

use crate::trace::stage::{Key, Stage};

use super::report::DiffReport;

/// Layers a report names as "the layers that lose most".
pub const SHOWN: usize = 5;

/// One place's drift: a layer (its `layer_out`), or the embedding or the output head (`logits`,
/// computed from the reference's `final_norm`), whose weights a quantization touches too.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerLoss {
    /// `layer.N.layer_out`, `embedding` or `logits`.
    pub key: Key,
    /// Relative L2 error of the replayed stage: the place's own error.
    pub own_rel_l2: f64,
    /// The place's stage with the largest own relative error, and that error (a projection or
    /// a norm can drift far more than the residual stream it is added to).
    pub worst_stage: Stage,
    pub worst_own_rel_l2: f64,
    /// Relative L2 error of the same stage running free: everything inherited plus its own.
    pub accumulated_rel_l2: Option<f64>,
}

impl LayerLoss {
    /// `layer 3`, `embedding` or `output head (logits)`.
    pub fn place(&self) -> String {
        match (self.key.layer, self.key.stage) {
            (Some(l), _) => format!("layer {l}"),
            (None, Stage::Logits) => "output head".to_string(),
            (None, s) => s.to_string(),
        }
    }
}

/// The places of a model pair, ranked by their own error, largest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Drift {
    pub layers: Vec<LayerLoss>,
}

impl Drift {
    /// Rank from `replay` (the teacher-forced diff) and `free` (the free-running diff). Places
    /// whose replayed stage was not compared or is not finite are left out.
    pub fn rank(replay: &DiffReport, free: &DiffReport) -> Drift {
        let mut layers: Vec<LayerLoss> = Vec::new();
        for row in &replay.rows {
            let ranked = matches!(
                (row.key.layer, row.key.stage),
                (Some(_), Stage::LayerOut) | (None, Stage::Embedding | Stage::Logits)
            );
            if !ranked {
                continue;
            }
            let Some(own) = row.rel_l2() else { continue };
            // the worst stage inside a layer; the embedding and the head are one stage each
            let (worst_stage, worst) = replay
                .rows
                .iter()
                .filter(|r| row.key.layer.is_some() && r.key.layer == row.key.layer)
                .filter_map(|r| r.rel_l2().map(|e| (r.key.stage, e)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap_or((row.key.stage, own));
            let accumulated = free.row(&row.key).and_then(|r| r.rel_l2());
            layers.push(LayerLoss {
                key: row.key,
                own_rel_l2: own,
                worst_stage,
                worst_own_rel_l2: worst,
                accumulated_rel_l2: accumulated,
            });
        }
        layers.sort_by(|a, b| {
            b.own_rel_l2
                .total_cmp(&a.own_rel_l2)
                .then(a.key.cmp(&b.key))
        });
        Drift { layers }
    }

    /// The places that lose most ([`SHOWN`] at most), largest own error first.
    pub fn top(&self) -> &[LayerLoss] {
        &self.layers[..self.layers.len().min(SHOWN)]
    }

    /// One line: `the 5 places that lose most (own rel L2, teacher-forced): layer 3 (2.1e-2), ...`.
    pub fn summary(&self) -> String {
        if self.layers.is_empty() {
            return "no layer's own error could be measured (no finite layer_out in the teacher-forced replay)".to_string();
        }
        let items: Vec<String> = self
            .top()
            .iter()
            .map(|l| format!("{} ({:.3e})", l.place(), l.own_rel_l2))
            .collect();
        format!(
            "the {} place(s) that lose most (own rel L2, teacher-forced): {}",
            items.len(),
            items.join(", ")
        )
    }
}
