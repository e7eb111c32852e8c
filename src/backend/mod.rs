//! Backends: anything that runs a traced forward over a whole prompt.
//!
//! The CPU backend is the reference; the CUDA backend is the usual candidate; engines that are
//! not ours implement [`Backend`] for their own forward (see examples/). One trait serves the
//! plain forward, the traced forward and the teacher-forced replay used for attribution.

pub mod cpu;
pub mod cuda;
pub mod fault;
pub mod rows;
pub mod schedule;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::error::{Error, Result};
use crate::trace::plan::CapturePlan;
use crate::trace::trace::Trace;

pub use fault::{Fault, FaultKind};
pub use schedule::{Schedule, Step, StepKind};

/// One forward over a prompt.
#[derive(Clone, Copy, Debug)]
pub struct ForwardRequest<'a> {
    /// Prompt token ids; all positions are processed at once (batched prefill).
    pub tokens: &'a [u32],
    /// Stages and layers to capture. Stages not planned are never copied out.
    pub plan: &'a CapturePlan,
    /// Teacher forcing: when set, every layer `i` starts from the teacher's input to that layer
    /// (`embedding` for layer 0, `layer.{i-1}.layer_out` otherwise), and `final_norm` from the
    /// teacher's last `layer_out`, `logits` from the teacher's `final_norm`. Each layer's output
    /// then measures that layer's own error, apart from what it would have inherited.
    pub teacher: Option<&'a Trace>,
    /// Faults planted on this side (harness self-tests and bug-class reproductions).
    pub faults: &'a [Fault],
    /// How the prompt is walked: one step (the default), or chunked prefill and decode steps
    /// through a KV cache. The trace has the same keys and shapes under every schedule.
    pub schedule: Schedule,
}

impl<'a> ForwardRequest<'a> {
    pub fn new(tokens: &'a [u32], plan: &'a CapturePlan) -> ForwardRequest<'a> {
        ForwardRequest {
            tokens,
            plan,
            teacher: None,
            faults: &[],
            schedule: Schedule::full(),
        }
    }
}

/// The checks the shipped backends make before a forward, so that bad input is an error naming
/// the model (`model`) and never work or memory sized by it: a prompt of at least one token and
/// at most the model's context length (`{arch}.context_length`), and a capture plan whose layers
/// the model has, and a schedule that fits the prompt.
pub fn check_request(
    req: &ForwardRequest<'_>,
    model: &str,
    n_layers: usize,
    context_length: usize,
) -> Result<()> {
    let t = req.tokens.len();
    if t == 0 {
        return Err(Error::input("empty prompt: give at least one token"));
    }
    if t > context_length {
        return Err(Error::input(format!(
            "the prompt has {t} tokens, more than the context length of {model} ({context_length} tokens)"
        )));
    }
    req.plan
        .check_layers(n_layers, model)
        .map_err(|e| Error::input(format!("capture plan: {e}")))?;
    req.schedule.check(t).map_err(Error::input)
}

/// Whether backend `name` may be asked for `schedule`: the full forward always; chunked prefill
/// and decode steps on the built-in backends (which walk a KV cache); a registered engine is
/// refused here, since its forward would silently run the whole prompt at once.
pub fn check_schedule(name: &str, schedule: &Schedule) -> Result<()> {
    if schedule.is_full() || BACKENDS.contains(&name) {
        return Ok(());
    }
    Err(Error::input(format!(
        "backend `{name}` does not run schedules (asked for `{schedule}`): only the built-in backends walk a KV cache"
    )))
}

/// A traced forward implementation.
pub trait Backend {
    /// Short name used in trace metadata and reports: `cpu`, `cuda`, `my-engine`.
    fn name(&self) -> &str;

    /// One line on what ran: device, precision, threads, driver.
    fn describe(&self) -> String;

    /// Run the forward. Returns exactly the planned stages that the architecture computes.
    fn forward(&mut self, req: &ForwardRequest<'_>) -> Result<Trace>;
}

/// Whether backend `name` can run here, without opening a model: `Ok` for the CPU backends; for
/// `cuda`, a probe of the driver and device 0 ([`crate::ErrorKind::NoDevice`] when absent).
/// Runners call this first, so that a GPU check on a machine without one is skipped before any
/// model is generated or read.
pub fn probe(name: &str) -> Result<()> {
    match name {
        "cuda" => cuda::CudaBackend::probe(0).map(|_| ()),
        n if is_known(n) => Ok(()),
        other => Err(unknown_backend(other)),
    }
}

/// The backends falsifier ships, by the names the CLI and contracts use.
pub const BACKENDS: [&str; 3] = ["cpu", "cpu-f32", "cuda"];

/// Whether `name` is a backend this program knows (shipped or registered), without probing a
/// device. Lint checks contracts' backend names with it.
pub fn is_known(name: &str) -> bool {
    BACKENDS.contains(&name) || registered(name).is_some()
}

/// Whether backend `name` needs a GPU (its trials are skipped without one, and a holding trial
/// on a device proves FUNCTIONAL). Only `cuda` among the shipped ones; registered engines run
/// where their program runs.
pub fn needs_gpu(name: &str) -> bool {
    name == "cuda"
}

/// Open a shipped backend on a model: `cpu` (the reference: f64 accumulation), `cpu-f32` (the
/// same forward accumulating in f32, the noise floor a calibration measures), `cuda`.
/// Without a CUDA driver or device, `cuda` is an [`crate::ErrorKind::NoDevice`] error.
pub fn open(name: &str, model: &Path) -> Result<Box<dyn Backend>> {
    use cpu::{CpuBackend, Precision};
    match name {
        "cpu" => Ok(Box::new(CpuBackend::open(model)?)),
        "cpu-f32" => Ok(Box::new(
            CpuBackend::open(model)?.with_precision(Precision::F32),
        )),
        "cuda" => Ok(Box::new(cuda::CudaBackend::open(model, 0)?)),
        other => match registered(other) {
            Some(factory) => factory(model),
            None => Err(unknown_backend(other)),
        },
    }
}

/// Opens a registered backend on a model.
pub type Factory = Arc<dyn Fn(&Path) -> Result<Box<dyn Backend>> + Send + Sync>;

/// Backends registered at run time by programs that link falsifier (their own engines).
static REGISTRY: RwLock<BTreeMap<String, Factory>> = RwLock::new(BTreeMap::new());

/// Make [`open`] and [`probe`] know the backend `name` (an engine of your own: see
/// examples/toy_engine.rs). The shipped names cannot be replaced; registering a name again
/// replaces the earlier factory.
pub fn register(name: &str, factory: Factory) {
    if BACKENDS.contains(&name) {
        return;
    }
    // a poisoned lock only means another registration panicked; the map itself is intact
    let mut map = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    map.insert(name.to_string(), factory);
}

fn registered(name: &str) -> Option<Factory> {
    let map = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    map.get(name).cloned()
}

/// The error for a backend name this program does not know, listing the ones it does.
pub fn unknown_backend(name: &str) -> Error {
    let map = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    let known: Vec<&str> = BACKENDS
        .iter()
        .copied()
        .chain(map.keys().map(String::as_str))
        .collect();
    Error::input(format!(
        "unknown backend `{name}` (known: {})",
        known.join(", ")
    ))
}
