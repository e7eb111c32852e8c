//! The diff engine on a real trace (fixtures/qwen3moe-tiny/activations-f32.safetensors, a
//! 3-layer MoE run through Hugging Face transformers): planted NaN, Inf, scale drift, route flip,
//! missing stage and shape mismatch are each found at exactly the planted place with the right
//! verdict, in all three on-disk formats; identical and 1e-7-perturbed traces raise no alarm;
//! bad inputs are errors, never panics.

use std::path::{Path, PathBuf};
use std::process::Command;

use falsifier::diff::{ComparedBy, DiffOptions, DiffReport, Side, Verdict, diff};
use falsifier::trace::io::aprt::write_aprt_dir;
use falsifier::trace::io::npy::{write_npy, write_npy_dir};
use falsifier::trace::io::{open_source, read_trace, write_trace};
use falsifier::trace::{Key, Stage, Tensor, TensorData, Trace};

fn base() -> Trace {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/qwen3moe-tiny/activations-f32.safetensors");
    read_trace(&p).unwrap()
}

#[derive(Copy, Clone, Debug)]
enum Fmt {
    Safetensors,
    Npy,
    Aprt,
}

const FORMATS: [Fmt; 3] = [Fmt::Safetensors, Fmt::Npy, Fmt::Aprt];

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("falsifier-difftest-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(fmt: Fmt, trace: &Trace, dir: &Path, side: &str) -> PathBuf {
    match fmt {
        Fmt::Safetensors => {
            let p = dir.join(format!("{side}.safetensors"));
            write_trace(&p, trace).unwrap();
            p
        }
        Fmt::Npy => {
            let p = dir.join(format!("{side}-npy"));
            write_npy_dir(&p, trace).unwrap();
            p
        }
        Fmt::Aprt => {
            let p = dir.join(format!("{side}-aprt"));
            write_aprt_dir(&p, trace).unwrap();
            p
        }
    }
}

/// Write both sides in `fmt`, open them by path (auto-detected) and diff.
fn diff_as(fmt: Fmt, name: &str, reference: &Trace, candidate: &Trace) -> DiffReport {
    let dir = scratch(&format!("{name}-{fmt:?}"));
    let r = open_source(&write(fmt, reference, &dir, "ref")).unwrap();
    let c = open_source(&write(fmt, candidate, &dir, "cand")).unwrap();
    let report = diff(r.as_ref(), c.as_ref(), &DiffOptions::default()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    report
}

/// Keys a diff gives a row: every key but `tokens` (the prompt, checked but not judged).
fn stage_count(t: &Trace) -> usize {
    t.tensors
        .keys()
        .filter(|k| k.stage != Stage::Tokens)
        .count()
}

fn f32_mut<'a>(t: &'a mut Trace, key: &str) -> &'a mut Vec<f32> {
    let k: Key = key.parse().unwrap();
    match &mut t.tensors.get_mut(&k).unwrap().data {
        TensorData::F32(v) => v,
        TensorData::I32(_) => panic!("{key} is i32"),
    }
}

/// The planted key is the first divergence with `verdict`; everything before it matches.
fn assert_found(report: &DiffReport, key: &str, verdict: Verdict, what: &str) {
    let k: Key = key.parse().unwrap();
    let first = report
        .first()
        .unwrap_or_else(|| panic!("{what}: no divergence found"));
    assert_eq!(first.key, k, "{what}: first divergence at the wrong place");
    assert_eq!(first.verdict, verdict, "{what}: wrong verdict at {key}");
    assert!(!report.holds, "{what}");
    for r in report.rows.iter().filter(|r| r.key < k) {
        assert_eq!(
            r.verdict,
            Verdict::Match,
            "{what}: {} before the plant",
            r.key
        );
    }
    for r in report.rows.iter().filter(|r| r.key > k) {
        assert_eq!(r.downstream, !r.verdict.is_match(), "{what}: {}", r.key);
    }
}

#[test]
fn identical_traces_hold_in_every_format() {
    let t = base();
    for fmt in FORMATS {
        let report = diff_as(fmt, "same", &t, &t);
        assert!(report.holds, "{fmt:?}: {:?}", report.first());
        assert_eq!(report.rows.len(), stage_count(&t), "{fmt:?}");
        assert!(report.rows.iter().all(|r| r.verdict == Verdict::Match));
        assert_eq!(report.summary().compared, stage_count(&t));
    }
}

/// Counts what the diff tells its progress callback.
#[derive(Default)]
struct CountingProgress {
    total: std::sync::atomic::AtomicU64,
    advanced: std::sync::atomic::AtomicU64,
}

impl falsifier::progress::Progress for CountingProgress {
    fn start(&self, total: u64) {
        self.total
            .fetch_add(total, std::sync::atomic::Ordering::Relaxed);
    }
    fn advance(&self, n: u64) {
        self.advanced
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn progress_is_reported_through_the_callers_callback() {
    use std::sync::atomic::Ordering::Relaxed;
    let t = base();
    let progress = std::sync::Arc::new(CountingProgress::default());
    let opts = DiffOptions {
        progress: Some(progress.clone()),
        ..DiffOptions::default()
    };
    let report = diff(&t, &t, &opts).unwrap();
    assert!(report.holds);
    let rows = report.rows.len() as u64;
    assert_eq!(progress.total.load(Relaxed), rows);
    assert_eq!(progress.advanced.load(Relaxed), rows);
}

#[test]
fn rounding_level_perturbation_raises_no_alarm() {
    let reference = base();
    let mut cand = reference.clone();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for t in cand.tensors.values_mut() {
        if let TensorData::F32(v) = &mut t.data {
            for x in v.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let u = (state >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
                *x = (*x as f64 * (1.0 + (2.0 * u - 1.0) * 1e-7)) as f32;
            }
        }
    }
    for fmt in FORMATS {
        let report = diff_as(fmt, "perturbed", &reference, &cand);
        assert!(report.holds, "{fmt:?}: {:?}", report.first());
        let worst = report
            .rows
            .iter()
            .filter_map(|r| r.rel_l2())
            .fold(0.0, f64::max);
        assert!(worst > 0.0 && worst < 2e-7, "{fmt:?}: worst rel L2 {worst}");
        // calibration from this noise floor proposes thresholds above it, one per f32 stage
        let proposals = falsifier::diff::thresholds::propose(&report, 10.0);
        assert_eq!(proposals.len(), 21, "{fmt:?}");
        for p in &proposals {
            assert!(
                p.proposed >= 10.0 * p.measured && p.proposed >= 1e-7,
                "{p:?}"
            );
            assert!(p.proposed < p.default, "{p:?}");
        }
    }
}

#[test]
fn planted_nan_is_found_where_planted() {
    let reference = base();
    let mut cand = reference.clone();
    f32_mut(&mut cand, "layer.1.ffn_out")[70] = f32::NAN; // position 1, feature 6 of [8, 64]
    for fmt in FORMATS {
        let report = diff_as(fmt, "nan", &reference, &cand);
        assert_found(
            &report,
            "layer.1.ffn_out",
            Verdict::NanCand,
            &format!("{fmt:?}"),
        );
        let row = report.first().unwrap();
        let m = row.metrics.as_ref().unwrap();
        assert_eq!(
            (m.nonfinite_cand.count, m.nonfinite_cand.first),
            (1, Some(70))
        );
        assert_eq!(m.nonfinite_ref.count, 0);
        let at = row.nonfinite_cand_at.unwrap();
        assert_eq!((at.position, at.feature), (Some(1), Some(6)), "{fmt:?}");
        // the row's detail names the place, and says its metrics skip the NaN
        let detail = falsifier::report::row_detail(&report, row);
        assert!(
            detail.contains("1 non-finite") && detail.contains("finite pairs only"),
            "{detail}"
        );
        // over its finite pairs the row would read cosine 1, rel L2 0: no number is given
        assert_eq!(m.cosine, 1.0, "{fmt:?}: the sums leave the NaN out");
        assert_eq!(row.rel_l2(), None);
        assert!(row.finite_metrics().is_none());
        let cos = falsifier::report::metric_text(row, |m| m.cosine, falsifier::report::cos_text);
        assert_eq!(cos, "— (1 non-finite)");
    }
    // without backends (npy) the printed verdict stays neutral; with cpu/cuda backends in the
    // traces' metadata it takes the CPU/GPU names
    let report = diff_as(Fmt::Npy, "nan-names", &reference, &cand);
    assert_eq!(
        report.verdict_name(report.first().unwrap().verdict),
        "NanCand"
    );
    let (mut r2, mut c2) = (reference.clone(), cand.clone());
    r2.meta.backend = "cpu".into();
    c2.meta.backend = "cuda".into();
    let report = diff_as(Fmt::Safetensors, "nan-names", &r2, &c2);
    assert_eq!(
        report.verdict_name(report.first().unwrap().verdict),
        "NanGpu"
    );
    c2.meta.backend = "llama.cpp".into();
    let report = diff_as(Fmt::Safetensors, "nan-names", &r2, &c2);
    assert_eq!(
        report.verdict_name(report.first().unwrap().verdict),
        "NanLlamaCpp"
    );
    // NaN on the reference side, and on both
    let report = diff_as(Fmt::Safetensors, "nanref", &cand, &reference);
    assert_found(&report, "layer.1.ffn_out", Verdict::NanRef, "ref");
    let report = diff_as(Fmt::Safetensors, "nanboth", &cand, &cand);
    assert_found(&report, "layer.1.ffn_out", Verdict::NanBoth, "both");
}

#[test]
fn planted_inf_is_found_and_equal_infinities_are_not() {
    let reference = base();
    let mut cand = reference.clone();
    f32_mut(&mut cand, "layer.0.q_rope")[3] = f32::INFINITY;
    for fmt in FORMATS {
        let report = diff_as(fmt, "inf", &reference, &cand);
        assert_found(
            &report,
            "layer.0.q_rope",
            Verdict::NanCand,
            &format!("{fmt:?}"),
        );
    }
    // the same infinity at the same index on both sides is not a divergence
    let mut both = reference.clone();
    f32_mut(&mut both, "layer.0.q_rope")[3] = f32::INFINITY;
    let report = diff_as(Fmt::Npy, "sameinf", &both, &cand);
    assert!(report.holds, "{:?}", report.first());
    // opposite infinities are
    f32_mut(&mut both, "layer.0.q_rope")[3] = f32::NEG_INFINITY;
    let report = diff_as(Fmt::Npy, "oppinf", &both, &cand);
    assert_found(&report, "layer.0.q_rope", Verdict::NanBoth, "opposite inf");
}

#[test]
fn planted_scale_drift_is_found_where_planted() {
    let reference = base();
    for (key, eps) in [("layer.2.attn_out", 1e-2f32), ("layer.0.attn_probs", 1e-3)] {
        let mut cand = reference.clone();
        f32_mut(&mut cand, key)
            .iter_mut()
            .for_each(|x| *x *= 1.0 + eps);
        for fmt in FORMATS {
            let report = diff_as(fmt, "drift", &reference, &cand);
            assert_found(&report, key, Verdict::Diverge, &format!("{fmt:?} {key}"));
            let rel = report.first().unwrap().rel_l2().unwrap();
            assert!((rel / eps as f64 - 1.0).abs() < 1e-3, "{fmt:?}: {rel}");
        }
    }
}

/// Reference top-k margin of `pos` in `layer` from the fixture's router logits.
fn margin(t: &Trace, layer: usize, pos: usize, k: usize) -> (f64, usize) {
    let logits = t.get(&Key::layer(layer, Stage::RouterLogits)).unwrap();
    let e = logits.shape[1];
    let mut row: Vec<(f32, usize)> = logits.as_f32().unwrap()[pos * e..(pos + 1) * e]
        .iter()
        .copied()
        .zip(0..)
        .collect();
    row.sort_by(|a, b| b.0.total_cmp(&a.0));
    ((row[k - 1].0 - row[k].0) as f64, row[k].1)
}

#[test]
fn planted_route_flip_is_found_with_its_margin() {
    let reference = base();
    let mut cand = reference.clone();
    let key = Key::layer(1, Stage::TopkIds);
    let (m, next) = margin(&reference, 1, 3, 2);
    // position 3 swaps its second expert for the reference's third choice
    if let TensorData::I32(ids) = &mut cand.tensors.get_mut(&key).unwrap().data {
        ids[3 * 2 + 1] = next as i32;
    }
    for fmt in FORMATS {
        let report = diff_as(fmt, "flip", &reference, &cand);
        assert_found(
            &report,
            "layer.1.topk_ids",
            Verdict::RouteFlip,
            &format!("{fmt:?}"),
        );
        let row = report.first().unwrap();
        assert_eq!(row.route_flips.len(), 1);
        let f = &row.route_flips[0];
        assert_eq!(f.position, 3);
        assert!(
            (f.margin.unwrap() - m).abs() < 1e-6,
            "{fmt:?}: {:?} vs {m}",
            f.margin
        );
        assert!(!f.near_tie, "margin {m} is not a near tie");
        // topk_weights and ffn_out skip the flipped position; layer_out compares all
        for (stage, excluded) in [
            (Stage::TopkWeights, 1),
            (Stage::FfnOut, 1),
            (Stage::LayerOut, 0),
        ] {
            let r = report.row(&Key::layer(1, stage)).unwrap();
            assert_eq!(r.excluded_positions, excluded, "{fmt:?} {stage}");
            assert_eq!(r.verdict, Verdict::Match, "{fmt:?} {stage}");
        }
    }
}

#[test]
fn near_tie_flip_is_reported_but_does_not_fail() {
    let mut reference = base();
    let layer = 2;
    let (_, next) = margin(&reference, layer, 5, 2);
    // make the reference's 2nd and 3rd choices at position 5 a near tie
    let e = reference
        .get(&Key::layer(layer, Stage::RouterLogits))
        .unwrap()
        .shape[1];
    let ids = reference
        .get(&Key::layer(layer, Stage::TopkIds))
        .unwrap()
        .as_i32()
        .unwrap()
        .to_vec();
    let second = ids[5 * 2 + 1] as usize;
    let logits = f32_mut(&mut reference, &format!("layer.{layer}.router_logits"));
    logits[5 * e + next] = logits[5 * e + second] - 1e-6;
    let mut cand = reference.clone();
    if let TensorData::I32(ids) = &mut cand
        .tensors
        .get_mut(&Key::layer(layer, Stage::TopkIds))
        .unwrap()
        .data
    {
        ids[5 * 2 + 1] = next as i32;
    }
    let report = diff_as(Fmt::Safetensors, "tie", &reference, &cand);
    let row = report.row(&Key::layer(layer, Stage::TopkIds)).unwrap();
    assert_eq!(row.verdict, Verdict::RouteFlip);
    assert!(row.near_tie && row.route_flips[0].near_tie);
    assert!(report.holds, "a near-tie flip alone does not fail");
    assert_eq!(report.summary().near_tie_flips, 1);
}

#[test]
fn missing_stage_is_found_and_never_passes() {
    let reference = base();
    let mut cand = reference.clone();
    cand.tensors.remove(&Key::layer(2, Stage::KNorm));
    for fmt in FORMATS {
        let report = diff_as(fmt, "missing", &reference, &cand);
        assert_found(
            &report,
            "layer.2.k_norm",
            Verdict::Missing,
            &format!("{fmt:?}"),
        );
        assert_eq!(report.first().unwrap().missing_on, Some(Side::Candidate));
    }
    // missing on the reference side
    let report = diff_as(Fmt::Npy, "missing-ref", &cand, &reference);
    assert_found(&report, "layer.2.k_norm", Verdict::Missing, "ref side");
    assert_eq!(report.first().unwrap().missing_on, Some(Side::Reference));
}

/// An APRT dump as the story's engine writes it: every stage but `tokens`.
fn without_tokens(t: &Trace) -> Trace {
    let mut t = t.clone();
    t.tensors.remove(&Key::model(Stage::Tokens));
    t.meta.tokens.clear();
    t
}

#[test]
fn a_side_without_tokens_is_noted_never_judged() {
    let reference = base();
    let dir = scratch("no-tokens");
    let r = open_source(&write(Fmt::Safetensors, &reference, &dir, "ref")).unwrap();
    // an identical dump without tokens holds, and says the prompt was not checked
    let same = open_source(&write(Fmt::Aprt, &without_tokens(&reference), &dir, "same")).unwrap();
    let report = diff(r.as_ref(), same.as_ref(), &DiffOptions::default()).unwrap();
    assert!(report.holds, "{:?}", report.first());
    assert!(report.row(&Key::model(Stage::Tokens)).is_none());
    assert!(
        report
            .notes
            .iter()
            .any(|n| n
                .contains("the candidate carries no tokens, so the two prompts were not checked")),
        "{:?}",
        report.notes
    );
    let text = falsifier::report::terminal::render(&report, false, None);
    assert!(
        text.contains("note: the candidate carries no tokens, so the two prompts were not checked"),
        "{text}"
    );
    // a NaN planted at layer.1.ffn_norm is the first divergence, not something downstream
    let mut cand = without_tokens(&reference);
    f32_mut(&mut cand, "layer.1.ffn_norm")[3] = f32::NAN;
    let c = open_source(&write(Fmt::Aprt, &cand, &dir, "cand")).unwrap();
    let report = diff(r.as_ref(), c.as_ref(), &DiffOptions::default()).unwrap();
    assert_found(
        &report,
        "layer.1.ffn_norm",
        Verdict::NanCand,
        "aprt without tokens",
    );
    // and the same with the sides swapped, both in APRT
    let r2 = open_source(&write(Fmt::Aprt, &reference, &dir, "ref2")).unwrap();
    let report = diff(c.as_ref(), r2.as_ref(), &DiffOptions::default()).unwrap();
    assert_found(&report, "layer.1.ffn_norm", Verdict::NanRef, "swapped");
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("the reference carries no tokens"))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn different_prompts_are_bad_input() {
    let reference = base();
    let mut cand = reference.clone();
    let key = Key::model(Stage::Tokens);
    let mut ids = match &reference.get(&key).unwrap().data {
        TensorData::I32(v) => v.clone(),
        TensorData::F32(_) => panic!("tokens are i32"),
    };
    ids[2] += 1;
    ids[5] += 7;
    let n = ids.len();
    cand.insert(key, Tensor::i32(vec![n], ids.clone()));
    cand.meta.tokens = ids.iter().map(|&t| t as u32).collect();
    for fmt in FORMATS {
        let dir = scratch(&format!("prompts-{fmt:?}"));
        let r = open_source(&write(fmt, &reference, &dir, "ref")).unwrap();
        let c = open_source(&write(fmt, &cand, &dir, "cand")).unwrap();
        let e = diff(r.as_ref(), c.as_ref(), &DiffOptions::default()).unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.kind, falsifier::ErrorKind::Input, "{fmt:?}: {msg}");
        assert!(msg.contains("the traces are of different prompts"), "{msg}");
        assert!(msg.contains("differ at 2 position(s)"), "{msg}");
        assert!(
            msg.contains(&format!(
                "position 2: reference {}, candidate {}",
                ids[2] - 1,
                ids[2]
            )),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // the CLI: exit 2, the message on stderr
    let dir = scratch("prompts-cli");
    let r = write(Fmt::Safetensors, &reference, &dir, "ref");
    let c = write(Fmt::Safetensors, &cand, &dir, "cand");
    let out = Command::new(env!("CARGO_BIN_EXE_falsifier"))
        .args(["diff", r.to_str().unwrap(), c.to_str().unwrap()])
        .arg("--report-dir")
        .arg(dir.join("report"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the traces are of different prompts"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn different_model_files_are_warned_of_in_every_format() {
    use falsifier::report::{ReportContext, html, json, markdown, terminal};
    let mut reference = base();
    reference.meta.model = "a.gguf".into();
    reference.meta.model_sha256 = "ab".repeat(32);
    let mut cand = reference.clone();
    let report = diff(&reference, &cand, &DiffOptions::default()).unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    cand.meta.model = "b.safetensors".into();
    cand.meta.model_sha256 = "cd".repeat(32);
    // written and read back, as `falsifier diff` sees them: a warning, not a refusal
    let dir = scratch("models");
    let r = open_source(&write(Fmt::Safetensors, &reference, &dir, "ref")).unwrap();
    let c = open_source(&write(Fmt::Safetensors, &cand, &dir, "cand")).unwrap();
    let report = diff(r.as_ref(), c.as_ref(), &DiffOptions::default()).unwrap();
    assert!(report.holds);
    let want = "the traces are of different model files: reference a.gguf (sha256 abababababab…), candidate b.safetensors (sha256 cdcdcdcdcdcd…)";
    assert_eq!(report.warnings.len(), 1);
    assert!(
        report.warnings[0].starts_with(want),
        "{:?}",
        report.warnings
    );
    let ctx = ReportContext::new("test");
    let text = terminal::render(&report, false, None);
    assert!(text.contains(&format!("warning: {want}")), "{text}");
    let md = markdown::render(&report, &ctx);
    assert!(md.contains(&format!("**warning:** {want}")), "{md}");
    assert!(html::render(&report, &ctx).contains("different model files"));
    let js: serde_json::Value =
        serde_json::from_str(&json::to_string(&report, &ctx).unwrap()).unwrap();
    assert!(
        js["warnings"][0].as_str().unwrap().starts_with(want),
        "{js}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shape_mismatch_is_found() {
    let reference = base();
    let mut cand = reference.clone();
    let key = Key::layer(0, Stage::AttnProbs);
    // one key position fewer: [4, 8, 7]
    let v: Vec<f32> = reference.get(&key).unwrap().as_f32().unwrap()[..4 * 8 * 7].to_vec();
    cand.insert(key, Tensor::f32(vec![4, 8, 7], v));
    for fmt in FORMATS {
        let report = diff_as(fmt, "shape", &reference, &cand);
        assert_found(
            &report,
            "layer.0.attn_probs",
            Verdict::ShapeMismatch,
            &format!("{fmt:?}"),
        );
    }
    // same element count, different shape: a mismatch when both sides carry shapes
    let mut cand = reference.clone();
    let v = reference.get(&key).unwrap().as_f32().unwrap().to_vec();
    cand.insert(key, Tensor::f32(vec![4, 64], v));
    let report = diff_as(Fmt::Npy, "reshape", &reference, &cand);
    assert_found(
        &report,
        "layer.0.attn_probs",
        Verdict::ShapeMismatch,
        "reshape",
    );
    // APRT has no shapes: compared by element count, and the report says so
    let report = diff_as(Fmt::Aprt, "reshape", &reference, &cand);
    assert!(report.holds);
    let row = report.row(&key).unwrap();
    assert_eq!(row.compared_by, ComparedBy::ElementCount);
    assert!(
        row.notes.iter().any(|n| n.contains("element count")),
        "{:?}",
        row.notes
    );
}

#[test]
fn mixed_formats_borrow_the_shaped_sides_positions() {
    let reference = base();
    let mut cand = reference.clone();
    // attn_probs [4, 8, 8]: head 2, query 5, key 3
    let flat = 2 * 64 + 5 * 8 + 3;
    f32_mut(&mut cand, "layer.2.attn_probs")[flat] = f32::NAN;
    let dir = scratch("mixed");
    let r = open_source(&write(Fmt::Safetensors, &reference, &dir, "ref")).unwrap();
    let c = open_source(&write(Fmt::Aprt, &cand, &dir, "cand")).unwrap();
    let opts = DiffOptions {
        labels: Some(("cpu".into(), "cuda".into())),
        ..DiffOptions::default()
    };
    let report = diff(r.as_ref(), c.as_ref(), &opts).unwrap();
    assert_found(&report, "layer.2.attn_probs", Verdict::NanCand, "mixed");
    let row = report.first().unwrap();
    assert_eq!(report.verdict_name(row.verdict), "NanGpu");
    assert_eq!(row.compared_by, ComparedBy::ElementCount);
    let at = row.nonfinite_cand_at.unwrap();
    assert_eq!(
        (at.head, at.position, at.feature),
        (Some(2), Some(5), Some(3))
    );
    // both sides APRT: positions come from the token count
    let r2 = open_source(&write(Fmt::Aprt, &reference, &dir, "ref")).unwrap();
    let report = diff(r2.as_ref(), c.as_ref(), &opts).unwrap();
    let at = report.first().unwrap().nonfinite_cand_at.unwrap();
    assert_eq!(
        (at.head, at.position, at.feature),
        (Some(2), Some(5), Some(3))
    );
    // the in-memory source gives the same answer without writing anything
    let report = diff(&reference, &cand, &opts).unwrap();
    assert_found(&report, "layer.2.attn_probs", Verdict::NanCand, "memory");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn comparing_nothing_fails() {
    let reference = base();
    let mut a = Trace::default();
    let mut b = Trace::default();
    let k0 = Key::layer(0, Stage::AttnNorm);
    let k1 = Key::layer(1, Stage::AttnNorm);
    a.insert(k0, reference.get(&k0).unwrap().clone());
    b.insert(k1, reference.get(&k1).unwrap().clone());
    let report = diff(&a, &b, &DiffOptions::default()).unwrap();
    assert!(!report.holds);
    assert_eq!(report.summary().compared, 0);
    let report = diff(
        &Trace::default(),
        &Trace::default(),
        &DiffOptions::default(),
    )
    .unwrap();
    assert!(!report.holds && report.first().is_none());
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("nothing was compared"))
    );
}

/// Diffing `bad` against a good npy directory is an error naming `needle`, never a panic.
fn assert_bad_npy(name: &str, setup: impl Fn(&Path), needle: &str) {
    let reference = base();
    let dir = scratch(&format!("bad-{name}"));
    let good = write(Fmt::Npy, &reference, &dir, "ref");
    let bad = write(Fmt::Npy, &reference, &dir, "cand");
    setup(&bad);
    let result = open_source(&bad)
        .and_then(|c| {
            let r = open_source(&good)?;
            diff(r.as_ref(), c.as_ref(), &DiffOptions::default())
        })
        .map(|_| ());
    let err = result.expect_err(name).to_string();
    assert!(err.contains(needle), "{name}: {err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    assert_bad_npy(
        "empty",
        |d| {
            write_npy(
                &d.join("layer.0.q_proj.npy"),
                &[0],
                &TensorData::F32(vec![]),
            )
            .unwrap()
        },
        "empty tensor",
    );
    assert_bad_npy(
        "dtype",
        |d| {
            write_npy(
                &d.join("layer.0.q_proj.npy"),
                &[2],
                &TensorData::I32(vec![1, 2]),
            )
            .unwrap()
        },
        "dtype mismatch",
    );
    assert_bad_npy(
        "twice",
        |d| {
            std::fs::copy(
                d.join("layer.1.ffn_out.npy"),
                d.join("layer.01.ffn_out.npy"),
            )
            .unwrap();
        },
        "present twice",
    );
    assert_bad_npy(
        "truncated",
        |d| {
            let p = d.join("logits.npy");
            let b = std::fs::read(&p).unwrap();
            std::fs::write(&p, &b[..b.len() - 1]).unwrap();
        },
        "logits.npy: at byte",
    );
    assert_bad_npy(
        "unreadable",
        |d| {
            let p = d.join("logits.npy");
            std::fs::remove_file(&p).unwrap();
            std::os::unix::fs::symlink(d.join("does-not-exist"), &p).unwrap();
        },
        "logits.npy",
    );
    assert_bad_npy(
        "ids",
        |d| {
            write_npy(
                &d.join("layer.0.topk_ids.npy"),
                &[8, 2],
                &TensorData::F32(vec![0.5; 16]),
            )
            .unwrap()
        },
        "not an integer id",
    );
    // APRT: count disagreeing with the file size, header layer disagreeing with the directory
    let reference = base();
    let dir = scratch("bad-aprt");
    let p = write(Fmt::Aprt, &reference, &dir, "cand");
    let f = p.join("layer-1/ffn_out.bin");
    let mut b = std::fs::read(&f).unwrap();
    b[8] = b[8].wrapping_add(1);
    std::fs::write(&f, &b).unwrap();
    let err = open_source(&p).err().unwrap().to_string();
    assert!(err.contains("ffn_out.bin: at byte 8"), "{err}");
    b[8] = b[8].wrapping_sub(1);
    b[4] = 2;
    std::fs::write(&f, &b).unwrap();
    let err = open_source(&p).err().unwrap().to_string();
    assert!(err.contains("layer 2") && err.contains("layer 1"), "{err}");
    std::fs::write(&f, b"APR").unwrap();
    assert!(
        open_source(&p)
            .err()
            .unwrap()
            .to_string()
            .contains("truncated")
    );
    // a safetensors header naming one key twice (literally, and through two spellings)
    for (a, b) in [("logits", "logits"), ("layer.1.q_proj", "layer.01.q_proj")] {
        // one tensor kept by the parser (same name) or two laid out back to back
        let (second, data) = if a == b { (0, 8) } else { (8, 16) };
        let mut hdr = format!(
            r#"{{"{a}":{{"dtype":"F32","shape":[2],"data_offsets":[0,8]}},"{b}":{{"dtype":"F32","shape":[2],"data_offsets":[{second},{data}]}}}}"#
        );
        while hdr.len() % 8 != 0 {
            hdr.push(' ');
        }
        let mut bytes = (hdr.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(hdr.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, data));
        let p = dir.join("dup.safetensors");
        std::fs::write(&p, bytes).unwrap();
        let err = open_source(&p).err().expect(b).to_string();
        assert!(
            err.contains("present twice") && err.contains("dup.safetensors"),
            "{err}"
        );
    }
    // not a trace at all
    assert!(open_source(&dir.join("nope")).is_err());
    std::fs::write(dir.join("junk.safetensors"), b"\x01\x02").unwrap();
    assert!(open_source(&dir.join("junk.safetensors")).is_err());
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    assert!(open_source(&dir.join("empty")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cli_exit_codes_and_reports() {
    let exe = env!("CARGO_BIN_EXE_falsifier");
    let reference = base();
    let mut cand = reference.clone();
    f32_mut(&mut cand, "layer.1.ffn_out")[0] = f32::NAN;
    let dir = scratch("cli");
    let r = write(Fmt::Safetensors, &reference, &dir, "ref");
    let c = write(Fmt::Npy, &cand, &dir, "cand");
    let run = |args: &[&str]| {
        Command::new(exe)
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let rd = dir.join("same");
    let out = run(&[
        "diff",
        r.to_str().unwrap(),
        r.to_str().unwrap(),
        "--report-dir",
        rd.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rd = dir.join("nan");
    let out = run(&[
        "diff",
        r.to_str().unwrap(),
        c.to_str().unwrap(),
        "--report-dir",
        rd.to_str().unwrap(),
        "--labels",
        "cpu,cuda",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("layer 1, ffn_out: NanGpu"), "{stdout}");
    assert!(!stdout.contains('\x1b'), "no colour when piped");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rd.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["schema"], "falsifier-report/1");
    assert_eq!(json["holds"], false);
    assert_eq!(json["first_divergence"]["layer"], 1);
    assert_eq!(json["first_divergence"]["stage"], "ffn_out");
    assert_eq!(json["first_divergence"]["verdict"], "NanGpu");
    // the NaN row: no cosine, error or max over its finite pairs (they read as a perfect match)
    // anywhere, but a dash with the count
    let nan_row = json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "layer.1.ffn_out")
        .unwrap();
    for k in ["cosine", "nmse", "rel_l2", "max_abs"] {
        assert!(nan_row[k].is_null(), "{k}: {nan_row}");
    }
    assert_eq!(nan_row["nonfinite"], 1);
    assert_eq!(nan_row["nonfinite_cand"]["count"], 1);
    let first_line = stdout.lines().find(|l| l.contains("first")).unwrap();
    assert!(
        first_line.contains("1 non-finite") && !first_line.contains("cos 1"),
        "{first_line}"
    );
    for page in ["report.md", "report.html"] {
        let text = std::fs::read_to_string(rd.join(page)).unwrap();
        assert!(text.contains("— (1 non-finite)"), "{page}: {text}");
    }
    assert_eq!(
        json["rows"].as_array().unwrap().len(),
        stage_count(&reference)
    );
    assert!(json["falsifiers"].as_array().unwrap().is_empty());
    let md = std::fs::read_to_string(rd.join("report.md")).unwrap();
    assert!(
        md.contains("first leaves the reference (cpu) at layer 1, ffn_out: NanGpu"),
        "{md}"
    );
    assert!(
        std::fs::read_to_string(rd.join("report.html"))
            .unwrap()
            .contains("NanGpu")
    );
    // a threshold override turns a drift into a match
    let mut drift = reference.clone();
    f32_mut(&mut drift, "logits")
        .iter_mut()
        .for_each(|x| *x *= 1.01);
    let d = write(Fmt::Safetensors, &drift, &dir, "drift");
    let rd = dir.join("drift");
    let args = [
        "diff",
        r.to_str().unwrap(),
        d.to_str().unwrap(),
        "--report-dir",
        rd.to_str().unwrap(),
    ];
    assert_eq!(run(&args).status.code(), Some(1));
    let mut with = args.to_vec();
    with.extend(["--threshold", "logits=2e-2"]);
    assert_eq!(run(&with).status.code(), Some(0));
    // bad input: exit 2 with the file named
    let out = run(&["diff", r.to_str().unwrap(), "/nonexistent/trace"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/trace"));
    let out = run(&[
        "diff",
        r.to_str().unwrap(),
        r.to_str().unwrap(),
        "--threshold",
        "bogus=1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn origin_from_attribution_is_rendered() {
    use falsifier::diff::Origin;
    use falsifier::report::{ReportContext, headline, json, markdown};
    let reference = base();
    let mut cand = reference.clone();
    f32_mut(&mut cand, "layer.2.layer_out")
        .iter_mut()
        .for_each(|x| *x *= 1.05);
    let mut report = diff(&reference, &cand, &DiffOptions::default()).unwrap();
    let ctx = ReportContext::new("test");
    assert!(
        json::to_json(&report, &ctx)
            .first_divergence
            .unwrap()
            .origin
            .is_none()
    );
    report.origin = Some(Origin {
        key: "layer.2.ffn_out".parse().unwrap(),
        verdict: Verdict::Diverge,
        own_rel_l2: Some(0.05),
    });
    let j = json::to_json(&report, &ctx);
    let first = j.first_divergence.unwrap();
    assert_eq!(first.key, "layer.2.layer_out");
    let origin = first.origin.unwrap();
    assert_eq!((origin.layer, origin.stage.as_str()), (Some(2), "ffn_out"));
    assert_eq!(origin.own_rel_l2, Some(0.05));
    assert!(headline(&report).contains("origin at layer.2.ffn_out"));
    assert!(markdown::render(&report, &ctx).contains("origin at layer.2.ffn_out"));
    let html = falsifier::report::html::render(&report, &ctx);
    assert!(html.contains("c num origin"), "origin cell marked");
}

/// Corrupted files (truncated anywhere, bytes flipped in headers and payloads) give a diff or an
/// error, never a panic.
#[test]
fn corrupted_inputs_never_panic() {
    let mut small = Trace::default();
    let full = base();
    for k in ["tokens", "layer.0.attn_probs", "layer.0.topk_ids", "logits"] {
        let key: Key = k.parse().unwrap();
        small.insert(key, full.get(&key).unwrap().clone());
    }
    let dir = scratch("fuzz");
    let good = write(Fmt::Safetensors, &small, &dir, "good");
    let reference = open_source(&good).unwrap();
    let mut state = 0x1234_5678_9ABC_DEF1u64;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut outcomes = [0usize; 2];
    for fmt in FORMATS {
        let src = write(fmt, &small, &dir, &format!("src-{fmt:?}"));
        let files: Vec<PathBuf> = match fmt {
            Fmt::Safetensors => vec![src.clone()],
            _ => walk(&src),
        };
        for (fi, file) in files.iter().enumerate() {
            let orig = std::fs::read(file).unwrap();
            for trial in 0..40 {
                let mut bytes = orig.clone();
                match trial % 3 {
                    0 => bytes.truncate(rnd() as usize % (orig.len() + 1)),
                    1 => {
                        // flip a byte in the first 160 (headers)
                        let i = rnd() as usize % orig.len().min(160);
                        bytes[i] ^= 1 << (rnd() % 8);
                    }
                    _ => {
                        let i = rnd() as usize % orig.len();
                        bytes[i] = rnd() as u8;
                    }
                }
                std::fs::write(file, &bytes).unwrap();
                let outcome = open_source(&src)
                    .and_then(|c| diff(reference.as_ref(), c.as_ref(), &DiffOptions::default()));
                outcomes[outcome.is_ok() as usize] += 1;
                if let Err(e) = outcome {
                    assert!(!e.to_string().is_empty(), "{fmt:?} file {fi} trial {trial}");
                }
            }
            std::fs::write(file, &orig).unwrap();
        }
    }
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The shared-expert stages of the vocabulary (qwen2moe) are read and compared like any other:
/// the golden qwen2moe trace from transformers holds them at every layer, diffs against itself
/// as Match, and against its Q8_0 twin gives each of them a row of its own.
#[test]
fn shared_expert_stages_are_read_and_compared() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/qwen2moe-tiny");
    let f32 = open_source(&dir.join("activations-f32.safetensors")).unwrap();
    let q8 = open_source(&dir.join("activations-q8_0.safetensors")).unwrap();
    let same = diff(f32.as_ref(), f32.as_ref(), &DiffOptions::default()).unwrap();
    assert!(same.holds, "{:?}", same.first());
    let report = diff(f32.as_ref(), q8.as_ref(), &DiffOptions::default()).unwrap();
    for layer in 0..2 {
        for stage in [Stage::FfnSharedGate, Stage::FfnSharedOut] {
            let key = Key::layer(layer, stage);
            let row = report.rows.iter().find(|r| r.key == key);
            let row = row.unwrap_or_else(|| panic!("no row for {key}"));
            let want: &[usize] = if stage == Stage::FfnSharedGate {
                &[14, 1]
            } else {
                &[14, 64]
            };
            assert_eq!(row.shape_ref.as_deref(), Some(want), "{key}");
            assert!(
                row.rel_l2().is_some_and(|e| e > 0.0 && e < 0.1),
                "{key}: {row:?}"
            );
        }
    }
    // forward order: the shared expert's stages sit between the routing and ffn_out
    let order: Vec<Stage> = report
        .rows
        .iter()
        .filter(|r| r.key.layer == Some(0))
        .map(|r| r.key.stage)
        .collect();
    let at = |s: Stage| order.iter().position(|&x| x == s).unwrap();
    assert!(at(Stage::TopkWeights) < at(Stage::FfnSharedGate));
    assert!(at(Stage::FfnSharedOut) < at(Stage::FfnOut));
}
