"""The scikit-learn baseline for context: a random forest on matminer's Magpie
composition features (``ElementProperty.from_preset("magpie")``, 132 features:
statistics of elemental properties weighted by the composition).

Fixed settings, nothing tuned: ``RandomForestRegressor(n_estimators=500, n_jobs=-1,
random_state=0)``, everything else sklearn's default. Missing feature values (none
for expt_gap with matminer's imputation) would be filled with the training fold's
column medians. The featurized table is cached on disk under
``matmtl.io.cache_dir()/features/magpie-<hash>.npz`` (atomic write; loaded with
``allow_pickle=False``).
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import numpy as np

from ..io import atomic_write, cache_dir, sha256_of
from ..metrics import regression_metrics
from . import protocol
from .cells import CellKey, Cells, fingerprint
from .scoring import expt_gap
from .settings import EvalSettings

RF_DEFAULTS = {"n_estimators": 500, "random_state": 0, "n_jobs": -1}


def _element_property():
    from matminer.featurizers.composition import ElementProperty

    kw = {"impute_nan": True} if "impute_nan" in inspect.signature(ElementProperty.from_preset).parameters else {}
    return ElementProperty.from_preset("magpie", **kw), kw


def featurizer_id() -> str:
    from importlib.metadata import version

    _, kw = _element_property()
    return f"matminer-{version('matminer')}:magpie:{sorted(kw.items())}"


def magpie_path(formulas: list[str]) -> Path:
    key = sha256_of(featurizer_id(), *formulas)[:24]
    return cache_dir() / "features" / f"magpie-{key}.npz"


def magpie_features(formulas: list[str], progress: bool = False) -> tuple[np.ndarray, list[str]]:
    """(n, 132) Magpie features of the formulas, and the feature labels; cached on disk."""
    path = magpie_path(formulas)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if list(z["formulas"]) == list(formulas):
                    return z["X"], [str(s) for s in z["labels"]]
        except (OSError, ValueError, KeyError):
            pass  # unreadable: featurize again and replace it
    from pymatgen.core import Composition
    from rich.progress import track

    ep, _ = _element_property()
    items = track(formulas, description="magpie features", disable=not progress)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # matminer's imputation notice, once per call
        rows = [ep.featurize(Composition(f)) for f in items]
    X = np.asarray(rows, dtype=np.float64)
    labels = list(ep.feature_labels())

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez would add ".npz" to a path
            np.savez_compressed(fh, X=X, labels=np.array(labels, dtype=str), formulas=np.array(formulas, dtype=str))

    atomic_write(path, write)
    return X, labels


def fit_predict_rf(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, **rf_kw) -> np.ndarray:
    """Fit the random forest on the training rows, predict the test rows. NaN features
    are filled with the training rows' column medians (training rows only)."""
    from sklearn.ensemble import RandomForestRegressor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column gets 0
        med = np.nanmedian(np.where(np.isfinite(X_train), X_train, np.nan), axis=0)
    med = np.where(np.isfinite(med), med, 0.0)

    def fill(X):
        X = np.array(X, dtype=np.float64, copy=True)
        bad = ~np.isfinite(X)
        X[bad] = np.take(med, np.nonzero(bad)[1])
        return X

    rf = RandomForestRegressor(**{**RF_DEFAULTS, **rf_kw})
    rf.fit(fill(X_train), np.asarray(y_train, dtype=np.float64))
    # one thread sums the trees in a fixed order: the predictions repeat bit for bit (the
    # parallel sum's order varies, ~1e-16)
    rf.set_params(n_jobs=1)
    return rf.predict(fill(X_test))


def baseline_fp(settings: EvalSettings, n_rows: int) -> str:
    """The fingerprint of the baseline cells (``n_rows``: rows of expt_gap)."""
    return fingerprint(
        {
            "kind": "rf_magpie",
            "rf": {**RF_DEFAULTS, "n_estimators": settings.rf_trees, "random_state": settings.seed},
            "featurizer": featurizer_id(),
            "cap": settings.cap,
            "seed": settings.seed,
            "rows": n_rows,
        }
    )


class BaselineCells:
    """The baseline's cells: one (fold, fraction) each, on the rows the neural variants
    train on at that fraction."""

    def __init__(self, settings: EvalSettings, cells: Cells):
        self.s, self.cells = settings, cells
        self._magpie_all: np.ndarray | None = None

    @property
    def ds(self):
        return expt_gap(self.s.data_dir)

    def cell(self, fold: int, fraction: float = 1.0) -> dict:
        key = CellKey("expt_gap", "rf_magpie", fold, fraction)
        return self.cells.run(key, baseline_fp(self.s, len(self.ds)), lambda: self.compute(fold, fraction))

    def compute(self, fold: int, fraction: float) -> dict:
        tr, te = protocol.train_test(self.ds, fold, fraction, self.s.seed, self.s.cap)
        formulas = self.ds.formulas
        if self.s.quick:  # featurize only the rows this cell needs
            X, _ = magpie_features([formulas[i] for i in np.concatenate([tr, te])])
            Xtr, Xte = X[: len(tr)], X[len(tr) :]
        else:
            if self._magpie_all is None:
                self._magpie_all, _ = magpie_features(formulas, progress=self.s.progress)
            Xtr, Xte = self._magpie_all[tr], self._magpie_all[te]
        y = self.ds.target("gap_expt")
        pred = fit_predict_rf(Xtr, y[tr], Xte, n_estimators=self.s.rf_trees, random_state=self.s.seed)
        return {
            "metrics": regression_metrics(y[te], pred),
            "n_train": len(tr),
            "n_test": len(te),
            "pred": pred.tolist(),
        }
