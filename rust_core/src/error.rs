//! The core's one error type. `bindings.rs` turns it into a Python exception in
//! one place (`impl From<GeometryError> for PyErr`):
//!
//! | variant | Python exception |
//! | --- | --- |
//! | `WrongType` | `TypeError` |
//! | `Invalid`, `NonFinite` | `matmtl.errors.GeometryInputError` (a `ValueError`) |
//! | `NoConvergence`, `Panic` | `RuntimeError` |
//!
//! Who checks what: the binding validates what it receives (array type, dtype,
//! dimensions, shapes, output buffers); the kernels report what only a pass over
//! the data can show (NaN/inf and overflow, found in their first pass) and the
//! PCGrad visiting orders. Sizes the binding has already checked are kernel
//! preconditions ([`assert_blocks`]): a violation is a bug and panics.

use std::any::Any;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

#[derive(Clone, Debug, PartialEq)]
pub enum GeometryError {
    /// Not a numpy array, or a dtype other than float32/float64, or mixed dtypes.
    WrongType(String),
    /// Unusable input (shapes, visiting orders, output buffers, values too large);
    /// the message names the parameter.
    Invalid(String),
    /// An input holds NaN or ±inf; `what` names it ("gradient of task 3", "g1", ...).
    NonFinite { what: String },
    /// A dense eigen/singular value solver did not converge (not expected for
    /// finite input).
    NoConvergence,
    /// A panic caught at the boundary: a bug in the core, never the caller's fault.
    Panic(String),
}

impl fmt::Display for GeometryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongType(msg) | Self::Invalid(msg) => f.write_str(msg),
            Self::NonFinite { what } => write!(f, "{what} contains NaN or inf"),
            Self::NoConvergence => f.write_str("eigen/singular value solver did not converge"),
            Self::Panic(msg) => write!(f, "internal error in matmtl._core: {msg}"),
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

/// Run `f`, turning a panic into [`GeometryError::Panic`] (the boundary never
/// lets a panic cross into Python).
pub fn catch_panic<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|panic| Err(GeometryError::Panic(panic_message(&*panic))))
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// Precondition of the kernels: at least one block, `d, k >= 1`, and every block
/// a `d x k` slice. The binding checks shapes before calling a kernel, so a
/// violation is a bug in the caller and panics.
pub fn assert_blocks<E>(blocks: &[&[E]], d: usize, k: usize) {
    assert!(
        !blocks.is_empty() && d > 0 && k > 0,
        "need at least one block with d, k >= 1 (got {} blocks, d={d}, k={k})",
        blocks.len()
    );
    if let Some(t) = blocks.iter().position(|b| b.len() != d * k) {
        panic!(
            "block {t} holds {} values, expected d*k = {}",
            blocks[t].len(),
            d * k
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_errors_with_their_message() {
        let err = catch_panic::<()>(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(err, GeometryError::Panic("boom 1".into()));
        assert_eq!(err.to_string(), "internal error in matmtl._core: boom 1");
        let err = catch_panic::<()>(|| panic!("static")).unwrap_err();
        assert_eq!(err, GeometryError::Panic("static".into()));
        assert_eq!(catch_panic(|| Ok(3)), Ok(3));
        assert_eq!(
            catch_panic::<()>(|| Err(GeometryError::NoConvergence)),
            Err(GeometryError::NoConvergence)
        );
    }

    #[test]
    fn block_preconditions() {
        let x = [1.0f32; 12];
        assert_blocks(&[&x[..], &x[..]], 4, 3);
        for (blocks, d, k) in [
            (vec![], 4, 3),
            (vec![&x[..], &x[..11]], 4, 3),
            (vec![&x[..0]], 0, 3),
        ] {
            let caught = catch_panic(|| {
                assert_blocks(&blocks, d, k);
                Ok(())
            });
            assert!(matches!(caught, Err(GeometryError::Panic(_))), "{d} {k}");
        }
    }
}
