"""The matbench mp_e_form / mp_gap cells: the pretraining model of each mp fold scored on
that fold's official test rows, with and without the symmetry (composition only)."""

from __future__ import annotations

import numpy as np

from ..metrics import regression_metrics
from .cells import CellKey, Cells, fingerprint
from .pretrained import Pretrained, checkpoint_identity
from .scoring import predict, taskdata
from .settings import FOLDS, EvalSettings


class MPCells:
    def __init__(self, settings: EvalSettings, device: str, cells: Cells, pretrained: Pretrained):
        self.s, self.device, self.cells, self.pre = settings, device, cells, pretrained

    def folds(self) -> list[int]:
        """``EvalSettings.mp_folds``, else all 5 on CUDA and the transfer fold on a CPU
        (every other fold needs its own pretraining run)."""
        if self.s.mp_folds is not None:
            return list(self.s.mp_folds)
        return list(FOLDS) if self.device == "cuda" else [self.s.pretrain_fold]

    def cell(self, fold: int) -> dict:
        ident = checkpoint_identity(self.s.checkpoint) if self.pre.given(fold) else {"pretrain": self.pre.fp}
        fp = fingerprint({"ckpt": ident, "cap": self.s.mp_test_cap, "seed": self.s.seed})
        return self.cells.run(
            CellKey("mp", "pretrain", fold), fp, lambda: self.compute(fold), needs=lambda: self.pre.checkpoint(fold)
        )

    def compute(self, fold: int) -> dict:
        from ..checkpoints import load_checkpoint
        from ..train.data import DFT_TASKS, _load

        ckpt = self.pre.checkpoint(fold)
        net, _ = load_checkpoint(ckpt)
        rec: dict = {"checkpoint": str(ckpt)}
        for task, (name, col) in DFT_TASKS.items():
            if task not in net.heads:
                rec[task] = {"status": "not available", "reason": f"the pretrained model has no {task} head"}
                continue
            _, te = _load(name, self.s.data_dir).folds()[fold]
            cap = self.s.mp_test_cap
            if cap and len(te) > cap:
                te = np.sort(np.random.default_rng([self.s.seed, 31]).choice(te, cap, replace=False))
            data = taskdata(name, self.s.data_dir, te, task, col)
            y = data.targets[task]
            composition_only = regression_metrics(y, predict(net, data, task, symmetry=False))["mae"]
            rec[task] = {
                **regression_metrics(y, predict(net, data, task)),
                "mae_composition_only": composition_only,
                "test_rows": len(te),
            }
        return rec
