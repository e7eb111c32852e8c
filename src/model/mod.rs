//! Models: GGUF files, GGML block formats, hyper-parameters, and synthetic models.

pub mod quant;

pub use quant::GgmlType;
