"""Run folders: one per training run, never overwritten."""
from __future__ import annotations

import time
from pathlib import Path

from ..errors import MatmtlError
from ..io import cache_dir

RUN_KINDS = ("pretrain", "finetune")


def runs_root() -> Path:
    return cache_dir() / "runs"


def new_run_dir(kind: str, out: str | Path | None = None) -> Path:
    """A fresh, empty run folder. ``out`` must not exist or be an empty folder: a new run
    never writes into an existing run. Default: ``<cache>/runs/<kind>-<timestamp>``."""
    if out is not None:
        out = Path(out).expanduser()
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise MatmtlError(f"{out} already exists and is not empty: a new run never overwrites a run folder "
                              "(choose another --out, or add --resume to continue that run)")
        out.mkdir(parents=True, exist_ok=True)
        return out
    root = runs_root()
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = root / (f"{kind}-{stamp}" + (f"-{i + 1}" if i else ""))
        try:
            path.mkdir(exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise MatmtlError(f"could not create a new run folder under {root}")


def list_runs(kind: str, complete: bool = True) -> list[Path]:
    """Run folders of a kind under the user cache, oldest first. ``complete``: only
    those with a final checkpoint (model.json); else only unfinished ones."""
    root = runs_root()
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(f"{kind}-") and (p / "config.json").exists():
            if (p / "model.json").exists() == complete:
                out.append(p)
    return sorted(out, key=lambda p: ((p / "config.json").stat().st_mtime, p.name))


def latest_run(kind: str, complete: bool = True) -> Path | None:
    runs = list_runs(kind, complete)
    return runs[-1] if runs else None
