"""The neural cells: pretraining checkpoints, the fine-tuning variants, forgetting and
the matbench mp tasks. Every run goes through the project's own ``pretrain`` and
``finetune`` (so the evaluation measures exactly what users run); this module only
chooses their arguments, resumes their run folders and scores their checkpoints.

Variants (all fine-tuned with the same TrainConfig on the same rows):

* ``scratch``: ``finetune(aux=())`` from a *randomly initialised* checkpoint of the
  same architecture (same ModelConfig and heads, seeded, never trained). The only
  difference from ``finetune`` is the starting weights.
* ``finetune``: the pretrained checkpoint, no anchor (``aux=()``).
* ``finetune_anchor_replay`` / ``finetune_anchor_distill``: ``aux=("dft_energy",)``
  with replayed DFT rows / the pretrained model's own e_form predictions as targets.
* ``finetune_anchor_pcgrad``: the selected anchor source with ``surgery="pcgrad"``.
"""
from __future__ import annotations

import copy
import inspect
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MatmtlError

ANCHOR_SOURCES = {"finetune_anchor_replay": "replay", "finetune_anchor_distill": "distill"}


@dataclass(frozen=True)
class VariantSpec:
    name: str
    init: str  # "pretrained" | "scratch"
    aux: tuple[str, ...] = ()
    aux_source: str = "replay"
    surgery: str = "none"
    description: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "init": self.init, "aux": list(self.aux), "aux_source": self.aux_source if self.aux else None,
                "surgery": self.surgery}

    @property
    def anchored(self) -> bool:
        return bool(self.aux)


VARIANTS: dict[str, VariantSpec] = {
    "scratch": VariantSpec("scratch", "scratch", description="same architecture, random init, expt_gap only"),
    "finetune": VariantSpec("finetune", "pretrained", description="pretrained on mp, fine-tuned without an anchor"),
    "finetune_anchor_replay": VariantSpec("finetune_anchor_replay", "pretrained", ("dft_energy",), "replay",
                                          description="+ e_form anchor, replayed DFT rows (true labels)"),
    "finetune_anchor_distill": VariantSpec("finetune_anchor_distill", "pretrained", ("dft_energy",), "distill",
                                           description="+ e_form anchor, pretrained model's predictions as targets"),
}


def pcgrad_spec(source: str) -> VariantSpec:
    return VariantSpec("finetune_anchor_pcgrad", "pretrained", ("dft_energy",), source, "pcgrad",
                       description=f"+ e_form anchor ({source}) with PCGrad gradient surgery")


def finetune_accepts(name: str) -> bool:
    from ..train.finetune import finetune

    return name in inspect.signature(finetune).parameters


def pcgrad_available() -> tuple[bool, str]:
    """Whether ``finetune`` can do PCGrad here (the option arrived while this harness
    was written; older trees answer 'not available' with the reason)."""
    if not finetune_accepts("surgery"):
        return False, "matmtl.train.finetune.finetune has no surgery= option in this version"
    try:
        from ..mtl import SURGERIES
    except ImportError:  # pragma: no cover
        return True, ""
    return ("pcgrad" in SURGERIES), ("" if "pcgrad" in SURGERIES else "PCGrad is not among matmtl.mtl.SURGERIES")


# -- checkpoints --------------------------------------------------------------------

def checkpoint_identity(path: str | Path) -> dict:
    """What identifies a checkpoint's weights for the cell fingerprints."""
    from ..checkpoints import read_json, resolve

    meta = read_json(resolve(path) / "model.json")
    cfg = meta.get("config", {})
    return {"data_sha256": meta.get("data_sha256"), "created": meta.get("created"), "kind": meta.get("kind"),
            "model_config": meta.get("model_config"), "tasks": [t.get("name") for t in meta.get("tasks", [])],
            "holdout_fold": cfg.get("holdout_fold"), "max_rows": cfg.get("max_rows"), "train": cfg.get("train")}


def _call(fn, **kwargs):
    """Call ``fn`` with the keyword arguments it accepts (the training APIs grow options)."""
    params = inspect.signature(fn).parameters
    return fn(**{k: v for k, v in kwargs.items() if k in params})


def prepare_run_dir(run_dir: Path) -> str:
    """'done' (finished checkpoint), 'resume' (a resumable state) or 'new' (absent; a
    folder that can be neither finished nor resumed is moved aside, never deleted)."""
    if (run_dir / "model.json").is_file():
        return "done"
    if (run_dir / "config.json").is_file() and (run_dir / "state" / "state.json").is_file():
        return "resume"
    if run_dir.exists() and any(run_dir.iterdir()):
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}"))
    return "new"


def ensure_pretrain(run_dir: Path, *, tasks, fold: int, max_rows, model_cfg, train_cfg, data_dir, progress: bool,
                    monitor_every: int = 0) -> Path:
    """A finished pretraining run in ``run_dir`` (trained, resumed or reused)."""
    from ..train.pretrain import pretrain

    state = prepare_run_dir(run_dir)
    if state == "done":
        return run_dir
    if state == "resume":
        res = pretrain(resume=run_dir, progress=progress)
    else:
        res = _call(pretrain, tasks=list(tasks), out=run_dir, holdout_fold=fold, max_rows=max_rows, model=model_cfg,
                    train=train_cfg, data_dir=data_dir, progress=progress, monitor_every=monitor_every)
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
    save_checkpoint(folder, net, {
        "kind": "init", "note": "random initialisation (the scratch variant's start); never trained",
        "config": {"holdout_fold": cfg.get("holdout_fold"), "max_rows": cfg.get("max_rows"), "data_dir": cfg.get("data_dir"),
                   "model": base.cfg.to_dict(), "init_seed": seed},
        "elements": [], "featurizer": meta.get("featurizer"), "data_sha256": None,
    })
    return folder


# -- data for scoring -----------------------------------------------------------------

_DATA_CACHE: dict = {}


def _taskdata(name: str, data_dir, pos: np.ndarray, task: str, col: str):
    from ..train.data import _load, to_taskdata

    key = (name, data_dir, task, col, pos.tobytes())
    if key not in _DATA_CACHE:
        if len(_DATA_CACHE) > 16:
            _DATA_CACHE.clear()
        _DATA_CACHE[key] = to_taskdata(_load(name, data_dir), pos, {task: col})
    return _DATA_CACHE[key]


def forgetting_rows(base_meta: dict, n_rows: int, seed: int, data_dir) -> tuple[np.ndarray | None, int | None]:
    """A fixed, seeded subset of the pretraining run's held-out mp_e_form fold (None
    when the checkpoint was trained on every row)."""
    from ..train.data import _load

    fold = base_meta.get("config", {}).get("holdout_fold")
    if fold is None:
        return None, None
    _, te = _load("mp", data_dir).folds()[int(fold)]
    if n_rows < len(te):
        te = np.sort(np.random.default_rng([seed, 2024]).choice(te, n_rows, replace=False))
    return te, int(fold)


def eform_mae(net, base_net, data) -> tuple[float, str]:
    """e_form MAE of ``net`` on ``data``. A model whose e_form head was dropped (plain
    fine-tuning) is scored with the *pretrained* e_form head on its fine-tuned encoder,
    i.e. how far the shared representation moved away from what that head reads."""
    how = "own e_form head"
    if "e_form" not in net.heads:
        net = copy.deepcopy(net)
        net.add_task(copy.deepcopy(base_net.tasks["e_form"]))
        net.heads["e_form"].load_state_dict(base_net.heads["e_form"].state_dict())
        how = "pretrained e_form head on the fine-tuned encoder"
    p = net.predict_arrays(data.z, data.frac, data.spg, ["e_form"])["e_form"].mean(1)
    y = np.asarray(data.targets["e_form"], dtype=np.float64)
    return float(np.abs(p - y).mean()), how


# -- relatedness records ------------------------------------------------------------

def monitor_records(run_dir: Path, metrics: dict) -> list[dict]:
    """Gradient-monitor records a fine-tuning run wrote: ``metrics["gradient_geometry"]``
    (principal angles + mean-gradient cosines), else ``gradient_geometry.json`` or the
    older ``gradient_cosines.json`` (pairwise cosines) in the run folder."""
    import json

    recs = metrics.get("gradient_geometry")
    if isinstance(recs, list) and recs:
        return recs
    for name in ("gradient_geometry.json", "gradient_cosines.json"):
        p = Path(run_dir) / name
        if p.is_file():
            try:
                obj = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(obj, list) and obj:
                return obj
    return []


# -- fine-tuning cells ----------------------------------------------------------------

@dataclass
class FinetuneJob:
    spec: VariantSpec
    checkpoint: Path
    run_dir: Path
    dataset: str  # "expt_gap" or a path to a training-fold table (inner validation)
    holdout_fold: int
    max_train_rows: int | None
    train_cfg: object
    aux_weight: float
    replay_max_rows: int | None
    monitor_every: int
    monitor_k: int
    data_dir: str | None
    progress: bool
    extra: dict = field(default_factory=dict)


def run_finetune(job: FinetuneJob):
    """Train (or resume, or reuse) one fine-tuning run; returns (net, metrics)."""
    from ..checkpoints import load_checkpoint, read_json
    from ..train.finetune import finetune

    spec = job.spec
    if spec.surgery != "none":
        ok, why = pcgrad_available()
        if not ok:
            raise NotAvailable(why)
    state = prepare_run_dir(job.run_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DataWarnings about left-out rows are recorded in metrics
        if state == "resume":
            res = finetune(resume=job.run_dir, progress=job.progress)
        elif state == "new":
            kwargs = dict(checkpoint=job.checkpoint, dataset=job.dataset, aux=list(spec.aux), aux_source=spec.aux_source,
                          aux_weight=job.aux_weight, holdout_fold=job.holdout_fold, max_train_rows=job.max_train_rows,
                          replay_max_rows=job.replay_max_rows, out=job.run_dir, train=job.train_cfg,
                          data_dir=job.data_dir, progress=job.progress)
            if spec.surgery != "none":
                kwargs["surgery"] = spec.surgery
            if spec.anchored and job.monitor_every:
                if finetune_accepts("monitor_every"):
                    kwargs.update(monitor_every=job.monitor_every, monitor_k=job.monitor_k)
                elif finetune_accepts("monitor"):
                    kwargs["monitor"] = "cosine"
            res = _call(finetune, **kwargs)
        else:
            res = None
    if res is not None and not res.finished:
        raise MatmtlError(f"fine-tuning in {job.run_dir} did not finish")
    net, _ = load_checkpoint(job.run_dir)
    metrics = read_json(job.run_dir / "metrics.json")
    return net, metrics


class NotAvailable(MatmtlError):
    """A variant this version of matmtl cannot run (reported, not an error)."""


def predict_gap(net, data) -> np.ndarray:
    return net.predict_arrays(data.z, data.frac, data.spg, ["gap_expt"])["gap_expt"].mean(1)


def cleanup(run_dir: Path, keep: bool) -> None:
    """Run folders of finished cells are removed unless kept (their numbers live in the
    cell record; a default-size fine-tuning folder with its state is ~20 MB)."""
    if not keep and run_dir.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
