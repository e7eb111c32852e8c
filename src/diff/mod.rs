//! The diff engine: compare a candidate trace with a reference stage by stage, judge every
//! layer × stage ([`Verdict`]), find the first divergence in forward order and mark everything
//! after it as downstream.
//!
//! Both sides are read through [`TraceSource`] (zero-copy from memory maps where the format
//! allows). Stages are compared in parallel with rayon, in two phases: first every layer's
//! `topk_ids` (the routes decide which positions `topk_weights` and `ffn_out` may be compared
//! on), then everything else.

mod compare;
pub mod drift;
mod ids;
pub mod logits;
pub mod metrics;
mod prompt;
mod report;
pub mod routing;
pub mod thresholds;
pub mod verdict;

use std::fmt;
use std::sync::Arc;

use crate::progress::Progress;
use crate::trace::plan::CapturePlan;

pub use compare::diff;
pub use drift::{Drift, LayerLoss};
pub use logits::{LogitAgreement, LogitBounds};
pub use metrics::{Metrics, NonFinite};
pub use report::{ComparedBy, DiffReport, Index, Origin, Row, Side, SideInfo, Summary, index_of};
pub use routing::{RouteFlip, Routing};
pub use thresholds::{Threshold, ThresholdSource, Thresholds};
pub use verdict::{SideTags, Verdict};

/// How to diff.
#[derive(Clone)]
pub struct DiffOptions {
    pub thresholds: Thresholds,
    /// Near-tie margin for route flips, relative to the reference router-logit row's L2 norm.
    pub near_tie: f64,
    /// Labels of the sides (reference, candidate); default: each trace's backend, else its
    /// file name.
    pub labels: Option<(String, String)>,
    /// Compare only the keys this plan wants (both sides); `None` compares every key.
    pub plan: Option<CapturePlan>,
    /// Told of the keys to compare and of each one compared (`None`: nobody is told); the
    /// library draws no UI, the CLI passes a bar.
    pub progress: Option<Arc<dyn Progress>>,
    /// The sides are two model files on purpose (a drift diff): no warning that they differ.
    pub two_models: bool,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            thresholds: Thresholds::default(),
            near_tie: thresholds::NEAR_TIE,
            labels: None,
            plan: None,
            progress: None,
            two_models: false,
        }
    }
}

impl fmt::Debug for DiffOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiffOptions")
            .field("thresholds", &self.thresholds)
            .field("near_tie", &self.near_tie)
            .field("labels", &self.labels)
            .field("plan", &self.plan)
            .field("progress", &self.progress.is_some())
            .field("two_models", &self.two_models)
            .finish()
    }
}
