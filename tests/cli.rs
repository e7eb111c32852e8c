//! The CLI end to end: calibrate proposes thresholds from the f32 noise floor; run writes a
//! combined report that promote accepts; bad input exits 2.

use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn falsifier(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_falsifier"))
        .args(args)
        .current_dir(ROOT)
        .output()
        .unwrap()
}

#[test]
fn calibrate_proposes_thresholds_above_the_noise_floor() {
    let out = falsifier(&[
        "calibrate",
        "fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf",
        "--tokens",
        "81,119,101,110,51,77,111,69",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("proposed thresholds"), "{text}");
    // every stage's noise floor is far under the default thresholds it is proposed against
    for line in text
        .lines()
        .filter(|l| l.trim_start().starts_with("ffn_out "))
    {
        let cols: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .map(|c| c.parse().unwrap())
            .collect();
        assert!(cols[0] > 0.0 && cols[0] < 1e-5, "{line}");
        assert!(cols[1] >= cols[0] * 10.0, "{line}");
    }
    let bad = falsifier(&["calibrate", "no-such.gguf", "--tokens", "1"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn run_report_is_promote_evidence() {
    let dir = std::env::temp_dir().join(format!("falsifier-cli-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = falsifier(&[
        "run",
        "contracts/harness-self-test.yaml",
        "--filter",
        "FALSIFY-SELF-NAN-002",
        "--report-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["schema"], "falsifier-report/1");
    assert_eq!(json["holds"], true);
    let rows = json["falsifiers"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "moe and dense models");
    for r in rows {
        assert_eq!(r["id"], "FALSIFY-SELF-NAN-002");
        assert_eq!(r["first_divergence"], "layer.2.ffn_out: NanCand");
        assert_eq!(r["origin"], "layer.2.ffn_out");
        assert_eq!(r["level"], "ACTIVE_ALGORITHM_LEVEL");
        let trial = Path::new(r["report_dir"].as_str().unwrap());
        assert!(trial.join("report.html").is_file());
    }
    for f in ["report.md", "report.html"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    // the evidence is what promote reads (dry run: the real contracts are not touched)
    let copy = dir.join("contracts");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(
        Path::new(ROOT).join("contracts/harness-self-test.yaml"),
        copy.join("harness-self-test.yaml"),
    )
    .unwrap();
    let promote = falsifier(&[
        "promote",
        "--evidence",
        dir.join("report.json").to_str().unwrap(),
        "--contracts",
        copy.to_str().unwrap(),
        "--dry-run",
    ]);
    assert_eq!(promote.status.code(), Some(0), "{promote:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unknown_candidate_is_bad_input() {
    let out = falsifier(&["run", "contracts", "--candidate", "tpu"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--candidate"));
}

#[test]
fn nightly_compares_with_the_previous_night() {
    let hist = std::env::temp_dir().join(format!("falsifier-cli-nightly-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&hist);
    let night = |extra: &[&str]| {
        let mut args = vec![
            "nightly",
            "contracts/harness-self-test.yaml",
            "--no-heavy",
            "--history",
            hist.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        falsifier(&args)
    };
    let first = night(&[]);
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    assert!(String::from_utf8_lossy(&first.stdout).contains("first run"));
    // run directories are named by the second: make sure the second night is a later one
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = night(&[]);
    assert_eq!(second.status.code(), Some(0), "{second:?}");
    let out = String::from_utf8_lossy(&second.stdout);
    assert!(out.contains("0 regression(s)"), "{out}");
    // a GPU contract fails the nightly on a machine without a GPU (a GPU is required there)
    let gpu = falsifier(&[
        "nightly",
        "contracts/trace-moe-gpu-sub-stages.yaml",
        "--no-heavy",
        "--history",
        hist.join("gpu").to_str().unwrap(),
    ]);
    if falsifier::backend::probe("cuda").is_err() {
        assert_eq!(gpu.status.code(), Some(1), "{gpu:?}");
    }
    std::fs::remove_dir_all(&hist).unwrap();
}

#[test]
fn diff_compares_only_the_stages_asked_for() {
    let dir = std::env::temp_dir().join(format!("falsifier-cli-stages-{}", std::process::id()));
    let golden = "fixtures/qwen3moe-tiny/activations-f32.safetensors";
    let out = falsifier(&[
        "diff",
        golden,
        golden,
        "--stages",
        "attn_norm,logits",
        "--layers",
        "1",
        "--report-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let keys: Vec<&str> = json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["layer.1.attn_norm", "logits"]);
    let bad = falsifier(&["diff", golden, golden, "--stages", "bogus"]);
    assert_eq!(bad.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_times_untraced_and_traced_prefills_and_counts_their_work() {
    let out = falsifier(&[
        "bench",
        "fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf",
        "--tokens-count",
        "8,16",
        "--runs",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for t in [8, 16] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("T={t}: untraced ")))
            .unwrap_or_else(|| panic!("no T={t} line:\n{text}"));
        assert!(line.contains("traced (every stage)"), "{line}");
        // the tiny MoE's matmuls: weights and multiply-adds are counted, not zero
        let gmac: f64 = line
            .split(", ")
            .find_map(|p| p.strip_suffix(" GMAC"))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no GMAC in {line}"));
        assert!(gmac > 0.0, "{line}");
    }
    // a bad prompt length is bad input, named
    let out = falsifier(&[
        "bench",
        "fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf",
        "--tokens-count",
        "8,0",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("`0` is not a prompt length"));
}

/// Issue 11 items 3, 15 and 16: `trace` refuses layers the model lacks (naming its layer count)
/// and prompts past its context length, and a huge `--layers` range is one range, refused at
/// once instead of expanded into memory; `diff` does the same against the traces' layers.
#[test]
fn trace_and_diff_refuse_layers_and_prompts_the_model_cannot_take() {
    let model = "fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf";
    let dir = std::env::temp_dir().join(format!("falsifier-cli-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("t.safetensors");
    let out = out.to_str().unwrap();
    let trace = |tokens: &str, layers: &str| {
        falsifier(&[
            "trace", model, "--tokens", tokens, "--layers", layers, "--out", out,
        ])
    };
    for (layers, first) in [("5..9", 5), ("0..18446744073709551615", 3)] {
        let start = std::time::Instant::now();
        let o = trace("1,2,3", layers);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{layers}: {err}");
        assert!(
            err.contains(&format!(
                "layer {first} is out of range: {model} has 3 layers (0..3)"
            )),
            "{layers}: {err}"
        );
        assert!(start.elapsed().as_secs_f64() < 10.0, "{layers}");
    }
    // the fixture's context is 256 tokens
    let t = |n: usize| vec!["7"; n].join(",");
    let o = trace(&t(257), "all");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "the prompt has 257 tokens, more than the context length of {model} (256 tokens)"
        )),
        "{err}"
    );
    let o = trace(&t(256), "0..3");
    assert_eq!(o.status.code(), Some(0), "{o:?}");

    let report = dir.join("report");
    let o = falsifier(&[
        "diff",
        out,
        out,
        "--layers",
        "0..18446744073709551615",
        "--report-dir",
        report.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--layers: layer 3 is out of range: the traces hold 3 layers (0..3)"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
