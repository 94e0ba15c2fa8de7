"""Pretraining on DFT data (formation energy; optionally the PBE band gap):
load data -> build model -> fit -> finish (checkpoint, metrics, plots)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import PretrainConfig, TrainConfig
from ..models import MultiTaskModel, TaskSpec
from .data import TASK_KIND, dft_split, task_unit
from .engine import Source, TaskData, evaluate_rows, set_determinism
from .fit import RunResult, featurizer_settings, fit, on_device, start_run
from .report import finish_run


def pretrain(config: PretrainConfig | None = None, out: str | Path | None = None, *, progress: bool = True,
             stop_after: int | None = None) -> RunResult:
    """Train the multi-task model on DFT data and write a run folder ``out`` (default: a
    new folder under the user cache): checkpoint, metrics.json, config.json, history, PNG
    plots, and a resumable state after every epoch (:func:`matmtl.train.resume`).
    ``stop_after`` stops after that many epochs (tests of resuming)."""
    config = config or PretrainConfig()
    run_dir = start_run(config, out)
    return run_pretrain(run_dir, config, progress=progress, stop_after=stop_after)


def run_pretrain(run_dir: Path, config: PretrainConfig, *, progress: bool = True,
                 stop_after: int | None = None) -> RunResult:
    """Pretrain in ``run_dir`` from its saved state, if any."""
    train = on_device(config.train)
    set_determinism(train.seed, train.threads)
    tr, te, info = dft_split(list(config.tasks), config.holdout_fold, config.max_rows, train.seed, config.data_dir)
    tr = tr.with_bootstrap(config.model.members, train.seed)
    set_determinism(train.seed, train.threads)
    net = MultiTaskModel(config.model, task_specs(tr, config.tasks))
    sources = [Source(tr, list(config.tasks), train.batch_size)]
    done = fit(run_dir, net, config, train, sources, holdout_scorer(te, config.tasks, train),
               weights=config.task_weights, progress=progress, stop_after=stop_after)
    if not done.finished:
        return RunResult(run_dir, {}, done.history, finished=False)
    metrics = {"kind": "pretrain", "tasks": list(config.tasks), "holdout_fold": config.holdout_fold, "data": info,
               **done.summary()}
    meta = {"kind": "pretrain", "config": config.to_dict(), "elements": tr.elements(),
            "featurizer": featurizer_settings(), "data_sha256": tr.digest(), "mtl": done.trainer.mtl.config()}
    metrics.update(finish_run(run_dir, net, te, list(config.tasks), done.history, meta, metrics, done.trainer.mtl,
                              progress))
    return RunResult(run_dir, metrics, done.history)


def task_specs(tr: TaskData, tasks) -> list[TaskSpec]:
    """Heads for the DFT tasks; regression targets normalised by their training rows."""
    specs = []
    for t in tasks:
        y = tr.targets[t][np.isfinite(tr.targets[t])]
        if TASK_KIND[t] == "regression":
            specs.append(TaskSpec(t, "regression", task_unit(t), float(y.mean()), float(y.std() or 1.0)))
        else:
            specs.append(TaskSpec(t, "hurdle", task_unit(t)))
    return specs


def holdout_scorer(te: TaskData, tasks, train: TrainConfig):
    """Per-epoch scores on a fixed random sample of the held-out rows (the source order
    is not random); None when nothing is held out."""
    if not len(te):
        return None
    val_idx = np.sort(np.random.default_rng([train.seed, 99]).permutation(len(te))[:train.val_rows])
    val_small = te.subset(val_idx)

    def evaluate(m, final: bool) -> dict:
        return {f"val_{k}": v for k, v in evaluate_rows(m, val_small, list(tasks)).items()}

    return evaluate
