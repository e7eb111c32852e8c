//! The combined report of a `falsifier run`: report.json (schema falsifier-report/1, with one
//! `falsifiers` entry per trial — what `falsifier promote` reads), report.md and report.html
//! (an overview of the trials linking each trial's own report).
//!
//! Every summary — the terminal line, report.md, report.html and report.json — counts trials by
//! one [`TrialState`], so that a skipped or left-out trial is never counted as a pass.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use serde::Serialize;

use super::{TrialOutcome, TrialSpec};
use crate::error::{Error, Result};
use crate::report::json::SCHEMA as REPORT_SCHEMA;
use crate::report::{Environment, FalsifierResult, rfc3339};

/// Why a GPU trial was skipped.
pub const NO_DEVICE: &str = "no CUDA device";
/// Why a heavy trial was left out, and how to include it.
pub const HEAVY: &str = "heavy: --include-heavy";

/// One trial as the combined report lists it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub spec: TrialSpec,
    /// `None`: left out of the run (a heavy trial without `--include-heavy`).
    pub outcome: Option<std::result::Result<TrialOutcome, String>>,
}

/// What became of one selected trial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrialState {
    /// It ran and its prediction held (for a planted fault: the divergence was found where it
    /// was planted).
    Holds,
    /// It ran and its prediction did not hold; or, with `--require-gpu`, a GPU trial found no
    /// device.
    Fails,
    /// It could not run here (the reason, e.g. [`NO_DEVICE`]): neither a pass nor a failure.
    Skipped(&'static str),
    /// It was left out of the run (the reason and how to include it, e.g. [`HEAVY`]).
    NotRun(&'static str),
    /// It broke before it could judge (bad model file, device error).
    Error,
}

impl TrialState {
    /// The word report.json's `state` holds (and the nightly comparison reads).
    pub fn name(&self) -> &'static str {
        match self {
            TrialState::Holds => "holds",
            TrialState::Fails => "FAILS",
            TrialState::Skipped(_) => "skipped",
            TrialState::NotRun(_) => "not run",
            TrialState::Error => "ERROR",
        }
    }

    pub fn reason(&self) -> Option<&'static str> {
        match self {
            TrialState::Skipped(r) | TrialState::NotRun(r) => Some(r),
            _ => None,
        }
    }

    /// The name with its reason: `skipped (no CUDA device)`.
    pub fn label(&self) -> String {
        match self.reason() {
            Some(r) => format!("{} ({r})", self.name()),
            None => self.name().to_string(),
        }
    }

    /// CSS class of the state in report.html.
    pub fn class(&self) -> &'static str {
        match self {
            TrialState::Holds => "holds",
            TrialState::Fails => "fails",
            TrialState::Skipped(_) => "skipped",
            TrialState::NotRun(_) => "notrun",
            TrialState::Error => "error",
        }
    }

    /// Failures and errors first, then skips and left-out trials, then holds: the order in
    /// which a reader wants them.
    pub fn rank(&self) -> u8 {
        match self {
            TrialState::Fails => 0,
            TrialState::Error => 1,
            TrialState::Skipped(_) => 2,
            TrialState::NotRun(_) => 3,
            TrialState::Holds => 4,
        }
    }
}

impl Entry {
    /// A heavy trial left out of the run.
    pub fn not_run(spec: TrialSpec) -> Entry {
        Entry {
            name: spec.name(),
            spec,
            outcome: None,
        }
    }

    /// The trial's state; with `require_gpu` a GPU trial that found no device fails.
    pub fn state(&self, require_gpu: bool) -> TrialState {
        match &self.outcome {
            None => TrialState::NotRun(HEAVY),
            Some(Ok(TrialOutcome::Ran(r))) if r.holds => TrialState::Holds,
            Some(Ok(TrialOutcome::Ran(_))) => TrialState::Fails,
            Some(Ok(TrialOutcome::NoDevice(_))) if require_gpu => TrialState::Fails,
            Some(Ok(TrialOutcome::NoDevice(_))) => TrialState::Skipped(NO_DEVICE),
            Some(Err(_)) => TrialState::Error,
        }
    }

    /// The trial's record for report.json's `falsifiers` (what promote reads): `holds` and
    /// `state` agree with [`Entry::state`].
    pub fn record(&self, require_gpu: bool) -> FalsifierResult {
        let state = self.state(require_gpu);
        match &self.outcome {
            Some(Ok(TrialOutcome::Ran(r))) => FalsifierResult {
                state: Some(state.name().to_string()),
                ..r.record.clone()
            },
            _ => FalsifierResult {
                id: self.spec.falsifier.id.clone(),
                contract: self.spec.contract.clone(),
                model: self.spec.model_name.clone(),
                backends: self
                    .spec
                    .falsifier
                    .backends
                    .iter()
                    .map(|b| b.name().to_string())
                    .collect(),
                holds: state == TrialState::Holds,
                state: Some(state.name().to_string()),
                expected: super::expected_text(&self.spec.falsifier),
                drift: super::drift_text(&self.spec.falsifier),
                ..FalsifierResult::default()
            },
        }
    }

    /// Why the trial is in its state, in a sentence or a few lines.
    pub fn detail(&self, require_gpu: bool) -> String {
        match &self.outcome {
            None => "heavy trial, left out of this run: pass --include-heavy to run it".into(),
            Some(Ok(TrialOutcome::Ran(r))) => r.message.clone(),
            Some(Ok(TrialOutcome::NoDevice(why))) if require_gpu => {
                format!("--require-gpu: a GPU trial must run, but: {why}")
            }
            Some(Ok(TrialOutcome::NoDevice(why))) => why.clone(),
            Some(Err(e)) => e.clone(),
        }
    }
}

/// How many trials ended in each state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub trials: usize,
    pub holds: usize,
    pub fails: usize,
    pub errors: usize,
    /// Skipped trials by reason.
    pub skipped: BTreeMap<&'static str, usize>,
    /// Left-out trials by reason.
    pub not_run: BTreeMap<&'static str, usize>,
}

impl Counts {
    pub fn of(entries: &[Entry], require_gpu: bool) -> Counts {
        let mut c = Counts {
            trials: entries.len(),
            ..Counts::default()
        };
        for e in entries {
            match e.state(require_gpu) {
                TrialState::Holds => c.holds += 1,
                TrialState::Fails => c.fails += 1,
                TrialState::Error => c.errors += 1,
                TrialState::Skipped(r) => *c.skipped.entry(r).or_default() += 1,
                TrialState::NotRun(r) => *c.not_run.entry(r).or_default() += 1,
            }
        }
        c
    }

    pub fn skipped_total(&self) -> usize {
        self.skipped.values().sum()
    }

    pub fn not_run_total(&self) -> usize {
        self.not_run.values().sum()
    }

    /// Trials that ran to a verdict or an error.
    pub fn ran(&self) -> usize {
        self.holds + self.fails + self.errors
    }

    /// Nothing failed or broke, and something ran: the run's exit status is 0. Skipped and
    /// left-out trials do not make it fail, but [`Counts::all_hold`] stays false.
    pub fn holds(&self) -> bool {
        self.fails == 0 && self.errors == 0 && self.holds > 0
    }

    /// Every selected trial ran and held: nothing failed, broke, was skipped or left out.
    pub fn all_hold(&self) -> bool {
        self.trials > 0 && self.holds == self.trials
    }

    /// `55 trial(s), all hold`, or every count:
    /// `57 trial(s): 40 hold, 0 fail, 15 skipped (no CUDA device), 2 not run (heavy: --include-heavy)`.
    pub fn sentence(&self) -> String {
        if self.all_hold() {
            return format!("{} trial(s), all hold", self.trials);
        }
        let mut parts = vec![
            format!("{} hold", self.holds),
            format!("{} fail", self.fails),
        ];
        for (r, n) in &self.skipped {
            parts.push(format!("{n} skipped ({r})"));
        }
        for (r, n) in &self.not_run {
            parts.push(format!("{n} not run ({r})"));
        }
        if self.errors > 0 {
            parts.push(format!("{} error(s)", self.errors));
        }
        format!("{} trial(s): {}", self.trials, parts.join(", "))
    }
}

/// Whether a run holds (see [`Counts::holds`]).
pub fn holds(entries: &[Entry], require_gpu: bool) -> bool {
    Counts::of(entries, require_gpu).holds()
}

#[derive(Serialize)]
struct Json<'a> {
    schema: &'static str,
    tool: serde_json::Value,
    created: String,
    command: &'a str,
    environment: &'a Environment,
    /// Nothing failed or broke and something ran (the exit status is 0).
    holds: bool,
    /// Every selected trial ran and held.
    all_hold: bool,
    summary: serde_json::Value,
    first_divergence: Option<serde_json::Value>,
    falsifiers: Vec<FalsifierResult>,
    trials: Vec<serde_json::Value>,
}

/// Write report.json, report.md and report.html of a run into `dir`.
pub fn write(
    dir: &Path,
    entries: &[Entry],
    command: &str,
    environment: &Environment,
    require_gpu: bool,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "creating report directory", e))?;
    let created = rfc3339(std::time::SystemTime::now());
    let counts = Counts::of(entries, require_gpu);
    // the first failing trial's first divergence, so a reader of report.json sees it at once
    let first = entries.iter().find_map(|e| match &e.outcome {
        Some(Ok(TrialOutcome::Ran(r))) if !r.holds => r.diff.first().map(|row| {
            serde_json::json!({
                "trial": e.name,
                "layer": row.key.layer,
                "stage": row.key.stage.name(),
                "key": row.key.to_string(),
                "verdict": r.diff.verdict_name(row.verdict),
                "origin": r.diff.origin.as_ref().map(|o| serde_json::json!({
                    "layer": o.key.layer, "stage": o.key.stage.name(), "key": o.key.to_string(),
                    "verdict": r.diff.verdict_name(o.verdict), "own_rel_l2": o.own_rel_l2,
                })),
            })
        }),
        _ => None,
    });
    let json = Json {
        schema: REPORT_SCHEMA,
        tool: serde_json::json!({"name": "falsifier", "version": env!("CARGO_PKG_VERSION")}),
        created: created.clone(),
        command,
        environment,
        holds: counts.holds(),
        all_hold: counts.all_hold(),
        summary: serde_json::json!({
            "trials": counts.trials,
            "holds": counts.holds,
            "fails": counts.fails,
            "skipped": counts.skipped_total(),
            "not_run": counts.not_run_total(),
            "errors": counts.errors,
            "skipped_by_reason": counts.skipped,
            "not_run_by_reason": counts.not_run,
        }),
        first_divergence: first,
        falsifiers: entries.iter().map(|e| e.record(require_gpu)).collect(),
        trials: entries
            .iter()
            .map(|e| {
                let elapsed = match &e.outcome {
                    Some(Ok(TrialOutcome::Ran(r))) => Some(r.elapsed.as_secs_f64()),
                    _ => None,
                };
                let state = e.state(require_gpu);
                serde_json::json!({
                    "name": e.name,
                    "state": state.name(),
                    "reason": state.reason(),
                    "detail": e.detail(require_gpu),
                    "seconds": elapsed,
                })
            })
            .collect(),
    };
    let text = serde_json::to_string_pretty(&json)
        .map_err(|e| Error::internal(format!("serialising report.json: {e}")))?;
    let put = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| Error::io(&p, "writing report", e))
    };
    let page = super::overview::Page {
        entries,
        counts: &counts,
        require_gpu,
        command,
        env: environment,
        created: &created,
        dir,
    };
    put("report.json", text)?;
    put("report.md", markdown(&page))?;
    put("report.html", super::overview::html(&page))?;
    Ok(())
}

/// The link from the run's directory to a trial's own report, when the trial ran.
pub(super) fn rel_link(dir: &Path, e: &Entry, file: &str) -> Option<String> {
    match &e.outcome {
        Some(Ok(TrialOutcome::Ran(r))) => {
            let p = r.report_dir.join(file);
            Some(
                p.strip_prefix(dir)
                    .map(|q| q.display().to_string())
                    .unwrap_or_else(|_| p.display().to_string()),
            )
        }
        _ => None,
    }
}

/// The run's one-line verdict: `All 55 trial(s) hold.`, or the counts and whether any failed.
pub(super) fn headline(counts: &Counts) -> String {
    if counts.all_hold() {
        format!("All {} trial(s) hold.", counts.trials)
    } else if counts.holds() {
        format!("{}; none fails, but not all ran.", counts.sentence())
    } else {
        format!("{}; SOME DO NOT HOLD.", counts.sentence())
    }
}

fn markdown(p: &super::overview::Page) -> String {
    let (entries, env, rg) = (p.entries, p.env, p.require_gpu);
    let mut s = String::new();
    let _ = writeln!(s, "# falsifier run\n");
    let _ = writeln!(s, "{}\n", headline(p.counts));
    let _ = writeln!(
        s,
        "- command: `{}`\n- created: {}\n- host: {}\n- commit: {}\n- card: {}\n",
        p.command,
        p.created,
        env.host,
        env.commit.as_deref().unwrap_or("-"),
        env.card.as_deref().unwrap_or("-")
    );
    // failures, errors and skips first: they are what a reader came for
    let attention: Vec<&Entry> = entries
        .iter()
        .filter(|e| matches!(e.state(rg), TrialState::Fails | TrialState::Error))
        .collect();
    if !attention.is_empty() {
        let _ = writeln!(s, "## Failures\n");
        for e in attention {
            let _ = writeln!(
                s,
                "### `{}` ({})\n\n```\n{}\n```\n",
                e.name,
                e.state(rg).label(),
                e.detail(rg)
            );
        }
    }
    let aside: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.state(rg).reason().is_some())
        .collect();
    if !aside.is_empty() {
        let _ = writeln!(s, "## Skipped and not run\n");
        for e in aside {
            let _ = writeln!(s, "- `{}`: {}", e.name, e.state(rg).label());
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "## Trials\n");
    let _ = writeln!(
        s,
        "| trial | state | first divergence | origin | expected | report |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for e in entries {
        let r = e.record(rg);
        let link = rel_link(p.dir, e, "report.md")
            .map(|l| format!("[report]({l})"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {} | {link} |",
            e.name,
            e.state(rg).label(),
            r.first_divergence.as_deref().unwrap_or("-"),
            r.origin.as_deref().unwrap_or("-"),
            r.expectation(),
        );
    }
    s
}
