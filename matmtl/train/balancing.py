"""How the trainer turns per-task losses into one parameter update: a thin adapter
over :mod:`matmtl.mtl` (loss balancing, gradient surgery, L2-SP soft sharing and the
gradient-geometry monitor), with the state a resumed run needs."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..errors import MatmtlError
from ..mtl import BALANCERS, SURGERIES, GeometryMonitor, MTLBackward, make_balancer


@dataclass
class MTLSettings:
    balance: str = "static"  # static | uncertainty | gradnorm
    surgery: str = "none"  # none | pcgrad | halfspace
    soft_share: float = 0.0  # L2-SP strength towards the pretrained encoder (fine-tuning)
    monitor_every: int = 0  # 0 = no gradient-geometry monitor
    monitor_k: int = 4  # micro-batches per task gradient subspace

    def __post_init__(self) -> None:
        if self.balance not in BALANCERS:
            raise MatmtlError(f"--balance: unknown {self.balance!r}; choose from {', '.join(BALANCERS)}")
        if self.surgery not in SURGERIES:
            raise MatmtlError(f"--surgery: unknown {self.surgery!r}; choose from {', '.join(SURGERIES)}")
        if self.soft_share < 0:
            raise MatmtlError(f"--soft-share must be >= 0, got {self.soft_share}")
        if self.monitor_every < 0 or self.monitor_k < 2:
            raise MatmtlError(f"--monitor-every must be >= 0 and --monitor-k >= 2 (got {self.monitor_every}, {self.monitor_k})")

    def to_dict(self) -> dict:
        return asdict(self)


class MTLCombiner:
    """Per-task losses -> gradients, for the tasks in ``tasks`` (the first is the main task)."""

    def __init__(self, tasks: list[str], weights: dict[str, float], settings: MTLSettings,
                 reference: list[torch.Tensor] | None = None, seed: int = 0):
        self.tasks = list(tasks)
        self.settings = settings
        self.weights = {t: float(weights.get(t, 1.0)) for t in self.tasks}
        self.balancer = make_balancer(settings.balance, self.tasks, self.weights)
        self.reference = reference
        self.seed = seed
        self.mtl: MTLBackward | None = None
        self.records: list[dict] = []  # gradient-geometry records, kept across resumes

    def bind(self, model) -> None:
        """Attach to the model (after it has been moved to its device)."""
        s = self.settings
        monitor = GeometryMonitor(s.monitor_every, s.monitor_k) if s.monitor_every and len(self.tasks) > 1 else None
        self.mtl = MTLBackward(model.parameters(), model.shared_parameters(), self.tasks, balance=self.balancer,
                               surgery=s.surgery, main_task=self.tasks[0], soft_share=s.soft_share,
                               monitor=monitor, seed=self.seed, reference=self.reference)

    @property
    def monitor_k(self) -> int:
        return self.settings.monitor_k

    def parameters(self) -> list[torch.nn.Parameter]:
        return self.balancer.parameters()

    def monitor_due(self) -> bool:
        return self.mtl.monitor_due()

    def backward(self, losses: dict[str, torch.Tensor], features) -> dict:
        return self.mtl.backward(losses, features)

    def backward_microbatches(self, losses: dict[str, list[torch.Tensor]], features: list) -> dict:
        return self.mtl.backward_microbatches(losses, features)

    @property
    def trace(self) -> list[dict]:
        """Every gradient-geometry record so far (finishing pending ones)."""
        if self.mtl is not None and self.mtl.monitor is not None:
            self.mtl.monitor.poll()
            self.records.extend(self.mtl.monitor.records)
            self.mtl.monitor.records = []
        return self.records

    def close(self) -> list[dict]:
        if self.mtl is not None and self.mtl.monitor is not None:
            self.records.extend(self.mtl.monitor.close())
            self.mtl.monitor.records = []
        return self.records

    # -- resumable state (small: JSON) ---------------------------------------------------
    def state(self) -> dict:
        return {"step": self.mtl.step, "balancer": self.balancer.state_dict(), "records": self.trace}

    def load_state(self, state: dict) -> None:
        self.mtl.step = int(state.get("step", 0))
        if "balancer" in state:
            self.balancer.load_state_dict(state["balancer"])
        self.records = list(state.get("records", []))

    def config(self) -> dict:
        return {"tasks": self.tasks, "weights": self.weights, **self.settings.to_dict()}


def make_combiner(tasks: list[str], weights: dict[str, float] | None = None, settings: MTLSettings | None = None,
                  reference: list[torch.Tensor] | None = None, seed: int = 0) -> MTLCombiner:
    return MTLCombiner(tasks, weights or {}, settings or MTLSettings(), reference, seed)
