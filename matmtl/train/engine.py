"""The training engine shared by pretraining and fine-tuning.

Determinism: every epoch re-seeds torch and numpy from ``(seed, epoch)``, so a run
resumed from the state saved after epoch k draws exactly the batches, symmetry
dropout masks and bootstrap draws an uninterrupted run would; with the same thread
count on CPU a seeded run repeats bit for bit. The learning rate is a pure function
of the step (linear warm-up, cosine decay), so no scheduler state is needed.

Host synchronisation: a training step on CUDA never waits for the GPU. Which rows a
step trains, which tasks have labels among them, how wide (in element slots) a batch is
and which rows are labelled are all read from the host-side arrays; the few index arrays
a step needs go to the GPU in one non-blocking copy from pinned memory; the losses to log
add up on the device and are read once per epoch (and every 100 steps for the progress
bar, when it is shown); non-finite losses are checked once per epoch on CUDA (every step
on CPU, where a check costs nothing). What still waits: gradient surgery's small Gram
matrix (PCGrad, :mod:`matmtl.geometry`), the end of every epoch (validation scores,
early stopping, the saved state), and with several processes the "has a gradient" flags
of steps not under DistributedDataParallel.

Precision: ``TrainConfig.precision="bf16"`` runs the encoder and heads under
``torch.autocast(dtype=bfloat16)``; the shared representation and the head outputs are
cast back to fp32, so losses, the per-task gradients (balancing, surgery, monitor) and
the optimiser are fp32. ``"fp32"`` (the default) enters no autocast at all.

Several processes (``torchrun``; :mod:`matmtl.distributed`): every process draws the same
seeded batch plan and takes its contiguous share of each (global) batch; the loss
denominators, the "task has labelled rows" flags and the symmetry-dropout mask belong to
the global batch's rows, and :class:`~matmtl.mtl.MTLBackward` sums losses and gradients
over the processes, so a run takes the steps one process would take with the same
``batch_size`` (up to the order of float sums). Plain steps (no per-task gradients) run
under DistributedDataParallel; rank 0 alone scores the validation rows and writes files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from ..checkpoints import CheckpointError, load_tensors, optimizer_tensors, read_json, restore_optimizer, save_tensors
from ..config import MTLConfig, TrainConfig
from ..distributed import World
from ..errors import DistributedError
from ..io import atomic_write_json, sha256_of
from ..metrics import regression_metrics
from ..models import MultiTaskModel, TaskSpec
from ..mtl import GeometryMonitor, MTLBackward
from .selection import BestEpoch


@dataclass
class TaskData:
    """Featurized rows with one target column per task (NaN = no label) and fixed
    per-row bootstrap weights for the ensemble members (online bootstrap)."""

    z: np.ndarray
    frac: np.ndarray
    spg: np.ndarray
    targets: dict[str, np.ndarray]
    boot: np.ndarray | None = None  # (n, members)

    def __len__(self) -> int:
        return len(self.z)

    def subset(self, idx) -> "TaskData":
        return TaskData(
            self.z[idx],
            self.frac[idx],
            self.spg[idx],
            {k: v[idx] for k, v in self.targets.items()},
            None if self.boot is None else self.boot[idx],
        )

    def with_bootstrap(self, members: int, seed: int) -> "TaskData":
        rng = np.random.default_rng([seed, 7919])
        boot = rng.poisson(1.0, size=(len(self), members)).astype(np.float32)
        if members == 1:
            boot[:] = 1.0
        return TaskData(self.z, self.frac, self.spg, self.targets, boot)

    def digest(self) -> str:
        parts = [self.z.tobytes(), self.frac.tobytes(), self.spg.tobytes()]
        parts += [k.encode() + np.asarray(v, dtype=np.float64).tobytes() for k, v in sorted(self.targets.items())]
        return sha256_of(*parts)

    def elements(self) -> list[int]:
        return sorted(int(v) for v in np.unique(self.z) if v > 0)


@dataclass
class Source:
    """A stream of batches: the main source sets the epoch length; auxiliary sources
    (e.g. replayed DFT data) are cycled alongside it, one batch per main batch."""

    data: TaskData
    tasks: list[str]
    batch_size: int
    label: str = "main"


CUBLAS_WORKSPACE = ":4096:8"  # what cuBLAS needs for deterministic results (CUDA >= 10.2)


def set_determinism(seed: int, threads: int, device: str | torch.device = "cpu", deterministic: bool = False) -> None:
    """Seed torch and fix the CPU thread count. CPU: deterministic algorithms where torch
    has a choice (warnings only), as always; a seeded CPU run with the same thread count
    repeats bit for bit, so ``deterministic`` changes nothing there. CUDA: see
    :func:`cuda_determinism`."""
    torch.manual_seed(seed)
    if threads > 0:
        torch.set_num_threads(threads)
    if torch.device(device).type == "cuda":
        cuda_determinism(deterministic)
        return
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
    except Exception:  # pragma: no cover - older torch
        pass


def cuda_determinism(on: bool) -> None:
    """``on``: deterministic kernels only (an op without one raises), cuBLAS's fixed
    workspace (``CUBLAS_WORKSPACE_CONFIG``, read when cuBLAS starts: set here when CUDA has
    not started yet, else a warning says to set it in the environment), cuDNN's
    deterministic algorithms without autotuning. Off: torch's fast (default) kernels."""
    if not on:
        torch.use_deterministic_algorithms(False)
        return
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in (CUBLAS_WORKSPACE, ":16:8"):
        if torch.cuda.is_initialized():
            warnings.warn(
                "TrainConfig.deterministic: CUDA has started already, so CUBLAS_WORKSPACE_CONFIG set now may "
                f"come too late for cuBLAS; start the process with CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE} "
                "for deterministic matrix products",
                stacklevel=2,
            )
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def pick_device(name: str) -> str:
    from ..errors import MatmtlError

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise MatmtlError("device 'cuda': no CUDA GPU is available here; use device 'cpu' or 'auto'")
    if name not in ("cpu", "cuda"):
        raise MatmtlError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    return name


def lr_at(step: int, total: int, base: float, warmup: float) -> float:
    warm = max(1, int(warmup * total))
    if step < warm:
        return base * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def epoch_batches(data: TaskData, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches grouped by element count (less padding = faster steps)."""
    width = (data.z > 0).sum(1)
    order = np.lexsort((rng.random(len(data)), width))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def loss_denominators(task: TaskSpec, y: torch.Tensor, boot: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    """The denominators of a head's loss over a batch's rows (targets ``y``, bootstrap
    weights ``boot``): the bootstrap weight of the labelled rows, and for hurdle heads
    that of the non-metal rows; None when no row carries a label (this reads the device:
    the trainer finds the labelled rows on the host and calls :func:`labelled_denominators`)."""
    mask = torch.isfinite(y)
    if not bool(mask.any()):
        return None
    return labelled_denominators(task, y[mask], boot[mask])


def labelled_denominators(task: TaskSpec, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """:func:`loss_denominators` of the labelled rows alone (targets ``y``, bootstrap weights ``w``)."""
    denom = w.sum().clamp_min(1.0)
    if task.kind == "hurdle":
        pos = (y > 0).float().unsqueeze(1) * w
        return denom, pos.sum().clamp_min(1.0)
    return (denom,)


def task_loss(
    task: TaskSpec, raw: torch.Tensor, y: torch.Tensor, boot: torch.Tensor, denoms: tuple | None = None
) -> torch.Tensor | None:
    """Bootstrap-weighted loss of one head; rows without a label (NaN) are masked.
    regression: L1 on the normalised scale. hurdle: BCE(metal) + L1 of the positive gap
    (eV) on the non-metal rows. ``denoms``: :func:`loss_denominators` of the whole batch
    when these rows are one process's share of it (the shares' losses then add up to the
    batch's loss); default: those of these rows (None when none is labelled)."""
    if denoms is None:
        denoms = loss_denominators(task, y, boot)
        if denoms is None:
            return None
    mask = torch.isfinite(y)
    return labelled_loss(task, raw[mask], y[mask], boot[mask], denoms)


def labelled_loss(task: TaskSpec, raw: torch.Tensor, y: torch.Tensor, w: torch.Tensor, denoms: tuple) -> torch.Tensor:
    """:func:`task_loss` of labelled rows alone: head outputs ``raw`` (b, m, o), targets
    ``y`` (b,), bootstrap weights ``w`` (b, m); always fp32 (head outputs are cast)."""
    raw = raw.float()
    if task.kind == "hurdle":
        metal = (y <= 0).float().unsqueeze(1).expand_as(w)
        bce = F.binary_cross_entropy_with_logits(raw[..., 0], metal, reduction="none")
        pos = (y > 0).float().unsqueeze(1) * w
        l1 = (F.softplus(raw[..., 1]) - y.unsqueeze(1)).abs()
        return (bce * w).sum() / denoms[0] + (l1 * pos).sum() / denoms[1]
    yn = ((y - task.mean) / task.std).unsqueeze(1)
    return ((raw[..., 0] - yn).abs() * w).sum() / denoms[0]


@dataclass
class _Part:
    """One source's rows in a step: the global batch's ``rows`` (every process has the
    same) and, per task with labelled rows among them, (task, loss key, denominators).
    This process's share of the rows: ``share`` (on the device), ``width`` (its widest
    row's element count, read on the host) and per loss key the labelled rows' positions
    in the share and their row numbers (``labelled``, on the device)."""

    source: int
    rows: np.ndarray
    tasks: list[tuple[str, str, tuple]]
    share: torch.Tensor | None = None
    width: int = 1
    labelled: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


class _StepForward(torch.nn.Module):
    """A step's forward pass as one module call, so DistributedDataParallel can wrap it
    (its hooks then sum a plain step's gradients in buckets while the backward runs)."""

    def __init__(self, model: torch.nn.Module, forward: Callable):
        super().__init__()
        self.model = model  # (a submodule: DDP finds the parameters here)
        self.step_forward = forward

    def forward(self, parts):
        return self.step_forward(parts)


def _sum_hook(state, bucket):
    """DDP communication hook: the sum over processes (DDP's own hook averages; our
    processes' losses already carry the global batch's denominators)."""
    import torch.distributed as dist

    return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda fut: fut.value()[0])


class Trainer:
    """Runs epochs over a main source (+ auxiliary sources), saving a resumable state
    (``state/``) atomically after every epoch."""

    def __init__(
        self,
        model: MultiTaskModel,
        cfg: TrainConfig,
        mtl: MTLConfig,
        sources: list[Source],
        state_dir: Path,
        evaluate: Callable[[MultiTaskModel], dict] | None = None,
        *,
        weights: dict[str, float] | None = None,
        reference: list[torch.Tensor] | None = None,
        select: str | None = None,
        progress: bool = True,
        label: str = "train",
        world: World | None = None,
    ):
        self.model, self.cfg, self.sources = model, cfg, sources
        self.state_dir = Path(state_dir)
        self.evaluate = evaluate
        self.world = world or World()
        self.progress = progress and self.world.is_main
        self.label = label
        self.device = self.world.device(cfg.device)
        self.model.to(self.device)
        self.mtl = build_mtl(model, task_keys(sources), weights or {}, mtl, reference, cfg.seed, self.world)
        # CPU: a non-finite loss raises at once (the check costs nothing); elsewhere it is
        # checked once per epoch (before the state is saved), not at every step
        self.mtl.check_every_step = self.device.type == "cpu"
        params = [p for p in model.parameters() if p.requires_grad] + self.mtl.parameters()
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.steps_per_epoch = math.ceil(len(sources[0].data) / sources[0].batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.epoch = 0
        self.step = 0
        self.history: list[dict] = []
        self.best = BestEpoch(select if evaluate is not None else None, cfg.patience, cfg.average_epochs)
        self.stopped_early = False
        self._tensors = [self._to_tensors(s.data) for s in sources]
        # host-side copies of what a step needs to know about its rows (no device reads)
        self._widths = [np.maximum((s.data.z > 0).sum(1), 1) for s in sources]
        self._has_label = [{t: np.isfinite(s.data.targets[t]) for t in s.tasks} for s in sources]
        self._bf16 = cfg.precision == "bf16"
        self._zero = torch.zeros((), device=self.device)  # the loss of a task without rows in a batch
        self._ddp = self._wrap_ddp()

    def _wrap_ddp(self):
        """With several processes, DistributedDataParallel around the step's forward pass,
        for the plain steps (see :meth:`MTLBackward.plain_step`); None when no step is
        plain (per-task gradients every step) or with one process."""
        if self.world.size == 1 or self.mtl.surgery.needs_grads or self.mtl.balancer.needs_grads:
            return None
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        # the buffers (element table, Fourier frequencies) never change: no broadcast before every forward
        quiet = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        sync = {"forward_sync_buffers": False} if quiet else {"broadcast_buffers": False}
        step = _StepForward(self.model, self._forward)
        with self.world.failing("setting up DistributedDataParallel"):
            ddp = DistributedDataParallel(step, find_unused_parameters=self._some_heads_may_idle(), **sync)
        ddp.register_comm_hook(None, _sum_hook)
        return ddp

    def _some_heads_may_idle(self) -> bool:
        """Whether a step may leave a head without a gradient: a head no source trains, or
        a task some of whose rows carry no label (a batch may hold none). DDP then has to
        look for unused parameters after every forward pass."""
        trained = {t for s in self.sources for t in s.tasks}
        unlabelled = any(not np.isfinite(s.data.targets[t]).all() for s in self.sources for t in s.tasks)
        return unlabelled or set(self.model.heads) != trained

    def _to_tensors(self, d: TaskData) -> dict:
        dev = self.device
        out = {
            "z": torch.as_tensor(d.z, device=dev),
            "frac": torch.as_tensor(d.frac, device=dev),
            "spg": torch.as_tensor(d.spg, device=dev),
            "boot": torch.as_tensor(
                d.boot if d.boot is not None else np.ones((len(d), self.model.cfg.members), np.float32), device=dev
            ),
        }
        out["y"] = {k: torch.as_tensor(np.asarray(v, dtype=np.float32), device=dev) for k, v in d.targets.items()}
        return out

    # -- state -----------------------------------------------------------------
    def save_state(self) -> None:
        opt_t, opt_meta = optimizer_tensors(self.opt)
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"opt.{k}": v for k, v in opt_t.items()})
        tensors.update(self.best.tensors())
        # a new tensor file per epoch, then state.json points at it: a process killed
        # anywhere in between leaves the previous pair intact
        name = f"state-{self.epoch:04d}.safetensors"
        save_tensors(self.state_dir / name, tensors)
        atomic_write_json(
            self.state_dir / "state.json",
            {
                "tensors": name,
                "epoch": self.epoch,
                "step": self.step,
                "history": self.history,
                "optimizer": opt_meta,
                "mtl": self.mtl.state_dict(),
                "best": self.best.state_dict(),
                "stopped_early": self.stopped_early,
                "tensors_sha256": _tensor_digest(tensors),
            },
        )
        for old in self.state_dir.glob("state*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def load_state(self) -> bool:
        """Continue from the saved state, if any (every process reads the same files: the
        run folder must be on a filesystem all nodes see); True if there was one."""
        self.world.barrier("waiting for every process before reading the saved state")
        found = self._read_state()
        here = [self.epoch, self.step]
        main = self.world.main_does(lambda: here, "comparing the saved state every process read")
        if main != here:
            raise DistributedError(
                f"process {self.world.rank} read the saved state of epoch {self.epoch} (step {self.step}), rank 0 "
                f"that of epoch {main[0]} (step {main[1]}): is {self.state_dir} on a filesystem every node shares?"
            )
        return found

    def _read_state(self) -> bool:
        js = self.state_dir / "state.json"
        if not js.exists():
            return False
        meta = read_json(js)
        path = self.state_dir / meta.get("tensors", "state.safetensors")  # (one file for all epochs before 0.2)
        tensors = load_tensors(path)
        if _tensor_digest(tensors) != meta.get("tensors_sha256"):
            raise CheckpointError(f"{path}: does not match {js} (damaged or edited state)")
        model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model_sd, strict=True)
        restore_optimizer(
            self.opt, {k[4:]: v.to(self.device) for k, v in tensors.items() if k.startswith("opt.")}, meta["optimizer"]
        )
        self.epoch, self.step, self.history = meta["epoch"], meta["step"], meta["history"]
        self.mtl.load_state_dict(meta.get("mtl", meta.get("combiner", {})))  # "combiner": run folders of 0.1
        self.best.load(meta.get("best", {}), tensors)
        self.stopped_early = bool(meta.get("stopped_early", False))
        return True

    @property
    def finished(self) -> bool:
        return self.epoch >= self.cfg.epochs or self.stopped_early

    # -- training ----------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> list[dict]:
        """Train up to ``cfg.epochs`` (from the loaded state, if any). ``stop_after``
        stops after that many epochs of this call (used to test resuming)."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        done_here = 0
        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        ]
        # every process starts from rank 0's weights (they agree already: same seed or state)
        shared = [*self.model.parameters(), *self.model.buffers(), *self.mtl.parameters()]
        self.world.broadcast_(shared, "broadcasting the parameters")
        with Progress(*columns, disable=not self.progress, transient=False) as bar:
            overall = bar.add_task(f"{self.label}", total=self.total_steps, completed=self.step, info="")
            while not self.finished:
                if stop_after is not None and done_here >= stop_after:
                    break
                t0 = time.time()
                logs = self._run_epoch(bar, overall)
                self.mtl.check_finite()  # (deferred on CUDA: one read per epoch)
                self.epoch += 1
                done_here += 1
                row = {"epoch": self.epoch, "seconds": round(time.time() - t0, 2), **logs}
                if self.evaluate is not None:  # rank 0 scores, every process gets the scores
                    what = f"scoring the validation rows after epoch {self.epoch}"
                    row.update(self.world.main_does(lambda: self.evaluate(self.model), what))
                self.history.append(row)
                # (host reads once per epoch, needed: the logged losses above, the validation
                # scores, the best-epoch copy and the early-stopping decision)
                self.best.update(self.epoch, row, self.model)
                self.stopped_early = self.best.stop(self.epoch) and self.epoch < self.cfg.epochs
                # rank 0 saves; the others wait for it (and learn if it failed)
                self.world.main_does(self.save_state, f"saving the state after epoch {self.epoch}")
                info = " ".join(
                    f"{k}={v:.4g}" for k, v in row.items() if k not in ("epoch", "seconds") and isinstance(v, float)
                )
                if self.progress:
                    bar.console.print(
                        f"[dim]{self.label} epoch {self.epoch}/{self.cfg.epochs} ({row['seconds']:.0f}s): {info}[/]"
                    )
        return self.history

    def _run_epoch(self, bar, overall) -> dict:
        cfg, model = self.cfg, self.model
        seed = (cfg.seed * 1_000_003 + self.epoch) % (2**63)
        torch.manual_seed(seed)
        plans = [
            epoch_batches(s.data, s.batch_size, np.random.default_rng([cfg.seed, self.epoch, i]))
            for i, s in enumerate(self.sources)
        ]
        model.train()
        # the logged losses add up on the device (float64, in the order plain Python floats
        # would: the same sums) and are read once, at the end of the epoch
        sums = torch.zeros(1 + len(self.mtl.tasks), dtype=torch.float64, device=self.device)
        keys: dict[str, int] = {}  # logged key -> its row in sums, in the order keys first appear
        n = 0
        for b, idx in enumerate(plans[0]):
            for g in self.opt.param_groups:
                g["lr"] = lr_at(self.step, self.total_steps, cfg.lr, cfg.warmup)
            rows = [idx if si == 0 else plans[si][b % len(plans[si])] for si in range(len(self.sources))]
            self.opt.zero_grad(set_to_none=True)
            done = self._backward(rows)
            if done is None:  # no task has labelled rows in this batch (alike in every process)
                continue
            names, logged = done
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.opt.step()
            self.step += 1
            n += 1
            for name in names:
                keys.setdefault(f"loss_{name}", 1 + self.mtl.tasks.index(name))
            keys.setdefault("loss", 0)
            # (a task without rows this step adds its zero loss: x + 0.0 == x)
            sums += torch.stack([logged["total"], *(logged[f"loss_{t}"] for t in self.mtl.tasks)]).double()
            if self.progress and b % 10 == 0:
                info = {}
                if b % 100 == 0:  # reading the running loss waits for the device: now and then only
                    info["info"] = f"ep {self.epoch + 1} loss {float(sums[0]) / n:.4f}"
                bar.update(overall, completed=self.step, **info)
        bar.update(overall, completed=self.step)
        totals = sums.tolist()  # the epoch's one read of the logged losses
        return {k: totals[i] / max(1, n) for k, i in keys.items()}

    def _backward(self, rows: list[np.ndarray]) -> tuple[list[str], dict] | None:
        """One step's forward and backward passes over the global rows ``rows`` of each
        source (this process computes its share): the loss names to log and
        MTLBackward's log, or None when no task has labelled rows (the step is skipped)."""
        if self.mtl.monitor_due():
            # the encoder on k micro-batches (each source's rows split k ways): the
            # monitor's per-task gradient subspaces cost T backward passes in all
            k = self.mtl.monitor.k
            chunks = [np.array_split(r, k) for r in rows]
            feats, per_chunk = [], {t: [] for t in self.mtl.tasks}
            for c in range(k):
                f, chunk_losses = self._forward(self._plan([p[c] for p in chunks]))
                feats.append(f)
                for t in per_chunk:
                    per_chunk[t].append(chunk_losses.get(t, self._zero))
            return list(self.mtl.tasks), self.mtl.backward_microbatches(per_chunk, feats)
        parts = self._plan(rows)
        names = [key for part in parts for _, key, _ in part.tasks]
        if not names:
            return None
        # DDP when the step is plain and every process has rows of every source (so
        # every process runs the backward pass DDP's hooks wait for)
        ddp = self._ddp is not None and self.mtl.plain_step() and all(self.world.covers(len(p.rows)) for p in parts)
        if not ddp:
            feats, losses = self._forward(parts)
            return names, self.mtl.backward({t: losses.get(t, self._zero) for t in self.mtl.tasks}, feats)
        with self.world.failing(f"step {self.step} (DistributedDataParallel)", only_communication=True):
            feats, losses = self._ddp(parts)
            return names, self.mtl.backward({t: losses.get(t, self._zero) for t in self.mtl.tasks}, feats, ddp=True)

    def _plan(self, rows: list[np.ndarray]) -> list[_Part]:
        """Each source's global rows with the tasks labelled among them, their loss keys
        and loss denominators: the same in every process (the whole batch's). Which rows
        are labelled is read on the host; the index arrays go to the device together."""
        plans, keys, host = [], [], []
        for si, (src, idx) in enumerate(zip(self.sources, rows)):
            if len(idx) == 0:  # a micro-batch of a short last batch
                continue
            mine = self.world.part(len(idx))
            share = idx[mine]
            labelled = []
            for name in src.tasks:
                has = self._has_label[si][name][idx]
                if not has.any():
                    continue
                key = task_key(name, src, keys)
                keys.append(key)
                pos = np.flatnonzero(has[mine])  # the labelled rows' places in this process's share
                labelled.append((name, key))
                host += [idx[has], pos, share[pos]]
            plans.append((si, idx, share, labelled))
            host.append(share)
        on_device = iter(self._upload(host))
        parts = []
        for si, idx, share, labelled in plans:
            tens, tasks, where = self._tensors[si], [], {}
            for name, key in labelled:
                rows_all, pos, rows_mine = next(on_device), next(on_device), next(on_device)
                task = self.model.tasks[name]
                tasks.append(
                    (name, key, labelled_denominators(task, tens["y"][name][rows_all], tens["boot"][rows_all]))
                )
                where[key] = (pos, rows_mine)
            width = int(self._widths[si][share].max()) if len(share) else 1
            parts.append(_Part(si, idx, tasks, next(on_device), width, where))
        return parts

    def _upload(self, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        """Index arrays as int64 tensors on the training device: on the CPU the arrays
        themselves (no copy); on a GPU one pinned host buffer and one non-blocking copy
        (the pinned block is not reused before the copy has read it)."""
        if self.device.type == "cpu":
            return [torch.as_tensor(a, dtype=torch.int64) for a in arrays]
        if not arrays:
            return []
        flat = torch.from_numpy(np.concatenate(arrays).astype(np.int64, copy=False)).pin_memory()
        return list(torch.split(flat.to(self.device, non_blocking=True), [len(a) for a in arrays]))

    def _autocast(self):
        """bf16 autocast around the forward pass (``TrainConfig.precision``), else nothing."""
        if not self._bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _forward(self, parts: list[_Part]) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
        """The shared representation of this process's share of each source's rows and
        the per-task losses (with the whole batch's denominators)."""
        feats, losses = [], {}
        for part in parts:
            tens = self._tensors[part.source]
            mine = self.world.part(len(part.rows))
            drop = None
            if self.cfg.sym_dropout > 0:  # drawn for the global rows: the mask belongs to a row, not a process
                drop = torch.rand(len(part.rows), device=self.device)[mine] < self.cfg.sym_dropout
            idx = part.share
            if len(part.rows[mine]) == 0:  # fewer rows than processes
                continue
            z, frac, spg = tens["z"][idx], tens["frac"][idx], tens["spg"][idx]
            if drop is not None:
                spg = spg.masked_fill(drop, 0)
            with self._autocast():
                h = self.model.encoder(z, frac, spg, width=part.width)
            # (no-op in fp32) the heads read the fp32 representation, so the per-task
            # gradients taken through it (MTLBackward) are fp32
            h = h.float()
            feats.append(h)
            with self._autocast():
                heads = {key: self.model.heads[name](h) for name, key, _ in part.tasks}
            for name, key, denoms in part.tasks:
                pos, rows = part.labelled[key]
                y, w = tens["y"][name][rows], tens["boot"][rows]
                losses[key] = labelled_loss(self.model.tasks[name], heads[key][pos], y, w, denoms)
        return tuple(feats), losses


def build_mtl(
    model: MultiTaskModel,
    tasks: list[str],
    weights: dict[str, float],
    cfg: MTLConfig,
    reference: list[torch.Tensor] | None,
    seed: int,
    world: World | None = None,
) -> MTLBackward:
    """The run's MTLBackward (after the model has moved to its device), with fresh
    strategy objects: the config's are templates and never carry a run's state."""
    cfg = cfg.fresh()
    monitor = GeometryMonitor(cfg.monitor_every, cfg.monitor_k) if cfg.monitor_every and len(tasks) > 1 else None
    return MTLBackward(
        model.parameters(),
        model.shared_parameters(),
        tasks,
        balancer=cfg.balancer,
        weights={t: float(weights.get(t, 1.0)) for t in tasks},
        surgery=cfg.surgery,
        soft_share=cfg.soft_share,
        reference=reference,
        monitor=monitor,
        seed=seed,
        world=world,
    )


def task_key(name: str, src: Source, taken) -> str:
    """A task's loss key: its name, or name@source when another source already has it."""
    return name if name not in taken else f"{name}@{src.label}"


def task_keys(sources: list[Source]) -> list[str]:
    """The loss keys of all sources' tasks, in order (the first is the main task)."""
    keys: list[str] = []
    for src in sources:
        for name in src.tasks:
            keys.append(task_key(name, src, keys))
    return keys


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = [f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in sorted(tensors.items())]
    # a cheap content check: sums of every tensor (exact bytes of small ones would cost a copy)
    sums = [repr(float(v.double().sum())) for _, v in sorted(tensors.items())]
    return sha256_of(json.dumps(h), json.dumps(sums))


def evaluate_rows(model: MultiTaskModel, data: TaskData, tasks: list[str], limit: int | None = None) -> dict:
    """MAE (ensemble mean) per task on rows that carry its label; hurdle tasks also
    get the metal-classification accuracy."""
    if limit is not None and len(data) > limit:
        data = data.subset(np.arange(limit))
    preds = model.predict_arrays(data.z, data.frac, data.spg, tasks)
    out = {}
    for t in tasks:
        y = np.asarray(data.targets[t], dtype=np.float64)
        m = np.isfinite(y)
        if not m.any():
            continue
        out[f"mae_{t}"] = regression_metrics(y[m], preds[t].mean(1)[m])["mae"]
        if f"{t}_p_metal" in preds:
            pm = preds[f"{t}_p_metal"].mean(1)
            out[f"metal_acc_{t}"] = float(((pm > 0.5) == (y <= 0))[m].mean())
    return out
