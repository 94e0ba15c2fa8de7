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
import time
import warnings
from pathlib import Path

import numpy as np

from ..io import atomic_write, cache_dir, sha256_of

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

    ep, _ = _element_property()
    rows = []
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # matminer's imputation notice, once per call
        for i, f in enumerate(formulas):
            rows.append(ep.featurize(Composition(f)))
            if progress and i and i % 1000 == 0:
                print(f"  magpie: {i}/{len(formulas)} compositions ({time.time() - t0:.0f}s)")
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
    return rf.predict(fill(X_test))
