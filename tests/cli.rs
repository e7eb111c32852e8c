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
    // the contracts promote will edit: a git repository, whose commit the run names (as a run
    // inside a checkout does), since promote checks the evidence's commit against it
    let copy = std::env::temp_dir().join(format!(
        "falsifier-cli-run-contracts-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&copy);
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(
        Path::new(ROOT).join("contracts/harness-self-test.yaml"),
        copy.join("harness-self-test.yaml"),
    )
    .unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(&copy)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "contracts"]);
    let head = git(&["rev-parse", "HEAD"]);
    let out = Command::new(env!("CARGO_BIN_EXE_falsifier"))
        .args([
            "run",
            "contracts/harness-self-test.yaml",
            "--filter",
            "FALSIFY-SELF-NAN-002",
            "--report-dir",
            dir.to_str().unwrap(),
        ])
        .env("FALSIFIER_COMMIT", &head)
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("6 trial(s), all hold; report: "),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["schema"], "falsifier-report/1");
    assert_eq!(json["holds"], true);
    assert_eq!(json["all_hold"], true);
    let rows = json["falsifiers"].as_array().unwrap();
    assert_eq!(rows.len(), 6, "moe, dense and the four other architectures");
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
    assert_eq!(json["environment"]["commit"], head.as_str());
    // the evidence is what promote reads (dry run: the copy is not touched)
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
    std::fs::remove_dir_all(&copy).unwrap();
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn run_of_nothing_is_an_error_not_a_pass() {
    let out = falsifier(&["run", "contracts", "--filter", "NOSUCH"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--filter `NOSUCH`: no trial matched"), "{err}");

    // a heavy trial left out is counted, with the flag that would run it; a run of nothing but
    // it ran nothing
    let dir = std::env::temp_dir().join(format!("falsifier-cli-heavy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = falsifier(&[
        "run",
        "contracts/qwen3-moe-forward-gpu.yaml",
        "--filter",
        "FALSIFY-MOE-FWD-101",
        "--report-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "no trial ran (1 trial(s): 0 hold, 0 fail, 1 not run (heavy: --include-heavy))"
        ),
        "{err}"
    );
    let json = read_json(&dir.join("report.json"));
    assert_eq!(json["trials"][0]["state"], "not run");
    assert_eq!(json["summary"]["not_run"], 1);
    assert_eq!(json["holds"], false);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn skipped_gpu_trial_is_no_pass_and_fails_everywhere_with_require_gpu() {
    let dir = std::env::temp_dir().join(format!("falsifier-cli-nogpu-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // CUDA_VISIBLE_DEVICES="" hides every device, so the trial is skipped on a GPU host too
    let run = |extra: &[&str], report: &Path| {
        Command::new(env!("CARGO_BIN_EXE_falsifier"))
            .args([
                "run",
                "contracts/qwen3-moe-forward-gpu.yaml",
                "--filter",
                "cpu-vs-cuda::FALSIFY-MOE-FWD-001::moe-f32",
                "--report-dir",
            ])
            .arg(report)
            .args(extra)
            .env("CUDA_VISIBLE_DEVICES", "")
            .env_remove("FALSIFY_REQUIRE_GPU")
            .current_dir(ROOT)
            .output()
            .unwrap()
    };
    let out = run(&[], &dir.join("skip"));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("skip    cpu-vs-cuda::FALSIFY-MOE-FWD-001::moe-f32"),
        "{err}"
    );
    assert!(
        err.contains("no trial ran (1 trial(s): 0 hold, 0 fail, 1 skipped (no CUDA device))"),
        "{err}"
    );
    let json = read_json(&dir.join("skip/report.json"));
    assert_eq!(json["trials"][0]["state"], "skipped");
    assert_eq!(json["falsifiers"][0]["holds"], false);
    assert_eq!(json["falsifiers"][0]["state"], "skipped");

    // --require-gpu: one truth in the terminal, report.md, report.html and report.json
    let out = run(&["--require-gpu"], &dir.join("require"));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let sentence = "1 trial(s): 0 hold, 1 fail";
    assert!(
        stdout.starts_with(&format!("{sentence}; SOME DO NOT HOLD")),
        "{stdout}"
    );
    let json = read_json(&dir.join("require/report.json"));
    assert_eq!(json["holds"], false);
    assert_eq!(json["summary"]["fails"], 1);
    assert_eq!(json["summary"]["skipped"], 0);
    assert_eq!(json["trials"][0]["state"], "FAILS");
    assert_eq!(json["falsifiers"][0]["holds"], false);
    assert_eq!(json["falsifiers"][0]["state"], "FAILS");
    for page in ["report.md", "report.html"] {
        let text = std::fs::read_to_string(dir.join("require").join(page)).unwrap();
        assert!(
            text.contains(sentence) && text.contains("SOME DO NOT HOLD"),
            "{page}: {text}"
        );
    }
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

/// `bench --decode N --chunk C`: one line per prompt length with the per-token times, the
/// prefill part and the per-token work; `--chunk` alone times the chunked prefill against the
/// full forward; schedules a prompt length cannot take, a chunk of 0 and `--decode 0` are bad
/// input (exit 2) before anything runs.
#[test]
fn bench_times_decode_steps_per_token() {
    let model = "fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf";
    let bench = |extra: &[&str]| {
        let mut args = vec!["bench", model, "--backend", "cpu", "--runs", "1"];
        args.extend(extra);
        falsifier(&args)
    };
    let out = bench(&["--tokens-count", "8", "--decode", "3", "--chunk", "2"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("T=8 decode 3 (chunk 2): per token untraced "))
        .unwrap_or_else(|| panic!("no decode line:\n{text}"));
    // every field is there and its number parses
    let number = |after: &str| -> f64 {
        let rest = line
            .split_once(after)
            .unwrap_or_else(|| panic!("no `{after}` in {line}"))
            .1;
        rest.split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("{after}: {line}"))
    };
    for field in [
        "per token untraced ",
        "traced (every stage) ",
        "prefill 5 tokens untraced ",
        "per token weights touched ",
        "KV cache read ",
    ] {
        assert!(number(field).is_finite(), "{field}: {line}");
    }
    assert!(number("prefill 5 tokens untraced ") > 0.0, "{line}");
    assert!(number("per token weights touched ") > 0.0, "{line}");
    assert!(line.ends_with("MAC"), "{line}");
    assert!(
        text.contains("per token = median over 1 back-to-back pairs of (scheduled forward - prefill alone) / 3"),
        "{text}"
    );
    // N = T: no prefill; --chunk alone: the chunked prefill against the full forward
    let out = bench(&["--tokens-count", "3", "--decode", "3"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("T=3 decode 3 (prefill in one chunk): per token untraced ")
            && text.contains("; no prefill (N = T); "),
        "{text}"
    );
    // an f16 cache on both sides of each pair, named in the line, half the KV bytes
    let out = bench(&[
        "--tokens-count",
        "8",
        "--decode",
        "3",
        "--chunk",
        "2",
        "--kv-cache",
        "f16",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("T=8 decode 3 (chunk 2, f16 KV cache): per token untraced "),
        "{text}"
    );
    let out = bench(&["--tokens-count", "5", "--chunk", "2"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("T=5 chunk 2: untraced ") && text.contains("; full forward untraced "),
        "{text}"
    );
    for (args, want) in [
        (
            &["--tokens-count", "8,2", "--decode", "3"][..],
            "--chunk/--decode at --tokens-count 2: schedule: 3 decode steps, but the prompt has only 2 tokens",
        ),
        (
            &["--tokens-count", "8", "--chunk", "0", "--decode", "1"][..],
            "--chunk 0: a prefill chunk holds at least one token",
        ),
        (
            &["--tokens-count", "8", "--decode", "0"][..],
            "--decode 0: give at least one decode step",
        ),
        (&["--tokens-count", "8", "--decode", "x"][..], "--decode"),
        (
            &["--tokens-count", "8", "--decode", "1", "--kv-cache", "f8"][..],
            "--kv-cache: unknown KV cache type",
        ),
        (
            &["--tokens-count", "8", "--kv-cache", "f16"][..],
            "--kv-cache applies to the --chunk/--decode timings",
        ),
    ] {
        let o = bench(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        // refused before anything was timed
        assert!(
            !String::from_utf8_lossy(&o.stdout).contains("T=8"),
            "{args:?}"
        );
    }
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
#[test]
fn model_errors_name_the_model_argument() {
    let out = falsifier(&[
        "trace",
        "no-such.gguf",
        "--backend",
        "cpu",
        "--tokens",
        "1",
        "--out",
        "/nonexistent/t.safetensors",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("MODEL: no-such.gguf"), "{stderr}");
    assert!(!stderr.contains("--backend"), "{stderr}");
    let out = falsifier(&["bench", "no-such.gguf", "--backend", "cpu"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MODEL: no-such.gguf"));
    // an unknown backend is still --backend's fault
    let out = falsifier(&[
        "trace",
        "fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf",
        "--backend",
        "tpu",
        "--tokens",
        "1",
        "--out",
        "/nonexistent/t.safetensors",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--backend tpu: unknown backend"),
        "{stderr}"
    );
}

/// `trace --chunk/--decode`: a clean schedule matches the full forward exactly; a cache fault is
/// found at its layer and stage, and the report names the decode step of the position; bad
/// schedules exit 2 naming the flag.
#[test]
fn trace_runs_schedules_through_the_kv_cache() {
    let dir = std::env::temp_dir().join(format!("falsifier-cli-sched-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = "fixtures/qwen3-tiny/qwen3-tiny-f32.gguf";
    let trace = |out: &Path, extra: &[&str]| {
        let mut args = vec!["trace", model, "--tokens", "81,119,101,110,51", "--out"];
        args.push(out.to_str().unwrap());
        args.extend(extra);
        falsifier(&args)
    };
    let (full, clean, bad) = (
        dir.join("full.safetensors"),
        dir.join("clean.safetensors"),
        dir.join("bad.safetensors"),
    );
    assert_eq!(trace(&full, &[]).status.code(), Some(0));
    let o = trace(&clean, &["--chunk", "2", "--decode", "2"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = trace(
        &bad,
        &["--decode", "1", "--fault", "kv_stale@layer.1.attn_probs"],
    );
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let diff = |b: &Path| {
        Command::new(env!("CARGO_BIN_EXE_falsifier"))
            .args(["diff", full.to_str().unwrap(), b.to_str().unwrap()])
            .arg("--report-dir")
            .arg(dir.join("report"))
            .env("NO_COLOR", "1")
            .current_dir(ROOT)
            .output()
            .unwrap()
    };
    let o = diff(&clean);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = diff(&bad);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("first layer.1.attn_probs"), "{stdout}");
    let md = std::fs::read_to_string(dir.join("report/report.md")).unwrap();
    assert!(md.contains("position 4 \"3\", decode step 0"), "{md}");
    for (args, want) in [
        (
            &["--chunk", "0"][..],
            "the prefill chunk must be at least 1 token",
        ),
        (
            &["--decode", "6"][..],
            "6 decode steps, but the prompt has only 5",
        ),
        (
            &["--fault", "chunk_mask@layer.0.attn_probs"][..],
            "needs at least two prefill chunks",
        ),
    ] {
        let o = trace(&bad, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sides_are_named_by_their_full_backend_and_role() {
    let dir = std::env::temp_dir().join(format!("falsifier-cli-labels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = "fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf";
    let (a, b) = (dir.join("cpu.safetensors"), dir.join("f32.safetensors"));
    let trace = |out: &Path, extra: &[&str]| {
        let mut args = vec!["trace", model, "--tokens", "81,119,101", "--out"];
        args.push(out.to_str().unwrap());
        args.extend(extra);
        let o = falsifier(&args);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
    };
    trace(&a, &[]);
    trace(
        &b,
        &["--precision", "f32", "--fault", "nan[0]@layer.1.ffn_norm"],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_falsifier"))
        .args(["diff", a.to_str().unwrap(), b.to_str().unwrap()])
        .arg("--report-dir")
        .arg(dir.join("report"))
        .env("NO_COLOR", "1")
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("reference cpu ("), "{stdout}");
    assert!(stdout.contains("candidate cpu-f32 ("), "{stdout}");
    assert!(
        stdout.contains("non-finite on the candidate (cpu-f32) side"),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn gen_model_says_which_tensors_fell_back_and_how_to_get_k_quants() {
    let dir = std::env::temp_dir().join(format!("falsifier-cli-kquant-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("m.gguf");
    let gen_model = |extra: &[&str]| {
        let mut args = vec![
            "gen-model",
            "--preset",
            "tiny-moe",
            "--quant",
            "q4_k_m",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let o = falsifier(&args);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // rows of 64 values: every K-quant falls back, as in llama.cpp, and the output says so
    let text = gen_model(&[]);
    assert!(
        text.contains("Q4_K -> Q5_0: 10 tensor(s), rows of 64 values are not a multiple of 256"),
        "{text}"
    );
    assert!(text.contains("no K-quant tensor was written"), "{text}");
    let flags = text
        .split("for a shape that has them, add ")
        .nth(1)
        .expect("a shape to point to")
        .trim()
        .to_string();
    assert_eq!(flags, "--hidden 256 --head-dim 64 --expert-ffn 256");
    // the shape it points to does give K-quants, and no fallback at all
    let text = gen_model(&flags.split(' ').collect::<Vec<_>>());
    assert!(text.contains(" Q4_K") && text.contains(" Q6_K"), "{text}");
    assert!(!text.contains("fell back"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `falsifier diff A.gguf B.gguf`: the drift report, its bounds as the exit code, and the inputs
/// it refuses.
#[test]
fn diff_of_two_model_files_reports_drift_and_follows_its_bounds() {
    let dir = std::env::temp_dir().join(format!("falsifier-cli-drift-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (f32, q8) = (
        "fixtures/llama3-tiny/llama3-tiny-f32.gguf",
        "fixtures/llama3-tiny/llama3-tiny-q8_0.gguf",
    );
    let report = dir.join("r");
    let run = |extra: &[&str]| {
        let mut args = vec!["diff", f32, q8, "--report-dir", report.to_str().unwrap()];
        args.extend(extra);
        falsifier(&args)
    };
    let tokens = ["--tokens", "81,119,101,110,50,45,77,111,69"];
    let ok = run(&[&tokens[..], &["--kld", "1e-3", "--top1", "1"]].concat());
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        out.contains("drift HOLDS") && out.contains("place(s) that lose most"),
        "{out}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["drift_check"]["holds"], true);
    assert_eq!(json["logits"]["positions"], 9);
    let kld = json["logits"]["kld_mean"].as_f64().unwrap();
    assert!(kld > 0.0 && kld < 1e-3, "{kld}");
    // 2 layers, the embedding and the output head, ranked largest first
    let places = json["drift"]["layers"].as_array().unwrap();
    assert_eq!(places.len(), 4);
    let own: Vec<f64> = places
        .iter()
        .map(|p| p["own_rel_l2"].as_f64().unwrap())
        .collect();
    assert!(own.windows(2).all(|w| w[0] >= w[1]), "{own:?}");
    assert!(
        std::fs::read_to_string(report.join("report.html"))
            .unwrap()
            .contains("The places that lose most")
    );
    // a text prompt, tokenized with REF's own tokenizer; each position's piece in the report
    let text = run(&["--prompt", "Hi there", "--kld", "1e-2"]);
    assert_eq!(text.status.code(), Some(0), "{text:?}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["logits"]["positions"], 8, "{json}");
    let pieces: Vec<&str> = json["reference"]["pieces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(pieces.concat(), "Hi there", "{pieces:?}");
    // a bound the Q8_0 file cannot meet fails
    let tight = run(&[&tokens[..], &["--kld", "1e-9"]].concat());
    assert_eq!(tight.status.code(), Some(1), "{tight:?}");
    assert!(String::from_utf8_lossy(&tight.stdout).contains("drift FAILS"));
    // bad input: no prompt, a model against a trace, bounds on traces
    let no_tokens = run(&[]);
    assert_eq!(no_tokens.status.code(), Some(2), "{no_tokens:?}");
    assert!(String::from_utf8_lossy(&no_tokens.stderr).contains("--tokens"));
    let trace = dir.join("t.safetensors");
    let t = falsifier(&[
        "trace",
        f32,
        "--tokens",
        "81,119",
        "--out",
        trace.to_str().unwrap(),
    ]);
    assert_eq!(t.status.code(), Some(0), "{t:?}");
    let mixed = falsifier(&["diff", f32, trace.to_str().unwrap()]);
    assert_eq!(mixed.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&mixed.stderr).contains("llama3-tiny-f32.gguf is a model file")
    );
    let bounds_on_traces = falsifier(&[
        "diff",
        trace.to_str().unwrap(),
        trace.to_str().unwrap(),
        "--kld",
        "1",
    ]);
    assert_eq!(bounds_on_traces.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).ok();
}

/// The bytes of tensor data in a safetensors trace file: what follows its header.
fn trace_payload(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    bytes.len() as u64 - 8 - header
}

/// `inspect --json` on a fixture and on a split model: the numbers are the reader's and the
/// config's, the stages the architecture's, and the traced-run estimate holds the CPU trace
/// of that model at T tokens (its payload exactly; device + trace past the whole file).
#[test]
fn inspect_reports_what_the_reader_and_stages_say() {
    use falsifier::model::config::ModelConfig;
    use falsifier::model::gguf::GgufFile;
    use falsifier::trace::Stage;

    let dir = std::env::temp_dir().join(format!("falsifier-cli-inspect-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let split_out = dir.join("q2.gguf");
    let made = falsifier(&[
        "gen-model",
        "--preset",
        "tiny-qwen2moe",
        "--quant",
        "q8_0",
        "--split-max-size",
        "100000",
        "--out",
        split_out.to_str().unwrap(),
    ]);
    assert_eq!(made.status.code(), Some(0), "{made:?}");
    let first = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("-00001-of-"))
        .unwrap();
    let models = [
        Path::new(ROOT).join("fixtures/qwen3moe-tiny/qwen3moe-tiny-q8_0.gguf"),
        first,
    ];
    for model in &models {
        let m = model.to_str().unwrap();
        let out = falsifier(&["inspect", m, "--tokens-count", "8,40", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let f = GgufFile::open(model).unwrap();
        let cfg = ModelConfig::from_gguf(&f).unwrap();
        assert_eq!(j["arch"], cfg.arch.name());
        let sh = &j["shape"];
        assert_eq!(sh["layers"], cfg.n_layers);
        assert_eq!(sh["hidden"], cfg.hidden);
        assert_eq!(sh["heads"], cfg.n_heads);
        assert_eq!(sh["kv_heads"], cfg.n_kv_heads);
        assert_eq!(sh["experts"], cfg.n_experts);
        assert_eq!(sh["shared_expert_ffn"], cfg.shared_ffn_dim);
        assert_eq!(sh["vocab"], cfg.vocab);
        assert_eq!(j["tensors"], f.tensors().len());
        let bytes: u64 = f.tensors().iter().map(|t| t.nbytes).sum();
        let params: u64 = f.tensors().iter().map(|t| t.n_elements()).sum();
        assert_eq!(j["tensor_bytes"], bytes);
        assert_eq!(j["params"], params);
        let by_type: u64 = j["types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["bytes"].as_u64().unwrap())
            .sum();
        assert_eq!(by_type, bytes);
        let files = j["files"].as_array().unwrap();
        assert_eq!(files.len(), f.shards().len());
        for (a, s) in files.iter().zip(f.shards()) {
            assert_eq!(a["path"], s.path().display().to_string());
            assert_eq!(a["bytes"], s.file_len());
            assert_eq!(a["tensors"], s.n_tensors());
        }
        let stages: Vec<&str> = j["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        let want: Vec<&str> = Stage::ALL
            .into_iter()
            .filter(|&s| cfg.has_stage(s))
            .map(|s| s.name())
            .collect();
        assert_eq!(stages, want);
        // the text names the same stages, as `stages --arch` prints them
        let text = falsifier(&["inspect", m]);
        assert_eq!(text.status.code(), Some(0));
        let text = String::from_utf8_lossy(&text.stdout);
        let arch = falsifier(&["stages", "--arch", cfg.arch.name()]);
        assert!(text.contains(String::from_utf8_lossy(&arch.stdout).as_ref()));
        assert!(text.contains("T=32:"), "{text}");

        for (i, t) in [8usize, 40].into_iter().enumerate() {
            let est = &j["memory"][i];
            assert_eq!(est["tokens"], t);
            let tokens: Vec<String> = (0..t).map(|k| (k % 200 + 1).to_string()).collect();
            let trace = dir.join(format!("t{t}.safetensors"));
            let run = falsifier(&[
                "trace",
                m,
                "--backend",
                "cpu",
                "--stages",
                "all",
                "--tokens",
                &tokens.join(","),
                "--out",
                trace.to_str().unwrap(),
            ]);
            assert_eq!(run.status.code(), Some(0), "{run:?}");
            let file_len = std::fs::metadata(&trace).unwrap().len();
            assert_eq!(est["trace"], trace_payload(&trace), "{m} T={t}");
            let total = est["device"].as_u64().unwrap() + est["trace"].as_u64().unwrap();
            assert!(total >= file_len, "{m} T={t}: {total} < {file_len}");
            assert!(est["weights"].as_u64().unwrap() >= bytes);
            // every layer's K and V at T positions, f32
            let kv = 2 * cfg.n_layers * t * cfg.n_kv_heads * cfg.head_dim * 4;
            assert_eq!(est["kv_cache"], kv as u64, "{m} T={t}");
        }
    }
    // bad input exits 2
    let fixture = models[0].to_str().unwrap();
    for args in [
        vec!["inspect", "no-such.gguf"],
        vec!["inspect", fixture, "--tokens-count", "0"],
        vec!["inspect", fixture, "--tokens-count", "100000"],
    ] {
        let out = falsifier(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--prompt TEXT` runs the same forward as the ids the model's own tokenizer gives (here the
/// fixture's byte-level one: one token per byte, `<|im_start|>` whole), records each position's
/// piece in the trace, and is exclusive with `--tokens`.
#[test]
fn trace_and_calibrate_take_a_text_prompt() {
    use falsifier::trace::io::read_trace;
    let model = "fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf";
    let dir = std::env::temp_dir().join(format!("falsifier-cli-prompt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let by_text = dir.join("text.safetensors");
    let by_ids = dir.join("ids.safetensors");
    let o = falsifier(&[
        "trace",
        model,
        "--prompt",
        "<|im_start|>Hi é",
        "--layers",
        "0..1",
        "--out",
        by_text.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    // é is two bytes: two byte tokens, each piece a lone byte (U+FFFD as text)
    let ids = "257,72,105,32,195,169";
    let o = falsifier(&[
        "trace",
        model,
        "--tokens",
        ids,
        "--layers",
        "0..1",
        "--out",
        by_ids.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let (t, i) = (read_trace(&by_text).unwrap(), read_trace(&by_ids).unwrap());
    assert_eq!(t.meta.tokens, [257, 72, 105, 32, 195, 169]);
    assert_eq!(t.tensors, i.tensors);
    assert_eq!(
        t.meta.pieces(),
        ["<|im_start|>", "H", "i", " ", "\u{fffd}", "\u{fffd}"]
    );
    // ids given as such still get their pieces: the model has a tokenizer
    assert_eq!(i.meta.pieces(), t.meta.pieces());

    let both = falsifier(&[
        "trace", model, "--tokens", "1", "--prompt", "a", "--out", "x",
    ]);
    assert_eq!(both.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&both.stderr).contains("cannot be used with"));
    let neither = falsifier(&["trace", model, "--out", "x"]);
    assert_eq!(neither.status.code(), Some(2));
    let empty = falsifier(&["trace", model, "--prompt", "", "--out", "x"]);
    let err = String::from_utf8_lossy(&empty.stderr);
    assert_eq!(empty.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--prompt: the prompt \"\" gives no tokens"),
        "{err}"
    );

    let cal = falsifier(&["calibrate", model, "--prompt", "Qwen3MoE"]);
    assert_eq!(cal.status.code(), Some(0), "{cal:?}");
    assert!(String::from_utf8_lossy(&cal.stdout).contains("(8 tokens)"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A model whose tokenizer metadata is bad: `--prompt` names the file and the key; `--tokens`
/// still runs (the forward needs no tokenizer).
#[test]
fn prompt_on_a_model_with_bad_tokenizer_metadata_is_an_error_naming_file_and_key() {
    use falsifier::model::gguf::{GgufFile, GgufWriter, MetaValue};
    let src =
        GgufFile::open(&Path::new(ROOT).join("fixtures/qwen3-tiny/qwen3-tiny-f32.gguf")).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata() {
        let v = match k.as_str() {
            "tokenizer.ggml.pre" => MetaValue::String("no-such-pre".into()),
            _ => v.clone(),
        };
        w.add_kv(k, v);
    }
    for t in src.tensors() {
        w.add_tensor(&t.name, t.dims.clone(), t.ty).unwrap();
    }
    let dir = std::env::temp_dir().join(format!("falsifier-cli-badtok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("bad-tok.gguf");
    w.write_file(&model, |i, sink| {
        let t = &src.tensors()[i];
        sink.write_all(src.tensor_data(t))
            .map_err(|e| falsifier::Error::internal(e.to_string()))
    })
    .unwrap();
    let m = model.to_str().unwrap();
    let out = dir.join("t.safetensors");
    let o = falsifier(&["trace", m, "--prompt", "hi", "--out", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(m)
            && err.contains("key 'tokenizer.ggml.pre'")
            && err.contains("`no-such-pre` is not supported"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let o = falsifier(&[
        "trace",
        m,
        "--tokens",
        "1,2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `run --chunk C --decode N`: every trial's candidate walks the prompt through the KV cache;
/// clean trials still hold, the records carry no level (the contracts as written did not run),
/// and a schedule the prompt cannot take is an error, never a pass.
#[test]
fn run_overrides_the_candidates_schedule() {
    let dir = std::env::temp_dir().join(format!("falsifier-cli-runsch-{}", std::process::id()));
    let ok = falsifier(&[
        "run",
        "contracts/architectures-forward.yaml",
        "--filter",
        "CLEAN-001::llama2-f32",
        "--chunk",
        "3",
        "--decode",
        "4",
        "--report-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["summary"]["holds"], 1, "{json}");
    assert!(json["falsifiers"][0]["level"].is_null(), "{json}");
    let bad = falsifier(&[
        "run",
        "contracts/architectures-forward.yaml",
        "--filter",
        "CLEAN-001::llama2-f32",
        "--decode",
        "100",
        "--report-dir",
        dir.to_str().unwrap(),
    ]);
    assert_ne!(bad.status.code(), Some(0), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("100 decode steps"),
        "{bad:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `trace --kv-cache f16`: a scheduled f16 trace matches the f16 full forward exactly, the f16
/// full forward differs from the f32 one first at layer 0's attn_ctx (at the default
/// thresholds the probabilities, which read the rounded K, stay under theirs), the report names
/// no step for a one-step forward, and a bad value exits 2 naming the flag.
#[test]
fn trace_kv_cache_f16() {
    let dir = std::env::temp_dir().join(format!("falsifier-cli-kvf16-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = "fixtures/qwen3-tiny/qwen3-tiny-f32.gguf";
    let trace = |out: &Path, extra: &[&str]| {
        let mut args = vec!["trace", model, "--tokens", "81,119,101,110,51", "--out"];
        args.push(out.to_str().unwrap());
        args.extend(extra);
        falsifier(&args)
    };
    let (f32_full, f16_full, f16_sched) = (
        dir.join("f32.safetensors"),
        dir.join("f16.safetensors"),
        dir.join("f16-sched.safetensors"),
    );
    assert_eq!(
        trace(&f32_full, &["--kv-cache", "f32"]).status.code(),
        Some(0)
    );
    assert_eq!(
        trace(&f16_full, &["--kv-cache", "f16"]).status.code(),
        Some(0)
    );
    let o = trace(
        &f16_sched,
        &["--chunk", "2", "--decode", "2", "--kv-cache", "f16"],
    );
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let diff = |a: &Path, b: &Path| {
        Command::new(env!("CARGO_BIN_EXE_falsifier"))
            .args(["diff", a.to_str().unwrap(), b.to_str().unwrap()])
            .arg("--report-dir")
            .arg(dir.join("report"))
            .env("NO_COLOR", "1")
            .current_dir(ROOT)
            .output()
            .unwrap()
    };
    let o = diff(&f16_full, &f16_sched);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = diff(&f32_full, &f16_full);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("first layer.0.attn_ctx"), "{stdout}");
    let md = std::fs::read_to_string(dir.join("report/report.md")).unwrap();
    assert!(!md.contains("prefill chunk"), "{md}");
    let o = trace(&f16_full, &["--kv-cache", "f8"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--kv-cache: unknown KV cache type `f8` (known: f32, f16)"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `run --kv-cache f16`: every trial's candidate stores its KV cache in f16, under its
/// contracted schedule. Against an f32 reference a clean trial then fails in layer 0's attention
/// (at attn_probs under this contract's 1e-4, about 1.1e-4 there; attn_ctx otherwise), the
/// records carry no level; a bad value is an error.
#[test]
fn run_overrides_the_candidates_kv_cache() {
    let dir = std::env::temp_dir().join(format!("falsifier-cli-runkv-{}", std::process::id()));
    let o = falsifier(&[
        "run",
        "contracts/kv-cache.yaml",
        "--filter",
        "FALSIFY-KV-CLEAN-002::dense-f32",
        "--kv-cache",
        "f16",
        "--report-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let row = &json["falsifiers"][0];
    assert_eq!(row["holds"], false, "{json}");
    assert!(row["level"].is_null(), "{json}");
    let first = &json["first_divergence"];
    assert_eq!(first["layer"], 0, "{json}");
    assert!(
        ["attn_probs", "attn_ctx"].contains(&first["stage"].as_str().unwrap()),
        "{json}"
    );
    let bad = falsifier(&[
        "run",
        "contracts/kv-cache.yaml",
        "--kv-cache",
        "f12",
        "--report-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--kv-cache: unknown KV cache type `f12`"),
        "{bad:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
