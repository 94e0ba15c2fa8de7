"""Rows and scores the cells share: featurized test rows (cached in memory), gap and
e_form predictions of a checkpoint, the fixed forgetting subset, and the gradient-monitor
records a run wrote. Scores are :func:`matmtl.metrics.regression_metrics`."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

from ..metrics import regression_metrics

_DATA_CACHE: dict = {}


def expt_gap(data_dir: str | None):
    """The matbench expt_gap dataset (loaded once per process, as training loads it)."""
    from ..train.data import _load

    return _load("expt_gap", data_dir)


def taskdata(name: str, data_dir: str | None, pos: np.ndarray, task: str, column: str):
    """Rows ``pos`` of dataset ``name`` as training arrays for ``task`` (kept in memory:
    every variant of a fold is scored on the same rows)."""
    from ..train.data import _load, to_taskdata

    key = (name, data_dir, task, column, pos.tobytes())
    if key not in _DATA_CACHE:
        if len(_DATA_CACHE) > 16:
            _DATA_CACHE.clear()
        _DATA_CACHE[key] = to_taskdata(_load(name, data_dir), pos, {task: column})
    return _DATA_CACHE[key]


def predict(net, data, task: str, *, symmetry: bool = True) -> np.ndarray:
    """Ensemble-mean predictions of ``task``; ``symmetry=False`` hides the space group."""
    spg = data.spg if symmetry else np.zeros_like(data.spg)
    return net.predict_arrays(data.z, data.frac, spg, [task])[task].mean(1)


def forgetting_rows(base_meta: dict, n_rows: int, seed: int, data_dir) -> tuple[np.ndarray | None, int | None]:
    """A fixed, seeded subset of the pretraining run's held-out mp_e_form fold (None
    when the checkpoint was trained on every row)."""
    from ..train.data import _load

    fold = base_meta.get("config", {}).get("holdout_fold")
    if fold is None:
        return None, None
    _, te = _load("mp", data_dir).folds()[int(fold)]
    if n_rows < len(te):
        te = np.sort(np.random.default_rng([seed, 2024]).choice(te, n_rows, replace=False))
    return te, int(fold)


def eform_mae(net, base_net, data) -> tuple[float, str]:
    """e_form MAE of ``net`` on ``data``. A model whose e_form head was dropped (plain
    fine-tuning) is scored with the *pretrained* e_form head on its fine-tuned encoder,
    i.e. how far the shared representation moved away from what that head reads."""
    how = "own e_form head"
    if "e_form" not in net.heads:
        net = copy.deepcopy(net)
        net.add_task(copy.deepcopy(base_net.tasks["e_form"]))
        net.heads["e_form"].load_state_dict(base_net.heads["e_form"].state_dict())
        how = "pretrained e_form head on the fine-tuned encoder"
    return regression_metrics(data.targets["e_form"], predict(net, data, "e_form"))["mae"], how


def monitor_records(run_dir: Path, metrics: dict) -> list[dict]:
    """Gradient-monitor records a fine-tuning run wrote: ``metrics["gradient_geometry"]``
    (principal angles + mean-gradient cosines), else ``gradient_geometry.json`` or the
    older ``gradient_cosines.json`` (pairwise cosines) in the run folder."""
    recs = metrics.get("gradient_geometry")
    if isinstance(recs, list) and recs:
        return recs
    for name in ("gradient_geometry.json", "gradient_cosines.json"):
        p = Path(run_dir) / name
        if p.is_file():
            try:
                obj = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(obj, list) and obj:
                return obj
    return []
