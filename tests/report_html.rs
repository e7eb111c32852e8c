//! report.html renders in a real headless Chromium: the page's script runs to the end (it marks
//! `<body data-rendered="ok">`), no console error is logged, no network is needed, and the
//! screenshot is a real picture. Skips with a printed reason only when chromium is absent and
//! this is not CI (CI=true); .ci/run installs chromium.
//!
//! The screenshot is kept at `$CARGO_TARGET_TMPDIR/report-html/shot.png` for a person to look at.

use std::path::{Path, PathBuf};
use std::process::Command;

use falsifier::diff::{DiffOptions, diff};
use falsifier::report::{ReportContext, write_reports};
use falsifier::trace::io::read_trace;
use falsifier::trace::{Key, Stage, TensorData, Trace};

fn chromium() -> Option<PathBuf> {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        if found.is_some() {
            return found;
        }
    }
    None
}

fn f32_mut<'a>(t: &'a mut Trace, key: &str) -> &'a mut Vec<f32> {
    match &mut t
        .tensors
        .get_mut(&key.parse::<Key>().unwrap())
        .unwrap()
        .data
    {
        TensorData::F32(v) => v,
        TensorData::I32(_) => panic!("{key} is i32"),
    }
}

/// A report with one of everything: a drift (the first divergence), a route flip, a NaN, a
/// missing stage and downstream cells.
fn write_sample(dir: &Path) -> PathBuf {
    let reference = read_trace(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/qwen3moe-tiny/activations-f32.safetensors"),
    )
    .unwrap();
    let mut cand = reference.clone();
    f32_mut(&mut cand, "layer.0.attn_out")
        .iter_mut()
        .for_each(|x| *x *= 1.003);
    if let TensorData::I32(ids) = &mut cand
        .tensors
        .get_mut(&Key::layer(1, Stage::TopkIds))
        .unwrap()
        .data
    {
        ids[1] = (ids[1] + 1) % 8;
        if ids[1] == ids[0] {
            ids[1] = (ids[1] + 1) % 8;
        }
    }
    f32_mut(&mut cand, "layer.2.ffn_out")[9] = f32::NAN;
    f32_mut(&mut cand, "layer.2.layer_out")[9] = f32::NAN;
    f32_mut(&mut cand, "logits")[0] = f32::NAN;
    cand.tensors.remove(&Key::layer(2, Stage::KNorm));
    let opts = DiffOptions {
        labels: Some(("cpu".into(), "cuda".into())),
        ..DiffOptions::default()
    };
    let report = diff(&reference, &cand, &opts).unwrap();
    assert!(!report.holds);
    write_reports(
        dir,
        &report,
        &ReportContext::new("falsifier diff ref.safetensors cand.safetensors"),
    )
    .unwrap();
    dir.join("report.html")
}

#[test]
fn report_html_renders_in_headless_chromium() {
    let Some(chrome) = chromium() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("chromium is not installed, and CI=true: .ci/run must install it");
        }
        eprintln!(
            "SKIPPED report_html_renders_in_headless_chromium: chromium not found (apt-get install chromium)"
        );
        return;
    };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report-html");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let html = write_sample(&dir);
    let text = std::fs::read_to_string(&html).unwrap();
    assert!(
        !text.contains("http://") && !text.contains("https://"),
        "the page must not reach the network"
    );
    let url = format!("file://{}", html.display());
    let profile = dir.join("profile");
    let base_args = |extra: &[&str]| {
        let mut cmd = Command::new(&chrome);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1400,900",
        ]);
        cmd.arg(format!("--user-data-dir={}", profile.display()));
        cmd.args(extra);
        cmd.arg(&url);
        cmd.output().unwrap()
    };

    // the DOM after scripts ran
    let dom = base_args(&["--dump-dom"]);
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    let log = String::from_utf8_lossy(&dom.stderr);
    assert!(
        dom_text.contains("data-rendered=\"ok\""),
        "script did not finish; stderr:\n{log}"
    );
    assert!(
        dom_text.contains("NanGpu"),
        "verdict names of a cpu/cuda pair"
    );
    for bad in ["Uncaught", "ERROR:CONSOLE", "SyntaxError", "ReferenceError"] {
        assert!(!log.contains(bad), "console error ({bad}):\n{log}");
    }
    for line in log.lines().filter(|l| l.contains("CONSOLE")) {
        assert!(!line.to_lowercase().contains("error"), "console: {line}");
    }

    // the picture
    let shot = dir.join("shot.png");
    let out = base_args(&[&format!("--screenshot={}", shot.display())]);
    let bytes = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}); stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((w, h), (1400, 900));
    // a blank or single-colour page compresses to a few KiB; this page has text and colour
    assert!(
        bytes.len() > 40_000,
        "screenshot only {} bytes",
        bytes.len()
    );
    eprintln!("screenshot: {}", shot.display());
}
