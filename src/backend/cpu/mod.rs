//! The CPU reference backend: a batched, traced forward of GGUF models of every supported
//! architecture (`model::arch`: qwen3, qwen3moe, llama incl. Mixtral, qwen2, qwen2moe).
//!
//! Correct before fast: weights are dequantized to f32 row chunk by row chunk (never the whole
//! model), every reduction accumulates in f64 by default ([`Precision::F32`] measures the f32
//! noise floor), activations between stages are f32. The whole prompt runs at once by default;
//! under a schedule (chunked prefill, decode steps) each step runs over its own rows through a
//! per-layer KV cache, with results bit-identical to the full forward. Every stage of the stage
//! vocabulary (docs/design.md) is computed by a function of the same name in [`decoder`] /
//! [`moe`], and copied out only when the capture plan wants it.
//!
//! Files: `ops` (dot, RMSNorm, softmax, top-k), `matmul` (batched quantized matmul),
//! `attention` (RoPE, causal GQA attention), `pass` (capture plan, planted faults, teacher
//! forcing, placing a step's rows), `decoder` (the forward chain, step by step), `kv` (the KV
//! cache and the cache faults), `moe` (the expert FFN and the shared expert).

pub mod attention;
mod decoder;
mod kv;
pub mod matmul;
mod moe;
pub mod ops;
mod pass;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use ops::Precision;

use crate::backend::schedule::SCHEDULE_KEY;
use crate::backend::{Backend, ForwardRequest};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::gguf::GgufFile;
use crate::model::weights::ModelWeights;
use crate::trace::trace::{Trace, TraceMeta};

pub struct CpuBackend {
    path: PathBuf,
    file: GgufFile,
    config: ModelConfig,
    precision: Precision,
    sha256: OnceLock<String>,
}

impl CpuBackend {
    /// Map the model, read its configuration and check that every weight is there with the
    /// right shape and a decodable layout.
    pub fn open(path: &Path) -> Result<CpuBackend> {
        let file = GgufFile::open(path)?;
        let config = ModelConfig::from_gguf(&file)?;
        ModelWeights::load(&file, &config)?;
        Ok(CpuBackend {
            path: path.to_path_buf(),
            file,
            config,
            precision: Precision::F64,
            sha256: OnceLock::new(),
        })
    }

    pub fn with_precision(mut self, precision: Precision) -> CpuBackend {
        self.precision = precision;
        self
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn dtype_note(&self) -> String {
        format!(
            "{} accumulation, f32 activations, weights dequantized to f32",
            self.precision.name()
        )
    }

    fn check_request(&self, req: &ForwardRequest<'_>) -> Result<()> {
        let model = self.path.display().to_string();
        crate::backend::check_request(
            req,
            &model,
            self.config.n_layers,
            self.config.context_length,
        )?;
        if let Some((pos, id)) = req
            .tokens
            .iter()
            .enumerate()
            .find(|(_, t)| **t as usize >= self.config.vocab)
        {
            return Err(Error::input(format!(
                "token id {id} at position {pos} is out of range: {} has a vocabulary of {}",
                self.path.display(),
                self.config.vocab
            )));
        }
        Ok(())
    }
}

impl Backend for CpuBackend {
    /// The name it was opened by (`backend::open`), so that traces and reports tell the f32
    /// variant from the reference.
    fn name(&self) -> &str {
        match self.precision {
            Precision::F64 => "cpu",
            Precision::F32 => "cpu-f32",
        }
    }

    fn describe(&self) -> String {
        format!(
            "cpu reference ({}; {} threads)",
            self.dtype_note(),
            rayon::current_num_threads()
        )
    }

    fn forward(&mut self, req: &ForwardRequest<'_>) -> Result<Trace> {
        self.check_request(req)?;
        let weights = ModelWeights::load(&self.file, &self.config)?;
        let mut pass = pass::Pass::new(req, &self.config, self.precision)?;
        pass::check_faults(req.faults, &pass.steps, &self.config, &weights)?;
        decoder::forward(&mut pass, &weights, req.tokens)?;
        let mut meta = TraceMeta {
            backend: self.name().into(),
            model: self.path.display().to_string(),
            model_sha256: self.sha256.get_or_init(|| self.file.sha256_hex()).clone(),
            tokens: req.tokens.to_vec(),
            plan: req.plan.to_string(),
            dtype: self.dtype_note(),
            extra: Default::default(),
        };
        meta.extra
            .insert("precision".into(), self.precision.name().into());
        if !req.faults.is_empty() {
            let f: Vec<String> = req.faults.iter().map(|f| f.to_string()).collect();
            meta.extra.insert("faults".into(), f.join(" "));
        }
        if req.teacher.is_some() {
            meta.extra.insert("teacher_forced".into(), "true".into());
        }
        if !req.schedule.is_full() {
            meta.extra
                .insert(SCHEDULE_KEY.into(), req.schedule.to_string());
        }
        Ok(Trace {
            meta,
            tensors: pass.captured,
        })
    }
}
