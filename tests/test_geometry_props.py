"""Property tests (hypothesis) for matmtl.geometry: small sizes, fast."""

import math

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from matmtl import geometry as geo

HALF_PI = math.pi / 2
FAST = settings(max_examples=40, deadline=None)

seeds = st.integers(0, 2**32 - 1)
dtypes = st.sampled_from([np.float32, np.float64])


def angle_tol(dtype):
    return 1e-8 if dtype == np.float64 else 1e-3


@st.composite
def task_sets(draw):
    """T tasks of shape (d, k): random normal samples, sometimes related, with
    column scales over several decades, sometimes a duplicated or zero sample."""
    rng = np.random.default_rng(draw(seeds))
    T, k = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    d = draw(st.integers(k, 40))
    base = rng.standard_normal((d, k))
    mix = draw(st.sampled_from([0.0, 0.5, 3.0]))
    tasks = [mix * base + rng.standard_normal((d, k)) for _ in range(T)]
    tasks = [t * 10.0 ** rng.uniform(-3, 3, size=k) for t in tasks]
    if k > 1 and draw(st.booleans()):
        tasks[0][:, 1] = 2.0 * tasks[0][:, 0]
    if draw(st.booleans()):
        tasks[-1][:, 0] = 0.0
    dtype = draw(dtypes)
    return [t.astype(dtype) for t in tasks]


@FAST
@given(task_sets())
def test_angles_are_valid_sorted_and_symmetric(tasks):
    res = geo.subspace_geometry(tasks)
    a = res.angles
    assert np.isfinite(a).all() and np.isfinite(res.mean_cosine).all()
    assert (a >= 0).all() and (a <= HALF_PI).all()
    assert (np.diff(a, axis=-1) >= 0).all()
    np.testing.assert_array_equal(a, a.transpose(1, 0, 2))
    np.testing.assert_array_equal(res.mean_cosine, res.mean_cosine.T)
    assert (np.abs(res.mean_cosine) <= 1).all()
    # Self-angles follow the rank convention exactly.
    k = a.shape[-1]
    for t, r in enumerate(res.ranks):
        np.testing.assert_array_equal(a[t, t], [0.0] * r + [HALF_PI] * (k - r))


@FAST
@given(task_sets(), seeds)
def test_invariant_under_change_of_basis(tasks, seed):
    """span(G M) = span(G) for invertible M: the angles must not move. G M is
    formed in float64 (exact enough) -- rounding it to float32 would change the
    subspace itself when the samples' norms span many decades."""
    rng = np.random.default_rng(seed)
    k = tasks[0].shape[1]
    q, _ = np.linalg.qr(rng.standard_normal((k, k)))
    M = q * rng.uniform(0.5, 2.0, size=k)  # condition number <= 4
    mixed = [t.astype(np.float64) @ M for t in tasks]
    before, after = geo.subspace_geometry(tasks), geo.subspace_geometry(mixed)
    # a sample set right at the numerical-rank threshold may change rank under M:
    # invariance is a claim about spans whose rank is unambiguous
    assume(np.array_equal(before.ranks, after.ranks))
    np.testing.assert_allclose(after.angles, before.angles, atol=angle_tol(tasks[0].dtype) * 10)


@FAST
@given(seeds, st.integers(1, 4), dtypes)
def test_same_span_zero_and_orthogonal_spans_half_pi(seed, k, dtype):
    rng = np.random.default_rng(seed)
    d = 3 * k + rng.integers(0, 20)
    Q, _ = np.linalg.qr(rng.standard_normal((d, 2 * k)))
    A = Q[:, :k] @ rng.standard_normal((k, k))
    same = Q[:, :k] @ rng.standard_normal((k, k))
    orth = Q[:, k:] * 10.0 ** rng.uniform(-2, 2, size=k)
    res = geo.subspace_geometry([A.astype(dtype), same.astype(dtype), orth.astype(dtype)])
    if (res.ranks == k).all():  # a random k x k factor is singular with probability ~0
        np.testing.assert_allclose(res.angles[0, 1], 0.0, atol=angle_tol(dtype))
        np.testing.assert_allclose(res.angles[0, 2], HALF_PI, atol=angle_tol(dtype))
        np.testing.assert_allclose(res.angles[1, 2], HALF_PI, atol=angle_tol(dtype))


@st.composite
def gradient_sets(draw):
    rng = np.random.default_rng(draw(seeds))
    T, d = draw(st.integers(2, 6)), draw(st.integers(1, 60))
    shared = rng.standard_normal(d)
    grads = np.stack([draw(st.sampled_from([-1.0, 0.0, 0.5])) * shared + rng.standard_normal(d) for _ in range(T)])
    if draw(st.booleans()):
        grads[0] = 0.0
    return grads.astype(draw(dtypes))


def reference_pcgrad(grads, orders):
    grads = grads.astype(np.float64)
    out = grads.copy()
    for i, order in enumerate(orders):
        for j in order:
            dot = out[i] @ grads[j]
            if dot < 0:
                out[i] -= dot / (grads[j] @ grads[j]) * grads[j]
    return out


@FAST
@given(gradient_sets(), seeds)
def test_pcgrad_follows_yu_et_al(grads, seed):
    res = geo.pcgrad(grads, seed=seed)
    g64 = grads.astype(np.float64)
    scale = np.abs(g64).max() + 1e-30
    rtol = 1e-10 if grads.dtype == np.float64 else 1e-4
    want = reference_pcgrad(grads, res.orders)
    np.testing.assert_allclose(res.projected, want, atol=rtol * scale)
    np.testing.assert_allclose(res.total, want.sum(0), atol=rtol * scale * len(grads))
    p = res.projected.astype(np.float64)
    norms = np.linalg.norm(g64, axis=1)
    tol = rtol * norms.max() ** 2 + 1e-300
    for i, order in enumerate(res.orders):
        # What PCGrad guarantees: no conflict with the last task visited, ...
        assert p[i] @ g64[order[-1]] >= -tol
        # ... projections never lengthen a gradient, ...
        assert np.linalg.norm(p[i]) <= norms[i] * (1 + rtol) + 1e-300
        # ... and a gradient without conflicts is left alone.
        if all(g64[i] @ g64[j] >= 0 for j in order):
            np.testing.assert_array_equal(res.projected[i], grads[i])
    if len(grads) == 2:  # two tasks: no conflict left at all
        assert p[0] @ g64[1] >= -tol and p[1] @ g64[0] >= -tol


@FAST
@given(gradient_sets())
def test_halfspace_is_feasible_and_idempotent(grads):
    g1, g2 = grads[0], grads[1]
    out = geo.project_halfspace(g1, g2)
    assert out.dtype == g1.dtype
    n1, n2 = np.linalg.norm(g1.astype(np.float64)), np.linalg.norm(g2.astype(np.float64))
    tol = (1e-12 if g1.dtype == np.float64 else 1e-5) * (n1 * n2 + 1e-300)
    assert out.astype(np.float64) @ g2 >= -tol
    again = geo.project_halfspace(out, g2)
    np.testing.assert_allclose(again, out, atol=tol / (n2 + 1e-300) + 1e-300)
    if g1.astype(np.float64) @ g2 >= 0:
        np.testing.assert_array_equal(out, g1)


@FAST
@given(task_sets(), seeds)
def test_span_projection_is_idempotent_and_orthogonal(tasks, seed):
    G = tasks[0]
    g = np.random.default_rng(seed).standard_normal(G.shape[0]).astype(G.dtype)
    res = geo.project_onto_span(g, G)
    tol = 1e-10 if G.dtype == np.float64 else 1e-4
    again = geo.project_onto_span(res.parallel, G)
    np.testing.assert_allclose(again.parallel, res.parallel, atol=tol)
    np.testing.assert_allclose(again.orthogonal, 0, atol=tol)
    cols = G.astype(np.float64) / np.maximum(np.linalg.norm(G.astype(np.float64), axis=0), 1e-300)
    np.testing.assert_allclose(cols.T @ res.orthogonal, 0, atol=tol * np.sqrt(G.shape[0]))
