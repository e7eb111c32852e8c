//! The CPU reference forward against golden activations from Hugging Face transformers
//! (fixtures/qwen3moe-tiny, see /work/shared/golden/README.md): every stage of every layer, both
//! the F32 and the Q8_0 model. Also the properties the rest of falsifier relies on: the trace
//! CLI path, capture not changing results, teacher forcing, planted faults showing first at
//! their own stage, T = 1, and bad input being an error.

use std::path::{Path, PathBuf};
use std::time::Instant;

use falsifier::ErrorKind;
use falsifier::backend::cpu::{CpuBackend, Precision};
use falsifier::backend::{Backend, Fault, ForwardRequest};
use falsifier::cli::trace::TraceArgs;
use falsifier::model::GgmlType;
use falsifier::model::gguf::GgufWriter;
use falsifier::model::gguf::{GgufFile, MetaValue};
use falsifier::model::quant::dequant::dequantize;
use falsifier::model::quant::quantize::quantize;
use falsifier::trace::io::{TraceFile, read_trace};
use falsifier::trace::plan::CapturePlan;
use falsifier::trace::stage::{Key, Stage};
use falsifier::trace::tensor::{Tensor, TensorData, ViewData};
use falsifier::trace::trace::Trace;

const TOKENS: [u32; 8] = [81, 119, 101, 110, 51, 77, 111, 69];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/qwen3moe-tiny")
        .join(name)
}

fn run(
    model: &str,
    tokens: &[u32],
    plan: &CapturePlan,
    faults: &[Fault],
    teacher: Option<&Trace>,
) -> falsifier::Result<Trace> {
    let mut b = CpuBackend::open(&fixture(model))?;
    let req = ForwardRequest {
        tokens,
        plan,
        teacher,
        faults,
        schedule: falsifier::backend::Schedule::full(),
    };
    b.forward(&req)
}

fn clean(model: &str) -> Trace {
    run(model, &TOKENS, &CapturePlan::all(), &[], None).unwrap()
}

/// ||a - b|| / ||b|| in f64.
fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        num += (*x as f64 - *y as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

fn check_against_golden(model: &str, golden: &str) {
    check_golden_set(&fixture(model), &fixture(golden));
}

/// Run the model on the golden set's own prompt (its `tokens` key) and compare every key.
fn check_golden_set(model_path: &Path, golden_path: &Path) {
    let model = model_path.display().to_string();
    let gold = TraceFile::open(golden_path).unwrap();
    let tokens: Vec<u32> = match gold.get(&Key::model(Stage::Tokens)).unwrap().unwrap().data {
        ViewData::I32(t) => t.iter().map(|&x| x as u32).collect(),
        ViewData::F32(_) => panic!("{model}: golden tokens are not i32"),
    };
    let start = Instant::now();
    let mut b = CpuBackend::open(model_path).unwrap();
    let ours = b
        .forward(&ForwardRequest::new(&tokens, &CapturePlan::all()))
        .unwrap();
    let elapsed = start.elapsed();
    let mut worst: Vec<(String, f64)> = Vec::new();
    let mut n = 0;
    for key in gold.keys() {
        let g = gold.get(key).unwrap().unwrap();
        let o = ours
            .get(key)
            .unwrap_or_else(|| panic!("{model}: our trace lacks {key}"));
        assert_eq!(
            Some(o.shape.as_slice()),
            g.shape.as_deref(),
            "{model}: shape of {key}"
        );
        match (&o.data, &g.data) {
            (TensorData::F32(a), ViewData::F32(b)) => {
                let e = rel_l2(a, b);
                assert!(
                    e <= 1e-5,
                    "{model}: {key}: relative L2 error {e:.3e} > 1e-5"
                );
                let fam = key.stage.name().to_string();
                match worst.iter_mut().find(|(f, _)| *f == fam) {
                    Some((_, w)) => *w = w.max(e),
                    None => worst.push((fam, e)),
                }
            }
            (TensorData::I32(a), ViewData::I32(b)) => {
                assert_eq!(a.as_slice(), &b[..], "{model}: {key}")
            }
            _ => panic!("{model}: dtype of {key} differs"),
        }
        n += 1;
    }
    assert!(n >= 4 + 18, "{model}: golden file has only {n} keys");
    eprintln!("{model}: {n} keys match golden; forward {elapsed:?}; worst relative L2 per stage:");
    for (fam, e) in &worst {
        eprintln!("  {fam:<14} {e:.2e}");
    }
}

#[test]
fn f32_model_matches_transformers() {
    check_against_golden("qwen3moe-tiny-f32.gguf", "activations-f32.safetensors");
}

#[test]
fn q8_0_model_matches_transformers() {
    check_against_golden("qwen3moe-tiny-q8_0.gguf", "activations-q8_0.safetensors");
}

fn golden_dir(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(dir)
}

#[test]
fn dense_f32_model_matches_transformers() {
    let d = golden_dir("qwen3-tiny");
    check_golden_set(
        &d.join("qwen3-tiny-f32.gguf"),
        &d.join("activations-f32.safetensors"),
    );
}

#[test]
fn dense_q8_0_model_matches_transformers() {
    let d = golden_dir("qwen3-tiny");
    check_golden_set(
        &d.join("qwen3-tiny-q8_0.gguf"),
        &d.join("activations-q8_0.safetensors"),
    );
}

/// Every other architecture family from its own transformers implementation (tools/golden/
/// make_llama_golden.py, make_qwen2_golden.py): Llama 2 (MHA), Llama 3 (GQA, RoPE frequencies
/// scaled through `rope_freqs`), Mistral, Mixtral (experts, renormalised top-k), Qwen2 (q/k/v
/// biases, tied output), Qwen2-MoE (no renormalisation, sigmoid-gated shared expert); F32 and
/// Q8_0, every stage to 1e-5 relative L2, expert ids exact. The llama q/k stages are in the
/// converter's permuted layout on both sides.
#[test]
fn other_architectures_match_transformers() {
    for family in [
        "llama2", "llama3", "mistral", "mixtral", "qwen2", "qwen2moe",
    ] {
        let d = golden_dir(&format!("{family}-tiny"));
        for ty in ["f32", "q8_0"] {
            check_golden_set(
                &d.join(format!("{family}-tiny-{ty}.gguf")),
                &d.join(format!("activations-{ty}.safetensors")),
            );
        }
    }
}

/// More shapes from transformers (fixtures/README.md): MHA with a 54-token prompt, T = 1 for
/// both architectures, GQA 4:1 with top-4 of 16 experts and head_dim 16 (nh*D != hidden),
/// MQA with head_dim 64 and top-3.
#[test]
fn other_shapes_match_transformers() {
    let shapes = golden_dir("shapes");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&shapes)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 5,
        "expected the five shape sets in {shapes:?}"
    );
    for dir in dirs {
        let gguf = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "gguf"))
            .unwrap();
        check_golden_set(&gguf, &dir.join("activations-f32.safetensors"));
    }
}

#[test]
fn f32_precision_also_matches_transformers() {
    let mut b = CpuBackend::open(&fixture("qwen3moe-tiny-f32.gguf"))
        .unwrap()
        .with_precision(Precision::F32);
    let plan = CapturePlan::all();
    let ours = b.forward(&ForwardRequest::new(&TOKENS, &plan)).unwrap();
    assert!(ours.meta.dtype.starts_with("f32 accumulation"));
    let gold = read_trace(&fixture("activations-f32.safetensors")).unwrap();
    for (key, g) in &gold.tensors {
        let o = &ours.tensors[key];
        match (&o.data, &g.data) {
            (TensorData::F32(a), TensorData::F32(b)) => {
                let e = rel_l2(a, b);
                assert!(e <= 1e-5, "{key}: {e:.3e}");
            }
            _ => assert_eq!(o, g, "{key}"),
        }
    }
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("falsifier-golden-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn trace_cli_writes_what_the_backend_computes() {
    let out = tmp("cli.safetensors");
    let args = TraceArgs {
        model: fixture("qwen3moe-tiny-q8_0.gguf"),
        backend: "cpu".into(),
        tokens: Some("81, 119,101,110,51,77,111,69".into()),
        prompt: None,
        stages: "all".into(),
        layers: None,
        out: out.clone(),
        faults: vec![],
        precision: "f64".into(),
        teacher: None,
        chunk: None,
        decode: 0,
        kv_cache: "f32".into(),
    };
    falsifier::cli::trace::run(&args).unwrap();
    let back = read_trace(&out).unwrap();
    let direct = clean("qwen3moe-tiny-q8_0.gguf");
    assert_eq!(back.tensors, direct.tensors);
    // The CLI adds each position's piece from the model's own (byte-level) tokenizer.
    let pieces: Vec<String> = "Qwen3MoE".chars().map(String::from).collect();
    assert_eq!(back.meta.pieces(), pieces);
    let mut with_pieces = direct.meta.clone();
    with_pieces.set_pieces(&pieces);
    assert_eq!(back.meta, with_pieces);
    assert_eq!(back.meta.backend, "cpu");
    assert_eq!(back.meta.model_sha256.len(), 64);
    assert_eq!(back.meta.tokens, TOKENS);
    // a subset plan keeps exactly the planned keys
    let sub = TraceArgs {
        stages: "topk_ids,logits".into(),
        layers: Some("1..3".into()),
        ..args.clone()
    };
    let t = falsifier::cli::trace::trace(&sub).unwrap();
    let keys: Vec<String> = t.keys().map(|k| k.to_string()).collect();
    assert_eq!(keys, ["layer.1.topk_ids", "layer.2.topk_ids", "logits"]);
    // CUDA is not built yet: a clean no-device error
    let cuda = TraceArgs {
        backend: "cuda".into(),
        ..args.clone()
    };
    assert_eq!(
        falsifier::cli::trace::trace(&cuda).unwrap_err().kind,
        ErrorKind::NoDevice
    );
    let bad = TraceArgs {
        tokens: Some("1,x".into()),
        ..args
    };
    assert_eq!(
        falsifier::cli::trace::trace(&bad).unwrap_err().kind,
        ErrorKind::Input
    );
}

#[test]
fn capturing_does_not_change_results() {
    let full = clean("qwen3moe-tiny-q8_0.gguf");
    let only = run(
        "qwen3moe-tiny-q8_0.gguf",
        &TOKENS,
        &CapturePlan::parse("logits", None).unwrap(),
        &[],
        None,
    )
    .unwrap();
    assert_eq!(only.tensors.len(), 1);
    let key = Key::model(Stage::Logits);
    assert_eq!(only.tensors[&key], full.tensors[&key]);
}

#[test]
fn teacher_forcing_with_own_trace_reproduces_it() {
    let model = "qwen3moe-tiny-f32.gguf";
    let own = clean(model);
    let forced = run(model, &TOKENS, &CapturePlan::all(), &[], Some(&own)).unwrap();
    assert_eq!(forced.tensors, own.tensors);
    assert_eq!(
        forced.meta.extra.get("teacher_forced").map(String::as_str),
        Some("true")
    );
    // a teacher whose layer 1 input differs moves layer 1 on, not layer 0
    let mut other = own.clone();
    let k = Key::layer(0, Stage::LayerOut);
    if let TensorData::F32(v) = &mut other.tensors.get_mut(&k).unwrap().data {
        v.iter_mut().for_each(|x| *x *= 1.5);
    }
    let t = run(model, &TOKENS, &CapturePlan::all(), &[], Some(&other)).unwrap();
    assert_eq!(t.tensors[&k], own.tensors[&k]);
    assert_ne!(
        t.tensors[&Key::layer(1, Stage::AttnNorm)],
        own.tensors[&Key::layer(1, Stage::AttnNorm)]
    );
    // a teacher missing a key is an error naming it
    let mut partial = own.clone();
    partial.tensors.remove(&Key::layer(1, Stage::LayerOut));
    let err = run(model, &TOKENS, &CapturePlan::all(), &[], Some(&partial)).unwrap_err();
    assert!(err.to_string().contains("layer.1.layer_out"), "{err}");
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    match (&a.data, &b.data) {
        (TensorData::F32(x), TensorData::F32(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
        }
        _ => a == b,
    }
}

/// The first key, in forward order, where `t` differs from `base`.
fn first_difference(base: &Trace, t: &Trace) -> Option<Key> {
    base.tensors
        .iter()
        .find(|(k, v)| !t.tensors.get(k).is_some_and(|w| same(v, w)))
        .map(|(k, _)| *k)
}

fn assert_first_difference(model: &str, base: &Trace, tokens: &[u32], spec: &str) {
    let fault: Fault = spec.parse().unwrap();
    let t = run(model, tokens, &CapturePlan::all(), &[fault], None).unwrap();
    let want = Key {
        layer: fault.layer,
        stage: fault.stage,
    };
    assert_eq!(first_difference(base, &t), Some(want), "{spec}");
    assert!(t.meta.extra["faults"].contains(spec));
}

#[test]
fn each_fault_shows_first_at_its_stage() {
    let model = "qwen3moe-tiny-q8_0.gguf";
    let base = clean(model);
    // an expert that layer 1 uses, and one it does not use at position 0
    let ids = base.tensors[&Key::layer(1, Stage::TopkIds)]
        .as_i32()
        .unwrap()
        .to_vec();
    let other = (0..8).find(|e| !ids[..2].contains(e)).unwrap();
    for spec in [
        "nan[5]@layer.1.ffn_out".to_string(),
        "nan[3]@embedding".to_string(),
        "nan[1000000]@logits".to_string(),
        "scale_drift[0.01]@layer.0.attn_out".to_string(),
        "scale_drift[0.001]@final_norm".to_string(),
        "act_q8_rounding@layer.0.q_proj".to_string(),
        "act_q8_rounding@layer.2.ffn_out".to_string(),
        "act_q8_rounding@layer.1.router_logits".to_string(),
        "no_topk_renorm@layer.1.topk_weights".to_string(),
        "rope_pair_swap@layer.0.k_rope".to_string(),
        "rope_pair_swap@layer.2.q_rope".to_string(),
        "causal_mask_off_by_one@layer.2.attn_probs".to_string(),
        format!("expert_swap[{},{other}]@layer.1.ffn_out", ids[0]),
    ] {
        assert_first_difference(model, &base, &TOKENS, &spec);
    }
    // topk_ids still record the router's choice under an expert swap
    let f: Fault = format!("expert_swap[{},{other}]@layer.1.ffn_out", ids[0])
        .parse()
        .unwrap();
    let t = run(model, &TOKENS, &CapturePlan::all(), &[f], None).unwrap();
    assert_eq!(
        t.tensors[&Key::layer(1, Stage::TopkIds)],
        base.tensors[&Key::layer(1, Stage::TopkIds)]
    );
    // the planted NaN lands at the clamped index
    let f: Fault = "nan[1000000]@logits".parse().unwrap();
    let t = run(model, &TOKENS, &CapturePlan::all(), &[f], None).unwrap();
    let logits = t.tensors[&Key::model(Stage::Logits)].as_f32().unwrap();
    assert!(logits[1_000_000 % logits.len()].is_nan());
    assert_eq!(logits.iter().filter(|x| x.is_nan()).count(), 1);
}

#[test]
fn faults_that_cannot_fire_are_errors() {
    let model = "qwen3moe-tiny-q8_0.gguf";
    for spec in [
        "q6k_as_q4k@layer.0.ffn_out",       // Q8_0 experts: no Q6_K tensor there
        "act_q8_rounding@layer.0.ffn_gate", // dense-only stage on a MoE model
        "nan@layer.3.attn_norm",            // layer out of range
        "expert_swap[1,8]@layer.0.ffn_out", // expert out of range
    ] {
        let fault: Fault = spec.parse().unwrap();
        let err = run(model, &TOKENS, &CapturePlan::all(), &[fault], None).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Input, "{spec}: {err}");
    }
    let err = run(
        model,
        &TOKENS,
        &CapturePlan::all(),
        &["q6k_as_q4k@logits".parse().unwrap()],
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("no Q6_K tensor"), "{err}");
}

#[test]
fn single_token_equals_first_position_of_the_prompt() {
    let model = "qwen3moe-tiny-q8_0.gguf";
    let full = clean(model);
    let one = run(model, &TOKENS[..1], &CapturePlan::all(), &[], None).unwrap();
    assert_eq!(one.tensors.len(), full.tensors.len());
    for (key, t) in &one.tensors {
        let f = &full.tensors[key];
        // every stage's first position is computed from the first token alone (causal)
        if key.stage == Stage::AttnProbs {
            assert_eq!(t.shape[1..], [1, 1]);
            continue;
        }
        let n = t.len();
        assert_eq!(t.shape[0], 1, "{key}");
        match (&t.data, &f.data) {
            (TensorData::F32(a), TensorData::F32(b)) => assert!(
                same(
                    &Tensor::f32(vec![n], a.clone()),
                    &Tensor::f32(vec![n], b[..n].to_vec())
                ),
                "{key}"
            ),
            (TensorData::I32(a), TensorData::I32(b)) => assert_eq!(a[..], b[..n], "{key}"),
            _ => panic!("{key}"),
        }
    }
}

#[test]
fn bad_tokens_are_input_errors() {
    let model = "qwen3moe-tiny-f32.gguf";
    let err = run(model, &[1, 2, 260, 3], &CapturePlan::all(), &[], None).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Input);
    assert!(
        err.to_string().contains("260") && err.to_string().contains("position 2"),
        "{err}"
    );
    let err = run(model, &[], &CapturePlan::all(), &[], None).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Input);
}

// ---------------------------------------------------------------------------------------------
// Small models written here with K-quant weights (the golden set is F32/Q8_0 with rows of 64):
// a dense qwen3 (the golden set is MoE only) and a qwen3moe whose experts are Q6_K, for the
// Q6_K misdecode fault, which needs rows of 256 values.

const DH: usize = 256; // hidden = ffn = n_heads * head_dim, so every matrix row is one Q6_K block
const DV: usize = 40;

/// Deterministic pseudo-random values in about [-1, 1) scaled by `gain`.
fn noise(n: usize, seed: u64, gain: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * gain
        })
        .collect()
}

fn write_model(path: &Path, arch: &str) {
    let moe = arch == "qwen3moe";
    let mut w = GgufWriter::new();
    let u = |x: usize| MetaValue::U32(x as u32);
    w.add_kv("general.architecture", MetaValue::String(arch.into()));
    if moe {
        w.add_kv(&format!("{arch}.expert_count"), u(4));
        w.add_kv(&format!("{arch}.expert_used_count"), u(2));
        w.add_kv(&format!("{arch}.expert_feed_forward_length"), u(DH));
    }
    w.add_kv(&format!("{arch}.block_count"), u(2));
    w.add_kv(&format!("{arch}.context_length"), u(64));
    w.add_kv(&format!("{arch}.embedding_length"), u(DH));
    w.add_kv(&format!("{arch}.feed_forward_length"), u(DH));
    w.add_kv(&format!("{arch}.attention.head_count"), u(2));
    w.add_kv(&format!("{arch}.attention.head_count_kv"), u(1));
    w.add_kv(&format!("{arch}.attention.key_length"), u(128));
    w.add_kv(&format!("{arch}.attention.value_length"), u(128));
    w.add_kv(&format!("{arch}.rope.freq_base"), MetaValue::F32(1e6));
    w.add_kv(
        &format!("{arch}.attention.layer_norm_rms_epsilon"),
        MetaValue::F32(1e-6),
    );
    w.add_kv(&format!("{arch}.vocab_size"), u(DV));
    let mut tensors: Vec<(String, Vec<u64>, GgmlType, Vec<f32>)> = Vec::new();
    let mut add = |name: String, dims: Vec<u64>, ty: GgmlType, gain: f32, offset: f32| {
        let n = dims.iter().product::<u64>() as usize;
        let seed = tensors.len() as u64 + 7;
        let v = noise(n, seed, gain)
            .into_iter()
            .map(|x| x + offset)
            .collect();
        tensors.push((name, dims, ty, v));
    };
    let d = DH as u64;
    add(
        "token_embd.weight".into(),
        vec![d, DV as u64],
        GgmlType::Q8_0,
        1.0,
        0.0,
    );
    for i in 0..2 {
        let b = |s: &str| format!("blk.{i}.{s}.weight");
        let g = 1.0 / (DH as f32).sqrt() * 1.7;
        add(b("attn_norm"), vec![d], GgmlType::F32, 0.2, 1.0);
        add(b("attn_q"), vec![d, d], GgmlType::Q4_K, g, 0.0);
        add(b("attn_k"), vec![d, 128], GgmlType::Q5_K, g, 0.0);
        add(b("attn_v"), vec![d, 128], GgmlType::Q6_K, g, 0.0);
        add(b("attn_output"), vec![d, d], GgmlType::Q4_K, g, 0.0);
        add(b("attn_q_norm"), vec![128], GgmlType::F32, 0.2, 1.0);
        add(b("attn_k_norm"), vec![128], GgmlType::F32, 0.2, 1.0);
        add(b("ffn_norm"), vec![d], GgmlType::F32, 0.2, 1.0);
        if moe {
            add(b("ffn_gate_inp"), vec![d, 4], GgmlType::F32, 2.0 * g, 0.0);
            add(b("ffn_gate_exps"), vec![d, d, 4], GgmlType::Q4_K, g, 0.0);
            add(b("ffn_up_exps"), vec![d, d, 4], GgmlType::Q5_K, g, 0.0);
            add(b("ffn_down_exps"), vec![d, d, 4], GgmlType::Q6_K, g, 0.0);
        } else {
            add(b("ffn_gate"), vec![d, d], GgmlType::Q4_K, g, 0.0);
            add(b("ffn_up"), vec![d, d], GgmlType::Q4_K, g, 0.0);
            add(b("ffn_down"), vec![d, d], GgmlType::Q6_K, g, 0.0);
        }
    }
    add(
        "output_norm.weight".into(),
        vec![d],
        GgmlType::F32,
        0.2,
        1.0,
    );
    // no output.weight: tied to token_embd, as llama.cpp allows
    for (name, dims, ty, _) in &tensors {
        w.add_tensor(name, dims.clone(), *ty).unwrap();
    }
    w.write_file(path, |i, sink| {
        let (_, _, ty, v) = &tensors[i];
        let mut bytes = Vec::new();
        quantize(*ty, v, &mut bytes)?;
        sink.write_all(&bytes)
            .map_err(|e| falsifier::Error::internal(e.to_string()))
    })
    .unwrap();
}

#[test]
fn dense_qwen3_forward_and_its_faults() {
    let path = tmp("dense-qwen3.gguf");
    write_model(&path, "qwen3");
    let tokens = [3u32, 17, 39, 0, 22];
    let mut b = CpuBackend::open(&path).unwrap();
    let plan = CapturePlan::all();
    let base = b.forward(&ForwardRequest::new(&tokens, &plan)).unwrap();
    let get = |k: &str| {
        base.tensors[&k.parse::<Key>().unwrap()]
            .as_f32()
            .unwrap()
            .to_vec()
    };
    assert!(base.tensors.keys().all(|k| !k.stage.is_moe_only()));
    assert_eq!(
        base.tensors[&"layer.1.ffn_act".parse::<Key>().unwrap()].shape,
        [5, DH]
    );
    assert_eq!(base.tensors[&Key::model(Stage::Logits)].shape, [5, DV]);
    // ffn_gate against a naive f64 matmul with the dequantized weight
    let file = GgufFile::open(&path).unwrap();
    let info = file.tensor("blk.1.ffn_gate.weight").unwrap();
    let mut wg = vec![0f32; DH * DH];
    dequantize(info.ty, file.tensor_data(info), &mut wg).unwrap();
    let (h, gate, up, act) = (
        get("layer.1.ffn_norm"),
        get("layer.1.ffn_gate"),
        get("layer.1.ffn_up"),
        get("layer.1.ffn_act"),
    );
    for t in 0..5 {
        for r in 0..DH {
            let want: f64 = (0..DH)
                .map(|j| h[t * DH + j] as f64 * wg[r * DH + j] as f64)
                .sum();
            assert!((gate[t * DH + r] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()));
        }
    }
    for j in 0..act.len() {
        let g = gate[j] as f64;
        let want = g / (1.0 + (-g).exp()) * up[j] as f64;
        assert!((act[j] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()));
    }
    let (r, y, out) = (
        get("layer.0.attn_residual"),
        get("layer.0.ffn_out"),
        get("layer.0.layer_out"),
    );
    assert!(
        out.iter()
            .zip(r.iter().zip(&y))
            .all(|(o, (a, b))| *o == a + b)
    );
    assert!(get("logits").iter().all(|x| x.is_finite()));
    // faults on the dense path, and the story's Q6_K-as-Q4_K bug on a Q6_K tensor
    let dense_base = base;
    let model = path.to_str().unwrap();
    for spec in [
        "q6k_as_q4k@layer.1.ffn_out",
        "q6k_as_q4k@layer.0.v_proj",
        "act_q8_rounding@layer.0.ffn_gate",
        "act_q8_rounding@layer.1.ffn_up",
        "nan[7]@layer.1.ffn_act",
        "scale_drift[0.05]@layer.0.ffn_gate",
    ] {
        let fault: Fault = spec.parse().unwrap();
        let t = CpuBackend::open(&path)
            .unwrap()
            .forward(&ForwardRequest {
                tokens: &tokens,
                plan: &plan,
                teacher: None,
                faults: &[fault],
                schedule: falsifier::backend::Schedule::full(),
            })
            .unwrap();
        assert_eq!(
            first_difference(&dense_base, &t),
            Some(Key {
                layer: fault.layer,
                stage: fault.stage
            }),
            "{model}: {spec}"
        );
    }
    for spec in [
        "q6k_as_q4k@layer.0.ffn_gate",
        "no_topk_renorm@layer.0.topk_weights",
        "expert_swap[0,1]@layer.0.ffn_out",
    ] {
        let fault: Fault = spec.parse().unwrap();
        let err = b
            .forward(&ForwardRequest {
                tokens: &tokens,
                plan: &plan,
                teacher: None,
                faults: &[fault],
                schedule: falsifier::backend::Schedule::full(),
            })
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Input, "{spec}");
    }
}

#[test]
fn kquant_moe_and_the_q6k_misdecode_in_the_experts() {
    let path = tmp("moe-kquant.gguf");
    write_model(&path, "qwen3moe");
    let tokens = [5u32, 1, 38, 22, 9, 30];
    let plan = CapturePlan::all();
    let mut b = CpuBackend::open(&path).unwrap();
    let base = b.forward(&ForwardRequest::new(&tokens, &plan)).unwrap();
    assert_eq!(
        base.tensors[&"layer.1.topk_ids".parse::<Key>().unwrap()].shape,
        [6, 2]
    );
    assert!(
        base.tensors[&Key::model(Stage::Logits)]
            .as_f32()
            .unwrap()
            .iter()
            .all(|x| x.is_finite())
    );
    let ids = base.tensors[&"layer.0.topk_ids".parse::<Key>().unwrap()]
        .as_i32()
        .unwrap()
        .to_vec();
    let unused = (0..4).find(|e| !ids[..2].contains(e)).unwrap();
    for spec in [
        "q6k_as_q4k@layer.0.ffn_out".to_string(),
        "q6k_as_q4k@layer.1.v_proj".to_string(),
        "act_q8_rounding@layer.1.ffn_out".to_string(),
        "act_q8_rounding@layer.0.router_logits".to_string(),
        format!("expert_swap[{},{unused}]@layer.0.ffn_out", ids[0]),
    ] {
        let fault: Fault = spec.parse().unwrap();
        let req = ForwardRequest {
            tokens: &tokens,
            plan: &plan,
            teacher: None,
            faults: &[fault],
            schedule: falsifier::backend::Schedule::full(),
        };
        let t = b.forward(&req).unwrap();
        assert_eq!(
            first_difference(&base, &t),
            Some(Key {
                layer: fault.layer,
                stage: fault.stage
            }),
            "{spec}"
        );
    }
    // the router (F32) has no Q6_K weight to misdecode
    let fault: Fault = "q6k_as_q4k@layer.0.router_logits".parse().unwrap();
    let req = ForwardRequest {
        tokens: &tokens,
        plan: &plan,
        teacher: None,
        faults: &[fault],
        schedule: falsifier::backend::Schedule::full(),
    };
    assert_eq!(b.forward(&req).unwrap_err().kind, ErrorKind::Input);
}
