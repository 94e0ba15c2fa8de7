"""The evaluation harness: which cells to run, in which order, and the results files.

See docs/evaluation.md for the protocol, the options and the expected runtime.
"""
from __future__ import annotations

import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import MatmtlError
from ..io import atomic_write, atomic_write_json, cache_dir
from . import protocol
from .cells import CellKey, CellStore, fingerprint, frac_label
from .metrics import aggregate_folds, mean_std, regression_metrics
from .relatedness import average_over_folds, summarize_records
from .report import LEADERBOARD

NEURAL_VARIANTS = ("scratch", "finetune", "finetune_anchor_replay", "finetune_anchor_distill", "finetune_anchor_pcgrad")
ALL_VARIANTS = ("rf_magpie",) + NEURAL_VARIANTS
ANCHORED = ("finetune_anchor_replay", "finetune_anchor_distill", "finetune_anchor_pcgrad")
DEFAULT_FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)
EFFICIENCY_VARIANTS = ("scratch", "finetune", "finetune_anchor")

# --quick: tiny models, capped rows: a smoke test of the whole pipeline in about a minute
QUICK = {"expt_cap": 200, "forgetting_rows": 200, "mp_test_cap": 300, "rf_trees": 25, "pretrain_max_rows": 400,
         "replay_max_rows": 400, "monitor_every": 5}


@dataclass
class EvalSettings:
    variants: tuple[str, ...] = ALL_VARIANTS
    folds: tuple[int, ...] = (0, 1, 2, 3, 4)
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    efficiency_variants: tuple[str, ...] = EFFICIENCY_VARIANTS
    efficiency_folds: tuple[int, ...] | None = None  # None: the same as folds
    mp_folds: tuple[int, ...] | None = None  # None: fold 0 on CPU, all 5 on CUDA
    skip_baseline: bool = False
    skip_mp: bool = False
    checkpoint: str | None = None
    quick: bool = False
    out: str = "results"
    markdown: str | None = "docs/results.md"
    work_dir: str | None = None  # default: <matmtl cache>/eval
    train_overrides: dict = field(default_factory=dict)  # fine-tuning TrainConfig fields
    pretrain_overrides: dict = field(default_factory=dict)  # pretraining TrainConfig fields
    model_overrides: dict = field(default_factory=dict)  # pretraining ModelConfig fields
    pretrain_tasks: tuple[str, ...] = ("e_form", "gap_pbe")
    pretrain_fold: int = 0
    anchor: str = "inner"  # inner | replay | distill
    aux_weight: float = 0.5
    monitor_every: int = 50
    monitor_k: int = 4
    forgetting_rows: int = 5000
    rf_trees: int = 500
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    keep_runs: bool = False
    progress: bool = True
    command: str = ""

    def __post_init__(self) -> None:
        bad = [v for v in self.variants if v not in ALL_VARIANTS]
        if bad:
            raise MatmtlError(f"--variants: unknown {bad}; choose from {', '.join(ALL_VARIANTS)}")
        bad = [v for v in self.efficiency_variants if v not in EFFICIENCY_VARIANTS + ("rf_magpie",)]
        if bad:
            raise MatmtlError(f"--efficiency-variants: unknown {bad}; choose from scratch, finetune, finetune_anchor, rf_magpie")
        if self.efficiency_folds is None:
            self.efficiency_folds = tuple(self.folds)
        bad = [k for k in self.efficiency_folds if k not in self.folds]
        if bad:
            raise MatmtlError(f"--efficiency-folds {bad} are not among --folds {list(self.folds)}")
        for name, folds in (("--folds", self.folds), ("--mp-folds", self.mp_folds or ())):
            if any(not 0 <= int(k) <= 4 for k in folds) or len(set(folds)) != len(folds):
                raise MatmtlError(f"{name} must be distinct folds among 0..4, got {list(folds)}")
        if not self.folds:
            raise MatmtlError("--folds: give at least one fold")
        if any(not 0 < f <= 1 for f in self.fractions):
            raise MatmtlError(f"--fractions must lie in (0, 1], got {list(self.fractions)}")
        if self.anchor not in ("inner", "replay", "distill"):
            raise MatmtlError(f"--anchor must be inner, replay or distill, got {self.anchor!r}")
        if self.aux_weight < 0 or self.monitor_every < 0 or self.forgetting_rows < 1 or self.rf_trees < 1:
            raise MatmtlError("--aux-weight, --monitor-every must be >= 0; --forgetting-rows, --rf-trees >= 1")
        self.folds = tuple(sorted(int(k) for k in self.folds))
        self.fractions = tuple(sorted(set(float(f) for f in self.fractions)))
        if self.quick:
            self.forgetting_rows = min(self.forgetting_rows, QUICK["forgetting_rows"])
            self.rf_trees = min(self.rf_trees, QUICK["rf_trees"])
            self.monitor_every = min(self.monitor_every, QUICK["monitor_every"]) if self.monitor_every else 0

    @property
    def baseline(self) -> bool:
        return "rf_magpie" in self.variants and not self.skip_baseline

    @property
    def neural(self) -> list[str]:
        return [v for v in self.variants if v in NEURAL_VARIANTS]

    @property
    def cap(self) -> int | None:
        return QUICK["expt_cap"] if self.quick else None


def resolve_device(name: str) -> str:
    """auto -> cuda when a GPU is visible, else cpu (the trainer's own rule)."""
    from ..train.engine import pick_device

    return pick_device(name)


def hardware_string(device: str) -> str:
    """CPU model, cores available, memory, GPU (when used), torch and OS."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count()
    try:
        mem = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        mem = ""
    import torch

    gpu = f"GPU {torch.cuda.get_device_name(0)}" if device == "cuda" else "no GPU (CPU only)"
    return f"{cpu}, {cores} cores available{mem}; {gpu}; torch {torch.__version__}; {platform.system()} {platform.release()}"


def _apply(obj, overrides: dict, what: str):
    """Set dataclass fields from ``{name: value}`` (values may be strings from the command line)."""
    fields = getattr(obj, "__dataclass_fields__", {})
    for k, v in overrides.items():
        if k not in fields:
            raise MatmtlError(f"{what}: unknown field {k!r}; fields: {', '.join(fields)}")
        cur = getattr(obj, k)
        try:
            if isinstance(cur, bool):
                v = v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true", "yes", "on")
            elif isinstance(cur, int):
                v = int(float(v)) if float(v) == int(float(v)) else _bad(what, k, v)
            elif isinstance(cur, float):
                v = float(v)
            elif cur is not None:
                v = type(cur)(v)
        except (TypeError, ValueError):
            _bad(what, k, v)
        setattr(obj, k, v)
    return obj


def _bad(what, k, v):
    raise MatmtlError(f"{what}: bad value {v!r} for {k}")


class Evaluation:
    """One invocation of the harness (``run()`` does everything)."""

    def __init__(self, settings: EvalSettings, console=None):
        from rich.console import Console

        self.s = settings
        self.device = resolve_device(settings.device)
        self.console = console or Console()
        self.work = Path(settings.work_dir).expanduser() if settings.work_dir else cache_dir() / "eval"
        self.store = CellStore(self.work)
        self.out = Path(settings.out)
        self.hardware = hardware_string(self.device)
        self.t0 = time.time()
        self.n_cells = 0
        self.unavailable: dict[str, str] = {}
        # collected records: expt[variant][fold], eff[(variant, fraction)][fold], mp[fold]
        self.expt: dict[str, dict[int, dict]] = {}
        self.eff: dict[str, dict[float, dict[int, dict]]] = {}
        self.selection: dict[int, dict] = {}
        self.mp: dict[int, dict] = {}
        self.pretrain_info: dict = {}
        self._ds = None
        self._magpie_all = None
        self._transfer: Path | None = None
        self._base = None
        self._scratch: Path | None = None
        self._forget = None
        self._before: dict | None = None
        self._memo: dict = {}
        self.results: dict = {}
        self.folds_check: dict = {"checked": False}

    # -- shared pieces --------------------------------------------------------------
    @property
    def ds(self):
        if self._ds is None:
            from ..data import DataWarning, load_dataset

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DataWarning)
                self._ds = load_dataset("expt_gap", self.s.data_dir)
        return self._ds

    def cell(self, key: CellKey, fp: str, compute: Callable[[], dict]) -> dict:
        """The record of a cell: from the store when finished with these settings, else
        computed (timed) and stored atomically."""
        if (key, fp) in self._memo:
            return self._memo[(key, fp)]
        self.n_cells += 1
        rec = self.store.get(key, fp)
        tag = f"[cyan][{self.n_cells}][/] {key.label()}"
        if rec is not None:
            self.console.print(f"{tag}: [dim]cached[/] {self._brief(rec)}")
            self._memo[(key, fp)] = rec
            return rec
        self.console.print(f"{tag}: running ...")
        t0 = time.time()
        try:
            rec = compute()
        except _Unavailable as exc:
            self.console.print(f"{tag}: [yellow]not available[/] ({exc})")
            return {"status": "not available", "reason": str(exc)}
        rec.update(seconds=round(time.time() - t0, 1), command=self.s.command, hardware=self.hardware,
                   finished=time.strftime("%Y-%m-%dT%H:%M:%S"), load_average=_loadavg())
        rec = self.store.put(key, fp, rec)
        self._memo[(key, fp)] = rec
        self.console.print(f"{tag}: [green]done[/] in {rec['seconds']:.0f}s {self._brief(rec)}")
        return rec

    @staticmethod
    def _brief(rec: dict) -> str:
        m = rec.get("metrics") or {}
        if "mae" in m:
            return f"MAE {m['mae']:.4f}"
        if "before" in rec:
            return f"e_form MAE {rec['before']:.4f}"
        parts = [f"{t} MAE {v['mae']:.4f}" for t, v in rec.items() if isinstance(v, dict) and "mae" in v]
        return ", ".join(parts)

    # -- the baseline ---------------------------------------------------------------
    def baseline_fp(self) -> str:
        from .baseline import RF_DEFAULTS, featurizer_id

        return fingerprint({"kind": "rf_magpie", "rf": {**RF_DEFAULTS, "n_estimators": self.s.rf_trees,
                                                        "random_state": self.s.seed},
                            "featurizer": featurizer_id(), "cap": self.s.cap, "seed": self.s.seed, "rows": len(self.ds)})

    def baseline_cell(self, fold: int, fraction: float = 1.0) -> dict:
        key = CellKey("expt_gap", "rf_magpie", fold, fraction)
        return self.cell(key, self.baseline_fp(), lambda: self._run_baseline(fold, fraction))

    def _run_baseline(self, fold: int, fraction: float) -> dict:
        from .baseline import fit_predict_rf, magpie_features

        tr, te = protocol.train_test(self.ds, fold, fraction, self.s.seed, self.s.cap)
        formulas = self.ds.formulas
        if self.s.quick:  # featurize only the rows this cell needs
            rows = np.concatenate([tr, te])
            X_rows, _ = magpie_features([formulas[i] for i in rows])
            Xtr, Xte = X_rows[: len(tr)], X_rows[len(tr):]
        else:
            if self._magpie_all is None:
                self._magpie_all, _ = magpie_features(formulas, progress=self.s.progress)
            Xtr, Xte = self._magpie_all[tr], self._magpie_all[te]
        y = self.ds.target("gap_expt")
        pred = fit_predict_rf(Xtr, y[tr], Xte, n_estimators=self.s.rf_trees, random_state=self.s.seed)
        return {"metrics": regression_metrics(y[te], pred), "n_train": int(len(tr)), "n_test": int(len(te)),
                "pred": pred.tolist()}

    # -- checkpoints ----------------------------------------------------------------
    def pretrain_configs(self):
        from ..models import ModelConfig
        from ..train.engine import TrainConfig

        large = self.device == "cuda" and not self.s.quick
        if self.s.quick:
            mcfg = ModelConfig(dim=32, layers=1, heads=2, head_hidden=32, members=2, spg_dim=8)
            tcfg = TrainConfig(epochs=2, batch_size=64, lr=2e-3, threads=1, val_rows=128)
        elif large:  # the CLI's --size large preset
            mcfg, tcfg = ModelConfig(dim=256, layers=4), TrainConfig(epochs=100, batch_size=1024, lr=2e-3)
        else:
            mcfg, tcfg = ModelConfig(), TrainConfig()
        tcfg.seed, tcfg.device = self.s.seed, self.device
        _apply(mcfg, self.s.model_overrides, "--model-config")
        _apply(tcfg, self.s.pretrain_overrides, "--pretrain-config")
        max_rows = QUICK["pretrain_max_rows"] if self.s.quick else None
        return mcfg, tcfg, max_rows

    def pretrain_fp(self) -> str:
        mcfg, tcfg, max_rows = self.pretrain_configs()
        return fingerprint({"tasks": list(self.s.pretrain_tasks), "model": mcfg.to_dict(), "train": tcfg.to_dict(),
                            "max_rows": max_rows})

    def pretrained(self, fold: int) -> Path:
        """The pretraining run holding out mp fold ``fold`` (given, reused, resumed or trained)."""
        from .neural import checkpoint_identity, ensure_pretrain

        if self.s.checkpoint and checkpoint_identity(self.s.checkpoint).get("holdout_fold") == fold:
            return Path(self.s.checkpoint).expanduser()
        mcfg, tcfg, max_rows = self.pretrain_configs()
        run_dir = self.work / "runs" / "pretrain" / self.pretrain_fp() / f"fold{fold}"
        if not (run_dir / "model.json").is_file():
            self.console.print(f"[bold]pretraining[/] on mp ({', '.join(self.s.pretrain_tasks)}), fold {fold} held out "
                               f"-> {run_dir} (resumable)")
        t0 = time.time()
        ensure_pretrain(run_dir, tasks=self.s.pretrain_tasks, fold=fold, max_rows=max_rows, model_cfg=mcfg,
                        train_cfg=tcfg, data_dir=self.s.data_dir, progress=self.s.progress)
        if time.time() - t0 > 1:
            self.console.print(f"pretraining fold {fold} finished in {time.time() - t0:.0f}s")
        return run_dir

    @property
    def transfer(self) -> Path:
        """The pretrained checkpoint every fine-tuning variant starts from."""
        if self._transfer is None:
            self._transfer = (Path(self.s.checkpoint).expanduser() if self.s.checkpoint
                              else self.pretrained(self.s.pretrain_fold))
            from ..checkpoints import load_checkpoint, read_json

            self._base = load_checkpoint(self._transfer)
            m = read_json(self._transfer / "metrics.json") if (self._transfer / "metrics.json").is_file() else {}
            self.pretrain_info = {"checkpoint": str(self._transfer), "given": bool(self.s.checkpoint),
                                  "holdout_fold": self._base[1].get("config", {}).get("holdout_fold"),
                                  "tasks": list(self._base[0].tasks), "train_seconds": m.get("train_seconds"),
                                  "holdout": m.get("holdout")}
        return self._transfer

    @property
    def scratch_init(self) -> Path:
        from .neural import checkpoint_identity, make_scratch_init

        if self._scratch is None:
            fp = fingerprint({"of": checkpoint_identity(self.transfer), "seed": self.s.seed})
            self._scratch = make_scratch_init(self.work / "init" / fp, self.transfer, self.s.seed)
        return self._scratch

    def finetune_config(self):
        from ..train.finetune import finetune_defaults

        tcfg = finetune_defaults()
        if self.s.quick:
            tcfg.epochs, tcfg.batch_size, tcfg.lr, tcfg.threads, tcfg.val_rows = 2, 32, 1e-3, 1, 128
        tcfg.seed, tcfg.device = self.s.seed, self.device
        return _apply(tcfg, self.s.train_overrides, "--train-config")

    # -- forgetting -----------------------------------------------------------------
    def forgetting_before(self) -> dict | None:
        """The pretrained model's e_form MAE on the fixed held-out subset (cached)."""
        from .neural import _taskdata, checkpoint_identity, eform_mae, forgetting_rows

        if self._before is None:
            _ = self.transfer  # loads self._base
            net, meta = self._base
            rows, fold = forgetting_rows(meta, self.s.forgetting_rows, self.s.seed, self.s.data_dir)
            if rows is None or "e_form" not in net.heads:
                self._before = {}
                return None
            self._forget = _taskdata("mp", self.s.data_dir, rows, "e_form", "e_form")
            key = CellKey("forgetting", "pretrained", fold)
            fp = fingerprint({"ckpt": checkpoint_identity(self.transfer), "rows": len(rows), "seed": self.s.seed})
            self._before = self.cell(key, fp, lambda: {"before": eform_mae(net, net, self._forget)[0],
                                                       "rows": int(len(rows)), "mp_fold": fold})
        return self._before or None

    # -- fine-tuning cells ----------------------------------------------------------
    def inner_table(self, fold: int) -> Path:
        """The training rows of expt_gap fold ``fold`` as a table (in the work folder,
        never in the repository) for the inner validation split."""
        tr, _ = protocol.fold_rows(self.ds, fold)
        path = self.work / "inner" / f"expt_gap-fold{fold}-train.csv"
        if not path.is_file():
            sub = self.ds.frame.iloc[tr][["id", "formula", "gap_expt"]]
            atomic_write(path, lambda tmp: sub.to_csv(tmp, index=False))
        return path

    def finetune_fp(self, spec, inner: bool) -> str:
        from .neural import checkpoint_identity

        ident = checkpoint_identity(self.transfer)
        return fingerprint({
            "spec": spec.to_dict(), "train": self.finetune_config().to_dict(),
            "ckpt": ident if spec.init == "pretrained" else {"init_of": ident, "seed": self.s.seed},
            "aux_weight": self.s.aux_weight if spec.anchored else None,
            "monitor": [self.s.monitor_every, self.s.monitor_k] if spec.anchored else None,
            "cap": self.s.cap, "replay_max_rows": QUICK["replay_max_rows"] if self.s.quick else None,
            "forgetting": None if inner or spec.init != "pretrained" else [self.s.forgetting_rows, self.s.seed],
            "inner": inner, "rows": len(self.ds),
        })

    def finetune_cell(self, spec, fold: int, fraction: float = 1.0, inner: bool = False) -> dict:
        task = "expt_gap_inner" if inner else "expt_gap"
        key = CellKey(task, spec.name, fold, fraction)
        fp = self.finetune_fp(spec, inner)
        return self.cell(key, fp, lambda: self._run_finetune(spec, fold, fraction, inner, fp))

    def _run_finetune(self, spec, fold: int, fraction: float, inner: bool, fp: str) -> dict:
        from .neural import (FinetuneJob, NotAvailable, _taskdata, cleanup, eform_mae, monitor_records, predict_gap,
                             run_finetune)

        before = None if inner or spec.init != "pretrained" else self.forgetting_before()
        ckpt = self.scratch_init if spec.init == "scratch" else self.transfer
        run_dir = self.work / "runs" / ("expt_gap_inner" if inner else "expt_gap") / spec.name / fp / \
            f"fold{fold}-frac{frac_label(fraction)}"
        if inner:
            dataset, holdout, max_rows = str(self.inner_table(fold)), 0, self.s.cap
        else:
            dataset, holdout = "expt_gap", fold
            max_rows = protocol.n_train_rows(self.ds, fold, fraction, self.s.cap)
        job = FinetuneJob(spec, ckpt, run_dir, dataset, holdout, max_rows, self.finetune_config(), self.s.aux_weight,
                          QUICK["replay_max_rows"] if self.s.quick else None, self.s.monitor_every, self.s.monitor_k,
                          self.s.data_dir, self.s.progress)
        try:
            net, metrics = run_finetune(job)
        except NotAvailable as exc:
            raise _Unavailable(str(exc)) from None
        hold = (metrics.get("holdout") or {}).get("gap_expt", {})
        rec: dict = {"n_train": metrics.get("train_rows"), "train_seconds": metrics.get("train_seconds"),
                     "epochs": metrics.get("epochs"), "spec": spec.to_dict()}
        if inner:
            rec["metrics"] = {"mae": hold.get("mae"), "rmse": hold.get("rmse"), "n": hold.get("rows")}
            rec["inner_split"] = "matbench KFold rule on the training fold's rows, inner fold 0 (80/20)"
        else:
            _, te = protocol.train_test(self.ds, fold, fraction, self.s.seed, self.s.cap)
            data = _taskdata("expt_gap", self.s.data_dir, te, "gap_expt", "gap_expt")
            pred = predict_gap(net, data)
            rec["metrics"] = {**regression_metrics(data.targets["gap_expt"], pred), "finetune_reported_mae": hold.get("mae")}
            rec["n_test"] = int(len(te))
            rec["pred"] = pred.tolist()
            if before:
                after, how = eform_mae(net, self._base[0], self._forget)
                rec["forgetting"] = {"before": before["before"], "after": after, "how": how, "rows": before["rows"]}
        recs = monitor_records(run_dir, metrics)
        rec["monitor_records"] = len(recs)
        rec["relatedness"] = summarize_records(recs)
        cleanup(run_dir, self.s.keep_runs)
        return rec

    def anchor_choice(self, fold: int) -> str:
        """The anchor source for the PCGrad and data-efficiency runs of this fold, chosen
        inside the training fold (or the documented default)."""
        from .neural import VARIANTS

        if fold in self.selection:
            return self.selection[fold]["chosen"]
        if self.s.anchor != "inner":
            info = {"chosen": self.s.anchor, "rule": "fixed"}
        else:
            r = self.finetune_cell(VARIANTS["finetune_anchor_replay"], fold, inner=True)["metrics"]["mae"]
            d = self.finetune_cell(VARIANTS["finetune_anchor_distill"], fold, inner=True)["metrics"]["mae"]
            info = {"replay": r, "distill": d, "chosen": "replay" if r <= d else "distill", "rule": "inner"}
        self.selection[fold] = info
        return info["chosen"]

    def variant_cell(self, name: str, fold: int, fraction: float = 1.0) -> dict:
        from .neural import VARIANTS, pcgrad_spec

        if name == "rf_magpie":
            return self.baseline_cell(fold, fraction)
        if name == "finetune_anchor":
            name = f"finetune_anchor_{self.anchor_choice(fold)}"
        spec = pcgrad_spec(self.anchor_choice(fold)) if name == "finetune_anchor_pcgrad" else VARIANTS[name]
        return self.finetune_cell(spec, fold, fraction)

    # -- matbench mp tasks ---------------------------------------------------------
    def mp_folds(self) -> list[int]:
        if self.s.mp_folds is not None:
            return list(self.s.mp_folds)
        return [0, 1, 2, 3, 4] if self.device == "cuda" else [self.s.pretrain_fold]

    def mp_cell(self, fold: int) -> dict:
        from .neural import checkpoint_identity

        given = self.s.checkpoint and checkpoint_identity(self.s.checkpoint).get("holdout_fold") == fold
        ident = checkpoint_identity(self.s.checkpoint) if given else {"pretrain": self.pretrain_fp()}
        fp = fingerprint({"ckpt": ident, "cap": QUICK["mp_test_cap"] if self.s.quick else None, "seed": self.s.seed})
        return self.cell(CellKey("mp", "pretrain", fold), fp, lambda: self._run_mp(fold))

    def _run_mp(self, fold: int) -> dict:
        from ..checkpoints import load_checkpoint
        from ..train.data import DFT_TASKS, _load
        from .neural import _taskdata

        net, _ = load_checkpoint(self.pretrained(fold))
        rec: dict = {"checkpoint": str(self.pretrained(fold))}
        for task, (name, col) in DFT_TASKS.items():
            if task not in net.heads:
                rec[task] = {"status": "not available", "reason": f"the pretrained model has no {task} head"}
                continue
            _, te = _load(name, self.s.data_dir).folds()[fold]
            if self.s.quick and len(te) > QUICK["mp_test_cap"]:
                te = np.sort(np.random.default_rng([self.s.seed, 31]).choice(te, QUICK["mp_test_cap"], replace=False))
            data = _taskdata(name, self.s.data_dir, te, task, col)
            y = data.targets[task]
            p = net.predict_arrays(data.z, data.frac, data.spg, [task])[task].mean(1)
            p0 = net.predict_arrays(data.z, data.frac, np.zeros_like(data.spg), [task])[task].mean(1)
            rec[task] = {**regression_metrics(y, p), "mae_composition_only": float(np.abs(p0 - y).mean()),
                         "test_rows": int(len(te))}
        return rec

    # -- the whole run --------------------------------------------------------------
    def run(self) -> dict:
        s = self.s
        eff = self._efficiency_variants()
        self.console.print(f"[bold]matmtl evaluate[/]: variants {(['rf_magpie'] if s.baseline else []) + s.neural}, "
                           f"folds {list(s.folds)}"
                           + (f", data efficiency {eff} at {list(s.fractions)} on folds {list(s.efficiency_folds)}"
                              if eff else ", no data-efficiency curve")
                           + (" [quick]" if s.quick else "") + f"; cells cached in {self.work}")
        self.folds_check = protocol.check_official_folds(self.ds, "expt_gap", data_dir=self.s.data_dir)
        if self.folds_check["checked"] and not self.folds_check["match"]:
            raise MatmtlError(f"expt_gap folds differ from the official matbench v0.1 test sets ({self.folds_check['file']})")
        main = (["rf_magpie"] if s.baseline else []) + [v for v in s.neural if v != "finetune_anchor_pcgrad"]
        # every variant on every fold first, so a run cut short still has the main table
        for fold in s.folds:
            for v in main:
                self._collect(v, fold, 1.0, self.variant_cell(v, fold))
            if "finetune_anchor_pcgrad" in s.neural:
                self._collect("finetune_anchor_pcgrad", fold, 1.0, self.variant_cell("finetune_anchor_pcgrad", fold))
            self.write_reports()
        for fold in s.efficiency_folds:
            for v in eff:
                for fr in s.fractions:
                    rec = self.variant_cell(v, fold, fr)
                    if rec.get("status") == "done":
                        self.eff.setdefault(v, {}).setdefault(fr, {})[fold] = rec
            self.write_reports()
        if s.neural and not s.skip_mp:
            for k in self.mp_folds():
                self.mp[k] = self.mp_cell(k)
            self.write_reports()
        elif not self.expt and not self.eff:
            self.write_reports()
        return self.results

    def _efficiency_variants(self) -> list[str]:
        s, out = self.s, []
        if len(s.fractions) == 0 or s.fractions == (1.0,):
            return out
        for v in s.efficiency_variants:
            if v == "rf_magpie" and s.baseline:
                out.append(v)
            elif v == "finetune_anchor" and any(a in s.neural for a in ANCHORED):
                out.append(v)
            elif v in s.neural:
                out.append(v)
        return out

    def _collect(self, variant: str, fold: int, fraction: float, rec: dict) -> None:
        if rec.get("status") == "not available":
            self.unavailable[variant] = rec["reason"]
            return
        self.expt.setdefault(variant, {})[fold] = rec

    # -- results files --------------------------------------------------------------
    def write_reports(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        expt = self.expt_results()
        files = {"expt_gap": expt}
        atomic_write_json(self.out / "expt_gap.json", expt)
        mp = self.mp_results()
        for name, res in mp.items():
            atomic_write_json(self.out / f"{name}.json", res)
            files[name] = res
        self.results = files
        from .report import plot_data_efficiency, relative_link, render_markdown

        fig = plot_data_efficiency(expt, self.out / "expt_gap_data_efficiency.png")
        if self.s.markdown:
            page = Path(self.s.markdown)
            prev = {n: _read_json(self.out / f"{n}.json") for n in ("mp_e_form", "mp_gap")}
            text = render_markdown(expt, files.get("mp_e_form") or prev["mp_e_form"], files.get("mp_gap") or prev["mp_gap"],
                                   relative_link(fig, page) if fig else None)
            atomic_write(page, lambda tmp: tmp.write_text(text))

    def _common(self) -> dict:
        load = _loadavg()
        return {"command": self.s.command, "hardware": self.hardware, "device": self.device,
                "seconds": round(time.time() - self.t0, 1),
                "compute_seconds": round(sum(r.get("seconds") or 0 for r in self._memo.values()), 1), "generated": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "quick": self.s.quick, "load_average_at_end": load, "work_dir": str(self.work)}

    def _variant_entry(self, name: str, recs: dict[int, dict]) -> dict:
        from .neural import VARIANTS

        folds = list(self.s.folds)
        agg = aggregate_folds([recs.get(k, {}).get("metrics") if k in recs else None for k in folds], folds)
        entry = {"status": "done" if len(agg["folds_done"]) == len(folds) else ("partial" if agg["folds_done"] else "not run"),
                 "mae_mean": agg["mae_mean"], "mae_std": agg["mae_std"], "fold_mae": agg["fold_mae"],
                 "rmse": agg["rmse"], "r2": agg["r2"], "fold_rmse": agg["fold_rmse"], "fold_r2": agg["fold_r2"],
                 "folds": folds, "folds_done": agg["folds_done"],
                 "n_train": [recs[k].get("n_train") for k in folds if k in recs],
                 "n_test": [recs[k].get("n_test") for k in folds if k in recs]}
        if name in VARIANTS:
            entry["description"] = VARIANTS[name].description
        elif name == "finetune_anchor_pcgrad":
            entry["description"] = "+ e_form anchor (source selected per fold) with PCGrad surgery"
            entry["anchor_source_per_fold"] = {str(k): self.selection.get(k, {}).get("chosen") for k in recs}
        else:
            entry["description"] = "RandomForestRegressor on matminer Magpie features"
            entry["settings"] = {"n_estimators": self.s.rf_trees, "random_state": self.s.seed, "n_jobs": -1}
        entry["seconds"] = round(sum(r.get("seconds") or 0 for r in recs.values()), 1)
        entry["command"] = self.s.command
        entry["hardware"] = "; ".join(sorted({r.get("hardware", "") for r in recs.values()})) or self.hardware
        entry["commands_that_computed_cells"] = sorted({r.get("command", "") for r in recs.values()})
        return entry

    def expt_results(self) -> dict:
        s = self.s
        prev = _read_json(self.out / "expt_gap.json")
        if prev.get("quick") != s.quick or prev.get("protocol") != protocol.PROTOCOL:
            prev = {}
        variants: dict[str, dict] = {}
        for name in ALL_VARIANTS:
            if name in self.expt:
                variants[name] = self._variant_entry(name, self.expt[name])
            elif name in self.unavailable:
                variants[name] = {"status": "not available", "reason": self.unavailable[name], "mae_mean": None,
                                  "mae_std": None, "fold_mae": [None] * len(s.folds), "rmse": None, "r2": None}
            elif (prev.get("variants") or {}).get(name, {}).get("mae_mean") is not None:
                variants[name] = {**prev["variants"][name], "from_earlier_invocation": True}
            else:
                variants[name] = {"status": "not run", "mae_mean": None, "mae_std": None, "fold_mae": [None] * len(s.folds),
                                  "rmse": None, "r2": None}
        res = {
            "protocol": protocol.PROTOCOL, "task": "matbench_expt_gap", "unit": "eV", "folds": list(s.folds),
            "official_folds": {"definition": "KFold(n_splits=5, shuffle=True, random_state=18012019) over the matbench row order",
                               **self.folds_check},
            "selection": ("All settings are fixed defaults chosen before evaluation (nothing tuned on any test fold). "
                          + ("The anchor source for PCGrad and the data-efficiency curve is chosen per fold by the MAE on "
                             "an inner 80/20 validation split of that fold's training rows."
                             if s.anchor == "inner" else f"The anchor source is fixed to '{s.anchor}' (documented default).")),
            "variants": variants,
            "forgetting": self._forgetting(prev),
            "data_efficiency": self._efficiency(prev),
            "anchor_selection": {"rule": self._selection_rule(), "folds": {str(k): v for k, v in self.selection.items()}},
            "relatedness": self._relatedness(),
            "pretraining": self.pretrain_info,
            "settings": _settings_dict(s, self),
            "leaderboard_mae": {n: m for n, m, _ in LEADERBOARD["matbench_expt_gap"]},
            **self._common(),
        }
        return res

    def _selection_rule(self) -> str:
        if self.s.anchor == "inner":
            return ("Per fold, replay and distill anchors are each fine-tuned on 80% of the training fold and scored on the "
                    "other 20% (inner split); the lower inner MAE is chosen. The test fold is not used.")
        return f"Fixed: '{self.s.anchor}' (documented default, no selection)."

    def _forgetting(self, prev: dict) -> dict:
        if self._before is None and any(self.expt.get(v) for v in ("finetune", *ANCHORED)):
            self.forgetting_before()  # cached; a run whose fine-tunes were all cached has not read it yet
        before = (self._before or {}).get("before")
        out: dict = {"_about": (f"e_form MAE (eV/atom) on a fixed seeded subset of {self.s.forgetting_rows} rows of the "
                                f"pretraining run's held-out mp_e_form fold ({(self._before or {}).get('mp_fold', 'fold 0')}), "
                                "before (pretrained model) and after fine-tuning (fraction 100%; mean over expt_gap folds). "
                                "Without an anchor the e_form head is not trained, so the pretrained head is read on the "
                                "fine-tuned encoder.")}
        def entry(recs: dict[int, dict]) -> dict | None:
            vals = {k: r["forgetting"]["after"] for k, r in recs.items() if r.get("forgetting")}
            if not vals:
                return None
            m, sd = mean_std(list(vals.values()))
            how = next(r["forgetting"]["how"] for r in recs.values() if r.get("forgetting"))
            return {"before": before, "after": m, "after_std": sd,
                    "fold_after": [vals.get(k) for k in self.s.folds], "how": how}
        for name in ("finetune", "finetune_anchor_replay", "finetune_anchor_distill", "finetune_anchor_pcgrad"):
            e = entry(self.expt.get(name, {}))
            if e:
                out[name] = e
        sel = {}
        for k in self.s.folds:
            src = self.selection.get(k, {}).get("chosen") or ("replay" if self.s.anchor == "inner" else self.s.anchor)
            r = self.expt.get(f"finetune_anchor_{src}", {}).get(k)
            if r:
                sel[k] = r
        e = entry(sel)
        if e:
            out["finetune_anchor"] = {**e, "anchor": "per-fold selection" if self.selection else "replay (default)"}
        for name in ("finetune", "finetune_anchor"):
            out.setdefault(name, (prev.get("forgetting") or {}).get(name) or {"before": before, "after": None})
        return out

    def _efficiency(self, prev: dict) -> dict:
        fr = list(self.s.fractions)
        out = {"fractions": fr, "folds": list(self.s.efficiency_folds), "subsample": "finetune's seeded draw of N rows, rng [seed, 17]; N = round(fraction x training rows)",
               "variants": {}}
        for v, by_frac in self.eff.items():
            cells = {}
            for x in fr:
                recs = by_frac.get(x, {})
                folds = self.s.efficiency_folds
                agg = aggregate_folds([recs[k]["metrics"] if k in recs else None for k in folds], folds)
                cells[f"{x:g}"] = {"mae_mean": agg["mae_mean"], "mae_std": agg["mae_std"], "fold_mae": agg["fold_mae"],
                                   "n_train_mean": (float(np.mean([recs[k]["n_train"] for k in recs])) if recs else None),
                                   "complete": len(agg["folds_done"]) == len(folds)}
            out["variants"][v] = cells
        if not out["variants"] and (prev.get("data_efficiency") or {}).get("variants"):
            return prev["data_efficiency"]
        return out

    def _relatedness(self) -> dict:
        variants = {}
        for name, recs in self.expt.items():
            if name == "rf_magpie":
                continue
            per_fold = {k: r.get("relatedness") or {} for k, r in recs.items()}
            n = sum(r.get("monitor_records", 0) for r in recs.values())
            variants[name] = {"monitor_records": n, "pairs": average_over_folds({k: v for k, v in per_fold.items() if v})}
        note = None
        if not any(v["pairs"] for v in variants.values()):
            note = ("no gradient-monitor records: " + ("no neural variant has run yet" if not variants else
                    "single-task variants (scratch, finetune) have no task pairs, and the anchored runs wrote none "
                    f"(--monitor-every {self.s.monitor_every})"))
        else:
            note = ("Task pairs are loss keys of the fine-tuning step (e.g. gap_expt vs e_form, or e_form@replay for "
                    f"replayed rows); records every {self.s.monitor_every} steps, subspaces from k={self.s.monitor_k} "
                    "micro-batches; averaged over records, then over folds. Single-task variants have no pairs.")
        return {"note": note, "variants": variants}

    def mp_results(self) -> dict[str, dict]:
        if not self.mp:
            return {}
        out = {}
        folds = sorted(self.mp)
        for task, name, mbname, unit in (("e_form", "mp_e_form", "matbench_mp_e_form", "eV/atom"),
                                         ("gap_pbe", "mp_gap", "matbench_mp_gap", "eV")):
            per = [self.mp[k].get(task) if "mae" in (self.mp[k].get(task) or {}) else None for k in folds]
            agg = aggregate_folds(per, folds)
            comp = [p["mae_composition_only"] if p else None for p in per]
            cm, cs = mean_std(comp)
            if agg["mae_mean"] is None:
                reason = next((self.mp[k][task].get("reason") for k in folds if isinstance(self.mp[k].get(task), dict)), "")
                entry = {"status": "not available", "reason": reason, "mae_mean": None, "mae_std": None,
                         "fold_mae": [None] * len(folds), "rmse": None, "r2": None}
            else:
                entry = {"status": "done" if len(agg["folds_done"]) == 5 else "subset of folds", **{
                    k: agg[k] for k in ("mae_mean", "mae_std", "fold_mae", "rmse", "r2", "fold_rmse", "fold_r2", "folds_done")},
                    "mae_composition_only_mean": cm, "mae_composition_only_std": cs, "fold_mae_composition_only": comp,
                    "test_rows": [p["test_rows"] if p else None for p in per],
                    "seconds": round(sum(self.mp[k].get("seconds") or 0 for k in folds), 1),
                    "command": self.s.command,
                    "hardware": "; ".join(sorted({self.mp[k].get("hardware", "") for k in folds}))}
            note = (f"Folds evaluated: {folds} of 0-4" + ("" if len(folds) == 5 else
                    " (a documented subset: on a CPU each fold needs its own pretraining run, ~15 min on 2 CPU cores; "
                    "all 5 folds run by default on a GPU or with --mp-folds 0,1,2,3,4)")
                    + (". Test rows capped (quick)." if self.s.quick else ". Full official test folds."))
            out[name] = {"protocol": protocol.PROTOCOL, "task": mbname, "unit": unit, "folds": folds,
                         "model": f"pretrain (tasks {', '.join(self.s.pretrain_tasks)}; composition + symmetry)",
                         "variants": {"pretrain": entry}, "subset_note": note,
                         "leaderboard_mae": {n: m for n, m, _ in LEADERBOARD[mbname]}, **self._common()}
        return out


class _Unavailable(Exception):
    pass


def _loadavg() -> list[float] | None:
    """1/5/15-minute load averages (the machine may be shared: timings depend on it)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):  # pragma: no cover
        return None


def _read_json(path: Path) -> dict:
    import json

    try:
        obj = json.loads(Path(path).read_text())
        return obj if isinstance(obj, dict) else {}
    except (OSError, ValueError):
        return {}


def _settings_dict(s: EvalSettings, ev: Evaluation) -> dict:
    d = asdict(s)
    d.pop("command", None)
    out = {"eval": d}
    if not s.neural:
        return out
    try:
        out["finetune_train"] = ev.finetune_config().to_dict()
        mcfg, tcfg, max_rows = ev.pretrain_configs()
        out["pretrain"] = {"model": mcfg.to_dict(), "train": tcfg.to_dict(), "max_rows": max_rows,
                           "tasks": list(s.pretrain_tasks)}
    except Exception as exc:  # pragma: no cover - reporting must not fail on this
        out["error"] = str(exc)
    return out


def evaluate(settings: EvalSettings | None = None, console=None, **kwargs) -> dict:
    """Run the evaluation (see :class:`EvalSettings` for the options; keyword options
    build one). Returns ``{"expt_gap": {...}, "mp_e_form": {...}, "mp_gap": {...}}``
    as written to ``settings.out``."""
    settings = settings or EvalSettings(**kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="matminer")
        return Evaluation(settings, console).run()
