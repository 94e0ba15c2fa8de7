"""Cold start, guarded by structure, not by time (scripts/bench_coldstart.py measures it):
a fresh process predicts a formula with the shipped model from a copy of the package that
sees no cache, no data folder, no ../shared mirror and no network, and never imports pandas,
pymatgen, sympy or torch._dynamo on the way (pymatgen only where a structure is given)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "matmtl"
HEAVY = ("pandas", "pymatgen", "sympy", "torch._dynamo", "matminer", "rich")

PROBE = """
import json, socket, sys

def no_network(*args, **kwargs):
    raise OSError("network access in a cold-start prediction")

socket.socket.connect = socket.create_connection = socket.getaddrinfo = no_network

import matmtl

p = matmtl.predict("GaN")
loaded = sorted({h for m in sys.modules for h in HEAVY if m == h or m.startswith(h + ".")})
from matmtl.data.sources import mirror_dirs  # imports pandas: after the check

out = {"gap": p.gap_expt, "formula": p.formula, "loaded": loaded, "mirrors": [str(d) for d in mirror_dirs()]}
if STRUCTURE:
    from pymatgen.core import Lattice, Structure

    s = Structure.from_spacegroup("F-43m", Lattice.cubic(5.653), ["Ga", "As"], [[0, 0, 0], [0.25] * 3])
    out["structure_spg"] = matmtl.predict(s).spg_num
    out["loaded"] = sorted({h for m in sys.modules for h in HEAVY if m == h or m.startswith(h + ".")})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def isolated(tmp_path_factory):
    """A copy of the package in a folder with nothing beside it, an empty cache and data folder."""
    root = tmp_path_factory.mktemp("coldstart")
    shutil.copytree(PACKAGE, root / "site" / "matmtl", ignore=shutil.ignore_patterns("__pycache__"))
    for sub in ("cache", "data", "cwd"):
        (root / sub).mkdir()
    return root


def _run(root: Path, structure: bool) -> dict:
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(root / "site"),
        "MATMTL_CACHE_DIR": str(root / "cache"),
        "MATMTL_DATA_DIR": str(root / "data"),
        "OMP_NUM_THREADS": "1",
    }
    code = f"HEAVY = {HEAVY!r}\nSTRUCTURE = {structure!r}\n{PROBE}"
    out = subprocess.run([sys.executable, "-c", code], cwd=root / "cwd", env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_formula_predicts_offline_from_a_bare_install_without_heavy_imports(isolated):
    got = _run(isolated, structure=False)
    assert got["formula"] == "GaN" and 2.0 < got["gap"] < 5.0  # the shipped model answered
    assert got["mirrors"] == []  # no ../shared/data beside this copy
    assert got["loaded"] == [], f"a formula prediction imported {got['loaded']}"
    assert not any((isolated / "cache").iterdir())  # nothing written to the cache either


def test_a_structure_predicts_from_a_bare_install_without_dynamo(isolated):
    got = _run(isolated, structure=True)
    assert got["structure_spg"] == 216
    assert "torch._dynamo" not in got["loaded"] and "sympy" not in got["loaded"]
