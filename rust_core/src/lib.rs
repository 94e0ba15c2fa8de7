//! matmtl's Rust core. Kernels live in plain-Rust modules; `bindings` (feature
//! `python`) is the only place that knows about pyo3.

#[cfg(feature = "python")]
mod bindings;
