//! The CPU reference backend (work in progress: kernels first).

pub mod attention;
pub mod matmul;
pub mod ops;
