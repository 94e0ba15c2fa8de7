"""Scores of predictions against targets: the one place MAE/RMSE/R² are computed."""

from __future__ import annotations

import numpy as np


def regression_metrics(y_true, y_pred) -> dict:
    """MAE, RMSE, R² and max |error| of one fold (finite pairs only)."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if y.shape != p.shape:
        raise ValueError(f"y_true {y.shape} and y_pred {p.shape} differ in shape")
    ok = np.isfinite(y) & np.isfinite(p)
    if not ok.any():
        raise ValueError("no finite (target, prediction) pairs to score")
    y, p = y[ok], p[ok]
    err = p - y
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((err**2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": r2,
        "max_error": float(np.abs(err).max()),
        "n": int(ok.sum()),
        "n_nonfinite": int((~ok).sum()),
    }
