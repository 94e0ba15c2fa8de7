"""Best-epoch selection and early stopping on the run's own validation rows (never on
held-out test rows): the weights of the epoch with the lowest validation score are
kept, and with ``patience`` > 0 training stops after that many epochs without a better
score. The kept weights travel with the resumable state, so a resumed run selects
exactly what an uninterrupted one would."""

from __future__ import annotations

import math

import torch


class BestEpoch:
    def __init__(self, key: str | None, patience: int = 0):
        self.key = key  # the history column to minimise, e.g. "val_mae_gap_expt"; None: last epoch
        self.patience = int(patience)
        self.epoch = 0
        self.score = math.inf
        self.weights: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, row: dict, model: torch.nn.Module) -> None:
        """Keep ``model``'s weights if this epoch's validation score is the best so far."""
        if self.key is None:
            return
        score = row.get(self.key)
        if score is not None and math.isfinite(score) and score < self.score:
            self.epoch, self.score = epoch, float(score)
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def stop(self, epoch: int) -> bool:
        """Whether ``patience`` epochs have passed without a better validation score."""
        return self.key is not None and self.patience > 0 and self.epoch > 0 and epoch - self.epoch >= self.patience

    def restore(self, model: torch.nn.Module) -> None:
        """Load the best epoch's weights into ``model`` (no-op without selection)."""
        if self.weights is not None:
            model.load_state_dict(
                {k: v.to(p.device) for (k, v), p in zip(self.weights.items(), model.state_dict().values())}, strict=True
            )

    def summary(self) -> dict:
        if self.key is None:
            return {"selection": "last epoch (no validation rows)"}
        return {
            "selection": f"lowest {self.key} (validation rows)",
            "best_epoch": self.epoch,
            "best_validation_score": self.score,
        }

    # -- resumable state ------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.weights is None else {f"best.{k}": v for k, v in self.weights.items()}

    def state_dict(self) -> dict:
        return {"key": self.key, "epoch": self.epoch, "score": None if self.weights is None else self.score}

    def load(self, state: dict, tensors: dict[str, torch.Tensor]) -> None:
        weights = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        if state and weights:
            self.epoch, self.score, self.weights = int(state["epoch"]), float(state["score"]), weights
