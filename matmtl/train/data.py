"""From matmtl.data datasets to training arrays (TaskData) with matbench folds."""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np

from ..config import DFT_TASKS
from ..data import DataWarning, Featurizer, load_dataset
from ..data.composition import composition_keys
from ..errors import DataError, MatmtlError
from .engine import TaskData

# hurdle heads for band gaps (>= 0 with many exact zeros), regression otherwise
TASK_KIND = {"e_form": "regression", "gap_pbe": "hurdle", "gap_oqmd": "hurdle", "gap_expt": "hurdle"}


def task_unit(task: str) -> str:
    """The unit of a task's target, from the dataset registry."""
    from ..data.registry import REGISTRY

    for spec in REGISTRY.values():
        for t in spec.targets:
            if t.name == task:
                return t.unit
    raise MatmtlError(f"no registered dataset has the target {task!r}")


@lru_cache(maxsize=8)
def _load(name: str, data_dir: str | None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return load_dataset(name, data_dir)


def split_rows(
    ds, holdout_fold: int | None, max_rows: int | None, seed: int, shrink_test: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(train positions, held-out positions) into ``ds.frame``; matbench's official fold
    when ``holdout_fold`` is given. ``max_rows`` subsamples the training rows (and the
    held-out rows to a quarter of it, unless ``shrink_test`` is False) for quick runs."""
    n = len(ds)
    if holdout_fold is None:
        train, test = np.arange(n), np.arange(0)
    else:
        train, test = ds.folds()[holdout_fold]
    if max_rows is not None and max_rows < len(train):
        rng = np.random.default_rng([seed, 17])
        train = np.sort(rng.choice(train, max_rows, replace=False))
        if shrink_test and len(test) > max(64, max_rows // 4):
            test = np.sort(rng.choice(test, max(64, max_rows // 4), replace=False))
    return np.asarray(train), np.asarray(test)


def empty(tasks) -> TaskData:
    """No rows (with a target column per task)."""
    return TaskData(
        np.zeros((0, 10), np.int64),
        np.zeros((0, 10), np.float32),
        np.zeros(0, np.int64),
        {t: np.zeros(0, np.float32) for t in tasks},
    )


def to_taskdata(ds, pos: np.ndarray, columns: dict[str, str], featurizer: Featurizer | None = None) -> TaskData:
    """Featurize rows ``pos`` of ``ds``; ``columns`` maps task name -> target column."""
    if len(pos) == 0:
        return empty(columns)
    sub = ds.subset(pos)
    f = sub.features(featurizer or Featurizer())
    return TaskData(f.z, f.frac, f.spg, {t: sub.target(c).astype(np.float32) for t, c in columns.items()})


def concat(parts: list[TaskData], tasks: list[str]) -> TaskData:
    """Union of row sets; a task a part lacks is NaN (masked in the loss)."""
    parts = [p for p in parts if len(p)]
    if not parts:  # e.g. no held-out rows at all
        return empty(tasks)
    return TaskData(
        np.concatenate([p.z for p in parts]),
        np.concatenate([p.frac for p in parts]),
        np.concatenate([p.spg for p in parts]),
        {t: np.concatenate([p.targets.get(t, np.full(len(p), np.nan, np.float32)) for p in parts]) for t in tasks},
    )


def dft_split(
    tasks: list[str], holdout_fold: int | None, max_rows: int | None, seed: int, data_dir: str | None = None
) -> tuple[TaskData, TaskData, dict]:
    """Training and held-out rows for DFT tasks: the union of each task's dataset (masked
    losses: a row carries only its own dataset's label). Each dataset is split by its
    own official matbench fold. A dataset without official folds (OQMD gaps) holds out no
    rows of its own; with a held-out fold, its rows whose composition another task holds
    out are left out of training (so the DFT figures of that fold stay unseen)."""
    for t in tasks:
        if t not in DFT_TASKS:
            raise MatmtlError(f"unknown pretraining task {t!r}; available: {sorted(DFT_TASKS)}")
    loaded = {t: _load(DFT_TASKS[t][0], data_dir) for t in tasks}
    keys_needed = holdout_fold is not None and not all(ds.spec.official_folds for ds in loaded.values())
    trains, tests, info, held_out = {}, {}, {}, set()
    for t in sorted(tasks, key=lambda t: not loaded[t].spec.official_folds):  # official folds first
        ds, col = loaded[t], DFT_TASKS[t][1]
        extra = {}
        if ds.spec.official_folds:
            tr, te = split_rows(ds, holdout_fold, max_rows, seed)
            trains[t], tests[t] = to_taskdata(ds, tr, {t: col}), to_taskdata(ds, te, {t: col})
            if keys_needed:  # (all of the fold, also where max_rows shrinks the held-out rows)
                fold = to_taskdata(ds, ds.folds()[holdout_fold][1], {t: col})
                held_out.update(composition_keys(fold.z, fold.frac))
        else:  # no held-out rows of its own; the compositions held out elsewhere stay unseen
            tr, _ = split_rows(ds, None, max_rows, seed)
            rows = to_taskdata(ds, tr, {t: col})
            keep = np.array([k not in held_out for k in composition_keys(rows.z, rows.frac)], bool)
            trains[t], tests[t] = rows.subset(np.flatnonzero(keep)), empty([t])
            extra = {"left_out_as_held_out_elsewhere": int((~keep).sum())}
        info[t] = {
            "dataset": ds.name,
            "source": ds.source,
            "train_rows": int(len(trains[t])),
            "holdout_rows": int(len(tests[t])),
            **extra,
        }
    return (
        concat([trains[t] for t in tasks], tasks),
        concat([tests[t] for t in tasks], tasks),
        {t: info[t] for t in tasks},
    )


def split_validation(data: TaskData, fraction: float, seed: int) -> tuple[TaskData, TaskData]:
    """(training rows, validation rows): a seeded ``fraction`` of a run's own training
    rows, held out for best-epoch selection, the metal cut and the uncertainty
    calibration. Never the test rows."""
    keep, val = validation_positions(len(data), fraction, seed)
    return data.subset(keep), data.subset(val)


def validation_positions(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, validation) positions, each sorted, of :func:`split_validation` over n rows."""
    n_val = int(round(fraction * n))
    if n_val == 0 or n_val >= n:
        return np.arange(n), np.arange(0)
    order = np.random.default_rng([seed, 4242]).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _table_keys(formulas: list[str], usable: np.ndarray, source: str) -> tuple[list[tuple], np.ndarray]:
    """The composition key (:func:`composition_keys`) of each ``usable`` row of a raw
    table, and those rows' positions; rows whose formula does not read are dropped."""
    featurizer = Featurizer(cache=False)
    width = featurizer.max_elements
    z, frac = np.zeros((len(formulas), width), np.int64), np.zeros((len(formulas), width), np.float32)
    usable = usable.copy()
    for i in np.flatnonzero(usable):
        try:
            pairs, _ = featurizer.read(formulas[i], source)
        except DataError:
            usable[i] = False
            continue
        z[i, : len(pairs)] = [p[0] for p in pairs]
        frac[i, : len(pairs)] = [p[1] for p in pairs]
    rows = np.flatnonzero(usable)
    return composition_keys(z[rows], frac[rows]), rows


@lru_cache(maxsize=2)
def mp_ground_state_symmetry(data_dir: str | None = None) -> dict[tuple, int]:
    """Reduced composition -> space group of its Materials Project ground state (the
    polymorph with the lowest formation energy in matbench mp_e_form). Read straight from
    the table (seconds, not a full load): rows without a space group, a finite energy or
    a readable formula have no say."""
    from ..data.dataset import read_named

    raw = read_named("mp", data_dir)
    energy, spg = raw["e_form"].to_numpy(np.float32), raw["spg_num"].to_numpy(np.int64)
    usable = (spg > 0) & (spg <= 230) & np.isfinite(energy)
    keys, rows = _table_keys(raw["formula"].astype(str).tolist(), usable, "mp")
    best: dict[tuple, tuple[np.float32, int]] = {}
    for key, e, g in zip(keys, energy[rows].tolist(), spg[rows].tolist()):
        if key not in best or e < best[key][0]:
            best[key] = (e, g)
    return {k: g for k, (_, g) in best.items()}


@lru_cache(maxsize=2)
def mp_pbe_gaps(data_dir: str | None = None) -> dict[tuple, float]:
    """(reduced composition, space group) -> the PBE band gap (eV) of those Materials
    Project polymorphs in matbench mp_gap (the median where several share the space
    group; 0 is a metal in PBE). Rows without a finite, non-negative gap, a space group or
    a readable formula have no say."""
    from ..data.dataset import read_named

    raw = read_named("mp_gap", data_dir)
    gap, spg = raw["gap_pbe"].to_numpy(np.float64), raw["spg_num"].to_numpy(np.int64)
    usable = np.isfinite(gap) & (gap >= 0) & (spg > 0) & (spg <= 230)
    keys, rows = _table_keys(raw["formula"].astype(str).tolist(), usable, "mp_gap")
    groups: dict[tuple, list[float]] = {}
    for key, s, g in zip(keys, spg[rows].tolist(), gap[rows].tolist()):
        groups.setdefault((key, s), []).append(g)
    return {k: float(np.median(v)) for k, v in groups.items()}


def attach_symmetry(data: TaskData, lookup: dict[tuple, int]) -> tuple[TaskData, int]:
    """``data`` with each composition's MP ground-state space group where MP has the
    composition (others keep 0, "unknown"); and how many rows got one."""
    spg = np.array([lookup.get(k, 0) for k in composition_keys(data.z, data.frac)], dtype=np.int64)
    spg = np.where(data.spg > 0, data.spg, spg)  # a given structure's own symmetry wins
    return TaskData(data.z, data.frac, spg, data.targets, data.boot), int((spg > 0).sum())
