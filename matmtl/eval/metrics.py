"""Scores of one fold and their aggregation over folds (the matbench conventions).

* per fold: MAE, RMSE, R² (1 - SS_res/SS_tot, as sklearn's ``r2_score``) and max error,
  by :func:`matmtl.metrics.regression_metrics` (re-exported here);
* over folds: ``mae_mean`` and ``mae_std`` of the per-fold MAEs, with the population
  standard deviation (``np.std``, ddof=0) as matbench's ``scores`` use it; ``rmse`` and
  ``r2`` are the means of the per-fold values (the per-fold lists are kept too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..metrics import regression_metrics

__all__ = ["aggregate_folds", "mean_std", "regression_metrics"]


def aggregate_folds(per_fold: Sequence[dict | None], folds: Sequence[int] | None = None) -> dict:
    """Mean ± std over folds from per-fold metric dicts (None = fold not run yet).

    Returns ``mae_mean``, ``mae_std``, ``fold_mae`` (one entry per fold, None where
    missing), ``rmse``, ``r2`` (means over folds), ``fold_rmse``, ``fold_r2`` and
    ``folds_done``. The summary numbers use the finished folds only.
    """
    folds = list(folds) if folds is not None else list(range(len(per_fold)))
    done = [m for m in per_fold if m is not None]
    out = {
        "fold_mae": [None if m is None else m["mae"] for m in per_fold],
        "fold_rmse": [None if m is None else m["rmse"] for m in per_fold],
        "fold_r2": [None if m is None else m["r2"] for m in per_fold],
        "folds": folds,
        "folds_done": [f for f, m in zip(folds, per_fold, strict=True) if m is not None],
    }
    if not done:
        out.update(mae_mean=None, mae_std=None, rmse=None, r2=None)
        return out
    mae = np.array([m["mae"] for m in done])
    out.update(
        mae_mean=float(mae.mean()),
        mae_std=float(mae.std()),  # ddof=0, as matbench
        rmse=float(np.mean([m["rmse"] for m in done])),
        r2=_nanmean([m["r2"] for m in done]),
    )
    return out


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None, None
    return float(np.mean(v)), float(np.std(v))


def _nanmean(values) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None
