"""The gradient-geometry monitor: every N steps, each task's gradients of the shared
parameters over k micro-batches span that task's gradient subspace; the monitor
records the principal angles between every pair of task subspaces and the cosine
between the tasks' mean gradients.

It never stalls training: the angles are computed in a background thread (the Rust
core releases the GIL and uses all cores). On a GPU the gradients are first copied
into pinned host memory with a non-blocking copy, so the GPU goes on with the next
step while the copy and the angles complete; a finished result is picked up at the
next call (or at :meth:`close`).
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch



class GeometryMonitor:
    def __init__(self, every: int = 10, k: int = 4, background: bool = True):
        if every < 1 or k < 1:
            raise ValueError(f"monitor every={every} and k={k} must both be >= 1")
        self.every, self.k, self.background = int(every), int(k), bool(background)
        self.records: list[dict] = []
        self._pending: list[Future] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="matmtl-monitor") if background else None

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def submit(self, step: int, tasks: list[str], grads: torch.Tensor) -> None:
        """``grads``: (T, k, d) per-task, per-micro-batch gradients of the shared parameters."""
        self.poll()
        if grads.is_cuda:
            host = torch.empty(grads.shape, dtype=grads.dtype, pin_memory=True)
            host.copy_(grads, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        else:
            host, done = grads.detach().clone(), None
        job = (step, list(tasks), host, done)
        if self._pool is None:
            self.records.append(_angles(*job))
        else:
            self._pending.append(self._pool.submit(_angles, *job))

    def poll(self) -> None:
        """Collect the results that are ready, in step order."""
        ready = [f for f in self._pending if f.done()]
        self._pending = [f for f in self._pending if not f.done()]
        self.records.extend(f.result() for f in ready)

    def close(self) -> list[dict]:
        """Wait for all pending results and return every record."""
        for f in self._pending:
            self.records.append(f.result())
        self._pending = []
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.records.sort(key=lambda r: r["step"])
        return self.records


def _angles(step: int, tasks: list[str], host: torch.Tensor, done) -> dict:
    from .. import geometry

    if done is not None:
        done.synchronize()  # the non-blocking device-to-host copy has landed
    mats = [np.ascontiguousarray(host[t].numpy().T) for t in range(host.shape[0])]  # each (d, k)
    res = geometry.subspace_geometry(mats)
    return {
        "step": step,
        "tasks": tasks,
        "angles": np.asarray(res.angles).tolist(),
        "mean_cosine": np.asarray(res.mean_cosine).tolist(),
    }
