//! Origin versus propagation (docs/design.md "Verdicts"): the first divergence is the first symptom;
//! the origin is the stage whose *own* error exceeds its threshold.
//!
//! The candidate is replayed with teacher forcing: every layer starts from the reference's input
//! to that layer (and final_norm / logits from the reference's), so a layer's output differs
//! from the reference only by what that layer itself computes differently. The first failing
//! row of that replay's diff is the origin. A stage that only inherited an upstream error
//! matches in the replay; a stage that causes one fails in it. Any [`Backend`] can be replayed
//! this way: teacher forcing is part of the trait's request.

use crate::backend::{Backend, Fault, ForwardRequest, Schedule};
use crate::diff::{DiffOptions, DiffReport, Origin, diff};
use crate::error::Result;
use crate::trace::plan::CapturePlan;
use crate::trace::stage::Stage;
use crate::trace::trace::Trace;

/// Stages a reference trace must hold so that a candidate can be teacher-forced from it.
pub const TEACHER_STAGES: [Stage; 3] = [Stage::Embedding, Stage::LayerOut, Stage::FinalNorm];

/// The plan a reference runs with when attribution may follow: the check's plan plus every
/// layer's input (`embedding`, each `layer_out`) and `final_norm`, at every layer.
pub fn reference_plan(plan: &CapturePlan) -> CapturePlan {
    let mut stages: Vec<Stage> = plan.stages().collect();
    stages.extend(TEACHER_STAGES);
    CapturePlan::new(stages, crate::trace::plan::LayerSel::All)
}

/// Replay `candidate` teacher-forced from `reference` and return the origin: the first failing
/// row of the replay's diff (compared on `opts.plan`), with its own relative error. `None` when
/// the replay matches everywhere (the divergence was accumulated, not caused by one stage).
/// The replay runs under the candidate's own `schedule`: teacher rows are per position.
pub fn attribute(
    candidate: &mut dyn Backend,
    reference: &Trace,
    tokens: &[u32],
    plan: &CapturePlan,
    faults: &[Fault],
    schedule: Schedule,
    opts: &DiffOptions,
) -> Result<(Option<Origin>, DiffReport)> {
    let req = ForwardRequest {
        tokens,
        plan,
        teacher: Some(reference),
        faults,
        schedule,
    };
    let replay = candidate.forward(&req)?;
    let report = diff(reference, &replay, opts)?;
    let origin = report.first().map(|row| Origin {
        key: row.key,
        verdict: row.verdict,
        own_rel_l2: row.rel_l2(),
    });
    Ok((origin, report))
}
