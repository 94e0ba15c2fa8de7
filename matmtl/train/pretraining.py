"""Pretraining on DFT data (formation energy; optionally the PBE band gap):
load data -> build model -> fit -> finish (checkpoint, metrics, plots)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import PretrainConfig, TrainConfig
from ..distributed import World
from ..models import MultiTaskModel, TaskSpec
from .data import TASK_KIND, dft_split, split_validation, task_unit
from .engine import Source, TaskData, evaluate_rows, set_determinism
from .fit import RunResult, featurizer_settings, fit, joined, on_device, start_run
from .report import finish_run


def pretrain(
    config: PretrainConfig | None = None,
    out: str | Path | None = None,
    *,
    progress: bool = True,
    stop_after: int | None = None,
) -> RunResult:
    """Train the multi-task model on DFT data and write a run folder ``out`` (default: a
    new folder under the user cache): checkpoint, metrics.json, config.json, history, PNG
    plots, and a resumable state after every epoch (:func:`matmtl.train.resume`).
    ``stop_after`` stops after that many epochs (tests of resuming). Under ``torchrun``
    the processes share each batch (docs/distributed.md); rank 0 writes the folder."""
    config = config or PretrainConfig()
    world = joined(config.train)
    with start_run(config, out, world) as run:
        return run_pretrain(run.path, config, progress=progress, stop_after=stop_after, world=world)


def run_pretrain(
    run_dir: Path,
    config: PretrainConfig,
    *,
    progress: bool = True,
    stop_after: int | None = None,
    world: World | None = None,
) -> RunResult:
    """Pretrain in ``run_dir`` from its saved state, if any (``world``: the processes
    sharing each batch; default this one alone)."""
    world = world or World()
    progress = progress and world.is_main
    train = on_device(config.train)
    set_determinism(train.seed, train.threads, train.device, train.deterministic)
    with world.node_first("featurizing the DFT rows"):
        tasks = list(config.tasks)
        tr, te, info = dft_split(tasks, config.holdout_fold, config.max_rows, train.row_seed, config.data_dir)
    tr, va = split_validation(tr, train.val_fraction, train.row_seed)
    tr = tr.with_bootstrap(config.model.members, train.seed)
    set_determinism(train.seed, train.threads, train.device, train.deterministic)
    net = MultiTaskModel(config.model, task_specs(tr, config.tasks))
    sources = [Source(tr, list(config.tasks), train.batch_size)]
    done = fit(
        run_dir,
        net,
        config,
        train,
        sources,
        validation_scorer(va, config.tasks, train),
        select=f"val_mae_{config.main_task}",
        weights=config.task_weights,
        progress=progress,
        stop_after=stop_after,
        world=world,
    )
    if not done.finished:
        return RunResult(run_dir, {}, done.history, finished=False)
    info = {
        t: {
            **v,
            "validation_rows": int(np.isfinite(va.targets[t]).sum()),
            "train_rows": int(np.isfinite(tr.targets[t]).sum()),
        }
        for t, v in info.items()
    }
    metrics = {
        "kind": "pretrain",
        "tasks": list(config.tasks),
        "holdout_fold": config.holdout_fold,
        "data": info,
        **done.summary(),
    }
    meta = {
        "kind": "pretrain",
        "config": config.to_dict(),
        "elements": tr.elements(),
        "featurizer": featurizer_settings(),
        "data_sha256": tr.digest(),
        "mtl": done.trainer.mtl.config(),
    }
    tasks, mtl = list(config.tasks), done.trainer.mtl

    def finish() -> dict:
        return finish_run(run_dir, net, te, va, tasks, done.history, meta, metrics, mtl, progress)

    metrics.update(world.main_does(finish, "writing the run's results"))
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


def validation_scorer(va: TaskData, tasks, train: TrainConfig):
    """Per-epoch scores on (a fixed random sample of at most ``val_rows`` of) the run's
    validation rows; None when there are none."""
    if not len(va):
        return None
    sample = va.subset(np.sort(np.random.default_rng([train.row_seed, 99]).permutation(len(va))[: train.val_rows]))

    def evaluate(m) -> dict:
        return {f"val_{k}": v for k, v in evaluate_rows(m, sample, list(tasks)).items()}

    return evaluate
