//! Replays the fuzz corpus kept in the repository through the fuzz targets' own bodies, on
//! stable Rust: every input that once crashed, hung or blew up memory
//! (`fuzz/regressions/<target>/`) and the seed inputs (`fuzz/seeds/<target>/`) must now be
//! read without a panic. The targets themselves run under cargo-fuzz (docs/fuzzing.md).
//!
//! `fuzz/pending/<target>/` holds inputs that still fail (their fix is elsewhere); they are not
//! replayed until they move to `regressions/`.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod entries;

use std::path::{Path, PathBuf};

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = entries::repo_root().join("fuzz").join(kind).join(target);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Run every kept input of every target; report all that panic, not just the first.
fn replay(kind: &str) -> usize {
    let mut failed = Vec::new();
    let mut count = 0;
    for &(target, run) in entries::TARGETS {
        for path in inputs(kind, target) {
            let data = std::fs::read(&path).unwrap();
            count += 1;
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(
        failed.is_empty(),
        "inputs that panic:\n{}",
        failed.join("\n")
    );
    count
}

#[test]
fn regression_inputs_do_not_panic() {
    replay("regressions");
}

#[test]
fn seed_inputs_do_not_panic() {
    // the seeds are the corpus every fuzzing run starts from: an empty set means a broken layout
    assert!(replay("seeds") >= entries::TARGETS.len());
}

#[test]
fn pack_round_trips_and_refuses_escaping_names() {
    let files = vec![
        ("tokens.npy".to_string(), b"abc".to_vec()),
        ("layer-0/attn_norm.bin".to_string(), Vec::new()),
    ];
    let packed = entries::pack(&files);
    let back: Vec<(String, Vec<u8>)> = entries::unpack(&packed)
        .into_iter()
        .map(|(n, c)| (n, c.to_vec()))
        .collect();
    assert_eq!(back, files);
    for bad in [
        "../x.npy",
        "/abs.npy",
        "a/b/c.npy",
        "./x",
        "a//b",
        "sp ace.npy",
    ] {
        assert!(
            entries::unpack(format!("{bad}\ndata").as_bytes()).is_empty(),
            "{bad}"
        );
    }
}

/// Regenerate `fuzz/seeds/` (run by hand after a format change):
/// `cargo test --release --test fuzz_replay -- --ignored write_seeds`.
#[test]
#[ignore = "writes fuzz/seeds/ into the source tree; run by hand"]
fn write_seeds() {
    seeds::write_all(&entries::repo_root().join("fuzz/seeds"));
}

/// Regenerate the hand-made inputs of `fuzz/regressions/` (the hostile inputs an outside fuzzing run found,
/// items 14-18, fixed on the same branch): `cargo test --release --test fuzz_replay --
/// --ignored write_hostile_regressions`.
#[test]
#[ignore = "writes fuzz/regressions/ into the source tree; run by hand"]
fn write_hostile_regressions() {
    seeds::write_hostile(&entries::repo_root().join("fuzz/regressions"));
}

mod seeds {
    use super::*;
    use falsifier::model::config::ModelConfig;
    use falsifier::model::gguf::{GgufFile, GgufWriter, MetaValue};
    use falsifier::model::quant::GgmlType;
    use falsifier::model::quant::quantize::{is_quantize_supported, quantize};
    use falsifier::model::synth::{self, SynthQuant};
    use falsifier::trace::io::aprt::write_aprt_dir;
    use falsifier::trace::io::npy::write_npy_dir;
    use falsifier::trace::io::write_trace;
    use falsifier::trace::{Key, Stage, Tensor, Trace, TraceMeta};

    pub fn write_all(root: &Path) {
        let put = |target: &str, name: &str, bytes: &[u8]| {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        };
        put("gguf", "every-dequant-type.gguf", &gguf_seed());
        for (name, bytes) in tokenizer_seeds() {
            put("gguf", name, &bytes);
        }
        let scratch = tempdir("seeds");
        for (preset, quant, file) in [
            ("tiny-dense", SynthQuant::Q8_0, "tiny-dense-q8_0.gguf"),
            ("tiny-moe", SynthQuant::Q4_0, "tiny-moe-q4_0.gguf"),
        ] {
            let path = scratch.join(file);
            synth::generate(&small_model(preset), quant, 1, "fuzz seed", &path).unwrap();
            put("gguf_model", file, &std::fs::read(&path).unwrap());
        }
        let trace = small_trace();
        let st = scratch.join("trace.safetensors");
        write_trace(&st, &trace).unwrap();
        put(
            "trace_safetensors",
            "small.safetensors",
            &std::fs::read(&st).unwrap(),
        );
        let npy = scratch.join("npy");
        write_npy_dir(&npy, &trace).unwrap();
        put("trace_npy", "small.pack", &entries::pack(&read_tree(&npy)));
        let aprt = scratch.join("aprt");
        write_aprt_dir(&aprt, &trace).unwrap();
        put(
            "trace_aprt",
            "small.pack",
            &entries::pack(&read_tree(&aprt)),
        );
        for f in std::fs::read_dir(entries::repo_root().join("contracts")).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "yaml") {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                put("contract", &name, &std::fs::read(&p).unwrap());
            }
        }
        std::fs::remove_dir_all(&scratch).unwrap();
    }

    /// A preset shrunk to one layer of 32-wide rows, so that a model is a few KB.
    fn small_model(preset: &str) -> ModelConfig {
        let mut c = synth::preset(preset).unwrap();
        let moe = c.is_moe();
        synth::Overrides {
            layers: Some(1),
            hidden: Some(32),
            heads: Some(2),
            kv_heads: Some(1),
            head_dim: Some(32),
            ffn: Some(32),
            vocab: Some(32),
            experts: moe.then_some(2),
            top_k: moe.then_some(1),
            expert_ffn: moe.then_some(32),
        }
        .apply(&mut c)
        .unwrap();
        c
    }

    /// Models and contracts with trusted sizes that once aborted, hung or exhausted memory.
    pub fn write_hostile(root: &Path) {
        let put = |target: &str, name: &str, bytes: &[u8]| {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        };
        let scratch = tempdir("hostile");
        let path = scratch.join("m.gguf");
        synth::generate(
            &small_model("tiny-dense"),
            SynthQuant::Q8_0,
            1,
            "hostile",
            &path,
        )
        .unwrap();
        let model = GgufFile::open(&path).unwrap();
        let with = |patch: &[(&str, MetaValue)]| rewrite(&model, patch);
        put(
            "gguf_model",
            "issue11-14-block-count-u32-max.gguf",
            &with(&[("qwen3.block_count", MetaValue::U32(u32::MAX))]),
        );
        put(
            "gguf_model",
            "issue11-14-block-count-2p63.gguf",
            &with(&[("qwen3.block_count", MetaValue::U64(1 << 63))]),
        );
        put(
            "gguf_model",
            "issue11-17-heads-and-key-length-2p32.gguf",
            &with(&[
                ("qwen3.attention.head_count", MetaValue::U64(1 << 32)),
                ("qwen3.attention.key_length", MetaValue::U64(1 << 32)),
                ("qwen3.attention.value_length", MetaValue::U64(1 << 32)),
            ]),
        );
        put(
            "gguf_model",
            "issue11-16-context-length-1.gguf",
            &with(&[("qwen3.context_length", MetaValue::U32(1))]),
        );
        std::fs::remove_dir_all(&scratch).unwrap();

        let base = "contract: C-FUZZ\nversion: 1.0.0\nstatus: PROPOSED\ndescription: d\n\
                    models:\n  m: { preset: tiny-dense, quant: f32, seed: 1MODEL }\n\
                    falsifiers:\n  - id: FALSIFY-FUZZ-001\n    rule: r\n    prediction: p\n\
                    \x20   if_fails: f\n    models: [m]\n    backends: [cpu, cpu-f32]\n\
                    \x20   tokens: TOKENS\n    stages: all\n    layers: LAYERS\n\
                    \x20   status: PROPOSED\namendment_history:\n\
                    \x20 - { version: 1.0.0, date: 2026-01-01, kind: created, title: t }\n";
        let contract = |model: &str, tokens: &str, layers: &str| {
            base.replace("MODEL", model)
                .replace("TOKENS", tokens)
                .replace("LAYERS", layers)
        };
        let tokens: Vec<String> = (0..300).map(|i| (i % 200).to_string()).collect();
        let long_prompt = format!("[{}]", tokens.join(", "));
        for (name, text) in [
            (
                "issue11-14-preset-layers-1e12.yaml",
                contract(", layers: 1000000000000", "[1, 2]", "all"),
            ),
            (
                "issue11-15-layer-range-1e12.yaml",
                contract("", "[1, 2]", "\"0..1000000000000\""),
            ),
            (
                "issue11-15-layer-range-u64-max.yaml",
                contract("", "[1, 2]", "\"0..18446744073709551615\""),
            ),
            (
                "issue11-16-prompt-past-context.yaml",
                contract("", &long_prompt, "all"),
            ),
            (
                "issue11-17-vocab-u64-max.yaml",
                contract(", vocab: 18446744073709551615", "[1, 2]", "all"),
            ),
            (
                "issue11-17-heads-head-dim-2p32.yaml",
                contract(", heads: 4294967296, head_dim: 4294967296", "[1, 2]", "all"),
            ),
            (
                "issue11-18-flow-nesting-100000.yaml",
                contract(
                    "",
                    &format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000)),
                    "all",
                ),
            ),
        ] {
            put("contract", name, text.as_bytes());
        }
    }

    /// `model` with some metadata values replaced (or added), tensors unchanged.
    fn rewrite(model: &GgufFile, patch: &[(&str, MetaValue)]) -> Vec<u8> {
        let mut w = GgufWriter::new();
        for (k, v) in model.metadata() {
            if !patch.iter().any(|(p, _)| p == k) {
                w.add_kv(k, v.clone());
            }
        }
        for (k, v) in patch {
            w.add_kv(k, v.clone());
        }
        for t in model.tensors() {
            w.add_tensor(&t.name, t.dims.clone(), t.ty).unwrap();
        }
        let mut out = Vec::new();
        w.write_to(&mut out, |i, sink| {
            let t = &model.tensors()[i];
            sink.write_all(model.tensor_data(t))
                .map_err(|e| falsifier::Error::internal(format!("writing {}: {e}", t.name)))
        })
        .unwrap();
        out
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("falsifier-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A two-layer trace of a three-token prompt, with an MoE layer's integer stage.
    fn small_trace() -> Trace {
        let meta = TraceMeta {
            backend: "cpu".into(),
            model: "seed.gguf".into(),
            tokens: vec![1, 2, 3],
            plan: "all".into(),
            dtype: "f32".into(),
            ..TraceMeta::default()
        };
        let mut t = Trace::new(meta);
        let vals = |n: usize| (0..n).map(|i| i as f32 * 0.25 - 1.0).collect::<Vec<_>>();
        t.insert(
            Key::model(Stage::Tokens),
            Tensor::i32(vec![3], vec![1, 2, 3]),
        );
        t.insert(
            Key::model(Stage::Embedding),
            Tensor::f32(vec![3, 4], vals(12)),
        );
        for layer in 0..2 {
            t.insert(
                Key::layer(layer, Stage::AttnNorm),
                Tensor::f32(vec![3, 4], vals(12)),
            );
            t.insert(
                Key::layer(layer, Stage::TopkIds),
                Tensor::i32(vec![3, 2], vec![0, 1, 1, 0, 0, 1]),
            );
        }
        t.insert(Key::model(Stage::Logits), Tensor::f32(vec![3, 5], vals(15)));
        t
    }

    fn read_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() {
                for (sub, bytes) in read_tree(&e.path()) {
                    out.push((format!("{name}/{sub}"), bytes));
                }
            } else {
                out.push((name, std::fs::read(e.path()).unwrap()));
            }
        }
        out.sort();
        out
    }

    /// Metadata of every value type, and a two-row tensor of every type we can quantize to.
    /// Tokenizer metadata alone (no tensors): the qwen3-tiny fixture's byte-level `gpt2`
    /// tokenizer, and a small SentencePiece `llama` one with scores and byte tokens.
    fn tokenizer_seeds() -> Vec<(&'static str, Vec<u8>)> {
        let write = |kv: Vec<(String, MetaValue)>| {
            let mut w = GgufWriter::new();
            for (k, v) in kv {
                w.add_kv(&k, v);
            }
            let mut out = Vec::new();
            w.write_to(&mut out, |_, _| Ok(())).unwrap();
            out
        };
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let fixture =
            GgufFile::open(&root.join("fixtures/qwen3-tiny/qwen3-tiny-f32.gguf")).unwrap();
        let gpt2: Vec<(String, MetaValue)> = fixture
            .metadata()
            .iter()
            .filter(|(k, _)| k.starts_with("tokenizer.") || k == "general.architecture")
            .cloned()
            .collect();
        let s = |t: &str| MetaValue::String(t.into());
        let mut tokens = vec![s("<unk>"), s("<s>"), s("</s>")];
        tokens.extend((0..=255u8).map(|b| s(&format!("<0x{b:02X}>"))));
        let words = ["▁", "a", "b", "▁a", "ab", "▁ab"];
        tokens.extend(words.iter().map(|w| s(w)));
        let n = tokens.len();
        let mut types = vec![MetaValue::I32(2), MetaValue::I32(3), MetaValue::I32(3)];
        types.extend((0..256).map(|_| MetaValue::I32(6)));
        types.extend(words.iter().map(|_| MetaValue::I32(1)));
        let scores = (0..n).map(|i| MetaValue::F32(-(i as f32))).collect();
        let spm = vec![
            ("general.architecture".to_string(), s("llama")),
            ("tokenizer.ggml.model".to_string(), s("llama")),
            (
                "tokenizer.ggml.tokens".to_string(),
                MetaValue::Array(tokens),
            ),
            (
                "tokenizer.ggml.scores".to_string(),
                MetaValue::Array(scores),
            ),
            (
                "tokenizer.ggml.token_type".to_string(),
                MetaValue::Array(types),
            ),
            ("tokenizer.ggml.bos_token_id".to_string(), MetaValue::U32(1)),
            ("tokenizer.ggml.eos_token_id".to_string(), MetaValue::U32(2)),
            (
                "tokenizer.ggml.unknown_token_id".to_string(),
                MetaValue::U32(0),
            ),
        ];
        vec![
            ("tokenizer-gpt2.gguf", write(gpt2)),
            ("tokenizer-spm.gguf", write(spm)),
        ]
    }

    fn gguf_seed() -> Vec<u8> {
        let mut w = GgufWriter::new();
        w.add_kv("general.architecture", MetaValue::String("qwen3".into()));
        w.add_kv("qwen3.block_count", MetaValue::U32(1));
        w.add_kv("seed.i64", MetaValue::I64(-3));
        w.add_kv("seed.f32", MetaValue::F32(0.5));
        w.add_kv("seed.bool", MetaValue::Bool(true));
        w.add_kv(
            "seed.array",
            MetaValue::Array(vec![MetaValue::U8(1), MetaValue::U8(2)]),
        );
        let mut data = Vec::new();
        for ty in GgmlType::ALL {
            if !is_quantize_supported(ty) {
                continue;
            }
            let row = ty.block_values().max(32) as u64;
            w.add_tensor(&format!("t.{}", ty.name()), vec![row, 2], ty)
                .unwrap();
            let src: Vec<f32> = (0..2 * row).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut bytes = Vec::new();
            quantize(ty, &src, &mut bytes).unwrap();
            data.push(bytes);
        }
        let mut out = Vec::new();
        w.write_to(&mut out, |i, sink| {
            sink.write_all(&data[i])
                .map_err(|e| falsifier::Error::internal(format!("writing seed tensor {i}: {e}")))
        })
        .unwrap();
        out
    }
}
