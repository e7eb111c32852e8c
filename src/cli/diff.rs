//! `falsifier diff REF CAND`: compare two traces (safetensors files, `{key}.npy` directories or
//! APRT dumps), print a summary and write report.json/.md/.html. Exit 0 when every stage
//! matches, 1 on any non-Match or when nothing was compared, 2 on bad input.
//!
//! `falsifier diff A.gguf B.gguf --tokens ...|--prompt TEXT`: two model files of one architecture and shape
//! (a full-precision model and its quantization) run the prompt on one backend; the report adds
//! the logits as distributions (KL divergence, top-1, top-k) and the layers that lose most.
//! With `--kld`/`--top1` the exit code follows those bounds instead of the stage thresholds.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::Outcome;
use crate::diff::thresholds::propose;
use crate::diff::{DiffOptions, DiffReport, LogitBounds, Thresholds, diff};
use crate::error::Error;
use crate::progress::Progress;
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
    /// Two model files: the prompt's token ids (comma-separated).
    #[arg(long, conflicts_with = "prompt")]
    pub tokens: Option<String>,
    /// Two model files: the prompt as text, tokenized with REF's own tokenizer.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Two model files: the backend both run on.
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Two model files: largest allowed mean KL divergence of the logits (nats); the exit code
    /// then follows the logits bounds, not the stage thresholds.
    #[arg(long, value_name = "NATS")]
    pub kld: Option<f64>,
    /// Two model files: smallest allowed top-1 agreement (0..=1).
    #[arg(long, value_name = "FRACTION")]
    pub top1: Option<f64>,
}

/// Whether `path` is a GGUF file (its magic), not a trace.
fn is_gguf(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

pub fn run(args: &DiffArgs) -> crate::Result<Outcome> {
    let bar = Arc::new(super::progress::Bar::stages());
    let mut opts = DiffOptions {
        progress: Some(bar.clone()),
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
    let models = (is_gguf(&args.reference), is_gguf(&args.candidate));
    let bounds = LogitBounds {
        kld: args.kld,
        top1: args.top1,
    };
    match models {
        (true, true) => return diff_models(args, opts, bounds, &bar),
        (false, false) if args.tokens.is_some() || args.prompt.is_some() || !bounds.is_empty() => {
            return Err(Error::input(
                "--tokens, --prompt, --kld and --top1 belong to a diff of two model files (.gguf); REF and CAND are traces",
            ));
        }
        (false, false) => {}
        (r, _) => {
            let (gguf, trace) = if r {
                (&args.reference, &args.candidate)
            } else {
                (&args.candidate, &args.reference)
            };
            return Err(Error::input(format!(
                "{} is a model file and {} is not: give two traces, or two model files with --tokens or --prompt",
                gguf.display(),
                trace.display()
            )));
        }
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
    let report = diff(reference.as_ref(), candidate.as_ref(), &opts);
    bar.finish();
    let report = report?;
    write_and_print(args, &report, &context())?;
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

/// The report context of this command line.
fn context() -> ReportContext {
    let command: Vec<String> = std::env::args().collect();
    ReportContext::new(command.join(" "))
}

/// Write report.json/.md/.html into `--report-dir` (default reports/diff-<timestamp>/) and print
/// the summary, its verdict as the report states it (a drift check's bounds where set).
fn write_and_print(args: &DiffArgs, report: &DiffReport, ctx: &ReportContext) -> crate::Result<()> {
    let dir = args
        .report_dir
        .clone()
        .unwrap_or_else(|| default_report_dir(ctx.created));
    write_reports(&dir, report, ctx)?;
    let verdict = crate::report::judgement(report, ctx);
    print!(
        "{}",
        terminal::render_judged(
            report,
            terminal::use_color(),
            Some(&dir),
            (verdict.word, &verdict.headline)
        )
    );
    Ok(())
}

/// Two model files through one backend: the drift report (runner::drift).
fn diff_models(
    args: &DiffArgs,
    opts: DiffOptions,
    bounds: LogitBounds,
    bar: &super::progress::Bar,
) -> crate::Result<Outcome> {
    if let Some(k) = bounds.kld
        && !LogitBounds::kld_ok(k)
    {
        return Err(Error::input(format!(
            "--kld {k}: expected a finite number >= 0 (nats)"
        )));
    }
    if let Some(t) = bounds.top1
        && !LogitBounds::top1_ok(t)
    {
        return Err(Error::input(format!(
            "--top1 {t}: expected a fraction in 0..=1"
        )));
    }
    if args.propose_thresholds.is_some() {
        return Err(Error::input(
            "--propose-thresholds calibrates two traces of one forward; two model files differ by their weights",
        ));
    }
    if args.tokens.is_none() && args.prompt.is_none() {
        return Err(Error::input(
            "two model files: give the prompt with --tokens IDS or --prompt TEXT",
        ));
    }
    let prompt = super::trace::prompt(
        &args.reference,
        args.tokens.as_deref(),
        args.prompt.as_deref(),
    )?;
    let plan = opts.plan.clone().unwrap_or_else(CapturePlan::all);
    let open = |p: &std::path::Path| super::open_backend(&args.backend, p);
    let report = crate::runner::drift::diff_models(
        &args.reference,
        &args.candidate,
        &open,
        &prompt,
        &plan,
        &opts,
    );
    bar.finish();
    let report = report?;
    let mut ctx = context();
    let judged = (!bounds.is_empty()).then(|| bounds.judge(report.logits.as_ref()));
    if let Some((holds, finding)) = &judged {
        ctx.drift = Some(crate::report::DriftCheck {
            bounds: bounds.text(),
            holds: *holds,
            finding: finding.clone(),
        });
    }
    write_and_print(args, &report, &ctx)?;
    let holds = match judged {
        Some((holds, finding)) => {
            println!(
                "drift {}: {finding} ({})",
                if holds { "HOLDS" } else { "FAILS" },
                bounds.text()
            );
            holds
        }
        None => report.holds,
    };
    Ok(if holds {
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
