//! `falsifier run [CONTRACT.yaml|DIR ...] [--report-dir DIR]`: run contracts outside cargo, with a
//! progress bar, and write one combined report (report.json with per-falsifier results, which
//! `falsifier promote` takes as evidence; report.md; report.html) plus each trial's own report.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Outcome;
use crate::backend::schedule::KvDtype;
use crate::contract::load_checked;
use crate::contract::schema::{BackendName, ScheduleSpec};
use crate::error::{Error, Result};
use crate::report::Environment;
use crate::runner::summary::{self, Counts, Entry, TrialState};
use crate::runner::{TrialOutcome, run_trial, trials, with_candidate, with_schedule};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Contract files or directories (default: contracts/).
    pub paths: Vec<PathBuf>,
    /// Where to write the combined report and the trials' reports (default: reports/run-<time>/).
    #[arg(long)]
    pub report_dir: Option<PathBuf>,
    /// Also run heavy trials (the 30B-A3B shape).
    #[arg(long)]
    pub include_heavy: bool,
    /// Run only trials whose name contains this text (e.g. `cpu-vs-cuda`, `FALSIFY-MOE-SUB`).
    #[arg(long)]
    pub filter: Option<String>,
    /// Run every trial with this candidate backend instead of the contracted one (cpu, cpu-f32,
    /// cuda): e.g. the CPU self-test contracts with their faults planted on CUDA. Such a run's
    /// records carry no level, so they never promote a contract.
    #[arg(long)]
    pub candidate: Option<String>,
    /// A GPU trial with no CUDA device fails instead of being skipped (nightly GPU runner; also
    /// set by the environment variable FALSIFY_REQUIRE_GPU=1).
    #[arg(long)]
    pub require_gpu: bool,
    /// Run every trial's candidate in prefill chunks of C tokens through the KV cache (with
    /// `--decode`, the schedule replaces the contracted one); like `--candidate`, such a run's
    /// records carry no level.
    #[arg(long, value_name = "C")]
    pub chunk: Option<usize>,
    /// Feed the last N prompt tokens of every trial's candidate as decode steps.
    #[arg(long, value_name = "N")]
    pub decode: Option<usize>,
    /// What every trial's candidate's KV cache stores (f32 or f16), under its contracted
    /// schedule or the one `--chunk/--decode` give; like `--candidate`, such a run's records
    /// carry no level.
    #[arg(long = "kv-cache", value_name = "f32|f16")]
    pub kv_cache: Option<String>,
}

pub fn run(args: &RunArgs) -> Result<Outcome> {
    let require_gpu = args.require_gpu
        || std::env::var("FALSIFY_REQUIRE_GPU").is_ok_and(|v| !v.is_empty() && v != "0");
    let contracts = load_checked(&args.paths)?;
    let candidate = match &args.candidate {
        None => None,
        Some(c) if crate::backend::is_known(c) => Some(BackendName::new(c)),
        Some(c) => {
            return Err(Error::input(format!(
                "--candidate: {}",
                crate::backend::unknown_backend(c)
            )));
        }
    };
    let walk = (args.chunk.is_some() || args.decode.is_some())
        .then_some((args.chunk, args.decode.unwrap_or(0)));
    if args.chunk == Some(0) {
        return Err(Error::input(
            "--chunk 0: a prefill chunk holds at least one token",
        ));
    }
    let kv: Option<KvDtype> = args
        .kv_cache
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e: String| Error::input(format!("--kv-cache: {e}")))?;
    // --chunk/--decode replace the contracted walk, --kv-cache the contracted cache type
    let schedule = |contracted: Option<ScheduleSpec>| {
        let mut s = contracted.unwrap_or_default();
        if let Some((chunk, decode)) = walk {
            (s.chunk, s.decode) = (chunk, decode);
        }
        if let Some(kv) = kv {
            s.kv_cache = kv;
        }
        (walk.is_some() || kv.is_some()).then_some(s)
    };
    let matched: Vec<_> = trials(&contracts)
        .into_iter()
        .map(|t| match &candidate {
            Some(c) => with_candidate(t, c.clone()),
            None => t,
        })
        .map(|t| match schedule(t.falsifier.schedule) {
            Some(s) => with_schedule(t, s),
            None => t,
        })
        .filter(|t| args.filter.as_deref().is_none_or(|f| t.name().contains(f)))
        .collect();
    if matched.is_empty() {
        // a run that runs nothing must not read as a pass
        return Err(Error::input(match &args.filter {
            Some(f) => format!(
                "--filter `{f}`: no trial matched (trial names read `reference-vs-candidate::FALSIFY-ID::model`)"
            ),
            None => "no trial matched: the contracts hold no falsifier with a model".to_string(),
        }));
    }
    let to_run = matched
        .iter()
        .filter(|t| args.include_heavy || !t.heavy())
        .count();
    let now = std::time::SystemTime::now();
    let dir = args.report_dir.clone().unwrap_or_else(|| {
        let ts = crate::report::rfc3339(now).replace([':', '-'], "");
        PathBuf::from("reports").join(format!("run-{}", ts.trim_end_matches('Z')))
    });
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(to_run as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} trials {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut entries = Vec::new();
    let mut env = Environment::detect();
    for spec in matched {
        let entry = if spec.heavy() && !args.include_heavy {
            Entry::not_run(spec)
        } else {
            let name = spec.name();
            bar.set_message(name.clone());
            let outcome = run_trial(&spec, &dir.join("trials")).map_err(|e| e.to_string());
            if let Ok(TrialOutcome::Ran(r)) = &outcome
                && spec.needs_gpu()
            {
                env.card = Some(r.candidate_device.clone());
            }
            bar.inc(1);
            Entry {
                name,
                spec,
                outcome: Some(outcome),
            }
        };
        let line = trial_line(&entry, require_gpu);
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
        entries.push(entry);
    }
    bar.finish_and_clear();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    summary::write(&dir, &entries, &command, &env, require_gpu)?;
    let counts = Counts::of(&entries, require_gpu);
    let report = dir.join("report.html");
    if counts.ran() == 0 {
        return Err(Error::input(format!(
            "no trial ran ({}); report: {}",
            counts.sentence(),
            report.display()
        )));
    }
    let holds = counts.holds();
    println!(
        "{}{}; report: {}",
        counts.sentence(),
        if holds { "" } else { "; SOME DO NOT HOLD" },
        report.display()
    );
    Ok(if holds {
        Outcome::Holds
    } else {
        Outcome::Fails
    })
}

/// A trial's line on the terminal, by its state.
fn trial_line(e: &Entry, require_gpu: bool) -> String {
    let elapsed = match &e.outcome {
        Some(Ok(TrialOutcome::Ran(r))) => format!(" ({:.2?})", r.elapsed),
        _ => String::new(),
    };
    let name = &e.name;
    match e.state(require_gpu) {
        TrialState::Holds => format!("ok      {name}{elapsed}"),
        TrialState::Fails => format!("FAILED  {name}{elapsed}\n{}", e.detail(require_gpu)),
        TrialState::Skipped(_) => format!("skip    {name}: {}", e.detail(require_gpu)),
        TrialState::NotRun(why) => format!("not run {name}: {why}"),
        TrialState::Error => format!("ERROR   {name}: {}", e.detail(require_gpu)),
    }
}
