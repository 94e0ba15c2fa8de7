"""What pretraining and fine-tuning share: starting a run folder from a config, the fit
loop around :class:`~matmtl.train.engine.Trainer`, and the run's result."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from ..checkpoints import read_json
from ..config import RunConfig, TrainConfig, config_from_dict
from ..distributed import World, join
from ..io import atomic_write_json
from ..models import MultiTaskModel
from .engine import Source, Trainer, pick_device
from .runs import RunDir, claim_run_dir, follow_run_dir
from .selection import average_kept, load_weights, mean_weights


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    history: list = field(default_factory=list)
    finished: bool = True


def joined(train: TrainConfig) -> World:
    """The processes of this run (:func:`matmtl.distributed.join`): this one alone, or
    those torchrun started, on the run's device with its collective timeout."""
    return join(pick_device(train.device), train.dist_timeout)


def start_run(config: RunConfig, out: str | Path | None, world: World | None = None) -> RunDir:
    """A new run folder, locked for this process, holding the run's config.json. Use it
    as a context manager around the training: a run that fails before its first saved
    epoch leaves no folder behind, and no other process can write into it meanwhile.
    With several processes rank 0 claims and writes it; the others follow it."""
    return main_claims(world or World(), lambda: _claim_new(config, out), config.kind, "claiming the run folder")


def _claim_new(config: RunConfig, out) -> RunDir:
    run = claim_run_dir(config.kind, out)
    try:
        atomic_write_json(run.path / "config.json", {**config.to_dict(), "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    except BaseException:
        run.discard()
        raise
    return run


def main_claims(world: World, claim: Callable[[], RunDir], kind: str, what: str) -> RunDir:
    """The run folder ``claim()`` takes (locks) on rank 0; the other processes get the
    same folder to follow (no lock; they never write or remove it), or rank 0's error."""
    held: list[RunDir] = []

    def on_main() -> str:
        held.append(claim())
        return str(held[0].path)

    path = world.main_does(on_main, what)
    return held[0] if held else follow_run_dir(path, kind)


def read_config(run_dir: Path) -> RunConfig:
    """The typed config of a run folder (any version this matmtl reads)."""
    return config_from_dict(read_json(Path(run_dir) / "config.json"))


def on_device(train: TrainConfig) -> TrainConfig:
    """The train settings with ``device`` resolved (``auto`` -> cuda or cpu)."""
    return replace(train, device=pick_device(train.device))


@dataclass
class Fit:
    """The trained model after :func:`fit`, its history and the MTL layer (for the
    monitor's records); ``finished`` is False when ``stop_after`` cut the run short."""

    trainer: Trainer
    history: list[dict]
    seconds: float
    averaged: dict | None = None  # the weight average of the kept epochs (TrainConfig.average_epochs > 1)

    @property
    def finished(self) -> bool:
        return self.trainer.finished

    def summary(self) -> dict:
        t = self.trainer
        return {
            "epochs": t.epoch,
            "stopped_early": t.stopped_early,
            **t.best.summary(),
            **({"weight_average": self.averaged} if self.averaged else {}),
            "train_seconds": round(sum(h["seconds"] for h in self.history), 1),
            "this_call_seconds": round(self.seconds, 1),
        }


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: the run folder and the epoch its saved state reached, so the
    command line can say where the state is and how to continue."""

    def __init__(self, run_dir: Path, kind: str, epoch: int):
        super().__init__(f"{kind} run {run_dir} interrupted after epoch {epoch}")
        self.run_dir, self.kind, self.epoch = Path(run_dir), kind, epoch


def fit(
    run_dir: Path,
    model: MultiTaskModel,
    config: RunConfig,
    train: TrainConfig,
    sources: list[Source],
    evaluate: Callable[[MultiTaskModel], dict] | None,
    *,
    select: str | None = None,
    weights: dict[str, float] | None = None,
    reference: list[torch.Tensor] | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    world: World | None = None,
) -> Fit:
    """Train ``model`` from the run folder's saved state (if any) to ``train.epochs``
    (or early stopping); when finished, ``model`` holds the weights of the epoch with the
    lowest ``select`` score on the validation rows. ``world``: the processes sharing each
    batch (default: this one alone)."""
    trainer = Trainer(
        model,
        train,
        config.mtl,
        sources,
        run_dir / "state",
        evaluate,
        weights=weights,
        reference=reference,
        select=select,
        progress=progress,
        label=config.kind,
        world=world,
    )
    trainer.load_state()
    t0 = time.time()
    try:
        history = trainer.fit(stop_after=stop_after)
    except KeyboardInterrupt:
        raise RunInterrupted(run_dir, config.kind, trainer.epoch) from None
    averaged = None
    if trainer.finished:
        trainer.best.restore(model)
        if train.average_epochs > 1 and evaluate is not None and select is not None:
            averaged = average_epochs(model, trainer, evaluate, select)
    return Fit(trainer, history, time.time() - t0, averaged)


def average_epochs(model: MultiTaskModel, trainer: Trainer, evaluate: Callable, select: str) -> dict:
    """The greedy weight average of the trainer's kept epochs, scored on the validation
    rows by rank 0 (:func:`~matmtl.train.selection.average_kept`); every process then loads
    the same average into ``model``."""
    kept = trainer.best.kept

    def on_main() -> dict:
        return average_kept(model, trainer.best, lambda m: evaluate(m)[select])

    averaged = trainer.world.main_does(on_main, "averaging the weights of the kept epochs")
    members = [s for s in kept if s.epoch in set(averaged.get("averaged_epochs", []))]
    if members:
        load_weights(model, mean_weights([s.weights for s in members]))
    return averaged


def featurizer_settings() -> dict:
    from ..data import Featurizer

    return Featurizer().settings()
