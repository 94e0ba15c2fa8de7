"""The Matbench v0.1 protocol as the harness applies it.

* **Folds.** The 5 official folds of each task: ``KFold(5, shuffle=True,
  random_state=18012019)`` over the dataset's original row order
  (:meth:`matmtl.data.Dataset.folds`). :func:`check_official_folds` compares them
  with the official test ids of the matbench v0.1 results file in the offline mirror.
* **Training rows.** Everything a model sees comes from the fold's training rows. The
  data-efficiency subsets are seeded subsamples of the training fold, drawn exactly as
  ``finetune(max_train_rows=N)`` draws them (:func:`matmtl.train.data.split_rows`,
  rng ``[seed, 17]``), so the baseline and the neural variants at one fraction train on
  the same rows.
* **Selection.** Every fine-tuning run holds out a seeded share of its own training
  rows (``TrainConfig.val_fraction``) as validation rows. They choose the kept epoch
  (early stopping with ``patience``), the hurdle head's metal cut, the uncertainty
  calibration and, per fold, the anchor source of the PCGrad and data-efficiency runs
  (``--anchor validation``: the lower validation MAE of the replay and distill runs).
  The test fold is predicted once, at the end; nothing is fitted on it. All other
  settings are fixed defaults decided before any evaluation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.folds import N_FOLDS, official_test_ids

PROTOCOL = "matbench_v0.1"
MATBENCH_TASK = {"expt_gap": "matbench_expt_gap", "mp": "matbench_mp_e_form", "mp_gap": "matbench_mp_gap"}
DUMMY_RESULTS = "matbench/benchmarks/matbench_v0.1_dummy/results.json.gz"


def fold_rows(ds, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(train positions, test positions) into ``ds.frame`` of official fold ``fold``."""
    if not 0 <= int(fold) < N_FOLDS:
        raise ValueError(f"fold must be 0..4, got {fold}")
    return ds.folds()[int(fold)]


def n_train_rows(ds, fold: int, fraction: float, cap: int | None = None) -> int | None:
    """The ``max_train_rows`` for a fraction of the training fold (None = all rows).
    ``cap`` (quick runs) bounds the full training set before the fraction applies."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fractions must be in (0, 1], got {fraction}")
    n = len(fold_rows(ds, fold)[0])
    full = min(n, cap) if cap else n
    rows = max(8, int(round(fraction * full)))
    return None if rows >= n else rows


def train_test(
    ds, fold: int, fraction: float = 1.0, seed: int = 0, cap: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The training rows at ``fraction`` of fold ``fold`` and the full test fold.

    The draw is the one ``finetune(max_train_rows=N)`` makes
    (:func:`matmtl.train.data.split_rows`: ``default_rng([seed, 17]).choice(train, N)``,
    sorted; a test checks the two agree), restated here so that the fold checks and
    the baseline do not need the training package."""
    train, test = fold_rows(ds, fold)
    n = n_train_rows(ds, fold, fraction, cap)
    if n is not None and n < len(train):
        rng = np.random.default_rng([seed, 17])
        train = np.sort(rng.choice(train, n, replace=False))
    return np.asarray(train), np.asarray(test)


def official_results_file(data_dir: str | Path | None = None) -> Path | None:
    """matbench v0.1's dummy results file (the official test ids) in the data folder
    (``data_dir``, $MATMTL_DATA_DIR, else the offline mirror), or None."""
    import os

    from ..data.sources import mirror_dirs

    chosen = data_dir or os.environ.get("MATMTL_DATA_DIR")
    roots = [Path(chosen).expanduser()] if chosen else mirror_dirs()
    for root in roots:
        p = Path(root) / DUMMY_RESULTS
        if p.is_file():
            return p
    return None


def check_official_folds(ds, task: str, results_file: str | Path | None = None, data_dir=None) -> dict:
    """Whether ``ds.folds()`` holds exactly matbench v0.1's official test ids, fold by
    fold. Returns ``{"checked": bool, "match": bool|None, "file": str|None, "sizes": [...]}``."""
    path = Path(results_file) if results_file else official_results_file(data_dir)
    ids = ds.frame["id"].to_numpy()
    sizes = [len(te) for _, te in ds.folds()]
    if path is None or not path.is_file():
        return {"checked": False, "match": None, "file": None, "sizes": sizes}
    official = official_test_ids(path, MATBENCH_TASK.get(task, task))
    match = all(set(ids[te].tolist()) == off for (_, te), off in zip(ds.folds(), official, strict=True))
    return {"checked": True, "match": bool(match), "file": str(path), "sizes": sizes}
