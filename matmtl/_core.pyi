"""Type stubs for matmtl's Rust extension (rust_core/src/bindings.rs).

Use :mod:`matmtl.geometry` instead: it validates inputs, handles torch tensors
and CUDA, and documents the conventions. Every function here takes float32 or
float64 numpy arrays (one dtype per call), reads C-contiguous arrays in place
(other layouts are copied once), releases the GIL while it computes, and raises
matmtl.errors.GeometryInputError (a ValueError) for bad input, TypeError for
wrong dtypes and RuntimeError for internal failures.
tests/test_core_boundary.py keeps these stubs equal to the extension's signatures.
"""

import numpy as np
import numpy.typing as npt

__version__: str

def subspace_geometry(
    tasks: list[npt.NDArray[np.floating]],
) -> tuple[
    npt.NDArray[np.float64],  # angles (T, T, k), radians, ascending
    npt.NDArray[np.float64],  # mean_cosine (T, T)
    npt.NDArray[np.int64],  # ranks (T,)
    npt.NDArray[np.bool_],  # qr_pairs (T, T)
]:
    """Principal angles and mean-gradient cosines of T tasks; each task a (d, k) array."""

def pcgrad(
    grads: list[npt.NDArray[np.floating]],
    orders: list[list[int]],
    return_projected: bool = True,
    out: tuple[npt.NDArray[np.floating] | None, npt.NDArray[np.floating]] | None = None,
) -> tuple[npt.NDArray[np.floating] | None, npt.NDArray[np.floating]]:
    """PCGrad over T gradients of shape (d,); ``orders[i]`` is a permutation of the
    other tasks. Returns (projected (T, d) or None, total (d,)) in the input dtype,
    written into ``out=(projected or None, total)`` when given (C-contiguous,
    writeable, the gradients' dtype, not overlapping them)."""

def project_onto_span(
    g: npt.NDArray[np.floating],
    basis: npt.NDArray[np.floating],
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.floating]]:
    """(parallel, orthogonal) parts of g (d,) with respect to span(basis) (d, k)."""

def project_halfspace(
    g1: npt.NDArray[np.floating],
    g2: npt.NDArray[np.floating],
) -> npt.NDArray[np.floating]:
    """g1 - min(0, g1.g2) / |g2|^2 g2 (g1 itself when g2 = 0)."""

def simd_isa() -> str:
    """The instruction set the kernels use here: "avx512", "avx2+fma" or "portable"."""
