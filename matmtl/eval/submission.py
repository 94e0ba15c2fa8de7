"""The per-fold test predictions and the matbench results file, built by pure functions
from the cell records (nothing here trains, reads or writes files; :mod:`.output` writes).

* :func:`predictions_file`: ``expt_gap_predictions.json``, every variant's predictions of
  every test fold it ran, with the fold's matbench ids and targets (rounded to
  :data:`DECIMALS` decimals), so anyone can re-score them;
* :func:`submission`: ``results.json.gz`` in the format of a matbench v0.1 leaderboard
  submission (``MatbenchBenchmark.as_dict()``, the format of the official dummy entry
  ``matbench_v0.1_dummy/results.json.gz``) for one variant, with matbench's own per-fold
  scores (:func:`matbench_scores`) and its hash (:func:`hash_dictionary`), written
  without the ``matbench`` package (it pins 2022 versions and does not install here);
* :func:`check_submission`: what matbench's ``MatbenchBenchmark.from_dict`` /
  ``MatbenchTask.validate`` would refuse in such a file (keys, hash, test ids, scores).
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np

from . import protocol

TASK = protocol.MATBENCH_TASK["expt_gap"]
DECIMALS = 4
# the keys and values of MatbenchBenchmark.as_dict() / MatbenchTask.as_dict()
BENCHMARK = {"@module": "matbench.bench", "@class": "MatbenchBenchmark"}
TASK_CLASS = {"@class": "MatbenchTask", "@module": "matbench.task"}
FORMAT_VERSION = "0.1.0"  # the "version" of the official matbench v0.1 dummy entry, whose format this is
DATESTAMP_FORMAT = "%Y.%m.%d %H:%M.%S"  # MatbenchBenchmark._DATESTAMP_FMT (UTC)
REG_METRICS = ("mae", "rmse", "mape", "max_error")  # matbench.constants.REG_METRICS
CLF_METRICS = ("accuracy", "balanced_accuracy", "f1", "rocauc")  # matbench.constants.CLF_METRICS
FOLD_KEYS = ("data", "parameters", "scores")


def fold_key(fold: int) -> str:
    return f"fold_{int(fold)}"


# -- the predictions file --------------------------------------------------------------------


def predictions_file(
    expt: dict[str, dict[int, dict]],
    folds: dict[int, dict],
    *,
    selection: dict[int, dict],
    quick: bool,
    command: str,
    prev: dict | None = None,
) -> dict:
    """``expt_gap_predictions.json``: per variant, per fold, the test predictions (in the
    order of ``folds[k]["ids"]``, the fold's matbench test ids, with ``folds[k]["target"]``).

    ``expt``: variant -> fold -> cell record (fraction 100%); ``prev``: the file this one
    replaces; its variants that this invocation did not run are kept (as in
    ``expt_gap.json``)."""
    out_folds: dict[str, dict] = {}
    variants: dict[str, dict] = {}
    prev = prev or {}
    if prev.get("quick") == quick and prev.get("task") == TASK:
        for v, per in (prev.get("variants") or {}).items():
            if v not in expt:
                variants[v] = per
                for k in per:
                    if k in (prev.get("folds") or {}):
                        out_folds[k] = prev["folds"][k]
    validation = {v: per for v, per in (prev.get("validation") or {}).items() if v in variants}  # kept with them
    chosen = _anchor_choices(selection, prev, kept=variants)
    for v, recs in expt.items():
        per = {}
        val = {str(k): r["validation_pred"] for k, r in sorted(recs.items()) if r.get("validation_pred")}
        if val:
            validation[v] = val
        for k in sorted(recs):
            pred = recs[k].get("pred")
            if pred is None or k not in folds:
                continue
            if len(pred) != len(folds[k]["ids"]):
                raise ValueError(f"{v} fold {k}: {len(pred)} predictions for {len(folds[k]['ids'])} test rows")
            out_folds[str(k)] = {"ids": list(folds[k]["ids"]), "target": _rounded(folds[k]["target"])}
            per[str(k)] = _rounded(pred)
        if per:
            variants[v] = per
    return {
        "task": TASK,
        "protocol": protocol.PROTOCOL,
        "unit": "eV",
        "decimals": DECIMALS,
        "about": (
            "Test predictions of each variant on each matbench fold it ran: folds.<k>.ids are the fold's "
            "matbench test ids, folds.<k>.target the measured gaps, variants.<name>.<k> the predictions in the "
            f"same order (all rounded to {DECIMALS} decimals). Each model was trained on the fold's training "
            "rows only and predicted the test rows once. validation.<name>.<k>: the same run's validation rows "
            "(positions in the dataset, a seeded share of its training rows), their labels and its predictions."
        ),
        "quick": quick,
        "command": command,
        "anchor_source_per_fold": dict(sorted(chosen.items(), key=lambda kv: int(kv[0]))),
        "folds": dict(sorted(out_folds.items(), key=lambda kv: int(kv[0]))),
        "variants": variants,
        # per variant and fold: the run's validation rows (positions in the dataset), their
        # labels and its predictions (cells computed before matmtl kept them have none)
        "validation": validation,
    }


def _anchor_choices(selection: dict[int, dict], prev: dict, kept: dict) -> dict[str, str]:
    """Fold -> the anchor source chosen; where the replay and distill predictions are both
    ``kept`` from the earlier file ``prev``, so are its choices for the folds not chosen now."""
    chosen = {str(k): v.get("chosen") for k, v in sorted(selection.items())}
    if all(f"finetune_anchor_{src}" in kept for src in ("replay", "distill")):
        chosen = {**(prev.get("anchor_source_per_fold") or {}), **chosen}
    return chosen


def split_predictions(obj: dict) -> dict[str, dict]:
    """The predictions file cut into one file per variant (each with the folds it ran)."""
    out = {}
    for v, per in obj.get("variants", {}).items():
        folds = {k: obj["folds"][k] for k in per if k in obj["folds"]}
        val = obj.get("validation") or {}
        out[v] = {**obj, "folds": folds, "variants": {v: per}, "validation": {v: val[v]} if v in val else {}}
    return out


def _rounded(values) -> list[float]:
    return [round(float(x), DECIMALS) for x in values]


# -- the matbench results file -------------------------------------------------------------


def matbench_scores(y_true, y_pred) -> dict[str, float]:
    """matbench's regression scores of one fold (``matbench.data_ops.score_array``): MAE,
    RMSE, MAPE over the rows with |y| > 1e-5 (matbench's mask) and the maximum error."""
    y, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    err = y - p
    mask = np.abs(y) > 1e-5
    return {
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(math.sqrt(np.mean(err**2))),
        "mape": float(np.mean(np.abs(err[mask] / y[mask]))) if mask.any() else float("nan"),
        "max_error": float(np.max(np.abs(err))),
    }


def immutify(d: dict) -> dict:
    """matbench's ``immutify_dictionary``: keys sorted at every level, lists as tuples
    (JSON writes them as lists), numpy scalars as Python numbers."""
    out = {}
    for k, v in d.items():
        if isinstance(v, np.ndarray):
            out[k] = tuple(v.tolist())
        elif isinstance(v, (list, tuple)):
            out[k] = tuple(v)
        elif isinstance(v, dict):
            out[k] = immutify(v)
        else:
            out[k] = v.item() if hasattr(v, "dtype") else v
    return dict(sorted(out.items(), key=lambda item: item[0]))


def hash_dictionary(d: dict) -> str:
    """matbench's ``hash_dictionary``: SHA-256 of the JSON of the immutified dict."""
    return hashlib.sha256(json.dumps(immutify(d)).encode("utf-8")).hexdigest()


def submission(
    recs: dict[int, dict],
    folds: dict[int, dict],
    *,
    variant: str,
    parameters: dict[int, dict],
    user_metadata: dict,
    datestamp: str,
) -> dict:
    """The matbench results file of one variant (``recs``: fold -> cell record) on the
    folds it ran, in the structure of ``MatbenchBenchmark.as_dict()``: ``tasks``
    ``matbench_expt_gap`` ``results`` ``fold_<k>`` ``data`` {test id: prediction},
    ``parameters`` (``parameters[k]``), ``scores`` (matbench's); ``user_metadata``,
    ``datestamp`` (UTC, matbench's format) and the ``hash`` matbench checks."""
    results = {}
    for k in sorted(recs):
        pred = recs[k].get("pred")
        ids, y = folds[k]["ids"], folds[k]["target"]
        if pred is None or len(pred) != len(ids):
            raise ValueError(f"{variant} fold {k}: no predictions for the {len(ids)} test rows")
        results[fold_key(k)] = {
            "data": {i: float(p) for i, p in zip(ids, pred, strict=True)},
            "parameters": immutify({n: v for n, v in (parameters.get(k) or {}).items() if v is not None}),
            "scores": matbench_scores(y, pred),
        }
    task = {**TASK_CLASS, "benchmark_name": protocol.PROTOCOL, "dataset_name": TASK, "results": results}
    d = {
        **BENCHMARK,
        "version": FORMAT_VERSION,
        "tasks": immutify({TASK: task}),
        "user_metadata": immutify(user_metadata),
        "benchmark_name": protocol.PROTOCOL,
        "datestamp": datestamp,
    }
    d["hash"] = hash_dictionary(d)
    return d


def fold_parameters(rec: dict, variant: str, anchor_source: str | None, rf: dict | None = None) -> dict:
    """The free-form ``parameters`` of one fold: what was chosen inside the training
    fold (the kept epoch, the metal cut, the anchor source) and the rows it used."""
    if rf is not None:
        return {"variant": variant, **rf, "train_rows": rec.get("n_train")}
    val = rec.get("validation") or {}
    return {
        "variant": variant,
        "anchor_source": anchor_source,
        "symmetry": rec.get("symmetry"),
        "train_rows": rec.get("n_train"),
        "validation_rows": rec.get("validation_rows"),
        "validation_mae": val.get("mae"),
        "metal_cut": val.get("metal_cut"),
        "best_epoch": rec.get("best_epoch"),
        "epochs_run": rec.get("epochs"),
        "stopped_early": rec.get("stopped_early"),
    }


def check_submission(d: dict, official: dict | None = None) -> list[str]:
    """What matbench would refuse in results file ``d`` (empty: nothing): its keys, the
    hash, each task's keys and fold keys, each fold's data/parameters/scores, and, given
    the ``official`` results file (the dummy entry), the test ids of every fold. Folds
    that were not run are reported as missing only through ``complete`` in the caller."""
    problems = []
    want = {"@module", "@class", "version", "tasks", "user_metadata", "benchmark_name", "datestamp", "hash"}
    if set(d) != want:
        problems.append(f"top-level keys {sorted(set(d) ^ want)} differ")
        return problems
    rest = {k: v for k, v in d.items() if k != "hash"}
    if hash_dictionary(rest) != d["hash"]:
        problems.append("hash does not match the content")
    for name, task in d["tasks"].items():
        if set(task) != {"@class", "@module", "benchmark_name", "dataset_name", "results"}:
            problems.append(f"{name}: task keys {sorted(task)}")
            continue
        if task["dataset_name"] != name or task["benchmark_name"] != d["benchmark_name"]:
            problems.append(f"{name}: dataset or benchmark name differs")
        for fk, fold in task["results"].items():
            official_ids = None
            if official is not None:
                official_ids = set((official["tasks"].get(name) or {}).get("results", {}).get(fk, {}).get("data", {}))
            problems += [f"{name} {fk}: {p}" for p in _check_fold(fk, fold, official_ids)]
    return problems


def _check_fold(fk: str, fold: dict, official_ids: set | None) -> list[str]:
    if fk not in {fold_key(k) for k in range(5)}:
        return ["unknown fold"]
    if set(fold) != set(FOLD_KEYS):
        return [f"keys {sorted(fold)}"]
    problems = []
    regression = set(fold["scores"]) == set(REG_METRICS)
    if not (regression or set(fold["scores"]) == set(CLF_METRICS)) or not all(
        isinstance(v, float) for v in fold["scores"].values()
    ):
        problems.append(f"scores {fold['scores']}")
    if not isinstance(fold["parameters"], dict):
        problems.append("parameters is not a dict")
    if regression and not all(isinstance(v, float) and math.isfinite(v) for v in fold["data"].values()):
        problems.append("a prediction is not a finite float")
    if official_ids is not None and set(fold["data"]) != official_ids:
        problems.append("test ids differ from the official ones")
    return problems
