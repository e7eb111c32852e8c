//! Model hyper-parameters from GGUF metadata, with the keys llama.cpp's converter writes
//! (`{arch}.block_count`, `{arch}.attention.head_count`, ...), and the tensor table a model of
//! that shape must hold.

use crate::error::{Error, Result};
use crate::model::gguf::{GgufFile, Keys, MetaValue};
use crate::trace::stage::Stage;

pub use super::arch::Arch;
use super::arch::{ArchDesc, Dim, FfnKind, TensorSpec};

/// Hyper-parameters of a model of one of the supported architectures ([`Arch`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    /// Whether the layers route to experts (qwen3moe, qwen2moe; llama with `expert_count`).
    pub moe: bool,
    pub n_layers: usize,
    pub hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    pub context_length: usize,
    /// Dense FFN width; for MoE the `feed_forward_length` (unused, or the expert width where
    /// the converter writes it there), 0 when absent.
    pub ffn_dim: usize,
    /// 0 for dense models.
    pub n_experts: usize,
    pub n_experts_used: usize,
    pub expert_ffn_dim: usize,
    /// The shared expert's width (qwen2moe), 0 without one.
    pub shared_ffn_dim: usize,
    /// Renormalise the top-k router weights to sum 1 (the architecture's router, as llama.cpp
    /// builds it).
    pub norm_topk_prob: bool,
    /// The file holds `rope_freqs.weight` (llama 3 RoPE scaling).
    pub rope_freqs: bool,
}

impl ModelConfig {
    /// Read and check the hyper-parameters of `f`.
    pub fn from_gguf(f: &GgufFile) -> Result<ModelConfig> {
        let k = Keys::of(f);
        let supported = Arch::ALL.map(|a| a.name()).join(", ");
        let arch = match f.get("general.architecture") {
            None => return Err(k.err("general.architecture", "missing")),
            Some(MetaValue::String(s)) => Arch::from_name(s).ok_or_else(|| {
                k.err(
                    "general.architecture",
                    format!("architecture '{s}' is not supported (supported: {supported})"),
                )
            })?,
            Some(v) => return Err(k.wrong("general.architecture", v, "string")),
        };
        let a = arch.name();
        let key = |s: &str| format!("{a}.{s}");

        let n_layers = k.size(&key("block_count"))?;
        let hidden = k.size(&key("embedding_length"))?;
        let n_heads = k.size(&key("attention.head_count"))?;
        let n_kv_heads = k.size(&key("attention.head_count_kv"))?;
        if !n_heads.is_multiple_of(n_kv_heads) {
            return Err(k.err(
                &key("attention.head_count_kv"),
                format!("{n_kv_heads} does not divide head_count {n_heads}"),
            ));
        }
        let head_dim = match k.opt_size(&key("attention.key_length"))? {
            Some(d) => d,
            None if hidden.is_multiple_of(n_heads) => hidden / n_heads,
            None => {
                return Err(k.err(
                    &key("attention.key_length"),
                    format!(
                        "missing, and embedding_length {hidden} is not a multiple of head_count {n_heads}"
                    ),
                ));
            }
        };
        if let Some(v) = k.opt_size(&key("attention.value_length"))?
            && v != head_dim
        {
            return Err(k.err(
                &key("attention.value_length"),
                format!("{v} differs from key_length {head_dim} (not supported)"),
            ));
        }
        let rope_theta = k.opt_float(&key("rope.freq_base"))?.unwrap_or(10000.0);
        let eps_key = key("attention.layer_norm_rms_epsilon");
        let rms_eps = k
            .opt_float(&eps_key)?
            .ok_or_else(|| k.err(&eps_key, "missing"))?;
        let context_length = k.size(&key("context_length"))?;

        let desc = arch.desc();
        if let Some(n) = k.opt_size(&key("rope.dimension_count"))?
            && n != head_dim
        {
            return Err(k.err(
                &key("rope.dimension_count"),
                format!(
                    "{n} differs from the head width {head_dim} (partial RoPE is not supported)"
                ),
            ));
        }
        let moe = match desc.ffn {
            FfnKind::Dense => false,
            FfnKind::Moe(_) => true,
            // llama: Mixtral when the file counts experts
            FfnKind::DenseOrMoe(_) => k.opt_uint(&key("expert_count"))?.unwrap_or(0) > 0,
        };
        let (ffn_dim, n_experts, n_experts_used, expert_ffn_dim, shared_ffn_dim) =
            match desc.moe().filter(|_| moe) {
                None => (k.size(&key("feed_forward_length"))?, 0, 0, 0, 0),
                Some(m) => {
                    let e = k.size(&key("expert_count"))?;
                    let used = k.size(&key("expert_used_count"))?;
                    if used > e {
                        return Err(k.err(
                            &key("expert_used_count"),
                            format!("{used} exceeds expert_count {e}"),
                        ));
                    }
                    let shared = match m.shared_expert_width_key {
                        Some(w) => k.size(&key(w))?,
                        None => 0,
                    };
                    (
                        k.opt_uint(&key("feed_forward_length"))?.unwrap_or(0),
                        e,
                        used,
                        k.size(&key(m.width_key))?,
                        shared,
                    )
                }
            };

        let vocab = match f.get("tokenizer.ggml.tokens") {
            Some(MetaValue::Array(t)) => t.len(),
            Some(v) => return Err(k.wrong("tokenizer.ggml.tokens", v, "array")),
            None => match k.opt_size(&key("vocab_size"))? {
                Some(n) => n,
                None => match f.tensor("token_embd.weight") {
                    Some(t) if t.dims.len() == 2 => usize::try_from(t.dims[1]).unwrap_or(0),
                    _ => 0,
                },
            },
        };
        if vocab == 0 {
            return Err(k.err(
                "tokenizer.ggml.tokens",
                format!("vocabulary size unknown or 0 (no tokens, no {a}.vocab_size, no token_embd.weight)"),
            ));
        }
        // Counts are trusted only as far as the file backs them: every layer is a fixed set of
        // tensors, so a block_count the tensor table cannot hold is refused here, before
        // anything (the expected tensor list, the layer weights) is sized by it.
        let per_layer = desc.layer_tensors(moe).count();
        let model_tensors = desc.model_tensors().filter(|t| !t.optional).count();
        let held = f.tensors().len().saturating_sub(model_tensors) / per_layer;
        if n_layers > held {
            let required: Vec<&str> = desc
                .model_tensors()
                .filter(|t| !t.optional)
                .map(|t| t.name.trim_end_matches(".weight"))
                .collect();
            return Err(k.err(
                &key("block_count"),
                format!(
                    "{n_layers} layers, but the file's {} tensors hold at most {held} ({per_layer} per {a} layer, plus {})",
                    f.tensors().len(),
                    required.join(" and ")
                ),
            ));
        }

        let config = ModelConfig {
            arch,
            moe,
            n_layers,
            hidden,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab,
            rope_theta,
            rms_eps,
            context_length,
            ffn_dim,
            n_experts,
            n_experts_used,
            expert_ffn_dim,
            shared_ffn_dim,
            norm_topk_prob: moe && desc.moe().is_some_and(|m| m.renorm_topk),
            rope_freqs: f.tensor("rope_freqs.weight").is_some(),
        };
        config
            .check_products()
            .map_err(|e| Error::input(format!("{}: {e}", k.label)))?;
        Ok(config)
    }

    /// Check that every product of sizes the loaders and forwards compute (tensor element
    /// counts, head widths) fits ggml's int64 element count, so that no later multiplication
    /// wraps or overflows: `head_count = key_length = 2^32` is an error here, not a q width of 0.
    pub fn check_products(&self) -> std::result::Result<(), String> {
        let mut products: Vec<Vec<(&str, usize)>> = vec![
            vec![("head_count", self.n_heads), ("head_dim", self.head_dim)],
            vec![
                ("head_count_kv", self.n_kv_heads),
                ("head_dim", self.head_dim),
            ],
            vec![("hidden", self.hidden), ("vocab", self.vocab)],
            vec![
                ("hidden", self.hidden),
                ("head_count", self.n_heads),
                ("head_dim", self.head_dim),
            ],
        ];
        if self.is_moe() {
            products.push(vec![
                ("hidden", self.hidden),
                ("expert_ffn", self.expert_ffn_dim),
                ("experts", self.n_experts),
            ]);
            products.push(vec![
                ("hidden", self.hidden),
                ("shared_ffn", self.shared_ffn_dim),
            ]);
        } else {
            products.push(vec![("hidden", self.hidden), ("ffn", self.ffn_dim)]);
        }
        for factors in products {
            let fits = factors
                .iter()
                .try_fold(1u64, |acc, (_, x)| acc.checked_mul(*x as u64))
                .is_some_and(|n| n <= i64::MAX as u64);
            if !fits {
                let names: Vec<&str> = factors.iter().map(|(n, _)| *n).collect();
                let values: Vec<String> = factors.iter().map(|(_, v)| v.to_string()).collect();
                return Err(format!(
                    "{} = {} overflows a tensor's element count (at most 2^63 - 1)",
                    names.join(" x "),
                    values.join(" x ")
                ));
            }
        }
        Ok(())
    }

    /// Number of weights of a model of this shape (`output.weight` counted, as if untied;
    /// optional tensors such as `rope_freqs` counted); `None` when it does not fit a u64.
    pub fn n_params(&self) -> Option<u64> {
        let desc = self.desc();
        let count = |t: &TensorSpec| {
            t.dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(self.dim(d) as u64))
        };
        let layer = desc
            .layer_tensors(self.moe)
            .try_fold(0u64, |a, t| a.checked_add(count(t)?))?;
        let model = desc
            .model_tensors()
            .try_fold(0u64, |a, t| a.checked_add(count(t)?))?;
        layer.checked_mul(self.n_layers as u64)?.checked_add(model)
    }

    /// The architecture's description.
    /// Why `other` is not the same model in another encoding: the first of architecture and
    /// shape (layers, widths, heads, experts, vocabulary, norms and RoPE) that differs, as
    /// `field: a vs b`; `None` when only the weights' types (or values) can differ. Two files
    /// that pass can be diffed stage by stage (a quantization drift check).
    pub fn differs_from(&self, other: &ModelConfig) -> Option<String> {
        let ints = [
            ("layers", self.n_layers, other.n_layers),
            ("hidden", self.hidden, other.hidden),
            ("heads", self.n_heads, other.n_heads),
            ("kv heads", self.n_kv_heads, other.n_kv_heads),
            ("head_dim", self.head_dim, other.head_dim),
            ("vocab", self.vocab, other.vocab),
            ("ffn", self.ffn_dim, other.ffn_dim),
            ("experts", self.n_experts, other.n_experts),
            ("experts used", self.n_experts_used, other.n_experts_used),
            ("expert ffn", self.expert_ffn_dim, other.expert_ffn_dim),
            (
                "shared expert ffn",
                self.shared_ffn_dim,
                other.shared_ffn_dim,
            ),
        ];
        if self.arch != other.arch {
            return Some(format!(
                "architecture: {} vs {}",
                self.arch.name(),
                other.arch.name()
            ));
        }
        if let Some((name, a, b)) = ints.into_iter().find(|(_, a, b)| a != b) {
            return Some(format!("{name}: {a} vs {b}"));
        }
        let flags = [
            ("moe", self.moe, other.moe),
            ("norm_topk_prob", self.norm_topk_prob, other.norm_topk_prob),
            ("rope_freqs", self.rope_freqs, other.rope_freqs),
        ];
        if let Some((name, a, b)) = flags.into_iter().find(|(_, a, b)| a != b) {
            return Some(format!("{name}: {a} vs {b}"));
        }
        let floats = [
            ("rope theta", self.rope_theta, other.rope_theta),
            ("rms eps", self.rms_eps, other.rms_eps),
        ];
        floats
            .into_iter()
            .find(|(_, a, b)| a.to_bits() != b.to_bits())
            .map(|(name, a, b)| format!("{name}: {a} vs {b}"))
    }

    pub fn desc(&self) -> &'static ArchDesc {
        self.arch.desc()
    }

    /// The size a tensor dimension takes in this model (saturating: a config that passed
    /// [`ModelConfig::check_products`] never saturates).
    pub fn dim(&self, d: Dim) -> usize {
        match d {
            Dim::Hidden => self.hidden,
            Dim::Vocab => self.vocab,
            Dim::HeadDim => self.head_dim,
            Dim::QWidth => self.n_heads.saturating_mul(self.head_dim),
            Dim::KvWidth => self.n_kv_heads.saturating_mul(self.head_dim),
            Dim::HalfHeadDim => self.head_dim / 2,
            Dim::Ffn => self.ffn_dim,
            Dim::ExpertFfn => self.expert_ffn_dim,
            Dim::Experts => self.n_experts,
            Dim::SharedFfn => self.shared_ffn_dim,
            Dim::One => 1,
        }
    }

    pub fn is_moe(&self) -> bool {
        self.moe
    }

    /// Whether this model's forward has stage `s` (the architecture's stage set: q/k norms
    /// only where it has them; dense: no router/top-k; MoE: no dense FFN; shared-expert stages
    /// only with a shared expert).
    pub fn has_stage(&self, s: Stage) -> bool {
        self.desc().has_stage(self.moe, s)
    }

    /// The tensor a layer or the model feeds `stage` through a matmul (`q6k_as_q4k`,
    /// `act_q8_rounding` act there), as llama.cpp names it without `blk.N.`.
    pub fn weight_producing(&self, stage: Stage) -> Option<&'static TensorSpec> {
        let desc = self.desc();
        desc.layer_tensors(self.moe)
            .chain(desc.model_tensors())
            .find(|t| t.role == super::arch::Role::Produces(stage))
    }

    /// Shape of stage `s` for a prompt of `n_tokens` (the stage table of docs/design.md,
    /// [`super::arch::stage_dims`], with this model's sizes).
    pub fn stage_shape(&self, s: Stage, n_tokens: usize) -> Vec<usize> {
        use super::arch::Size;
        super::arch::stage_dims(s)
            .iter()
            .map(|d| match d {
                Size::Tokens => n_tokens,
                Size::Hidden => self.hidden,
                Size::Heads => self.n_heads,
                Size::KvHeads => self.n_kv_heads,
                Size::HeadDim => self.head_dim,
                Size::QWidth => self.n_heads.saturating_mul(self.head_dim),
                Size::Experts => self.n_experts,
                Size::TopK => self.n_experts_used,
                Size::Ffn => self.ffn_dim,
                Size::One => 1,
                Size::Vocab => self.vocab,
            })
            .collect()
    }

    /// Every tensor a model of this shape holds, with its ggml dims and its row of the
    /// architecture's table, in the order llama.cpp's converter writes them. `output.weight`
    /// is listed although a file may tie it to the embedding; `rope_freqs.weight` when the
    /// config says the model has it.
    ///
    /// Its length is linear in `n_layers`: [`ModelConfig::from_gguf`] has checked that against
    /// the file's tensor count, `synth::check_shape` against its bound. Products saturate
    /// rather than wrap (a config that passed [`ModelConfig::check_products`] never saturates).
    pub fn tensor_table(&self) -> Vec<(String, Vec<u64>, &'static TensorSpec)> {
        let desc = self.desc();
        let dims = |t: &TensorSpec| t.dims.iter().map(|&d| self.dim(d) as u64).collect();
        let mut v: Vec<_> = desc
            .head_tensors
            .iter()
            .filter(|t| t.role != super::arch::Role::RopeFreqs || self.rope_freqs)
            .map(|t| (t.name.to_string(), dims(t), t))
            .collect();
        for i in 0..self.n_layers {
            for t in desc.layer_tensors(self.moe) {
                v.push((format!("blk.{i}.{}", t.name), dims(t), t));
            }
        }
        v.extend(
            desc.tail_tensors
                .iter()
                .map(|t| (t.name.to_string(), dims(t), t)),
        );
        v
    }

    /// [`ModelConfig::tensor_table`]'s names and dims.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<u64>)> {
        self.tensor_table()
            .into_iter()
            .map(|(name, dims, _)| (name, dims))
            .collect()
    }

    /// Check that `f` holds every tensor this config needs, with the right dims.
    pub fn validate_tensors(&self, f: &GgufFile) -> Result<()> {
        let label = f.path().display();
        for (name, want, spec) in self.tensor_table() {
            match f.tensor(&name) {
                Some(t) if t.dims == want => {}
                Some(t) => {
                    return Err(Error::input(format!(
                        "{label}: tensor '{name}': expected dims {want:?} (ggml order), found {:?}",
                        t.dims
                    )));
                }
                // llama.cpp ties the output projection to the embedding when it is absent;
                // rope_freqs only scaled models have
                None if spec.optional => {}
                None => {
                    return Err(Error::input(format!(
                        "{label}: tensor '{name}' is missing (expected dims {want:?}, ggml order)"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixture(name: &str) -> GgufFile {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/qwen3moe-tiny")
            .join(name);
        GgufFile::open(&p).unwrap()
    }

    #[test]
    fn golden_config() {
        for name in ["qwen3moe-tiny-f32.gguf", "qwen3moe-tiny-q8_0.gguf"] {
            let f = fixture(name);
            let c = ModelConfig::from_gguf(&f).unwrap();
            assert_eq!(c.arch, Arch::Qwen3Moe);
            assert_eq!(
                (
                    c.n_layers,
                    c.hidden,
                    c.n_heads,
                    c.n_kv_heads,
                    c.head_dim,
                    c.vocab
                ),
                (3, 64, 4, 2, 32, 260)
            );
            assert_eq!(
                (c.n_experts, c.n_experts_used, c.expert_ffn_dim, c.ffn_dim),
                (8, 2, 32, 128)
            );
            assert_eq!(c.rope_theta, 1e6);
            assert_eq!(c.rms_eps, 1e-6);
            assert_eq!(c.context_length, 256);
            assert!(c.norm_topk_prob);
            c.validate_tensors(&f).unwrap();
            // the file holds exactly the expected tensors, in the expected order
            let names: Vec<_> = f.tensors().iter().map(|t| t.name.clone()).collect();
            let want: Vec<_> = c.expected_tensors().into_iter().map(|(n, _)| n).collect();
            assert_eq!(names, want);
            assert_eq!(c.stage_shape(Stage::QRope, 8), vec![8, 4, 32]);
            assert_eq!(c.stage_shape(Stage::AttnProbs, 8), vec![4, 8, 8]);
            assert_eq!(c.stage_shape(Stage::TopkIds, 8), vec![8, 2]);
            assert_eq!(c.stage_shape(Stage::Logits, 8), vec![8, 260]);
            assert!(c.has_stage(Stage::RouterProbs) && !c.has_stage(Stage::FfnAct));
        }
    }

    /// The golden file with keys replaced (or removed, with `None`), re-encoded by the writer.
    fn with_keys(edits: &[(&str, Option<MetaValue>)]) -> GgufFile {
        use crate::model::gguf::GgufWriter;
        let f = fixture("qwen3moe-tiny-q8_0.gguf");
        let mut w = GgufWriter::new();
        for (k, val) in f.metadata() {
            match edits.iter().find(|(e, _)| e == k) {
                Some((_, Some(v))) => w.add_kv(k, v.clone()),
                Some((_, None)) => {}
                None => w.add_kv(k, val.clone()),
            }
        }
        for (k, v) in edits {
            if let (None, Some(v)) = (f.get(k), v) {
                w.add_kv(k, v.clone());
            }
        }
        for t in f.tensors() {
            w.add_tensor(&t.name, t.dims.clone(), t.ty).unwrap();
        }
        let mut out = Vec::new();
        w.write_to(&mut out, |i, sink| {
            sink.write_all(f.tensor_data(&f.tensors()[i]))
                .map_err(|e| Error::internal(e.to_string()))
        })
        .unwrap();
        GgufFile::from_bytes("edited.gguf", out).unwrap()
    }

    #[test]
    fn output_may_be_tied_to_the_embedding() {
        use crate::model::gguf::GgufWriter;
        let f = fixture("qwen3moe-tiny-f32.gguf");
        let mut w = GgufWriter::new();
        for (k, v) in f.metadata() {
            w.add_kv(k, v.clone());
        }
        let kept: Vec<_> = f
            .tensors()
            .iter()
            .filter(|t| t.name != "output.weight")
            .collect();
        for t in &kept {
            w.add_tensor(&t.name, t.dims.clone(), t.ty).unwrap();
        }
        let mut out = Vec::new();
        w.write_to(&mut out, |i, sink| {
            sink.write_all(f.tensor_data(kept[i]))
                .map_err(|e| Error::internal(e.to_string()))
        })
        .unwrap();
        let tied = GgufFile::from_bytes("tied.gguf", out).unwrap();
        let c = ModelConfig::from_gguf(&tied).unwrap();
        c.validate_tensors(&tied).unwrap();
        // a dense config does not fit the MoE file: the first dense tensor is named
        let dense = ModelConfig {
            arch: Arch::Qwen3,
            moe: false,
            ..c
        };
        assert!(dense.has_stage(Stage::FfnAct) && !dense.has_stage(Stage::TopkIds));
        assert_eq!(dense.stage_shape(Stage::FfnGate, 5), vec![5, 128]);
        let e = dense.validate_tensors(&tied).unwrap_err().to_string();
        assert!(
            e.contains("tied.gguf: tensor 'blk.0.ffn_gate.weight' is missing"),
            "{e}"
        );
    }

    fn with_key(key: &str, v: Option<MetaValue>) -> GgufFile {
        with_keys(&[(key, v)])
    }

    fn config_err(key: &str, v: Option<MetaValue>) -> String {
        let f = with_key(key, v);
        let e = ModelConfig::from_gguf(&f).unwrap_err().to_string();
        assert!(e.starts_with("edited.gguf: "), "{e}");
        e
    }

    #[test]
    fn bad_keys_are_named() {
        let e = config_err(
            "general.architecture",
            Some(MetaValue::String("mamba".into())),
        );
        assert!(
            e.contains(
                "'mamba' is not supported (supported: qwen3moe, qwen3, llama, qwen2, qwen2moe)"
            ),
            "{e}"
        );
        let e = config_err("general.architecture", None);
        assert!(e.contains("general.architecture': missing"), "{e}");
        let e = config_err("qwen3moe.block_count", None);
        assert!(e.contains("'qwen3moe.block_count': missing"), "{e}");
        let e = config_err("qwen3moe.block_count", Some(MetaValue::String("3".into())));
        assert!(e.contains("has type string"), "{e}");
        let e = config_err("qwen3moe.embedding_length", Some(MetaValue::U32(0)));
        assert!(e.contains("'qwen3moe.embedding_length': is 0"), "{e}");
        let e = config_err("qwen3moe.attention.head_count_kv", Some(MetaValue::U32(3)));
        assert!(e.contains("does not divide head_count 4"), "{e}");
        let e = config_err("qwen3moe.expert_used_count", Some(MetaValue::U32(9)));
        assert!(e.contains("9 exceeds expert_count 8"), "{e}");
        let e = config_err("qwen3moe.attention.value_length", Some(MetaValue::U32(16)));
        assert!(e.contains("differs from key_length 32"), "{e}");
        let e = config_err("qwen3moe.attention.layer_norm_rms_epsilon", None);
        assert!(e.contains("missing"), "{e}");
        let e = config_err("qwen3moe.rope.freq_base", Some(MetaValue::F32(f32::NAN)));
        assert!(e.contains("not a positive finite number"), "{e}");
    }

    /// Issue 11 items 14 and 17: a count the file cannot back, or sizes whose product
    /// overflows, are errors naming the key before anything is sized by them (a block_count of
    /// 2^32 - 1 aborted on a 2.6 TB allocation; 2^63 panicked with "capacity overflow").
    #[test]
    fn absurd_counts_are_errors_not_allocations() {
        for n in [MetaValue::U32(u32::MAX), MetaValue::U64(1 << 63)] {
            let e = config_err("qwen3moe.block_count", Some(n));
            assert!(
                e.contains("key 'qwen3moe.block_count': ")
                    && e.contains(
                        "layers, but the file's 39 tensors hold at most 3 (12 per qwen3moe layer"
                    ),
                "{e}"
            );
        }
        let big = Some(MetaValue::U64(1 << 32));
        let f = with_keys(&[
            ("qwen3moe.attention.head_count", big.clone()),
            ("qwen3moe.attention.key_length", big.clone()),
            ("qwen3moe.attention.value_length", big),
        ]);
        let e = ModelConfig::from_gguf(&f).unwrap_err().to_string();
        assert_eq!(
            e,
            "edited.gguf: head_count x head_dim = 4294967296 x 4294967296 overflows a tensor's element count (at most 2^63 - 1)"
        );
        // a config built by hand that overflows still lists its tensors without wrapping
        let c = ModelConfig {
            n_heads: 1 << 32,
            head_dim: 1 << 32,
            ..ModelConfig::from_gguf(&fixture("qwen3moe-tiny-f32.gguf")).unwrap()
        };
        assert!(c.check_products().is_err() && c.n_params().is_none());
        let (_, q_dims) = &c.expected_tensors()[2];
        assert_eq!(q_dims[1], u64::MAX, "saturated, not wrapped to 0");
    }

    #[test]
    fn defaults_and_fallbacks() {
        let f = with_key("qwen3moe.rope.freq_base", None);
        assert_eq!(ModelConfig::from_gguf(&f).unwrap().rope_theta, 10000.0);
        // key_length defaults to embedding_length / head_count = 16, which the tensors refute
        let f = with_keys(&[
            ("qwen3moe.attention.key_length", None),
            ("qwen3moe.attention.value_length", None),
        ]);
        let c = ModelConfig::from_gguf(&f).unwrap();
        assert_eq!(c.head_dim, 16);
        let e = c.validate_tensors(&f).unwrap_err().to_string();
        assert!(
            e.contains(
                "tensor 'blk.0.attn_q.weight': expected dims [64, 64] (ggml order), found [64, 128]"
            ),
            "{e}"
        );
        let f = with_key("tokenizer.ggml.tokens", None);
        assert_eq!(ModelConfig::from_gguf(&f).unwrap().vocab, 260);
    }
}
