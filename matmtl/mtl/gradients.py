"""Per-task gradients of the shared parameters, computed efficiently.

Every task head reads the same shared representation ``features`` (the encoder's
output). For each task we take its gradient with respect to ``features`` (a backward
pass through that task's small head only), then push it through the encoder.

By default ("auto") all T task signals go through the encoder in ONE batched
vector-Jacobian product (``torch.autograd.grad(..., is_grads_batched=True)``, which
vmaps the backward); where an operation in the encoder has no batching rule, one
backward pass per task. Two other ways can be asked for (``method=``): "loop" (one
backward pass per task) and "linear": the encoder's graph is read once
(:func:`_linear_plan`) for the matrix products whose weight (and bias) are shared
parameters used nowhere else; per task, one backward pass stops at those products'
outputs and each weight gradient ``g^T a`` (``a`` the layer's input, which autograd
keeps anyway) and bias gradient ``sum(g)`` is written by one matrix product straight
into the caller's buffer (other shared parameters get theirs from the same pass). On
the 2-core CPU (torch's 2 threads) three runs of ``python scripts/bench_monitor.py
--every 10 --k 4 --methods ...`` put the monitored step's gradient overhead at 10-14%
batched, 12-18% loop and 4-25% linear: no consistent winner within the run-to-run
noise, so the default stays the batched pass (and earlier runs' numbers stay the same).

The gradient-geometry monitor needs each task's gradient on k micro-batches. The
encoder is then run on the k micro-batches separately (the same total work as one
forward pass), and each task's signal goes through each micro-batch's part of the
graph only: k small passes per task that add up to T backward passes of the whole
batch, not T·k. Summed over micro-batches they give the tasks' full gradients, so a
monitored step needs no further backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch.autograd.graph import GradientEdge

_METHODS = ("auto", "linear", "batched", "loop")


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
    loss where an op has no batching rule), "linear" (the linear-layer path where the
    encoder's graph has linear layers, else "loop") or "loop" (one backward per loss);
    all give the same gradients to rounding."""
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    params = list(params)
    feats = _as_tuple(features)
    r = len(losses)
    if out is None:
        out = _empty(r, params)
    if not any(loss.requires_grad for loss in losses):  # no rows here (e.g. this process's share is empty)
        return out.zero_()
    if method == "linear":
        plan = _safe_plan(feats, params)
        if plan is not None:
            _linear_grads([[loss] for loss in losses], [(feats, plan)], params, out.unsqueeze(1))
            return out
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
    # 2. all R signals through the encoder in one batched backward (CUDA), or one by one
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
    parts = [_as_tuple(ch) for ch in chunks]
    plans = [_safe_plan(f, params) for f in parts] if method == "linear" else [None] * k
    if all(p is not None and not p.generic for p in plans) and _disjoint(plans):
        # every shared parameter in linear layers, each micro-batch its own graph: one
        # backward pass per task covers all micro-batches
        _linear_grads([list(losses[t]) for t in tasks], list(zip(parts, plans)), params, out)
        return out
    for c, (feats, plan) in enumerate(zip(parts, plans)):
        if plan is not None:
            _linear_grads([[losses[t][c]] for t in tasks], [(feats, plan)], params, out[:, c : c + 1])
        else:
            shared_grads([losses[t][c] for t in tasks], feats, params, out=out[:, c], method=method)
    return out


# -- linear layers: weight gradients from the layers' inputs and output gradients -----------

# the autograd nodes of a matrix product ``a @ m``: where ``m`` is in their inputs and
# the name of the saved ``a``
_PRODUCTS = {"AddmmBackward0": (2, "_saved_mat1"), "MmBackward0": (1, "_saved_self")}


@dataclass
class _Plan:
    """What :func:`_linear_grads` computes for one micro-batch's graph."""

    edges: list = field(default_factory=list)  # GradientEdge of each product whose output gradient is taken
    jobs: dict = field(default_factory=dict, repr=False)  # param index -> [(edge index, kind, a)]
    generic: list = field(default_factory=list)  # indices of the params used otherwise (autograd's own gradient)


def _safe_plan(feats: Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> _Plan | None:
    """:func:`_linear_plan`, or None (the generic paths) if reading the graph fails: it
    reads autograd node attributes (``_saved_mat1``, ...) that a future torch may rename."""
    try:
        return _linear_plan(feats, params)
    except (AttributeError, RuntimeError, TypeError):
        return None


def _linear_plan(feats: Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> _Plan | None:
    """Read the autograd graph behind ``feats``: the shared parameters used only as the
    weight ``W`` of ``a @ W.T`` (``nn.Linear``: addmm/mm of ``W.t()``) or ``a @ W``,
    or as the bias of such an addmm, each possibly several times. None when there is
    no such parameter (then the generic paths serve)."""
    index = {id(p): i for i, p in enumerate(params)}
    roots = [f.grad_fn for f in feats if f.grad_fn is not None]
    users: dict = {}  # node -> [(node using its output, input slot there)]
    seen, stack = set(roots), list(roots)
    leaves = []
    while stack:
        node = stack.pop()
        if type(node).__name__ == "AccumulateGrad":
            leaves.append(node)
        for slot, (child, _) in enumerate(node.next_functions):
            if child is None:
                continue
            users.setdefault(child, []).append((node, slot))
            if child not in seen:
                seen.add(child)
                stack.append(child)
    plan, edge_of = _Plan(), {}
    for leaf in leaves:
        i = index.get(id(leaf.variable))
        if i is None:
            continue
        uses = _linear_uses(leaf, users, params[i])
        if uses is None:
            plan.generic.append(i)
            continue
        jobs = []
        for node, kind, a in uses:
            if node not in edge_of:
                edge_of[node] = len(plan.edges)
                plan.edges.append(GradientEdge(node, 0))
            jobs.append((edge_of[node], kind, a))
        plan.jobs[i] = jobs
    if not plan.jobs:
        return None
    plan.generic.sort()
    return plan


def _linear_uses(leaf, users: dict, p: torch.Tensor) -> list | None:
    """[(product node, kind, a)] for every use of parameter ``p`` (its AccumulateGrad
    node ``leaf``), kind "weight" (``a @ p.T``), "right" (``a @ p``) or "bias"; None if
    any use is of another kind."""
    uses = []
    for node, slot in users.get(leaf, ()):
        name = type(node).__name__
        if name == "TBackward0" and p.dim() == 2:  # p.t() (nn.Linear's weight): every use a product's m
            for prod, pslot in users.get(node, ()):
                a = _product_input(prod, pslot, p)
                if a is None:
                    return None
                uses.append((prod, "weight", a))
        elif name in _PRODUCTS and p.dim() == 2:
            a = _product_input(node, slot, p)
            if a is None:
                return None
            uses.append((node, "right", a))
        elif name == "AddmmBackward0" and slot == 0 and p.dim() == 1:  # the bias of addmm(p, a, m)
            if node._saved_beta != 1 or p.numel() != node._saved_mat2_sym_sizes[1]:
                return None
            uses.append((node, "bias", None))
        else:
            return None
    return uses or None


def _product_input(node, slot: int, p: torch.Tensor) -> torch.Tensor | None:
    """``a`` of the product ``node`` = ``a @ m`` when ``m`` is its input ``slot`` and
    ``a`` is usable here (2-D, ``p``'s dtype, and no alpha scale)."""
    name = type(node).__name__
    if name not in _PRODUCTS or _PRODUCTS[name][0] != slot:
        return None
    if name == "AddmmBackward0" and node._saved_alpha != 1:
        return None
    try:
        a = getattr(node, _PRODUCTS[name][1])
    except RuntimeError:  # not saved
        return None
    if not torch.is_tensor(a) or a.dim() != 2 or a.dtype != p.dtype or a.device != p.device:
        return None
    return a


def _disjoint(plans: Sequence[_Plan]) -> bool:
    """Whether no linear layer's output is in two micro-batches' graphs (then each
    layer's output gradient in one backward pass over all micro-batches is its own
    micro-batch's; not so when the micro-batches are slices of one encoder output)."""
    nodes = [e.node for p in plans for e in p.edges]
    return len(set(nodes)) == len(nodes)


def _linear_grads(
    losses: Sequence[Sequence[torch.Tensor]],
    parts: Sequence[tuple[tuple[torch.Tensor, ...], _Plan]],
    params: Sequence[torch.Tensor],
    out: torch.Tensor,
) -> None:
    """``out[r, j]`` (``out``: (R, P, d)): the gradient of ``losses[r][j]``, a loss on
    part j (``parts[j]``: its shared representation and :func:`_linear_plan`), with
    respect to ``params``. One backward pass per loss row r: over several parts only
    when their graphs are disjoint and no part has generic parameters."""
    if len(parts) > 1 and any(plan.generic for _, plan in parts):
        raise ValueError("generic parameters need one part at a time")
    offsets, o = [], 0
    for p in params:
        offsets.append(o)
        o += p.numel()
    feats = [f for fs, _ in parts for f in fs]
    edges, starts = [], []
    for _, plan in parts:
        starts.append(len(edges))
        edges += plan.edges
    generic = parts[0][1].generic if len(parts) == 1 else []
    inputs = edges + [params[i] for i in generic]
    for r, row in enumerate(losses):
        live = [loss for loss in row if loss.requires_grad]
        dz = torch.autograd.grad(live, feats, retain_graph=True, allow_unused=True) if live else ()
        reached = [(f, g) for f, g in zip(feats, dz) if g is not None]
        if not reached:  # a task without rows in this batch: no gradient
            out[r].zero_()
            continue
        got = torch.autograd.grad(
            [f for f, _ in reached],
            inputs,
            grad_outputs=[g for _, g in reached],
            retain_graph=True,
            allow_unused=True,
        )
        with torch.no_grad():  # (``a`` and the gradients may require grad: only their values are used)
            for j, (_, plan) in enumerate(parts):
                views = [out[r, j, o : o + p.numel()].view(p.shape) for o, p in zip(offsets, params)]
                _write(views, plan, got[starts[j] : starts[j] + len(plan.edges)])
                for i, g in zip(generic, got[len(edges) :]):
                    views[i].zero_() if g is None else views[i].copy_(g)


def _write(views: list[torch.Tensor], plan: _Plan, got: Sequence[torch.Tensor | None]) -> None:
    """Each linear-layer parameter's gradient from its layers' output gradients ``got``
    (and inputs), into its view; zeros for the parameters this graph does not use."""
    for i, dst in enumerate(views):
        first = True
        for e, kind, a in plan.jobs.get(i, ()):
            g = got[e]
            if g is None:
                continue
            if kind == "bias":
                torch.sum(g, 0, out=dst) if first else dst.add_(g.sum(0))
            else:
                x, y = (g.t(), a) if kind == "weight" else (a.t(), g)
                torch.mm(x, y, out=dst) if first else dst.addmm_(x, y)
            first = False
        if first and i not in plan.generic:  # not used, or no gradient reached it
            dst.zero_()
