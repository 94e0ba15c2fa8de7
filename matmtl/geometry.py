"""Gradient-subspace geometry for multi-task training.

Each task t contributes a matrix ``G_t`` of shape ``(d, k)``: k gradient samples
(e.g. from k micro-batches) of the d shared parameters. This module answers, for
all task pairs at once, how the tasks' gradient subspaces relate, and applies the
usual gradient projections:

* :func:`subspace_geometry` -- principal angles between span(G_s) and span(G_t)
  for every pair (T x T x k, radians, ascending) and the T x T cosine similarity
  of the tasks' mean gradients;
* :func:`pcgrad` -- PCGrad gradient surgery (Yu et al. 2020) with reproducible
  visiting orders;
* :func:`project_onto_span` -- a gradient split into its parts inside and
  orthogonal to another task's gradient span;
* :func:`project_halfspace` -- the vector nearest to g1 that does not conflict
  with g2.

Inputs are float32 or float64 numpy arrays or torch tensors. CPU inputs run on
the Rust core (``matmtl._core``: multi-threaded, SIMD, GIL released); CUDA
tensors run on the GPU through ``torch.linalg``. ``backend="torch"`` forces the
torch path (also on CPU). See docs/geometry.md for accuracy, conventions and
performance.

Conventions for degenerate input (never NaN):

* A task's *rank* is the numerical rank of its samples after scaling every
  sample to unit length (zero samples are dropped); singular values below
  ``10 * k * eps(dtype)`` times the largest count as zero.
* Principal angles between spans of ranks r_s and r_t: the ``min(r_s, r_t)``
  genuine angles come first (ascending); the remaining ``k - min(r_s, r_t)``
  entries -- directions one span does not have -- are pi/2. A task with itself
  has ``r_t`` zeros followed by pi/2s; a rank-0 task has all pi/2.
* A mean gradient counts as zero when its norm is at most ``sqrt(eps(dtype))``
  times the average norm of the task's samples; its cosine with every task,
  itself included, is 0. Otherwise a task's cosine with itself is exactly 1.
* PCGrad leaves a zero gradient unchanged and never projects onto one.
* ``project_halfspace(g1, 0)`` is g1; projecting onto a rank-0 span gives
  parallel = 0, orthogonal = g.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from matmtl import _core
from matmtl.errors import GeometryInputError

__all__ = [
    "PCGradResult",
    "SpanProjection",
    "SubspaceGeometry",
    "pcgrad",
    "pcgrad_orders",
    "project_halfspace",
    "project_onto_span",
    "subspace_geometry",
]

_BACKENDS = ("auto", "rust", "torch")


@dataclass(frozen=True)
class SubspaceGeometry:
    """Pairwise geometry of T tasks' gradient subspaces (k samples each).

    Attributes:
        angles: ``(T, T, k)`` float64, principal angles in radians, ascending
            along the last axis, symmetric in the task pair; pi/2 for directions
            that do not exist (rank deficiency, see the module docstring).
        mean_cosine: ``(T, T)`` float64, cosine similarity of the tasks' mean
            gradients (mean over the k samples); 0 where a mean is zero.
        ranks: ``(T,)`` int64, numerical rank of each task's samples.
        qr_pairs: ``(T, T)`` bool, which pairs were computed on the QR path
            rather than from the Gram matrix (diagnostic; see docs/geometry.md).
        backend: ``"rust"`` or ``"torch"``.
    """

    angles: np.ndarray
    mean_cosine: np.ndarray
    ranks: np.ndarray
    qr_pairs: np.ndarray
    backend: str

    @property
    def num_tasks(self) -> int:
        return self.angles.shape[0]

    def degrees(self) -> np.ndarray:
        """The principal angles in degrees, ``(T, T, k)``."""
        return np.degrees(self.angles)


@dataclass(frozen=True)
class PCGradResult:
    """PCGrad output, with the input's array type, dtype and device.

    Attributes:
        projected: ``(T, d)``, the projected gradient g_i' of every task (None
            when not requested).
        total: ``(d,)``, their sum (the update direction).
        orders: the visiting order used for each task.
    """

    projected: Any
    total: Any
    orders: list[list[int]]


@dataclass(frozen=True)
class SpanProjection:
    """``g = parallel + orthogonal`` with ``parallel`` in span(G) and
    ``orthogonal`` perpendicular to it (input's array type, dtype, device)."""

    parallel: Any
    orthogonal: Any


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def subspace_geometry(grads, *, backend: str = "auto") -> SubspaceGeometry:
    """Principal angles between every pair of tasks' gradient spans, and the
    cosine similarity of the tasks' mean gradients, in one call.

    Args:
        grads: T gradient-sample matrices of shape ``(d, k)`` -- a sequence of
            arrays/tensors or one ``(T, d, k)`` array/tensor; all float32 or all
            float64, all numpy or all torch (on one device).
        backend: ``"auto"`` (CUDA tensors -> torch, everything else -> Rust),
            ``"rust"`` (CPU only) or ``"torch"`` (any device).

    Returns:
        A :class:`SubspaceGeometry` (float64 numpy arrays).

    Accuracy: float64 input is computed by QR/SVD (agrees with
    ``scipy.linalg.subspace_angles`` to ~1e-12 rad); float32 input on the Rust
    path uses one streaming Gram pass with a QR fallback for ill-conditioned
    tasks and for angles below ~0.1 rad (errors ~1e-5 rad typical).

    Raises:
        TypeError: wrong container, dtype (ints, float16, complex, ...) or mixed
            dtypes/array kinds.
        GeometryInputError: (a ValueError) wrong shapes (not 2-D, different d or
            k, empty), NaN/inf (the message names the task), unusable device or
            backend.
    """
    noun = "gradient samples"
    tasks, kind = _task_list(grads, per_task_ndim=2, noun=noun)
    if _choose_backend(tasks, kind, backend) == "torch":
        return _torch_geometry(_torch_tasks(tasks, 2, noun))
    angles, mean_cosine, ranks, qr_pairs = _core.subspace_geometry(_numpy_tasks(tasks, noun))
    return SubspaceGeometry(angles, mean_cosine, ranks, qr_pairs, "rust")


def pcgrad_orders(num_tasks: int, seed=None) -> list[list[int]]:
    """The order in which PCGrad visits the other tasks, for each task.

    Task i's order is ``rng.permutation([j for j in range(T) if j != i])``, drawn
    for i = 0, 1, ... from ``rng = np.random.default_rng(seed)``; ``seed`` may
    also be a ``np.random.Generator`` (its state advances).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return [rng.permutation([j for j in range(num_tasks) if j != i]).tolist() for i in range(num_tasks)]


def pcgrad(grads, *, seed=None, return_projected: bool = True, out=None, backend: str = "auto") -> PCGradResult:
    """PCGrad gradient surgery (Yu et al. 2020, "Gradient Surgery for Multi-Task
    Learning", Algorithm 1).

    For each task i, starting from ``g_i' = g_i``, the other tasks j are visited
    in a random order (:func:`pcgrad_orders` with ``seed``); whenever
    ``g_i' . g_j < 0`` (a conflict), g_i' is projected onto the normal plane of
    the *original* g_j: ``g_i' -= (g_i' . g_j) / |g_j|^2 * g_j``.

    Guarantees (what the tests check): with two tasks neither projected gradient
    conflicts with the other task's gradient; in general, g_i' does not conflict
    with the last task it visited, ``|g_i'| <= |g_i|``, and gradients without
    conflicts are returned unchanged. (Later projections can re-introduce a
    conflict with an earlier-visited task; that is PCGrad's behaviour.)

    Args:
        grads: T gradient vectors of shape ``(d,)`` (sequence or ``(T, d)``).
        seed: int, ``np.random.Generator`` or None (fresh randomness).
        return_projected: also return the T projected gradients; False saves
            writing a ``(T, d)`` array when only the sum is needed.
        out: ``(projected, total)`` arrays/tensors to write the results into
            (``projected`` None when ``return_projected`` is False), of the
            gradients' kind, dtype and device, C-contiguous, not overlapping the
            gradients. A training loop that reuses them saves allocating (and, on
            the CPU, page-faulting) fresh output memory every step.
        backend: as in :func:`subspace_geometry`.

    Returns:
        A :class:`PCGradResult`; arrays have the input's type, dtype, device.
    """
    tasks, kind = _task_list(grads, per_task_ndim=1, noun="gradient")
    if out is not None:
        _check_out_kind(out, tasks, kind)
    orders = pcgrad_orders(len(tasks), seed)
    if _choose_backend(tasks, kind, backend) == "torch":
        projected, total = _pcgrad_on_torch(tasks, orders, return_projected, out)
    else:
        projected, total = _pcgrad_on_rust(tasks, kind, orders, return_projected, out)
    return PCGradResult(projected, total, orders)


def _pcgrad_on_rust(tasks, kind: str, orders, return_projected: bool, out) -> tuple:
    """The core checks the ``out`` buffers (dtype, shape, C order, writeable, no
    overlap) before any work and writes into them."""
    arrays = None if out is None else tuple(None if o is None else _out_view(o) for o in out)
    projected, total = _core.pcgrad(_numpy_tasks(tasks, "gradient"), orders, return_projected, arrays)
    if out is not None:
        return tuple(out)  # the caller's objects, now filled
    return (None if projected is None else _like(projected, kind)), _like(total, kind)


def _pcgrad_on_torch(tasks, orders, return_projected: bool, out) -> tuple:
    tensors = _torch_tasks(tasks, 1, "gradient")
    if out is not None:
        _check_torch_out(out, tensors, return_projected)
    projected, total = _torch_pcgrad(tensors, orders, return_projected)
    if out is None:
        return projected, total
    for buf, result in zip(out, (projected, total), strict=True):
        if buf is not None:
            _as_tensor(buf).copy_(result)
    return tuple(out)


def _check_out_kind(out, tasks, kind: str) -> None:
    """pcgrad's ``out`` is a (projected, total) pair of the gradients' kind and device."""
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError("out must be a (projected, total) pair")
    for buf, name in zip(out, ("out projected", "out total"), strict=True):
        if buf is None:
            continue
        if _kind_of(buf, name) != kind:
            raise TypeError(
                f"{name} must be a {'numpy array' if kind == 'numpy' else 'torch tensor'} like the gradients"
            )
        if kind == "torch" and buf.device != tasks[0].device:
            raise GeometryInputError(f"{name} is on {buf.device}, the gradients on {tasks[0].device}")


def _check_torch_out(out, tensors, return_projected: bool) -> None:
    """The torch backend's checks of ``out`` (the core's, for the Rust path); the
    results are computed first and then copied in, so overlap does not matter."""
    projected, total = out
    if (projected is None) == return_projected:
        raise GeometryInputError("out: give a projected array exactly when return_projected is True")
    T, d = len(tensors), tensors[0].shape[0]
    want = _dtype_name(tensors[0])
    for buf, shape, name in ((projected, (T, d), "out projected"), (total, (d,), "out total")):
        if buf is None:
            continue
        if _dtype_name(buf) != want:
            raise TypeError(f"{name} has dtype {_dtype_name(buf)}; the gradients are {want}")
        if tuple(buf.shape) != shape:
            raise GeometryInputError(f"{name} has shape {tuple(buf.shape)}, expected {shape}")
        if isinstance(buf, np.ndarray) and not buf.flags.writeable:
            raise GeometryInputError(f"{name} is read-only")


def project_onto_span(g, G, *, backend: str = "auto") -> SpanProjection:
    """Split ``g`` (shape ``(d,)``) into its orthogonal projection onto span(G)
    (``G`` of shape ``(d, k)``, e.g. another task's gradient samples) and the
    remainder, which is orthogonal to every column of G. Rank-deficient G is
    fine; a G of rank 0 gives ``parallel = 0``. Computed in float64 via QR."""
    kind = _pair_kind(g, G, ("g", "G"))
    if _choose_backend([g, G], kind, backend) == "torch":
        g_, G_ = _torch_pair(g, G, ("g", "G"), (1, 2))
        if g_.shape[0] != G_.shape[0]:
            raise GeometryInputError(
                f"g has shape {tuple(g_.shape)} but G has shape {tuple(G_.shape)}; need g (d,), G (d, k)"
            )
        parallel, orthogonal = _torch_span_projection(g_, G_)
    else:
        parallel, orthogonal = _core.project_onto_span(_as_numpy(g, "g"), _as_numpy(G, "G"))
        parallel, orthogonal = _like(parallel, kind), _like(orthogonal, kind)
    return SpanProjection(parallel, orthogonal)


def project_halfspace(g1, g2, *, backend: str = "auto"):
    """The vector nearest to ``g1`` with ``g2 . d >= 0``:
    ``d = g1 - min(0, g1 . g2) / |g2|^2 * g2``; ``g2 = 0`` gives ``d = g1``.
    Both of shape ``(d,)``; dot products in float64."""
    kind = _pair_kind(g1, g2, ("g1", "g2"))
    if _choose_backend([g1, g2], kind, backend) == "torch":
        a, b = _torch_pair(g1, g2, ("g1", "g2"), (1, 1))
        if a.shape != b.shape:
            raise GeometryInputError(f"g1 {tuple(a.shape)} and g2 {tuple(b.shape)} must have the same shape")
        return _torch_halfspace(a, b)
    return _like(_core.project_halfspace(_as_numpy(g1, "g1"), _as_numpy(g2, "g2")), kind)


# ---------------------------------------------------------------------------
# Input checks and conversions
#
# Who checks what (each input is checked once):
# * here: the container (a sequence or one stacked array), the array kind (numpy
#   or torch, not mixed), device and backend, byte order;
# * the Rust core (rust_core/src/bindings.rs), for the Rust path: dtype,
#   dimensions, shapes, and pcgrad's out= buffers; its kernels find NaN/inf in
#   their first pass over the data;
# * _torch_tasks / _torch_pair / _check_torch_out below, for the torch path: the
#   same rules and messages as the core, since torch is the kernel there.
# ---------------------------------------------------------------------------


def _is_tensor(x) -> bool:
    torch = sys.modules.get("torch")  # no tensor can exist unless torch is imported
    return torch is not None and isinstance(x, torch.Tensor)


def _kind_of(x, what: str) -> str:
    if isinstance(x, np.ndarray):
        return "numpy"
    if _is_tensor(x):
        return "torch"
    raise TypeError(f"{what} must be a numpy array or torch tensor, got {type(x).__name__}")


def _dtype_name(x) -> str:
    """'float32', 'int64', 'bfloat16', ... ('>f4' for non-native numpy byte order)."""
    return str(x.dtype).removeprefix("torch.")


def _task_list(grads, *, per_task_ndim: int, noun: str) -> tuple[list, str]:
    """Split ``grads`` into per-task arrays of one kind (numpy or torch)."""
    if isinstance(grads, np.ndarray) or _is_tensor(grads):
        if grads.ndim != per_task_ndim + 1:
            raise GeometryInputError(
                f"a single array of {noun} must be {per_task_ndim + 1}-D (tasks first), got shape {tuple(grads.shape)}"
            )
        tasks = list(grads)
    elif isinstance(grads, Sequence) and not isinstance(grads, (str, bytes)):
        tasks = list(grads)
    else:
        raise TypeError(f"expected a sequence of arrays/tensors or one array/tensor, got {type(grads).__name__}")
    if not tasks:
        raise GeometryInputError("need at least one task")
    kinds = {_kind_of(t, f"{noun} of task {i}") for i, t in enumerate(tasks)}
    if len(kinds) > 1:
        raise TypeError("mix of numpy arrays and torch tensors; pass one kind")
    return tasks, kinds.pop()


def _pair_kind(a, b, names: tuple[str, str]) -> str:
    kinds = {_kind_of(a, names[0]), _kind_of(b, names[1])}
    if len(kinds) > 1:
        raise TypeError(f"{names[0]} and {names[1]} mix numpy arrays and torch tensors; pass one kind")
    return kinds.pop()


def _choose_backend(arrays: list, kind: str, backend: str) -> str:
    """'rust' or 'torch' for these inputs (see :func:`subspace_geometry`)."""
    if backend not in _BACKENDS:
        raise GeometryInputError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if kind == "numpy":
        return "torch" if backend == "torch" else "rust"
    devices = {x.device for x in arrays}
    if len(devices) > 1:
        raise GeometryInputError(f"tensors are on different devices {sorted(map(str, devices))}; move them to one")
    device = devices.pop()
    if device.type not in ("cpu", "cuda"):
        raise GeometryInputError(f"unsupported device {device}; use CPU or CUDA tensors")
    if backend == "rust" and device.type != "cpu":
        raise GeometryInputError(
            f"backend='rust' needs CPU tensors, got device {device}; use backend='torch' or 'auto'"
        )
    if backend == "auto":
        return "torch" if device.type == "cuda" else "rust"
    return backend


def _as_numpy(x, what: str = "input") -> np.ndarray:
    """A numpy view for the Rust core: CPU tensors share memory (no copy);
    non-native byte order is converted (a copy)."""
    if _is_tensor(x):
        try:
            x = x.detach().resolve_conj().resolve_neg().numpy()
        except TypeError:  # a dtype numpy lacks (bfloat16, ...)
            raise TypeError(f"{what} has dtype {_dtype_name(x)}; expected float32 or float64") from None
    if not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    return x


def _numpy_tasks(tasks, noun: str) -> list[np.ndarray]:
    return [_as_numpy(t, f"{noun} of task {i}") for i, t in enumerate(tasks)]


def _out_view(buf) -> np.ndarray:
    """An output buffer as the numpy array the core writes into: the caller's own
    memory, never a converted copy (the core refuses what it cannot write)."""
    return buf.detach().numpy() if _is_tensor(buf) else buf


def _as_tensor(x):
    import torch

    return torch.from_numpy(_as_numpy(x)) if isinstance(x, np.ndarray) else x.detach()


def _check_float_tensors(tensors, names: list[str], all_names: str) -> None:
    dtypes = []
    for x, name in zip(tensors, names, strict=True):
        dtypes.append(_dtype_name(x))
        if dtypes[-1] not in ("float32", "float64"):
            raise TypeError(f"{name} has dtype {dtypes[-1]}; expected float32 or float64")
    if len(set(dtypes)) > 1:
        raise TypeError(f"{all_names} mix float32 and float64; convert them to one dtype")


def _check_shape(x, ndim: int, what: str) -> tuple:
    shape = tuple(x.shape)
    if len(shape) != ndim:
        raise GeometryInputError(f"{what} must be {ndim}-D, got shape {shape}")
    if 0 in shape:
        raise GeometryInputError(f"{what} is empty (shape {shape})")
    return shape


def _torch_tasks(tasks, per_task_ndim: int, noun: str) -> list:
    """The tasks as tensors for the torch backend, checked as the core checks them."""
    tensors = [_as_tensor(t) for t in tasks]
    names = [f"{noun} of task {i}" for i in range(len(tensors))]
    _check_float_tensors(tensors, names, "tasks")
    shapes = [_check_shape(t, per_task_ndim, name) for t, name in zip(tensors, names, strict=True)]
    for i, shape in enumerate(shapes):
        if shape != shapes[0]:
            dim = "d" if shape[0] != shapes[0][0] else "k"
            raise GeometryInputError(
                f"{names[i]} has shape {shape} but task 0 has {shapes[0]}: "
                f"mismatched {dim}; all tasks need the same shape"
            )
    return tensors


def _torch_pair(a, b, names: tuple[str, str], ndims: tuple[int, int]) -> tuple:
    """Two inputs as tensors for the torch backend, checked as the core checks them."""
    a, b = _as_tensor(a), _as_tensor(b)
    _check_float_tensors((a, b), list(names), f"{names[0]} and {names[1]}")
    for x, name, ndim in zip((a, b), names, ndims, strict=True):
        _check_shape(x, ndim, name)
    return a, b


def _like(result: np.ndarray, kind: str):
    """Return Rust results as torch tensors (sharing memory) for torch inputs."""
    if kind == "torch":
        import torch

        return torch.from_numpy(result)
    return result


# ---------------------------------------------------------------------------
# torch backend (CUDA, or CPU on request): QR + SVD through torch.linalg
# ---------------------------------------------------------------------------


def _check_finite(tasks, noun: str) -> None:
    import torch

    finite = torch.stack([torch.isfinite(t).all() for t in tasks]).cpu()
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        raise GeometryInputError(f"{noun} of task {bad} contains NaN or inf")


def _torch_frames(G, eps: float):
    """Orthonormal bases of the column spans of ``G`` (T, d, k): returns
    ``(B, ranks)`` with B (T, d, k) whose first ``ranks[t]`` columns span
    span(G_t) and whose other columns are zero. Same recipe as the Rust QR path:
    unit-length samples, QR, SVD of R, rank cut at ``10 k eps`` with ``eps`` of
    the input dtype (G itself may be a float64 copy)."""
    import torch

    k = G.shape[-1]
    norms = torch.linalg.vector_norm(G, dim=1, keepdim=True)
    Ge = G / torch.where(norms > 0, norms, torch.ones_like(norms))
    Q, R = torch.linalg.qr(Ge)
    U, S, _ = torch.linalg.svd(R)
    keep = S > 10 * k * eps * S[..., :1]
    return (Q @ U) * keep.unsqueeze(-2), keep.sum(-1)


def _torch_geometry(tasks) -> SubspaceGeometry:
    import torch

    _check_finite(tasks, "gradient samples")
    G = torch.stack(tasks)
    T, d, k = G.shape
    B, ranks = _torch_frames(G, torch.finfo(G.dtype).eps)
    flat = B.transpose(0, 1).reshape(d, T * k)
    M = (flat.T @ flat).reshape(T, k, T, k).transpose(1, 2)  # M[s, t] = B_s^T B_t
    ranks_list = ranks.tolist()
    angles = torch.full((T, T, k), math.pi / 2, dtype=torch.float64)
    for t, r in enumerate(ranks_list):
        angles[t, t, :r] = 0.0
    pairs = [(s, t) for s in range(T) for t in range(s + 1, T)]
    if pairs:
        # Sines: the lower-rank basis minus its projection onto the other one.
        small = torch.tensor([t if ranks_list[t] <= ranks_list[s] else s for s, t in pairs], device=G.device)
        large = torch.tensor([s if ranks_list[t] <= ranks_list[s] else t for s, t in pairs], device=G.device)
        Msl = M[large, small]
        cos = torch.linalg.svdvals(Msl)  # descending: smallest angle first
        # Singular values of the tall residuals, via their small R factors.
        sin = torch.linalg.svdvals(torch.linalg.qr(B[small] - B[large] @ Msl, mode="r").R)  # descending, zeros last
        m = torch.minimum(ranks[small], ranks[large])
        i = torch.arange(k, device=G.device)
        sin_asc = sin.gather(1, (m[:, None] - 1 - i).clamp(min=0))  # i-th smallest genuine sine
        theta = torch.where(sin_asc**2 < 0.5, torch.asin(sin_asc.clamp(max=1)), torch.acos(cos.clamp(max=1)))
        theta = torch.where(i < m[:, None], theta, math.pi / 2).to("cpu", torch.float64)
        for p, (s, t) in enumerate(pairs):
            angles[s, t] = angles[t, s] = theta[p]
    qr_pairs = ~np.eye(T, dtype=bool)
    return SubspaceGeometry(
        angles.numpy(), _torch_mean_cosine(G), ranks.cpu().numpy().astype(np.int64), qr_pairs, "torch"
    )


def _torch_mean_cosine(G) -> np.ndarray:
    import torch

    mean = G.mean(dim=2)
    norm = torch.linalg.vector_norm(mean, dim=1)
    avg_sample_norm = torch.linalg.vector_norm(G, dim=1).mean(dim=1)
    nonzero = norm > math.sqrt(torch.finfo(G.dtype).eps) * avg_sample_norm
    unit = mean / torch.where(nonzero, norm, torch.ones_like(norm))[:, None]
    cos = (unit @ unit.T).clamp(-1, 1) * (nonzero[:, None] & nonzero[None, :])
    cos.diagonal().copy_(nonzero.to(cos.dtype))
    return cos.to("cpu", torch.float64).numpy()


def _pcgrad_coefficients(gram: np.ndarray, orders: list[list[int]]) -> np.ndarray:
    """PCGrad as coefficients: row i holds the weights of the original gradients
    in g_i', computed from the Gram matrix ``gram[i, j] = g_i . g_j`` alone."""
    T = gram.shape[0]
    coef = np.eye(T)
    for i, order in enumerate(orders):
        for j in order:
            dot = coef[i] @ gram[:, j]
            if dot < 0:
                coef[i, j] -= dot / gram[j, j]
    return coef


def _torch_pcgrad(tasks, orders, return_projected: bool):
    import torch

    G64 = torch.stack(tasks).to(torch.float64)
    gram = (G64 @ G64.T).cpu().numpy()
    _check_gram_diagonal(gram, tasks)
    coef = torch.from_numpy(_pcgrad_coefficients(gram, orders)).to(G64.device)
    dtype = tasks[0].dtype
    total = (coef.sum(0) @ G64).to(dtype)
    return ((coef @ G64).to(dtype) if return_projected else None), total


def _check_gram_diagonal(gram: np.ndarray, tasks) -> None:
    """NaN/inf in a gradient makes its squared norm on the Gram's diagonal NaN or
    inf: the check costs no pass of its own, as in the Rust core."""
    import torch

    bad = np.flatnonzero(~np.isfinite(np.diag(gram)))
    if bad.size:
        t = int(bad[0])
        if bool(torch.isfinite(tasks[t]).all()):
            raise GeometryInputError(f"gradient of task {t} is too large: its squared norm overflows float64")
        raise GeometryInputError(f"gradient of task {t} contains NaN or inf")


def _torch_span_projection(g, G):
    import torch

    _check_finite([g], "g")
    _check_finite([G], "G")
    B, _ = _torch_frames(G.to(torch.float64)[None], torch.finfo(G.dtype).eps)
    g64 = g.to(torch.float64)
    parallel = B[0] @ (B[0].T @ g64)
    return parallel.to(g.dtype), (g64 - parallel).to(g.dtype)


def _torch_halfspace(g1, g2):
    import torch

    for name, x in (("g1", g1), ("g2", g2)):
        if not bool(torch.isfinite(x).all()):
            raise GeometryInputError(f"{name} contains NaN or inf")
    a, b = g1.to(torch.float64), g2.to(torch.float64)
    dot = torch.dot(a, b)
    weight = torch.where(dot < 0, -dot / torch.dot(b, b), torch.zeros_like(dot))
    return (a + weight * b).to(g1.dtype)
