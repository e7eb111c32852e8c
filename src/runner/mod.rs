//! The contract runner: contracts become trials (one per falsifier × model); a trial runs the
//! paired forward, diffs it, attributes the first divergence to its origin, judges the
//! falsifier's prediction, and writes its report.
//!
//! Like nextest's split between runner and CLI, everything here is library code: the `falsify`
//! test target (harness/falsify.rs) and `falsifier run` are thin shells over [`trials`] and
//! [`run_trial`].

pub mod attribution;
pub mod drift;
pub mod models;
pub mod nightly;
pub mod overview;
pub mod summary;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::backend::{self, Backend, Fault, ForwardRequest};
use crate::contract::LoadedContract;
use crate::contract::evidence::trial_level;
use crate::contract::schema::{BackendName, Check, Falsifier, ModelSpec, ScheduleSpec, Side};
use crate::diff::{DiffOptions, DiffReport, diff};
use crate::error::{Error, ErrorKind, Result};
use crate::model::config::ModelConfig;
use crate::model::gguf::GgufFile;
use crate::report::{FalsifierResult, Planted, ReportContext, write_reports};
use crate::trace::plan::CapturePlan;
use crate::trace::stage::{Key, Stage};
use crate::trace::tensor::TensorData;
use crate::trace::trace::Trace;

/// One falsifier on one model.
#[derive(Clone, Debug)]
pub struct TrialSpec {
    pub contract: String,
    pub contract_file: PathBuf,
    pub falsifier: Falsifier,
    pub model_name: String,
    pub model: ModelSpec,
    /// The falsifier's `candidate_model`, with its spec: the file the candidate runs.
    pub candidate_model: Option<(String, ModelSpec)>,
    /// The backends were overridden ([`with_candidate`]): the record carries no level.
    pub overridden: bool,
}

impl TrialSpec {
    /// `reference-vs-candidate::FALSIFY-ID::model`, so that filters read well
    /// (`cargo test --test falsify -- cpu-vs-cuda`, `-- FALSIFY-MOE-SUB`, `-- tiny-moe`).
    pub fn name(&self) -> String {
        let pair = match self.falsifier.pair() {
            Some((r, c)) => format!("{r}-vs-{c}"),
            None => "invalid-pair".to_string(),
        };
        format!("{pair}::{}::{}", self.falsifier.id, self.model_name)
    }

    pub fn needs_gpu(&self) -> bool {
        self.falsifier.backends.iter().any(|b| b.needs_gpu())
    }

    pub fn heavy(&self) -> bool {
        self.falsifier.heavy
    }
}

/// Run every trial with `candidate` as its candidate backend instead of the contracted one
/// (e.g. the CPU self-test contracts with the faults planted on CUDA). Such runs prove nothing
/// about the contracts as written, so their records carry no level and cannot promote.
pub fn with_candidate(mut spec: TrialSpec, candidate: BackendName) -> TrialSpec {
    if let Some(c) = spec.falsifier.backends.get_mut(1)
        && *c != candidate
    {
        *c = candidate;
        spec.overridden = true;
    }
    spec
}

/// Run every trial's candidate with `schedule` instead of the contracted one (`falsifier run
/// --chunk C --decode N`: a cache path checked against the contracts' clean and planted
/// trials). As with [`with_candidate`], such runs carry no level.
pub fn with_schedule(mut spec: TrialSpec, schedule: ScheduleSpec) -> TrialSpec {
    if spec.falsifier.schedule != Some(schedule) {
        spec.falsifier.schedule = Some(schedule);
        spec.overridden = true;
    }
    spec
}

/// Every trial of the contracts, in file order.
pub fn trials(contracts: &[LoadedContract]) -> Vec<TrialSpec> {
    let mut out = Vec::new();
    for c in contracts {
        for f in &c.contract.falsifiers {
            for m in &f.models {
                out.push(TrialSpec {
                    contract: c.contract.contract.clone(),
                    contract_file: c.path.clone(),
                    falsifier: f.clone(),
                    model_name: m.clone(),
                    model: c.model(m).cloned().unwrap_or_default(),
                    candidate_model: f
                        .candidate_model
                        .as_ref()
                        .map(|n| (n.clone(), c.model(n).cloned().unwrap_or_default())),
                    overridden: false,
                });
            }
        }
    }
    out
}

/// What a trial that ran found.
#[derive(Clone, Debug)]
pub struct TrialResult {
    pub holds: bool,
    /// Why it holds or fails, in a sentence or a few lines (the first divergence row, its
    /// origin, the expectation, the report path).
    pub message: String,
    pub record: FalsifierResult,
    pub diff: DiffReport,
    pub report_dir: PathBuf,
    pub elapsed: Duration,
    /// `describe()` of the candidate backend (card and driver for CUDA).
    pub candidate_device: String,
}

/// How a trial ended.
#[derive(Clone, Debug)]
pub enum TrialOutcome {
    Ran(Box<TrialResult>),
    /// A CUDA trial on a machine with no CUDA device: neither a pass nor a failure.
    NoDevice(String),
}

/// Report directory of a trial under `root`.
pub fn trial_dir(root: &Path, spec: &TrialSpec) -> PathBuf {
    root.join(&spec.contract)
        .join(&spec.falsifier.id)
        .join(&spec.model_name)
}

/// Diff options from the falsifier: its per-stage thresholds (a `default` entry applies to
/// every stage it does not name; without either, the diff's justified defaults hold), its
/// route margin, and its plan.
fn diff_options(
    f: &Falsifier,
    plan: &CapturePlan,
    labels: (String, String),
) -> Result<DiffOptions> {
    let mut opts = DiffOptions {
        labels: Some(labels),
        plan: Some(plan.clone()),
        ..DiffOptions::default()
    };
    let has_default = f.thresholds.contains_key("default");
    for stage in Stage::ALL {
        if f.thresholds.contains_key(stage.name()) || has_default {
            opts.thresholds.set(stage, f.threshold(stage))?;
        }
    }
    if f.route_margin() > 0.0 {
        opts.near_tie = f.route_margin();
    }
    Ok(opts)
}

fn open_side(name: &BackendName, model: &Path) -> Result<Box<dyn Backend>> {
    backend::open(name.name(), model)
}

/// Run one trial and write its report under `report_root`.
pub fn run_trial(spec: &TrialSpec, report_root: &Path) -> Result<TrialOutcome> {
    let start = Instant::now();
    let f = &spec.falsifier;
    let at = || format!("{}: {}", spec.contract_file.display(), f.id);
    let (ref_name, cand_name) = f
        .pair()
        .ok_or_else(|| Error::input(format!("{}: backends must name exactly two", at())))?;
    for side in [&ref_name, &cand_name] {
        match backend::probe(side.name()) {
            Err(e) if e.kind == ErrorKind::NoDevice => {
                return Ok(TrialOutcome::NoDevice(e.to_string()));
            }
            r => r?,
        }
    }
    let model_path = models::resolve(&spec.contract_file, &spec.model_name, &spec.model)?;
    let cand_model_path = match &spec.candidate_model {
        None => model_path.clone(),
        Some((name, m)) => {
            let p = models::resolve(&spec.contract_file, name, m)?;
            drift::check_same_model(&model_path, &p)
                .map_err(|e| e.context(format!("{}: candidate_model {name}", at())))?;
            p
        }
    };
    let plan = f
        .plan()
        .map_err(|e| Error::input(format!("{}: {e}", at())))?;
    let planted = f
        .planted()
        .map_err(|e| Error::input(format!("{}: {e}", at())))?;
    let (ref_faults, cand_faults): (Vec<Fault>, Vec<Fault>) = match planted {
        Some((fault, Side::Reference)) => (vec![fault], vec![]),
        Some((fault, Side::Candidate)) => (vec![], vec![fault]),
        None => (vec![], vec![]),
    };

    let mut reference = match open_side(&ref_name, &model_path) {
        Err(e) if e.kind == ErrorKind::NoDevice => {
            return Ok(TrialOutcome::NoDevice(e.to_string()));
        }
        r => r?,
    };
    let mut candidate = match open_side(&cand_name, &cand_model_path) {
        Err(e) if e.kind == ErrorKind::NoDevice => {
            return Ok(TrialOutcome::NoDevice(e.to_string()));
        }
        r => r?,
    };
    let candidate_device = candidate.describe();

    // The reference keeps what teacher forcing needs; the candidate what the check compares
    // plus the same, so that both traces describe the same stages.
    let full_plan = attribution::reference_plan(&plan);
    let prompt = f.prompt_for(&model_path)?;
    let tokens = &prompt.tokens;
    let (ref_schedule, cand_schedule) = f.schedules();
    for (side, schedule) in [(&ref_name, &ref_schedule), (&cand_name, &cand_schedule)] {
        backend::check_schedule(side.name(), schedule)
            .map_err(|e| e.context(format!("{}: schedule", at())))?;
    }
    let mut ref_trace = reference.forward(&ForwardRequest {
        tokens,
        plan: &full_plan,
        teacher: None,
        faults: &ref_faults,
        schedule: ref_schedule,
    })?;
    let mut cand_trace = candidate.forward(&ForwardRequest {
        tokens,
        plan: &full_plan,
        teacher: None,
        faults: &cand_faults,
        schedule: cand_schedule,
    })?;
    // reports describe each side by what ran it (card and driver for CUDA), and each
    // position by its token's text
    for (trace, side) in [(&mut ref_trace, &reference), (&mut cand_trace, &candidate)] {
        trace.meta.set_pieces(&prompt.pieces);
        trace
            .meta
            .extra
            .entry("device".into())
            .or_insert_with(|| side.describe());
    }

    let labels = (ref_name.name().to_string(), cand_name.name().to_string());
    let mut opts = diff_options(f, &plan, labels)?;
    opts.two_models = spec.candidate_model.is_some();
    let mut report = diff(&ref_trace, &cand_trace, &opts)?;
    if f.check == Check::Drift {
        drift::rank_layers(
            candidate.as_mut(),
            &ref_trace,
            tokens,
            &plan,
            cand_schedule,
            &opts,
            &mut report,
        )?;
    } else if report.first().is_some() {
        let (origin, _) = attribution::attribute(
            candidate.as_mut(),
            &ref_trace,
            tokens,
            &full_plan,
            &cand_faults,
            cand_schedule,
            &opts,
        )?;
        report.origin = origin;
    }

    let (holds, why) = judge(
        spec,
        &report,
        &cand_trace,
        candidate.as_mut(),
        &cand_model_path,
        &plan,
    )?;
    let dir = trial_dir(report_root, spec);
    let first = report
        .first()
        .map(|r| format!("{}: {}", r.key, report.verdict_name(r.verdict)));
    let expected = expected_text(f);
    let level = if holds && !spec.overridden {
        trial_level((ref_name.clone(), cand_name.clone()), true).map(|s| s.name().to_string())
    } else {
        None
    };
    let record = FalsifierResult {
        id: f.id.clone(),
        contract: spec.contract.clone(),
        model: spec.model_name.clone(),
        backends: vec![ref_name.name().to_string(), cand_name.name().to_string()],
        holds,
        state: Some(if holds { "holds" } else { "FAILS" }.to_string()),
        expected,
        first_divergence: first.clone(),
        origin: report.origin.as_ref().map(|o| o.key.to_string()),
        report_dir: Some(dir.display().to_string()),
        level,
        drift: drift_text(f),
    };
    let mut ctx = ReportContext::new(format!(
        "falsifier run {} (trial {})",
        spec.contract_file.display(),
        spec.name()
    ));
    if cand_name.needs_gpu() || ref_name.needs_gpu() {
        ctx.environment.card = Some(candidate_device.clone());
    }
    // a planted-fault trial holds when it diverges where planted: its report says so
    ctx.planted = record.expected.clone().map(|expected| Planted {
        expected,
        found: holds,
        finding: why.clone(),
    });
    if f.check == Check::Drift {
        ctx.drift = Some(crate::report::DriftCheck {
            bounds: f.logit_bounds().text(),
            holds,
            finding: why.clone(),
        });
    }
    ctx.falsifiers.push(record.clone());
    write_reports(&dir, &report, &ctx)?;

    let mut message = why;
    if f.check == Check::Drift {
        // every stage of a second file drifts: the layers' own errors, not a first divergence
        if let Some(d) = &report.drift {
            message.push_str(&format!("\n  {}", d.summary()));
        }
    } else if let Some(row) = report.first() {
        message.push_str(&format!(
            "\n  first divergence: {}",
            crate::report::row_detail(&report, row)
        ));
        match &report.origin {
            Some(o) => message.push_str(&format!(
                "\n  origin (teacher-forced replay): {} {}{}",
                o.key,
                report.verdict_name(o.verdict),
                o.own_rel_l2
                    .map(|e| format!(", own rel L2 {e:.3e}"))
                    .unwrap_or_default()
            )),
            None => message.push_str(
                "\n  origin: none — with the reference's inputs every layer matches, so the divergence accumulated over layers",
            ),
        }
    }
    message.push_str(&format!(
        "\n  report: {}",
        dir.join("report.html").display()
    ));
    Ok(TrialOutcome::Ran(Box::new(TrialResult {
        holds,
        message,
        record,
        diff: report,
        report_dir: dir,
        elapsed: start.elapsed(),
        candidate_device,
    })))
}

/// The expectation of a planted-fault falsifier, as reports print it
/// ([`Falsifier::expected_text`]).
pub fn expected_text(f: &Falsifier) -> Option<String> {
    f.expected_text()
}

/// A drift check's bounds, as reports print them (`kld <= 0.001, top1 >= 1`).
pub fn drift_text(f: &Falsifier) -> Option<String> {
    (f.check == Check::Drift).then(|| f.logit_bounds().text())
}

/// Decide whether the falsifier's prediction held. Returns (holds, one-line reason).
fn judge(
    spec: &TrialSpec,
    report: &DiffReport,
    cand_trace: &Trace,
    candidate: &mut dyn Backend,
    model_path: &Path,
    plan: &CapturePlan,
) -> Result<(bool, String)> {
    let f = &spec.falsifier;
    if let Some(expect) = &f.expect {
        let want_first: Key = expect
            .first_divergence_key()
            .map_err(|e| Error::input(format!("{}: {e}", f.id)))?;
        let want_origin: Key = expect
            .origin_key()
            .map_err(|e| Error::input(format!("{}: {e}", f.id)))?;
        let got_first = report.first().map(|r| r.key);
        let got_origin = report.origin.as_ref().map(|o| o.key);
        let mut holds = got_first == Some(want_first) && got_origin == Some(want_origin);
        let show = |k: Option<Key>| k.map_or("none".to_string(), |k| k.to_string());
        // without a fault, the expectation is that of sides declared different (kv_cache)
        let what = if f.fault.is_some() {
            "planted fault"
        } else {
            "divergence"
        };
        let mut why = format!(
            "{what} expected at {want_first} (origin {want_origin}); found first divergence {}, origin {}",
            show(got_first),
            show(got_origin)
        );
        if let Some(want) = expect.position {
            // the position of the first divergence row's largest difference
            let got = report
                .first()
                .and_then(|r| r.max_abs_at)
                .and_then(|i| i.position);
            holds &= got == Some(want);
            let got = got.map_or("none".to_string(), |p| report.position_text(p));
            why.push_str(&format!("; expected position {want}, found {got}"));
        }
        return Ok((holds, why));
    }
    match f.check {
        Check::Parity => Ok((report.holds, crate::report::headline(report))),
        Check::Routing => {
            let real: Vec<&crate::diff::Row> = report
                .rows
                .iter()
                .filter(|r| r.verdict == crate::diff::Verdict::RouteFlip && !r.near_tie)
                .collect();
            let compared = report.rows.iter().any(|r| {
                r.key.stage == Stage::TopkIds && r.verdict != crate::diff::Verdict::Missing
            });
            if !compared {
                return Ok((false, "routing check compared no topk_ids".to_string()));
            }
            let near = report.summary().near_tie_flips;
            Ok(match real.first() {
                None => (
                    true,
                    format!(
                        "routes agree at every position ({near} near-tie flip(s) below the margin {:.1e})",
                        report.near_tie
                    ),
                ),
                Some(r) => (false, format!("real route flip at {}", r.key)),
            })
        }
        Check::NoNan => {
            let bad = cand_trace.tensors.iter().find_map(|(k, t)| match &t.data {
                TensorData::F32(v) => v.iter().position(|x| !x.is_finite()).map(|i| (*k, i)),
                TensorData::I32(_) => None,
            });
            Ok(match bad {
                None => (
                    true,
                    format!(
                        "{} stages of the candidate are finite everywhere",
                        cand_trace.tensors.len()
                    ),
                ),
                Some((k, i)) => (false, format!("non-finite value in {k} at flat index {i}")),
            })
        }
        Check::CaptureComplete => capture_complete(cand_trace, candidate, model_path, plan),
        Check::Drift => Ok(f.logit_bounds().judge(report.logits.as_ref())),
    }
}

/// FALSIFY-MOE-SUB-001: every planned stage the architecture has was captured, and capturing
/// changes nothing (the logits of an untraced forward are bit-identical).
fn capture_complete(
    traced: &Trace,
    candidate: &mut dyn Backend,
    model_path: &Path,
    plan: &CapturePlan,
) -> Result<(bool, String)> {
    let file = GgufFile::open(model_path)?;
    let config = ModelConfig::from_gguf(&file)?;
    let want = plan.keys(config.n_layers, |s| config.has_stage(s));
    let missing: Vec<String> = want
        .iter()
        .filter(|k| !traced.tensors.contains_key(k))
        .map(|k| k.to_string())
        .collect();
    if !missing.is_empty() {
        return Ok((
            false,
            format!(
                "{} planned stage(s) not captured: {}",
                missing.len(),
                missing.join(", ")
            ),
        ));
    }
    let logits_only = CapturePlan::new([Stage::Logits], crate::trace::plan::LayerSel::All);
    let untraced = candidate.forward(&ForwardRequest::new(&traced.meta.tokens, &logits_only))?;
    let key = Key::model(Stage::Logits);
    let same = match (traced.get(&key), untraced.get(&key)) {
        (Some(a), Some(b)) => match (&a.data, &b.data) {
            (TensorData::F32(x), TensorData::F32(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
            }
            _ => false,
        },
        _ => false,
    };
    Ok(if same {
        (
            true,
            format!(
                "all {} planned stages captured; logits bit-identical to an untraced forward",
                want.len()
            ),
        )
    } else {
        (
            false,
            "logits of the traced forward differ from an untraced forward (or were not captured)"
                .to_string(),
        )
    })
}
