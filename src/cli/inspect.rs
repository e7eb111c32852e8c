//! `falsifier inspect MODEL.gguf [--tokens-count 32,512] [--json]`: what a model is (shape,
//! files, tensor types), the stages a trace of it holds (the architecture's own description,
//! as `stages --arch` prints it), and the memory a traced CUDA run takes at each prompt length
//! ([`crate::backend::cuda::memory`]). MODEL may be the first shard of a split model.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::Outcome;
use crate::backend::cuda::memory::{MemoryEstimate, estimate};
use crate::error::{Error, Result};
use crate::model::arch::stage_dims;
use crate::model::config::ModelConfig;
use crate::model::gguf::GgufFile;
use crate::model::summary::ModelSummary;
use crate::trace::stage::Stage;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The model (GGUF; for a split model its first shard, NAME-00001-of-0000N.gguf).
    pub model: PathBuf,
    /// Prompt lengths to estimate a traced run's memory at, comma-separated.
    #[arg(long, default_value = "32")]
    pub tokens_count: String,
    /// Print one JSON object instead of text (fields in docs/design.md, "Command line").
    #[arg(long)]
    pub json: bool,
}

/// What the memory estimate counts, said with every estimate.
const INCLUDES: &str = "device: weights as uploaded (block formats; norms, biases and RoPE divisors as f32) + activation buffers + attention probabilities [heads,T,T] kept whole for the trace + logits; trace: every stage at T, 4 bytes a value, copied to pinned host memory";
const EXCLUDES: &str = "the CUDA context and compiled kernels, split-K partial sums (card-dependent), allocator rounding";

/// One stage a trace of this model holds, with its dims in the stage table's symbols.
#[derive(Serialize)]
struct StageEntry {
    name: &'static str,
    dims: Vec<&'static str>,
}

#[derive(Serialize)]
struct Report {
    model: String,
    #[serde(flatten)]
    summary: ModelSummary,
    stages: Vec<StageEntry>,
    memory: Vec<MemoryEstimate>,
    memory_includes: &'static str,
    memory_excludes: &'static str,
}

pub fn run(args: &InspectArgs) -> Result<Outcome> {
    let counts = super::bench::parse_counts(&args.tokens_count)?;
    let file = GgufFile::open(&args.model).map_err(|e| e.context("MODEL"))?;
    let cfg = ModelConfig::from_gguf(&file).map_err(|e| e.context("MODEL"))?;
    cfg.validate_tensors(&file)
        .map_err(|e| e.context("MODEL"))?;
    if let Some(&t) = counts.iter().find(|&&t| t > cfg.context_length) {
        return Err(Error::input(format!(
            "--tokens-count: {t} tokens is past the model's context of {}",
            cfg.context_length
        )));
    }
    let report = Report {
        model: args.model.display().to_string(),
        summary: ModelSummary::of(&file, &cfg),
        stages: Stage::ALL
            .into_iter()
            .filter(|&s| cfg.has_stage(s))
            .map(|s| StageEntry {
                name: s.name(),
                dims: stage_dims(s).iter().map(|d| d.symbol()).collect(),
            })
            .collect(),
        memory: counts.iter().map(|&t| estimate(&file, &cfg, t)).collect(),
        memory_includes: INCLUDES,
        memory_excludes: EXCLUDES,
    };
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::internal(format!("inspect: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", text(&report, &cfg));
    }
    Ok(Outcome::Holds)
}

/// Bytes in the largest binary unit that keeps a whole number in front.
fn mib(b: u64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} bytes")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn text(r: &Report, cfg: &ModelConfig) -> String {
    let s = &r.summary;
    let sh = &s.shape;
    let mut out = format!("{}: {}\n", r.model, s.arch);
    out += &format!(
        "  layers {}, hidden {}, heads {} (kv {}), head_dim {}, vocab {}, context {}\n",
        sh.layers, sh.hidden, sh.heads, sh.kv_heads, sh.head_dim, sh.vocab, sh.context
    );
    if sh.experts > 0 {
        out += &format!(
            "  experts {} (top-{}), expert FFN {}",
            sh.experts, sh.experts_used, sh.expert_ffn
        );
        if sh.shared_expert_ffn > 0 {
            out += &format!(", shared expert FFN {}", sh.shared_expert_ffn);
        }
        out += "\n";
    } else {
        out += &format!("  FFN {}\n", sh.ffn);
    }
    out += &format!(
        "  RoPE theta {}, scaling {}\n",
        sh.rope_theta, sh.rope_scaling
    );
    if s.files.len() > 1 {
        out += &format!("files: {} shards\n", s.files.len());
        for f in &s.files {
            out += &format!("  {}  {} bytes, {} tensors\n", f.path, f.bytes, f.tensors);
        }
    }
    out += "tensors by type:\n";
    for t in &s.types {
        out += &format!(
            "  {:<6} {:>5} tensors {:>14} bytes {:>14} params\n",
            t.ty, t.tensors, t.bytes, t.params
        );
    }
    out += &format!(
        "  {:<6} {:>5} tensors {:>14} bytes {:>14} params\n",
        "total", s.tensors, s.tensor_bytes, s.params
    );
    // the architecture as `stages --arch` describes it
    out += &super::stages::describe(cfg.desc());
    out += "memory of a traced CUDA run (every stage kept):\n";
    for m in &r.memory {
        out += &format!(
            "  T={}: device {} = weights {} + activations {} + attention {} + logits {}; trace {} (pinned host); untraced attention {}; a schedule adds a KV cache of {} (f32; half with --kv-cache f16)\n",
            m.tokens,
            mib(m.device),
            mib(m.weights),
            mib(m.activations),
            mib(m.attention),
            mib(m.logits),
            mib(m.trace),
            mib(m.attention_untraced),
            mib(m.kv_cache)
        );
    }
    out += &format!("  includes: {INCLUDES}\n  excludes: {EXCLUDES}\n");
    out
}
