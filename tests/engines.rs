//! Engines that are not ours: the example's toy engine (a user's own Rust forward behind the
//! `Backend` trait and the registry) and the transformers trace script.
//!
//! The transformers test needs `python3` with torch, transformers and safetensors; without them
//! it ends "ignored" with the reason (CI has no torch), never "ok". That is decided at run time,
//! so this target runs under libtest-mimic (`harness = false`). The llama.cpp script is not run
//! here (building llama-cpp-python takes about 20 minutes); see docs/walkthrough.md.

#[allow(dead_code)] // the example's main is not used here
#[path = "../examples/toy_engine.rs"]
mod toy_engine;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use falsifier::backend::{self, ForwardRequest};
use falsifier::diff::{DiffOptions, Verdict, diff};
use falsifier::trace::io::TraceFile;
use falsifier::trace::{CapturePlan, Key, Stage};
use libtest_mimic::{Arguments, Completion, Trial};
use toy_engine::{Bug, compare};

const MOE_TOKENS: [u32; 8] = [81, 119, 101, 110, 51, 77, 111, 69];

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

fn toy_engine_without_bug_matches_everywhere() {
    let model = fixture("qwen3moe-tiny/qwen3moe-tiny-f32.gguf");
    let report = compare(&model, None, &MOE_TOKENS).unwrap();
    let bad: Vec<String> = report
        .rows
        .iter()
        .filter(|r| r.verdict != Verdict::Match)
        .map(|r| format!("{} {:?}", r.key, r.verdict))
        .collect();
    assert!(bad.is_empty(), "non-Match rows: {bad:?}");
    assert!(report.holds);
    // every stage of the qwen3moe vocabulary was compared, for every layer (tokens, the
    // prompt, is checked but gets no row)
    assert_eq!(report.rows.len(), 3 + 3 * 19, "rows: {}", report.rows.len());
}

fn toy_engine_planted_rope_bug_is_found_at_its_layer_and_stage() {
    let model = fixture("qwen3moe-tiny/qwen3moe-tiny-f32.gguf");
    for layer in [0, 1, 2] {
        let report = compare(&model, Some(Bug::RopeThetaDefault { layer }), &MOE_TOKENS).unwrap();
        let want = Key::layer(layer, Stage::QRope);
        let first = report.first().expect("the bug must be found");
        assert_eq!(first.key, want, "first divergence (bug at layer {layer})");
        assert_eq!(first.verdict, Verdict::Diverge);
        // everything before it matches
        let before = report.rows.iter().take_while(|r| r.key != want);
        assert!(before.clone().all(|r| r.verdict == Verdict::Match));
        let origin = report.origin.as_ref().expect("attribution ran");
        assert_eq!(origin.key, want, "origin (bug at layer {layer})");
        assert!(!report.holds);
    }
}

fn registered_engine_opens_by_name() {
    let model = fixture("qwen3moe-tiny/qwen3moe-tiny-f32.gguf");
    assert!(backend::open("toy-unregistered", &model).is_err());
    toy_engine::register();
    backend::probe("toy").unwrap();
    let mut toy = backend::open("toy", &model).unwrap();
    assert_eq!(toy.name(), "toy");
    let plan = CapturePlan::all();
    let trace = toy
        .forward(&ForwardRequest::new(&MOE_TOKENS, &plan))
        .unwrap();
    let mut cpu = backend::open("cpu", &model).unwrap();
    let reference = cpu
        .forward(&ForwardRequest::new(&MOE_TOKENS, &plan))
        .unwrap();
    let report = diff(&reference, &trace, &DiffOptions::default()).unwrap();
    assert!(report.holds, "{:?}", report.first().map(|r| r.key));
}

/// Whether `python3` can import the transformers script's dependencies; the reason if not.
fn python_with_torch() -> Result<(), String> {
    let out = Command::new("python3")
        .args(["-c", "import torch, transformers, safetensors"])
        .output()
        .map_err(|e| format!("no python3 ({e})"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(err.lines().last().unwrap_or("import failed").to_string())
    }
}

fn transformers_trace_matches_golden_and_cpu_reference() {
    let dir = std::env::temp_dir().join(format!("falsifier-engines-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, tokens) in [
        ("qwen3moe-tiny", "81,119,101,110,51,77,111,69"),
        ("qwen3-tiny", "81,119,101,110,51,32,100,101,110,115,101"),
    ] {
        let out = dir.join(format!("{name}-transformers.safetensors"));
        let golden = fixture(&format!("{name}/activations-f32.safetensors"));
        let status = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/trace_transformers.py"))
            .arg("--model")
            .arg(fixture(&format!("{name}/hf_model")))
            .args(["--tokens", tokens, "--out"])
            .arg(&out)
            .arg("--check")
            .arg(&golden)
            .env("CUDA_VISIBLE_DEVICES", "")
            .status()
            .unwrap();
        assert!(status.success(), "{name}: trace or golden check failed");

        let hf = TraceFile::open(&out).unwrap();
        assert_eq!(hf.meta().backend, "transformers");
        let toks: Vec<u32> = tokens.split(',').map(|t| t.parse().unwrap()).collect();
        assert_eq!(hf.meta().tokens, toks);
        let mut cpu = backend::open("cpu", &fixture(&format!("{name}/{name}-f32.gguf"))).unwrap();
        let reference = cpu
            .forward(&ForwardRequest::new(&toks, &CapturePlan::all()))
            .unwrap();
        let report = diff(&hf, &reference, &DiffOptions::default()).unwrap();
        let bad: Vec<String> = report
            .rows
            .iter()
            .filter(|r| r.verdict != Verdict::Match)
            .map(|r| format!("{} {:?}", r.key, r.verdict))
            .collect();
        assert!(bad.is_empty() && report.holds, "{name}: {bad:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Both sides of llama's head permutation: transformers' trace written in the converter's
/// permuted q/k layout (`--layout gguf`) matches the CPU reference at every stage, and the same
/// trace left in transformers' own layout (`--layout hf`, what an engine that forgot the
/// permutation would produce) is caught at the first permuted stage, layer.0.q_proj.
fn llama_head_permutation_both_sides() {
    let dir = std::env::temp_dir().join(format!("falsifier-perm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = "76,108,97,109,97,32,51,46,49,44,32,116,105,110,121";
    let toks: Vec<u32> = tokens.split(',').map(|t| t.parse().unwrap()).collect();
    let mut cpu = backend::open("cpu", &fixture("llama3-tiny/llama3-tiny-f32.gguf")).unwrap();
    let reference = cpu
        .forward(&ForwardRequest::new(&toks, &CapturePlan::all()))
        .unwrap();
    for layout in ["gguf", "hf"] {
        let out = dir.join(format!("llama3-{layout}.safetensors"));
        let status = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/trace_transformers.py"))
            .arg("--model")
            .arg(fixture("llama3-tiny/hf_model"))
            .args(["--tokens", tokens, "--layout", layout, "--out"])
            .arg(&out)
            .env("CUDA_VISIBLE_DEVICES", "")
            .status()
            .unwrap();
        assert!(status.success(), "llama3 --layout {layout}: trace failed");
        let hf = TraceFile::open(&out).unwrap();
        let report = diff(&reference, &hf, &DiffOptions::default()).unwrap();
        let first = report.first().map(|r| r.key.to_string());
        if layout == "gguf" {
            assert!(report.holds, "permuted layout: first divergence {first:?}");
        } else {
            assert!(!report.holds);
            assert_eq!(
                first.as_deref(),
                Some("layer.0.q_proj"),
                "transformers' own layout"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let plain = |name: &str, f: fn()| {
        Trial::test(name, move || {
            f();
            Ok(())
        })
    };
    let tests = vec![
        plain(
            "toy_engine_without_bug_matches_everywhere",
            toy_engine_without_bug_matches_everywhere,
        ),
        plain(
            "toy_engine_planted_rope_bug_is_found_at_its_layer_and_stage",
            toy_engine_planted_rope_bug_is_found_at_its_layer_and_stage,
        ),
        plain(
            "registered_engine_opens_by_name",
            registered_engine_opens_by_name,
        ),
        Trial::ignorable_test(
            "transformers_trace_matches_golden_and_cpu_reference",
            || match python_with_torch() {
                Err(why) => Ok(Completion::ignored_with(format!(
                    "needs python3 with torch, transformers, safetensors: {why}"
                ))),
                Ok(()) => {
                    transformers_trace_matches_golden_and_cpu_reference();
                    Ok(Completion::Completed)
                }
            },
        ),
        Trial::ignorable_test(
            "llama_head_permutation_both_sides",
            || match python_with_torch() {
                Err(why) => Ok(Completion::ignored_with(format!(
                    "needs python3 with torch, transformers, safetensors: {why}"
                ))),
                Ok(()) => {
                    llama_head_permutation_both_sides();
                    Ok(Completion::Completed)
                }
            },
        ),
    ];
    libtest_mimic::run(&args, tests).exit_code()
}
