"""Accuracy, conventions and error handling of matmtl.geometry (Rust and torch paths)."""

import math

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles

from matmtl import _core
from matmtl import geometry as geo
from matmtl.errors import GeometryInputError

HALF_PI = math.pi / 2


# --- references --------------------------------------------------------------


def scipy_angles(A, B, k=None):
    """scipy's principal angles in float64, ascending, padded with pi/2 to k."""
    a = np.sort(subspace_angles(np.asarray(A, np.float64), np.asarray(B, np.float64)))
    k = k or A.shape[1]
    return np.concatenate([a, np.full(k - a.size, HALF_PI)])


def assert_matches_scipy(tasks, tol):
    """All pairs of subspace_geometry(tasks) agree with scipy on the same values."""
    res = geo.subspace_geometry(tasks)
    assert res.angles.dtype == np.float64 and np.isfinite(res.angles).all()
    exact = [np.asarray(t, np.float64) for t in tasks]
    worst = 0.0
    for s in range(len(tasks)):
        for t in range(s + 1, len(tasks)):
            worst = max(worst, np.abs(res.angles[s, t] - scipy_angles(exact[s], exact[t])).max())
    assert worst <= tol, f"max deviation from scipy {worst:.3e} rad > {tol:.0e}"
    return res


def numpy_pcgrad(grads, orders):
    """Yu et al. 2020, Algorithm 1, on plain float64 vectors."""
    grads = [np.asarray(g, np.float64) for g in grads]
    out = []
    for i, order in enumerate(orders):
        g = grads[i].copy()
        for j in order:
            dot = g @ grads[j]
            if dot < 0:
                g -= dot / (grads[j] @ grads[j]) * grads[j]
        out.append(g)
    return np.array(out)


def related_tasks(rng, T, d, k, noise, dtype=np.float64):
    """Tasks sharing a common component: moderate angles, like real gradients."""
    base = rng.standard_normal((d, k))
    return [(base + noise * rng.standard_normal((d, k))).astype(dtype) for _ in range(T)]


# --- accuracy against scipy ----------------------------------------------------


def test_float64_matches_scipy_to_1e_8():
    rng = np.random.default_rng(0)
    res = assert_matches_scipy(related_tasks(rng, 4, 300, 5, 1.0), 1e-8)
    assert res.qr_pairs[~np.eye(4, dtype=bool)].all()  # float64 always takes the QR path


def test_float32_matches_scipy_to_1e_3():
    rng = np.random.default_rng(1)
    res = assert_matches_scipy(related_tasks(rng, 4, 2000, 6, 1.0, np.float32), 1e-4)
    assert not res.qr_pairs.any()  # well-conditioned, large angles: the Gram path


def test_float32_large_input_over_many_threads():
    rng = np.random.default_rng(2)
    assert_matches_scipy(related_tasks(rng, 3, 200_000, 8, 2.0, np.float32), 1e-4)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-8), (np.float32, 1e-3)])
def test_column_norms_spanning_nine_decades(dtype, tol):
    rng = np.random.default_rng(3)
    scales = np.logspace(-6, 3, 5)
    tasks = [(t * scales).astype(dtype) for t in related_tasks(rng, 3, 400, 5, 0.7)]
    assert_matches_scipy(tasks, tol)


@pytest.mark.parametrize("dtype, eps, tol", [(np.float64, 1e-6, 1e-8), (np.float32, 1e-3, 1e-3)])
def test_nearly_dependent_columns(dtype, eps, tol):
    rng = np.random.default_rng(4)
    tasks = related_tasks(rng, 3, 400, 4, 1.0)
    for t in tasks:
        t[:, 1] = t[:, 0] + eps * t[:, 1]
    res = assert_matches_scipy([t.astype(dtype) for t in tasks], tol)
    assert (res.ranks == 4).all()
    if dtype == np.float32:
        assert res.qr_pairs[0, 1]  # too ill-conditioned for the Gram path


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-8), (np.float32, 1e-3)])
def test_tiny_angles(dtype, tol):
    rng = np.random.default_rng(5)
    d, k = 200, 3
    A = rng.standard_normal((d, k))
    B = A @ rng.standard_normal((k, k)) + 1e-7 * rng.standard_normal((d, k))
    assert scipy_angles(A, B).max() < 1e-6
    assert_matches_scipy([A.astype(dtype), B.astype(dtype)], tol)
    # float64 resolves them: the angles really are ~1e-7, not 0.
    res = geo.subspace_geometry([A, B])
    assert 1e-8 < res.angles[0, 1, -1] < 1e-6


def test_small_angles_in_float32_use_the_qr_path():
    rng = np.random.default_rng(6)
    A = rng.standard_normal((1000, 4))
    B = A + 0.02 * rng.standard_normal((1000, 4))  # angles ~0.02 rad
    res = assert_matches_scipy([A.astype(np.float32), B.astype(np.float32)], 1e-5)
    assert res.qr_pairs[0, 1]


def test_mean_cosine_and_result_object():
    rng = np.random.default_rng(7)
    tasks = related_tasks(rng, 3, 500, 4, 1.0)
    res = geo.subspace_geometry(tasks)
    means = [t.mean(axis=1) for t in tasks]
    want = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in means] for a in means])
    np.testing.assert_allclose(res.mean_cosine, want, atol=1e-12)
    np.testing.assert_allclose(
        geo.subspace_geometry([t.astype(np.float32) for t in tasks]).mean_cosine, want, atol=1e-5
    )
    assert res.num_tasks == 3 and res.backend == "rust"
    np.testing.assert_allclose(res.degrees(), np.degrees(res.angles))
    assert res.angles.shape == (3, 3, 4) and res.ranks.dtype == np.int64


# --- rank-deficient input ------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", ["rust", "torch"])
def test_rank_deficiency_conventions(dtype, backend):
    rng = np.random.default_rng(8)
    d = 50
    a, b, c = rng.standard_normal((3, d))
    s = np.stack([a, 2 * a, np.zeros(d)], axis=1)  # rank 1: collinear + zero sample
    t = np.stack([a, b, c], axis=1)  # rank 3
    z = np.zeros((d, 3))  # rank 0, zero mean
    res = geo.subspace_geometry([x.astype(dtype) for x in (s, t, z)], backend=backend)
    np.testing.assert_array_equal(res.ranks, [1, 3, 0])
    assert np.isfinite(res.angles).all() and np.isfinite(res.mean_cosine).all()
    np.testing.assert_allclose(res.angles[0, 1], [0, HALF_PI, HALF_PI], atol=1e-6)
    np.testing.assert_allclose(res.angles[0, 0], [0, HALF_PI, HALF_PI])
    np.testing.assert_allclose(res.angles[2], HALF_PI)
    np.testing.assert_allclose(res.mean_cosine[2], 0.0)
    np.testing.assert_allclose(res.mean_cosine[:, 2], 0.0)
    np.testing.assert_allclose(np.diag(res.mean_cosine), [1, 1, 0])


def test_cancelling_samples_give_zero_mean():
    rng = np.random.default_rng(9)
    g = rng.standard_normal(100)
    tasks = [np.stack([g, -g], axis=1), rng.standard_normal((100, 2))]
    for dtype in (np.float32, np.float64):
        res = geo.subspace_geometry([t.astype(dtype) for t in tasks])
        np.testing.assert_array_equal(res.mean_cosine, [[0, 0], [0, 1]])
        assert res.ranks[0] == 1


# --- input layouts and array kinds ------------------------------------------------


def test_layouts_and_containers_agree():
    rng = np.random.default_rng(10)
    stacked = rng.standard_normal((3, 200, 4)).astype(np.float32)
    want = geo.subspace_geometry(list(stacked)).angles
    np.testing.assert_array_equal(geo.subspace_geometry(stacked).angles, want)
    np.testing.assert_array_equal(geo.subspace_geometry(tuple(stacked)).angles, want)
    # Fortran order (e.g. the transpose of a (k, d) gradient stack) is read in place
    # by the column-major kernel; mixed orders and strided views are copied once.
    samples = np.ascontiguousarray(stacked.transpose(0, 2, 1))  # (T, k, d)
    np.testing.assert_allclose(geo.subspace_geometry([s.T for s in samples]).angles, want, atol=1e-5)
    np.testing.assert_allclose(geo.subspace_geometry([np.asfortranarray(t) for t in stacked]).angles, want, atol=1e-5)
    mixed = [stacked[0], np.asfortranarray(stacked[1]), stacked[2]]
    np.testing.assert_array_equal(geo.subspace_geometry(mixed).angles, want)
    f64 = geo.subspace_geometry([s.T.astype(np.float64) for s in samples])  # astype keeps F order
    np.testing.assert_allclose(f64.angles, geo.subspace_geometry(list(stacked.astype(np.float64))).angles, atol=1e-10)
    wide = np.concatenate([stacked, stacked], axis=2)
    np.testing.assert_array_equal(geo.subspace_geometry([w[:, :4] for w in wide]).angles, want)
    # CPU tensors go to the Rust core.
    res = geo.subspace_geometry(torch.from_numpy(stacked))
    assert res.backend == "rust"
    np.testing.assert_array_equal(res.angles, want)
    # Big-endian input is converted.
    np.testing.assert_array_equal(geo.subspace_geometry([t.astype(">f4") for t in stacked]).angles, want)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-3)])
def test_torch_backend_agrees_with_rust(dtype, tol):
    rng = np.random.default_rng(11)
    tasks = [torch.from_numpy(t).to(dtype) for t in related_tasks(rng, 4, 600, 5, 0.8)]
    rust = geo.subspace_geometry(tasks)
    tor = geo.subspace_geometry(tasks, backend="torch")
    assert tor.backend == "torch" and rust.backend == "rust"
    np.testing.assert_allclose(tor.angles, rust.angles, atol=tol)
    np.testing.assert_allclose(tor.mean_cosine, rust.mean_cosine, atol=tol)
    np.testing.assert_array_equal(tor.ranks, rust.ranks)


# --- projections -----------------------------------------------------------------


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_pcgrad_equals_numpy_reference(dtype, tol):
    rng = np.random.default_rng(12)
    shared = rng.standard_normal(5000)
    grads = np.stack([0.3 * shared + rng.standard_normal(5000) for _ in range(6)]).astype(dtype)
    res = geo.pcgrad(grads, seed=42)
    assert res.orders == geo.pcgrad_orders(6, 42)
    want = numpy_pcgrad(grads, res.orders)
    assert res.projected.dtype == dtype and res.projected.shape == (6, 5000)
    scale = np.abs(want).max()
    np.testing.assert_allclose(res.projected, want, atol=tol * scale)
    np.testing.assert_allclose(res.total, want.sum(0), atol=tol * scale * 6)
    # Same seed, same result; the torch backend agrees.
    np.testing.assert_array_equal(geo.pcgrad(list(grads), seed=42).projected, res.projected)
    tor = geo.pcgrad(torch.from_numpy(grads), seed=42, backend="torch")
    np.testing.assert_allclose(tor.projected.numpy(), want, atol=tol * scale)
    # Only the sum, when the projected gradients are not needed.
    for backend in ("rust", "torch"):
        only = geo.pcgrad(grads, seed=42, return_projected=False, backend=backend)
        assert only.projected is None
        np.testing.assert_allclose(np.asarray(only.total), want.sum(0), atol=tol * scale * 6)
    # Torch CPU input through the Rust core comes back as tensors.
    out = geo.pcgrad(torch.from_numpy(grads), seed=42)
    assert isinstance(out.total, torch.Tensor) and out.total.dtype == torch.from_numpy(grads).dtype


def test_pcgrad_orders_follow_default_rng():
    rng = np.random.default_rng(3)
    want = [rng.permutation([j for j in range(4) if j != i]).tolist() for i in range(4)]
    assert geo.pcgrad_orders(4, 3) == want
    gen = np.random.default_rng(3)
    assert geo.pcgrad_orders(4, gen) == want and geo.pcgrad_orders(4, gen) != want


@pytest.mark.parametrize("backend", ["rust", "torch"])
def test_span_projection(backend):
    rng = np.random.default_rng(13)
    G = rng.standard_normal((300, 5))
    G[:, 4] = G[:, 0] + G[:, 1]  # rank 4
    g = rng.standard_normal(300)
    res = geo.project_onto_span(g, G, backend=backend)
    par, orth = np.asarray(res.parallel), np.asarray(res.orthogonal)
    coef, *_ = np.linalg.lstsq(G, g, rcond=None)
    np.testing.assert_allclose(par, G @ coef, atol=1e-12)
    np.testing.assert_allclose(par + orth, g, atol=1e-12)
    res32 = geo.project_onto_span(g.astype(np.float32), G.astype(np.float32), backend=backend)
    assert np.asarray(res32.parallel).dtype == np.float32
    np.testing.assert_allclose(np.asarray(res32.parallel), G @ coef, atol=1e-4)
    zero = geo.project_onto_span(g, np.zeros((300, 2)), backend=backend)
    np.testing.assert_array_equal(np.asarray(zero.parallel), 0)
    np.testing.assert_array_equal(np.asarray(zero.orthogonal), g)


@pytest.mark.parametrize("backend", ["rust", "torch"])
def test_halfspace_projection(backend):
    g1 = np.array([1.0, 0.0, 1.0])
    np.testing.assert_allclose(geo.project_halfspace(g1, np.array([-1.0, 1.0, 0.0]), backend=backend), [0.5, 0.5, 1.0])
    np.testing.assert_allclose(geo.project_halfspace(g1, np.array([1.0, 1.0, 0.0]), backend=backend), g1)
    np.testing.assert_allclose(geo.project_halfspace(g1, np.zeros(3), backend=backend), g1)
    rng = np.random.default_rng(14)
    a, b = rng.standard_normal((2, 100_000)).astype(np.float32)
    b -= a
    d = geo.project_halfspace(a, b, backend=backend)
    d = np.asarray(d)
    want = a - min(0.0, a.astype(np.float64) @ b) / (b.astype(np.float64) @ b) * b
    np.testing.assert_allclose(d, want, atol=1e-5)
    t = geo.project_halfspace(torch.from_numpy(a), torch.from_numpy(b))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["rust", "torch"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_names_the_task(backend, bad):
    rng = np.random.default_rng(15)
    for dtype in (np.float32, np.float64):
        tasks = [rng.standard_normal((30, 3)).astype(dtype) for _ in range(3)]
        tasks[2][7, 1] = bad
        with pytest.raises(GeometryInputError, match="task 2"):
            geo.subspace_geometry(tasks, backend=backend)
        grads = [rng.standard_normal(30).astype(dtype) for _ in range(3)]
        grads[1][3] = bad
        with pytest.raises(GeometryInputError, match="task 1"):
            geo.pcgrad(grads, seed=0, backend=backend)
        good = rng.standard_normal(30).astype(dtype)
        with pytest.raises(GeometryInputError, match="g1"):
            geo.project_halfspace(grads[1], good, backend=backend)
        with pytest.raises(GeometryInputError, match="g2"):
            geo.project_halfspace(good, grads[1], backend=backend)
        with pytest.raises(GeometryInputError, match="G"):
            geo.project_onto_span(good, tasks[2], backend=backend)


def _tasks(*shapes, dtype=np.float64):
    return [np.ones(s, dtype=dtype) for s in shapes]


@pytest.mark.parametrize(
    "grads, error, match",
    [
        (_tasks((10, 3), (10,)), GeometryInputError, "2-D"),
        (_tasks((10, 3), (10, 3, 1)), GeometryInputError, "2-D"),
        (_tasks((10, 3), (11, 3)), GeometryInputError, "mismatched d"),
        (_tasks((10, 3), (10, 2)), GeometryInputError, "mismatched k"),
        ([], GeometryInputError, "at least one task"),
        (_tasks((0, 3)), GeometryInputError, "empty"),
        (_tasks((10, 0)), GeometryInputError, "empty"),
        (np.ones((10, 3)), GeometryInputError, "3-D"),
        (_tasks((10, 3), dtype=np.int64), TypeError, "int64"),
        (_tasks((10, 3), dtype=np.float16), TypeError, "float16"),
        (_tasks((10, 3), dtype=np.complex128), TypeError, "complex128"),
        (_tasks((10, 3), dtype=bool), TypeError, "bool"),
        (_tasks((10, 3)) + _tasks((10, 3), dtype=np.float32), TypeError, "mix float32 and float64"),
        ([np.ones((10, 3)), torch.ones(10, 3, dtype=torch.float64)], TypeError, "mix of numpy arrays and torch"),
        ([[[1.0, 2.0], [3.0, 4.0]]], TypeError, "numpy array or torch tensor"),
        ("abc", TypeError, "sequence"),
        ([torch.ones(10, 3, dtype=torch.bfloat16)], TypeError, "bfloat16"),
    ],
)
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_bad_input(grads, error, match, backend):
    with pytest.raises(error, match=match):
        geo.subspace_geometry(grads, backend=backend)


def test_bad_devices_and_backend():
    cpu = torch.ones(10, 3, dtype=torch.float64)
    meta = torch.ones(10, 3, dtype=torch.float64, device="meta")
    with pytest.raises(GeometryInputError, match="different devices"):
        geo.subspace_geometry([cpu, meta])
    with pytest.raises(GeometryInputError, match="unsupported device"):
        geo.subspace_geometry([meta, meta])
    with pytest.raises(GeometryInputError, match="backend must be one of"):
        geo.subspace_geometry([cpu], backend="cuda")
    with pytest.raises(GeometryInputError, match="unsupported device"):
        geo.pcgrad(torch.ones(2, 5, device="meta"), backend="torch")


def test_projection_bad_input():
    g = np.ones(5)
    with pytest.raises(GeometryInputError, match="need g"):
        geo.project_onto_span(g, np.ones((6, 2)))
    with pytest.raises(GeometryInputError, match="2-D"):
        geo.project_onto_span(g, np.ones(5))
    with pytest.raises(TypeError, match="float32 and float64"):
        geo.project_halfspace(g, g.astype(np.float32))
    with pytest.raises(GeometryInputError, match="same shape"):
        geo.project_halfspace(g, np.ones(4))
    with pytest.raises(GeometryInputError, match="empty"):
        geo.project_halfspace(np.ones(0), np.ones(0))
    with pytest.raises(TypeError, match="int32"):
        geo.pcgrad([np.ones(3, np.int32)] * 2)


def test_core_validates_on_its_own():
    """The extension checks its inputs too, so a caller skipping matmtl.geometry
    gets exceptions, never a crash."""
    a = np.ones((10, 3))
    with pytest.raises(GeometryInputError, match="same shape"):
        _core.subspace_geometry([a, np.ones((9, 3))])
    with pytest.raises(GeometryInputError, match="2-D"):
        _core.subspace_geometry([np.ones(10)])
    with pytest.raises(TypeError, match="float32 or float64"):
        _core.subspace_geometry([a.astype(np.int32)])
    with pytest.raises(TypeError, match="mix float32 and float64"):
        _core.subspace_geometry([a, a.astype(np.float32)])
    with pytest.raises(TypeError, match="numpy array"):
        _core.subspace_geometry([[1.0, 2.0]])
    with pytest.raises(GeometryInputError, match="no inputs|at least one"):
        _core.subspace_geometry([])
    with pytest.raises(GeometryInputError, match="empty"):
        _core.subspace_geometry([np.ones((0, 3))])
    g = np.ones(4)
    for orders in ([[1], [1]], [[1]], [[2], [0]], [[1, 1], [0]]):
        with pytest.raises(GeometryInputError, match="permutation|order"):
            _core.pcgrad([g, g], orders)
    with pytest.raises(GeometryInputError, match="too large"):
        _core.pcgrad([np.full(4, 1e200), g], [[1], [0]])
    with pytest.raises(GeometryInputError):
        _core.project_onto_span(g, np.ones((5, 2)))
    assert _core.simd_isa() in ("avx512", "avx2+fma", "portable")


def test_pcgrad_writes_into_reused_output_buffers():
    rng = np.random.default_rng(21)
    G = rng.standard_normal((4, 5000)).astype(np.float32)
    want = geo.pcgrad(G, seed=3)
    P, t = np.full((4, 5000), np.nan, np.float32), np.full(5000, np.nan, np.float32)
    for _ in range(2):  # the second call overwrites the first one's results
        got = geo.pcgrad(G, seed=3, out=(P, t))
        assert got.projected is P and got.total is t
        np.testing.assert_array_equal(P, want.projected)
        np.testing.assert_array_equal(t, want.total)
    total_only = geo.pcgrad(G, seed=3, return_projected=False, out=(None, t))
    assert total_only.projected is None and total_only.total is t
    # torch tensors, both backends
    Gt, Pt, tt = torch.from_numpy(G), torch.empty(4, 5000), torch.empty(5000)
    for backend in ("rust", "torch"):
        res = geo.pcgrad(Gt, seed=3, out=(Pt, tt), backend=backend)
        assert res.total is tt
        np.testing.assert_allclose(tt.numpy(), want.total, atol=1e-4)


@pytest.mark.parametrize(
    "bad, exc, match",
    [
        ("strided", GeometryInputError, "must be C-contiguous"),
        ("short", GeometryInputError, "expected \\(5000,\\)"),
        ("float64", TypeError, "dtype float64"),
        ("alias", GeometryInputError, "overlaps the input"),
        ("outputs_overlap", GeometryInputError, "out total overlaps .* the other output"),
        ("missing", GeometryInputError, "exactly when return_projected"),
        ("readonly", GeometryInputError, "read-only"),
        ("not_pair", TypeError, "pair"),
    ],
)
def test_pcgrad_bad_output_buffers(bad, exc, match):
    G = np.random.default_rng(22).standard_normal((3, 5000)).astype(np.float32)
    P, t = np.zeros((3, 5000), np.float32), np.full(5000, 7.0, np.float32)
    wide = np.zeros((3, 10000), np.float32)
    ro = np.empty(5000, np.float32)
    ro.flags.writeable = False
    out = {
        "strided": (wide[:, ::2], t),
        "short": (P, t[:10].copy()),
        "float64": (P.astype(np.float64), t),
        "alias": (G, t),
        "outputs_overlap": (P, P[0]),
        "missing": (None, t),
        "readonly": (P, ro),
        "not_pair": P,
    }[bad]
    with pytest.raises(exc, match=match):
        geo.pcgrad(G, seed=0, out=out)
    assert (t == 7.0).all()  # refused before anything was written
