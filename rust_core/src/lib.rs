//! matmtl's Rust core: gradient-subspace geometry for multi-task training.
//!
//! Kernels are plain Rust (`gram`, `angles`, `frame`, `project`); `bindings`
//! (feature `python`) is the only module that knows about pyo3.

pub mod angles;
pub mod error;
pub mod frame;
pub mod gram;
pub mod project;
pub mod simd;

#[cfg(test)]
mod testing;

#[cfg(feature = "python")]
mod bindings;
