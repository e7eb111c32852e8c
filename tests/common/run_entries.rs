//! A `falsifier run`'s entries with a trial in every state: real trials of the self-test
//! contracts (tiny models, well under a second each) for the states a CPU run reaches, and the
//! outcomes the runner records for the rest (a GPU trial on a machine without a device, a heavy
//! trial left out, a trial that broke), so that the test reads the same on a GPU host.

use std::path::{Path, PathBuf};

use falsifier::contract::load_checked;
use falsifier::runner::summary::Entry;
use falsifier::runner::{TrialOutcome, TrialSpec, run_trial, trials};

pub fn specs() -> Vec<TrialSpec> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    trials(&load_checked(&[root.join("contracts")]).unwrap())
}

pub fn spec(all: &[TrialSpec], id: &str, model: &str) -> TrialSpec {
    all.iter()
        .find(|s| s.falsifier.id == id && s.model_name == model)
        .unwrap_or_else(|| panic!("no trial {id} on {model} in contracts/"))
        .clone()
}

fn ran(spec: TrialSpec, root: &Path) -> Entry {
    let outcome = run_trial(&spec, root).map_err(|e| e.to_string());
    Entry {
        name: spec.name(),
        spec,
        outcome: Some(outcome),
    }
}

/// The trials of [`one_of_each`], by what they show.
pub struct Sample {
    pub entries: Vec<Entry>,
    /// A clean trial that holds.
    pub clean: usize,
    /// A planted fault found at its planted place (holds).
    pub planted_found: usize,
    /// A planted fault expected at another place than where it is found (fails).
    pub planted_missed: usize,
    /// A GPU trial with no device (skipped, or failed with --require-gpu).
    pub no_device: usize,
    /// A heavy trial left out.
    pub heavy: usize,
    /// A trial that broke.
    pub error: usize,
}

/// One trial in each state; the trials write their own reports under `root`.
pub fn one_of_each(root: &Path) -> Sample {
    let all = specs();
    let clean = ran(spec(&all, "FALSIFY-SELF-CLEAN-001", "moe-f32"), root);
    let found = ran(spec(&all, "FALSIFY-SELF-NAN-002", "moe-f32"), root);
    // the same planted NaN, but predicted one layer too early: found elsewhere, so it fails
    let mut missed = spec(&all, "FALSIFY-SELF-NAN-002", "dense-f32");
    let expect = missed.falsifier.expect.as_mut().unwrap();
    expect.first_divergence = "layer.0.ffn_out".into();
    expect.origin = None;
    let missed = ran(missed, root);
    let gpu = spec(&all, "FALSIFY-MOE-FWD-001", "moe-f32");
    let no_device = Entry {
        name: gpu.name(),
        spec: gpu,
        outcome: Some(Ok(TrialOutcome::NoDevice(
            "cuda: no CUDA device (the driver reports none)".into(),
        ))),
    };
    let heavy = Entry::not_run(spec(&all, "FALSIFY-MOE-FWD-101", "a3b-q4km"));
    let broken = spec(&all, "FALSIFY-SELF-CLEAN-001", "moe-q8");
    let error = Entry {
        name: broken.name(),
        spec: broken,
        outcome: Some(Err(
            "fixtures/missing.gguf: opening GGUF: No such file or directory".into(),
        )),
    };
    Sample {
        entries: vec![clean, found, missed, no_device, heavy, error],
        clean: 0,
        planted_found: 1,
        planted_missed: 2,
        no_device: 3,
        heavy: 4,
        error: 5,
    }
}

/// A fresh scratch directory under the target's temporary directory.
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The trial's own report directory.
pub fn report_dir(e: &Entry) -> PathBuf {
    match &e.outcome {
        Some(Ok(TrialOutcome::Ran(r))) => r.report_dir.clone(),
        _ => panic!("{} did not run", e.name),
    }
}
