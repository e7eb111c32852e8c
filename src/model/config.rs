//! Model hyper-parameters from GGUF metadata, with the keys llama.cpp's converter writes
//! (`{arch}.block_count`, `{arch}.attention.head_count`, ...), and the tensor table a model of
//! that shape must hold.

use crate::error::{Error, Result};
use crate::model::gguf::{GgufFile, MetaValue};
use crate::trace::stage::Stage;

/// Supported `general.architecture` values.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Qwen3 mixture of experts (Qwen3-30B-A3B, Qwen3-Coder).
    Qwen3Moe,
    /// Qwen3 dense.
    Qwen3,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Qwen3Moe, Arch::Qwen3];

    /// The `general.architecture` string, also the prefix of the arch's keys.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Qwen3Moe => "qwen3moe",
            Arch::Qwen3 => "qwen3",
        }
    }

    pub fn from_name(s: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == s)
    }

    pub fn is_moe(self) -> bool {
        self == Arch::Qwen3Moe
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Tensors of every model besides its layers' (`token_embd`, `output_norm`; `output` may be tied).
const MODEL_TENSORS: usize = 2;
/// Tensors of one dense layer: attn_norm, q, k, v, output, q_norm, k_norm, ffn_norm, and the
/// ffn gate, up and down.
const TENSORS_PER_DENSE_LAYER: usize = 11;
/// Tensors of one MoE layer: the 8 before the FFN, the router and the gate/up/down expert stacks.
const TENSORS_PER_MOE_LAYER: usize = 12;

/// Hyper-parameters of a qwen3 / qwen3moe model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_layers: usize,
    pub hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    pub context_length: usize,
    /// Dense FFN width; for MoE the (unused) `feed_forward_length`, 0 when absent.
    pub ffn_dim: usize,
    /// 0 for dense models.
    pub n_experts: usize,
    pub n_experts_used: usize,
    pub expert_ffn_dim: usize,
    /// Renormalise the top-k router weights to sum 1: llama.cpp hard-codes true for qwen3moe.
    pub norm_topk_prob: bool,
}

/// Reads typed keys of one file, with errors naming the file and the key.
struct Keys<'a> {
    f: &'a GgufFile,
    label: String,
}

impl Keys<'_> {
    fn err(&self, key: &str, msg: impl std::fmt::Display) -> Error {
        Error::input(format!("{}: key '{key}': {msg}", self.label))
    }

    fn opt_uint(&self, key: &str) -> Result<Option<usize>> {
        match self.f.get(key) {
            None => Ok(None),
            Some(v) => {
                let n = v
                    .as_u64()
                    .ok_or_else(|| self.wrong(key, v, "a non-negative integer"))?;
                usize::try_from(n)
                    .map(Some)
                    .map_err(|_| self.err(key, format!("{n} is too large")))
            }
        }
    }

    /// A required size: present, an integer, not zero.
    fn size(&self, key: &str) -> Result<usize> {
        match self.opt_uint(key)? {
            None => Err(self.err(key, "missing")),
            Some(0) => Err(self.err(key, "is 0")),
            Some(n) => Ok(n),
        }
    }

    fn opt_size(&self, key: &str) -> Result<Option<usize>> {
        match self.opt_uint(key)? {
            Some(0) => Err(self.err(key, "is 0")),
            n => Ok(n),
        }
    }

    fn opt_float(&self, key: &str) -> Result<Option<f32>> {
        match self.f.get(key) {
            None => Ok(None),
            Some(v) => {
                let x = v.as_f64().ok_or_else(|| self.wrong(key, v, "a number"))?;
                if !(x.is_finite() && x > 0.0) {
                    return Err(self.err(key, format!("{x} is not a positive finite number")));
                }
                Ok(Some(x as f32))
            }
        }
    }

    fn wrong(&self, key: &str, v: &MetaValue, want: &str) -> Error {
        self.err(key, format!("has type {}, want {want}", v.type_name()))
    }
}

impl ModelConfig {
    /// Read and check the hyper-parameters of `f`.
    pub fn from_gguf(f: &GgufFile) -> Result<ModelConfig> {
        let k = Keys {
            f,
            label: f.path().display().to_string(),
        };
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

        let (ffn_dim, n_experts, n_experts_used, expert_ffn_dim) = match arch {
            Arch::Qwen3 => (k.size(&key("feed_forward_length"))?, 0, 0, 0),
            Arch::Qwen3Moe => {
                let e = k.size(&key("expert_count"))?;
                let used = k.size(&key("expert_used_count"))?;
                if used > e {
                    return Err(k.err(
                        &key("expert_used_count"),
                        format!("{used} exceeds expert_count {e}"),
                    ));
                }
                let ffn = k.opt_uint(&key("feed_forward_length"))?.unwrap_or(0);
                (ffn, e, used, k.size(&key("expert_feed_forward_length"))?)
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
        let per_layer = if arch.is_moe() {
            TENSORS_PER_MOE_LAYER
        } else {
            TENSORS_PER_DENSE_LAYER
        };
        let held = f.tensors().len().saturating_sub(MODEL_TENSORS) / per_layer;
        if n_layers > held {
            return Err(k.err(
                &key("block_count"),
                format!(
                    "{n_layers} layers, but the file's {} tensors hold at most {held} ({per_layer} per {a} layer, plus token_embd and output_norm)",
                    f.tensors().len()
                ),
            ));
        }

        let config = ModelConfig {
            arch,
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
            norm_topk_prob: arch.is_moe(),
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

    /// Number of weights of a model of this shape (`output.weight` counted, as if untied);
    /// `None` when it does not fit a u64.
    pub fn n_params(&self) -> Option<u64> {
        let u = |x: usize| x as u64;
        let mul = |xs: &[u64]| xs.iter().try_fold(1u64, |a, &x| a.checked_mul(x));
        let (h, hd) = (u(self.hidden), u(self.head_dim));
        let q = mul(&[u(self.n_heads), hd])?;
        let kv = mul(&[u(self.n_kv_heads), hd])?;
        let attn = [
            h,
            mul(&[h, q])?,
            mul(&[h, kv])?,
            mul(&[h, kv])?,
            mul(&[q, h])?,
            hd,
            hd,
            h,
        ];
        let ffn = if self.is_moe() {
            let (e, f) = (u(self.n_experts), u(self.expert_ffn_dim));
            vec![mul(&[h, e])?, mul(&[3, h, f, e])?]
        } else {
            vec![mul(&[3, h, u(self.ffn_dim)])?]
        };
        let layer = attn
            .iter()
            .chain(&ffn)
            .try_fold(0u64, |a, &x| a.checked_add(x))?;
        let embd = mul(&[2, h, u(self.vocab)])?;
        mul(&[layer, u(self.n_layers)])?
            .checked_add(embd)?
            .checked_add(h)
    }

    pub fn is_moe(&self) -> bool {
        self.arch.is_moe()
    }

    /// Whether this model's forward has stage `s` (dense: no router/top-k; MoE: no dense FFN).
    pub fn has_stage(&self, s: Stage) -> bool {
        if s.is_shared_expert_only() {
            return false; // no shared-expert architecture yet
        }
        if self.is_moe() {
            !s.is_dense_only()
        } else {
            !s.is_moe_only()
        }
    }

    /// Shape of stage `s` for a prompt of `n_tokens` (the stage table of docs/design.md).
    pub fn stage_shape(&self, s: Stage, n_tokens: usize) -> Vec<usize> {
        let t = n_tokens;
        let (h, nh, nkv, d) = (self.hidden, self.n_heads, self.n_kv_heads, self.head_dim);
        match s {
            Stage::Tokens => vec![t],
            Stage::Embedding
            | Stage::AttnNorm
            | Stage::AttnOut
            | Stage::AttnResidual
            | Stage::FfnNorm
            | Stage::FfnOut
            | Stage::LayerOut
            | Stage::FinalNorm => vec![t, h],
            Stage::QProj | Stage::QNorm | Stage::QRope => vec![t, nh, d],
            Stage::KProj | Stage::VProj | Stage::KNorm | Stage::KRope => vec![t, nkv, d],
            Stage::AttnProbs => vec![nh, t, t],
            Stage::AttnCtx => vec![t, nh * d],
            Stage::RouterLogits | Stage::RouterProbs => vec![t, self.n_experts],
            Stage::TopkIds | Stage::TopkWeights => vec![t, self.n_experts_used],
            Stage::FfnGate | Stage::FfnUp | Stage::FfnAct => vec![t, self.ffn_dim],
            Stage::FfnSharedGate => vec![t, 1],
            Stage::FfnSharedOut => vec![t, self.hidden],
            Stage::Logits => vec![t, self.vocab],
        }
    }

    /// Every tensor a model of this shape holds, with its ggml dims, in the order llama.cpp's
    /// converter writes them. `output.weight` is listed although a file may omit it (tied to
    /// `token_embd.weight`).
    ///
    /// Its length is linear in `n_layers`: [`ModelConfig::from_gguf`] has checked that against
    /// the file's tensor count, `synth::check_shape` against its bound. Products saturate
    /// rather than wrap (a config that passed [`ModelConfig::check_products`] never saturates).
    pub fn expected_tensors(&self) -> Vec<(String, Vec<u64>)> {
        let u = |x: usize| x as u64;
        let (h, hd) = (u(self.hidden), u(self.head_dim));
        let q = u(self.n_heads).saturating_mul(hd);
        let kv = u(self.n_kv_heads).saturating_mul(hd);
        let mut v = vec![("token_embd.weight".to_string(), vec![h, u(self.vocab)])];
        for i in 0..self.n_layers {
            let b = |s: &str| format!("blk.{i}.{s}.weight");
            v.push((b("attn_norm"), vec![h]));
            v.push((b("attn_q"), vec![h, q]));
            v.push((b("attn_k"), vec![h, kv]));
            v.push((b("attn_v"), vec![h, kv]));
            v.push((b("attn_output"), vec![q, h]));
            v.push((b("attn_q_norm"), vec![hd]));
            v.push((b("attn_k_norm"), vec![hd]));
            v.push((b("ffn_norm"), vec![h]));
            if self.is_moe() {
                let (e, f) = (u(self.n_experts), u(self.expert_ffn_dim));
                v.push((b("ffn_gate_inp"), vec![h, e]));
                v.push((b("ffn_gate_exps"), vec![h, f, e]));
                v.push((b("ffn_up_exps"), vec![h, f, e]));
                v.push((b("ffn_down_exps"), vec![f, h, e]));
            } else {
                let f = u(self.ffn_dim);
                v.push((b("ffn_gate"), vec![h, f]));
                v.push((b("ffn_up"), vec![h, f]));
                v.push((b("ffn_down"), vec![f, h]));
            }
        }
        v.push(("output_norm.weight".to_string(), vec![h]));
        v.push(("output.weight".to_string(), vec![h, u(self.vocab)]));
        v
    }

    /// Check that `f` holds every tensor this config needs, with the right dims.
    pub fn validate_tensors(&self, f: &GgufFile) -> Result<()> {
        let label = f.path().display();
        for (name, want) in self.expected_tensors() {
            match f.tensor(&name) {
                Some(t) if t.dims == want => {}
                Some(t) => {
                    return Err(Error::input(format!(
                        "{label}: tensor '{name}': expected dims {want:?} (ggml order), found {:?}",
                        t.dims
                    )));
                }
                // llama.cpp ties the output projection to the embedding when it is absent
                None if name == "output.weight" => {}
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
            Some(MetaValue::String("llama".into())),
        );
        assert!(
            e.contains("'llama' is not supported (supported: qwen3moe, qwen3)"),
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
