"""The evaluation harness: which cells run, in which order. The cells live in
:mod:`~matmtl.eval.baseline`, :mod:`~matmtl.eval.finetune_cells`, :mod:`~matmtl.eval.mp`
and :mod:`~matmtl.eval.pretrained`; the results are built by the pure functions of
:mod:`~matmtl.eval.report` and written by :mod:`~matmtl.eval.output`.

Order: every variant on every fold first (so a run cut short still has the main table;
the replay and distill cells of a fold run before its PCGrad cell, whose anchor source
their validation MAEs choose), then the data-efficiency curve, then the matbench mp
tasks; the results files (the JSON, the per-fold test predictions, the matbench results
file of ``EvalSettings.submission_variant``, the page) are rewritten after each fold.
See docs/evaluation.md for the protocol and the runtime.

Several workers (``torchrun`` ranks, or processes started with the same command and
``--work-dir``) split the cells: each walks that order and computes the cells nobody
holds (:mod:`~matmtl.eval.claims`), skipping those another worker holds (and those that
need them), then comes back to the skipped ones until every cell is done. The results
are then assembled in the order above, so they do not depend on who computed what.
Under torchrun rank 0 alone writes them; independent workers each write theirs (into
their own ``--out``, or the same one with ``--force``). One worker alone never skips a
cell: it runs as before."""

from __future__ import annotations

import time
import warnings
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

from ..errors import MatmtlError
from ..io import cache_dir
from . import protocol
from .baseline import BaselineCells
from .cells import Cells, CellStore, hardware_string, load_average
from .claims import Busy, Claims, ClaimSettings, Worker
from .finetune_cells import FinetuneCells, record_anchor_choices
from .mp import MPCells
from .output import SUBMISSION, prediction_files, prepare_outputs, read_json, read_predictions, write_results
from .pretrained import Pretrained
from .report import Records, expt_results, mp_results
from .scoring import expt_gap
from .settings import ANCHORED, VARIANTS, EvalSettings
from .submission import DATESTAMP_FORMAT, fold_parameters, predictions_file, submission


class Evaluation:
    """One invocation of the harness (``run()`` does everything). The results files are
    checked first: existing ones are refused unless ``EvalSettings.force``."""

    def __init__(self, settings: EvalSettings, console=None, claims: ClaimSettings | None = None):
        from rich.console import Console

        from ..distributed import World
        from ..train.engine import pick_device

        s = self.s = settings
        self.world = World.from_env()  # torchrun's ranks: no process group, each cell trains alone
        self.device = pick_device(s.device)
        if self.device == "cuda" and self.world.local_size > 1:
            import torch

            if self.world.local_rank < torch.cuda.device_count():
                torch.cuda.set_device(self.world.local_rank)  # "cuda" is this rank's GPU
        self.console = console or Console()
        self.outputs = prepare_outputs(s) if self.writes else None
        self.work = Path(s.work_dir).expanduser() if s.work_dir else cache_dir() / "eval"
        self.hardware = hardware_string(self.device)
        self.t0 = time.time()
        self.worker = Worker.this(self.world)
        self.claims = Claims(claims, self.console, self.worker)
        self.cells = Cells(
            CellStore(self.work), self.console, command=s.command, hardware=self.hardware, claims=self.claims
        )
        self.pretrained = Pretrained(s, self.device, self.work, self.cells)
        self.finetunes = FinetuneCells(s, self.device, self.work, self.cells, self.pretrained)
        self.baseline = BaselineCells(s, self.cells)
        self.mp = MPCells(s, self.device, self.cells, self.pretrained)
        self.records = Records(selection=self.finetunes.selection)
        self.folds_check: dict = {"checked": False}
        self.results: dict = {}

    @property
    def out(self) -> Path | None:
        return self.outputs.out if self.outputs else None

    @property
    def writes(self) -> bool:
        """Whether this worker writes the results: not the ranks > 0 of torchrun."""
        return self.world.is_main

    def run(self) -> dict:
        try:
            return self._run()
        finally:
            self.claims.close()

    def _run(self) -> dict:
        from rich.markup import escape

        s = self.s
        eff = self.efficiency_variants()
        self.console.print(
            f"[bold]matmtl evaluate[/]: variants {(['rf_magpie'] if s.baseline else []) + s.neural}, "
            f"folds {list(s.folds)}"
            + (
                f", data efficiency {eff} at {list(s.fractions)} on folds {list(s.efficiency_folds)}"
                if eff
                else ", no data-efficiency curve"
            )
            + (" \\[quick]" if s.quick else "")
            + f"; cells cached in {escape(str(self.work))}; "
            + (f"results to {escape(str(self.out))}" if self.writes else "rank 0 writes the results")
            + (f"; worker {self.worker.label}" if self.world.size > 1 else "")
        )
        self.check_folds()
        steps = list(self.steps())
        pending: list[tuple] = []
        for step in steps:  # the order of one worker; what another worker holds is skipped
            if step[0] == "write":
                if not pending:
                    self.write_results(step)
                continue
            try:
                with self.cells.deferring():
                    self.collect(step)
            except Busy:
                pending.append(step)
        if not pending:
            return self.results
        self.finish(pending)
        # every cell is done: the results in the order of one worker, whoever computed them
        self.finetunes.selection.clear()
        self.records = Records(selection=self.finetunes.selection)
        for step in steps:
            if step[0] != "write":
                self.collect(step)
        self.write_results(("write", "last"))
        return self.results

    def steps(self):
        """The cells in the order one worker runs them: ("cell", kind, variant, fold,
        fraction) and, after each fold, ("write", when)."""
        s = self.s
        main = (["rf_magpie"] if s.baseline else []) + [v for v in s.neural if v != "finetune_anchor_pcgrad"]
        main += ["finetune_anchor_pcgrad"] if "finetune_anchor_pcgrad" in s.neural else []
        for fold in s.folds:
            for v in main:
                yield ("cell", "expt", v, fold, 1.0)
            yield ("write", "fold")
        for fold in s.efficiency_folds:
            for v in self.efficiency_variants():
                for fr in s.fractions:
                    yield ("cell", "eff", v, fold, fr)
            yield ("write", "fold")
        if s.neural and not s.skip_mp:
            for k in self.mp.folds():
                yield ("cell", "mp", "pretrain", k, 1.0)
            yield ("write", "fold")
        else:
            yield ("write", "if empty")

    def collect(self, step: tuple) -> None:
        """The record of one cell step into ``self.records`` (computed, read or waited for)."""
        _, kind, v, fold, fr = step
        rec = self.records
        if kind == "expt":
            rec.expt.setdefault(v, {})[fold] = self.variant_cell(v, fold)
        elif kind == "eff":
            rec.eff.setdefault(v, {}).setdefault(fr, {})[fold] = self.variant_cell(v, fold, fr)
        else:
            rec.mp[fold] = self.mp.cell(fold)

    def write_results(self, step: tuple) -> None:
        if self.writes and (step[1] != "if empty" or (not self.records.expt and not self.records.eff)):
            self.write()

    def finish(self, pending: list[tuple]) -> None:
        """Come back to the skipped cells until every one is done: compute those that
        became free (their holder finished what they need, or died), read those others
        finished, and between rounds wait (``ClaimSettings.poll``), saying for what."""
        shown = None
        while pending:
            still, busy = [], []
            for step in pending:
                try:
                    with self.cells.deferring():
                        self.collect(step)
                except Busy as b:
                    still.append(step)
                    busy.append(b)
            if len(still) == len(pending):  # nothing moved: wait for the first of them
                if (busy[0].what, busy[0].holder) != shown:
                    more = f" and {len(still) - 1} more cell(s)" if len(still) > 1 else ""
                    self.console.print(f"[dim]waiting for {busy[0].what} ({busy[0].holder}){more}[/]")
                    shown = (busy[0].what, busy[0].holder)
                time.sleep(self.claims.s.poll)
            pending = still

    def check_folds(self) -> None:
        """The expt_gap folds must be matbench v0.1's official ones (when the mirror has them)."""
        self.folds_check = protocol.check_official_folds(
            expt_gap(self.s.data_dir), "expt_gap", data_dir=self.s.data_dir
        )
        if self.folds_check["checked"] and not self.folds_check["match"]:
            raise MatmtlError(
                f"expt_gap folds differ from the official matbench v0.1 test sets ({self.folds_check['file']})"
            )

    def efficiency_variants(self) -> list[str]:
        s = self.s
        if len(s.fractions) == 0 or s.fractions == (1.0,):
            return []
        runs = {"rf_magpie": s.baseline, "finetune_anchor": any(a in s.neural for a in ANCHORED)}
        return [v for v in s.efficiency_variants if runs.get(v, v in s.neural)]

    def variant_cell(self, name: str, fold: int, fraction: float = 1.0) -> dict:
        """The cell of a variant (``finetune_anchor``: the anchor selected for the fold)."""
        if name == "rf_magpie":
            return self.baseline.cell(fold, fraction)
        if name == "finetune_anchor":
            name = f"finetune_anchor_{self.finetunes.anchor_choice(fold)}"
        source = self.finetunes.anchor_choice(fold) if name == "finetune_anchor_pcgrad" else None
        return self.finetunes.cell(self.s.spec(name, source), fold, fraction)

    # -- results ---------------------------------------------------------------------------
    def write(self) -> None:
        rec, s = self.records, self.s
        if s.anchor == "validation":  # every fold's choice is recorded, whether a later cell used it or not
            record_anchor_choices(rec.selection, rec.expt)
        if any(rec.expt.get(v) for v in ("finetune", *ANCHORED)):
            f = self.pretrained.forgetting()  # cached; a run whose fine-tunes were all cached has not read it yet
            rec.before = f.before if f else None
        provenance = self.provenance()
        prev = read_json(self.out / "expt_gap.json")
        preds = predictions_file(
            rec.expt,
            self.fold_table,
            selection=rec.selection,
            quick=s.quick,
            command=s.command,
            prev=read_predictions(self.out),
        )
        pred_files = prediction_files(preds)
        sub, sub_section = self.submission(prev)
        files = {
            "predictions": {
                "files": list(pred_files),
                "variants": list(preds["variants"]),
                "folds": list(preds["folds"]),
                "decimals": preds["decimals"],
            },
            "submission": sub_section,
        }
        expt = expt_results(
            rec,
            s,
            prev=prev,
            provenance=provenance,
            folds_check=self.folds_check,
            pretraining=self.pretrained.info(),
            configs=self.configs(),
            files=files,
        )
        self.results = write_results(
            self.outputs, expt, mp_results(rec.mp, s, provenance), predictions=pred_files, submission=sub
        )

    @cached_property
    def fold_table(self) -> dict[int, dict]:
        """Per expt_gap fold of this evaluation: the matbench test ids and targets, in the
        order of the cells' predictions."""
        ds = expt_gap(self.s.data_dir)
        ids, y = ds.frame["id"].to_numpy(), ds.target("gap_expt")
        return {
            k: {"ids": ids[te].tolist(), "target": y[te].tolist()}
            for k in self.s.folds
            for te in [protocol.fold_rows(ds, k)[1]]
        }

    def anchor_source(self, variant: str, fold: int) -> str | None:
        if variant == "finetune_anchor_pcgrad":
            return (self.records.selection.get(fold) or {}).get("chosen")
        spec = self.s.spec(variant) if variant in VARIANTS else None
        return spec.aux_source if spec is not None and spec.anchored else None

    def submission(self, prev: dict) -> tuple[dict | None, dict]:
        """The matbench results file of ``EvalSettings.submission_variant`` on the folds it
        ran (None when it has not run; an earlier file of it stays) and its summary."""
        from .. import __version__

        s, v = self.s, self.s.submission_variant
        recs = {k: r for k, r in sorted(self.records.expt.get(v, {}).items()) if r.get("pred") is not None}
        if not recs:
            earlier = (prev.get("files") or {}).get("submission") or {}
            if earlier.get("file") and earlier.get("variant") == v and (self.out / SUBMISSION).is_file():
                return None, {**earlier, "from_earlier_invocation": True}
            return None, {"file": None, "variant": v, "note": f"{v} has not run: no matbench results file"}
        rf = {"n_estimators": s.rf_trees, "random_state": s.seed} if v == "rf_magpie" else None
        params = {k: fold_parameters(r, v, self.anchor_source(v, k), rf=rf) for k, r in recs.items()}
        complete = sorted(recs) == [0, 1, 2, 3, 4]
        meta = {
            "algorithm": f"matmtl {v}",
            "algorithm_description": s.description(v),
            "matmtl_version": __version__,
            "variant": v,
            "protocol": (
                f"fine-tuned on each training fold; {s.val_fraction:g} of its rows (seeded) are validation rows that "
                "choose the kept epoch, the metal cut and the calibration; each test fold predicted once"
            )
            if v != "rf_magpie"
            else "fitted on each training fold; each test fold predicted once",
            "command": s.command,
            "hardware": self.hardware,
            "quick": s.quick,
            "folds_recorded": sorted(recs),
            "is_complete": complete,
            "seed": s.seed,
        }
        when = datetime.now(timezone.utc).strftime(DATESTAMP_FORMAT)
        d = submission(recs, self.fold_table, variant=v, parameters=params, user_metadata=meta, datestamp=when)
        res = d["tasks"]["matbench_expt_gap"]["results"]
        maes = [res[f"fold_{k}"]["scores"]["mae"] for k in recs]
        section = {
            "file": SUBMISSION,
            "variant": v,
            "folds": sorted(recs),
            "complete": complete,
            "mae_mean": sum(maes) / len(maes),
            "format": "matbench v0.1 results file (MatbenchBenchmark.as_dict(), as the official dummy entry)",
        }
        return d, section

    def configs(self) -> dict:
        """The training configs of the neural cells, for the results' settings."""
        if not self.s.neural:
            return {}
        c = self.s.pretrain_config(self.device, None)
        return {
            "finetune_train": self.finetunes.train.to_dict(),
            "pretrain": {
                "model": c.model.to_dict(),
                "train": c.train.to_dict(),
                "max_rows": c.max_rows,
                "tasks": list(c.tasks),
            },
        }

    def provenance(self) -> dict:
        return {
            "command": self.s.command,
            "hardware": self.hardware,
            "device": self.device,
            "seconds": round(time.time() - self.t0, 1),
            "compute_seconds": self.cells.compute_seconds(),
            "generated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "quick": self.s.quick,
            "load_average_at_end": load_average(),
            "work_dir": str(self.work),
        }


def evaluate(settings: EvalSettings | None = None, console=None, claims: ClaimSettings | None = None, **kwargs) -> dict:
    """Run the evaluation (see :class:`EvalSettings` for the options; keyword options
    build one). Returns ``{"expt_gap": {...}, "mp_e_form": {...}, "mp_gap": {...}}`` as
    written to ``settings.out`` (default: a new folder under the matmtl cache); {} on the
    ranks > 0 of torchrun, which write nothing. ``claims``: the lease and polling period
    of the claims that split the cells between workers sharing the work dir."""
    settings = settings or EvalSettings(**kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="matminer")
        return Evaluation(settings, console, claims).run()
