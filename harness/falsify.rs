//! The `falsify` test target: every falsifier × model of contracts/ becomes a libtest-mimic
//! trial. Run it as `cargo test --test falsify -- --include-ignored` (or under cargo-nextest,
//! `--partition` included: each trial is addressable with `--exact`).
//!
//! - Trial names read as `reference-vs-candidate::FALSIFY-ID::model`, so filters select a
//!   backend pair, a falsifier or a model.
//! - Heavy trials (the 30B-A3B shape) are ignored by default.
//! - A GPU trial on a machine with no CUDA device ends "ignored (no CUDA device)" at run time,
//!   even with --include-ignored; `FALSIFY_REQUIRE_GPU=1` makes that a failure (nightly runner).
//! - Each trial writes its report under reports/falsify/ (`FALSIFY_REPORT_DIR` overrides), and a
//!   failing trial prints its first divergence row, the origin and the report path.
//! - `FALSIFY_CONTRACTS` names another contracts directory; `FALSIFY_CANDIDATE=cuda` runs every
//!   trial with that candidate backend (the self-tests with their faults planted on the GPU).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use falsifier::contract::load_checked;
use falsifier::contract::schema::BackendName;
use falsifier::runner::{TrialOutcome, run_trial, trials, with_candidate};
use libtest_mimic::{Arguments, Completion, Failed, Trial};

fn env_path(var: &str, default: &Path) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| default.to_path_buf())
}

fn require_gpu() -> bool {
    std::env::var("FALSIFY_REQUIRE_GPU").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let contracts_dir = env_path("FALSIFY_CONTRACTS", &root.join("contracts"));
    let report_root = env_path("FALSIFY_REPORT_DIR", &root.join("reports").join("falsify"));
    let contracts = match load_checked(&[contracts_dir]) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("falsify: the contracts do not lint:\n{e}");
            return ExitCode::from(2);
        }
    };
    let candidate = match std::env::var("FALSIFY_CANDIDATE") {
        Err(_) => None,
        Ok(c) if falsifier::backend::is_known(&c) => Some(BackendName::new(&c)),
        Ok(c) => {
            eprintln!(
                "falsify: FALSIFY_CANDIDATE: {}",
                falsifier::backend::unknown_backend(&c)
            );
            return ExitCode::from(2);
        }
    };
    let tests: Vec<Trial> = trials(&contracts)
        .into_iter()
        .map(|spec| match &candidate {
            Some(c) => with_candidate(spec, c.clone()),
            None => spec,
        })
        .map(|spec| {
            let name = spec.name();
            let heavy = spec.heavy();
            let root = report_root.clone();
            Trial::ignorable_test(name, move || match run_trial(&spec, &root) {
                Ok(TrialOutcome::Ran(r)) if r.holds => Ok(Completion::Completed),
                Ok(TrialOutcome::Ran(r)) => Err(Failed::from(r.message)),
                Ok(TrialOutcome::NoDevice(why)) if require_gpu() => Err(Failed::from(format!(
                    "FALSIFY_REQUIRE_GPU is set, but: {why}"
                ))),
                Ok(TrialOutcome::NoDevice(_)) => Ok(Completion::ignored_with("no CUDA device")),
                Err(e) => Err(Failed::from(format!("error: {e}"))),
            })
            .with_ignored_flag(heavy)
        })
        .collect();
    libtest_mimic::run(&args, tests).exit_code()
}
