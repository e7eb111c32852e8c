//! Backends: anything that runs a traced forward over a whole prompt.
//!
//! The CPU backend is the reference; the CUDA backend is the usual candidate; engines that are
//! not ours implement [`Backend`] for their own forward (see examples/). One trait serves the
//! plain forward, the traced forward and the teacher-forced replay used for attribution.

pub mod cpu;
pub mod cuda;
pub mod fault;

use crate::error::Result;
use crate::trace::plan::CapturePlan;
use crate::trace::trace::Trace;

pub use fault::{Fault, FaultKind};

/// One forward over a prompt.
#[derive(Clone, Copy, Debug)]
pub struct ForwardRequest<'a> {
    /// Prompt token ids; all positions are processed at once (batched prefill).
    pub tokens: &'a [u32],
    /// Stages and layers to capture. Stages not planned are never copied out.
    pub plan: &'a CapturePlan,
    /// Teacher forcing: when set, every layer `i` starts from the teacher's input to that layer
    /// (`embedding` for layer 0, `layer.{i-1}.layer_out` otherwise), and `final_norm` from the
    /// teacher's last `layer_out`, `logits` from the teacher's `final_norm`. Each layer's output
    /// then measures that layer's own error, apart from what it would have inherited.
    pub teacher: Option<&'a Trace>,
    /// Faults planted on this side (harness self-tests and bug-class reproductions).
    pub faults: &'a [Fault],
}

impl<'a> ForwardRequest<'a> {
    pub fn new(tokens: &'a [u32], plan: &'a CapturePlan) -> ForwardRequest<'a> {
        ForwardRequest {
            tokens,
            plan,
            teacher: None,
            faults: &[],
        }
    }
}

/// A traced forward implementation.
pub trait Backend {
    /// Short name used in trace metadata and reports: `cpu`, `cuda`, `my-engine`.
    fn name(&self) -> &str;

    /// One line on what ran: device, precision, threads, driver.
    fn describe(&self) -> String;

    /// Run the forward. Returns exactly the planned stages that the architecture computes.
    fn forward(&mut self, req: &ForwardRequest<'_>) -> Result<Trace>;
}
