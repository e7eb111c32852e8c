//! GPU trials of the CUDA backend. CI has no GPU: they are ignored there (run them with
//! `--include-ignored` on a machine with a card) and, when run anyway without a device, they
//! skip with a message instead of failing. Everything they read is under fixtures/.
//!
//! Run with `--nocapture` to see the per-stage agreement tables.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::CudaBackend;
use super::device::{Arg, Device, grid_1d};
use super::forward::AttnCall;
use super::matmul::{GroupPtrs, MatmulCall, MatmulKernel};
use super::weights::{DeviceMatrix, HostTensor};
use crate::backend::{Backend, Fault, ForwardRequest};
use crate::diff::{DiffOptions, Thresholds, Verdict, diff};
use crate::error::ErrorKind;
use crate::model::quant::GgmlType;
use crate::model::quant::dequant::{dequantize_q6k_as_q4k, round_activations_q8_0};
use crate::trace::io::read_trace;
use crate::trace::plan::CapturePlan;
use crate::trace::stage::{Key, Stage};
use crate::trace::tensor::TensorData;
use crate::trace::trace::Trace;
use cudarc::driver::CudaSlice;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures")).join(rel)
}

fn skip_if_no_device<T>(r: crate::Result<T>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) if e.kind == ErrorKind::NoDevice => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// Pseudo-random q [T, nh, D], k and v [T, nkv, D] (seeds `seed`, +1, +2), on the host and the
/// device.
#[allow(clippy::type_complexity)]
fn qkv(
    dev: &super::device::Device,
    (t, nh, nkv, hd): (usize, usize, usize, usize),
    seed: u64,
) -> ([Vec<f32>; 3], [cudarc::driver::CudaSlice<f32>; 3]) {
    let q = pseudo_random(t * nh * hd, seed);
    let k = pseudo_random(t * nkv * hd, seed + 1);
    let v = pseudo_random(t * nkv * hd, seed + 2);
    let d = [
        dev.upload(&q, "q").unwrap(),
        dev.upload(&k, "k").unwrap(),
        dev.upload(&v, "v").unwrap(),
    ];
    ([q, k, v], d)
}

/// The dims of a one-layer dense model whose attention has these sizes (for kernel tests).
fn attention_dims(t: usize, nh: usize, nkv: usize, hd: usize) -> super::weights::Dims {
    let mut c = crate::model::synth::preset("tiny-dense").unwrap();
    (c.n_layers, c.hidden, c.n_heads, c.n_kv_heads, c.head_dim) = (1, nh * hd, nh, nkv, hd);
    c.context_length = t;
    super::weights::Dims::from_config(&c)
}

fn tokens_of(dir: &str) -> Vec<u32> {
    let text = std::fs::read_to_string(fixture(&format!("{dir}/manifest.json"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

fn run(
    b: &mut dyn Backend,
    tokens: &[u32],
    plan: &CapturePlan,
    teacher: Option<&Trace>,
    faults: &[Fault],
) -> Trace {
    run_scheduled(
        b,
        tokens,
        plan,
        teacher,
        faults,
        crate::backend::Schedule::full(),
    )
}

fn bits_equal(a: &TensorData, b: &TensorData) -> bool {
    match (a, b) {
        (TensorData::F32(x), TensorData::F32(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
        }
        (TensorData::I32(x), TensorData::I32(y)) => x == y,
        _ => false,
    }
}

/// Diff `candidate` against `reference` through the project's own diff ([`crate::diff::diff`])
/// at `thresholds` (the project's defaults, or overrides where a test says why), and fail on
/// every row the diff fails. Rows of keys `reference` does not hold are not judged (a golden
/// set may capture fewer stages than the backend), nor is the prompt (`tokens`).
///
/// With `same_nans`, a fault planted on both sides may leave NaNs on both: such a NanBoth row
/// passes when the NaNs sit at the same places on both sides and the values finite on both are
/// within the stage's threshold (the diff's metrics are over those pairs).
///
/// Returns the worst relative L2 per stage (over layers); infinite where a row had none.
fn diff_traces(
    name: &str,
    candidate: &Trace,
    reference: &Trace,
    thresholds: &Thresholds,
    same_nans: bool,
) -> BTreeMap<&'static str, f64> {
    let opts = DiffOptions {
        thresholds: thresholds.clone(),
        ..DiffOptions::default()
    };
    let report = diff(reference, candidate, &opts).unwrap_or_else(|e| panic!("{name}: diff: {e}"));
    let mut worst: BTreeMap<&'static str, f64> = BTreeMap::new();
    let mut failures = Vec::new();
    for row in &report.rows {
        let key = row.key;
        if key.stage == Stage::Tokens || reference.get(&key).is_none() {
            continue;
        }
        let err = row.rel_l2().unwrap_or(f64::INFINITY);
        let w = worst.entry(key.stage.name()).or_insert(0.0);
        *w = w.max(err);
        // a NanBoth row has no whole-row error (Row::rel_l2 is None there); mirrored NaNs are
        // judged by the pairs finite on both sides, which its metrics cover
        let finite_pairs = row.metrics.as_ref().map_or(f64::INFINITY, |m| m.rel_l2);
        let mirrored_nans = same_nans
            && row.verdict == Verdict::NanBoth
            && finite_pairs <= row.threshold.rel_l2
            && nans_at_same_places(reference, candidate, &key);
        if row.fails() && !mirrored_nans {
            failures.push(format!(
                "{key}: {} ({})",
                report.verdict_name(row.verdict),
                crate::report::row_detail(&report, row)
            ));
        }
    }
    let line: Vec<String> = worst.iter().map(|(s, e)| format!("{s} {e:.1e}")).collect();
    eprintln!("{name}: worst relative L2 per stage: {}", line.join(", "));
    assert!(failures.is_empty(), "{name}: {failures:#?}");
    worst
}

/// Whether `key` holds NaNs at exactly the same places in both traces.
fn nans_at_same_places(a: &Trace, b: &Trace, key: &Key) -> bool {
    match (a.get(key).map(|t| &t.data), b.get(key).map(|t| &t.data)) {
        (Some(TensorData::F32(x)), Some(TensorData::F32(y))) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.is_nan() == q.is_nan())
        }
        _ => false,
    }
}

/// One stage of `candidate` against `reference` by the diff's metrics, within `limit`
/// (relative L2 over the pairs), with no non-finite value on either side.
fn assert_close(what: &str, candidate: &[f32], reference: &[f32], limit: f64) -> f64 {
    assert_eq!(candidate.len(), reference.len(), "{what}: lengths");
    let m = crate::diff::metrics::compare(reference, candidate);
    assert_eq!(
        (m.nonfinite_ref.count, m.nonfinite_cand.count),
        (0, 0),
        "{what}: non-finite values (reference, candidate)"
    );
    assert!(
        m.rel_l2 <= limit,
        "{what}: relative L2 {:e} > {limit:e}",
        m.rel_l2
    );
    m.rel_l2
}

const GOLDEN_SETS: &[(&str, &str, &str)] = &[
    (
        "qwen3moe-tiny",
        "qwen3moe-tiny-f32.gguf",
        "activations-f32.safetensors",
    ),
    (
        "qwen3moe-tiny",
        "qwen3moe-tiny-q8_0.gguf",
        "activations-q8_0.safetensors",
    ),
    (
        "qwen3-tiny",
        "qwen3-tiny-f32.gguf",
        "activations-f32.safetensors",
    ),
    (
        "qwen3-tiny",
        "qwen3-tiny-q8_0.gguf",
        "activations-q8_0.safetensors",
    ),
    (
        "shapes/qwen3-mha-long",
        "qwen3-tiny-f32.gguf",
        "activations-f32.safetensors",
    ),
    (
        "shapes/qwen3-t1",
        "qwen3-tiny-f32.gguf",
        "activations-f32.safetensors",
    ),
    (
        "shapes/qwen3moe-gqa4-top4",
        "qwen3moe-tiny-f32.gguf",
        "activations-f32.safetensors",
    ),
    (
        "shapes/qwen3moe-mqa-top3",
        "qwen3moe-tiny-f32.gguf",
        "activations-f32.safetensors",
    ),
    (
        "shapes/qwen3moe-t1",
        "qwen3moe-tiny-f32.gguf",
        "activations-f32.safetensors",
    ),
    // the other architecture families (tools/golden/make_llama_golden.py, make_qwen2_golden.py)
    (
        "llama2-tiny",
        "llama2-tiny-f32.gguf",
        "activations-f32.safetensors",
    ),
    (
        "llama2-tiny",
        "llama2-tiny-q8_0.gguf",
        "activations-q8_0.safetensors",
    ),
    (
        "llama3-tiny",
        "llama3-tiny-f32.gguf",
        "activations-f32.safetensors",
    ),
    (
        "llama3-tiny",
        "llama3-tiny-q8_0.gguf",
        "activations-q8_0.safetensors",
    ),
    (
        "mistral-tiny",
        "mistral-tiny-f32.gguf",
        "activations-f32.safetensors",
    ),
    (
        "mistral-tiny",
        "mistral-tiny-q8_0.gguf",
        "activations-q8_0.safetensors",
    ),
    (
        "mixtral-tiny",
        "mixtral-tiny-f32.gguf",
        "activations-f32.safetensors",
    ),
    (
        "mixtral-tiny",
        "mixtral-tiny-q8_0.gguf",
        "activations-q8_0.safetensors",
    ),
    (
        "qwen2-tiny",
        "qwen2-tiny-f32.gguf",
        "activations-f32.safetensors",
    ),
    (
        "qwen2-tiny",
        "qwen2-tiny-q8_0.gguf",
        "activations-q8_0.safetensors",
    ),
    (
        "qwen2moe-tiny",
        "qwen2moe-tiny-f32.gguf",
        "activations-f32.safetensors",
    ),
    (
        "qwen2moe-tiny",
        "qwen2moe-tiny-q8_0.gguf",
        "activations-q8_0.safetensors",
    ),
];

#[test]
#[ignore = "needs a CUDA GPU"]
fn golden_sets_match_per_stage() {
    for (dir, model, golden) in GOLDEN_SETS {
        let Some(mut b) =
            skip_if_no_device(CudaBackend::open(&fixture(&format!("{dir}/{model}")), 0))
        else {
            return;
        };
        let golden = read_trace(&fixture(&format!("{dir}/{golden}"))).unwrap();
        let tokens = tokens_of(dir);
        let got = run(&mut b, &tokens, &CapturePlan::all(), None, &[]);
        diff_traces(
            &format!("{dir}/{model}"),
            &got,
            &golden,
            &Thresholds::new(),
            false,
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn traced_equals_untraced_and_runs_repeat_bitwise() {
    let path = fixture("qwen3moe-tiny/qwen3moe-tiny-f32.gguf");
    let Some(mut b) = skip_if_no_device(CudaBackend::open(&path, 0)) else {
        return;
    };
    let tokens = tokens_of("qwen3moe-tiny");
    let all = run(&mut b, &tokens, &CapturePlan::all(), None, &[]);
    let again = run(&mut b, &tokens, &CapturePlan::all(), None, &[]);
    assert_eq!(all.tensors.len(), again.tensors.len());
    for (k, v) in &all.tensors {
        assert!(
            bits_equal(&v.data, &again.tensors[k].data),
            "{k} differs between runs"
        );
    }
    let only_logits = CapturePlan::new([Stage::Logits], crate::trace::plan::LayerSel::All);
    let small = run(&mut b, &tokens, &only_logits, None, &[]);
    assert_eq!(small.tensors.len(), 1);
    let key = Key::model(Stage::Logits);
    assert!(bits_equal(
        &small.tensors[&key].data,
        &all.tensors[&key].data
    ));
    let none = run(&mut b, &tokens, &CapturePlan::none(), None, &[]);
    assert!(none.tensors.is_empty());
}

/// A plan without `attn_probs` walks the attention in 64-query blocks through a bounded
/// buffer (here a budget of one byte forces that at 150 tokens): every stage it captures, and
/// the logits, equal the whole-matrix run's bit for bit. A fault on attn_probs, or a plan that
/// keeps it, takes the whole matrix again.
#[test]
#[ignore = "needs a CUDA GPU"]
fn blocked_attention_forward_equals_whole() {
    let path = fixture("qwen3moe-tiny/qwen3moe-tiny-f32.gguf");
    let Some(mut whole) = skip_if_no_device(CudaBackend::open(&path, 0)) else {
        return;
    };
    let mut blocked = CudaBackend::open(&path, 0).unwrap();
    blocked.att_probs_budget = 1;
    let tokens: Vec<u32> = (0..150u32).map(|i| (i * 37 + 11) % 200).collect();
    let all = run(&mut whole, &tokens, &CapturePlan::all(), None, &[]);
    let no_probs = CapturePlan::new(
        Stage::ALL
            .iter()
            .copied()
            .filter(|&s| s != Stage::AttnProbs),
        crate::trace::plan::LayerSel::All,
    );
    let got = run(&mut blocked, &tokens, &no_probs, None, &[]);
    assert!(got.tensors.len() > 10);
    for (k, v) in &got.tensors {
        assert!(bits_equal(&v.data, &all.tensors[k].data), "{k} differs");
    }
    // kept probabilities: the whole matrix, whatever the budget
    let kept = run(&mut blocked, &tokens, &CapturePlan::all(), None, &[]);
    for (k, v) in &all.tensors {
        assert!(bits_equal(&v.data, &kept.tensors[k].data), "{k} differs");
    }
    // a NaN planted on attn_probs acts on the whole matrix as before
    let nan: Fault = "nan[5]@layer.1.attn_probs".parse().unwrap();
    let a = run(&mut whole, &tokens, &no_probs, None, &[nan]);
    let b = run(&mut blocked, &tokens, &no_probs, None, &[nan]);
    for (k, v) in &a.tensors {
        assert!(
            bits_equal(&v.data, &b.tensors[k].data),
            "{k} differs under the fault"
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn teacher_forcing_replays_each_layer_from_the_reference() {
    let path = fixture("qwen3moe-tiny/qwen3moe-tiny-f32.gguf");
    let Some(mut b) = skip_if_no_device(CudaBackend::open(&path, 0)) else {
        return;
    };
    let golden = read_trace(&fixture("qwen3moe-tiny/activations-f32.safetensors")).unwrap();
    let tokens = tokens_of("qwen3moe-tiny");
    let nan: Fault = "nan[0]@layer.0.layer_out".parse().unwrap();
    // without a teacher the NaN flows into layer 1
    let free = run(&mut b, &tokens, &CapturePlan::all(), None, &[nan]);
    let l1 = free.get(&Key::layer(1, Stage::AttnNorm)).unwrap();
    assert!(l1.as_f32().unwrap().iter().any(|v| v.is_nan()));
    // with the golden trace as teacher, layer 1 starts from the golden layer_out and matches
    let taught = run(&mut b, &tokens, &CapturePlan::all(), Some(&golden), &[nan]);
    for stage in [
        Stage::AttnNorm,
        Stage::QRope,
        Stage::FfnOut,
        Stage::LayerOut,
    ] {
        let key = Key::layer(1, stage);
        assert_close(
            &key.to_string(),
            taught.get(&key).unwrap().as_f32().unwrap(),
            golden.get(&key).unwrap().as_f32().unwrap(),
            Thresholds::new().get(stage).rel_l2,
        );
    }
    let out0 = taught.get(&Key::layer(0, Stage::LayerOut)).unwrap();
    assert!(out0.as_f32().unwrap()[0].is_nan());
    assert!(
        !taught
            .get(&Key::model(Stage::Logits))
            .unwrap()
            .as_f32()
            .unwrap()
            .iter()
            .any(|v| v.is_nan())
    );
}

/// The first key, in forward order, where two traces differ bitwise.
fn first_difference(a: &Trace, b: &Trace) -> Option<Key> {
    a.tensors
        .iter()
        .find(|(k, v)| b.get(k).is_none_or(|w| !bits_equal(&v.data, &w.data)))
        .map(|(k, _)| *k)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn planted_faults_first_diverge_at_their_stage() {
    let cases: &[(&str, &[&str])] = &[
        (
            "qwen3moe-tiny/qwen3moe-tiny-f32.gguf",
            &[
                "nan[3]@layer.1.ffn_out",
                "nan[5]@embedding",
                "scale_drift[0.01]@layer.0.attn_out",
                "act_q8_rounding@layer.1.q_proj",
                "act_q8_rounding@layer.2.ffn_out",
                "act_q8_rounding@logits",
                "no_topk_renorm@layer.2.topk_weights",
                "rope_pair_swap@layer.0.k_rope",
                "rope_pair_swap@layer.1.q_rope",
                "causal_mask_off_by_one@layer.1.attn_probs",
                "expert_swap[0,1]@layer.0.ffn_out",
                "nan[0]@logits",
            ],
        ),
        (
            "qwen3-tiny/qwen3-tiny-f32.gguf",
            &[
                "nan[1]@layer.0.ffn_act",
                "scale_drift[0.01]@layer.1.ffn_gate",
                "act_q8_rounding@layer.1.ffn_out",
                "act_q8_rounding@layer.0.ffn_up",
                "causal_mask_off_by_one@layer.0.attn_probs",
            ],
        ),
    ];
    for (model, faults) in cases {
        let Some(mut b) = skip_if_no_device(CudaBackend::open(&fixture(model), 0)) else {
            return;
        };
        let dir = model.split('/').next().unwrap();
        let tokens = tokens_of(dir);
        let clean = run(&mut b, &tokens, &CapturePlan::all(), None, &[]);
        for text in *faults {
            let fault: Fault = text.parse().unwrap();
            let got = run(&mut b, &tokens, &CapturePlan::all(), None, &[fault]);
            let first = first_difference(&got, &clean);
            let want = Key {
                layer: fault.layer,
                stage: fault.stage,
            };
            eprintln!("{model} {text}: first difference at {first:?}");
            assert_eq!(first, Some(want), "{model} {text}");
        }
    }
}

/// The i-quant, ternary and MXFP4 types, whose vectors are in fixtures/iq-vectors.safetensors.
use crate::model::quant::dequant::tests::IQ_TYPES;

/// gguf-py's vectors for one block type (fixtures/quant-vectors.safetensors, or
/// iq-vectors.safetensors for [`IQ_TYPES`]): the raw blocks and their dequantized values.
fn gguf_py_vectors(ty: GgmlType) -> (Vec<u8>, Vec<f32>) {
    let file = if IQ_TYPES.contains(&ty) {
        "iq-vectors.safetensors"
    } else {
        "quant-vectors.safetensors"
    };
    let bytes = std::fs::read(fixture(file)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let raw = st
        .tensor(&format!("{}.raw", ty.name()))
        .unwrap()
        .data()
        .to_vec();
    let vals = st
        .tensor(&format!("{}.f32", ty.name()))
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (raw, vals)
}

/// Upload `raw` blocks of `ty` as a `rows x cols` matrix.
fn matrix(dev: &Device, ty: GgmlType, raw: &[u8], rows: usize, cols: usize) -> DeviceMatrix {
    let dims = [cols as u64, rows as u64];
    let t = HostTensor {
        name: ty.name(),
        ty,
        dims: &dims,
        bytes: raw,
    };
    DeviceMatrix::upload(dev, &t, cols, rows, 1).unwrap()
}

fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

/// A grouping for [`device_matmul_with`]: rows per expert, first row of each, the input row of
/// each grouped row, a planted swap ((a, a): none).
/// counts, offsets, in_rows, the swap, and the expert of each slot when the grid runs over
/// the slots.
type TestGroups<'a> = (
    &'a [i32],
    &'a [i32],
    &'a [i32],
    (usize, usize),
    Option<&'a [i32]>,
);

/// `y = x · Wᵀ` through `kernel`, with `w` decoded as `ty`; with `groups = (counts, offsets,
/// in_rows, swap)` a grouped expert matmul over `w.mats` matrices (at most `max_rows` rows each).
#[allow(clippy::too_many_arguments)]
fn device_matmul_with(
    dev: &Device,
    kernel: MatmulKernel,
    ty: GgmlType,
    w: &DeviceMatrix,
    x: &[f32],
    rows: usize,
    max_rows: usize,
    groups: Option<TestGroups<'_>>,
) -> Vec<f32> {
    let xd = dev.upload(x, "x").unwrap();
    let y = dev.zeros::<f32>(rows * w.rows, "y").unwrap();
    let up = |v: &[i32]| dev.upload(v, "groups").unwrap();
    let g = groups.map(|(c, o, r, s, z)| (up(c), up(o), up(r), s, z.map(up)));
    let call = MatmulCall {
        w,
        ty,
        x: dev.ptr(&xd),
        rows,
        max_rows,
        groups: g.as_ref().map(|(c, o, r, s, z)| GroupPtrs {
            counts: dev.ptr(c),
            offsets: dev.ptr(o),
            in_rows: Some(dev.ptr(r)),
            swap: (s.0 != s.1).then_some(*s),
            zmap: z.as_ref().map(|z| dev.ptr(z)),
        }),
    };
    call.launch(dev, "test", kernel, &y).unwrap();
    dev.stream.clone_dtoh(&y).unwrap()
}

/// A plain matmul over `t` rows.
fn device_matmul(
    dev: &Device,
    kernel: MatmulKernel,
    ty: GgmlType,
    w: &DeviceMatrix,
    x: &[f32],
    t: usize,
) -> Vec<f32> {
    device_matmul_with(dev, kernel, ty, w, x, t, t, None)
}

fn check_matmul(what: &str, got: &[f32], x: &[f32], w: &[f32], t: usize, rows: usize, cols: usize) {
    for ti in 0..t {
        for r in 0..rows {
            let want: f64 = (0..cols)
                .map(|k| x[ti * cols + k] as f64 * w[r * cols + k] as f64)
                .sum();
            let scale: f64 = (0..cols)
                .map(|k| (x[ti * cols + k] as f64 * w[r * cols + k] as f64).abs())
                .sum();
            if scale > f32::MAX as f64 {
                continue; // random BF16/F16 bits include huge values: the f32 sum overflows
            }
            let err = (got[ti * rows + r] as f64 - want).abs();
            // f32 FMA accumulation in k order: rounding of order sqrt(cols) * 2^-24 of the
            // absolute sum
            assert!(
                err <= 1e-6 * scale.max(1e-30),
                "{what} [{ti},{r}]: {} vs {want} (scale {scale})",
                got[ti * rows + r]
            );
        }
    }
}

/// Every block decoder against gguf-py's dequantization (fixtures/quant-vectors.safetensors and
/// iq-vectors.safetensors): the gather kernel bitwise, the matmul kernel against an f64 dot
/// product.
#[test]
#[ignore = "needs a CUDA GPU"]
fn device_decoders_match_gguf_py() {
    let Some(dev) = skip_if_no_device(super::open_device(0)) else {
        return;
    };
    for ty in [
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ]
    .into_iter()
    .chain(IQ_TYPES)
    {
        let (raw, want) = gguf_py_vectors(ty);
        let n = want.len();
        // a few rows of whole blocks (F16/BF16 vectors have an odd count: 3 rows or 1)
        let rows = [4, 3, 1]
            .into_iter()
            .find(|r| n.is_multiple_of(*r) && (n / r).is_multiple_of(ty.block_values()))
            .unwrap();
        let cols = n / rows;
        let m = matrix(&dev, ty, &raw, rows, cols);
        // gather every row: bitwise equal to gguf-py
        let ids: Vec<i32> = (0..rows as i32).collect();
        let ids_d = dev.upload(&ids, "ids").unwrap();
        let out = dev.zeros::<f32>(n, "out").unwrap();
        m.gather(&dev, "test", Arg::Ptr(dev.ptr(&ids_d)), rows, &out)
            .unwrap();
        let got = dev.stream.clone_dtoh(&out).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "{ty} value {i}: {g} vs {w}"
            );
        }
        for kernel in MatmulKernel::ALL {
            let vector = matches!(kernel, MatmulKernel::Vector | MatmulKernel::Wide);
            if vector && !cols.is_multiple_of(8) {
                continue; // the vector kernels need K % 8 == 0 (every block type has it)
            }
            // 1 row (a decode step); 5 rows: one partial tile / pass; 70: several tiles /
            // passes and a partial one
            for t in [1, 5, 70] {
                let x = pseudo_random(t * cols, 7 + t as u64);
                let y = device_matmul(&dev, kernel, ty, &m, &x, t);
                check_matmul(
                    &format!("{ty} {kernel:?} T={t}"),
                    &y,
                    &x,
                    &want,
                    t,
                    rows,
                    cols,
                );
            }
        }
        eprintln!("{ty}: {rows} x {cols} decoded bitwise, every matmul kernel within 1e-6");
    }
}

/// Matrices wider than one tile of every kernel (200 outputs: several tiles of 64 or 128
/// features, the last partial), built from gguf-py's blocks in a scrambled order, against the
/// host at 5, 70 and 130 rows (split-K where the tiles are few). MXFP4 rows are 480 values, 15
/// blocks of 17 bytes: odd row sizes, so every other row starts at an odd address.
#[test]
#[ignore = "needs a CUDA GPU"]
fn wide_matmuls_cover_every_tile_position() {
    let Some(dev) = skip_if_no_device(super::open_device(0)) else {
        return;
    };
    for ty in [
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::Q8_0,
        GgmlType::F16,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
        GgmlType::MXFP4,
    ] {
        let (raw, vals) = gguf_py_vectors(ty);
        let (bv, bb) = (ty.block_values(), ty.block_bytes());
        let blocks = vals.len() / bv;
        // 512 inputs (two K-quant blocks, 16 Q8_0 blocks), 200 outputs
        let cols = if ty == GgmlType::MXFP4 { 480 } else { 512 };
        let rows = 200;
        let per_row = cols / bv;
        let (mut wraw, mut w) = (Vec::new(), Vec::new());
        for r in 0..rows {
            for b in 0..per_row {
                let src = (7 * r + 3 * b + r / 5) % blocks;
                wraw.extend_from_slice(&raw[src * bb..(src + 1) * bb]);
                w.extend_from_slice(&vals[src * bv..(src + 1) * bv]);
            }
        }
        let m = matrix(&dev, ty, &wraw, rows, cols);
        for kernel in MatmulKernel::ALL {
            for t in [1, 5, 70, 130] {
                let x = pseudo_random(t * cols, 31 + t as u64);
                let y = device_matmul(&dev, kernel, ty, &m, &x, t);
                check_matmul(&format!("{ty} {kernel:?} T={t}"), &y, &x, &w, t, rows, cols);
            }
        }
        eprintln!("{ty}: {rows} x {cols}, every kernel and tile position within 1e-6");
        if matches!(ty, GgmlType::Q4_K | GgmlType::Q6_K) {
            // more rows than a full grid of warps: one row goes through the striding kernel
            // (matmulws_*), each warp many rows, the next row's weights loaded ahead
            let tall = 8 * 4 * dev.sms + 8 * 13 + 5;
            let (mut wraw, mut w) = (Vec::new(), Vec::new());
            for r in 0..tall {
                for b in 0..per_row {
                    let src = (11 * r + 5 * b + r / 7) % blocks;
                    wraw.extend_from_slice(&raw[src * bb..(src + 1) * bb]);
                    w.extend_from_slice(&vals[src * bv..(src + 1) * bv]);
                }
            }
            let m = matrix(&dev, ty, &wraw, tall, cols);
            let x = pseudo_random(cols, 77);
            let y = device_matmul(&dev, MatmulKernel::Wide, ty, &m, &x, 1);
            check_matmul(&format!("{ty} striding T=1"), &y, &x, &w, 1, tall, cols);
            eprintln!("{ty}: {tall} x {cols} through the striding one-row kernel within 1e-6");
        }
    }
}

/// The planted q6k_as_q4k path: the Q4_K kernel over Q6_K rows equals the CPU fault decoder.
#[test]
#[ignore = "needs a CUDA GPU"]
fn q6k_as_q4k_kernel_matches_cpu_fault_decoder() {
    let Some(dev) = skip_if_no_device(super::open_device(0)) else {
        return;
    };
    let (raw, _) = gguf_py_vectors(GgmlType::Q6_K);
    let (rows, cols) = (4, 4096);
    let row_bytes = raw.len() / rows;
    let mut want = vec![0f32; rows * cols];
    for (r, out) in want.chunks_exact_mut(cols).enumerate() {
        dequantize_q6k_as_q4k(&raw[r * row_bytes..(r + 1) * row_bytes], out).unwrap();
    }
    let m = matrix(&dev, GgmlType::Q6_K, &raw, rows, cols);
    let t = 3;
    let x = pseudo_random(t * cols, 11);
    let finite = want.iter().all(|v| v.is_finite());
    for kernel in MatmulKernel::ALL {
        let y = device_matmul(&dev, kernel, GgmlType::Q4_K, &m, &x, t);
        if finite {
            check_matmul(
                &format!("q6k_as_q4k {kernel:?}"),
                &y,
                &x,
                &want,
                t,
                rows,
                cols,
            );
        } else {
            // random Q6_K bytes read as Q4_K scales can be inf/NaN: both sides must agree on it
            assert!(y.iter().any(|v| !v.is_finite()), "{kernel:?}");
        }
    }
}

/// Grouped expert matmuls, every kernel variant, against the host: experts with no rows, one
/// row, more rows than a vector pass or a row tile holds (and than the launch grid covers, so
/// the kernels loop over row tiles); rows gathered through `in_rows` (the token gather) or read
/// in place; a planted expert swap.
#[test]
#[ignore = "needs a CUDA GPU"]
fn grouped_matmul_kernels_match_host() {
    let Some(dev) = skip_if_no_device(super::open_device(0)) else {
        return;
    };
    for ty in [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0] {
        let (raw, wv) = gguf_py_vectors(ty);
        // 4 experts of 2 rows (outputs) each, over cols inputs
        let (mats, n) = (4, 2);
        let cols = wv.len() / (mats * n);
        assert!(
            cols.is_multiple_of(ty.block_values()),
            "{ty}: {cols} columns"
        );
        let t = 70;
        let counts = [0, 1, t, 17];
        let mut offsets = vec![0i32; mats];
        for e in 1..mats {
            offsets[e] = offsets[e - 1] + counts[e - 1] as i32;
        }
        let slots: usize = counts.iter().sum();
        // slot s reads token (7 s + 3) mod t: every expert's rows are scattered tokens
        let in_rows: Vec<i32> = (0..slots).map(|s| ((7 * s + 3) % t) as i32).collect();
        let x = pseudo_random(t * cols, 21);
        let counts_i: Vec<i32> = counts.iter().map(|&c| c as i32).collect();
        let host_tensor = HostTensor {
            name: "experts",
            ty,
            dims: &[cols as u64, n as u64, mats as u64],
            bytes: &raw,
        };
        let m = DeviceMatrix::upload(&dev, &host_tensor, cols, n, mats).unwrap();
        // the expert of each slot, for the grid over slots
        let slot_expert: Vec<i32> = (0..mats)
            .flat_map(|e| std::iter::repeat_n(e as i32, counts[e]))
            .collect();
        let grids = [None, Some(slot_expert.as_slice())];
        for (swap, zmap) in [(0, 0), (1, 3)]
            .into_iter()
            .flat_map(|s| grids.map(|z| (s, z)))
        {
            for kernel in MatmulKernel::ALL {
                let got = device_matmul_with(
                    &dev,
                    kernel,
                    ty,
                    &m,
                    &x,
                    slots,
                    t,
                    Some((&counts_i, &offsets, &in_rows, swap, zmap)),
                );
                for e in 0..mats {
                    let we = if e == swap.0 {
                        swap.1
                    } else if e == swap.1 {
                        swap.0
                    } else {
                        e
                    };
                    for c in 0..counts[e] {
                        let slot = offsets[e] as usize + c;
                        let tok = in_rows[slot] as usize;
                        let xs = &x[tok * cols..(tok + 1) * cols];
                        let ws = &wv[we * n * cols..(we + 1) * n * cols];
                        let out = &got[slot * n..(slot + 1) * n];
                        check_matmul(
                            &format!(
                                "{ty} {kernel:?} swap {swap:?} expert {e} slot {slot}, grid over {}",
                                if zmap.is_some() { "slots" } else { "experts" }
                            ),
                            out,
                            xs,
                            ws,
                            1,
                            n,
                            cols,
                        );
                    }
                }
            }
        }
        eprintln!("{ty}: grouped matmul, every kernel, matches the host");
    }
}

/// The tiled attention kernels against the per-query ones and an f64 host softmax: heads of
/// 64 and 40 (not a multiple of 8), grouped kv heads, 70 positions (a partial tile), with and
/// without the planted one-step look-ahead. Masked probabilities are exactly 0 on both paths,
/// and the tiled context equals attn_ctx's bit for bit on the same probabilities.
#[test]
#[ignore = "needs a CUDA GPU"]
fn tiled_attention_matches_per_query_kernels() {
    let Some(dev) = skip_if_no_device(super::open_device(0)) else {
        return;
    };
    let (t, nh, nkv) = (70usize, 4usize, 2usize);
    for hd in [64usize, 40] {
        let dims = attention_dims(t, nh, nkv, hd);
        let ([q, k, _], [qd, kd, vd]) = qkv(&dev, (t, nh, nkv, hd), 1);
        for look in [false, true] {
            let probs = dev.zeros::<f32>(nh * t * t, "probs").unwrap();
            let ctx = dev.zeros::<f32>(t * nh * hd, "ctx").unwrap();
            let all = 0..t;
            let call = AttnCall::full(&dims, t, look);
            let p = |x: &CudaSlice<f32>| dev.ptr(x);
            call.probs(&dev, &all, p(&qd), p(&kd), p(&probs), "test")
                .unwrap();
            call.ctx(&dev, &all, p(&probs), p(&vd), p(&ctx), "test")
                .unwrap();
            let (p_tiled, c_tiled) = (
                dev.stream.clone_dtoh(&probs).unwrap(),
                dev.stream.clone_dtoh(&ctx).unwrap(),
            );
            // the per-query kernels on the same inputs
            let la = i32::from(look);
            let dims_args = [
                Arg::I32(t as i32),
                Arg::I32(nh as i32),
                Arg::I32(nkv as i32),
                Arg::I32(hd as i32),
                Arg::I32(la),
                Arg::I32(0),
                Arg::I32(t as i32),
                Arg::I32(0),
                Arg::I32(0),
                Arg::I32(t as i32),
            ];
            let cfg = |shared| cudarc::driver::LaunchConfig {
                grid_dim: (t as u32, nh as u32, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: shared,
            };
            // attn_ctx over the tiled probabilities: the same FMA chains, the same bits
            let mut a = vec![
                Arg::Ptr(dev.ptr(&probs)),
                Arg::Ptr(dev.ptr(&vd)),
                Arg::Ptr(dev.ptr(&ctx)),
            ];
            a.extend(dims_args);
            dev.launch("attn_ctx", "test", cfg(0), &a).unwrap();
            let c_same = dev.stream.clone_dtoh(&ctx).unwrap();
            for (x, (a, b)) in c_tiled.iter().zip(&c_same).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "head_dim {hd}: ctx[{x}] {a} vs {b}"
                );
            }
            let mut a = vec![
                Arg::Ptr(dev.ptr(&qd)),
                Arg::Ptr(dev.ptr(&kd)),
                Arg::Ptr(dev.ptr(&probs)),
            ];
            a.extend(dims_args);
            dev.launch(
                "attn_probs",
                "test",
                cfg((128 * 8 + 4 * (hd + t)) as u32),
                &a,
            )
            .unwrap();
            let mut a = vec![
                Arg::Ptr(dev.ptr(&probs)),
                Arg::Ptr(dev.ptr(&vd)),
                Arg::Ptr(dev.ptr(&ctx)),
            ];
            a.extend(dims_args);
            dev.launch("attn_ctx", "test", cfg(0), &a).unwrap();
            let (p_rows, c_rows) = (
                dev.stream.clone_dtoh(&probs).unwrap(),
                dev.stream.clone_dtoh(&ctx).unwrap(),
            );
            let what = format!("head_dim {hd}, look-ahead {look}");
            let scale = 1.0 / (hd as f64).sqrt();
            for h in 0..nh {
                let kh = h / (nh / nkv);
                for i in 0..t {
                    let end = (i + usize::from(look)).min(t - 1) + 1;
                    let sc: Vec<f64> = (0..end)
                        .map(|j| {
                            (0..hd)
                                .map(|d| {
                                    q[(i * nh + h) * hd + d] as f64
                                        * k[(j * nkv + kh) * hd + d] as f64
                                })
                                .sum::<f64>()
                                * scale
                        })
                        .collect();
                    let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = sc.iter().map(|s| (s - m).exp()).sum();
                    for j in 0..t {
                        let at = (h * t + i) * t + j;
                        let want = sc.get(j).map_or(0.0, |s| (s - m).exp() / z);
                        for (path, got) in [("tiled", p_tiled[at]), ("rows", p_rows[at])] {
                            if j >= end {
                                assert_eq!(got.to_bits(), 0, "{what} {path}: masked [{h},{i},{j}]");
                            }
                            assert!(
                                (got as f64 - want).abs() <= 1e-6,
                                "{what} {path} probs[{h},{i},{j}] = {got}, want {want}"
                            );
                        }
                    }
                }
            }
            // the same arithmetic by two paths: far tighter than any stage threshold
            let err = assert_close(
                &format!("{what}: ctx tiled vs rows"),
                &c_tiled,
                &c_rows,
                1e-6,
            );
            eprintln!("attention {what}: tiled = per-query within {err:.1e}");
        }
    }
}

/// Attention walked in blocks of 64 queries (as a forward whose plan keeps no `attn_probs`
/// runs a long prompt) equals the whole-matrix run bit for bit: every block's probability rows
/// and the context, on the tiled path (head_dim 64) and the per-query one (head_dim 160), 200
/// positions (a partial last tile), with and without the planted look-ahead.
#[test]
#[ignore = "needs a CUDA GPU"]
fn blocked_attention_equals_whole() {
    let Some(dev) = skip_if_no_device(super::open_device(0)) else {
        return;
    };
    let (t, nh, nkv, block) = (200usize, 4usize, 2usize, 64usize);
    assert_eq!(
        super::forward::attention_block_rows(nh, t, t, false, 1),
        block
    );
    for hd in [64usize, 160] {
        let dims = attention_dims(t, nh, nkv, hd);
        let (_, [qd, kd, vd]) = qkv(&dev, (t, nh, nkv, hd), 4);
        for look in [false, true] {
            let what = format!("head_dim {hd}, look-ahead {look}");
            let probs = dev.zeros::<f32>(nh * t * t, "probs").unwrap();
            let ctx = dev.zeros::<f32>(t * nh * hd, "ctx").unwrap();
            let all = 0..t;
            let call = AttnCall::full(&dims, t, look);
            let p = |x: &CudaSlice<f32>| dev.ptr(x);
            call.probs(&dev, &all, p(&qd), p(&kd), p(&probs), "test")
                .unwrap();
            call.ctx(&dev, &all, p(&probs), p(&vd), p(&ctx), "test")
                .unwrap();
            let (p_whole, c_whole) = (
                dev.stream.clone_dtoh(&probs).unwrap(),
                dev.stream.clone_dtoh(&ctx).unwrap(),
            );
            let block_probs = dev.zeros::<f32>(nh * block * t, "block probs").unwrap();
            let block_ctx = dev.zeros::<f32>(t * nh * hd, "block ctx").unwrap();
            for start in (0..t).step_by(block) {
                let rows = start..(start + block).min(t);
                call.probs(&dev, &rows, p(&qd), p(&kd), p(&block_probs), "test")
                    .unwrap();
                call.ctx(&dev, &rows, p(&block_probs), p(&vd), p(&block_ctx), "test")
                    .unwrap();
                let p_block = dev.stream.clone_dtoh(&block_probs).unwrap();
                for h in 0..nh {
                    for i in rows.clone() {
                        let whole = &p_whole[(h * t + i) * t..][..t];
                        let part = &p_block[(h * rows.len() + i - start) * t..][..t];
                        for (j, (a, b)) in whole.iter().zip(part).enumerate() {
                            assert_eq!(a.to_bits(), b.to_bits(), "{what}: probs[{h},{i},{j}]");
                        }
                    }
                }
            }
            let c_block = dev.stream.clone_dtoh(&block_ctx).unwrap();
            for (x, (a, b)) in c_whole.iter().zip(&c_block).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{what}: ctx[{x}] {a} vs {b}");
            }
            // a block that is not whole tiles is refused, not computed wrongly
            assert!(
                call.probs(&dev, &(10..74), p(&qd), p(&kd), p(&block_probs), "test")
                    .is_err()
            );
        }
    }
}

/// The planted act_q8_rounding kernel equals the CPU's rounding bitwise (per row, in blocks
/// of 32 with a partial block at each row's end, an all-zero block, a tiny value).
#[test]
#[ignore = "needs a CUDA GPU"]
fn q8_rounding_kernel_matches_cpu() {
    let Some(dev) = skip_if_no_device(super::open_device(0)) else {
        return;
    };
    let (rows, k) = (20, 71);
    let mut x = pseudo_random(rows * k, 3);
    for v in &mut x[..32] {
        *v = 0.0;
    }
    x[100] = 1e-30;
    let xd = dev.upload(&x, "x").unwrap();
    let yd = dev.zeros::<f32>(x.len(), "y").unwrap();
    dev.launch(
        "round_q8_0",
        "test",
        grid_1d(rows * k.div_ceil(32)).unwrap(),
        &[
            Arg::Ptr(dev.ptr(&xd)),
            Arg::Ptr(dev.ptr(&yd)),
            Arg::I32(rows as i32),
            Arg::I32(k as i32),
        ],
    )
    .unwrap();
    let got = dev.stream.clone_dtoh(&yd).unwrap();
    let mut want = x.clone();
    want.chunks_mut(k).for_each(round_activations_q8_0);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "value {i}: {g} vs {w}");
    }
}

/// A synthetic model whose rows are whole 256-value super-blocks, so that Q4_K_M gives Q4_K and
/// Q6_K tensors (and the MoE one Q5_0/Q8_0 fallbacks where llama.cpp's rule says).
fn synthetic(moe: bool, quant: crate::model::synth::SynthQuant) -> tempfile_path::TempModel {
    synthetic_of(if moe { "tiny-moe" } else { "tiny-dense" }, quant)
}

/// A preset widened to whole K-quant super-blocks (rows of 256), 3 layers.
fn synthetic_of(preset: &str, quant: crate::model::synth::SynthQuant) -> tempfile_path::TempModel {
    synthetic_with(preset, quant, "", |_| {})
}

/// [`synthetic_of`] with `edit` applied to the config last (`tag` tells the file apart).
fn synthetic_with(
    preset: &str,
    quant: crate::model::synth::SynthQuant,
    tag: &str,
    edit: impl FnOnce(&mut crate::model::config::ModelConfig),
) -> tempfile_path::TempModel {
    let mut c = crate::model::synth::preset(preset).unwrap();
    let moe = c.is_moe();
    c.hidden = 256;
    c.head_dim = 64;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.vocab = 512;
    c.ffn_dim = 512;
    c.expert_ffn_dim = 256;
    if c.arch == crate::model::arch::Arch::Llama && moe {
        c.ffn_dim = 256; // Mixtral: the expert width is feed_forward_length
    }
    if c.shared_ffn_dim > 0 {
        c.shared_ffn_dim = 512;
    }
    c.n_layers = 3;
    edit(&mut c);
    let path = std::env::temp_dir().join(format!(
        "falsifier-cuda-{preset}{tag}-{}-{}.gguf",
        quant.name(),
        std::process::id()
    ));
    crate::model::synth::generate(&c, quant, 7, "cuda-test", &path).unwrap();
    tempfile_path::TempModel(path)
}

mod tempfile_path {
    /// A model file removed when dropped.
    pub struct TempModel(pub std::path::PathBuf);
    impl Drop for TempModel {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// The matmul stage whose weight in `file` is Q6_K, if any (the place for q6k_as_q4k).
fn q6k_stage(file: &crate::model::gguf::GgufFile, n_layers: usize, moe: bool) -> Option<Key> {
    let is_q6k = |name: &str| file.tensor(name).is_some_and(|t| t.ty == GgmlType::Q6_K);
    for l in 0..n_layers {
        let down = if moe { "ffn_down_exps" } else { "ffn_down" };
        for (stage, name) in [
            (Stage::FfnOut, down),
            (Stage::VProj, "attn_v"),
            (Stage::QProj, "attn_q"),
        ] {
            if is_q6k(&format!("blk.{l}.{name}.weight")) {
                return Some(Key::layer(l, stage));
            }
        }
    }
    is_q6k("output.weight").then_some(Key::model(Stage::Logits))
}

/// CUDA against the CPU reference on every fixture model and on synthetic Q4_K_M / Q8_0 /
/// Q4_0 / BF16 / F16 / IQ4_NL / IQ4_XS / MXFP4 models, clean and with each planted fault class
/// on both sides.
#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_matches_cpu_reference_clean_and_faulted() {
    use crate::backend::cpu::CpuBackend;
    use crate::model::synth::SynthQuant;
    if skip_if_no_device(super::open_device(0)).is_none() {
        return;
    }
    let mut models: Vec<(String, PathBuf, Vec<u32>, Option<tempfile_path::TempModel>)> =
        GOLDEN_SETS
            .iter()
            .map(|(dir, model, _)| {
                (
                    format!("{dir}/{model}"),
                    fixture(&format!("{dir}/{model}")),
                    tokens_of(dir),
                    None,
                )
            })
            .collect();
    let prompt: Vec<u32> = (0..24).map(|i| (i * 37 + 11) % 512).collect();
    for moe in [true, false] {
        for q in [
            SynthQuant::Q4_K_M,
            SynthQuant::Q8_0,
            SynthQuant::Q4_0,
            SynthQuant::BF16,
            SynthQuant::F16,
            SynthQuant::IQ4_NL,
            SynthQuant::IQ4_XS,
            SynthQuant::MXFP4,
        ] {
            let m = synthetic(moe, q);
            let name = format!(
                "synthetic {} {}",
                if moe { "moe" } else { "dense" },
                q.name()
            );
            models.push((name, m.0.clone(), prompt.clone(), Some(m)));
        }
    }
    // the other architectures' generated models, in the K-quant mix and Q8_0
    for preset in ["tiny-llama", "tiny-mixtral", "tiny-qwen2", "tiny-qwen2moe"] {
        for q in [SynthQuant::Q4_K_M, SynthQuant::Q8_0] {
            let m = synthetic_of(preset, q);
            let name = format!("synthetic {preset} {}", q.name());
            models.push((name, m.0.clone(), prompt.clone(), Some(m)));
        }
    }
    let mut summary: BTreeMap<&'static str, f64> = BTreeMap::new();
    for (name, path, tokens, _keep) in &models {
        let mut cuda = CudaBackend::open(path, 0).unwrap();
        let mut cpu = CpuBackend::open(path).unwrap();
        let moe = cuda.dims().moe;
        let n_layers = cuda.dims().n_layers;
        let plan = CapturePlan::all();
        let c = run(&mut cuda, tokens, &plan, None, &[]);
        let r = run(&mut cpu, tokens, &plan, None, &[]);
        assert_eq!(
            c.tensors.keys().collect::<Vec<_>>(),
            r.tensors.keys().collect::<Vec<_>>(),
            "{name}: the two backends captured different keys"
        );
        for (s, e) in diff_traces(name, &c, &r, &Thresholds::new(), false) {
            let w = summary.entry(s).or_insert(0.0);
            *w = w.max(e);
        }
        // every fault class, planted on both sides: the candidate must mirror the reference
        let last = n_layers - 1;
        let config = cuda.dims().config.clone();
        // a scale drift where the architecture has a q norm, else on k_proj
        let drift_at = if config.has_stage(Stage::QNorm) {
            "q_norm"
        } else {
            "k_proj"
        };
        let mut faults = vec![
            format!("nan[7]@layer.{last}.attn_out"),
            format!("scale_drift[0.02]@layer.0.{drift_at}"),
            format!("act_q8_rounding@layer.{last}.ffn_out"),
            "act_q8_rounding@logits".to_string(),
            "rope_pair_swap@layer.0.q_rope".to_string(),
            format!("causal_mask_off_by_one@layer.{last}.attn_probs"),
        ];
        if moe {
            // only where the router renormalises (qwen2moe's does not: the fault is refused)
            if config.norm_topk_prob {
                faults.push("no_topk_renorm@layer.0.topk_weights".to_string());
            }
            // swap an expert the first token uses with the next one, so the swap must show
            let l = 1.min(last);
            let ids = c
                .get(&Key::layer(l, Stage::TopkIds))
                .unwrap()
                .as_i32()
                .unwrap();
            let a = ids[0] as usize;
            let b = (a + 1) % cuda.dims().n_experts;
            faults.push(format!("expert_swap[{a},{b}]@layer.{l}.ffn_out"));
        }
        if config.has_stage(Stage::FfnSharedOut) {
            faults.push(format!("nan[3]@layer.{last}.ffn_shared_gate"));
            faults.push("scale_drift[0.05]@layer.0.ffn_shared_out".to_string());
            faults.push("act_q8_rounding@layer.0.ffn_shared_out".to_string());
        }
        let file = crate::model::gguf::GgufFile::open(path).unwrap();
        if let Some(key) = q6k_stage(&file, n_layers, moe) {
            faults.push(format!("q6k_as_q4k@{key}"));
        }
        for f in &faults {
            let fault: Fault = f.parse().unwrap();
            let c = run(&mut cuda, tokens, &plan, None, &[fault]);
            let r = run(&mut cpu, tokens, &plan, None, &[fault]);
            // Q8_0 rounding is discontinuous: inputs that differ by 1e-7 between the backends can
            // land on two sides of a rounding boundary, and one flipped level moves that value
            // by amax/127 (under 1%); downstream of the rounding the bound is 1e-2, not 1e-4
            let mut thresholds = Thresholds::new();
            if fault.kind == crate::backend::FaultKind::ActQ8Rounding {
                for stage in Stage::ALL {
                    // integer stages stay exact
                    if crate::diff::thresholds::default_rel_l2(stage) > 0.0 {
                        thresholds.set(stage, 1e-2).unwrap();
                    }
                }
            }
            diff_traces(&format!("{name} with {f}"), &c, &r, &thresholds, true);
            // at T = 1 RoPE rotates nothing (position 0) and the mask has no next position
            let silent =
                tokens.len() == 1 && matches!(fault.stage, Stage::QRope | Stage::AttnProbs);
            let first = first_difference(&c, &run(&mut cuda, tokens, &plan, None, &[]));
            if !silent {
                let want = Key {
                    layer: fault.layer,
                    stage: fault.stage,
                };
                assert_eq!(first, Some(want), "{name} {f}");
            }
        }
        // teacher forcing from the CPU's trace
        let c = run(&mut cuda, tokens, &plan, Some(&r), &[]);
        let rt = run(&mut cpu, tokens, &plan, Some(&r), &[]);
        diff_traces(
            &format!("{name} teacher-forced"),
            &c,
            &rt,
            &Thresholds::new(),
            false,
        );
    }
    eprintln!("cuda vs cpu over all models, worst relative L2 per stage:");
    for (s, e) in &summary {
        eprintln!("  {s:<14} {e:.3e}");
    }
}

fn run_scheduled(
    b: &mut dyn Backend,
    tokens: &[u32],
    plan: &CapturePlan,
    teacher: Option<&Trace>,
    faults: &[Fault],
    schedule: crate::backend::Schedule,
) -> Trace {
    let req = ForwardRequest {
        tokens,
        plan,
        teacher,
        faults,
        schedule,
    };
    b.forward(&req)
        .unwrap_or_else(|e| panic!("forward under {schedule}: {e}"))
}

/// `a` and `b` hold the same stages, each with the same bits (`what` names the comparison).
fn assert_same_bits(a: &Trace, b: &Trace, what: &str) {
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>(),
        "{what}: different stages"
    );
    for (key, t) in &a.tensors {
        assert!(
            bits_equal(&t.data, &b.tensors[key].data),
            "{what}: {key} differs"
        );
    }
}

/// The golden-set fixtures, then the synthetic tiny presets of every architecture in each of
/// `quants` (named, with the temporary file that keeps each alive).
fn fixtures_and_synthetic(
    quants: &[crate::model::synth::SynthQuant],
) -> Vec<(String, PathBuf, Option<tempfile_path::TempModel>)> {
    let mut models: Vec<(String, PathBuf, Option<tempfile_path::TempModel>)> = GOLDEN_SETS
        .iter()
        .map(|(dir, model, _)| {
            (
                format!("{dir}/{model}"),
                fixture(&format!("{dir}/{model}")),
                None,
            )
        })
        .collect();
    for preset in ["tiny-moe", "tiny-dense", "tiny-llama", "tiny-qwen2moe"] {
        for &q in quants {
            let m = synthetic_of(preset, q);
            models.push((
                format!("synthetic {preset} {}", q.name()),
                m.0.clone(),
                Some(m),
            ));
        }
    }
    models
}

/// The CUDA backend under schedules (chunked prefill attending to the cached prefix, decode
/// steps through the fused one-query kernel, f32 cache) against the CPU reference's full
/// forward at every stage, on the fixture models and synthetic Q4_K_M / Q8_0 models of four
/// architectures, 32 tokens: clean, teacher-forced, traced = untraced; and each KV-cache fault
/// class planted on both sides under the schedule, first diverging from the clean CUDA run at
/// its own layer and stage.
#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_schedules_match_cpu_full_forward() {
    use crate::backend::Schedule;
    use crate::backend::cpu::CpuBackend;
    use crate::model::synth::SynthQuant;
    if skip_if_no_device(super::open_device(0)).is_none() {
        return;
    }
    let models = fixtures_and_synthetic(&[SynthQuant::Q4_K_M, SynthQuant::Q8_0]);
    let schedules = [
        Schedule::new(Some(8), 16),
        Schedule::new(Some(3), 5),
        Schedule::new(None, 32),
        Schedule::new(Some(1), 0),
        Schedule::new(Some(20), 1),
    ];
    let plan = CapturePlan::all();
    let mut summary: BTreeMap<&'static str, f64> = BTreeMap::new();
    for (name, path, _keep) in &models {
        let mut cuda = CudaBackend::open(path, 0).unwrap();
        let mut cpu = CpuBackend::open(path).unwrap();
        let vocab = cuda.dims().vocab as u32;
        let tokens: Vec<u32> = (0..32u32).map(|i| (i * 37 + 11) % vocab).collect();
        let n_layers = cuda.dims().n_layers;
        let reference = run(&mut cpu, &tokens, &plan, None, &[]);
        for &sched in &schedules {
            let what = format!("{name} under {sched}");
            let c = run_scheduled(&mut cuda, &tokens, &plan, None, &[], sched);
            assert_eq!(
                c.tensors.keys().collect::<Vec<_>>(),
                reference.tensors.keys().collect::<Vec<_>>(),
                "{what}: captured keys differ from the full forward's"
            );
            for (s, e) in diff_traces(&what, &c, &reference, &Thresholds::new(), false) {
                let w = summary.entry(s).or_insert(0.0);
                *w = w.max(e);
            }
            // capture never changes what is computed
            let only_logits = CapturePlan::new([Stage::Logits], crate::trace::plan::LayerSel::All);
            let small = run_scheduled(&mut cuda, &tokens, &only_logits, None, &[], sched);
            let key = Key::model(Stage::Logits);
            assert!(
                bits_equal(&small.tensors[&key].data, &c.tensors[&key].data),
                "{what}: traced and untraced logits differ"
            );
            // two or more decode steps keeping only logits replay one CUDA graph; the traced
            // run launched them one by one, and the logits above are equal bit for bit
            let graph = super::forward::DECODE_GRAPH_KEY;
            assert_eq!(
                small.meta.extra.contains_key(graph),
                sched.decode >= 2,
                "{what}: {:?}",
                small.meta.extra
            );
            assert!(!c.meta.extra.contains_key(graph), "{what}");
        }
        let sched = schedules[0];
        // teacher forcing from the CPU's full trace, under the schedule
        let c = run_scheduled(&mut cuda, &tokens, &plan, Some(&reference), &[], sched);
        let r = run(&mut cpu, &tokens, &plan, Some(&reference), &[]);
        diff_traces(
            &format!("{name} under {sched}, teacher-forced"),
            &c,
            &r,
            &Thresholds::new(),
            false,
        );
        // the f16 cache: CUDA's against the CPU reference's, under a schedule and in one step
        let f16 = crate::backend::schedule::KvDtype::F16;
        let r16 = run_scheduled(
            &mut cpu,
            &tokens,
            &plan,
            None,
            &[],
            Schedule::full().with_kv(f16),
        );
        for sched in [sched.with_kv(f16), Schedule::full().with_kv(f16)] {
            let c = run_scheduled(&mut cuda, &tokens, &plan, None, &[], sched);
            diff_traces(
                &format!("{name} under {sched}"),
                &c,
                &r16,
                &Thresholds::new(),
                false,
            );
        }
        // the cache faults on both sides, under the schedule that lets each fire
        let last = n_layers - 1;
        let faults = [
            (format!("kv_stale@layer.{last}.attn_probs"), sched),
            ("kv_slot_off_by_one@layer.0.attn_probs".to_string(), sched),
            (format!("rope_pos_reset@layer.{last}.k_rope"), sched),
            ("rope_pos_reset@layer.0.q_rope".to_string(), sched),
            (format!("chunk_mask@layer.{last}.attn_probs"), sched),
            (
                "causal_mask_off_by_one@layer.0.attn_probs".to_string(),
                sched,
            ),
            (format!("nan[70]@layer.{last}.attn_probs"), sched),
            (
                "scale_drift[0.01]@layer.0.attn_probs".to_string(),
                Schedule::new(None, 32),
            ),
        ];
        for (f, sched) in &faults {
            let fault: Fault = f.parse().unwrap();
            let what = format!("{name} under {sched} with {f}");
            let c = run_scheduled(&mut cuda, &tokens, &plan, None, &[fault], *sched);
            let r = run_scheduled(&mut cpu, &tokens, &plan, None, &[fault], *sched);
            diff_traces(&what, &c, &r, &Thresholds::new(), true);
            let clean = run_scheduled(&mut cuda, &tokens, &plan, None, &[], *sched);
            let want = Key {
                layer: fault.layer,
                stage: fault.stage,
            };
            assert_eq!(first_difference(&c, &clean), Some(want), "{what}");
        }
    }
    eprintln!(
        "cuda schedules vs the cpu full forward over all models, worst relative L2 per stage:"
    );
    for (s, e) in &summary {
        eprintln!("  {s:<14} {e:.3e}");
    }
}

/// The merged launches (q/k norms + RoPE + cache write; the one-token router; gate + up +
/// SwiGLU; projection + residual; expert down + combine + layer_out) compute what the separate
/// kernels do, bit for bit: every captured stage of every model and schedule (f32 and f16
/// caches, the full forward, chunks and decode steps), clean and with faults that the merged
/// launches take as arguments (kv_stale, kv_slot_off_by_one, no_topk_renorm, expert_swap) or
/// that turn merging off at one layer (rope_pos_reset, a NaN on layer_out), equals the run
/// with merging off.
#[test]
#[ignore = "needs a CUDA GPU"]
fn merged_launches_equal_separate_ones() {
    use crate::backend::Schedule;
    use crate::backend::schedule::KvDtype;
    use crate::model::synth::SynthQuant;
    if skip_if_no_device(super::open_device(0)).is_none() {
        return;
    }
    let models = fixtures_and_synthetic(&[SynthQuant::Q4_K_M]);
    let schedules = [
        Schedule::full(),
        Schedule::new(Some(8), 16),
        Schedule::new(Some(3), 5).with_kv(KvDtype::F16),
        Schedule::new(None, 31),
    ];
    let plan = CapturePlan::all();
    let mut compared = 0usize;
    let mut mixed = Vec::new();
    for (name, path, _keep) in &models {
        let mut cuda = CudaBackend::open(path, 0).unwrap();
        let vocab = cuda.dims().vocab as u32;
        let last = cuda.dims().n_layers - 1;
        let tokens: Vec<u32> = (0..32u32).map(|i| (i * 53 + 7) % vocab).collect();
        // which models take the launch of q/k and v in two block types (matmulwn_mix_*), so
        // that this test is known to compare it
        cuda.dev.set_profiling(true);
        run_scheduled(&mut cuda, &tokens, &plan, None, &[], schedules[1]);
        let launched = cuda.dev.take_profile().unwrap();
        cuda.dev.set_profiling(false);
        if launched.iter().any(|r| r.what.starts_with("matmulwn_mix_")) {
            mixed.push(name.clone());
        }
        // faults that act anywhere, then the cache faults (they need decode steps)
        let mut anywhere = vec![format!("nan[5]@layer.{last}.layer_out")];
        if cuda.dims().moe {
            anywhere.push("expert_swap[0,1]@layer.0.ffn_out".to_string());
        }
        if cuda.dims().moe && cuda.dims().norm_topk {
            // (a router that does not renormalise refuses the fault: it would change nothing)
            anywhere.push(format!("no_topk_renorm@layer.{last}.topk_weights"));
        }
        let cache = [
            format!("kv_stale@layer.{last}.attn_probs"),
            "kv_slot_off_by_one@layer.0.attn_probs".to_string(),
            format!("rope_pos_reset@layer.{last}.k_rope"),
        ];
        for sched in schedules {
            let mut faults: Vec<Vec<Fault>> = vec![vec![]];
            let planted = anywhere
                .iter()
                .chain(cache.iter().filter(|_| sched.decode >= 1));
            faults.extend(planted.map(|f| vec![f.parse().unwrap()]));
            for fs in &faults {
                let what = format!("{name} under {sched} with {fs:?}");
                cuda.dev.set_merged(true);
                let merged = run_scheduled(&mut cuda, &tokens, &plan, None, fs, sched);
                // the striding launches with 3 blocks: each takes many row groups, its later
                // groups' weights loaded after the earlier ones' dots
                cuda.dev.set_grid_cap(Some(3));
                let strided = run_scheduled(&mut cuda, &tokens, &plan, None, fs, sched);
                cuda.dev.set_grid_cap(None);
                cuda.dev.set_merged(false);
                let separate = run_scheduled(&mut cuda, &tokens, &plan, None, fs, sched);
                cuda.dev.set_merged(true);
                for (how, run) in [("merged", &merged), ("merged in 3 blocks", &strided)] {
                    assert_same_bits(
                        run,
                        &separate,
                        &format!("{what}: {how} against separate launches"),
                    );
                }
                compared += 1;
            }
        }
    }
    assert!(
        !mixed.is_empty(),
        "no model took the mixed-type norm-folding launch"
    );
    eprintln!(
        "{compared} runs: merged launches, in a wave or in 3 blocks, equal separate ones bit for bit at every stage (q/k and v in one launch of two block types: {})",
        mixed.join(", ")
    );
}

/// The router launch's blocks as one thread-block cluster (`matmulwn_route_*`: the logits go
/// to the routing block through shared memory) against the same launch handing them over
/// through L2 to its last block, and against the separate launches, bit for bit at every
/// stage: Q4_K_M MoE models of 16, 64 and 128 experts (router grids of 2, 8 and 16 blocks: two
/// portable cluster sizes and the non-portable 16), a full forward and decode steps, traced
/// (launched one by one) and untraced (the steps replayed from a CUDA graph, logits kept).
/// Where the card has no clusters (before compute capability 9.0, or `FALSIFIER_CUDA_CLUSTER=0`)
/// it says so and compares the rest.
#[test]
#[ignore = "needs a CUDA GPU"]
fn router_cluster_handoff_equals_last_block_one() {
    use crate::backend::Schedule;
    use crate::model::synth::SynthQuant;
    if skip_if_no_device(super::open_device(0)).is_none() {
        return;
    }
    let mut clustered = Vec::new();
    for (experts, used) in [(16usize, 4usize), (64, 8), (128, 8)] {
        let model = synthetic_with(
            "tiny-moe",
            SynthQuant::Q4_K_M,
            &format!("-e{experts}"),
            |c| {
                c.n_experts = experts;
                c.n_experts_used = used;
            },
        );
        let mut cuda = CudaBackend::open(&model.0, 0).unwrap();
        let vocab = cuda.dims().vocab as u32;
        let tokens: Vec<u32> = (0..32u32).map(|i| (i * 71 + 3) % vocab).collect();
        let decode = Schedule::new(Some(8), 16);
        // which router kernel the model takes, and whether its launch is a cluster
        cuda.dev.set_profiling(true);
        run_scheduled(&mut cuda, &tokens, &CapturePlan::all(), None, &[], decode);
        let launched = cuda.dev.take_profile().unwrap();
        cuda.dev.set_profiling(false);
        let route = launched
            .iter()
            .find(|r| r.what.starts_with("matmulwn_route_"))
            .unwrap_or_else(|| panic!("{experts} experts: no matmulwn_route_* launch"))
            .what
            .clone();
        let blocks = experts.div_ceil(8) as u32;
        let cluster = cuda
            .dev
            .whole_grid_cluster(&route, "test", blocks, 256)
            .unwrap();
        if cuda.dev.clusters() && blocks <= 8 {
            // (a portable size: every card with clusters runs it)
            assert_eq!(cluster, blocks, "{route} over {blocks} blocks: no cluster");
        }
        if cluster > 1 {
            clustered.push(format!("{route} over {blocks} blocks"));
        }
        let logits = CapturePlan::parse("logits", None).unwrap();
        for (plan, sched) in [
            (CapturePlan::all(), Schedule::full()),
            (CapturePlan::all(), decode),
            (logits, decode),
        ] {
            let what = format!("{experts} experts under {sched}");
            cuda.dev.set_clusters(true);
            let with = run_scheduled(&mut cuda, &tokens, &plan, None, &[], sched);
            cuda.dev.set_clusters(false);
            let without = run_scheduled(&mut cuda, &tokens, &plan, None, &[], sched);
            cuda.dev.set_merged(false);
            let separate = run_scheduled(&mut cuda, &tokens, &plan, None, &[], sched);
            cuda.dev.set_merged(true);
            cuda.dev.set_clusters(true);
            assert!(!with.tensors.is_empty(), "{what}: nothing captured");
            for (how, run) in [
                ("the last-block handoff", &without),
                ("separate launches", &separate),
            ] {
                assert_same_bits(
                    &with,
                    run,
                    &format!("{what}: the cluster handoff against {how}"),
                );
            }
        }
    }
    if clustered.is_empty() {
        eprintln!(
            "no cluster launches on this card ({}): the router's handoffs compared through L2 only",
            super::open_device(0).map_or_else(|e| e.to_string(), |d| d.description.clone())
        );
    } else {
        eprintln!(
            "router launches as one cluster ({}) equal the last-block handoff and the separate launches bit for bit at every stage",
            clustered.join(", ")
        );
    }
}

/// Prefill timings for BENCHMARKS.md: `FALSIFIER_BENCH_MODEL=path FALSIFIER_BENCH_T=32,512`
/// (what `falsifier bench --backend cuda` prints, plus per-launch profiles with
/// `FALSIFIER_BENCH_PROFILE=1`). Median of 5 forwards after one warm-up, untraced (empty plan)
/// and traced (every stage).
#[test]
#[ignore = "needs a CUDA GPU and FALSIFIER_BENCH_MODEL"]
fn bench_prefill() {
    use crate::bench::{Rates, format_timing, time_prefill};
    let Ok(path) = std::env::var("FALSIFIER_BENCH_MODEL") else {
        eprintln!("skipped: set FALSIFIER_BENCH_MODEL");
        return;
    };
    let ts: Vec<usize> = std::env::var("FALSIFIER_BENCH_T")
        .unwrap_or_else(|_| "32,512".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let start = std::time::Instant::now();
    let path = std::path::Path::new(&path);
    let Some(mut b) = skip_if_no_device(CudaBackend::open(path, 0)) else {
        return;
    };
    eprintln!(
        "bench: {} loaded in {:.2?} on {}",
        path.display(),
        start.elapsed(),
        b.dev.description
    );
    let file = crate::model::gguf::GgufFile::open(path).unwrap();
    let cfg = crate::model::config::ModelConfig::from_gguf(&file).unwrap();
    // floors: the weights touched read once at the 3.0 TB/s a device copy reaches on the H100,
    // f32 FMAs at the H100 SXM's data-sheet 33.5 T FMA/s (67 TFLOP/s at the top clock); and
    // both at what this card measurably reaches
    let sheet = Rates {
        copy_bytes_per_s: 3.0e12,
        fma_per_s: 33.5e12,
        source: "3.0 TB/s and the H100 data sheet's 33.5 T FMA/s".into(),
    };
    let measured: Rates = super::rates::measure(&b.dev).unwrap().into();
    eprintln!(
        "bench: this card reaches {:.1} T f32 FMA/s and {:.2} TB/s device-to-device copy (read + write)",
        measured.fma_per_s / 1e12,
        measured.copy_bytes_per_s / 1e12
    );
    let vocab = b.dims().vocab;
    for t in ts {
        let tm = time_prefill(&mut b, &file, &cfg, t, 5).unwrap();
        // where the time goes: one more forward of each kind, timed per launch (the events
        // add a little, so these are not the numbers above)
        if std::env::var("FALSIFIER_BENCH_PROFILE").is_ok_and(|v| v == "1") {
            let tokens = crate::bench::bench_tokens(t, vocab);
            for (what, plan) in [
                ("untraced", CapturePlan::none()),
                ("traced", CapturePlan::all()),
            ] {
                b.dev.set_profiling(true);
                run(&mut b, &tokens, &plan, None, &[]);
                let rows = b.dev.take_profile().unwrap();
                b.dev.set_profiling(false);
                eprint!(
                    "bench T={t} {what} profile:\n{}",
                    super::device::format_profile(&rows)
                );
            }
        }
        eprintln!(
            "bench {}",
            format_timing(&tm, &[sheet.clone(), measured.clone()])
        );
    }
}

/// Matmul time per weight type for BENCHMARKS.md: a 4096 x 4096 matrix (a Llama-8B attention
/// projection) built by repeating gguf-py's vector blocks of each type, at T = 1, 32 and 512
/// rows, through the kernel the forward picks for that many rows. Median of 20 launches after
/// 3 warm-ups, each launch synchronised (so a launch's latency is in it); GB/s is the weight
/// bytes over that time. Q4_K is the yardstick the new types are set against.
#[test]
#[ignore = "needs a CUDA GPU (timing, for BENCHMARKS.md)"]
fn bench_matmul_types() {
    let Some(dev) = skip_if_no_device(super::open_device(0)) else {
        return;
    };
    let (n, k) = (4096usize, 4096usize);
    let types = [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0]
        .into_iter()
        .chain(IQ_TYPES);
    for ty in types {
        let (raw, _) = gguf_py_vectors(ty);
        let want = ty.bytes_for((n * k) as u64).unwrap() as usize;
        let bytes: Vec<u8> = raw.iter().copied().cycle().take(want).collect();
        let m = matrix(&dev, ty, &bytes, n, k);
        let mut line = format!("{:<8} {:>6.1} MB", ty.name(), want as f64 / 1e6);
        for t in [1usize, 32, 512] {
            let kernel = MatmulKernel::choose(k, n, t, false);
            let x = pseudo_random(t * k, 3);
            let xd = dev.upload(&x, "x").unwrap();
            let y = dev.zeros::<f32>(t * n, "y").unwrap();
            let call = MatmulCall {
                w: &m,
                ty,
                x: dev.ptr(&xd),
                rows: t,
                max_rows: t,
                groups: None,
            };
            let mut ms = Vec::new();
            for i in 0..23 {
                let start = std::time::Instant::now();
                call.launch(&dev, "bench", kernel, &y).unwrap();
                dev.sync("bench").unwrap();
                if i >= 3 {
                    ms.push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
            ms.sort_by(f64::total_cmp);
            let med = ms[ms.len() / 2];
            line.push_str(&format!(
                "  T={t:<3} {med:>7.3} ms {:>6.0} GB/s ({kernel:?})",
                want as f64 / (med / 1e3) / 1e9
            ));
        }
        eprintln!("bench matmul {line}");
    }
}
