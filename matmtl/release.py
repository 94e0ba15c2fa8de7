"""The recipe that makes a shipped model (``scripts/release_model.py``): pretrain on DFT
data (e_form + PBE gap), fine-tune on every experimental band gap the mirror holds
(matbench expt_gap and the full Zhuo et al. 2018 set, repeated compositions merged by
their median) with the DFT anchor, and write the checkpoint with its card into
``matmtl/pretrained/<name>/``. The anchor source is chosen as the evaluation chooses it
(``anchor="validation"``): a replay and a distill run, the lower validation MAE kept
(replay on a tie); or fixed. Every run holds out its own validation rows; the
matbench figures in the card come from the matbench-only evaluation of the recipe
(results/expt_gap.json), never from this model."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import zoo
from .config import AUX_SOURCES, PRETRAIN_BALANCER, FinetuneConfig, MTLConfig, PretrainConfig, TrainConfig
from .errors import MatmtlError
from .io import atomic_write_json
from .models import ModelConfig

ZHUO_FILE = "roost/data/datasets/expt-bandgaps.csv"
LICENCES = [
    "Materials Project data: CC-BY 4.0 (https://materialsproject.org)",
    "Matbench v0.1 data and code: MIT (materialsproject/matbench)",
    "Zhuo et al. 2018 experimental band gaps: as published with the paper (J. Phys. Chem. Lett. supporting "
    "information; mirrored from CompRhys/roost, MIT)",
]
CITATIONS = [
    "Jain et al. The Materials Project. APL Materials 1, 011002 (2013).",
    "Dunn, Wang, Ganose, Dopp, Jain. Benchmarking materials property prediction methods: the Matbench test set and "
    "Automatminer reference algorithm. npj Comput. Mater. 6, 138 (2020).",
    "Zhuo, Mansouri Tehrani, Brgoch. Predicting the band gaps of inorganic solids by machine learning. "
    "J. Phys. Chem. Lett. 9, 1668 (2018).",
]
# compositions whose stored predictions a test checks against the shipped model
REFERENCE_FORMULAS = [
    "Si",
    "C",
    "GaAs",
    "GaN",
    "AlN",
    "InP",
    "CdTe",
    "ZnS",
    "ZnO",
    "NaCl",
    "MgO",
    "PbS",
    "TiO2",
    "SrTiO3",
    "Cu",
    "Al",
    "Fe2O3",
    "LiF",
]


@dataclass
class Recipe:
    """The settings of a release; ``tiny`` is the suite's end-to-end version."""

    name: str = zoo.DEFAULT_MODEL
    version: str = "1"
    holdout_fold: int | None = None  # of mp_e_form / mp_gap during pretraining (None: every row)
    symmetry: str = "mp_ground_state"
    seed: int = 0
    tiny: bool = False
    max_rows: int | None = None
    data_dir: str | None = None
    balance: str = PRETRAIN_BALANCER  # the pretraining's loss balancer (static, uncertainty, gradnorm)
    anchor: str = "validation"  # the fine-tuning's anchor source: replay, distill or validation
    pretrain_epochs: int | None = None  # None: the size preset's (25 for the default size)

    def __post_init__(self):
        if self.pretrain_epochs is not None and self.pretrain_epochs < 1:
            raise MatmtlError(f"pretrain_epochs must be >= 1, got {self.pretrain_epochs}")
        if self.anchor not in (*AUX_SOURCES, "validation"):
            raise MatmtlError(f"anchor must be one of {(*AUX_SOURCES, 'validation')}, got {self.anchor!r}")

    def sources(self) -> tuple[str, ...]:
        """The anchor sources fine-tuned: both when the validation rows choose."""
        return AUX_SOURCES if self.anchor == "validation" else (self.anchor,)

    def pretrain_config(self) -> PretrainConfig:
        size = "tiny" if self.tiny else "default"
        return PretrainConfig(
            tasks=("e_form", "gap_pbe"),
            holdout_fold=self.holdout_fold,
            max_rows=self.max_rows,
            data_dir=self.data_dir,
            model=ModelConfig.preset(size),
            train=TrainConfig.preset(
                size, seed=self.seed, **({} if self.pretrain_epochs is None else {"epochs": self.pretrain_epochs})
            ),
            mtl=MTLConfig(balancer=self.balance),
        )

    def finetune_config(self, checkpoint: Path, table: Path, source: str = "replay") -> FinetuneConfig:
        return FinetuneConfig(
            checkpoint=str(checkpoint),
            dataset=str(table),
            target="gap_expt",
            aux=("e_form",),
            aux_source=source,
            holdout_fold=None,
            symmetry=self.symmetry,
            replay_max_rows=self.max_rows,
            data_dir=self.data_dir,
            mtl=MTLConfig(),
            train=TrainConfig.preset("finetune-tiny" if self.tiny else "finetune", seed=self.seed),
        )


def experimental_table(path: Path, data_dir: str | None = None) -> dict:
    """Every experimental gap in the mirror as one CSV (formula, gap_expt in eV, repeats
    merged by their median); returns what was merged."""
    from .data import load_dataset
    from .data.sources import explicit_dir, mirror_dirs

    expt = load_dataset("expt_gap", data_dir).frame[["formula", "gap_expt"]].assign(source="matbench_expt_gap")
    roots = [explicit_dir(data_dir)] if data_dir else mirror_dirs()
    zhuo_path = next((r / ZHUO_FILE for r in roots if r is not None and (r / ZHUO_FILE).is_file()), None)
    parts = [expt]
    if zhuo_path is not None and zhuo_path.is_file():
        z = pd.read_csv(zhuo_path).rename(columns={"composition": "formula", "Eg": "gap_expt"})
        parts.append(z[["formula", "gap_expt"]].assign(source="zhuo2018"))
    rows = pd.concat(parts, ignore_index=True)
    rows["reduced"] = [_reduced(f) for f in rows["formula"]]
    rows = rows[rows["reduced"].notna() & np.isfinite(rows["gap_expt"]) & (rows["gap_expt"] >= 0)]
    # one row per composition as training sees it (the same element fractions: Cu9S5 and
    # Cu1.8S are one), named by the alphabetically first of its reduced formulas
    from .data.validate import composition_key

    rows["key"] = [composition_key(f) for f in rows["reduced"]]
    grouped = rows.groupby("key", sort=False)
    table = (
        pd.DataFrame(
            {
                "formula": grouped["reduced"].min(),
                "gap_expt": grouped["gap_expt"].median(),
                "measurements": grouped["gap_expt"].size(),
                "spread": grouped["gap_expt"].agg(lambda v: v.max() - v.min()),
            }
        )
        .sort_values("formula", kind="stable")
        .reset_index(drop=True)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return {
        "rows_read": int(len(rows)),
        "compositions": int(len(table)),
        "sources": {k: int(v) for k, v in rows["source"].value_counts().items()},
        "merge_rule": "repeated compositions (the same element fractions): median gap (eV)",
        "compositions_with_repeats": int((table["measurements"] > 1).sum()),
        "zhuo_file": str(zhuo_path) if zhuo_path is not None and zhuo_path.is_file() else None,
    }


def _reduced(formula: str) -> str | None:
    from pymatgen.core import Composition

    try:
        return Composition(formula).reduced_formula
    except Exception:
        return None


def release(
    recipe: Recipe, work: Path, out_root: Path = zoo.PRETRAINED_DIR, *, progress: bool = True, force: bool = False
) -> Path:
    """Train the model of ``recipe`` in ``work`` (resumable) and write it to ``out_root/<name>``."""
    from .checkpoints import load_checkpoint, read_json
    from .train import finetune, pretrain, resume

    target = Path(out_root) / recipe.name
    if target.exists() and not force:
        raise MatmtlError(f"{target} exists; a release never replaces a shipped model without --force")
    work = Path(work)
    pre_cfg = recipe.pretrain_config()
    pre = _run(work / "pretrain", lambda d: pretrain(pre_cfg, d, progress=progress), resume, progress, pre_cfg)
    table = work / "experimental_gaps.csv"
    merged = experimental_table(table, recipe.data_dir)
    runs = {}
    for source in recipe.sources():
        cfg = recipe.finetune_config(pre, table, source)
        runs[source] = _run(
            work / _finetune_folder(source),
            lambda d, cfg=cfg: finetune(cfg, d, progress=progress),
            resume,
            progress,
            cfg,
        )
    anchor = choose_source(runs)
    ft = runs[anchor["chosen"]]
    model, meta = load_checkpoint(ft)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in zoo.model_files(ft):
        shutil.copy2(ft / f, tmp / f)
    from . import inference

    reference = inference.Model(model, meta, ft).predict(REFERENCE_FORMULAS)
    gate = read_json(ft / "metrics.json").get("metal_gate")
    if _gated(gate):
        gate = {**gate, "on_training_rows": gate_on_training_rows(ft, table)}
    card = {
        "card_version": zoo.CARD_VERSION,
        "name": recipe.name,
        "version": recipe.version,
        "description": "Experimental band gap (eV) and DFT formation energy (eV/atom) from a composition or "
        f"structure: pretrained on Materials Project (e_form + PBE gap, {recipe.balance} loss balancing), "
        "fine-tuned on experimental "
        f"gaps with the {anchor['chosen']} anchor"
        + (f", then the DFT metal gate (mode {gate['mode']}, chosen on validation rows)" if _gated(gate) else "")
        + (" (tiny test recipe)" if recipe.tiny else ""),
        "outputs": {
            "gap_expt": "eV, experimental scale, calibrated std",
            "e_form": "eV/atom, DFT (PBE) formation energy, calibrated std; 0 for a single element by construction",
            "p_metal": "probability",
        },
        "data": {
            "summary": "MP e_form + PBE gap; matbench expt_gap + Zhuo 2018 (all measurements)",
            "pretraining": read_json(pre / "metrics.json").get("data"),
            "experimental": merged,
            "pretraining_holdout_fold": recipe.holdout_fold,
            "note": "trained on compositions that are in matbench's test folds: benchmark figures come from "
            "the matbench-only evaluation of the recipe, never from this model",
        },
        "recipe": {
            "pretrain": recipe.pretrain_config().to_dict(),
            "finetune": read_json(ft / "config.json"),
            "symmetry": recipe.symmetry,
            "anchor": anchor,
        },
        "benchmark": benchmark_figures(),
        "validation": read_json(ft / "metrics.json").get("validation"),
        # the DFT metal gate of the kept run (matmtl.metal_gate): its mode, chosen on validation rows
        "metal_gate": gate,
        "reference_predictions": {
            r.input: {"gap_expt": round(float(r.gap_expt), 6), "e_form": round(float(r.e_form), 6)}
            for r in reference.itertuples()
        },
        "command": f"python scripts/release_model.py --name {recipe.name}"
        + (" --tiny" if recipe.tiny else "")
        + ("" if recipe.version == "1" else f" --version {recipe.version}")
        + ("" if recipe.balance == PRETRAIN_BALANCER else f" --balance {recipe.balance}")
        + ("" if recipe.anchor == "validation" else f" --anchor {recipe.anchor}")
        + ("" if recipe.holdout_fold is None else f" --holdout-fold {recipe.holdout_fold}")
        + ("" if recipe.pretrain_epochs is None else f" --pretrain-epochs {recipe.pretrain_epochs}"),
        "commit": _commit(),
        "package_version": _version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        # the two runs' own training time (a release that reuses finished runs takes seconds)
        "train_seconds": round(
            sum(read_json(r / "metrics.json").get("train_seconds") or 0.0 for r in (pre, *runs.values())), 1
        ),
        "licences": LICENCES,
        "citations": CITATIONS,
        "sha256": zoo.file_digests(tmp),
    }
    atomic_write_json(tmp / "card.json", card)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    zoo.verify(target)
    return target


def gate_on_training_rows(run: Path, table: Path) -> dict:
    """What the run's DFT metal gate would do to the run's own training compositions (every
    row of ``table`` but its validation rows, predicted from the formula) if it did not
    leave them alone (:func:`matmtl.metal_gate.leave_seen`): how many answers it would
    change, how many of those are measured gapped, and their MAE (eV) without and with it."""
    from . import inference
    from .checkpoints import load_checkpoint, read_json
    from .data.composition import composition_keys
    from .metal_gate import GATE_FILE, load

    gate, gaps = load(run / GATE_FILE)
    rows = pd.read_csv(table)
    held = set(read_json(run / "validation_predictions.json")["rows"])
    train = rows[[i not in held for i in range(len(rows))]]
    net, meta = load_checkpoint(run)
    model = inference.Model(net, meta, run, metal_gate=None)
    pred = model.predict(train["formula"].tolist())["gap_expt"].to_numpy(np.float64)
    y = train["gap_expt"].to_numpy(np.float64)
    ok = np.isfinite(pred)
    f = model.featurizer(train["formula"][ok].tolist(), where=str(table))
    gated = gate.apply(pred[ok], gaps.lookup(composition_keys(f.z, f.frac), np.zeros(int(ok.sum()), np.int64)))
    changed = gated != pred[ok]
    y = y[ok]
    return {
        "rows": int(ok.sum()),
        "changed": int(changed.sum()),
        "changed_measured_gapped": int((changed & (y > 0)).sum()),
        "mae_changed_ungated": float(np.abs(pred[ok][changed] - y[changed]).mean()) if changed.any() else None,
        "mae_changed_gated": float(np.abs(gated[changed] - y[changed]).mean()) if changed.any() else None,
        "mae_ungated": float(np.abs(pred[ok] - y).mean()),
        "mae_gated": float(np.abs(gated - y).mean()),
        "unit": "eV",
        "about": "the gate applied to the model's own training compositions (from their formulas): the "
        "evidence that it leaves them alone (matmtl.metal_gate.leave_seen)",
    }


def _gated(gate: dict | None) -> bool:
    """The run fitted its DFT metal gate (not skipped)."""
    return bool(gate) and "skipped" not in gate


def _finetune_folder(source: str) -> str:
    # the replay run keeps the folder name of releases before the anchor was chosen
    return "finetune" if source == "replay" else f"finetune-{source}"


def choose_source(runs: dict[str, Path]) -> dict:
    """The anchor source kept: by ``matmtl evaluate``'s own rule when both runs were made
    (the lower MAE on the runs' validation rows, replay on a tie); the only run when the
    source was fixed."""
    from .checkpoints import read_json
    from .eval.finetune_cells import choose_anchor, validation_record

    records = {source: validation_record(read_json(run / "metrics.json")) for source, run in runs.items()}
    if len(runs) == 1:
        source, rec = next(iter(records.items()))
        return {"rule": "fixed", "chosen": source, source: (rec["validation"] or {}).get("mae")}
    return choose_anchor(records["replay"], records["distill"])


# what may differ between a reused run and the recipe: when and where it ran, and the
# paths of its inputs (the run folder and table of this release)
_FREE = {"created", "checkpoint", "dataset", "data_dir"}
_FREE_TRAIN = {"threads", "device", "dist_timeout"}


def _settings(cfg) -> dict:
    d = {k: v for k, v in cfg.to_dict().items() if k not in _FREE}
    d["train"] = {k: v for k, v in d["train"].items() if k not in _FREE_TRAIN}
    return d


def check_reused(run_dir: Path, expected) -> None:
    """Refuse a run folder made with other settings than the recipe's (a release reuses
    finished runs: a stale folder must never become the shipped model silently)."""
    from .checkpoints import read_json
    from .config import config_from_dict

    have, want = _settings(config_from_dict(read_json(run_dir / "config.json"))), _settings(expected)
    if have != want:
        diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        if "train" in diff:
            diff += [f"train.{k}" for k in want["train"] if have["train"].get(k) != want["train"][k]]
        raise MatmtlError(
            f"{run_dir} was made with other settings than this recipe ({', '.join(diff)}); "
            "use another --work folder or remove that run"
        )


def _run(run_dir: Path, start, resume, progress: bool, expected=None) -> Path:
    """A finished run in ``run_dir``: reused (its settings checked against ``expected``),
    resumed or started."""
    if expected is not None and (run_dir / "config.json").is_file():
        check_reused(run_dir, expected)
    if (run_dir / "model.json").is_file():
        return run_dir
    if (run_dir / "state" / "state.json").is_file():
        resume(run_dir, progress=progress)
    else:
        start(run_dir)
    return run_dir


def benchmark_figures(
    path: Path = Path("results/expt_gap.json"),
    seeds: Path = Path("results/expt_gap_seeds.json"),
    gate: Path = Path("results/expt_gap_metal_gate.json"),
) -> dict | None:
    """The recipe's matbench figures (the matbench-only evaluation, never this model):
    results/expt_gap.json (every variant, one seed) and, where they exist, the recipe chosen
    on validation rows over several seeds (results/expt_gap_seeds.json) and the same runs
    with the DFT metal gate (results/expt_gap_metal_gate.json)."""
    if not path.is_file():
        return None
    r = json.loads(path.read_text())
    keep = {
        k: {f: v.get(f) for f in ("mae_mean", "mae_std", "folds_run")}
        for k, v in r.get("variants", {}).items()
        if v.get("mae_mean") is not None  # variants this evaluation did not run are left out
    }
    out = {
        "task": r.get("task"),
        "unit": r.get("unit"),
        "protocol": r.get("protocol"),
        "variants": keep,
        "command": r.get("command"),
        "file": str(path),
    }
    if seeds.is_file():
        m = json.loads(seeds.read_text())
        chosen = (m.get("choice") or {}).get("chosen")
        recipe = m.get("recipes", {}).get(chosen) or {}
        fields = ("mae_mean", "seed_std", "seed_mae", "seeds", "ensemble_mae", "validation_mae_mean")
        out["over_seeds"] = {
            "recipe": chosen,
            "rule": "chosen on validation rows (scripts/compare_recipes.py)",
            "checkpoint_of_the_evaluation": recipe.get("checkpoint"),
            "variants": {k: {f: v.get(f) for f in fields} for k, v in recipe.get("variants", {}).items()},
            "file": str(seeds),
        }
    if gate.is_file():
        g = json.loads(gate.read_text())
        fields = ("seeds", "mae", "mae_gated", "fold_paired_difference", "modes_chosen")
        out["metal_gate"] = {
            "variants": {k: {f: v.get(f) for f in fields} for k, v in g.get("variants", {}).items()},
            "command": g.get("command"),
            "file": str(gate),
        }
    return out


def _commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _version() -> str:
    from . import __version__

    return __version__
