//! Quantization drift: one prompt through two model files of the same architecture and shape
//! (BF16 and Q4_K_M, say) on one backend, compared per layer × stage, with the logits judged as
//! distributions and the layers ranked by their own error (diff::drift).
//!
//! The contract runner (`check: drift`) and `falsifier diff A.gguf B.gguf` both come here.

use std::path::Path;

use crate::backend::{Backend, ForwardRequest, Schedule};
use crate::diff::{DiffOptions, DiffReport, Drift, Origin, diff};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::gguf::GgufFile;
use crate::model::tokenizer::Prompt;
use crate::trace::plan::CapturePlan;
use crate::trace::trace::Trace;

use super::attribution;

/// Refuse two model files that are not one model in two encodings: a different architecture or
/// shape makes a stage-by-stage comparison meaningless. The error names both files and the
/// first difference.
pub fn check_same_model(reference: &Path, candidate: &Path) -> Result<()> {
    let config = |p: &Path| -> Result<ModelConfig> { ModelConfig::from_gguf(&GgufFile::open(p)?) };
    let (a, b) = (config(reference)?, config(candidate)?);
    match a.differs_from(&b) {
        None => Ok(()),
        Some(d) => Err(Error::input(format!(
            "{} and {} are not the same architecture and shape ({d}): a drift diff compares two encodings of one model",
            reference.display(),
            candidate.display()
        ))),
    }
}

/// Rank the layers of `report` (the free-running diff of `ref_trace` against the candidate's,
/// on the check's `plan`) by their own error: replay `candidate` teacher-forced from
/// `ref_trace` (which holds what [`attribution::reference_plan`] adds), compare every layer's
/// `layer_out` whatever the plan, set `report.drift`, and, when the free-running diff fails
/// somewhere, `report.origin`: the first failing planned row of the replay. The replay runs
/// under `schedule`, the one the candidate's free-running forward ran under.
pub fn rank_layers(
    candidate: &mut dyn Backend,
    ref_trace: &Trace,
    tokens: &[u32],
    plan: &CapturePlan,
    schedule: Schedule,
    opts: &DiffOptions,
    report: &mut DiffReport,
) -> Result<()> {
    let full = attribution::reference_plan(plan);
    let replay_opts = DiffOptions {
        plan: Some(full.clone()),
        progress: None,
        ..opts.clone()
    };
    let (_, replay) = attribution::attribute(
        candidate,
        ref_trace,
        tokens,
        &full,
        &[],
        schedule,
        &replay_opts,
    )?;
    report.drift = Some(Drift::rank(&replay, report));
    if report.first().is_some() {
        report.origin = replay
            .rows
            .iter()
            .find(|r| r.fails() && plan.wants_key(&r.key))
            .map(|row| Origin {
                key: row.key,
                verdict: row.verdict,
                own_rel_l2: row.rel_l2(),
            });
    }
    Ok(())
}

/// Run the prompt through both models on `backend` (both sides, one backend: only the files
/// differ), capturing `plan` plus what teacher forcing needs, and diff them with the layers
/// ranked. `open` opens a backend on a model file (the CLI passes one that names the argument
/// at fault).
pub fn diff_models(
    reference: &Path,
    candidate: &Path,
    open: &dyn Fn(&Path) -> Result<Box<dyn Backend>>,
    prompt: &Prompt,
    plan: &CapturePlan,
    opts: &DiffOptions,
) -> Result<DiffReport> {
    check_same_model(reference, candidate)?;
    let tokens = &prompt.tokens;
    let full = attribution::reference_plan(plan);
    let mut ref_backend = open(reference)?;
    let mut cand_backend = open(candidate)?;
    let mut ref_trace = ref_backend.forward(&ForwardRequest::new(tokens, &full))?;
    drop(ref_backend);
    let mut cand_trace = cand_backend.forward(&ForwardRequest::new(tokens, &full))?;
    for t in [&mut ref_trace, &mut cand_trace] {
        t.meta.set_pieces(&prompt.pieces);
    }
    let opts = DiffOptions {
        plan: Some(plan.clone()),
        two_models: true,
        ..opts.clone()
    };
    let mut report = diff(&ref_trace, &cand_trace, &opts)?;
    report.notes.push(format!(
        "drift: the same prompt through two files of one model on one backend ({} and {})",
        reference.display(),
        candidate.display()
    ));
    rank_layers(
        cand_backend.as_mut(),
        &ref_trace,
        tokens,
        plan,
        Schedule::full(),
        &opts,
        &mut report,
    )?;
    Ok(report)
}
