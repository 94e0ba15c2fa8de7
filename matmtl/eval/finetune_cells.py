"""The fine-tuning cells: one (variant, fold, fraction) each. A cell builds the
variant's :class:`~matmtl.config.FinetuneConfig`, trains it with
:func:`matmtl.train.finetune` (or continues a killed run with :func:`matmtl.train.resume`),
and scores the checkpoint once on the full test fold.

Each run holds out ``EvalSettings.val_fraction`` of its own training rows as validation
rows: they choose the kept epoch (and stop early after ``patience`` epochs without a
better score), the hurdle head's metal cut and the uncertainty calibration, and the cell
record keeps their scores. The anchor source of a fold (``anchor="validation"``) is the
one whose replay / distill run has the lower validation MAE: no extra runs, and the test
fold is never looked at.

Variants (all fine-tuned with the same TrainConfig on the same rows; see
:data:`matmtl.eval.settings.VARIANTS`): ``scratch`` (a seeded random init of the
pretrained architecture), ``finetune`` (no anchor), ``finetune_anchor_replay`` /
``finetune_anchor_distill`` (the e_form anchor from replayed DFT rows / the pretrained
model's own predictions) and ``finetune_anchor_pcgrad`` (the selected anchor with
:class:`~matmtl.mtl.PCGrad`)."""

from __future__ import annotations

import shutil
import warnings
from functools import cached_property
from pathlib import Path

from ..errors import MatmtlError
from ..metrics import regression_metrics
from . import protocol
from .cells import CellKey, Cells, fingerprint, frac_label, prepare_run_dir
from .pretrained import Pretrained
from .relatedness import summarize_records
from .scoring import expt_gap, monitor_records, predict, taskdata
from .settings import EvalSettings, VariantSpec

MAIN = "gap_expt"
RECORD_FORMAT = 2  # 2: validation scores, best epoch, structure_vs_formula in the record
VALIDATION_KEYS = ("rows", "mae", "rmse", "mean_std", "metal_cut", "metal_accuracy", "calibration")
RUN_KEYS = ("best_epoch", "stopped_early", "selection", "validation_rows", "best_validation_score", "weight_average")


def run_finetune(config, run_dir: Path, *, progress: bool):
    """Train (or resume, or reuse) the fine-tuning run of ``config`` in ``run_dir``;
    returns (model, metrics)."""
    from ..checkpoints import load_checkpoint, read_json
    from ..train.finetuning import finetune
    from ..train.resuming import resume

    state = prepare_run_dir(run_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DataWarnings about left-out rows are recorded in metrics
        if state == "resume":
            res = resume(run_dir, progress=progress)
        elif state == "new":
            res = finetune(config, run_dir, progress=progress)
        else:
            res = None
    if res is not None and not res.finished:
        raise MatmtlError(f"fine-tuning in {run_dir} did not finish")
    net, _ = load_checkpoint(run_dir)
    return net, read_json(run_dir / "metrics.json")


def validation_record(metrics: dict) -> dict:
    """What a cell keeps of a run's validation rows: their gap scores (MAE, metal cut,
    calibration, ...), the kept epoch and whether training stopped early."""
    val = (metrics.get("validation") or {}).get(MAIN) or {}
    return {
        "validation": {k: val[k] for k in VALIDATION_KEYS if k in val} or None,
        **{k: metrics.get(k) for k in RUN_KEYS},
    }


def validation_predictions(run_dir: Path) -> dict | None:
    """A finished run's validation rows (dataset positions), their labels and the run's gap
    predictions on them (eV, 4 decimals); None for a run folder written before matmtl
    kept them."""
    from ..checkpoints import read_json
    from ..train.finetuning import VALIDATION_PREDICTIONS

    path = run_dir / VALIDATION_PREDICTIONS
    if not path.is_file():
        return None
    got = read_json(path)
    return {"rows": got["rows"], **{k: [round(x, 4) for x in got[k]] for k in ("target", "pred")}}


def choose_anchor(replay: dict, distill: dict) -> dict:
    """The anchor source of a fold from the validation MAEs of its replay and distill
    runs (fraction 100%): the lower one, replay on a tie. Raises when a run has no
    validation rows."""
    maes = {}
    for name, rec in (("replay", replay), ("distill", distill)):
        mae = (rec.get("validation") or {}).get("mae")
        if mae is None:
            raise MatmtlError(
                f"the {name} anchor run of this fold has no validation MAE (no validation rows?): "
                "the anchor source cannot be chosen on validation rows; fix it with anchor='replay'|'distill'"
            )
        maes[name] = mae
    return {
        "replay": maes["replay"],
        "distill": maes["distill"],
        "validation_rows": (replay.get("validation") or {}).get("rows"),
        "chosen": "replay" if maes["replay"] <= maes["distill"] else "distill",
        "rule": "validation",
    }


def record_anchor_choices(selection: dict[int, dict], expt: dict[str, dict[int, dict]]) -> None:
    """Add to ``selection`` the anchor choice (:func:`choose_anchor`) of every fold whose
    replay and distill runs (fraction 100%) both have a validation MAE and that has none yet."""
    replay, distill = (expt.get(f"finetune_anchor_{src}") or {} for src in ("replay", "distill"))
    for k in sorted(set(replay) & set(distill) - set(selection)):
        if all((r.get("validation") or {}).get("mae") is not None for r in (replay[k], distill[k])):
            selection[k] = choose_anchor(replay[k], distill[k])


class FinetuneCells:
    """The fine-tuning cells of one evaluation and the per-fold anchor selection."""

    def __init__(self, settings: EvalSettings, device: str, work: Path, cells: Cells, pretrained: Pretrained):
        self.s, self.device, self.work, self.cells, self.pre = settings, device, work, cells, pretrained
        self.selection: dict[int, dict] = {}

    @property
    def ds(self):
        return expt_gap(self.s.data_dir)

    @cached_property
    def train(self):
        """The fine-tuning TrainConfig of every variant."""
        return self.s.finetune_train(self.device)

    def config(self, spec: VariantSpec, checkpoint: Path, holdout_fold: int, max_train_rows: int | None):
        """The FinetuneConfig of one run of ``spec``."""
        from ..config import FinetuneConfig, MTLConfig
        from ..mtl import PCGrad, Sum

        mtl = MTLConfig(
            surgery=PCGrad() if spec.pcgrad else Sum(),
            monitor_every=self.s.monitor_every if spec.anchored else 0,
            monitor_k=self.s.monitor_k,
            # towards the pretrained encoder; a scratch run has no pretrained encoder to keep
            soft_share=self.s.soft_share if spec.init == "pretrained" else 0.0,
        )
        return FinetuneConfig(
            checkpoint=str(checkpoint),
            dataset="expt_gap",
            aux=spec.aux,
            aux_source=spec.aux_source,
            aux_weight=self.s.aux_weight,
            holdout_fold=holdout_fold,
            max_train_rows=max_train_rows,
            replay_max_rows=self.s.replay_max_rows,
            symmetry=self.s.symmetry,
            gap_head=self.s.gap_head,
            # the cells score the model itself; scripts/metal_gate.py gates their stored
            # validation and test predictions afterwards (the same rule, chosen per run)
            metal_gate="none",
            data_dir=self.s.data_dir,
            train=self.train,
            mtl=mtl,
        )

    def fp(self, spec: VariantSpec) -> str:
        ident = self.pre.identity
        s = self.s
        return fingerprint(
            {
                "spec": spec.to_dict(),
                "train": self.train.numeric_dict(),  # val_fraction and patience included
                "symmetry": s.symmetry,
                # (only where not the default: the cells cached before the setting existed stay valid)
                **({"gap_head": s.gap_head} if s.gap_head != "warm_start" else {}),
                "ckpt": ident if spec.init == "pretrained" else {"init_of": ident, "seed": s.seed},
                "aux_weight": s.aux_weight if spec.anchored else None,
                **({"soft_share": s.soft_share} if s.soft_share and spec.init == "pretrained" else {}),
                "monitor": [s.monitor_every, s.monitor_k] if spec.anchored else None,
                "cap": s.cap,
                "replay_max_rows": s.replay_max_rows,
                "forgetting": [s.forgetting_rows, s.seed] if spec.init == "pretrained" else None,
                "rows": len(self.ds),
                "record": RECORD_FORMAT,
            }
        )

    def cell(self, spec: VariantSpec, fold: int, fraction: float = 1.0) -> dict:
        key = CellKey("expt_gap", spec.name, fold, fraction)
        fp = self.fp(spec)
        return self.cells.run(key, fp, lambda: self._compute(spec, fold, fraction, fp), needs=lambda: self.needs(spec))

    def needs(self, spec: VariantSpec) -> None:
        """What a cell of ``spec`` needs before it is claimed: the forgetting "before"
        cell (pretrained starts) or the scratch init (the transfer checkpoint itself is
        needed for the fingerprint already)."""
        if spec.init == "pretrained":
            self.pre.forgetting()
        else:
            self.pre.scratch_init  # noqa: B018 - made (or waited for) here

    def _compute(self, spec: VariantSpec, fold: int, fraction: float, fp: str) -> dict:
        scores_forgetting = spec.init == "pretrained"
        if scores_forgetting:
            self.pre.forgetting()  # the "before" cell first
        ckpt = self.pre.scratch_init if spec.init == "scratch" else self.pre.transfer
        run_dir = self.work / "runs" / "expt_gap" / spec.name / fp / f"fold{fold}-frac{frac_label(fraction)}"
        config = self.config(spec, ckpt, fold, protocol.n_train_rows(self.ds, fold, fraction, self.s.cap))
        net, metrics = run_finetune(config, run_dir, progress=self.s.progress)
        hold = (metrics.get("holdout") or {}).get(MAIN, {})
        _, te = protocol.train_test(self.ds, fold, fraction, self.s.seed, self.s.cap)
        data = taskdata("expt_gap", self.s.data_dir, te, MAIN, MAIN)
        pred = predict(net, data, MAIN)  # the test fold, predicted once
        rec: dict = {
            "n_train": metrics.get("train_rows"),
            "train_seconds": metrics.get("train_seconds"),
            "epochs": metrics.get("epochs"),
            "spec": spec.to_dict(),
            **validation_record(metrics),
            "metrics": {
                **regression_metrics(data.targets[MAIN], pred),
                "finetune_reported_mae": hold.get("mae"),
                "calibrated_coverage": hold.get("calibrated_coverage"),
            },
            "n_test": len(te),
            "pred": pred.tolist(),
            "symmetry": metrics.get("symmetry", self.s.symmetry),
            "gap_head": metrics.get("gap_head", self.s.gap_head),
        }
        val = validation_predictions(run_dir)
        if val:  # what choosing between runs, or averaging them, on validation rows needs
            rec["validation_pred"] = val
        if metrics.get("structure_vs_formula"):
            rec["structure_vs_formula"] = metrics["structure_vs_formula"]
        forgetting = self.pre.forgetting_after(net) if scores_forgetting else None
        if forgetting:
            rec["forgetting"] = forgetting
        recs = monitor_records(run_dir, metrics)
        rec["monitor_records"] = len(recs)
        rec["relatedness"] = summarize_records(recs)
        if not self.s.keep_runs:  # the numbers live in the record; a run folder is ~20 MB
            shutil.rmtree(run_dir, ignore_errors=True)
        return rec

    def anchor_choice(self, fold: int) -> str:
        """The anchor source of the PCGrad and data-efficiency runs of ``fold``: the one
        whose run (replay or distill, fraction 100%: the main table's cells, run here if
        that table does not have them) has the lower validation MAE
        (``anchor="validation"``), or fixed."""
        if fold not in self.selection:
            if self.s.anchor != "validation":
                self.selection[fold] = {"chosen": self.s.anchor, "rule": "fixed"}
            else:
                self.selection[fold] = choose_anchor(
                    self.cell(self.s.spec("finetune_anchor_replay"), fold),
                    self.cell(self.s.spec("finetune_anchor_distill"), fold),
                )
        return self.selection[fold]["chosen"]
