"""Per-task gradients of the shared parameters, computed efficiently.

Every task head reads the same shared representation ``features`` (the encoder's
output). For each task we take its gradient with respect to ``features`` (a backward
pass through that task's small head only), then push it through the encoder.

By default ("auto") all T task signals go through the encoder in ONE batched
vector-Jacobian product (``torch.autograd.grad(..., is_grads_batched=True)``, which
vmaps the backward); where an operation in the encoder has no batching rule, one
backward pass per task. ``method="loop"`` asks for one backward pass per task
(``scripts/bench_monitor.py --methods loop`` compares the two).

The gradient-geometry monitor needs each task's gradient on k micro-batches. The
encoder is then run on the k micro-batches separately (the same total work as one
forward pass), and for each micro-batch the T task signals go through that
micro-batch's part of the graph only: k small passes that add up to T backward
passes of the whole batch, not T·k. Summed over micro-batches they give the tasks' full gradients, so a
monitored step needs no further backward pass.
"""

from __future__ import annotations

from typing import Sequence

import torch

_METHODS = ("auto", "batched", "loop")


def _flat(
    grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor], batch: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """(batch, d): the per-parameter gradients side by side, written into ``out`` if given."""
    if out is None:
        out = torch.empty(batch, sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
    offset = 0
    for g, p in zip(grads, params):
        cols = out[:, offset : offset + p.numel()]
        cols.zero_() if g is None else cols.copy_(g.reshape(batch, -1))
        offset += p.numel()
    return out


def _as_tuple(features) -> tuple[torch.Tensor, ...]:
    return tuple(features) if isinstance(features, (tuple, list)) else (features,)


def _empty(r: int, params: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.empty(r, sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)


def shared_grads(
    losses: Sequence[torch.Tensor],
    features,
    params: Sequence[torch.Tensor],
    out: torch.Tensor | None = None,
    *,
    method: str = "auto",
) -> torch.Tensor:
    """(R, d) matrix: the gradient of each scalar loss with respect to the shared
    parameters ``params`` (flattened and concatenated), via ``features``: the shared
    representation, or a tuple of them when the heads read several batches (e.g. the
    fine-tuning batch and a replayed DFT batch, each through the same encoder).
    ``out``: an (R, d) tensor (or view) to write into.

    ``method``: "auto" or "batched" (one vmapped backward for all R losses; one per
    loss where an op has no batching rule) or "loop" (one backward per loss); both
    give the same gradients to rounding."""
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    params = list(params)
    feats = _as_tuple(features)
    r = len(losses)
    if out is None:
        out = _empty(r, params)
    if not any(loss.requires_grad for loss in losses):  # no rows here (e.g. this process's share is empty)
        return out.zero_()
    # 1. each loss's gradient w.r.t. the representation: a pass through its head only
    dz = [[] for _ in feats]
    for loss in losses:
        if not loss.requires_grad:  # a task without rows in this batch: no gradient
            gs = (None,) * len(feats)
        else:
            gs = torch.autograd.grad(loss, feats, retain_graph=True, allow_unused=True)
        for j, (g, f) in enumerate(zip(gs, feats)):
            dz[j].append(torch.zeros_like(f) if g is None else g)
    stacked = [torch.stack(rows) for rows in dz]  # per feature tensor: (R, *shape)
    # 2. all R signals through the encoder in one batched backward, or one by one
    if method in ("auto", "batched"):
        try:
            grads = torch.autograd.grad(
                feats, params, grad_outputs=stacked, is_grads_batched=True, retain_graph=True, allow_unused=True
            )
            return _flat(grads, params, r, out)
        except RuntimeError:  # an op without a batching rule: one encoder pass per loss
            pass
    for i in range(r):
        gi = torch.autograd.grad(
            feats, params, grad_outputs=[s[i] for s in stacked], retain_graph=True, allow_unused=True
        )
        _flat([None if g is None else g.unsqueeze(0) for g in gi], params, 1, out[i : i + 1])
    return out


def chunked_shared_grads(
    losses: dict[str, Sequence[torch.Tensor]],
    chunks: Sequence,
    params: Sequence[torch.Tensor],
    out: torch.Tensor | None = None,
    *,
    method: str = "auto",
) -> torch.Tensor:
    """(T, k, d): the gradient of task t's loss on micro-batch c (``losses[t][c]``,
    a scalar computed from ``chunks[c]``, micro-batch c's shared representation, a
    tensor or tuple of tensors) with respect to the shared parameters. ``out``: a
    (T, k, d) tensor to write into (a caller reusing one saves allocating it);
    ``method``: as for :func:`shared_grads`."""
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    k = len(chunks)
    tasks = list(losses)
    for t in tasks:
        if len(losses[t]) != k:
            raise ValueError(f"task {t!r}: {len(losses[t])} micro-batch losses for {k} micro-batches")
    params = list(params)
    shape = (len(tasks), k, sum(p.numel() for p in params))
    if out is None:
        out = torch.empty(shape, dtype=params[0].dtype, device=params[0].device)
    elif tuple(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {shape}")
    for c in range(k):
        shared_grads([losses[t][c] for t in tasks], chunks[c], params, out=out[:, c], method=method)
    return out
