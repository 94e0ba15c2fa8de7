//! Errors the kernels report instead of panicking.

use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub enum GeometryError {
    /// An input holds NaN or ±inf; `what` names it ("task 3", "g1", ...).
    NonFinite { what: String },
    /// Inconsistent sizes or arguments (the Python layer checks first, so this
    /// is a second line of defence).
    Invalid(String),
    /// A dense eigen/singular value solver did not converge (not expected for
    /// finite input).
    NoConvergence,
}

impl fmt::Display for GeometryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NonFinite { what } => write!(f, "{what} contains NaN or inf"),
            Self::Invalid(msg) => f.write_str(msg),
            Self::NoConvergence => f.write_str("eigen/singular value solver did not converge"),
        }
    }
}

impl std::error::Error for GeometryError {}

impl From<faer::linalg::svd::SvdError> for GeometryError {
    fn from(_: faer::linalg::svd::SvdError) -> Self {
        Self::NoConvergence
    }
}

impl From<faer::linalg::evd::EvdError> for GeometryError {
    fn from(_: faer::linalg::evd::EvdError) -> Self {
        Self::NoConvergence
    }
}

pub type Result<T> = std::result::Result<T, GeometryError>;

/// Check that every block is a `d x k` row-major slice and the sizes are non-empty.
pub fn check_blocks<E>(blocks: &[&[E]], d: usize, k: usize) -> Result<()> {
    if blocks.is_empty() || d == 0 || k == 0 {
        return Err(GeometryError::Invalid(format!(
            "need at least one task with d >= 1 rows and k >= 1 columns (got {} tasks, d={d}, k={k})",
            blocks.len()
        )));
    }
    match blocks.iter().position(|b| b.len() != d * k) {
        Some(t) => Err(GeometryError::Invalid(format!(
            "task {t} holds {} values, expected d*k = {}",
            blocks[t].len(),
            d * k
        ))),
        None => Ok(()),
    }
}
