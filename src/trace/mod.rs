//! Traces: the stage vocabulary, capture plans, captured tensors, and trace files.

pub mod io;
pub mod plan;
pub mod stage;
pub mod tensor;
#[allow(clippy::module_inception)]
pub mod trace;

pub use plan::{CapturePlan, LayerSel};
pub use stage::{Key, Stage};
pub use tensor::{Tensor, TensorData, TensorView, ViewData};
pub use trace::{Trace, TraceMeta};
