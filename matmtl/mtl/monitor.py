"""The gradient-geometry monitor: every N steps, each task's gradients of the shared
parameters over k micro-batches span that task's gradient subspace; the monitor
records the principal angles between every pair of task subspaces and the cosine
between the tasks' mean gradients.

GPU-trained gradients: the angles are computed in a background thread (the Rust
core releases the GIL and uses all cores) after a non-blocking copy into pinned host
memory, so the GPU goes on with the next step while the copy and the angles complete;
a finished result is picked up at the next call (or at :meth:`close`).

CPU-trained gradients: the angles are computed inline by default
(``background="auto"``). The Rust call reads the (k, d) gradient rows in place and
takes about a millisecond for d ~ 1e6, while a background thread would only compete
with the training's own threads for the same cores (measured in
``scripts/bench_monitor.py``: the rust_bg vs rust_sync rows).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch


class GeometryMonitor:
    """Every ``every`` steps, the geometry of the tasks' k-sample gradient subspaces.

    ``background``: "auto" (a background thread for CUDA gradients, inline for CPU
    ones), True (always a background thread) or False (always inline)."""

    def __init__(self, every: int = 10, k: int = 4, background: bool | str = "auto"):
        if every < 1 or k < 1:
            raise ValueError(f"monitor every={every} and k={k} must both be >= 1")
        if background not in (True, False, "auto"):
            raise ValueError(f"background must be True, False or 'auto', got {background!r}")
        self.every, self.k, self.background = int(every), int(k), background
        self.records: list[dict] = []
        self._pending: list[Future] = []
        self._pool = None

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def submit(self, step: int, tasks: list[str], grads: torch.Tensor) -> None:
        """``grads``: (T, k, d) per-task, per-micro-batch gradients of the shared parameters."""
        self.poll()
        inline = not (self.background is True or (self.background == "auto" and grads.is_cuda))
        if grads.is_cuda:
            host = torch.empty(grads.shape, dtype=grads.dtype, pin_memory=True)
            host.copy_(grads, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        elif inline:  # read before this call returns: no copy needed
            host, done = grads.detach(), None
        else:  # the caller may overwrite its tensor while the thread reads
            host, done = grads.detach().clone(), None
        job = (step, list(tasks), host, done)
        if inline:
            self.records.append(_angles(*job))
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="matmtl-monitor")
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
    # each (d, k), Fortran-ordered: the Rust core reads the (k, d) rows in place
    mats = [host[t].numpy().T for t in range(host.shape[0])]
    res = geometry.subspace_geometry(mats)
    return {
        "step": step,
        "tasks": tasks,
        "angles": np.asarray(res.angles).tolist(),
        "mean_cosine": np.asarray(res.mean_cosine).tolist(),
    }
