"""Gradient surgery: combining the weighted per-task gradients of the shared
parameters into one update direction. The heavy lifting is in :mod:`matmtl.geometry`
(the Rust core for CPU tensors, torch for CUDA tensors).

* ``none``: the plain sum sum_t w_t g_t.
* ``pcgrad``: Yu et al. (2020): each task gradient is projected onto the normal plane
  of every other task gradient it conflicts with (negative dot product), in a seeded
  random order; the projected gradients are summed.
* ``halfspace``: the update nearest to the main task's gradient that does not increase
  any anchor task's loss to first order (A-GEM style): the main gradient is projected
  into the half-space {d : g_a·d >= 0} of each anchor a in turn, then the anchors'
  own weighted gradients are added (which keeps g_a·update >= 0 for one anchor).
"""
from __future__ import annotations

import torch


SURGERIES = ("none", "pcgrad", "halfspace")


def combine(kind: str, grads: torch.Tensor, weights: torch.Tensor, *, main: int = 0, seed: int = 0) -> torch.Tensor:
    """(d,) update direction from (T, d) per-task gradients and (T,) weights."""
    if kind not in SURGERIES:
        raise ValueError(f"unknown surgery {kind!r}; choose from {list(SURGERIES)}")
    weighted = grads * weights.to(grads.dtype).unsqueeze(1)
    if kind == "none" or grads.shape[0] == 1:
        return weighted.sum(0)
    from .. import geometry  # the Rust core is loaded only when surgery is used

    if kind == "pcgrad":
        return geometry.pcgrad(weighted, seed=seed).total
    update = weighted[main]
    anchors = [t for t in range(grads.shape[0]) if t != main]
    for a in anchors:
        update = geometry.project_halfspace(update, weighted[a])
    return update + weighted[anchors].sum(0)
