//! Quantization drift (runner::drift, diff::logits, diff::drift): two files of one model, one
//! prompt, the logits as distributions and the layers ranked by their own error.
//!
//! The ranking is tested where the answer is known: a file whose layers are all Q8_0 except one
//! layer in Q4_0 must name that layer as the one that loses most, although the free-running
//! error of the layers after it is larger (they inherit it).

use std::path::{Path, PathBuf};

use falsifier::backend::{self, Backend};
use falsifier::diff::DiffOptions;
use falsifier::model::gguf::GgufFile;
use falsifier::model::gguf::GgufWriter;
use falsifier::model::quant::{GgmlType, dequantize, quantize::quantize};
use falsifier::model::synth::{self, SynthQuant};
use falsifier::model::tokenizer::Prompt;
use falsifier::runner::drift::diff_models;
use falsifier::trace::plan::CapturePlan;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("falsifier-drift-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A 4-layer tiny llama in F32.
fn f32_model(dir: &Path) -> PathBuf {
    let mut c = synth::preset("tiny-llama").unwrap();
    c.n_layers = 4;
    let p = dir.join("f32.gguf");
    synth::generate(&c, SynthQuant::F32, 7, "drift", &p).unwrap();
    p
}

/// `src` with every 2-D weight re-encoded as `ty_of(name)` (norms and 1-D tensors stay F32).
fn requantize(src: &Path, dst: &Path, ty_of: impl Fn(&str) -> GgmlType) {
    let f = GgufFile::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        w.add_kv(k, v.clone());
    }
    let types: Vec<GgmlType> = f
        .tensors()
        .iter()
        .map(|t| {
            if t.dims.len() >= 2 {
                ty_of(&t.name)
            } else {
                t.ty
            }
        })
        .collect();
    for (t, ty) in f.tensors().iter().zip(&types) {
        w.add_tensor(&t.name, t.dims.clone(), *ty).unwrap();
    }
    w.write_file(dst, |i, sink| {
        let t = &f.tensors()[i];
        let mut vals = vec![0f32; t.n_elements() as usize];
        dequantize(t.ty, f.tensor_data(t), &mut vals)?;
        let mut out = Vec::new();
        quantize(types[i], &vals, &mut out)?;
        sink.write_all(&out)
            .map_err(|e| falsifier::Error::internal(e.to_string()))
    })
    .unwrap();
}

fn cpu(p: &Path) -> falsifier::Result<Box<dyn Backend>> {
    backend::open("cpu", p)
}

const TOKENS: [u32; 12] = [1, 17, 42, 99, 3, 250, 8, 77, 120, 5, 64, 200];

fn prompt() -> Prompt {
    Prompt {
        tokens: TOKENS.to_vec(),
        pieces: Vec::new(),
    }
}

#[test]
fn the_coarsest_layer_ranks_first_though_later_layers_drift_more() {
    let dir = scratch("rank");
    let full = f32_model(&dir);
    let mixed = dir.join("mixed.gguf");
    requantize(&full, &mixed, |name| {
        if name.starts_with("blk.1.") {
            GgmlType::Q4_0
        } else {
            GgmlType::Q8_0
        }
    });
    let report = diff_models(
        &full,
        &mixed,
        &cpu,
        &prompt(),
        &CapturePlan::all(),
        &DiffOptions::default(),
    )
    .unwrap();
    let drift = report.drift.as_ref().expect("a drift ranking");
    // 4 layers, the embedding and the output head
    assert_eq!(drift.layers.len(), 6, "{drift:?}");
    assert_eq!(
        drift.layers[0].key.to_string(),
        "layer.1.layer_out",
        "{drift:?}"
    );
    // layer 1's own error dominates the Q8_0 layers' own errors by far
    assert!(
        drift.layers[0].own_rel_l2 > 4.0 * drift.layers[1].own_rel_l2,
        "{drift:?}"
    );
    // layers 2 and 3 inherit layer 1's error: accumulated well above their own
    for l in drift.layers.iter().filter(|l| l.key.layer >= Some(2)) {
        let acc = l
            .accumulated_rel_l2
            .expect("free-running layer_out compared");
        assert!(acc > 2.0 * l.own_rel_l2, "{l:?}");
    }
    let g = report.logits.as_ref().expect("logits agreement");
    assert_eq!(g.positions, TOKENS.len());
    assert!(g.kld_mean() > 0.0 && g.kld_mean().is_finite());
    // the origin of the free-running divergence is in layer 0 (Q8_0 everywhere drifts at once)
    assert!(report.origin.is_some());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_file_against_its_own_copy_has_no_drift() {
    let dir = scratch("same");
    let full = f32_model(&dir);
    let copy = dir.join("copy.gguf");
    std::fs::copy(&full, &copy).unwrap();
    let report = diff_models(
        &full,
        &copy,
        &cpu,
        &prompt(),
        &CapturePlan::all(),
        &DiffOptions::default(),
    )
    .unwrap();
    assert!(report.holds);
    let g = report.logits.as_ref().unwrap();
    assert_eq!(g.kld_max(), 0.0);
    assert_eq!(g.top1_rate(), 1.0);
    assert_eq!(g.topk_overlap_mean(), 1.0);
    let drift = report.drift.as_ref().unwrap();
    assert!(
        drift.layers.iter().all(|l| l.own_rel_l2 == 0.0),
        "{drift:?}"
    );
    assert!(report.origin.is_none());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn coarser_quantization_drifts_more_at_the_logits() {
    let dir = scratch("coarse");
    let full = f32_model(&dir);
    let kld = |ty: GgmlType| {
        let p = dir.join(format!("{ty}.gguf"));
        requantize(&full, &p, |_| ty);
        let r = diff_models(
            &full,
            &p,
            &cpu,
            &prompt(),
            &CapturePlan::all(),
            &DiffOptions::default(),
        )
        .unwrap();
        r.logits.unwrap().kld_mean()
    };
    let (q8, q4) = (kld(GgmlType::Q8_0), kld(GgmlType::Q4_0));
    assert!(q4 > 5.0 * q8, "Q4_0 KL {q4:e} vs Q8_0 KL {q8:e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn two_models_of_different_shapes_are_refused_naming_both() {
    let dir = scratch("shape");
    let full = f32_model(&dir);
    let mut c = synth::preset("tiny-llama").unwrap();
    c.n_layers = 3;
    let other = dir.join("three.gguf");
    synth::generate(&c, SynthQuant::F32, 7, "drift", &other).unwrap();
    let err = diff_models(
        &full,
        &other,
        &cpu,
        &prompt(),
        &CapturePlan::all(),
        &DiffOptions::default(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("f32.gguf") && msg.contains("three.gguf") && msg.contains("layers: 4 vs 3"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
