"""The per-cell result cache that makes a long evaluation resumable.

A *cell* is one (task, variant, fold, fraction) evaluation. Its record is one small
JSON file, written atomically when the cell finishes, under

    <work_dir>/cells/<task>/<variant>/<fingerprint>/fold<k>-frac<f>.json

The fingerprint hashes every setting that changes the cell's numbers (training
config, checkpoint identity, model, seeds, quick caps, ...), so a cell is reused only
by an evaluation with the same settings; changing a setting runs the cell afresh
(old records stay, nothing is overwritten). A killed evaluation loses at most the
cells in progress, and those continue from their last saved epoch (the training run
folders under ``<work_dir>/runs`` are resumable too).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..io import atomic_write_json, sha256_of


def fingerprint(settings: dict) -> str:
    """A short stable hash of a JSON-able settings dict."""
    return sha256_of(json.dumps(settings, sort_keys=True, default=str))[:16]


def frac_label(fraction: float) -> str:
    return f"{float(fraction):.4f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class CellKey:
    task: str
    variant: str
    fold: int
    fraction: float = 1.0

    def label(self) -> str:
        f = "" if self.fraction == 1.0 else f" {self.fraction:.0%}"
        return f"{self.task}/{self.variant} fold {self.fold}{f}"

    def to_dict(self) -> dict:
        return {"task": self.task, "variant": self.variant, "fold": self.fold, "fraction": self.fraction}


class CellStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: CellKey, fp: str) -> Path:
        return (self.root / "cells" / key.task / key.variant / fp /
                f"fold{key.fold}-frac{frac_label(key.fraction)}.json")

    def get(self, key: CellKey, fp: str) -> dict | None:
        """The finished record of a cell, or None (missing, unfinished or unreadable)."""
        p = self.path(key, fp)
        if not p.is_file():
            return None
        try:
            rec = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # a torn file cannot happen with atomic writes, but never trust it
        if rec.get("status") != "done" or rec.get("fingerprint") != fp:
            return None
        return rec

    def put(self, key: CellKey, fp: str, record: dict) -> dict:
        record = {**record, "key": key.to_dict(), "fingerprint": fp, "status": "done"}
        atomic_write_json(self.path(key, fp), record)
        return record
