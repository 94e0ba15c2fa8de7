"""Every module of matmtl imports on its own, whichever is imported first: a circular import
between packages (say matmtl.eval.cli -> matmtl.cli -> matmtl.eval.cli) breaks only the
processes that happen to import one side first, such as a worker that starts with
``from matmtl.eval import baseline``."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import matmtl

# run in a fresh interpreter: each module is imported after every matmtl module is dropped from
# sys.modules (third-party packages such as torch stay loaded, so this is quick); the compiled
# extension stays, as a pyo3 module initialises once per process
_CHILD = r"""
import importlib, json, sys, traceback
failures = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "matmtl" or m.startswith("matmtl.")]:
        if loaded != "matmtl._core":
            del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failures[name] = traceback.format_exc(limit=-3)
print(json.dumps(failures))
"""


def _modules() -> list[str]:
    root = Path(matmtl.__file__).parent
    names = ["matmtl"] + [m.name for m in pkgutil.walk_packages([str(root)], prefix="matmtl.")]
    return [n for n in names if n != "matmtl._core" and not n.endswith("__main__")]


def test_every_module_imports_first():
    names = _modules()
    assert {"matmtl.cli", "matmtl.eval", "matmtl.eval.cli", "matmtl.options", "matmtl.train"} <= set(names)
    r = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(names)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    failures = json.loads(r.stdout.strip().splitlines()[-1])
    assert failures == {}, "\n".join(f"{k}:\n{v}" for k, v in failures.items())
