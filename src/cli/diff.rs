//! `falsifier diff REF CAND`: compare two traces (safetensors files, `{key}.npy` directories or
//! APRT dumps), print a summary and write report.json/.md/.html. Exit 0 when every stage
//! matches, 1 on any non-Match or when nothing was compared, 2 on bad input.

use std::path::PathBuf;

use clap::Args;

use super::Outcome;
use crate::diff::thresholds::propose;
use crate::diff::{DiffOptions, Thresholds, diff};
use crate::error::Error;
use crate::report::{ReportContext, default_report_dir, terminal, write_reports};
use crate::trace::io::open_source;
use crate::trace::plan::CapturePlan;

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
    /// Compare only these stages (comma-separated names, or all), e.g. to leave out stages an
    /// engine's dump cannot provide; the report says which were compared.
    #[arg(long)]
    pub stages: Option<String>,
    /// Compare only these layers (all, A..B, A..=B or i,j,k).
    #[arg(long)]
    pub layers: Option<String>,
    /// Near-tie margin for route flips, relative to the reference's router-logit row norm.
    #[arg(long, value_name = "REL")]
    pub near_tie: Option<f64>,
    /// Calibration: treat CAND as the same forward in higher precision (f64) and REF as f32,
    /// and propose per-stage thresholds of FACTOR x the measured noise floor (exit 0).
    #[arg(long, value_name = "FACTOR", num_args = 0..=1, default_missing_value = "10")]
    pub propose_thresholds: Option<f64>,
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
    if args.stages.is_some() || args.layers.is_some() {
        let plan = CapturePlan::parse(
            args.stages.as_deref().unwrap_or("all"),
            args.layers.as_deref(),
        )
        .map_err(|e| Error::input(format!("--stages/--layers: {e}")))?;
        opts.plan = Some(plan);
    }
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
    if let Some(plan) = &opts.plan {
        // layers neither trace holds are an error, never a diff that compares less
        let held = [reference.as_ref(), candidate.as_ref()]
            .iter()
            .flat_map(|s| s.keys())
            .filter_map(|k| k.layer)
            .max()
            .map_or(0, |l| l + 1);
        if let Some(l) = plan.first_layer_beyond(held) {
            return Err(Error::input(format!(
                "--layers: layer {l} is out of range: the traces hold {held} layers (0..{held})"
            )));
        }
    }
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
    if let Some(factor) = args.propose_thresholds {
        if !(factor.is_finite() && factor >= 1.0) {
            return Err(Error::input(format!(
                "--propose-thresholds {factor}: expected a factor >= 1"
            )));
        }
        print_proposals(&propose(&report, factor), factor);
        return Ok(Outcome::Holds);
    }
    Ok(if report.holds {
        Outcome::Holds
    } else {
        Outcome::Fails
    })
}

/// Print proposed thresholds as a table, as `--threshold` flags and as a contract snippet.
pub fn print_proposals(proposals: &[crate::diff::thresholds::Proposal], factor: f64) {
    println!("proposed thresholds ({factor} x the noise floor measured here):");
    println!(
        "  {:<14} {:>10} {:>10} {:>10}",
        "stage", "measured", "proposed", "default"
    );
    let mut flags = Vec::new();
    let mut yaml = Vec::new();
    for p in proposals {
        println!(
            "  {:<14} {:>10.2e} {:>10.0e} {:>10.0e}",
            p.stage.name(),
            p.measured,
            p.proposed,
            p.default
        );
        flags.push(format!("--threshold {}={:.0e}", p.stage, p.proposed));
        yaml.push(format!("{}: {:.0e}", p.stage, p.proposed));
    }
    println!("  flags:    {}", flags.join(" "));
    println!("  contract: thresholds: {{ {} }}", yaml.join(", "));
}
