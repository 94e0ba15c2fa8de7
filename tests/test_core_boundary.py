"""The boundary of the Rust extension matmtl._core: its type stubs, the exceptions
it raises, and the GIL."""

import ast
import inspect
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import matmtl
from matmtl import _core
from matmtl import geometry as geo
from matmtl.errors import GeometryInputError, MatmtlError

STUB = Path(matmtl.__file__).with_name("_core.pyi")


# --- the stub ------------------------------------------------------------------------


def stub_module() -> ast.Module:
    return ast.parse(STUB.read_text())


def stub_parameters(node: ast.FunctionDef) -> list[tuple]:
    """(name, kind, default) of each parameter, as inspect.signature gives them."""
    P = inspect.Parameter
    args = node.args
    positional = [(a, P.POSITIONAL_ONLY) for a in args.posonlyargs] + [(a, P.POSITIONAL_OR_KEYWORD) for a in args.args]
    defaults = [P.empty] * (len(positional) - len(args.defaults)) + [ast.literal_eval(d) for d in args.defaults]
    params = [(a.arg, kind, default) for (a, kind), default in zip(positional, defaults, strict=True)]
    if args.vararg:
        params.append((args.vararg.arg, P.VAR_POSITIONAL, P.empty))
    for a, default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        params.append((a.arg, P.KEYWORD_ONLY, P.empty if default is None else ast.literal_eval(default)))
    if args.kwarg:
        params.append((args.kwarg.arg, P.VAR_KEYWORD, P.empty))
    return params


def test_stub_functions_match_the_extension():
    stubbed = {node.name: node for node in stub_module().body if isinstance(node, ast.FunctionDef)}
    public = {name for name in dir(_core) if not name.startswith("_") and callable(getattr(_core, name))}
    assert set(stubbed) == public
    for name, node in stubbed.items():
        signature = inspect.signature(getattr(_core, name))  # pyo3's __text_signature__
        real = [(p.name, p.kind, p.default) for p in signature.parameters.values()]
        assert stub_parameters(node) == real, name


def test_stub_attributes_exist():
    annotated = [node.target.id for node in stub_module().body if isinstance(node, ast.AnnAssign)]
    assert annotated == ["__version__"]
    assert isinstance(_core.__version__, str)


# --- exceptions ----------------------------------------------------------------------


def test_bad_input_is_a_geometry_input_error():
    """Bad values and shapes raise GeometryInputError (a ValueError, like every
    matmtl input error); wrong dtypes raise TypeError."""
    assert issubclass(GeometryInputError, MatmtlError) and issubclass(GeometryInputError, ValueError)
    g = np.ones(4)
    refusals = [
        lambda: _core.subspace_geometry([np.ones((10, 3)), np.ones((9, 3))]),
        lambda: _core.pcgrad([g, g], [[1], [1]]),
        lambda: _core.pcgrad([np.full(4, 1e200), g], [[1], [0]]),
        lambda: _core.pcgrad([g, np.array([1.0, np.nan, 0, 0])], [[1], [0]]),
        lambda: _core.pcgrad([g, g], [[1], [0]], True, (np.zeros((2, 3)), np.zeros(4))),
        lambda: _core.project_halfspace(g, np.ones(3)),
        lambda: _core.project_onto_span(g, np.ones((5, 2))),
        lambda: geo.subspace_geometry([np.ones((10, 3))], backend="nope"),
    ]
    for backend in ("rust", "torch"):
        refusals += [
            lambda b=backend: geo.pcgrad([g, np.array([1.0, np.inf, 0, 0])], backend=b),
            lambda b=backend: geo.subspace_geometry([np.ones((10, 3)), np.ones((10, 2))], backend=b),
            lambda b=backend: geo.project_onto_span(g, np.ones((5, 2)), backend=b),
        ]
    for refuse in refusals:
        with pytest.raises(GeometryInputError):
            refuse()
    for backend in ("rust", "torch"):
        with pytest.raises(GeometryInputError, match="task 0 is too large"):
            geo.pcgrad([np.full(4, 1e200), g], backend=backend)
        with pytest.raises(TypeError, match="int32"):
            geo.pcgrad([g.astype(np.int32)] * 2, backend=backend)
    with pytest.raises(TypeError, match="float16"):
        _core.project_halfspace(g.astype(np.float16), g.astype(np.float16))


@pytest.mark.parametrize("backend", ["rust", "torch"])
def test_both_backends_refuse_alike(backend):
    """The torch backend checks its inputs as the core does, with the same words."""
    cases = [
        ([np.ones((10, 3)), np.ones((11, 3))], "mismatched d; all tasks need the same shape"),
        ([np.ones((10, 3)), np.ones((10, 2))], "mismatched k"),
        ([np.ones((10, 0))], r"task 0 is empty \(shape \(10, 0\)\)"),
        ([np.ones(10)], r"task 0 must be 2-D, got shape \(10,\)"),
    ]
    for tasks, match in cases:
        with pytest.raises(GeometryInputError, match=match):
            geo.subspace_geometry(tasks, backend=backend)
    G = np.ones((2, 5), np.float32)
    with pytest.raises(GeometryInputError, match=r"out total has shape \(4,\), expected \(5,\)"):
        geo.pcgrad(G, return_projected=False, out=(None, np.zeros(4, np.float32)), backend=backend)
    with pytest.raises(TypeError, match="out total has dtype float64; the gradients are float32"):
        geo.pcgrad(G, return_projected=False, out=(None, np.zeros(5)), backend=backend)
    readonly = np.zeros(5, np.float32)
    readonly.flags.writeable = False
    with pytest.raises(GeometryInputError, match="out total is read-only"):
        geo.pcgrad(G, return_projected=False, out=(None, readonly), backend=backend)
    with pytest.raises(GeometryInputError, match="g1 \\(3,\\) and g2 \\(4,\\) must have the same shape"):
        geo.project_halfspace(np.ones(3), np.ones(4), backend=backend)


def test_torch_bfloat16_is_named():
    x = torch.ones(10, 3, dtype=torch.bfloat16)
    for backend in ("rust", "torch"):
        with pytest.raises(TypeError, match="task 0 has dtype bfloat16"):
            geo.subspace_geometry([x], backend=backend)


# --- the GIL -------------------------------------------------------------------------


def test_core_releases_the_gil():
    """Another Python thread runs while the Rust core computes.

    With the switch interval raised out of reach, the interpreter never makes a
    thread hand over the GIL; a thread waiting for it runs only when the holder
    releases it itself. The main thread marks the time it spends inside
    `_core.subspace_geometry`; the watcher can only ever find that mark set if the
    core released the GIL while computing. No timing is measured: the loop ends
    as soon as the watcher has seen it, and fails after 200 calls if it never does.
    """
    rng = np.random.default_rng(16)
    tasks = [rng.standard_normal((400_000, 16), dtype=np.float32) for _ in range(2)]
    state = {"in_call": False}
    seen, stop = threading.Event(), threading.Event()

    def watch():
        while not stop.is_set():
            if state["in_call"]:
                seen.set()
                return
            time.sleep(5e-4)  # lets the main thread take the GIL back

    interval = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    watcher = threading.Thread(target=watch)
    try:
        watcher.start()
        for _ in range(200):
            state["in_call"] = True
            _core.subspace_geometry(tasks)
            state["in_call"] = False
            if seen.is_set():
                break
    finally:
        stop.set()
        watcher.join()
        sys.setswitchinterval(interval)
    assert seen.is_set(), "no other thread ran while the Rust core computed: the GIL was held"
