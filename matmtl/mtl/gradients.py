"""Per-task gradients of the shared parameters, computed efficiently.

Every task head reads the same shared representation ``features`` (the encoder's
output). Rather than one full backward pass per task (and per micro-batch), we
1. take each task's gradient with respect to ``features`` — a backward pass through
   that task's small head only — and
2. push all of them through the encoder in ONE batched vector-Jacobian product
   (``torch.autograd.grad(..., is_grads_batched=True)``, which vmaps the backward).
For T tasks and k micro-batches that is T·k cheap head passes plus one batched
encoder pass instead of T·k full backward passes. Where an operation in the encoder
does not support the batched backward, we fall back to one encoder pass per row.
"""
from __future__ import annotations

from typing import Sequence

import torch


def _flat(grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor], batch: int) -> torch.Tensor:
    cols = []
    for g, p in zip(grads, params):
        cols.append(torch.zeros(batch, p.numel(), dtype=p.dtype, device=p.device) if g is None else g.reshape(batch, -1))
    return torch.cat(cols, dim=1)


def feature_grads(losses: Sequence[torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    """(R, *features.shape): d loss_r / d features for each scalar loss (graph kept)."""
    rows = []
    for loss in losses:
        (g,) = torch.autograd.grad(loss, features, retain_graph=True, allow_unused=True)
        rows.append(torch.zeros_like(features) if g is None else g)
    return torch.stack(rows)


def shared_grads(
    losses: Sequence[torch.Tensor], features: torch.Tensor, params: Sequence[torch.Tensor]
) -> torch.Tensor:
    """(R, d) matrix: the gradient of each scalar loss with respect to the shared
    parameters ``params`` (flattened and concatenated), via ``features``."""
    params = list(params)
    dz = feature_grads(losses, features)
    r = dz.shape[0]
    try:
        grads = torch.autograd.grad(features, params, grad_outputs=dz, is_grads_batched=True,
                                    retain_graph=True, allow_unused=True)
        return _flat(grads, params, r)
    except RuntimeError:  # an op without a batching rule: one encoder pass per row
        out = []
        for i in range(r):
            gi = torch.autograd.grad(features, params, grad_outputs=dz[i], retain_graph=True, allow_unused=True)
            out.append(_flat([None if g is None else g.unsqueeze(0) for g in gi], params, 1))
        return torch.cat(out)


def task_losses(losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scalar loss per task: per-sample (1-D) losses are averaged."""
    return {k: (v.mean() if v.dim() > 0 else v) for k, v in losses.items()}


def microbatch_losses(losses: dict[str, torch.Tensor], k: int) -> dict[str, list[torch.Tensor]]:
    """k scalar losses per task from its per-sample losses (k contiguous chunks), the
    samples for a task's gradient subspace. Tasks need at least k samples."""
    out = {}
    for name, v in losses.items():
        if v.dim() != 1 or v.numel() < k:
            raise ValueError(
                f"task {name!r}: the gradient monitor needs per-sample losses (1-D, reduction='none') "
                f"with at least k={k} samples, got shape {tuple(v.shape)}"
            )
        out[name] = [c.mean() for c in torch.tensor_split(v, k)]
    return out
