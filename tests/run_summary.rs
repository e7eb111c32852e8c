//! The combined report of a run counts every trial by one state, alike in report.json,
//! report.md and report.html: a skipped or left-out trial is never a pass, `--require-gpu` makes
//! a skipped GPU trial a failure everywhere, and a planted-fault trial's own report says that the
//! expected divergence was found (or, when it was not, fails).

#[allow(dead_code)] // report_html uses other parts
#[path = "common/run_entries.rs"]
mod common;

use std::path::Path;

use common::{Sample, one_of_each, report_dir, scratch};
use falsifier::report::Environment;
use falsifier::runner::summary::{self, Counts, Entry};
use serde_json::Value;

struct Written {
    json: Value,
    md: String,
    html: String,
}

fn write(dir: &Path, entries: &[Entry], require_gpu: bool) -> Written {
    summary::write(
        dir,
        entries,
        "falsifier run contracts",
        &Environment::default(),
        require_gpu,
    )
    .unwrap();
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    Written {
        json: serde_json::from_str(&read("report.json")).unwrap(),
        md: read("report.md"),
        html: read("report.html"),
    }
}

/// Per trial, report.json's `trials[].state`, `falsifiers[].state` and `falsifiers[].holds`
/// agree, and the summary counts are the counts of those states.
fn assert_one_truth(json: &Value) {
    let trials = json["trials"].as_array().unwrap();
    let records = json["falsifiers"].as_array().unwrap();
    assert_eq!(trials.len(), records.len());
    let mut by_state = std::collections::BTreeMap::<String, u64>::new();
    for (t, r) in trials.iter().zip(records) {
        let state = t["state"].as_str().unwrap();
        assert_eq!(r["state"], state, "{t}");
        assert_eq!(r["holds"], state == "holds", "{t}");
        if state != "holds" {
            assert!(r["level"].is_null(), "{r}");
        }
        *by_state.entry(state.to_string()).or_default() += 1;
    }
    let s = &json["summary"];
    let n = |k: &str| by_state.get(k).copied().unwrap_or(0);
    assert_eq!(s["trials"], trials.len() as u64);
    assert_eq!(s["holds"], n("holds"));
    assert_eq!(s["fails"], n("FAILS"));
    assert_eq!(s["skipped"], n("skipped"));
    assert_eq!(s["not_run"], n("not run"));
    assert_eq!(s["errors"], n("ERROR"));
    assert_eq!(
        json["holds"],
        n("FAILS") + n("ERROR") == 0 && n("holds") > 0
    );
    assert_eq!(json["all_hold"], n("holds") == trials.len() as u64);
}

#[test]
fn every_summary_counts_trials_by_one_state() {
    let root = scratch("run-summary");
    let Sample {
        entries,
        no_device,
        heavy,
        planted_missed,
        error,
        ..
    } = one_of_each(&root.join("trials"));

    // skipped and left-out trials are counted apart, never as holds
    let w = write(&root.join("plain"), &entries, false);
    assert_one_truth(&w.json);
    let sentence = "6 trial(s): 2 hold, 1 fail, 1 skipped (no CUDA device), 1 not run (heavy: --include-heavy), 1 error(s)";
    assert_eq!(Counts::of(&entries, false).sentence(), sentence);
    assert_eq!(w.json["summary"]["skipped_by_reason"]["no CUDA device"], 1);
    assert_eq!(
        w.json["summary"]["not_run_by_reason"]["heavy: --include-heavy"],
        1
    );
    let t = &w.json["trials"];
    assert_eq!(t[no_device]["state"], "skipped");
    assert_eq!(t[no_device]["reason"], "no CUDA device");
    assert_eq!(t[heavy]["state"], "not run");
    assert_eq!(t[heavy]["reason"], "heavy: --include-heavy");
    assert!(
        t[heavy]["detail"]
            .as_str()
            .unwrap()
            .contains("--include-heavy")
    );
    assert_eq!(t[planted_missed]["state"], "FAILS");
    assert_eq!(t[error]["state"], "ERROR");
    for page in [&w.md, &w.html] {
        assert!(page.contains(sentence), "{page}");
        assert!(page.contains("SOME DO NOT HOLD"));
        assert!(!page.contains("trial(s) hold"), "{page}");
    }
    assert!(w.md.contains(&format!(
        "- `{}`: skipped (no CUDA device)",
        entries[no_device].name
    )));

    // --require-gpu: the skipped GPU trial fails, in every format alike
    let w = write(&root.join("require-gpu"), &entries, true);
    assert_one_truth(&w.json);
    let sentence = "6 trial(s): 2 hold, 2 fail, 1 not run (heavy: --include-heavy), 1 error(s)";
    assert_eq!(Counts::of(&entries, true).sentence(), sentence);
    assert_eq!(w.json["trials"][no_device]["state"], "FAILS");
    assert_eq!(w.json["falsifiers"][no_device]["holds"], false);
    assert!(
        w.json["trials"][no_device]["detail"]
            .as_str()
            .unwrap()
            .starts_with("--require-gpu")
    );
    let gpu = &entries[no_device].name;
    assert!(w.md.contains(&format!("### `{gpu}` (FAILS)")), "{}", w.md);
    assert!(w.md.contains(sentence) && w.html.contains(sentence));
    assert!(w.html.contains("--require-gpu: a GPU trial must run"));

    // nothing fails, but not everything ran: holds, yet never "all hold"
    let passing: Vec<Entry> = [0, 1, no_device, heavy]
        .iter()
        .map(|&i| entries[i].clone())
        .collect();
    let w = write(&root.join("partial"), &passing, false);
    assert_one_truth(&w.json);
    assert_eq!(w.json["holds"], true);
    assert_eq!(w.json["all_hold"], false);
    let sentence = "4 trial(s): 2 hold, 0 fail, 1 skipped (no CUDA device), 1 not run (heavy: --include-heavy); none fails, but not all ran.";
    assert!(w.md.contains(sentence), "{}", w.md);
    assert!(w.html.contains(sentence) && w.html.contains("NOT ALL RAN"));

    // only when every trial ran and held
    let w = write(&root.join("all"), &entries[..2], false);
    assert_one_truth(&w.json);
    assert_eq!(w.json["all_hold"], true);
    assert!(w.md.contains("All 2 trial(s) hold."));
    assert!(w.html.contains("All 2 trial(s) hold.") && w.html.contains("badge holds"));
}

#[test]
fn planted_fault_trial_report_says_expected_divergence() {
    let root = scratch("run-summary-planted");
    let sample = one_of_each(&root);
    let read = |i: usize, f: &str| {
        std::fs::read_to_string(report_dir(&sample.entries[i]).join(f)).unwrap()
    };

    // found at its planted place: the trial holds, and its own report says so
    let md = read(sample.planted_found, "report.md");
    assert!(
        md.contains("Expected divergence found at its planted place (layer.2.ffn_out)."),
        "{md}"
    );
    assert!(
        md.contains("**EXPECTED DIVERGENCE**") && !md.contains("**FAILS**"),
        "{md}"
    );
    let html = read(sample.planted_found, "report.html");
    assert!(html.contains("badge expected\">EXPECTED DIVERGENCE<"));
    assert!(!html.contains("badge fails"));
    let json: Value = serde_json::from_str(&read(sample.planted_found, "report.json")).unwrap();
    assert_eq!(json["planted"]["found"], true);
    assert_eq!(json["planted"]["expected"], "layer.2.ffn_out");
    assert!(
        json["headline"]
            .as_str()
            .unwrap()
            .starts_with("Expected divergence found")
    );
    assert_eq!(json["falsifiers"][0]["holds"], true);

    // found elsewhere: it fails, in its own report too
    let md = read(sample.planted_missed, "report.md");
    assert!(md.contains("**FAILS**"), "{md}");
    assert!(
        md.contains("The planted fault was not found where expected"),
        "{md}"
    );
    let html = read(sample.planted_missed, "report.html");
    assert!(html.contains("badge fails\">FAILS<"));
    let json: Value = serde_json::from_str(&read(sample.planted_missed, "report.json")).unwrap();
    assert_eq!(json["planted"]["found"], false);
    assert_eq!(json["falsifiers"][0]["holds"], false);

    // a clean trial's report is judged by its diff alone
    let json: Value = serde_json::from_str(&read(sample.clean, "report.json")).unwrap();
    assert!(json["planted"].is_null());
    assert!(read(sample.clean, "report.md").contains("**HOLDS**"));
}
