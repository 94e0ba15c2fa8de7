"""Gradient surgery: how the weighted per-task gradients of the shared parameters become
one update direction. Each surgery is a small callable object,
``surgery(weighted_grads (T, d), seed=...) -> (d,)``; the heavy lifting is in
:mod:`matmtl.geometry` (the Rust core for CPU tensors, torch for CUDA tensors).

* :class:`Sum`: the plain sum sum_t w_t g_t (no surgery).
* :class:`PCGrad`: Yu et al. (2020): each task gradient is projected onto the normal plane
  of every other task gradient it conflicts with (negative dot product), in a seeded
  random order; the projected gradients are summed.
* :class:`HalfSpace`: the update nearest to the main task's gradient that does not
  increase any anchor task's loss to first order (A-GEM style): the main gradient is
  projected into the half-space {d : g_a·d >= 0} of each anchor a in turn, then the
  anchors' own weighted gradients are added (which keeps g_a·update >= 0 for one anchor).
  ``main`` is the main task's name or its position in the task list (default: the first).
"""

from __future__ import annotations

import torch

from .strategy import Strategy, from_spec


class Surgery(Strategy):
    name = "base"
    needs_grads = True  # False: the plain weighted sum, one ordinary backward pass suffices

    def setup(self, tasks: list[str]) -> "Surgery":
        """Bind to the tasks (in order)."""
        return self

    def __call__(self, weighted: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        raise NotImplementedError


class Sum(Surgery):
    name = "none"
    needs_grads = False

    def __call__(self, weighted, *, seed=0):
        return weighted.sum(0)


class PCGrad(Surgery):
    name = "pcgrad"

    def __call__(self, weighted, *, seed=0):
        if weighted.shape[0] == 1:
            return weighted.sum(0)
        from .. import geometry  # the Rust core is loaded only when surgery is used

        return geometry.pcgrad(weighted, seed=seed).total


class HalfSpace(Surgery):
    name = "halfspace"

    def __init__(self, main: int | str = 0):
        self.main = main
        self._index = main if isinstance(main, int) else None

    def setup(self, tasks):
        if isinstance(self.main, str):
            if self.main not in tasks:
                raise ValueError(f"HalfSpace: main task {self.main!r} is not one of {list(tasks)}")
            self._index = list(tasks).index(self.main)
        elif not 0 <= self.main < len(tasks):
            raise ValueError(f"HalfSpace: main task index {self.main} out of range for {len(tasks)} tasks")
        return self

    def __call__(self, weighted, *, seed=0):
        if weighted.shape[0] == 1:
            return weighted.sum(0)
        from .. import geometry

        main = self._index or 0
        update = weighted[main]
        anchors = [t for t in range(weighted.shape[0]) if t != main]
        for a in anchors:
            update = geometry.project_halfspace(update, weighted[a])
        return update + weighted[anchors].sum(0)

    def to_dict(self):
        return {"name": self.name, "main": self.main}


SURGERIES = {"none": Sum, "pcgrad": PCGrad, "halfspace": HalfSpace}


def surgery_from(spec: "Surgery | str | dict | None") -> Surgery:
    """A surgery strategy from its name or its ``to_dict()`` form (a run's config.json)."""
    return from_spec(Surgery, SURGERIES, spec, "surgery", Sum)
