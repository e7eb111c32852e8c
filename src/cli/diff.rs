//! `falsifier diff REF CAND`: compare two traces (safetensors files, `{key}.npy` directories or
//! APRT dumps), print a summary and write report.json/.md/.html. Exit 0 when every stage
//! matches, 1 on any non-Match or when nothing was compared, 2 on bad input.

use std::path::PathBuf;

use clap::Args;

use super::Outcome;
use crate::diff::{DiffOptions, Thresholds, diff};
use crate::error::Error;
use crate::report::{ReportContext, default_report_dir, terminal, write_reports};
use crate::trace::io::open_source;

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// Reference trace: a .safetensors trace, a directory of {key}.npy files, or an APRT dump.
    pub reference: PathBuf,
    /// Candidate trace, in any of the same formats.
    pub candidate: PathBuf,
    /// Where to write report.json, report.md and report.html (default reports/diff-<timestamp>/).
    #[arg(long)]
    pub report_dir: Option<PathBuf>,
    /// Override a stage's relative-L2 threshold, e.g. --threshold ffn_out=1e-3 (repeatable).
    #[arg(long = "threshold", value_name = "STAGE=RELL2")]
    pub thresholds: Vec<String>,
    /// Names of the two sides in reports, e.g. --labels cpu,cuda (default: their backends).
    #[arg(long, value_name = "REF,CAND")]
    pub labels: Option<String>,
    /// Near-tie margin for route flips, relative to the reference's router-logit row norm.
    #[arg(long, value_name = "REL")]
    pub near_tie: Option<f64>,
}

pub fn run(args: &DiffArgs) -> crate::Result<Outcome> {
    let mut opts = DiffOptions {
        progress: true,
        ..DiffOptions::default()
    };
    let mut thresholds = Thresholds::new();
    for t in &args.thresholds {
        thresholds.set_from_str(t)?;
    }
    opts.thresholds = thresholds;
    if let Some(l) = &args.labels {
        let (r, c) = l
            .split_once(',')
            .filter(|(r, c)| !r.trim().is_empty() && !c.trim().is_empty())
            .ok_or_else(|| Error::input(format!("--labels {l}: expected REF,CAND")))?;
        opts.labels = Some((r.trim().to_string(), c.trim().to_string()));
    }
    if let Some(nt) = args.near_tie {
        if !(nt.is_finite() && nt >= 0.0) {
            return Err(Error::input(format!(
                "--near-tie {nt}: expected a finite non-negative number"
            )));
        }
        opts.near_tie = nt;
    }
    let reference = open_source(&args.reference)?;
    let candidate = open_source(&args.candidate)?;
    let report = diff(reference.as_ref(), candidate.as_ref(), &opts)?;
    let command: Vec<String> = std::env::args().collect();
    let ctx = ReportContext::new(command.join(" "));
    let dir = args
        .report_dir
        .clone()
        .unwrap_or_else(|| default_report_dir(ctx.created));
    write_reports(&dir, &report, &ctx)?;
    print!(
        "{}",
        terminal::render(&report, terminal::use_color(), Some(&dir))
    );
    Ok(if report.holds {
        Outcome::Holds
    } else {
        Outcome::Fails
    })
}
