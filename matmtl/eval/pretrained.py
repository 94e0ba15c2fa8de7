"""The pretraining side of an evaluation: the transfer checkpoint every fine-tuning
variant starts from (given, or pretrained once with ``pretrain`` and resumed with
``resume`` after a kill), the per-fold pretraining runs of the matbench mp tasks, the
``scratch`` variant's random init, and the forgetting "before" cell."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..errors import MatmtlError
from .cells import CellKey, Cells, fingerprint, prepare_run_dir
from .scoring import eform_mae, forgetting_rows, taskdata
from .settings import EvalSettings


def checkpoint_identity(path: str | Path) -> dict:
    """What identifies a checkpoint's weights for the cell fingerprints."""
    from ..checkpoints import read_json, resolve

    meta = read_json(resolve(path) / "model.json")
    cfg = meta.get("config", {})
    return {
        "data_sha256": meta.get("data_sha256"),
        "created": meta.get("created"),
        "kind": meta.get("kind"),
        "model_config": meta.get("model_config"),
        "tasks": [t.get("name") for t in meta.get("tasks", [])],
        "holdout_fold": cfg.get("holdout_fold"),
        "max_rows": cfg.get("max_rows"),
        "train": cfg.get("train"),
    }


def ensure_pretrain(run_dir: Path, config, *, progress: bool) -> Path:
    """A finished pretraining run of ``config`` in ``run_dir`` (trained, resumed or reused)."""
    from ..train.pretraining import pretrain
    from ..train.resuming import resume

    state = prepare_run_dir(run_dir)
    if state == "done":
        return run_dir
    res = resume(run_dir, progress=progress) if state == "resume" else pretrain(config, run_dir, progress=progress)
    if not res.finished:
        raise MatmtlError(f"pretraining in {run_dir} did not finish")
    return run_dir


def make_scratch_init(folder: Path, base_checkpoint: Path, seed: int) -> Path:
    """A checkpoint with the pretrained model's architecture and heads but freshly
    initialised (seeded) weights: the starting point of the ``scratch`` variant."""
    import torch

    from ..checkpoints import load_checkpoint, save_checkpoint
    from ..models import MultiTaskModel

    if (folder / "model.json").is_file():
        return folder
    base, meta = load_checkpoint(base_checkpoint)
    torch.manual_seed(seed)
    net = MultiTaskModel(copy.deepcopy(base.cfg), [copy.deepcopy(t) for t in base.tasks.values()])
    cfg = meta.get("config", {})
    save_checkpoint(
        folder,
        net,
        {
            "kind": "init",
            "note": "random initialisation (the scratch variant's start); never trained",
            "config": {
                "holdout_fold": cfg.get("holdout_fold"),
                "max_rows": cfg.get("max_rows"),
                "data_dir": cfg.get("data_dir"),
                "model": base.cfg.to_dict(),
                "init_seed": seed,
            },
            "elements": [],
            "featurizer": meta.get("featurizer"),
            "data_sha256": None,
        },
    )
    return folder


@dataclass
class Forgetting:
    """The forgetting rows and the pretrained model's e_form MAE on them (the cell)."""

    data: object  # TaskData of the fixed held-out mp_e_form subset
    before: dict  # the cell record: before, rows, mp_fold


class Pretrained:
    """The pretraining checkpoints of one evaluation (each trained at most once, in
    ``<work>/runs/pretrain/<fingerprint>/fold<k>``, resumable)."""

    def __init__(self, settings: EvalSettings, device: str, work: Path, cells: Cells):
        self.s, self.device, self.work, self.cells = settings, device, work, cells
        self._forgetting: Forgetting | bool | None = False  # False: not looked at yet

    @cached_property
    def fp(self) -> str:
        """The fingerprint of the pretraining settings."""
        c = self.s.pretrain_config(self.device, None)
        return fingerprint(
            {
                "tasks": list(c.tasks),
                "model": c.model.to_dict(),
                "train": c.train.numeric_dict(),
                "max_rows": c.max_rows,
            }
        )

    def given(self, fold: int) -> bool:
        """Whether the given checkpoint (``EvalSettings.checkpoint``) holds out mp fold ``fold``."""
        return bool(self.s.checkpoint) and checkpoint_identity(self.s.checkpoint).get("holdout_fold") == fold

    def checkpoint(self, fold: int) -> Path:
        """The pretraining run holding out mp fold ``fold`` (given, reused, resumed or trained)."""
        if self.given(fold):
            return Path(self.s.checkpoint).expanduser()
        run_dir = self.work / "runs" / "pretrain" / self.fp / f"fold{fold}"

        def make() -> Path:  # one worker makes it (claim fold<k>.claim); the others wait for it
            self.cells.console.print(
                f"[bold]pretraining[/] on mp ({', '.join(self.s.pretrain_tasks)}), fold {fold} "
                f"held out -> {run_dir} (resumable)"
            )
            return ensure_pretrain(run_dir, self.s.pretrain_config(self.device, fold), progress=self.s.progress)

        return self.cells.job(
            f"the pretraining run holding out mp fold {fold}",
            run_dir,
            lambda: run_dir if (run_dir / "model.json").is_file() else None,
            make,
        )

    @cached_property
    def transfer(self) -> Path:
        """The pretrained checkpoint every fine-tuning variant starts from."""
        if self.s.checkpoint:
            return Path(self.s.checkpoint).expanduser()
        return self.checkpoint(self.s.pretrain_fold)

    @cached_property
    def base(self):
        """(model, metadata) of the transfer checkpoint."""
        from ..checkpoints import load_checkpoint

        return load_checkpoint(self.transfer)

    @cached_property
    def identity(self) -> dict:
        return checkpoint_identity(self.transfer)

    def info(self) -> dict:
        """The ``pretraining`` section of the results ({} while no cell has used the
        transfer checkpoint)."""
        from ..checkpoints import read_json

        if "transfer" not in self.__dict__:
            return {}
        m = read_json(self.transfer / "metrics.json") if (self.transfer / "metrics.json").is_file() else {}
        net, meta = self.base
        return {
            "checkpoint": str(self.transfer),
            "given": bool(self.s.checkpoint),
            "holdout_fold": meta.get("config", {}).get("holdout_fold"),
            "tasks": list(net.tasks),
            "train_seconds": m.get("train_seconds"),
            "holdout": m.get("holdout"),
        }

    @cached_property
    def scratch_init(self) -> Path:
        """The random init of the ``scratch`` variant (same architecture and heads)."""
        fp = fingerprint({"of": self.identity, "seed": self.s.seed})
        folder = self.work / "init" / fp
        return self.cells.job(
            "the scratch variant's random init",
            folder,
            lambda: folder if (folder / "model.json").is_file() else None,
            lambda: make_scratch_init(folder, self.transfer, self.s.seed),
        )

    def forgetting(self) -> Forgetting | None:
        """The forgetting rows and the "before" cell (None when the transfer checkpoint
        saw every mp row or has no e_form head)."""
        if self._forgetting is False:
            net, meta = self.base
            rows, fold = forgetting_rows(meta, self.s.forgetting_rows, self.s.seed, self.s.data_dir)
            found = None
            if rows is not None and "e_form" in net.heads:
                data = taskdata("mp", self.s.data_dir, rows, "e_form", "e_form")
                fp = fingerprint({"ckpt": self.identity, "rows": len(rows), "seed": self.s.seed})
                before = self.cells.run(  # another worker may hold it: then nothing is kept yet
                    CellKey("forgetting", "pretrained", fold),
                    fp,
                    lambda: {"before": eform_mae(net, net, data)[0], "rows": len(rows), "mp_fold": fold},
                )
                found = Forgetting(data, before)
            self._forgetting = found
        return self._forgetting

    def forgetting_after(self, net) -> dict | None:
        """The forgetting record of a fine-tuned model (None without forgetting rows)."""
        f = self.forgetting()
        if f is None:
            return None
        after, how = eform_mae(net, self.base[0], f.data)
        return {"before": f.before["before"], "after": after, "how": how, "rows": f.before["rows"]}
