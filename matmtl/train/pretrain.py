"""Pretraining on DFT data (formation energy; optionally the PBE band gap)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..checkpoints import read_json, save_checkpoint
from ..errors import MatmtlError
from ..io import atomic_write_json
from ..models import ModelConfig, MultiTaskModel, TaskSpec
from .balancing import MTLSettings, make_combiner
from .data import TASK_KIND, TASK_UNIT, dft_split, parse_fold
from .engine import Source, TrainConfig, Trainer, evaluate_rows, pick_device, set_determinism, task_keys
from .runs import latest_run, new_run_dir
from .report import finish_run


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    history: list = field(default_factory=list)
    finished: bool = True


def pretrain(
    tasks: list[str] | tuple[str, ...] = ("e_form",),
    *,
    dataset: str = "mp",
    out: str | Path | None = None,
    holdout_fold: int | str | None = 0,
    max_rows: int | None = None,
    model: ModelConfig | None = None,
    train: TrainConfig | None = None,
    balancing: str = "static",
    surgery: str = "none",
    soft_share: float = 0.0,
    monitor_every: int = 0,
    monitor_k: int = 4,
    task_weights: dict[str, float] | None = None,
    resume: bool | str | Path = False,
    data_dir: str | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> RunResult:
    """Train the multi-task model on DFT data and write a run folder (checkpoint,
    metrics.json, config.json, history, PNG plots). ``resume`` continues an unfinished
    run (True: the latest unfinished pretrain run, or ``out``; or a run folder path)."""
    if resume:
        run_dir = _resume_dir("pretrain", resume, out)
        cfg = read_json(run_dir / "config.json")
    else:
        if dataset not in ("mp", "mp_e_form", "matbench_mp_e_form"):
            raise MatmtlError(f"pretrain --dataset: only 'mp' (matbench mp_e_form, + mp_gap via --tasks) is supported, got {dataset!r}")
        tasks = [t.strip() for t in tasks if t.strip()]
        if "e_form" not in tasks:
            raise MatmtlError("pretraining needs the main task e_form (e.g. --tasks e_form or --tasks e_form,gap_pbe)")
        if soft_share:
            raise MatmtlError("--soft-share pulls the encoder towards pretrained weights: use it with finetune, not pretrain")
        train = train or TrainConfig()
        model = model or ModelConfig()
        cfg = {
            "kind": "pretrain", "dataset": "mp", "tasks": list(tasks), "holdout_fold": parse_fold(holdout_fold),
            "max_rows": max_rows, "model": model.to_dict(), "train": train.to_dict(),
            "mtl": MTLSettings(balancing, surgery, soft_share, monitor_every, monitor_k).to_dict(),
            "task_weights": task_weights or {}, "data_dir": data_dir,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        run_dir = new_run_dir("pretrain", out)
        atomic_write_json(run_dir / "config.json", cfg)

    tcfg = TrainConfig(**cfg["train"])
    tcfg.device = pick_device(tcfg.device)
    mcfg = ModelConfig.from_dict(cfg["model"])
    tasks = cfg["tasks"]
    set_determinism(tcfg.seed, tcfg.threads)
    tr, te, info = dft_split(tasks, cfg["holdout_fold"], cfg["max_rows"], tcfg.seed, cfg.get("data_dir"))
    tr = tr.with_bootstrap(mcfg.members, tcfg.seed)
    specs = []
    for t in tasks:
        y = tr.targets[t][np.isfinite(tr.targets[t])]
        if TASK_KIND[t] == "regression":
            specs.append(TaskSpec(t, "regression", TASK_UNIT[t], float(y.mean()), float(y.std() or 1.0)))
        else:
            specs.append(TaskSpec(t, "hurdle", TASK_UNIT[t]))
    set_determinism(tcfg.seed, tcfg.threads)
    net = MultiTaskModel(mcfg, specs)
    sources = [Source(tr, tasks, tcfg.batch_size)]
    combiner = make_combiner(task_keys(sources), cfg["task_weights"], MTLSettings(**cfg.get("mtl", {})), seed=tcfg.seed)
    # per-epoch score on a fixed random sample of the held-out rows (the source order is not random)
    val_idx = np.sort(np.random.default_rng([tcfg.seed, 99]).permutation(len(te))[:tcfg.val_rows])
    val_small = te.subset(val_idx) if len(te) else None

    def evaluate(m, final: bool) -> dict:
        if val_small is None:
            return {}
        return {f"val_{k}": v for k, v in evaluate_rows(m, val_small, tasks).items()}

    trainer = Trainer(net, tcfg, combiner, sources, run_dir / "state", evaluate,
                      progress=progress, label="pretrain")
    trainer.load_state()
    t0 = time.time()
    history = trainer.fit(stop_after=stop_after)
    if trainer.epoch < tcfg.epochs:
        return RunResult(run_dir, {}, history, finished=False)
    metrics = {
        "kind": "pretrain", "tasks": tasks, "holdout_fold": cfg["holdout_fold"], "data": info,
        "epochs": trainer.epoch, "train_seconds": round(sum(h["seconds"] for h in history), 1),
        "this_call_seconds": round(time.time() - t0, 1),
    }
    meta = {
        "kind": "pretrain", "config": cfg, "elements": tr.elements(), "featurizer": _featurizer_settings(),
        "data_sha256": tr.digest(), "combiner": combiner.config(),
    }
    metrics.update(finish_run(run_dir, net, te, tasks, history, meta, metrics, combiner, progress))
    return RunResult(run_dir, metrics, history)


def _featurizer_settings() -> dict:
    from ..data import Featurizer

    return Featurizer().settings()


def _resume_dir(kind: str, resume, out) -> Path:
    if isinstance(resume, (str, Path)) and not isinstance(resume, bool):
        run_dir = Path(resume).expanduser()
    elif out is not None:
        run_dir = Path(out).expanduser()
    else:
        run_dir = latest_run(kind, complete=False)
        if run_dir is None:
            raise MatmtlError(f"--resume: no unfinished {kind} run in the user cache; give the run folder with --out")
    if not (run_dir / "config.json").exists():
        raise MatmtlError(f"--resume: {run_dir} is not a {kind} run folder (no config.json)")
    if (run_dir / "model.json").exists():
        raise MatmtlError(f"--resume: {run_dir} already finished (model.json is there); nothing to resume")
    return run_dir
