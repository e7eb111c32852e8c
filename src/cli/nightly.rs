//! `falsifier nightly [CONTRACT.yaml|DIR ...] [--history DIR]`: the nightly GPU runner. Runs
//! every trial, heavy ones included, with a GPU required (a skipped GPU trial fails), writes the
//! run under `DIR/<UTC timestamp>/`, and compares it with the previous night's run there:
//! regressions (held, now does not), fixes, trials twice as slow, new and removed trials
//! (`nightly.md` beside the run's report). Exit 1 on any failure or regression.

use std::path::PathBuf;

use clap::Args;

use super::Outcome;
use super::run::RunArgs;
use crate::error::Result;
use crate::runner::nightly::{Changes, load_trials, previous_run};

#[derive(Args, Debug)]
pub struct NightlyArgs {
    /// Contract files or directories (default: contracts/).
    pub paths: Vec<PathBuf>,
    /// Where runs are kept, one directory per night.
    #[arg(long, default_value = "reports/nightly")]
    pub history: PathBuf,
    /// Leave out heavy trials (a quick rehearsal of the nightly run).
    #[arg(long)]
    pub no_heavy: bool,
}

pub fn run(args: &NightlyArgs) -> Result<Outcome> {
    let ts = crate::report::rfc3339(std::time::SystemTime::now()).replace([':', '-'], "");
    let dir = args.history.join(ts.trim_end_matches('Z'));
    let outcome = super::run::run(&RunArgs {
        paths: args.paths.clone(),
        report_dir: Some(dir.clone()),
        include_heavy: !args.no_heavy,
        filter: None,
        candidate: None,
        require_gpu: true,
        chunk: None,
        decode: None,
        kv_cache: None,
    })?;
    let Some(prev) = previous_run(&args.history, &dir) else {
        println!(
            "nightly: first run in {}; nothing to compare with",
            args.history.display()
        );
        return Ok(outcome);
    };
    let changes = Changes::between(
        &load_trials(&prev.join("report.json"))?,
        &load_trials(&dir.join("report.json"))?,
    );
    let md = dir.join("nightly.md");
    std::fs::write(&md, changes.markdown(&prev))
        .map_err(|e| crate::Error::io(&md, "writing", e))?;
    println!(
        "nightly vs {}: {} regression(s), {} fixed, {} slower, {} new, {} removed -> {}",
        prev.display(),
        changes.regressions.len(),
        changes.fixed.len(),
        changes.slower.len(),
        changes.new.len(),
        changes.removed.len(),
        md.display()
    );
    for (name, before, now) in &changes.regressions {
        println!("  REGRESSION {name}: {before} -> {now}");
    }
    Ok(if changes.regressions.is_empty() {
        outcome
    } else {
        Outcome::Fails
    })
}
