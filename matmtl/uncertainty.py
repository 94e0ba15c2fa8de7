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
        "a": float(a),
        "b": float(b),
        "rows": int(len(r)),
        "coverage_1sigma": float(np.mean(z <= 1.0)),
        "coverage_2sigma": float(np.mean(z <= 2.0)),
        "spearman_spread_abs_error": float(rho) if np.isfinite(rho) else None,
        "mean_spread": float(s.mean()),
        "mean_sigma": float(sigma.mean()),
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

    scale = float(np.sqrt(np.mean(r**2))) or 1.0
    floor = 1e-6 * scale  # b > 0 keeps sigma > 0 where the spread is 0

    def nll(p):
        sig = p[0] * s + p[1]
        return float(np.mean(np.log(sig) + 0.5 * (r / sig) ** 2))

    starts = [(0.0, scale), (scale / max(float(s.mean()), 1e-12), floor), (1.0, 0.5 * scale)]
    best = min(
        (minimize(nll, x0, method="L-BFGS-B", bounds=[(0.0, None), (floor, None)]) for x0 in starts),
        key=lambda res: res.fun,
    )
    return float(best.x[0]), float(best.x[1])


# -- the training domain: how far an input is from what a head learned from ----------------
#
# A head's training compositions are stored in its checkpoint (model.json, "domain"), as
# fraction vectors. The distance between two compositions is the total-variation distance
# of their element fractions, d(a, b) = 1 - sum_e min(a_e, b_e): the share of atoms that
# would have to change element (0 = same composition, 1 = no element in common; NaCl to
# KCl is 0.5). An input is "far from the training data" when its nearest training
# composition is farther than the distance within which 99% of the training compositions
# have another training composition (the 99th percentile of their leave-one-out
# nearest-neighbour distances): farther from the data than almost every training point is.

DOMAIN_VERSION = 1
DOMAIN_PERCENTILE = 99.0
MAX_DOMAIN_ROWS = 20000  # more distinct compositions than this: a seeded sample is kept
DOMAIN_METRIC = "total-variation distance of element fractions, 1 - sum_e min(a_e, b_e)"
_ZMAX = 118


def training_domain(
    z: np.ndarray,
    frac: np.ndarray,
    spg: np.ndarray | None = None,
    *,
    percentile: float = DOMAIN_PERCENTILE,
    max_rows: int = MAX_DOMAIN_ROWS,
    seed: int = 0,
) -> dict:
    """The domain record of one head from its training inputs (featurized: atomic numbers
    ``z`` and fractions ``frac``, (n, E); space groups ``spg``, 0 = none): elements,
    distinct compositions, the share of rows that had a structure (symmetry), and the
    distance threshold (see the comment above). JSON-ready; store it in the checkpoint
    metadata as ``meta["domain"][task]``."""
    z = np.asarray(z, dtype=np.int64)
    frac = np.asarray(frac, dtype=np.float64)
    n = len(z)
    if n == 0:
        raise ValueError("training_domain: no training rows")
    key = np.concatenate([z.astype(np.float64), np.round(frac, 6) * (z > 0)], axis=1)
    uniq = np.unique(key, axis=0)
    sampled = len(uniq) > max_rows
    if sampled:
        uniq = uniq[np.sort(np.random.default_rng([seed, 7]).choice(len(uniq), max_rows, replace=False))]
    e = z.shape[1]
    uz, uf = uniq[:, :e].astype(np.int64), uniq[:, e:]
    mask = uz > 0
    dense = _dense(uz, uf)
    threshold = None
    if len(uniq) >= 2:
        nn, _ = _nearest(dense, uz, uf, exclude_self=True)
        threshold = float(np.percentile(nn, percentile))
    return {
        "version": DOMAIN_VERSION,
        "rows": int(n),
        "compositions": int(len(uniq)),
        "sampled": bool(sampled),
        "elements": sorted(int(v) for v in np.unique(z[z > 0])),
        "symmetry_fraction": float(np.mean(np.asarray(spg) > 0)) if spg is not None and len(spg) else 0.0,
        "metric": DOMAIN_METRIC,
        "percentile": float(percentile),
        "threshold": threshold,
        "counts": mask.sum(1).astype(int).tolist(),
        "z": uz[mask].astype(int).tolist(),
        "frac": [round(float(v), 6) for v in uf[mask]],
    }


def check_domain(rec) -> str | None:
    """What is wrong with a stored domain record, or None (cheap; no arrays built)."""
    if not isinstance(rec, dict):
        return "must be an object"
    counts, zs, fr = rec.get("counts"), rec.get("z"), rec.get("frac")
    if not all(isinstance(v, list) for v in (counts, zs, fr)):
        return "counts, z and frac must be lists"
    if (
        len(counts) > 10 * MAX_DOMAIN_ROWS
        or sum(c for c in counts if isinstance(c, int)) != len(zs)
        or len(zs) != len(fr)
    ):
        return "counts, z and frac do not fit together"
    if not _all_within(zs, 0, _ZMAX, "iu"):
        return "z must hold atomic numbers 1..118"
    if not _all_within(fr, 0, 1.000001, "iuf"):
        return "frac must hold fractions in (0, 1]"
    els = rec.get("elements")
    if not isinstance(els, list) or not all(isinstance(v, int) and 0 < v <= _ZMAX for v in els):
        return "elements must be a list of atomic numbers 1..118"
    t = rec.get("threshold")
    if t is not None and not (isinstance(t, (int, float)) and 0 <= t <= 1):
        return f"threshold must be a distance in [0, 1], got {t!r}"
    sf = rec.get("symmetry_fraction", 0.0)
    if sf is not None and (not isinstance(sf, (int, float)) or not 0 <= sf <= 1):
        return "symmetry_fraction must be in [0, 1]"
    return None


def _all_within(values: list, low: float, high: float, kinds: str) -> bool:
    """low < v <= high for every v, and every v an int (kinds "iu") or a number ("iuf"),
    checked as one array (a stored domain holds tens of thousands of values); a list
    numpy cannot hold as such (mixed types, None, huge ints) is checked value by value."""
    try:
        arr = np.asarray(values)
    except (ValueError, OverflowError, TypeError):
        arr = None
    if arr is not None and arr.ndim == 1 and arr.dtype.kind in kinds:
        return bool(np.all((arr > low) & (arr <= high)))
    types = int if kinds == "iu" else (int, float)
    return all(isinstance(v, types) and low < v <= high for v in values)


class Domain:
    """A stored domain record, ready to measure distances of new inputs."""

    def __init__(self, rec: dict):
        self.rec = rec
        counts = np.asarray(rec["counts"], dtype=np.int64)
        width = max(1, int(counts.max()) if len(counts) else 1)
        self.z = np.zeros((len(counts), width), np.int64)
        self.frac = np.zeros((len(counts), width), np.float64)
        # composition i holds the next counts[i] entries of the flat z / frac lists
        row = np.repeat(np.arange(len(counts)), counts)
        col = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts)
        self.z[row, col] = np.asarray(rec["z"], np.int64)
        self.frac[row, col] = np.asarray(rec["frac"], np.float64)
        self.dense = _dense(self.z, self.frac)
        self.elements = set(rec.get("elements", []))
        self.has_pure_elements = bool(len(counts)) and bool((counts == 1).any())
        self.threshold = rec.get("threshold")
        sf = rec.get("symmetry_fraction", 0.0)
        self.symmetry_fraction = None if sf is None else float(sf)  # None: unknown

    def nearest(self, z: np.ndarray, frac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distance to the nearest training composition, its index) per input row."""
        if len(self.z) == 0:
            return np.ones(len(z)), np.zeros(len(z), np.int64)
        return _nearest(self.dense, np.asarray(z, np.int64), np.asarray(frac, np.float64))

    def formula(self, i: int) -> str:
        """The integer formula of training composition ``i`` (pymatgen's, without pymatgen)."""
        from .data.composition import composition_of_z

        comp = composition_of_z(self.z[i], self.frac[i])
        if len(comp) < 2:
            return next(iter(comp.symbols), "?")
        return comp.integer_formula(max_denominator=1000)


def _dense(z: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """(n, 119) float32 fraction vectors (column 0, the padding, stays 0)."""
    out = np.zeros((len(z), _ZMAX + 1), np.float32)
    rows = np.repeat(np.arange(len(z)), z.shape[1])
    np.add.at(out, (rows, z.ravel()), frac.ravel().astype(np.float32))
    out[:, 0] = 0.0
    return out


def _nearest(
    dense: np.ndarray, qz: np.ndarray, qf: np.ndarray, exclude_self: bool = False, chunk: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest row of ``dense`` for each query (z, frac) row, by 1 - sum min overlap.
    Works on the queries' own elements only: O(n_train * elements) per query."""
    n = len(qz)
    dist, idx = np.ones(n), np.zeros(n, np.int64)
    width = max(1, int((qz > 0).sum(1).max()) if n else 1)
    qz = qz[:, :width] if qz.shape[1] >= width else qz
    qf = (qf[:, :width] * (qz > 0)).astype(np.float32)
    for s in range(0, n, chunk):
        zb, fb = qz[s : s + chunk], qf[s : s + chunk]
        overlap = np.minimum(dense[:, zb], fb[None]).sum(-1)  # (n_train, c)
        if exclude_self:
            cols = np.arange(s, s + len(zb))
            overlap[cols, np.arange(len(zb))] = -1.0
        best = overlap.argmax(0)
        idx[s : s + len(zb)] = best
        dist[s : s + len(zb)] = np.clip(1.0 - overlap[best, np.arange(len(zb))], 0.0, 1.0)
    return dist, idx
