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

Several workers may share one work dir (``torchrun`` ranks, or independent processes):
a cell is computed by the worker that claims it (``fold<k>-frac<f>.claim`` beside its
record, see :mod:`~matmtl.eval.claims`); the others skip it, or wait for its record when
they need it.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..io import atomic_write_json, sha256_of
from .claims import Claims

T = TypeVar("T")


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
        return self.root / "cells" / key.task / key.variant / fp / f"fold{key.fold}-frac{frac_label(key.fraction)}.json"

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


class Cells:
    """Runs cells through a :class:`CellStore`: a finished cell is read back, a missing
    one is claimed and computed, stamped with its provenance (command, hardware, seconds,
    load average) and stored atomically, or, while another worker holds it, skipped
    (inside :meth:`deferring`: :class:`~matmtl.eval.claims.Busy` is raised) or waited
    for. Each cell is reported on ``console``."""

    def __init__(self, store: CellStore, console, *, command: str, hardware: str, claims: Claims | None = None):
        self.store, self.console = store, console
        self.command, self.hardware = command, hardware
        self.claims = claims or Claims(console=console)
        self.memo: dict[tuple[CellKey, str], dict] = {}
        self.n = 0
        self.defer = False

    @contextmanager
    def deferring(self, on: bool = True) -> Iterator[None]:
        """Inside: a cell (or job) another live worker holds raises Busy instead of being waited for."""
        before, self.defer = self.defer, on
        try:
            yield
        finally:
            self.defer = before

    def _tag(self, key: CellKey) -> str:
        self.n += 1
        return f"[cyan][{self.n}][/] {key.label()}"

    def job(self, what: str, target: Path, done: Callable[[], T | None], compute: Callable[[], T]) -> T:
        """Something every worker needs and one makes (the pretraining run, the scratch
        init): ``done()``, or made here under a claim on ``target``, or waited for."""

        def make() -> T:
            with self.deferring(False):  # what it needs in turn is waited for, never skipped
                return compute()

        return self.claims.obtain(what, target, done, make, defer=self.defer)[0]

    def run(
        self, key: CellKey, fp: str, compute: Callable[[], dict], needs: Callable[[], object] | None = None
    ) -> dict:
        """The record of cell ``key`` under fingerprint ``fp``. ``needs()``: what the
        computation needs (other cells, the pretraining run), got before the claim."""
        if (key, fp) in self.memo:
            return self.memo[(key, fp)]
        rec = self.store.get(key, fp)
        if rec is not None:
            self.console.print(f"{self._tag(key)}: [dim]cached[/] {brief(rec)}")
        else:
            if needs is not None:
                needs()
            tags: list[str] = []

            def fresh() -> dict:
                tags.append(self._tag(key))
                self.console.print(f"{tags[0]}: running ...")
                t0 = time.time()
                with self.deferring(False):
                    rec = compute()
                rec.update(
                    seconds=round(time.time() - t0, 1),
                    command=self.command,
                    hardware=self.hardware,
                    finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
                    load_average=load_average(),
                )
                return self.store.put(key, fp, rec)

            rec, how = self.claims.obtain(
                key.label(), self.store.path(key, fp), lambda: self.store.get(key, fp), fresh, defer=self.defer
            )
            if how == "computed":
                self.console.print(f"{tags[0]}: [green]done[/] in {rec['seconds']:.0f}s {brief(rec)}")
            else:
                by = f"done by {how}" if how else "cached"
                self.console.print(f"{self._tag(key)}: [dim]{by}[/] {brief(rec)}")
        self.memo[(key, fp)] = rec
        return rec

    def compute_seconds(self) -> float:
        """Compute time of every cell this evaluation used (cached ones included)."""
        return round(sum(r.get("seconds") or 0 for r in self.memo.values()), 1)


def brief(rec: dict) -> str:
    """A cell's headline number for the log."""
    m = rec.get("metrics") or {}
    if "mae" in m:
        return f"MAE {m['mae']:.4f}"
    if "before" in rec:
        return f"e_form MAE {rec['before']:.4f}"
    return ", ".join(f"{t} MAE {v['mae']:.4f}" for t, v in rec.items() if isinstance(v, dict) and "mae" in v)


def prepare_run_dir(run_dir: Path) -> str:
    """The state of a cell's training run folder: 'done' (finished checkpoint), 'resume'
    (a resumable state) or 'new' (absent; a folder that can be neither finished nor
    resumed is moved aside, never deleted)."""
    if (run_dir / "model.json").is_file():
        return "done"
    if (run_dir / "config.json").is_file() and (run_dir / "state" / "state.json").is_file():
        return "resume"
    if run_dir.exists() and any(run_dir.iterdir()):
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}"))
    return "new"


def load_average() -> list[float] | None:
    """1/5/15-minute load averages (the machine may be shared: timings depend on it)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):  # pragma: no cover
        return None


def hardware_string(device: str) -> str:
    """CPU model and its torch kernels, cores available, memory, GPU (when used), torch and OS."""
    from ..checkpoints import machine

    m = machine()
    cpu = f"{m['cpu']} ({m['cpu_capability']} kernels)"
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count()
    try:
        mem = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        mem = ""
    import torch

    gpu = f"GPU {torch.cuda.get_device_name(0)}" if device == "cuda" else "no GPU (CPU only)"
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {cores} cores available{mem}; {gpu}; torch {torch.__version__}; {system}"
