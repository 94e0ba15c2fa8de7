"""How per-task losses become one parameter update.

Every training step calls :meth:`LossCombiner.backward` with the per-task losses of
that step (a dict ``task -> scalar tensor``) and the shared parameters. The combiner
owns the backward pass, so a later loss-balancing scheme (uncertainty weighting,
GradNorm), gradient surgery (PCGrad) or a gradient-geometry monitor plugs in here
without touching the training loop:

* ``StaticWeights`` (the one implemented): ``sum_t w_t * L_t`` then ``backward()``.
* a balancer subclass may change the weights per step (it gets the losses, and may
  own learnable parameters it exposes through :meth:`parameters`);
* a surgery subclass may take per-task gradients of the shared parameters
  (:func:`per_task_grads`), combine them and write ``p.grad`` itself;
* a ``monitor`` (any callable) gets the per-task gradients of the shared parameters
  every ``monitor_every`` steps, e.g. to record pairwise cosines/angles
  (:class:`CosineMonitor`; the Rust subspace-angle kernels will plug in the same way).
"""
from __future__ import annotations

from typing import Callable, Protocol

import torch


class GradientMonitor(Protocol):
    def __call__(self, step: int, grads: dict[str, torch.Tensor]) -> None: ...


def per_task_grads(losses: dict[str, torch.Tensor], shared: list[torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """Flattened gradient of each task's loss w.r.t. the shared parameters (graph kept)."""
    out = {}
    for name, loss in losses.items():
        gs = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
        out[name] = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(gs, shared)])
    return out


class LossCombiner:
    """Base class: turns per-task losses into gradients on the parameters."""

    name = "base"

    def __init__(self, weights: dict[str, float] | None = None, monitor: GradientMonitor | None = None,
                 monitor_every: int = 50):
        self.weights = dict(weights or {})
        self.monitor = monitor
        self.monitor_every = max(1, int(monitor_every))
        self.step = 0

    def weight(self, task: str) -> float:
        return float(self.weights.get(task, 1.0))

    def parameters(self) -> list[torch.nn.Parameter]:
        """Learnable parameters of the combiner itself (none for static weights)."""
        return []

    def backward(self, losses: dict[str, torch.Tensor], shared: list[torch.nn.Parameter]) -> dict[str, float]:
        """Do the backward pass for one step; returns numbers to log (at least ``total``)."""
        if self.monitor is not None and len(losses) > 1 and self.step % self.monitor_every == 0:
            self.monitor(self.step, {k: g.detach() for k, g in per_task_grads(losses, shared).items()})
        total = self.combine(losses)
        total.backward()
        self.step += 1
        return {"total": float(total.detach())}

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def config(self) -> dict:
        return {"name": self.name, "weights": self.weights}


class StaticWeights(LossCombiner):
    """``sum_t w_t L_t`` with fixed weights (missing tasks weigh 1)."""

    name = "static"

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weight(k) * v for k, v in losses.items())


class CosineMonitor:
    """Records the pairwise cosine between per-task gradients of the shared parameters."""

    def __init__(self) -> None:
        self.trace: list[dict] = []

    def __call__(self, step: int, grads: dict[str, torch.Tensor]) -> None:
        names = sorted(grads)
        row: dict = {"step": step}
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                ga, gb = grads[a], grads[b]
                row[f"{a}|{b}"] = float(ga @ gb / (ga.norm() * gb.norm()).clamp_min(1e-12))
        self.trace.append(row)


COMBINERS: dict[str, Callable[..., LossCombiner]] = {"static": StaticWeights}
MONITORS: dict[str, Callable[[], GradientMonitor]] = {"cosine": CosineMonitor}


def make_combiner(name: str, weights: dict[str, float], monitor: str | None = None, monitor_every: int = 50) -> LossCombiner:
    from ..errors import MatmtlError

    if name not in COMBINERS:
        raise MatmtlError(f"unknown loss balancing {name!r}; available: {sorted(COMBINERS)}")
    mon = None
    if monitor and monitor != "none":
        if monitor not in MONITORS:
            raise MatmtlError(f"unknown gradient monitor {monitor!r}; available: {sorted(MONITORS)} or 'none'")
        mon = MONITORS[monitor]()
    return COMBINERS[name](weights, monitor=mon, monitor_every=monitor_every)
