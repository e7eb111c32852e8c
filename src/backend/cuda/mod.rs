//! The CUDA backend: the candidate side of the usual pair, a traced decoder forward on an
//! NVIDIA GPU through cudarc, under any schedule (the whole prompt at once, or chunked prefill
//! and decode steps through a KV cache on the device).
//!
//! - [`device`]: probe (no driver or no card is `ErrorKind::NoDevice`, never a panic), NVRTC
//!   compilation of `kernels/*.cu` once per process, launches that name kernel and stage.
//! - [`weights`]: the model's tensors uploaded once in their GGUF block formats.
//! - [`matmul`]: which matmul kernel serves a launch, its launch shape, and the launch.
//! - [`forward`]: the forward, step by step of the schedule, with faults, teacher forcing and
//!   capture.
//! - [`capture`]: planned stages copied asynchronously into pinned host memory.
//!
//! Nothing CUDA is needed at build time (cudarc loads the driver and NVRTC at run time), so the
//! default build carries this backend everywhere and it reports "no CUDA device" where there is
//! none.

pub mod capture;
pub mod device;
pub mod forward;
pub mod matmul;
pub mod memory;
pub mod rates;
pub mod timeline;
pub mod weights;

use std::path::Path;
use std::sync::OnceLock;

use crate::backend::{Backend, ForwardRequest};
use crate::error::Result;
use crate::model::config::ModelConfig;
use crate::model::gguf::GgufFile;
use crate::trace::trace::{Trace, TraceMeta};

use capture::Arena;
use device::Device;
use weights::{DeviceWeights, Dims, HostTensor};

/// Open device `ordinal` with every kernel loaded, the matmul variants included.
pub fn open_device(ordinal: usize) -> Result<Device> {
    Device::open(ordinal, matmul::type_kernel_names)
}

/// A model loaded on a CUDA device.
pub struct CudaBackend {
    dev: Device,
    weights: DeviceWeights,
    arena: Arena,
    /// Model path for trace metadata.
    model: String,
    /// The model file, kept mapped for its sha256 (computed on first use: 17 GB take seconds).
    file: Option<GgufFile>,
    model_sha256: OnceLock<String>,
    /// Bytes the attention probabilities may take when the plan does not keep them
    /// (`forward::ATT_PROBS_BUDGET`; tests lower it to walk short prompts in blocks).
    att_probs_budget: usize,
}

impl CudaBackend {
    /// Open device `ordinal` (probe, compile, load kernels) and describe it, without a model.
    /// `Err` with `ErrorKind::NoDevice` when there is no driver or no device.
    pub fn probe(ordinal: usize) -> Result<String> {
        open_device(ordinal).map(|d| d.description)
    }

    /// Open device `ordinal` and upload a model's weights. `get` returns a tensor by its
    /// llama.cpp name (`blk.0.attn_q.weight`); `model` and `model_sha256` go into trace
    /// metadata.
    pub fn new<'a>(
        ordinal: usize,
        dims: Dims,
        get: &dyn Fn(&str) -> Option<HostTensor<'a>>,
        model: &str,
        model_sha256: &str,
    ) -> Result<CudaBackend> {
        let dev = open_device(ordinal)?;
        let weights = DeviceWeights::upload(&dev, dims, get)?;
        Ok(CudaBackend {
            dev,
            weights,
            arena: Arena::default(),
            model: model.to_string(),
            file: None,
            model_sha256: OnceLock::from(model_sha256.to_string()),
            att_probs_budget: forward::ATT_PROBS_BUDGET,
        })
    }

    /// Open device `ordinal` and upload the GGUF model at `path` (qwen3 or qwen3moe).
    pub fn open(path: &Path, ordinal: usize) -> Result<CudaBackend> {
        // probe first: without a device, say so before reading a large model
        let dev = open_device(ordinal)?;
        let f = GgufFile::open(path)?;
        let cfg = ModelConfig::from_gguf(&f)?;
        cfg.validate_tensors(&f)?;
        let dims = Dims::from_config(&cfg);
        let get = |name: &str| {
            f.tensor(name).map(|info| HostTensor {
                name: &info.name,
                ty: info.ty,
                dims: &info.dims,
                bytes: f.tensor_data(info),
            })
        };
        let weights =
            DeviceWeights::upload(&dev, dims, &get).map_err(|e| e.context(path.display()))?;
        Ok(CudaBackend {
            dev,
            weights,
            arena: Arena::default(),
            model: path.display().to_string(),
            file: Some(f),
            model_sha256: OnceLock::new(),
            att_probs_budget: forward::ATT_PROBS_BUDGET,
        })
    }

    pub fn dims(&self) -> &Dims {
        &self.weights.dims
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &str {
        "cuda"
    }

    fn describe(&self) -> String {
        format!(
            "cuda: {}; weights in GGUF block formats decoded in the matmuls, f32 activations, f32 FMA dot products, f64 norms/softmax/RoPE",
            self.dev.description
        )
    }

    fn forward(&mut self, req: &ForwardRequest<'_>) -> Result<Trace> {
        let sha = self
            .model_sha256
            .get_or_init(|| {
                self.file
                    .as_ref()
                    .map(|f| f.sha256_hex())
                    .unwrap_or_default()
            })
            .clone();
        let mut meta = TraceMeta {
            backend: "cuda".into(),
            model: self.model.clone(),
            model_sha256: sha,
            tokens: req.tokens.to_vec(),
            plan: req.plan.to_string(),
            dtype: "f32 activations; weights decoded in the matmuls; f32 FMA dot products; f64 norms, softmax, RoPE, SiLU, expert combine".into(),
            extra: Default::default(),
        };
        meta.extra
            .insert("device".into(), self.dev.description.clone());
        if !req.faults.is_empty() {
            let f: Vec<String> = req.faults.iter().map(|f| f.to_string()).collect();
            meta.extra.insert("faults".into(), f.join(" "));
        }
        if req.teacher.is_some() {
            meta.extra.insert("teacher_forced".into(), "true".into());
        }
        if !req.schedule.is_full() {
            meta.extra.insert(
                crate::backend::schedule::SCHEDULE_KEY.into(),
                req.schedule.to_string(),
            );
        }
        let trace = forward::forward(
            &self.dev,
            &self.weights,
            req,
            &mut self.arena,
            meta,
            self.att_probs_budget,
        )?;
        if std::env::var("FALSIFIER_CUDA_PROFILE").is_ok_and(|v| v == "1") {
            let rows = self.dev.take_profile()?;
            eprint!(
                "CUDA profile of a {}-token forward (plan {}):\n{}",
                req.tokens.len(),
                req.plan,
                device::format_profile(&rows)
            );
        }
        Ok(trace)
    }
}

#[cfg(test)]
mod gpu_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    /// Without a driver the probe is a clean NoDevice; with one it names the card. Either way
    /// no panic (this runs in CI, which has no GPU).
    #[test]
    fn probe_never_panics() {
        match CudaBackend::probe(0) {
            Ok(desc) => assert!(desc.contains("compute capability"), "{desc}"),
            Err(e) => assert_eq!(e.kind, ErrorKind::NoDevice, "{e}"),
        }
    }

    #[test]
    fn probe_of_a_missing_ordinal_is_no_device() {
        let e = CudaBackend::probe(1 << 20).expect_err("no machine has 2^20 GPUs");
        assert_eq!(e.kind, ErrorKind::NoDevice, "{e}");
    }
}
