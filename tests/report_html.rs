//! The reports render in a real headless Chromium: the diff page (report.html of a diff) and the
//! run overview (report.html of `falsifier run`). For each, the page's script runs to the end (it
//! marks `<body data-rendered="ok">`), no console error is logged, no network is needed, and the
//! screenshot is a real picture.
//!
//! Whether chromium is there is known only at run time, so this target runs under libtest-mimic
//! (`harness = false`): without chromium the checks end "ignored" with the reason, never "ok";
//! with CI=true they fail instead (.ci/run installs chromium).
//!
//! The screenshots are kept under `$CARGO_TARGET_TMPDIR/report-html/` for a person to look at.

#[allow(dead_code)] // run_summary uses other parts
#[path = "common/run_entries.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use falsifier::diff::{DiffOptions, diff};
use falsifier::report::{Environment, ReportContext, write_reports};
use falsifier::runner::summary;
use falsifier::trace::io::read_trace;
use falsifier::trace::{Key, Stage, TensorData, Trace};
use libtest_mimic::{Arguments, Completion, Failed, Trial};

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

/// What Chromium made of a page.
struct Rendered {
    /// The DOM after the page's scripts ran.
    dom: String,
}

/// Load `html` in headless Chromium: check that its script ran to the end without a console
/// error and that its screenshot (kept as `shot`) is a real 1400×900 picture.
fn render(chrome: &Path, html: &Path, shot: &Path) -> Rendered {
    let text = std::fs::read_to_string(html).unwrap();
    assert!(
        !text.contains("http://") && !text.contains("https://"),
        "the page must not reach the network"
    );
    let url = format!("file://{}", html.display());
    let profile = shot.with_extension("profile");
    let base_args = |extra: &[&str]| {
        let mut cmd = Command::new(chrome);
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
    let dom_text = String::from_utf8_lossy(&dom.stdout).to_string();
    let log = String::from_utf8_lossy(&dom.stderr);
    assert!(
        dom_text.contains("data-rendered=\"ok\""),
        "script did not finish; stderr:\n{log}"
    );
    for bad in ["Uncaught", "ERROR:CONSOLE", "SyntaxError", "ReferenceError"] {
        assert!(!log.contains(bad), "console error ({bad}):\n{log}");
    }
    for line in log.lines().filter(|l| l.contains("CONSOLE")) {
        assert!(!line.to_lowercase().contains("error"), "console: {line}");
    }

    // the picture
    let out = base_args(&[&format!("--screenshot={}", shot.display())]);
    let bytes = std::fs::read(shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}); stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((w, h), (1400, 900));
    // a blank or single-colour page compresses to a few KiB; these pages have text and colour
    assert!(
        bytes.len() > 40_000,
        "screenshot only {} bytes",
        bytes.len()
    );
    eprintln!("screenshot: {}", shot.display());
    Rendered { dom: dom_text }
}

fn diff_page_renders(chrome: &Path) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report-html");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let html = write_sample(&dir);
    let page = render(chrome, &html, &dir.join("shot.png"));
    assert!(
        page.dom.contains("NanGpu"),
        "verdict names of a cpu/cuda pair"
    );
    // a row with a NaN shows no cosine or error over its finite pairs
    assert!(page.dom.contains("— (1 non-finite)"), "non-finite rows");
}

/// The run overview: counts by state first, then failures and skips, the contracts × models
/// matrix, and every trial folded in a `<details>`.
fn run_overview_renders(chrome: &Path) {
    let dir = common::scratch("report-html-run");
    let sample = common::one_of_each(&dir.join("trials"));
    summary::write(
        &dir,
        &sample.entries,
        "falsifier run contracts",
        &Environment::default(),
        false,
    )
    .unwrap();
    let page = render(chrome, &dir.join("report.html"), &dir.join("shot.png"));
    let dom = &page.dom;
    let n = sample.entries.len();
    assert!(dom.contains(&format!("data-trials=\"{n}\"")), "{dom}");
    let at = |needle: &str| {
        dom.find(needle)
            .unwrap_or_else(|| panic!("{needle} not on the page"))
    };
    // summary, then the matrix, then failures and skips, then the trials
    assert!(at("class=\"counts\"") < at("id=\"matrix\""));
    assert!(at("id=\"matrix\"") < at("id=\"attention\""));
    assert!(at("id=\"attention\"") < at("id=\"trials\""));
    for chip in [
        "chip holds",
        "chip fails",
        "chip skipped",
        "chip notrun",
        "chip error",
    ] {
        assert!(dom.contains(chip), "{chip}");
    }
    // the failing trial is open at the top; every trial sits folded below
    let failing = &sample.entries[sample.planted_missed].name;
    let top = &dom[at("id=\"attention\"")..at("id=\"trials\"")];
    assert!(
        top.contains("<details class=\"trial fails\" open=\"\">") && top.contains(failing.as_str()),
        "{top}"
    );
    // skipped and left-out trials are folded in one group per reason
    assert!(
        top.contains("<details class=\"group skipped\"><summary><span class=\"state\">skipped</span>1 trial(s): no CUDA device"),
        "{top}"
    );
    assert!(top.contains("1 trial(s): heavy: --include-heavy"), "{top}");
    let all = &dom[at("id=\"trials\"")..];
    assert_eq!(all.matches("<details class=\"trial").count(), n);
    assert!(!all.contains(" open=\"\""), "the full list starts folded");
    // contracts down, models across
    let matrix = &dom[at("id=\"matrix\"")..at("id=\"attention\"")];
    // a planted fault found where planted reads as expected, not as a divergence to look at
    let found = &sample.entries[sample.planted_found].name;
    let line = all
        .split("<details")
        .find(|d| d.contains(found.as_str()))
        .unwrap();
    assert!(
        line.contains("expected divergence found at its planted place: layer.2.ffn_out"),
        "{line}"
    );
    for name in ["C-HARNESS-SELF-TEST", "moe-f32", "a3b-q4km"] {
        assert!(matrix.contains(name), "{name} in the matrix: {matrix}");
    }
}

/// A check of a page, given the chromium to render it with.
type Check = fn(&Path);

/// The checks, each ignored with its reason when chromium is missing outside CI.
fn main() -> ExitCode {
    let args = Arguments::from_args();
    let checks: [(&str, Check); 2] = [
        (
            "report_html_renders_in_headless_chromium",
            diff_page_renders,
        ),
        (
            "run_overview_renders_in_headless_chromium",
            run_overview_renders,
        ),
    ];
    let tests = checks
        .into_iter()
        .map(|(name, check)| {
            Trial::ignorable_test(name, move || match chromium() {
                Some(chrome) => {
                    check(&chrome);
                    Ok(Completion::Completed)
                }
                None if std::env::var("CI").is_ok_and(|v| v == "true") => Err(Failed::from(
                    "chromium is not installed, and CI=true: .ci/run must install it",
                )),
                None => Ok(Completion::ignored_with(
                    "chromium not found (apt-get install chromium)",
                )),
            })
        })
        .collect();
    libtest_mimic::run(&args, tests).exit_code()
}
