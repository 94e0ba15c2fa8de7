"""Command-line choices and options shared by the ``matmtl`` commands: every value is
checked here, at the boundary (choices as enums, numbers with their ranges), and an
error names the flag. Defaults shown in ``--help`` come from the config dataclasses."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from .config import (
    AUX_ALIASES,
    DFT_TASKS,
    GAP_HEAD_HELP,
    METAL_GATE_HELP,
    PRETRAIN_BALANCER,
    Device,
    FinetuneConfig,
    GapHead,
    MetalGateSource,
    ModelConfig,
    Precision,
    TrainConfig,
    default_of,
)


class Size(str, Enum):
    auto = "auto"
    tiny = "tiny"
    small = "small"
    default = "default"
    large = "large"


class Balance(str, Enum):
    static = "static"
    uncertainty = "uncertainty"
    gradnorm = "gradnorm"


class SurgeryChoice(str, Enum):
    none = "none"
    pcgrad = "pcgrad"
    halfspace = "halfspace"


class AuxSource(str, Enum):
    replay = "replay"
    distill = "distill"


class OnBad(str, Enum):
    nan = "nan"
    raise_ = "raise"


# -- parsers for values that are not a plain choice or number ----------------------------


def parse_fold(value: Optional[str]) -> Optional[int]:
    """``--holdout-fold``: '0'..'4' -> int; 'none'/'all' -> None (train on every row)."""
    if value is None:
        return None
    s = str(value).strip().lower()
    if s in ("none", "all", "-1", ""):
        return None
    if s not in ("0", "1", "2", "3", "4"):
        raise typer.BadParameter(f"must be a matbench fold 0..4 or 'none', got {value!r}")
    return int(s)


def parse_tasks(value: str) -> tuple[str, ...]:
    """``--tasks``: comma-separated DFT tasks (e_form, gap_pbe, gap_oqmd; one alone is a single-task run)."""
    tasks = tuple(dict.fromkeys(t.strip() for t in value.split(",") if t.strip()))
    bad = [t for t in tasks if t not in DFT_TASKS]
    if bad or not tasks:
        raise typer.BadParameter(f"give DFT tasks among {', '.join(DFT_TASKS)}; got {value!r}")
    return tasks


def parse_aux(value: str) -> tuple[str, ...]:
    """``--aux``: comma-separated auxiliary tasks (dft_energy, dft_gap) or 'none'."""
    names = [a.strip() for a in value.split(",") if a.strip()]
    if not names or names == ["none"]:
        return ()
    bad = [a for a in names if a not in AUX_ALIASES]
    if bad:
        raise typer.BadParameter(f"unknown auxiliary task(s) {bad}; choose from dft_energy, dft_gap or none")
    return tuple(dict.fromkeys(AUX_ALIASES[a] for a in names))


def positive(value: Optional[float]) -> Optional[float]:
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be > 0, got {value}")
    return value


# -- shared options ----------------------------------------------------------------------


def _preset_help(cls, field: str, stage_presets: tuple[str, ...]) -> str:
    base = getattr(cls(), field)
    parts = [f"{base} ({stage_presets[0]})"] + [
        f"{cls.PRESETS[p].get(field, base)} ({p})" for p in stage_presets[1:] if field in cls.PRESETS[p]
    ]
    return "default from --size: " + ", ".join(parts)


def train_help(field: str) -> str:
    return _preset_help(TrainConfig, field, ("default", "tiny", "large"))


def model_help(field: str) -> str:
    return _preset_help(ModelConfig, field, ("default", "tiny", "large"))


DataDirOpt = typer.Option(
    None,
    "--data-dir",
    envvar="MATMTL_DATA_DIR",
    help="Folder holding the dataset files (the offline-mirror layout or matminer's <name>.json.gz). "
    "Default: the offline mirror ../shared/data beside the repository, then matminer's download.",
)
DeviceOpt = typer.Option(Device.auto, "--device", help="auto (CUDA if available, else CPU), cpu or cuda.")
MetalGateOpt = typer.Option(
    MetalGateSource(default_of(FinetuneConfig, "metal_gate")),
    "--metal-gate",
    help=METAL_GATE_HELP,
)
GapHeadOpt = typer.Option(
    GapHead(default_of(FinetuneConfig, "gap_head")),
    "--gap-head",
    help=GAP_HEAD_HELP,
)
SeedOpt = typer.Option(0, "--seed", min=0, help="Random seed. Seeded CPU runs with the same --threads repeat exactly.")
ThreadsOpt = typer.Option(
    TrainConfig().threads,
    "--threads",
    min=0,
    help="CPU threads for torch (fixed, so seeded runs repeat; 0 = torch's default).",
)
PrecisionOpt = typer.Option(
    Precision(TrainConfig().precision),
    "--precision",
    help="fp32 (default) or bf16: the encoder and heads run under torch.autocast(bfloat16) "
    "(CUDA, or CPU); losses, per-task gradients and the optimiser stay fp32. bf16 changes the "
    "numbers (a run records it in config.json).",
)
DeterministicOpt = typer.Option(
    TrainConfig().deterministic,
    "--deterministic/--no-deterministic",
    help="CUDA: deterministic kernels only (torch.use_deterministic_algorithms, "
    "CUBLAS_WORKSPACE_CONFIG=:4096:8, cuDNN deterministic), slower. CPU runs are "
    "deterministic already (seeded, same --threads: bit for bit).",
)
DistTimeoutOpt = typer.Option(
    TrainConfig().dist_timeout,
    "--dist-timeout",
    min=1.0,
    help="Under torchrun (several processes share each batch, docs/distributed.md): seconds a process "
    "waits for the others before it stops with an error naming itself, instead of hanging.",
)
OutOpt = typer.Option(
    None,
    "--out",
    help="Run folder to create (must not exist or be empty). Default: <user cache>/runs/<kind>-<timestamp>.",
)
NoProgressOpt = typer.Option(False, "--no-progress", help="No per-epoch training progress bars (for logs).")
ResumeOpt = typer.Option(
    False,
    "--resume",
    help="Continue an unfinished run (the one named by --out, else the latest "
    "unfinished one) from its last saved epoch; its stored settings are used and the other "
    "options ignored.",
)
BalanceOpt = typer.Option(
    Balance.static,
    "--balance",
    help="Loss balancing: static (fixed weights), uncertainty "
    "(Kendall et al. 2018, learned task variances) or gradnorm (Chen et al. 2018, equalises the "
    "tasks' gradient norms, so eV and eV/atom tasks talk on equal terms). Static weights act as a "
    "prior for the other two.",
)
PretrainBalanceOpt = typer.Option(
    Balance(PRETRAIN_BALANCER),
    "--balance",
    help="Loss balancing of the pretraining tasks: uncertainty (default: Kendall et al. 2018, learned "
    "task variances; it transferred best to experimental gaps; against a single-task e_form model of the same budget "
    "it ties at 25 epochs and costs 0.002 eV/atom at 75), static (fixed weights) or gradnorm (Chen et al. 2018).",
)
SurgeryOpt = typer.Option(
    SurgeryChoice.none,
    "--surgery",
    help="Gradient surgery on the shared encoder: none, pcgrad "
    "(Yu et al. 2020: project away conflicting task gradients) or halfspace (the update nearest "
    "to the main task's gradient that does not increase the auxiliary losses to first order).",
)
MonitorEveryOpt = typer.Option(
    0,
    "--monitor-every",
    min=0,
    help="Every N steps, record the principal angles between "
    "the tasks' gradient subspaces and the cosine of their mean gradients (metrics.json, "
    "gradient_geometry.png). 0 = off.",
)
MonitorKOpt = typer.Option(4, "--monitor-k", min=2, help="Micro-batches per task gradient subspace for the monitor.")
HoldoutOpt = typer.Option(
    "none",
    "--holdout-fold",
    callback=parse_fold,
    help="Matbench fold (0-4) whose official "
    "test rows are held out and predicted once, at the end (nothing is fitted on them); 'none' "
    "(default) trains on every row but the validation rows.",
)
ValFractionOpt = typer.Option(
    TrainConfig().val_fraction,
    "--val-fraction",
    min=0.0,
    max=0.9,
    help="Share of the training rows held out (seeded) as the run's validation rows: they "
    "choose the best epoch, the metal cut of gap heads and the uncertainty calibration. "
    "Held-out test rows (--holdout-fold) are never used for any of it.",
)
PatienceOpt = typer.Option(
    TrainConfig().patience,
    "--patience",
    min=0,
    help="Stop after this many epochs without a "
    "better validation score (0 = train all epochs; the best epoch is kept either way).",
)
AverageEpochsOpt = typer.Option(
    TrainConfig.preset("finetune").average_epochs,
    "--average-epochs",
    min=1,
    help="Keep the weights of this many best epochs (validation score) and average them: from the best "
    "epoch, each next-best joins if the averaged weights score no worse on the validation rows "
    "(one model, the same size). 1 = the best epoch alone.",
)
SizeOpt = typer.Option(
    Size.auto,
    "--size",
    help="Model and training preset: default (CPU; 'small' is its old name), "
    "large (GPU), tiny (smoke tests) or auto (large on CUDA, else default).",
)


def data_dir_str(data_dir: Optional[Path]) -> Optional[str]:
    return str(data_dir) if data_dir else None
