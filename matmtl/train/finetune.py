"""Fine-tuning a pretrained model on experimental band gaps with DFT tasks kept as an
auxiliary anchor loss.

* ``aux_source="replay"``: every step also takes a mini-batch of the original DFT
  training rows (true labels) for the auxiliary heads.
* ``aux_source="distill"``: the pretrained model's own predictions for the auxiliary
  tasks on the fine-tuning compositions are the auxiliary targets (no DFT data needed).

The loss of a step is ``L_gap_expt + aux_weight * sum(L_aux)`` (static weights),
combined by :class:`~matmtl.train.balancing.MTLCombiner` over :mod:`matmtl.mtl`:
loss balancing (``balancing=``), gradient surgery (``surgery=``), L2-SP soft sharing
towards the pretrained encoder (``soft_share=``) and the gradient-geometry monitor
(``monitor_every=``, ``monitor_k=``).
"""
from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import CheckpointError, load_checkpoint, read_json
from ..data import DataWarning
from ..errors import MatmtlError
from ..io import atomic_write_json
from ..models import TaskSpec
from .balancing import MTLSettings, make_combiner
from .data import AUX_ALIASES, _load, dft_split, parse_fold, split_rows, to_taskdata
from .engine import Source, TaskData, TrainConfig, Trainer, evaluate_rows, pick_device, set_determinism, task_keys
from .pretrain import RunResult, _featurizer_settings, _resume_dir
from .report import finish_run
from .runs import latest_run, new_run_dir, runs_root

MAIN_TASK = "gap_expt"
FINETUNE_DEFAULTS = dict(epochs=60, batch_size=64, lr=5e-4, weight_decay=1e-4, warmup=0.05, sym_dropout=0.25)


def finetune_defaults() -> TrainConfig:
    return TrainConfig(**FINETUNE_DEFAULTS)


def find_pretrained(checkpoint: str | Path | None) -> Path:
    if checkpoint is not None:
        return Path(checkpoint).expanduser()
    found = latest_run("pretrain")
    if found is None:
        raise MatmtlError(f"no pretrained model in {runs_root()}; make one with `matmtl pretrain` "
                          "(or pass --checkpoint PATH)")
    return found


def parse_aux(aux) -> list[str]:
    items = [aux] if isinstance(aux, str) else list(aux or [])
    names = [a.strip() for item in items for a in str(item).split(",") if a.strip()]
    if not names or names == ["none"]:
        return []
    out = []
    for a in names:
        if a not in AUX_ALIASES:
            raise MatmtlError(f"--aux: unknown auxiliary task {a!r}; choose from dft_energy, dft_gap or none")
        if AUX_ALIASES[a] not in out:
            out.append(AUX_ALIASES[a])
    return out


def finetune(
    *,
    checkpoint: str | Path | None = None,
    dataset: str = "expt_gap",
    target: str | None = None,
    aux=("dft_energy",),
    aux_source: str = "replay",
    aux_weight: float = 0.5,
    holdout_fold: int | str | None = 0,
    max_train_rows: int | None = None,
    replay_max_rows: int | None = None,
    out: str | Path | None = None,
    train: TrainConfig | None = None,
    balancing: str = "static",
    surgery: str = "none",
    soft_share: float = 0.0,
    monitor_every: int = 0,
    monitor_k: int = 4,
    resume: bool | str | Path = False,
    data_dir: str | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> RunResult:
    """Fine-tune a pretrained checkpoint on experimental band gaps (see module doc)."""
    if resume:
        run_dir = _resume_dir("finetune", resume, out)
        cfg = read_json(run_dir / "config.json")
    else:
        if aux_source not in ("replay", "distill"):
            raise MatmtlError(f"--aux-source must be 'replay' or 'distill', got {aux_source!r}")
        if aux_weight < 0:
            raise MatmtlError(f"--aux-weight must be >= 0, got {aux_weight}")
        ckpt = find_pretrained(checkpoint)
        load_checkpoint(ckpt)  # fail early, naming the file, before a run folder is made
        train = train or finetune_defaults()
        cfg = {
            "kind": "finetune", "checkpoint": str(Path(ckpt).resolve()), "dataset": dataset, "target": target,
            "aux": parse_aux(aux), "aux_source": aux_source, "aux_weight": float(aux_weight),
            "holdout_fold": parse_fold(holdout_fold), "max_train_rows": max_train_rows,
            "replay_max_rows": replay_max_rows, "train": train.to_dict(),
            "mtl": MTLSettings(balancing, surgery, soft_share, monitor_every, monitor_k).to_dict(),
            "data_dir": data_dir, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        _check_aux(cfg["aux"], ckpt)
        ds, bad = _finetune_table(dataset, target, data_dir)  # read before making a folder: bad files fail cleanly
        run_dir = new_run_dir("finetune", out)
        atomic_write_json(run_dir / "config.json", cfg)
    tcfg = TrainConfig(**cfg["train"])
    tcfg.device = pick_device(tcfg.device)
    set_determinism(tcfg.seed, tcfg.threads)

    base, base_meta = load_checkpoint(cfg["checkpoint"])
    aux_tasks = cfg["aux"]
    _check_aux(aux_tasks, cfg["checkpoint"], base)
    ds, bad = _finetune_table(cfg["dataset"], cfg["target"], cfg.get("data_dir"))
    col = _target_column(ds, cfg["target"])
    y_all = ds.target(col)
    if np.any(y_all < 0):
        raise MatmtlError(f"{cfg['dataset']}: target {col!r} has negative values; a band gap must be >= 0")
    tr_pos, te_pos = split_rows(ds, cfg["holdout_fold"], cfg["max_train_rows"], tcfg.seed, shrink_test=False)
    tr = to_taskdata(ds, tr_pos, {MAIN_TASK: col})
    te = to_taskdata(ds, te_pos, {MAIN_TASK: col})

    model = copy.deepcopy(base)
    new_head = TaskSpec(MAIN_TASK, "hurdle", "eV")
    model.add_task(new_head)
    if "gap_pbe" in base.heads:  # start the experimental head from the DFT gap head
        model.heads[MAIN_TASK].load_state_dict(base.heads["gap_pbe"].state_dict())
    sources = []
    if aux_tasks and cfg["aux_source"] == "distill":
        teacher = base.predict_arrays(tr.z, tr.frac, tr.spg, aux_tasks)
        for t in aux_tasks:
            tr.targets[t] = teacher[t].mean(1).astype(np.float32)
        main_tasks = [MAIN_TASK, *aux_tasks]
    else:
        main_tasks = [MAIN_TASK]
    tr = tr.with_bootstrap(model.cfg.members, tcfg.seed)
    sources.append(Source(tr, main_tasks, tcfg.batch_size, "expt"))
    replay_info = None
    if aux_tasks and cfg["aux_source"] == "replay":
        pcfg = base_meta.get("config", {})
        rep, _, replay_info = dft_split(aux_tasks, pcfg.get("holdout_fold", 0),
                                        cfg.get("replay_max_rows") or pcfg.get("max_rows"), tcfg.seed,
                                        cfg.get("data_dir") or pcfg.get("data_dir"))
        sources.append(Source(rep.with_bootstrap(model.cfg.members, tcfg.seed + 1), aux_tasks, tcfg.batch_size, "replay"))
    weights = {MAIN_TASK: 1.0, **{t: cfg["aux_weight"] for t in aux_tasks},
               **{f"{t}@replay": cfg["aux_weight"] for t in aux_tasks}}
    # soft sharing (L2-SP) pulls the encoder towards the pretrained one, also after a resume
    reference = [p.detach().clone() for p in base.shared_parameters()]
    combiner = make_combiner(task_keys(sources), weights, MTLSettings(**cfg.get("mtl", {})), reference, tcfg.seed)

    def evaluate(m, final: bool) -> dict:
        return {f"val_{k}": v for k, v in evaluate_rows(m, te, [MAIN_TASK]).items()} if len(te) else {}

    trainer = Trainer(model, tcfg, combiner, sources, run_dir / "state", evaluate, progress=progress, label="finetune")
    trainer.load_state()
    t0 = time.time()
    history = trainer.fit(stop_after=stop_after)
    if trainer.epoch < tcfg.epochs:
        return RunResult(run_dir, {}, history, finished=False)
    # heads that were not trained here no longer match the fine-tuned encoder: drop them
    dropped = [t for t in list(model.heads) if t not in (MAIN_TASK, *aux_tasks)]
    for t in dropped:
        del model.heads[t]
        del model.tasks[t]
    metrics = {
        "kind": "finetune", "dataset": ds.name, "target_column": col, "aux": aux_tasks,
        "aux_source": cfg["aux_source"] if aux_tasks else None, "aux_weight": cfg["aux_weight"],
        "holdout_fold": cfg["holdout_fold"], "train_rows": int(len(tr)), "holdout_rows": int(len(te)),
        "bad_rows": bad, "replay": replay_info, "dropped_heads": dropped, "epochs": trainer.epoch,
        "train_seconds": round(sum(h["seconds"] for h in history), 1), "this_call_seconds": round(time.time() - t0, 1),
    }
    elements = sorted(set(base_meta.get("elements", [])) | set(tr.elements()))
    meta = {
        "kind": "finetune", "config": cfg, "parent": {"checkpoint": cfg["checkpoint"],
                                                      "data_sha256": base_meta.get("data_sha256"),
                                                      "metrics": base_meta.get("metrics", {}).get("holdout")},
        "elements": elements, "featurizer": _featurizer_settings(), "data_sha256": tr.digest(),
        "combiner": combiner.config(),
        # kept DFT heads start from the parent's calibration; held-out labels refit it
        "uncertainty": {t: {**c, "from": "parent checkpoint"}
                        for t, c in base_meta.get("uncertainty", {}).items() if t in aux_tasks},
    }
    eval_tasks = [MAIN_TASK] + [t for t in aux_tasks if t in te.targets]
    metrics.update(finish_run(run_dir, model, te, eval_tasks, history, meta, metrics, combiner, progress))
    return RunResult(run_dir, metrics, history)


def _check_aux(aux_tasks: list[str], ckpt, model=None) -> None:
    if model is None:
        meta = read_json(Path(ckpt) / "model.json") if Path(ckpt).is_dir() else read_json(Path(ckpt).parent / "model.json")
        have = {t["name"] for t in meta.get("tasks", [])}
    else:
        have = set(model.tasks)
    for t in aux_tasks:
        if t not in have:
            hint = " (pretrain with --tasks e_form,gap_pbe to get a DFT gap head)" if t == "gap_pbe" else ""
            raise MatmtlError(f"--aux: the pretrained checkpoint {ckpt} has no {t!r} head{hint}")


def _finetune_table(dataset: str, target: str | None, data_dir):
    """The fine-tuning Dataset and a summary of the bad rows left out (reported, not silent)."""
    from ..data import load_dataset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        if Path(dataset).expanduser().suffix or Path(dataset).expanduser().exists():
            ds = load_dataset(str(Path(dataset).expanduser()))
        else:
            ds = _load(dataset, data_dir)
    msgs = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    for m in msgs:
        warnings.warn(m, DataWarning, stacklevel=3)
    bad = ds.bad_rows.to_dict() if ds.bad_rows.n_bad else None
    return ds, bad


def _target_column(ds, target: str | None) -> str:
    if target:
        if target not in ds.targets:
            raise MatmtlError(f"{ds.name}: no target column {target!r}; targets: {ds.targets}")
        return target
    if len(ds.targets) == 1:
        return ds.targets[0]
    gaps = [t for t in ds.targets if "gap" in t.lower()]
    if len(gaps) == 1:
        return gaps[0]
    raise MatmtlError(f"{ds.name}: several target columns {ds.targets}; choose one with --target")
