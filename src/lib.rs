//! falsifier: a differential-testing harness for transformer inference engines.
//!
//! It runs one model and prompt through two traced forwards (a CPU reference and a CUDA
//! candidate, or any two [`backend::Backend`]s), captures every stage of every layer
//! ([`trace`]), compares them stage by stage ([`diff`]), says where the candidate first leaves
//! the reference and whether that stage caused the divergence or inherited it, and writes a
//! report ([`report`]).
//!
//! Finding code: the forward of a stage lives in `backend/cpu/` under the stage's own name
//! (`fn attn_norm`, `fn q_rope`, ...); the stage vocabulary is [`trace::stage::Stage`].

pub mod backend;
pub mod bench;
pub mod cli;
pub mod contract;
pub mod diff;
pub mod error;
pub mod fs;
pub mod model;
pub mod progress;
pub mod report;
pub mod runner;
pub mod trace;

pub use error::{Error, ErrorKind, Result};
