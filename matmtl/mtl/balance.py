"""Loss balancing: how much each task's loss counts in a step. Balancers are small
strategy objects handed to :class:`~matmtl.mtl.MTLBackward`:

* :class:`Static`: fixed weights (the ``weights`` given to MTLBackward, default 1 each).
* :class:`Uncertainty`: Kendall, Gal & Cipolla (2018). Each task has a learnable log
  variance s_t; the objective is sum_t exp(-s_t) L_t + s_t, so a noisy or large-unit task
  is down-weighted automatically. The s_t are parameters: MTLBackward.parameters() gives
  them to the optimizer.
* :class:`GradNorm`: Chen et al. (2018). Weights w_t are tuned so that the norms of the
  weighted task gradients w_t·||g_t|| move towards a common value, scaled by each task's
  relative training rate (L_t/L_t(0))^alpha. This puts tasks with different units (eV vs
  eV/atom) on equal terms. We use the full shared-parameter gradients (which the step
  computes anyway) rather than the last shared layer.

Static weights given with ``Uncertainty`` or ``GradNorm`` act as a fixed prior that
multiplies the learned weights (e.g. ``--aux-weight 0.3`` keeps the anchor lighter).

A balancer is configured by its constructor and bound to the tasks by
:meth:`Balancer.setup` (MTLBackward calls it); ``to_dict()``/``balancer_from()`` give a
JSON form for run configs, ``state_dict()``/``load_state_dict()`` what a resumed run needs.
"""

from __future__ import annotations

import torch

from .strategy import Strategy, from_spec


class Balancer(Strategy):
    name = "base"
    needs_grads = False  # True: wants the (T, d) per-task gradients of the shared parameters

    def __init__(self) -> None:
        self.tasks: list[str] = []
        self.prior = torch.ones(0, dtype=torch.float64)
        self._on_device: dict = {}
        self.device = torch.device("cpu")

    def setup(self, tasks: list[str], prior: dict[str, float] | None = None) -> "Balancer":
        """Bind to the tasks (in order) with static prior weights; resets learned state."""
        self.tasks = list(tasks)
        prior = prior or {}
        unknown = set(prior) - set(self.tasks)
        if unknown:
            raise ValueError(f"weights given for unknown task(s) {sorted(unknown)}; tasks: {self.tasks}")
        self.prior = torch.tensor([float(prior.get(t, 1.0)) for t in self.tasks], dtype=torch.float64)
        self._on_device = {}  # (device, dtype) -> the prior there (no copy to the GPU per step)
        self._reset()
        return self

    def _reset(self) -> None:
        pass

    def to(self, device) -> "Balancer":
        """Keep the learned state (and own parameters) on ``device``, the training device
        (MTLBackward calls it before the optimizer sees :meth:`parameters`), so a step's
        weights are computed there without a copy to or from the host."""
        self.device = torch.device(device)
        self._moved()
        return self

    def _moved(self) -> None:
        pass

    def _prior(self, device, dtype=torch.float64) -> torch.Tensor:
        key = (torch.device(device), dtype)
        if key not in self._on_device:
            self._on_device[key] = self.prior.to(key[0], dtype)
        return self._on_device[key]

    def weights(self, losses: torch.Tensor, grads: torch.Tensor | None) -> torch.Tensor:
        """(T,) detached weights for this step (prior × learned), from the (T,) scalar
        losses, on the losses' device (computed in float64, then the losses' dtype)."""
        learned = self._learned(losses, grads)
        if learned is None:  # prior × 1
            return self._prior(losses.device, losses.dtype)
        return (self._prior(losses.device) * learned.to(losses.device, torch.float64)).to(losses.dtype)

    def _learned(self, losses: torch.Tensor, grads: torch.Tensor | None) -> torch.Tensor | None:
        """The (T,) learned factor of the weights; None: none (all ones)."""
        return None

    def backward_own(self, losses: torch.Tensor) -> None:
        """Accumulate gradients into the balancer's own parameters (if any)."""

    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    def current(self) -> torch.Tensor:
        """The (T,) weights the next step would use (prior × learned)."""
        return self.prior.float()

    def state_dict(self) -> dict:
        """What a resumed run needs (JSON-ready)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Static(Balancer):
    name = "static"


class Uncertainty(Balancer):
    name = "uncertainty"

    def _reset(self) -> None:
        self.log_var = torch.nn.Parameter(torch.zeros(len(self.tasks)))

    def _moved(self) -> None:
        self.log_var = torch.nn.Parameter(self.log_var.detach().to(self.device))

    def _learned(self, losses, grads):
        return torch.exp(-self.log_var.detach())

    def backward_own(self, losses):
        s = self.log_var
        (torch.exp(-s) * losses.detach().to(s.device, s.dtype) + s).sum().backward()

    def parameters(self):
        return [self.log_var]

    def state_dict(self):
        return {"log_var": self.log_var.detach().cpu().tolist()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.log_var.copy_(torch.tensor(state["log_var"], dtype=self.log_var.dtype))

    def current(self):
        return self.prior.float().to(self.log_var.device) * torch.exp(-self.log_var.detach())


class GradNorm(Balancer):
    name = "gradnorm"
    needs_grads = True

    def __init__(self, alpha: float = 1.5, lr: float = 0.1):
        super().__init__()
        if not alpha >= 0 or not lr > 0:
            raise ValueError(f"GradNorm needs alpha >= 0 and lr > 0, got alpha={alpha}, lr={lr}")
        self.alpha, self.lr = float(alpha), float(lr)

    def _reset(self) -> None:
        self.w = torch.ones(len(self.tasks), dtype=torch.float64, device=self.device)
        self.initial: torch.Tensor | None = None

    def _moved(self) -> None:
        self.w = self.w.to(self.device)
        self.initial = None if self.initial is None else self.initial.to(self.device)

    def _learned(self, losses, grads):
        if grads is None:
            raise ValueError("GradNorm needs the per-task gradients of the shared parameters")
        # all on the training device: no per-step copy to the host
        if self.w.device != losses.device:
            self.device = losses.device
            self._moved()
        w_used = self.w.clone()
        loss = losses.detach().double()
        if self.initial is None:
            self.initial = loss.clamp_min(1e-12)
        norms = grads.detach().double().norm(dim=1) * self._prior(grads.device)
        weighted = self.w * norms
        ratio = loss / self.initial
        rate = ratio / ratio.mean().clamp_min(1e-12)
        target = weighted.mean() * rate.pow(self.alpha)
        # GradNorm's loss sum_t |w_t ||g_t|| - target_t| (target held constant) has
        # gradient sign(.)·||g_t|| in w_t; we take that step in log w with a fixed
        # size (as Adam would), so the rule does not depend on the gradients' units.
        log_w = self.w.log() - self.lr * torch.sign(weighted - target)
        w = log_w.exp()
        self.w = w * len(self.tasks) / w.sum()  # weights keep summing to T
        return w_used

    def current(self):
        return (self._prior(self.w.device) * self.w).float()

    def state_dict(self):
        return {"w": self.w.tolist(), "initial": None if self.initial is None else self.initial.tolist()}

    def load_state_dict(self, state):
        dev = self.device
        self.w = torch.tensor(state["w"], dtype=torch.float64, device=dev)
        self.initial = (
            None if state["initial"] is None else torch.tensor(state["initial"], dtype=torch.float64, device=dev)
        )

    def to_dict(self):
        return {"name": self.name, "alpha": self.alpha, "lr": self.lr}


BALANCERS = {"static": Static, "uncertainty": Uncertainty, "gradnorm": GradNorm}


def balancer_from(spec: "Balancer | str | dict | None") -> Balancer:
    """A balancing strategy from its name or its ``to_dict()`` form (a run's config.json)."""
    return from_spec(Balancer, BALANCERS, spec, "balancing", Static)
