"""Best-epoch selection and early stopping on the run's own validation rows (never on
held-out test rows): the weights of the epoch with the lowest validation score are
kept, and with ``patience`` > 0 training stops after that many epochs without a better
score. The kept weights travel with the resumable state, so a resumed run selects
exactly what an uninterrupted one would.

With ``keep`` > 1 the weights of the ``keep`` best epochs are kept, and :func:`average_kept`
averages them into one model (a weight average of snapshots of one run, "greedy soup"
style): from the best epoch, each next-best epoch joins the average when the averaged
weights score no worse on the same validation rows. The result is one model of the same
size, chosen on validation rows only."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Snapshot:
    epoch: int
    score: float
    weights: dict[str, torch.Tensor]


class BestEpoch:
    def __init__(self, key: str | None, patience: int = 0, keep: int = 1):
        self.key = key  # the history column to minimise, e.g. "val_mae_gap_expt"; None: last epoch
        self.patience = int(patience)
        self.keep = max(1, int(keep))
        self.kept: list[Snapshot] = []  # the best epochs so far, best first (earlier first on a tie)

    @property
    def epoch(self) -> int:
        return self.kept[0].epoch if self.kept else 0

    @property
    def score(self) -> float:
        return self.kept[0].score if self.kept else math.inf

    @property
    def weights(self) -> dict[str, torch.Tensor] | None:
        return self.kept[0].weights if self.kept else None

    def update(self, epoch: int, row: dict, model: torch.nn.Module) -> None:
        """Keep ``model``'s weights if this epoch's validation score is among the
        ``keep`` best so far."""
        if self.key is None:
            return
        score = row.get(self.key)
        if score is None or not math.isfinite(score):
            return
        score = float(score)
        if len(self.kept) >= self.keep and score >= self.kept[-1].score:
            return
        weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        self.kept.append(Snapshot(epoch, score, weights))
        self.kept.sort(key=lambda s: (s.score, s.epoch))
        del self.kept[self.keep :]

    def stop(self, epoch: int) -> bool:
        """Whether ``patience`` epochs have passed without a better validation score."""
        return self.key is not None and self.patience > 0 and self.epoch > 0 and epoch - self.epoch >= self.patience

    def restore(self, model: torch.nn.Module) -> None:
        """Load the best epoch's weights into ``model`` (no-op without selection)."""
        if self.weights is not None:
            load_weights(model, self.weights)

    def summary(self) -> dict:
        if self.key is None:
            return {"selection": "last epoch (no validation rows)"}
        return {
            "selection": f"lowest {self.key} (validation rows)",
            "best_epoch": self.epoch,
            "best_validation_score": self.score,
        }

    # -- resumable state ------------------------------------------------------------------
    # the best epoch's tensors are "best.<name>" (as before snapshots were kept), the i-th
    # next-best's "best<i>.<name>"
    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{_prefix(i)}{k}": v for i, s in enumerate(self.kept) for k, v in s.weights.items()}

    def state_dict(self) -> dict:
        if not self.kept:
            return {"key": self.key, "epoch": 0, "score": None}
        return {
            "key": self.key,
            "epoch": self.epoch,
            "score": self.score,
            "kept": [[s.epoch, s.score] for s in self.kept],
        }

    def load(self, state: dict, tensors: dict[str, torch.Tensor]) -> None:
        if not state or state.get("score") is None:
            return
        pairs = state.get("kept") or [[state["epoch"], state["score"]]]
        kept = []
        for i, (epoch, score) in enumerate(pairs):
            p = _prefix(i)
            weights = {k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)}
            if weights:
                kept.append(Snapshot(int(epoch), float(score), weights))
        self.kept = kept[: self.keep]


def _prefix(i: int) -> str:
    return "best." if i == 0 else f"best{i}."


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    model.load_state_dict(
        {k: v.to(p.device) for (k, v), p in zip(weights.items(), model.state_dict().values())}, strict=True
    )


def mean_weights(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the state dicts' floating-point tensors (other tensors, such
    as integer buffers, are the first one's); the sum is taken in float64."""
    out = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            out[k] = torch.stack([s[k].to(torch.float64) for s in states]).mean(0).to(v.dtype)
        else:
            out[k] = v
    return out


def average_kept(model: torch.nn.Module, best: BestEpoch, score: Callable[[torch.nn.Module], float]) -> dict:
    """Greedy weight average of ``best``'s kept epochs, loaded into ``model``: from the best
    epoch, each next-best one joins when the average of the members so far plus it scores
    no worse (``score(model)``: the validation score, lower is better). Returns what was
    averaged; with one kept epoch (or none) ``model`` gets the best epoch's weights."""
    if not best.kept:
        return {}
    members, current = [best.kept[0]], best.kept[0].score
    tried = []
    for s in best.kept[1:]:
        load_weights(model, mean_weights([m.weights for m in members + [s]]))
        trial = float(score(model))
        tried.append([s.epoch, trial])
        if math.isfinite(trial) and trial <= current:
            members.append(s)
            current = trial
    load_weights(model, mean_weights([m.weights for m in members]))
    return {
        "candidates": [s.epoch for s in best.kept],
        "averaged_epochs": [s.epoch for s in members],
        "averaged_validation_score": current,
        "best_epoch_validation_score": best.kept[0].score,
        "tried": tried,
    }
