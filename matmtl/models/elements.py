"""Element embeddings from data a package ships (matminer's matscholar_els.json,
200-d word embeddings of the elements H..Lr) and space-group -> crystal-system tokens."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..data.periodic import MAX_Z  # matscholar covers H (1) .. Lr (103); 0 is padding

EMBEDDING_NAME = "matscholar_els"
#: embedding name -> width of its vectors (what a checkpoint's shapes are checked against)
EMBEDDING_DIMS = {EMBEDDING_NAME: 200}
CRYSTAL_SYSTEMS = ("unknown", "triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic")


def _matminer_file(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec("matminer")
    if spec is None or not spec.submodule_search_locations:
        from ..errors import MatmtlError

        raise MatmtlError("matminer is not installed; it ships the element embeddings matmtl uses")
    return Path(list(spec.submodule_search_locations)[0]) / "utils" / "data_files" / name


@lru_cache(maxsize=None)
def element_table(name: str = EMBEDDING_NAME) -> np.ndarray:
    """(MAX_Z + 1, dim) float32 table; row 0 (padding) is zeros. Each column is
    standardised over the elements so the scale suits a linear projection."""
    embedding_dim(name)
    from pymatgen.core import Element

    raw = json.loads(_matminer_file("matscholar_els.json").read_text())
    dim = len(next(iter(raw.values())))
    table = np.zeros((MAX_Z + 1, dim), dtype=np.float32)
    for sym, vec in raw.items():
        z = Element(sym).Z
        if z <= MAX_Z:
            table[z] = vec
    body = table[1:]
    table[1:] = (body - body.mean(0)) / (body.std(0) + 1e-6)
    return table


def embedding_dim(name: str) -> int:
    """The width of the element embedding ``name``; ValueError for an unknown name."""
    if name not in EMBEDDING_DIMS:
        raise ValueError(f"unknown element embedding {name!r}; available: {', '.join(map(repr, EMBEDDING_DIMS))}")
    return EMBEDDING_DIMS[name]


def crystal_system_of_spg(spg: np.ndarray) -> np.ndarray:
    """Crystal-system token (0 unknown, 1 triclinic .. 7 cubic) of space-group numbers (0 = unknown)."""
    spg = np.asarray(spg)
    edges = np.array([0, 2, 15, 74, 142, 167, 194, 230])  # last spg of each system
    out = np.searchsorted(edges, spg, side="left")
    return np.where(spg <= 0, 0, out).astype(np.int64)
