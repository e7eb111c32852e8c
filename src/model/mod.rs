//! Models: GGUF files, GGML block formats, hyper-parameters, and synthetic models.

pub mod arch;
pub mod config;
pub mod gguf;
pub mod quant;
pub mod summary;
pub mod synth;
pub mod tokenizer;
pub mod weights;

pub use quant::GgmlType;
