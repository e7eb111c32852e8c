//! `falsifier trace MODEL.gguf --backend cpu|cuda --tokens 1,2,3|--prompt TEXT [--stages LIST|all]
//! [--layers A..B] --out TRACE.safetensors [--fault SPEC]... [--precision f64|f32]
//! [--teacher TRACE.safetensors] [--chunk C] [--decode N] [--kv-cache f32|f16]`: run one traced
//! forward and write its trace.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;

use super::Outcome;
use crate::backend::cpu::Precision;
use crate::backend::schedule::KvDtype;
use crate::backend::{Backend, Fault, ForwardRequest, Schedule};
use crate::error::{Error, Result};
use crate::model::tokenizer::Prompt;
use crate::trace::io::{read_trace, write_trace};
use crate::trace::plan::CapturePlan;
use crate::trace::trace::Trace;

#[derive(Args, Debug, Clone)]
pub struct TraceArgs {
    /// The model (GGUF, qwen3moe or qwen3).
    pub model: PathBuf,
    /// Which forward runs it: cpu (the reference) or cuda.
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Prompt token ids, comma-separated.
    #[arg(long, required_unless_present = "prompt", conflicts_with = "prompt")]
    pub tokens: Option<String>,
    /// Prompt text, tokenized with the model's own tokenizer (its GGUF metadata).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Stages to capture: a comma-separated list of stage names, or `all`.
    #[arg(long, default_value = "all")]
    pub stages: String,
    /// Layers to capture: `all`, `A..B`, `A..=B` or `i,j,k`.
    #[arg(long)]
    pub layers: Option<String>,
    /// Where to write the trace (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Plant a fault, e.g. `nan[0]@layer.1.ffn_out` (repeatable).
    #[arg(long = "fault")]
    pub faults: Vec<String>,
    /// Accumulation precision of the CPU reference.
    #[arg(long, default_value = "f64")]
    pub precision: String,
    /// Teacher forcing: start every layer from this trace's input to it.
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// Prefill in chunks of C tokens through the KV cache (default: the prefill in one step).
    #[arg(long)]
    pub chunk: Option<usize>,
    /// Feed the last N prompt tokens one at a time as decode steps through the KV cache.
    #[arg(long, default_value_t = 0)]
    pub decode: usize,
    /// What the KV cache stores: f32, or f16 (K and V rounded to half precision as they enter
    /// the cache, under every schedule, the full forward included).
    #[arg(long = "kv-cache", value_name = "f32|f16", default_value = "f32")]
    pub kv_cache: String,
}

/// Parse `1,2,3` (spaces allowed).
pub fn parse_tokens(text: &str) -> Result<Vec<u32>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(|(i, s)| {
            s.parse::<u32>().map_err(|_| {
                Error::input(format!(
                    "--tokens: item {i} `{s}` is not a token id (a non-negative integer)"
                ))
            })
        })
        .collect()
}

/// The prompt of `--tokens` or `--prompt` (clap makes them exclusive and one of them required),
/// with each position's piece when the model has a tokenizer.
pub fn prompt(model: &Path, tokens: Option<&str>, text: Option<&str>) -> Result<Prompt> {
    match (tokens, text) {
        (_, Some(text)) => Prompt::from_text(model, text).map_err(|e| e.context("--prompt")),
        (Some(t), None) => Ok(Prompt::from_ids(model, parse_tokens(t)?)),
        (None, None) => Err(Error::input(
            "give the prompt as --tokens IDS or --prompt TEXT",
        )),
    }
}

/// Open the backend named on the command line (`--precision f32` turns `cpu` into `cpu-f32`).
fn open_backend(args: &TraceArgs) -> Result<Box<dyn Backend>> {
    let precision: Precision = args
        .precision
        .parse()
        .map_err(|e: String| Error::input(format!("--precision: {e}")))?;
    let name = match (args.backend.as_str(), precision) {
        ("cpu", Precision::F32) => "cpu-f32",
        (other, _) => other,
    };
    super::open_backend(name, &args.model)
}

/// Run the forward the arguments describe and return its trace (without writing it).
pub fn trace(args: &TraceArgs) -> Result<Trace> {
    let prompt = prompt(&args.model, args.tokens.as_deref(), args.prompt.as_deref())?;
    let plan = CapturePlan::parse(&args.stages, args.layers.as_deref()).map_err(Error::input)?;
    let faults: Vec<Fault> = args
        .faults
        .iter()
        .map(|f| {
            f.parse()
                .map_err(|e: String| Error::input(format!("--fault: {e}")))
        })
        .collect::<Result<_>>()?;
    let teacher = args.teacher.as_deref().map(read_trace).transpose()?;
    let kv: KvDtype = args
        .kv_cache
        .parse()
        .map_err(|e: String| Error::input(format!("--kv-cache: {e}")))?;
    let schedule = Schedule::new(args.chunk, args.decode).with_kv(kv);
    schedule
        .check(prompt.tokens.len())
        .map_err(|e| Error::input(format!("--chunk/--decode: {e}")))?;
    let mut backend = open_backend(args)?;
    crate::backend::check_schedule(backend.name(), &schedule)?;
    let req = ForwardRequest {
        tokens: &prompt.tokens,
        plan: &plan,
        teacher: teacher.as_ref(),
        faults: &faults,
        schedule,
    };
    let mut trace = backend.forward(&req)?;
    trace.meta.set_pieces(&prompt.pieces);
    Ok(trace)
}

pub fn run(args: &TraceArgs) -> Result<Outcome> {
    let start = Instant::now();
    let trace = trace(args)?;
    write_trace(&args.out, &trace)?;
    println!(
        "traced {} stages ({:.1} MB) of {} tokens with {} in {:.2?} -> {}",
        trace.tensors.len(),
        trace.nbytes() as f64 / 1e6,
        trace.meta.tokens.len(),
        trace.meta.backend,
        start.elapsed(),
        args.out.display()
    );
    Ok(Outcome::Holds)
}
