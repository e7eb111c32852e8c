//! Chunked prefill and decode steps through the CPU reference's KV cache (docs/design.md
//! "Backends", "Planted faults"): every schedule gives the full forward's trace bit for bit, on
//! a dense model, MoE, llama with rope_freqs and qwen2moe with its shared expert, with and
//! without the probabilities materialised and with teacher forcing; each cache fault is found
//! at its own layer, stage and position; bad schedules are input errors. Under an f16 KV cache
//! every schedule equals the f16 full forward, which differs from f32 from attn_probs on.

use std::path::{Path, PathBuf};

use falsifier::ErrorKind;
use falsifier::backend::cpu::CpuBackend;
use falsifier::backend::schedule::{KvDtype, SCHEDULE_KEY, step_of_position};
use falsifier::backend::{Backend, Fault, ForwardRequest, Schedule};
use falsifier::diff::{DiffOptions, diff};
use falsifier::trace::plan::CapturePlan;
use falsifier::trace::stage::Key;
use falsifier::trace::tensor::TensorData;
use falsifier::trace::trace::Trace;

/// 11 tokens: odd, so chunks of 2 and 4 leave a short last chunk.
const TOKENS: [u32; 11] = [5, 17, 81, 3, 42, 99, 7, 64, 23, 11, 50];

/// `qwen3-tiny-f32` -> fixtures/qwen3-tiny/qwen3-tiny-f32.gguf
fn fixture(name: &str) -> PathBuf {
    let dir = name.rsplit_once('-').map_or(name, |(d, _)| d);
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(dir)
        .join(format!("{name}.gguf"))
}

fn run(
    model: &str,
    plan: &CapturePlan,
    schedule: Schedule,
    faults: &[Fault],
    teacher: Option<&Trace>,
) -> falsifier::Result<Trace> {
    let mut b = CpuBackend::open(&fixture(model))?;
    b.forward(&ForwardRequest {
        tokens: &TOKENS,
        plan,
        teacher,
        faults,
        schedule,
    })
}

fn bits(d: &TensorData) -> Vec<u32> {
    match d {
        TensorData::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
        TensorData::I32(v) => v.iter().map(|&x| x as u32).collect(),
    }
}

/// Same keys, shapes and bits.
fn assert_identical(full: &Trace, other: &Trace, what: &str) {
    let keys = |t: &Trace| t.tensors.keys().copied().collect::<Vec<Key>>();
    assert_eq!(keys(full), keys(other), "{what}: keys");
    for (key, a) in &full.tensors {
        let b = &other.tensors[key];
        assert_eq!(a.shape, b.shape, "{what}: shape of {key}");
        assert!(bits(&a.data) == bits(&b.data), "{what}: {key} differs");
    }
}

/// The (C, N) pairs every model runs: C = 1, C > T, N = T, N = 0, odd chunk ends.
fn schedules() -> Vec<Schedule> {
    [
        (Some(1), 0),
        (Some(4), 0),
        (Some(20), 0),
        (Some(3), 2),
        (None, 1),
        (Some(2), 5),
        (None, TOKENS.len()),
        (Some(1), TOKENS.len()),
    ]
    .into_iter()
    .map(|(c, n)| Schedule::new(c, n))
    .collect()
}

fn check_model(model: &str) {
    let all = CapturePlan::all();
    // no attn_probs kept: the fused attention path
    let lean = CapturePlan::parse("attn_ctx,layer_out,logits", None).unwrap();
    for plan in [&all, &lean] {
        let full = run(model, plan, Schedule::full(), &[], None).unwrap();
        assert!(!full.meta.extra.contains_key(SCHEDULE_KEY));
        for s in schedules() {
            let what = format!("{model} {s} ({plan})");
            let t = run(model, plan, s, &[], None).unwrap();
            assert_identical(&full, &t, &what);
            assert_eq!(t.meta.extra[SCHEDULE_KEY], s.to_string(), "{what}");
        }
    }
}

#[test]
fn schedules_equal_the_full_forward_dense_qwen3() {
    check_model("qwen3-tiny-f32");
}

#[test]
fn schedules_equal_the_full_forward_moe_quantized() {
    check_model("qwen3moe-tiny-q8_0");
}

#[test]
fn schedules_equal_the_full_forward_llama_rope_freqs() {
    check_model("llama3-tiny-f32");
}

#[test]
fn schedules_equal_the_full_forward_qwen2moe_shared_expert() {
    check_model("qwen2moe-tiny-f32");
}

/// Teacher rows are per position: a scheduled replay equals the full one bit for bit, and the
/// output faults (a NaN at one flat index, a scale drift) land on the same elements.
#[test]
fn teacher_forcing_and_output_faults_under_a_schedule() {
    let model = "qwen3moe-tiny-f32";
    let all = CapturePlan::all();
    let teacher = run("qwen3moe-tiny-q8_0", &all, Schedule::full(), &[], None).unwrap();
    let faults: Vec<Fault> = [
        "nan[37]@layer.1.ffn_out",
        "nan[200]@layer.0.attn_probs",
        "scale_drift[0.01]@layer.2.attn_out",
    ]
    .iter()
    .map(|f| f.parse().unwrap())
    .collect();
    let full = run(model, &all, Schedule::full(), &faults, Some(&teacher)).unwrap();
    for s in [Schedule::new(Some(3), 2), Schedule::new(None, TOKENS.len())] {
        let t = run(model, &all, s, &faults, Some(&teacher)).unwrap();
        assert_identical(&full, &t, &format!("teacher-forced, faulted, {s}"));
    }
}

/// The first divergence of a faulted scheduled run against the clean full forward: its key and
/// the query position of its largest difference, and the first position that differs at all.
fn found(model: &str, fault: &str, s: Schedule) -> (Key, usize, usize) {
    let all = CapturePlan::all();
    let clean = run(model, &all, Schedule::full(), &[], None).unwrap();
    let f: Fault = fault.parse().unwrap();
    let cand = run(model, &all, s, &[f], None).unwrap();
    let report = diff(&clean, &cand, &DiffOptions::default()).unwrap();
    let row = report
        .first()
        .unwrap_or_else(|| panic!("{fault} under {s}: no divergence"));
    let at = row.max_abs_at.and_then(|i| i.position).unwrap();
    let (a, b) = (&clean.tensors[&row.key], &cand.tensors[&row.key]);
    // the row axis: queries for attn_probs [nh, T, T], positions otherwise
    let (outer, t) = if a.shape.len() == 3 && row.key.to_string().ends_with("attn_probs") {
        (a.shape[0], a.shape[1])
    } else {
        (1, a.shape[0])
    };
    let inner = a.shape.iter().product::<usize>() / (outer * t);
    let (x, y) = (bits(&a.data), bits(&b.data));
    let first = (0..t)
        .find(|&p| {
            (0..outer).any(|o| {
                let r = (o * t + p) * inner..(o * t + p + 1) * inner;
                x[r.clone()] != y[r]
            })
        })
        .unwrap();
    (row.key, at, first)
}

#[test]
fn cache_faults_are_found_at_their_layer_stage_and_position() {
    let t = TOKENS.len();
    let last = Schedule::new(None, 1);
    let chunked = Schedule::new(Some(4), 3);
    for model in ["qwen3-tiny-f32", "qwen3moe-tiny-f32"] {
        for layer in [0, 1] {
            let probs: Key = format!("layer.{layer}.attn_probs").parse().unwrap();
            // one decode step: only the last position can differ
            for class in ["kv_stale", "kv_slot_off_by_one"] {
                let f = format!("{class}@{probs}");
                assert_eq!(found(model, &f, last), (probs, t - 1, t - 1), "{model} {f}");
                // every decode step is hit; the first is position T - N
                let (key, _, first) = found(model, &f, chunked);
                assert_eq!((key, first), (probs, t - 3), "{model} {f}");
            }
            // N = T: position 0 is a decode step and the shifted write drops its K/V; its one
            // probability is 1 either way (softmax of one score), so attn_probs first differs
            // at position 1, where the query sees K_1 in slot 0 and an empty slot 1
            let f = format!("kv_slot_off_by_one@{probs}");
            let (key, _, first) = found(model, &f, Schedule::new(None, t));
            assert_eq!((key, first), (probs, 1), "{model} {f}");
            // the second chunk (positions 4..8) does not see the first
            let f = format!("chunk_mask@{probs}");
            let (key, at, first) = found(model, &f, chunked);
            assert_eq!((key, first), (probs, 4), "{model} {f}");
            assert!((4..8).contains(&at), "{model} {f}: {at}");
            // a one-position second chunk pins the position
            let f = format!("chunk_mask@{probs}");
            assert_eq!(
                found(model, &f, Schedule::new(Some(8), 2)),
                (probs, 8, 8),
                "{model} {f}"
            );
            for stage in ["q_rope", "k_rope"] {
                let key: Key = format!("layer.{layer}.{stage}").parse().unwrap();
                let f = format!("rope_pos_reset@{key}");
                assert_eq!(found(model, &f, last), (key, t - 1, t - 1), "{model} {f}");
                let (k, _, first) = found(model, &f, chunked);
                assert_eq!((k, first), (key, 4), "{model} {f}");
            }
        }
    }
}

#[test]
fn cache_faults_that_cannot_fire_and_bad_schedules_are_input_errors() {
    let all = CapturePlan::all();
    let model = "qwen3-tiny-f32";
    let err = |s: Schedule, f: &[Fault]| run(model, &all, s, f, None).unwrap_err();
    let stale: Fault = "kv_stale@layer.0.attn_probs".parse().unwrap();
    let e = err(Schedule::full(), &[stale]);
    assert_eq!(e.kind, ErrorKind::Input);
    assert!(e.to_string().contains("at least one decode step"), "{e}");
    let mask: Fault = "chunk_mask@layer.1.attn_probs".parse().unwrap();
    let e = err(Schedule::new(Some(4), 9), &[mask]);
    assert!(e.to_string().contains("two prefill chunks"), "{e}");
    let e = err(Schedule::new(None, TOKENS.len() + 1), &[]);
    assert_eq!(e.kind, ErrorKind::Input);
    assert!(e.to_string().contains("12 decode steps"), "{e}");
    let e = err(Schedule::new(Some(0), 0), &[]);
    assert!(e.to_string().contains("at least 1 token"), "{e}");
}

#[test]
fn reports_name_the_step_of_a_position() {
    let all = CapturePlan::all();
    let model = "qwen3-tiny-f32";
    let full = run(model, &all, Schedule::full(), &[], None).unwrap();
    let f: Fault = "kv_stale@layer.1.attn_probs".parse().unwrap();
    let cand = run(model, &all, Schedule::new(Some(4), 3), &[f], None).unwrap();
    let report = diff(&full, &cand, &DiffOptions::default()).unwrap();
    assert_eq!(report.position_text(9), "position 9, decode step 1");
    assert_eq!(
        report.position_text(2),
        "position 2, prefill chunk 0 (positions 0..4)"
    );
    let plain = diff(&full, &full, &DiffOptions::default()).unwrap();
    assert_eq!(plain.position_text(9), "position 9");
    // a chunk as long as the prompt is one step: nothing to name
    let one = run(model, &all, Schedule::new(Some(64), 0), &[], None).unwrap();
    let report = diff(&full, &one, &DiffOptions::default()).unwrap();
    assert_eq!(report.position_text(9), "position 9");
    let s = Schedule::new(Some(4), 3).to_string();
    assert_eq!(step_of_position(&s, 11, 9).unwrap(), "decode step 1");
    assert_eq!(
        step_of_position(&s, 11, 5).unwrap(),
        "prefill chunk 1 (positions 4..8)"
    );
}

// ---- the f16 KV cache ----

fn f16(s: Schedule) -> Schedule {
    s.with_kv(KvDtype::F16)
}

fn f32s(t: &Trace, key: &str) -> Vec<f32> {
    match &t.tensors[&key.parse::<Key>().unwrap()].data {
        TensorData::F32(v) => v.clone(),
        TensorData::I32(_) => panic!("{key} is i32"),
    }
}

/// Under an f16 cache every schedule still equals its own full forward bit for bit (the cache
/// rounds K/V the same way whichever step writes them), and traces record the cache type.
fn check_model_f16(model: &str) {
    let all = CapturePlan::all();
    let lean = CapturePlan::parse("attn_ctx,layer_out,logits", None).unwrap();
    for plan in [&all, &lean] {
        let full = run(model, plan, f16(Schedule::full()), &[], None).unwrap();
        assert_eq!(full.meta.extra[SCHEDULE_KEY], "kv=f16");
        for s in schedules() {
            let s = f16(s);
            let what = format!("{model} {s} ({plan})");
            let t = run(model, plan, s, &[], None).unwrap();
            assert_identical(&full, &t, &what);
            assert_eq!(t.meta.extra[SCHEDULE_KEY], s.to_string(), "{what}");
            assert!(s.to_string().ends_with(",kv=f16"), "{what}");
        }
    }
}

#[test]
fn f16_schedules_equal_the_f16_full_forward_dense_qwen3() {
    check_model_f16("qwen3-tiny-f32");
}

#[test]
fn f16_schedules_equal_the_f16_full_forward_moe_quantized() {
    check_model_f16("qwen3moe-tiny-q8_0");
}

/// The cache is storage, not a stage: layer 0's q_rope, k_rope and v_proj are the f32 run's
/// bits, its attn_probs and attn_ctx (which read the rounded cache) are not. With the diff's
/// default thresholds the probabilities stay under theirs (3e-4: rel L2 about 1.1e-4 on these
/// models) and the first divergence is layer 0's attn_ctx (about 2.4e-4 against 1e-4), where
/// the rounded V adds its error.
#[test]
fn f16_cache_differs_from_f32_from_attn_probs_on() {
    let all = CapturePlan::all();
    for model in ["qwen3-tiny-f32", "qwen3moe-tiny-f32"] {
        for s in [Schedule::full(), Schedule::new(Some(3), 2)] {
            let a = run(model, &all, s, &[], None).unwrap();
            let b = run(model, &all, f16(s), &[], None).unwrap();
            let what = format!("{model} {s}");
            for key in ["layer.0.q_rope", "layer.0.k_rope", "layer.0.v_proj"] {
                let k: Key = key.parse().unwrap();
                assert!(
                    bits(&a.tensors[&k].data) == bits(&b.tensors[&k].data),
                    "{what}: {key} differs"
                );
            }
            for key in ["layer.0.attn_probs", "layer.0.attn_ctx", "logits"] {
                let k: Key = key.parse().unwrap();
                assert!(
                    bits(&a.tensors[&k].data) != bits(&b.tensors[&k].data),
                    "{what}: {key} is the same under an f16 cache"
                );
            }
            let report = diff(&a, &b, &DiffOptions::default()).unwrap();
            let first = report.first().map(|r| r.key.to_string());
            assert_eq!(first.as_deref(), Some("layer.0.attn_ctx"), "{what}");
            let rel = |key: &str| {
                let k: Key = key.parse().unwrap();
                report
                    .rows
                    .iter()
                    .find(|r| r.key == k)
                    .unwrap()
                    .rel_l2()
                    .unwrap()
            };
            let (p, c) = (rel("layer.0.attn_probs"), rel("layer.0.attn_ctx"));
            assert!((2e-5..3e-4).contains(&p), "{what}: attn_probs {p:e}");
            assert!((1.5e-4..1e-3).contains(&c), "{what}: attn_ctx {c:e}");
        }
    }
}

/// attn_probs under an f16 cache is the softmax of the captured q_rope against the captured
/// k_rope rounded to f16 (recomputed in f64, up to the f32 storage of scores and
/// probabilities), and measurably not the one against the unrounded k_rope.
#[test]
fn f16_attn_probs_are_recomputed_from_rounded_keys() {
    let all = CapturePlan::all();
    for model in ["qwen3-tiny-f32", "qwen3moe-tiny-f32"] {
        let b = CpuBackend::open(&fixture(model)).unwrap();
        let cfg = b.config().clone();
        drop(b);
        for s in [Schedule::full(), Schedule::new(Some(4), 3)] {
            let t = run(model, &all, f16(s), &[], None).unwrap();
            for layer in 0..cfg.n_layers {
                let q = f32s(&t, &format!("layer.{layer}.q_rope"));
                let k = f32s(&t, &format!("layer.{layer}.k_rope"));
                let probs = f32s(&t, &format!("layer.{layer}.attn_probs"));
                let rounded: Vec<f32> = k.iter().map(|&x| KvDtype::F16.round(x)).collect();
                let (n, nh, nkv, d) = (TOKENS.len(), cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
                let want = |k: &[f32]| {
                    let mut out = vec![0f64; nh * n * n];
                    for h in 0..nh {
                        let kh = h / (nh / nkv);
                        for qi in 0..n {
                            let qv = &q[(qi * nh + h) * d..][..d];
                            let scores: Vec<f64> = (0..=qi)
                                .map(|ki| {
                                    let kv = &k[(ki * nkv + kh) * d..][..d];
                                    let dot: f64 =
                                        qv.iter().zip(kv).map(|(&a, &b)| a as f64 * b as f64).sum();
                                    dot / (d as f64).sqrt()
                                })
                                .collect();
                            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                            let sum: f64 = e.iter().sum();
                            for (ki, e) in e.iter().enumerate() {
                                out[(h * n + qi) * n + ki] = e / sum;
                            }
                        }
                    }
                    out
                };
                let err = |want: &[f64]| {
                    probs
                        .iter()
                        .zip(want)
                        .map(|(&p, &w)| (p as f64 - w).abs())
                        .fold(0.0, f64::max)
                };
                let (near, far) = (err(&want(&rounded)), err(&want(&k)));
                let what = format!("{model} {s} layer {layer}");
                assert!(
                    near < 5e-7,
                    "{what}: {near:e} from the rounded-K recomputation"
                );
                assert!(far > 100.0 * near.max(1e-8), "{what}: {far:e} vs {near:e}");
            }
        }
    }
}
