"""A scikit-learn regressor of experimental band gaps: ``fit(formulas, gaps)`` fine-tunes a
matmtl model (by default the shipped one) with the DFT anchor, ``predict`` gives eV.

>>> from matmtl import BandGapRegressor
>>> reg = BandGapRegressor().fit(["GaN", "NaCl", ...], [3.4, 8.5, ...])
>>> reg.predict(["ZnO"])                    # numpy array, eV
>>> reg.predict(["ZnO"], return_std=True)   # (gaps, calibrated 1-sigma uncertainties)
>>> cross_val_score(BandGapRegressor(), formulas, gaps, cv=5, scoring="neg_mean_absolute_error")

``fit`` writes the rows to a table and runs :func:`matmtl.train.finetune` on it with one
:class:`~matmtl.config.FinetuneConfig` (no training code of its own). That run holds out
``val_fraction`` of the rows given to ``fit`` as its validation rows (best epoch, metal
cut, uncertainty calibration): in cross-validation they come from the training folds,
never the test fold. The run folder is temporary unless ``run_dir`` names one to keep;
the fitted model lives in memory (``model_``, a :class:`matmtl.inference.Model`).
Pickling a fitted regressor stores its weights as safetensors bytes and its metadata as
JSON, and unpickling loads them through the checkpoint checks (no torch pickle).
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from .errors import ConfigError, DataError, InputTypeError, MatmtlError
from .zoo import DEFAULT_MODEL

TARGET = "gap_expt"


class BandGapRegressor(RegressorMixin, BaseEstimator):
    """Experimental band gaps (eV) from formulas, pymatgen Compositions or Structures.

    ``fit(X, y)`` fine-tunes ``base_model`` (a shipped model's name or a checkpoint path:
    a pretrain or fine-tune run folder) on ``y``, with the DFT task(s) ``aux`` kept as an
    anchor loss (``aux_source`` "replay" or "distill", weight ``aux_weight``; ``aux=None``:
    no anchor), as ``matmtl finetune --aux dft_energy`` does. ``preset`` is a
    :meth:`TrainConfig.preset <matmtl.config.TrainConfig.preset>` name ("finetune": the
    evaluated recipe; "finetune-tiny": seconds); ``epochs``, ``batch_size``, ``lr`` and
    ``threads`` override it when given. ``symmetry="mp_ground_state"`` (the default, as
    ``matmtl finetune``) gives training compositions their Materials Project ground state's
    space group; ``"none"`` fine-tunes on compositions only. ``metal_gate="mp_pbe"`` (the
    default, as ``matmtl finetune``) adds the DFT metal gate (:mod:`matmtl.metal_gate`),
    ``"none"`` leaves it out. ``replay_max_rows``
    caps the replayed DFT rows (None: the base model's pretraining rows).

    Fitted attributes: ``model_`` (the fine-tuned :class:`matmtl.inference.Model`),
    ``run_dir_`` (the kept run folder, or None), ``metrics_`` (the run's metrics.json:
    validation scores, calibration) and ``history_`` (per-epoch losses and scores).
    """

    def __init__(
        self,
        base_model: str = DEFAULT_MODEL,
        *,
        aux: str | tuple[str, ...] | None = "dft_energy",
        aux_source: str = "replay",
        aux_weight: float = 0.5,
        symmetry: str = "mp_ground_state",
        metal_gate: str = "mp_pbe",
        preset: str = "finetune",
        epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        val_fraction: float = 0.1,
        replay_max_rows: int | None = None,
        seed: int = 0,
        threads: int | None = None,
        device: str = "auto",
        run_dir: str | Path | None = None,
        progress: bool = False,
    ):
        self.base_model = base_model
        self.aux = aux
        self.aux_source = aux_source
        self.aux_weight = aux_weight
        self.symmetry = symmetry
        self.metal_gate = metal_gate
        self.preset = preset
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.val_fraction = val_fraction
        self.replay_max_rows = replay_max_rows
        self.seed = seed
        self.threads = threads
        self.device = device
        self.run_dir = run_dir
        self.progress = progress

    # -- scikit-learn API ----------------------------------------------------------------

    def fit(self, X, y):
        """Fine-tune on ``X`` (formulas, Compositions, Structures, ASE Atoms: a list, a 1-d
        array or a one-column DataFrame) and ``y`` (band gaps in eV, >= 0). Returns self."""
        from .inference import load_model
        from .train import finetune
        from .train.engine import pick_device

        config = self._config("<table>")  # bad settings fail first, before any work
        items = as_inputs(X, "X")
        table = training_table(items, as_gaps(y, len(items)))
        with _workspace(self.run_dir) as (table_path, out):
            table.to_csv(table_path, index=False)
            result = finetune(replace(config, dataset=str(table_path)), out, progress=self.progress)
            model = load_model(result.run_dir, device=pick_device(self.device))
        self.model_ = model
        self.run_dir_ = None if self.run_dir is None else Path(result.run_dir)
        self.metrics_ = result.metrics
        self.history_ = result.history
        return self

    def predict(self, X, return_std: bool = False):
        """Band gaps (eV) as a numpy array; with ``return_std`` also their calibrated
        1-sigma uncertainties. Inputs the model cannot use raise DataError naming them."""
        check_is_fitted(self, "model_")
        items = as_inputs(X, "X")
        frame = self.model_.predict_frame(items)
        gap = frame["gap_expt"].to_numpy(dtype=np.float64)
        if return_std:
            return gap, frame["gap_expt_std"].to_numpy(dtype=np.float64)
        return gap

    def __sklearn_tags__(self):  # scikit-learn >= 1.6
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"X_types": ["string"], "requires_y": True}

    # -- pickling: weights as safetensors bytes, metadata as JSON ------------------------

    def __getstate__(self):
        state = dict(super().__getstate__())
        if "model_" in state:
            state["model_"] = freeze(state["model_"])
        return state

    def __setstate__(self, state):
        if isinstance(state.get("model_"), dict):
            state = {**state, "model_": thaw(state["model_"], state.get("device", "cpu"))}
        super().__setstate__(state)

    # -- the fine-tuning settings --------------------------------------------------------

    def _config(self, dataset: str):
        """The one FinetuneConfig of a fit (ConfigError naming the setting if one is bad)."""
        from .config import FinetuneConfig, TrainConfig
        from .zoo import resolve

        given = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "threads": self.threads}
        aux = () if self.aux is None or self.aux == "none" else self.aux
        if isinstance(aux, str):
            aux = tuple(a.strip() for a in aux.split(","))
        try:
            train = TrainConfig.preset(
                self.preset,
                seed=self.seed,
                val_fraction=self.val_fraction,
                device=self.device,
                **{k: v for k, v in given.items() if v is not None},
            )
            return FinetuneConfig(
                checkpoint=str(resolve(self.base_model)),
                dataset=dataset,
                target=TARGET,
                aux=aux,
                aux_source=self.aux_source,
                aux_weight=self.aux_weight,
                replay_max_rows=self.replay_max_rows,
                symmetry=self.symmetry,
                metal_gate=self.metal_gate,
                train=train,
            )
        except ConfigError as exc:
            raise ConfigError(f"{type(self).__name__}: {exc}") from None


# -- inputs ------------------------------------------------------------------------------


def as_inputs(X, where: str = "X") -> list:
    """The rows of ``X`` as a list of single inputs: a list/tuple, a 1-d array, an (n, 1)
    array, a Series or a one-column DataFrame. One bare input is refused (it has no rows)."""
    import pandas as pd

    if isinstance(X, pd.DataFrame):
        if X.shape[1] != 1:
            raise DataError(
                f"{where}: a DataFrame with {X.shape[1]} columns {list(X.columns)[:5]}; give one column of "
                "formulas or structures (e.g. df[['formula']])"
            )
        X = X.iloc[:, 0]
    if isinstance(X, np.ndarray):
        if X.ndim == 2 and X.shape[1] == 1:
            X = X[:, 0]
        if X.ndim != 1:
            raise DataError(f"{where}: an array of shape {X.shape}; give one input per row (shape (n,) or (n, 1))")
    if _is_single(X):
        raise InputTypeError(
            f"{where}: one {type(X).__name__}, not a list of inputs; scikit-learn estimators take one input per "
            f"row (wrap it: [{where}])"
        )
    items = [_unwrap(x, where, i) for i, x in enumerate(X)]
    if not items:
        raise DataError(f"{where}: no rows")
    return items


def _is_single(X) -> bool:
    if isinstance(X, (str, bytes, dict)) or not hasattr(X, "__iter__"):
        return True
    from pymatgen.core import Composition, IStructure

    return isinstance(X, (Composition, IStructure)) or type(X).__name__ in ("Atoms", "Molecule", "IMolecule")


def _unwrap(x, where: str, i: int):
    """A row of a 2-d list (``[["GaN"], ["ZnO"]]``) is its one value."""
    if isinstance(x, (list, tuple, np.ndarray)):
        if len(x) != 1:
            raise DataError(f"{where}[{i}]: a row of {len(x)} values; give one input (formula or structure) per row")
        return x[0]
    return x


def as_gaps(y, n: int) -> np.ndarray:
    """``y`` as a float array of ``n`` finite band gaps >= 0 eV, else DataError saying which."""
    try:
        gaps = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"y: band gaps must be numbers in eV ({exc})") from None
    if gaps.ndim == 2 and gaps.shape[1] == 1:
        gaps = gaps[:, 0]
    if gaps.ndim != 1:
        raise DataError(f"y: shape {gaps.shape}; give one band gap per row (one target)")
    if len(gaps) != n:
        raise DataError(f"X has {n} rows but y has {len(gaps)} values; give one band gap per input")
    bad = np.flatnonzero(~np.isfinite(gaps))
    if len(bad):
        raise DataError(f"y: {len(bad)} value(s) are NaN or infinite (rows {_rows(bad)}); drop those rows")
    neg = np.flatnonzero(gaps < 0)
    if len(neg):
        raise DataError(
            f"y: {len(neg)} negative band gap(s) (rows {_rows(neg)}, y[{neg[0]}] = {gaps[neg[0]]:g}); a band gap "
            "is >= 0 eV (metals are 0): fix or drop those rows"
        )
    return gaps


def _rows(idx: np.ndarray) -> str:
    return ", ".join(str(int(i)) for i in idx[:5]) + (", ..." if len(idx) > 5 else "")


def training_table(items: list, gaps: np.ndarray):
    """The table fine-tuning reads: each input's formula (and a structure's space group),
    and its gap. An unusable input raises DataError naming ``X[i]``."""
    import pandas as pd

    from .data import Featurizer, symmetry_of
    from .inference import _to_model_input

    featurizer = Featurizer(cache=False)  # its read() refuses what no model can embed, naming X[i]
    formulas, spg = [], []
    for i, x in enumerate(items):
        comp, structure = _to_model_input(x, f"X[{i}]")
        featurizer.read(comp, f"X[{i}]")
        formulas.append(comp.formula)
        spg.append(symmetry_of(structure)[0] if structure is not None else 0)
    table = pd.DataFrame({"formula": formulas, TARGET: gaps})
    if any(spg):
        table.insert(1, "spg_num", spg)
    return table


@contextmanager
def _workspace(run_dir):
    """(table path, run folder): a temporary folder, or the kept ``run_dir`` with the table
    beside it as ``<run_dir>.train.csv`` (so its config.json names a file that exists)."""
    if run_dir is None:
        with tempfile.TemporaryDirectory(prefix="matmtl-fit-") as tmp:
            yield Path(tmp) / "train.csv", Path(tmp) / "run"
        return
    out = Path(run_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MatmtlError(
            f"BandGapRegressor(run_dir={str(run_dir)!r}): that path exists and is not an empty folder; a fit "
            "never overwrites a run (give a new run_dir, or run_dir=None for a temporary one, as in "
            "cross-validation)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    yield out.with_name(out.name + ".train.csv"), out


# -- pickling ------------------------------------------------------------------------------


def freeze(model) -> dict:
    """A fitted model as plain data: safetensors bytes, model.json content, its path, its
    metal gate (gzipped JSON bytes, or None)."""
    from safetensors.torch import save

    from .metal_gate import dumps

    weights = save({k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()})
    gate = None if model.metal_gate is None else dumps(*model.metal_gate)
    return {"weights": weights, "meta": model.meta, "path": str(model.path), "metal_gate": gate}


def thaw(frozen: dict, device: str = "cpu"):
    """The model of :func:`freeze`, loaded through the checkpoint checks (schema, shapes)."""
    import torch

    from .checkpoints import WEIGHTS, load_checkpoint, write_meta
    from .inference import Model
    from .metal_gate import loads

    device = "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="matmtl-thaw-") as tmp:
        (Path(tmp) / WEIGHTS).write_bytes(frozen["weights"])
        write_meta(tmp, frozen["meta"])  # fresh hashes over these bytes
        net, meta = load_checkpoint(tmp, device)
    gate = frozen.get("metal_gate")  # None: no gate (also for models pickled before it existed)
    gate = loads(gate, "the pickled model's metal gate") if gate is not None else None
    return Model(net, meta, Path(frozen["path"]), metal_gate=gate)


__all__ = ["BandGapRegressor", "as_gaps", "as_inputs", "training_table"]
