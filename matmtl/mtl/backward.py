"""One call in place of ``loss.backward()`` for a multi-task model."""

from __future__ import annotations

from typing import Iterable

import torch

from ..distributed import World
from .balance import Balancer, Static
from .gradients import chunked_shared_grads, shared_grads
from .monitor import GeometryMonitor
from .surgery import Sum, Surgery


class MTLBackward:
    """Balancing, gradient surgery, soft sharing and geometry monitoring for any
    PyTorch multi-task model whose task heads read one shared representation.

    >>> mtl = MTLBackward(model.parameters(), shared=model.encoder.parameters(),
    ...                   tasks=["gap", "e_form"], balancer=GradNorm(), surgery=PCGrad())
    >>> optimizer = torch.optim.AdamW([*model.parameters(), *mtl.parameters()])
    >>> z = model.encoder(x)                                   # shared representation
    >>> losses = {"gap": mae(model.gap(z), y1), "e_form": mae(model.ef(z), y2)}
    >>> info = mtl.backward(losses, z)                         # instead of loss.backward()
    >>> optimizer.step()

    ``losses`` are scalar tensors. ``features`` is the shared representation all heads
    read; with it the per-task gradients cost one batched (vmapped) backward pass through
    the encoder
    (see :mod:`matmtl.mtl.gradients`). The fast path (static weights, no surgery, no
    monitor step) is a plain ``backward()`` of the weighted sum.

    ``balancer`` (:mod:`matmtl.mtl.balance`: ``Static()``, ``Uncertainty()``,
    ``GradNorm(alpha)``) scales the task losses, with ``weights`` as static prior weights;
    ``surgery`` (:mod:`matmtl.mtl.surgery`: ``Sum()``, ``PCGrad()``, ``HalfSpace(main)``)
    combines the weighted task gradients of the shared parameters.

    On steps where :meth:`monitor_due` is true, run the encoder on k micro-batches
    (``k = monitor.k``; each task's rows split into k parts) and call
    :meth:`backward_microbatches`. That step costs about T backward passes in all (per
    micro-batch, the T task signals through that micro-batch's part of the graph in one
    batched pass), and the monitor gets the (T, k, d) gradients;
    :meth:`records` returns what it measured.

    ``soft_share`` > 0 adds the L2-SP penalty (lambda/2)·||theta - theta_ref||^2 on the
    shared parameters; theta_ref is ``reference`` (e.g. the pretrained weights), by
    default the shared parameters' values when this object was made.

    A task with no loss this step (no labelled rows in the batch) may be given a
    zero tensor that does not require grad; it then contributes nothing.

    :meth:`backward` returns the step's log as 0-d tensors (``total``, ``w_<task>``,
    ``loss_<task>``) on the losses' device: reading one (``float()``) waits for the GPU, so
    a training loop adds them up on the device and reads them now and then.
    ``check_every_step`` (default True): a non-finite task loss raises FloatingPointError
    in the step itself (one read of the device per step); False defers the check to
    :meth:`check_finite`, which a GPU training loop calls once per epoch.

    :meth:`state_dict` / :meth:`load_state_dict` hold what a resumed run needs (step
    count, the balancer's learned state, the monitor's records), JSON-ready.

    **Several processes** (``world``, a :class:`matmtl.distributed.World` of more than one
    process; each process passes the losses of its share of the batch, with denominators
    of the whole batch, so they add up to the batch's losses): the task losses and the
    (T, d) task gradients, and on monitored steps the (T, k, d) samples, are summed over
    the processes *before* weighting, surgery and the monitor, so every process takes the
    same step that one process would take on the whole batch (PCGrad, half-space and
    GradNorm are not linear in the gradients: averaging per-process updates would not be
    that step). The other parameters' gradients (heads) are summed after the backward
    pass, unless ``backward(..., ddp=True)`` says DistributedDataParallel's hooks already
    did it. Call ``zero_grad`` before every step: the gradients summed are the ``.grad``
    contents. Only the main process feeds the monitor.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        shared: Iterable[torch.nn.Parameter],
        tasks: list[str],
        *,
        balancer: Balancer | None = None,
        weights: dict[str, float] | None = None,
        surgery: Surgery | None = None,
        soft_share: float = 0.0,
        reference: Iterable[torch.Tensor] | None = None,
        monitor: GeometryMonitor | None = None,
        seed: int = 0,
        world: World | None = None,
    ):
        self.shared = [p for p in shared if p.requires_grad]
        ids = {id(p) for p in self.shared}
        self.others = [p for p in params if p.requires_grad and id(p) not in ids]
        if not self.shared:
            raise ValueError("no trainable shared parameters given")
        self.tasks = list(tasks)
        for name, obj, kind in (("balancer", balancer, Balancer), ("surgery", surgery, Surgery)):
            if obj is not None and not isinstance(obj, kind):
                raise TypeError(
                    f"{name} must be a {kind.__module__}.{kind.__name__} object "
                    f"(e.g. {'GradNorm()' if kind is Balancer else 'PCGrad()'}), got {obj!r}"
                )
        self.balancer = (balancer or Static()).setup(self.tasks, weights).to(self.shared[0].device)
        self.surgery = (surgery or Sum()).setup(self.tasks)
        if soft_share < 0:
            raise ValueError(f"soft_share must be >= 0, got {soft_share}")
        self.soft_share = float(soft_share)
        self.reference = None  # L2-SP: the weights the shared parameters are pulled towards
        if soft_share > 0:
            ref = list(reference) if reference is not None else [p.detach() for p in self.shared]
            if [tuple(r.shape) for r in ref] != [tuple(p.shape) for p in self.shared]:
                raise ValueError("soft-sharing reference weights do not match the shared parameters' shapes")
            self.reference = [r.detach().to(p.device, p.dtype).clone() for r, p in zip(ref, self.shared)]
        self.monitor = monitor
        self._records: list[dict] = []  # monitor records collected so far (kept across resumes)
        self._grad_buffer: torch.Tensor | None = None
        self.seed = int(seed)
        self.step = 0
        self.world = world or World()
        self.check_every_step = True
        self._first_bad: torch.Tensor | None = None  # deferred check: first step with a non-finite loss (-1: none)
        self._bad_tasks: torch.Tensor | None = None  # ... and which tasks' losses were not finite there

    def parameters(self) -> list[torch.nn.Parameter]:
        """The balancer's own learnable parameters (uncertainty weighting); add them to the optimizer."""
        return self.balancer.parameters()

    def monitor_due(self) -> bool:
        """Whether this step feeds the monitor (then pass k micro-batches, see above)."""
        return self.monitor is not None and len(self.tasks) > 1 and self.monitor.due(self.step)

    def plain_step(self) -> bool:
        """Whether the next :meth:`backward` is one ordinary backward pass of the weighted
        sum (no per-task gradients: static or uncertainty weights, no surgery, no monitor
        step); only such a step may run under DistributedDataParallel (``ddp=True``)."""
        return not (self.surgery.needs_grads or self.balancer.needs_grads or self.monitor_due())

    def backward(self, losses: dict[str, torch.Tensor], features=None, *, ddp: bool = False) -> dict:
        """One step's backward pass from the T scalar task losses. ``features``: the
        shared representation the heads read (a tensor, or a tuple of tensors when the
        heads read several batches); without it per-task gradients need one backward
        pass per task. ``ddp``: the forward pass ran through DistributedDataParallel,
        whose hooks sum this :meth:`plain_step`'s gradients over the processes."""
        if self.monitor_due():
            raise ValueError(
                f"step {self.step} feeds the gradient monitor: call backward_microbatches with the encoder "
                f"run on k={self.monitor.k} micro-batches (see MTLBackward.monitor_due)"
            )
        if ddp and not self.plain_step():
            raise ValueError("ddp=True needs a plain step: DDP's hooks never see per-task gradients")
        scalars = self._check(losses, lambda v: torch.is_tensor(v) and v.dim() == 0, "a scalar tensor")
        grads = None
        if self.surgery.needs_grads or self.balancer.needs_grads:
            grads = self.world.sum_(self._task_grads(scalars, features), self._doing("the task gradients"))
        return self._finish(scalars, grads, ddp=ddp)

    def backward_microbatches(self, losses: dict[str, list[torch.Tensor]], features: list) -> dict:
        """A step over k micro-batches: ``features[c]`` is micro-batch c's shared
        representation (tensor or tuple), ``losses[t][c]`` task t's loss on it; the task
        loss is the mean over micro-batches. The per-task gradients cost T backward
        passes in all; on a monitor step the (T, k, d) gradients go to the monitor."""
        k = len(features)
        self._check(losses, lambda v: isinstance(v, (list, tuple)) and len(v) == k, f"a list of {k} micro-batch losses")
        parts = {t: list(losses[t]) for t in self.tasks}
        per_chunk = chunked_shared_grads(parts, features, self.shared, out=self._buffer(k))  # (T, k, d)
        self.world.sum_(per_chunk, self._doing("the micro-batch task gradients"))
        if self.monitor_due() and self.world.is_main:
            self.monitor.submit(self.step, self.tasks, per_chunk.detach())
        scalars = {t: torch.stack(parts[t]).mean() for t in self.tasks}
        if self.surgery.needs_grads or self.balancer.needs_grads:
            return self._finish(scalars, per_chunk.mean(dim=1))
        return self._finish(scalars, per_chunk, chunked=True)

    def _buffer(self, k: int) -> torch.Tensor:
        """The (T, k, d) gradient buffer, kept between monitored steps: a fresh one
        would cost page faults on every such step. Reusing it is safe: the monitor
        reads it before returning, or copies it (background thread, pinned copy)."""
        d = sum(p.numel() for p in self.shared)
        p0 = self.shared[0]
        buf = self._grad_buffer
        if (
            buf is None
            or tuple(buf.shape) != (len(self.tasks), k, d)
            or buf.device != p0.device
            or buf.dtype != p0.dtype
        ):
            buf = self._grad_buffer = torch.empty(len(self.tasks), k, d, dtype=p0.dtype, device=p0.device)
        return buf

    def _check(self, losses: dict, ok, what: str) -> list:
        missing = [t for t in self.tasks if t not in losses]
        if missing:
            raise ValueError(f"losses missing for task(s) {missing}")
        wrong = [t for t in self.tasks if not ok(losses[t])]
        if wrong:
            raise ValueError(f"loss of task(s) {wrong} must be {what}")
        return [losses[t] for t in self.tasks]

    def _doing(self, what: str) -> str:
        return f"summing {what} at step {self.step}"

    def _finish(self, scalars, grads: torch.Tensor | None, ddp: bool = False, chunked: bool = False) -> dict:
        """``scalars``: this process's part of each task loss; ``grads``: the (T, d) task
        gradients of the whole batch (summed over processes), or None; with ``chunked``,
        the (T, k, d) micro-batch gradients whose mean over k is that (only for the plain
        sum: no surgery and a balancer that does not read gradients)."""
        if isinstance(scalars, dict):
            scalars = [scalars[t] for t in self.tasks]
        stacked = torch.stack(list(scalars))
        losses = self.world.sum_(stacked.detach().clone(), self._doing("the task losses"))  # the whole batch's
        # (the sums: every process raises together)
        if self.check_every_step:
            if not torch.isfinite(losses).all():
                self._raise_nonfinite(~torch.isfinite(losses), self.step)
        else:
            self._note_nonfinite(losses)
        w = self.balancer.weights(losses, None if chunked else grads)
        total = (w.to(stacked.dtype) * stacked).sum()
        # without per-task gradients one ordinary backward pass does everything;
        # with them, it only serves the task-specific parameters (heads)
        inputs = self.shared + self.others if grads is None else self.others
        if total.requires_grad and inputs:  # (not: no task had labelled rows here this step)
            total.backward(inputs=inputs)
        if not ddp:
            self.world.sum_grads_(inputs, self._doing("the gradients"))
        if chunked:  # sum_t w_t mean_c g_tc in one pass over the samples: no (T, d) intermediates
            n, k, d = grads.shape
            self._add_to_shared(grads.view(n * k, d).T @ (w.to(grads.dtype) / k).repeat_interleave(k))
        elif grads is not None:
            weighted = grads * w.to(grads.dtype).unsqueeze(1)
            self._add_to_shared(self.surgery(weighted, seed=self.seed + self.step))
        self.balancer.backward_own(losses)
        if self.reference is not None:
            for p, p0 in zip(self.shared, self.reference):
                penalty = self.soft_share * (p.detach() - p0)
                p.grad = penalty if p.grad is None else p.grad + penalty
        self.step += 1
        return {
            "total": (w.to(losses.dtype) * losses).sum(),
            **{f"w_{t}": x for t, x in zip(self.tasks, w)},
            **{f"loss_{t}": x for t, x in zip(self.tasks, losses)},
        }

    def _note_nonfinite(self, losses: torch.Tensor) -> None:
        """Deferred check: remember (on the device) the first step with a non-finite loss."""
        bad = ~torch.isfinite(losses)
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.int64, device=losses.device)
            self._bad_tasks = torch.zeros_like(bad)
        first = (self._first_bad < 0) & bad.any()
        self._first_bad = torch.where(first, torch.full_like(self._first_bad, self.step), self._first_bad)
        self._bad_tasks = torch.where(first, bad, self._bad_tasks)

    def check_finite(self) -> None:
        """Raise FloatingPointError if a step since the last call had a non-finite task
        loss (with ``check_every_step`` False; one read of the device)."""
        if self._first_bad is None:
            return
        first, bad = int(self._first_bad), self._bad_tasks
        self._first_bad = self._bad_tasks = None
        if first >= 0:
            self._raise_nonfinite(bad, first)

    def _raise_nonfinite(self, bad: torch.Tensor, step: int):
        names = [t for t, b in zip(self.tasks, bad.tolist()) if b]
        raise FloatingPointError(f"non-finite loss for task(s) {names} at step {step}")

    def _task_grads(self, scalars: list[torch.Tensor], features) -> torch.Tensor:
        if features is not None:
            return shared_grads(scalars, features, self.shared)
        rows = []  # without the shared representation: one backward pass per task
        for loss in scalars:
            if not loss.requires_grad:
                gs = [None] * len(self.shared)
            else:
                gs = torch.autograd.grad(loss, self.shared, retain_graph=True, allow_unused=True)
            rows.append(
                torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(gs, self.shared)])
            )
        return torch.stack(rows)

    def _add_to_shared(self, update: torch.Tensor) -> None:
        offset = 0
        for p in self.shared:
            g = update[offset : offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()
            p.grad = g.clone() if p.grad is None else p.grad + g

    def records(self) -> list[dict]:
        """Every gradient-geometry record so far (collecting finished background work)."""
        if self.monitor is not None:
            self.monitor.poll()
            self._records.extend(self.monitor.records)
            self.monitor.records = []
        return self._records

    def close(self) -> list[dict]:
        """Finish the monitor's pending work; returns every record (empty without a monitor)."""
        if self.monitor is not None:
            self._records.extend(self.monitor.close())
            self.monitor.records = []
        return self._records

    # -- resumable state (small: JSON) ---------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step, "balancer": self.balancer.state_dict(), "records": list(self.records())}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state.get("step", 0))
        if state.get("balancer"):
            self.balancer.load_state_dict(state["balancer"])
        self._records = list(state.get("records", []))

    def config(self) -> dict:
        """The settings (JSON-ready), as stored in a checkpoint's metadata."""
        return {
            "tasks": self.tasks,
            "weights": dict(zip(self.tasks, self.balancer.prior.tolist())),
            "balancer": self.balancer.to_dict(),
            "surgery": self.surgery.to_dict(),
            "soft_share": self.soft_share,
            "monitor": None if self.monitor is None else {"every": self.monitor.every, "k": self.monitor.k},
        }
