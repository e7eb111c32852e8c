//! The command line (docs/design.md "CLI"). One file per sub-command; this file only parses and
//! dispatches. Exit codes: 0 all checks hold, 1 a divergence or failed check, 2 bad input or
//! internal error.

use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod calibrate;
mod diff;
mod gen_model;
mod inspect;
mod lint;
mod nightly;
mod progress;
mod promote;
pub mod run;
mod stages;
pub mod trace;

/// Open backend `name` on the model given as the MODEL argument. Errors name the argument at
/// fault: an unknown backend or a missing device is `--backend`'s, a model file that cannot be
/// read or used (bad input, I/O) is MODEL's.
fn open_backend(name: &str, model: &Path) -> crate::Result<Box<dyn crate::backend::Backend>> {
    use crate::ErrorKind;
    crate::backend::probe(name).map_err(|e| e.context(format!("--backend {name}")))?;
    crate::backend::open(name, model).map_err(|e| match e.kind {
        ErrorKind::Input | ErrorKind::Io => e.context("MODEL"),
        ErrorKind::NoDevice | ErrorKind::Internal => e.context(format!("--backend {name}")),
    })
}

/// Outcome of a sub-command that ran to completion.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every check held.
    Holds,
    /// A divergence or a failed check.
    Fails,
}

#[derive(Parser, Debug)]
#[command(
    name = "falsifier",
    version,
    about = "Differential testing for transformer inference engines: find the first layer and stage where a candidate leaves the reference."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the stage vocabulary (names used by traces, contracts and reports), in forward order;
    /// with --arch, what one architecture computes.
    Stages(stages::StagesArgs),
    /// Run one traced forward and write its trace (safetensors).
    Trace(Box<trace::TraceArgs>),
    /// Check contracts: schema, ids, stages, models, thresholds, planted places, statuses.
    Lint {
        /// Contract files or directories (default: contracts/).
        paths: Vec<std::path::PathBuf>,
    },
    /// Move falsifier statuses forward to what a run's report.json shows, keeping comments.
    Promote {
        /// The report.json of a `falsifier run`.
        #[arg(long)]
        evidence: std::path::PathBuf,
        /// Print the diff of each contract; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Contract files or directories (default: contracts/).
        #[arg(long = "contracts")]
        contracts: Vec<std::path::PathBuf>,
    },
    /// Write a deterministic synthetic model (GGUF) from a preset shape and a seed.
    GenModel(Box<gen_model::GenModelArgs>),
    /// Compare a candidate trace with a reference stage by stage and report the first divergence.
    Diff(diff::DiffArgs),
    /// Run contracts (paired forwards, diff, attribution) and write one combined report.
    Run(run::RunArgs),
    /// The nightly GPU runner: everything, heavy trials included, GPU required; regressions
    /// against the previous night's run.
    Nightly(nightly::NightlyArgs),
    /// Measure the f32 noise floor (CPU f32 vs f64 accumulation) and propose per-stage thresholds.
    Calibrate(calibrate::CalibrateArgs),
    /// What a model is: shape, files, tensor types, stages, and the memory of a traced CUDA run.
    Inspect(inspect::InspectArgs),
    /// Time prefills (untraced, and traced with every stage) and, on CUDA, compare them with the
    /// bandwidth and FMA floors of the card; `--decode N` times decode steps per token,
    /// `--chunk C` chunked prefills.
    Bench(bench::BenchArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: crate::Result<Outcome> = match cli.command {
        Command::Stages(args) => stages::run(&args),
        Command::Trace(args) => trace::run(&args),
        Command::Lint { paths } => lint::run(&paths),
        Command::Promote {
            evidence,
            dry_run,
            contracts,
        } => promote::run(evidence, contracts, dry_run),
        Command::GenModel(a) => gen_model::run(&a),
        Command::Diff(args) => diff::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Calibrate(args) => calibrate::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Nightly(args) => nightly::run(&args),
    };
    match result {
        Ok(Outcome::Holds) => ExitCode::SUCCESS,
        Ok(Outcome::Fails) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
