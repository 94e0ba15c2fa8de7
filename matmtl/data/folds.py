"""Matbench v0.1's official 5-fold splits: KFold(n_splits=5, shuffle=True,
random_state=18012019) over each dataset's original row order."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

MATBENCH_SEED = 18012019
N_FOLDS = 5


def matbench_folds(n_rows: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train_rows, test_rows) for each of the 5 official folds of an n_rows dataset."""
    from sklearn.model_selection import KFold  # (not at import: predicting never needs it)

    if n_rows < N_FOLDS:
        raise ValueError(f"need at least {N_FOLDS} rows for 5 folds, got {n_rows}")
    kf = KFold(n_splits=N_FOLDS, shuffle=True, random_state=MATBENCH_SEED)
    return [(train, test) for train, test in kf.split(np.arange(n_rows))]


def official_test_ids(results_json_gz: str | Path, task: str) -> list[set[str]]:
    """The test mbids of each fold from a matbench results file (e.g. the v0.1 dummy
    benchmark's results.json.gz), used to check :func:`matbench_folds`."""
    with gzip.open(results_json_gz, "rt") as fh:
        results = json.load(fh)
    folds = results["tasks"][task]["results"]
    return [set(folds[f"fold_{k}"]["data"]) for k in range(N_FOLDS)]
