//! `falsifier calibrate MODEL.gguf --tokens 1,2,3|--prompt TEXT [--factor F]`: measure the noise floor of f32
//! arithmetic on a model and prompt — the CPU reference accumulating in f32 against the same
//! forward accumulating in f64 — and propose per-stage thresholds of F × that floor.

use std::path::PathBuf;

use clap::Args;

use super::Outcome;
use super::diff::print_proposals;
use crate::backend::ForwardRequest;
use crate::diff::thresholds::propose;
use crate::diff::{DiffOptions, diff};
use crate::error::{Error, Result};
use crate::trace::plan::CapturePlan;

#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// The model (GGUF).
    pub model: PathBuf,
    /// Prompt token ids, comma-separated.
    #[arg(long, required_unless_present = "prompt", conflicts_with = "prompt")]
    pub tokens: Option<String>,
    /// Prompt text, tokenized with the model's own tokenizer (its GGUF metadata).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Proposed threshold = FACTOR x the worst f32-vs-f64 relative L2 error of the stage.
    #[arg(long, default_value_t = 10.0)]
    pub factor: f64,
}

pub fn run(args: &CalibrateArgs) -> Result<Outcome> {
    if !(args.factor.is_finite() && args.factor >= 1.0) {
        return Err(Error::input(format!(
            "--factor {}: expected a factor >= 1",
            args.factor
        )));
    }
    let prompt = super::trace::prompt(&args.model, args.tokens.as_deref(), args.prompt.as_deref())?;
    let tokens = prompt.tokens;
    let plan = CapturePlan::all();
    let req = ForwardRequest::new(&tokens, &plan);
    let f64_trace = super::open_backend("cpu", &args.model)?.forward(&req)?;
    let f32_trace = super::open_backend("cpu-f32", &args.model)?.forward(&req)?;
    let opts = DiffOptions {
        labels: Some(("cpu".into(), "cpu-f32".into())),
        ..DiffOptions::default()
    };
    let report = diff(&f64_trace, &f32_trace, &opts)?;
    println!(
        "noise floor of f32 accumulation on {} ({} tokens): {} stages compared",
        args.model.display(),
        tokens.len(),
        report.summary().compared
    );
    print_proposals(&propose(&report, args.factor), args.factor);
    Ok(Outcome::Holds)
}
