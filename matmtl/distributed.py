"""Data parallelism across processes (``torchrun``, SLURM): who this process is, its part
of a batch, and the few collectives training needs. See docs/distributed.md.

A :class:`World` is the set of processes of one run. ``World()`` is one process alone,
the default everywhere: then every collective below is the identity and every shard is
the whole batch, so single-process numerics are exactly those without this module.

* :func:`join` starts torch.distributed from the environment ``torchrun`` sets (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ...): gloo on CPU, nccl on CUDA with
  ``cuda:LOCAL_RANK``; or joins a process group already running.
* :meth:`World.shard` is this process's contiguous part of a global batch. Every rank
  draws the same seeded batch plan, so a run does not depend on the number of processes.
* :meth:`World.sum_` and :meth:`World.sum_grads_` all-reduce (sum) tensors and gradients.
* :meth:`World.main_does` runs a function on rank 0 alone (writing the run folder,
  scoring the validation rows) and hands every rank its JSON result, or its error.
* :meth:`World.node_first` lets one process per node go first (it fills the
  featurization cache the others then read).
* :func:`single_process` makes :func:`join` return ``World()`` inside it, whatever the
  environment says: ``matmtl evaluate`` under ``torchrun`` runs each cell's training as
  one plain process (its ranks share out whole cells; :meth:`World.from_env` tells a
  rank its place without starting a process group).

A collective that fails, because another rank stopped or did not answer within the
timeout, raises :class:`~matmtl.errors.DistributedError` naming this rank and what it
was doing, instead of hanging. Objects travel as JSON bytes, never pickled.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from .errors import DistributedError


def _dist():
    import torch.distributed as dist

    return dist


def initialized() -> bool:
    """Whether a torch.distributed process group is running in this process."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


@dataclass(frozen=True)
class World:
    """This process's place among the ``size`` processes of a run (``rank`` 0 is the main
    one, the only one that writes files); ``local_*`` count the processes of this node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    timeout: float | None = None  # seconds a collective waits (for messages)
    comm_device: str = "cpu"  # where the small buffers of broadcasts live (cuda:i under nccl)

    @classmethod
    def current(cls, timeout: float | None = None) -> "World":
        """The running process group's world (one process if none runs)."""
        if not initialized():
            return cls()
        dist = _dist()
        rank, size = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))
        comm = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
        return cls(rank, size, local_rank, local_size, timeout, comm)

    @classmethod
    def from_env(cls) -> "World":
        """This process's place as the environment gives it (``RANK``, ``WORLD_SIZE``,
        ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, as torchrun sets them), without starting or
        joining a process group: no collective may be used with it."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        return cls(rank, size, local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", size)))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    def device(self, name: str) -> torch.device:
        """The torch device of this process for a device name: ``cuda`` is ``cuda:LOCAL_RANK``
        when several processes share a node."""
        if name == "cuda" and self.size > 1:
            return torch.device("cuda", self.local_rank)
        return torch.device(name)

    # -- the batch ------------------------------------------------------------------------
    def part(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` rows (as ``np.array_split``: the first
        ``n % size`` ranks take one row more)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This rank's part of a global batch's row indices (all of them with one process)."""
        return rows if self.size == 1 else rows[self.part(len(rows))]

    def covers(self, n: int) -> bool:
        """Whether every rank gets at least one of ``n`` rows."""
        return n >= self.size

    # -- collectives (no-ops with one process) -------------------------------------------
    def sum_(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
        """``tensor`` summed over the processes, in place (every rank gets the same values)."""
        if self.size > 1:
            with self.failing(what):
                _dist().all_reduce(tensor)
        return tensor

    def sum_grads_(self, params: Iterable[torch.Tensor], what: str) -> None:
        """Sum the ``.grad`` of ``params`` over the processes, in one all-reduce. A parameter
        that has no gradient in any process keeps none (the optimizer then skips it, as it
        would in one process); one that has a gradient somewhere gets the sum."""
        if self.size == 1:
            return
        params = list(params)
        if not params:
            return
        sizes = [p.numel() for p in params]
        total = sum(sizes)
        flat = torch.zeros(total + len(params), dtype=params[0].dtype, device=params[0].device)
        offset = 0
        for i, (p, n) in enumerate(zip(params, sizes)):
            if p.grad is not None:
                flat[offset : offset + n].copy_(p.grad.reshape(-1))
                flat[total + i] = 1
            offset += n
        self.sum_(flat, what)
        has = flat[total:].cpu().tolist()
        offset = 0
        for p, n, h in zip(params, sizes, has):
            p.grad = flat[offset : offset + n].view_as(p) if h > 0 else None
            offset += n

    def broadcast_(self, tensors: Iterable[torch.Tensor], what: str) -> None:
        """Overwrite ``tensors`` with rank 0's values (parameters at the start of a run)."""
        if self.size == 1:
            return
        with self.failing(what), torch.no_grad():
            for t in tensors:
                _dist().broadcast(t.data, src=0)

    def barrier(self, what: str) -> None:
        """Wait until every rank got here (with the timeout, unlike a bare barrier)."""
        self.sum_(torch.zeros(1, device=self.comm_device), what)

    def main_does(self, fn: Callable[[], object], what: str):
        """``fn()`` on rank 0 alone; every rank returns its result (JSON-ready), and every
        rank raises if it failed (rank 0 its own error, the others a DistributedError that
        quotes it), so no rank waits for a partner that gave up."""
        if self.size == 1:
            return fn()
        if not self.is_main:
            message = self._broadcast_json(None, what)
            if "error" in message:
                raise DistributedError(
                    f"process {self.rank} of {self.size}: rank 0 failed while {what}: {message['error']}"
                )
            return message["ok"]
        try:
            result = fn()
        except BaseException as exc:
            try:  # tell the others; if they are gone too, this process's own error is the one to show
                self._broadcast_json({"error": f"{type(exc).__name__}: {exc}"}, what)
            except DistributedError:
                pass
            raise
        self._broadcast_json({"ok": result}, what)
        return result

    @contextmanager
    def node_first(self, what: str) -> Iterator[None]:
        """Run the block on each node's first process, then on the others (which find what
        it cached, e.g. featurized rows). With one process: just the block."""
        if self.size > 1 and not self.is_local_main:
            self.barrier(f"waiting for the node's first process {what}")
        yield
        if self.size > 1 and self.is_local_main:
            self.barrier(f"letting the node's other processes {what}")

    def _broadcast_json(self, obj, what: str):
        """``obj`` (rank 0's; ignored elsewhere) on every rank, sent as UTF-8 JSON bytes."""
        dist = _dist()
        data = json.dumps(obj, default=_json_default).encode() if self.is_main else b""
        with self.failing(what):
            length = torch.tensor([len(data)], dtype=torch.int64, device=self.comm_device)
            dist.broadcast(length, src=0)
            buf = torch.zeros(int(length.item()), dtype=torch.uint8, device=self.comm_device)
            if self.is_main:
                buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            dist.broadcast(buf, src=0)
        return json.loads(bytes(buf.cpu().numpy()).decode())

    @contextmanager
    def failing(self, what: str, only_communication: bool = False) -> Iterator[None]:
        """Turn the RuntimeError of a failed collective in the block (gloo and nccl raise it
        when a peer closed the connection or the timeout passed) into a DistributedError
        that names this process and ``what``. ``only_communication``: leave other errors
        of the block (not from torch.distributed) as they are."""
        if self.size == 1:
            yield
            return
        try:
            yield
        except RuntimeError as exc:
            if isinstance(exc, DistributedError) or (only_communication and not _from_communication(exc)):
                raise
            wait = f"within the timeout ({self.timeout:g} s; TrainConfig.dist_timeout, --dist-timeout)"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DistributedError(
                f"process {self.rank} of {self.size}: {what} failed ({first}); another process stopped "
                f"(its own error says why) or did not answer {wait if self.timeout else 'in time'}"
            ) from exc


def _from_communication(exc: RuntimeError) -> bool:
    if isinstance(exc, _dist().DistError):
        return True
    text = str(exc)
    return any(mark in text for mark in ("gloo", "nccl", "NCCL", "Connection", "Timed out", "timed out", "Socket"))


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


_alone = 0  # > 0 inside single_process()


@contextmanager
def single_process() -> Iterator[None]:
    """Inside the block :func:`join` returns ``World()`` (one process alone), even under
    ``torchrun`` (``WORLD_SIZE`` > 1) or with a process group running: training started in
    it neither starts nor joins a process group. ``matmtl evaluate`` runs every cell in
    it, so that its ranks each train whole cells on their own."""
    global _alone
    _alone += 1
    try:
        yield
    finally:
        _alone -= 1


def join(device: str = "cpu", timeout: float = 1800.0) -> World:
    """The world of this process.

    * Inside :func:`single_process`: one process, ``World()``, whatever the environment.

    * A process group is already running (the caller's, or one an earlier run of this
      process started): join it.
    * ``WORLD_SIZE`` > 1 in the environment (``torchrun``, or a SLURM script that sets
      ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``): start one,
      gloo for ``device="cpu"``, nccl on ``cuda:LOCAL_RANK`` for ``"cuda"``, whose
      collectives wait at most ``timeout`` seconds. It lives until the process ends (a
      second group started in the same torchrun job would meet the first one's stale
      addresses), so a script may run a pretraining and then a fine-tuning.
    * Otherwise: one process, ``World()``."""
    if _alone:
        return World()
    if not initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _start(device, timeout)
    return World.current(timeout)


def _start(device: str, timeout: float) -> None:
    import atexit

    dist = _dist()
    rank, size = int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"process {rank}: LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} CUDA "
                "device(s); start at most one process per GPU (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
    backend = "nccl" if device == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    except (RuntimeError, ValueError) as exc:
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        raise DistributedError(
            f"process {rank} of {size}: could not join the others ({backend} via {where}): {exc}"
        ) from exc
    atexit.register(lambda: dist.destroy_process_group() if initialized() else None)
