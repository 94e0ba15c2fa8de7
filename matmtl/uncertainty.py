"""Calibrated uncertainties from the ensemble spread.

Each task head is a small ensemble (bootstrapped members on one shared encoder).
The members' spread ranks errors, but because they share the encoder it is far
too small in absolute terms (typically a tenth of the real error). Following
Palmer et al., "Calibration after bootstrap for accurate uncertainty
quantification in regression models", npj Comput. Mater. 8, 115 (2022), a run
recalibrates it on its held-out rows:

    sigma = a * spread + b,   a, b >= 0,

with a and b fitted by maximising the Gaussian likelihood of the held-out
residuals. The stored record says how well that worked, measured out of sample
(2-fold cross-fitting over the held-out rows: fit on one half, score the other):
the share of residuals within 1 and 2 sigma (0.68 and 0.95 for a calibrated
Gaussian) and the rank correlation between the spread and the absolute error.
"""
from __future__ import annotations

import numpy as np

#: fewer held-out rows than this: no calibration (the spread is reported as is)
MIN_ROWS = 20


def fit(mean: np.ndarray, spread: np.ndarray, y: np.ndarray) -> dict | None:
    """The calibration record of one task from held-out predictions (ensemble
    ``mean`` and ``spread``) and labels ``y``; None if too few labelled rows."""
    mean, spread, y = (np.asarray(v, dtype=np.float64).ravel() for v in (mean, spread, y))
    ok = np.isfinite(mean) & np.isfinite(spread) & np.isfinite(y)
    if ok.sum() < MIN_ROWS:
        return None
    r, s = (y - mean)[ok], spread[ok]
    a, b = _fit_ab(r, s)
    halves = np.arange(len(r)) % 2 == 0
    sigma = np.empty_like(r)  # out-of-sample sigma for every row
    for part in (halves, ~halves):
        pa, pb = _fit_ab(r[~part], s[~part])
        sigma[part] = pa * s[part] + pb
    z = np.abs(r) / sigma
    from scipy.stats import spearmanr

    rho = spearmanr(s, np.abs(r)).statistic if np.ptp(s) > 0 else float("nan")
    return {
        "a": float(a), "b": float(b), "rows": int(len(r)),
        "coverage_1sigma": float(np.mean(z <= 1.0)), "coverage_2sigma": float(np.mean(z <= 2.0)),
        "spearman_spread_abs_error": float(rho), "mean_spread": float(s.mean()), "mean_sigma": float(sigma.mean()),
        "method": "sigma = a*spread + b, Gaussian NLL on held-out rows; coverage by 2-fold cross-fitting",
    }


def apply(spread: np.ndarray, record: dict | None) -> np.ndarray:
    """Calibrated sigma for raw ensemble spreads (the spread itself without a record)."""
    spread = np.asarray(spread, dtype=np.float64)
    if not record:
        return spread
    return record["a"] * spread + record["b"]


def _fit_ab(r: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """(a, b) >= 0 minimising the Gaussian NLL of residuals r with sigma = a s + b."""
    from scipy.optimize import minimize

    scale = float(np.sqrt(np.mean(r ** 2))) or 1.0
    floor = 1e-6 * scale  # b > 0 keeps sigma > 0 where the spread is 0

    def nll(p):
        sig = p[0] * s + p[1]
        return float(np.mean(np.log(sig) + 0.5 * (r / sig) ** 2))

    starts = [(0.0, scale), (scale / max(float(s.mean()), 1e-12), floor), (1.0, 0.5 * scale)]
    best = min((minimize(nll, x0, method="L-BFGS-B", bounds=[(0.0, None), (floor, None)]) for x0 in starts),
               key=lambda res: res.fun)
    return float(best.x[0]), float(best.x[1])
