"""`matmtl pretrain` and `matmtl finetune`: strings become one typed config here."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import typer

from ..config import (
    Device,
    FinetuneConfig,
    GapHead,
    MetalGateSource,
    ModelConfig,
    Precision,
    SymmetrySource,
    TrainConfig,
    default_of,
)
from ..options import (
    AuxSource,
    AverageEpochsOpt,
    Balance,
    BalanceOpt,
    DataDirOpt,
    DeterministicOpt,
    DeviceOpt,
    DistTimeoutOpt,
    GapHeadOpt,
    HoldoutOpt,
    MetalGateOpt,
    MonitorEveryOpt,
    MonitorKOpt,
    NoProgressOpt,
    OutOpt,
    PatienceOpt,
    PrecisionOpt,
    PretrainBalanceOpt,
    ResumeOpt,
    SeedOpt,
    Size,
    SizeOpt,
    SurgeryChoice,
    SurgeryOpt,
    ThreadsOpt,
    ValFractionOpt,
    data_dir_str,
    model_help,
    parse_aux,
    parse_tasks,
    positive,
    train_help,
)
from .app import app, console, err_console

FT = default_of(FinetuneConfig, "train")  # the fine-tuning defaults the options show (no torch import)


def _is_main() -> bool:
    """Rank 0, or a single process: the one that reports (torchrun sets RANK)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def _warn_lines(caught) -> None:
    if not _is_main():
        return
    for w in caught:
        if type(w.message).__name__ == "DataWarning":
            err_console.print(f"[yellow]warning:[/] {w.message}")


def _run(kind: str, start, resume: bool, out: Optional[Path], progress: bool = True):
    """Start a run (or resume one), reporting data warnings; the run folder at the end."""
    from rich.markup import escape

    from ..train import resume as resume_run
    from ..train.fit import RunInterrupted

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = resume_run(out, kind=kind, progress=progress) if resume else start()
        except RunInterrupted as exc:  # Ctrl-C: say where the state is and how to continue
            from ..train.runs import interrupted_message

            err_console.print(f"[yellow]interrupted:[/] {escape(interrupted_message(exc.run_dir, exc.kind))}")
            raise typer.Exit(130) from None
    _warn_lines(caught)
    if _is_main():
        console.print(f"[green]{kind} finished:[/] {res.run_dir}")


def _mtl_config(balance: Balance, surgery: SurgeryChoice, soft_share: float, monitor_every: int, monitor_k: int):
    from ..config import MTLConfig
    from ..mtl import balancer_from, surgery_from

    return MTLConfig(
        balancer=balancer_from(balance.value),
        surgery=surgery_from(surgery.value),
        soft_share=soft_share,
        monitor_every=monitor_every,
        monitor_k=monitor_k,
    )


def _given(**values) -> dict:
    """The options the user set (None = take the preset's value)."""
    return {k: v for k, v in values.items() if v is not None}


@app.command("pretrain")
def pretrain_cmd(
    dataset: str = typer.Option(
        "mp", "--dataset", help="DFT dataset of the main task: mp (matbench mp_e_form, 132,752 rows)."
    ),
    tasks: str = typer.Option(
        "e_form,gap_pbe",
        "--tasks",
        callback=parse_tasks,
        help="Comma-separated DFT tasks: e_form (formation energy, the main task when given), "
        "gap_pbe (PBE band gap from mp_gap) and gap_oqmd (OQMD PBE band gaps, 341,608 compositions; "
        "with a held-out fold, its compositions in that fold are left out). The row sets are united, "
        "each row trains only its own head. One task alone is a single-task run (the negative-transfer baseline).",
    ),
    out: Optional[Path] = OutOpt,
    holdout_fold: str = HoldoutOpt,
    epochs: Optional[int] = typer.Option(
        None, "--epochs", min=1, help="Passes over the training rows; " + train_help("epochs") + "."
    ),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", min=1, help="Rows per step; " + train_help("batch_size") + "."
    ),
    lr: Optional[float] = typer.Option(
        None,
        "--lr",
        callback=positive,
        help="Peak learning rate (AdamW, warm-up then cosine decay); " + train_help("lr") + ".",
    ),
    dim: Optional[int] = typer.Option(
        None, "--dim", min=1, help="Width of the shared encoder; " + model_help("dim") + "."
    ),
    layers: Optional[int] = typer.Option(
        None, "--layers", min=0, help="Self-attention layers over the elements; " + model_help("layers") + "."
    ),
    members: Optional[int] = typer.Option(
        None,
        "--members",
        min=1,
        help="Ensemble members per task head (their spread is the uncertainty); " + model_help("members") + ".",
    ),
    dropout: Optional[float] = typer.Option(
        None,
        "--dropout",
        min=0.0,
        max=0.9,
        help="Dropout in the encoder's attention blocks (regularisation); " + model_help("dropout") + ".",
    ),
    weight_decay: Optional[float] = typer.Option(
        None, "--weight-decay", min=0.0, help="AdamW weight decay; " + train_help("weight_decay") + "."
    ),
    sym_dropout: float = typer.Option(
        TrainConfig().sym_dropout,
        "--sym-dropout",
        min=0.0,
        max=1.0,
        help="Share of rows "
        "trained with the 'unknown symmetry' token, so compositions without a structure "
        "are handled.",
    ),
    size: Size = SizeOpt,
    max_rows: Optional[int] = typer.Option(
        None, "--max-rows", min=1, help="Use at most this many training rows per dataset (quick tries)."
    ),
    val_fraction: float = ValFractionOpt,
    patience: int = PatienceOpt,
    seed: int = SeedOpt,
    threads: int = ThreadsOpt,
    device: Device = DeviceOpt,
    precision: Precision = PrecisionOpt,
    deterministic: bool = DeterministicOpt,
    dist_timeout: float = DistTimeoutOpt,
    resume: bool = ResumeOpt,
    no_progress: bool = NoProgressOpt,
    balance: Balance = PretrainBalanceOpt,
    surgery: SurgeryChoice = SurgeryOpt,
    monitor_every: int = MonitorEveryOpt,
    monitor_k: int = MonitorKOpt,
    data_dir: Optional[Path] = DataDirOpt,
) -> None:
    """Pretrain the multi-task model on DFT data (formation energy, optionally the PBE gap).

    Writes a run folder with model.safetensors + model.json (the checkpoint), metrics.json,
    config.json, history.json and PNG plots; saves a resumable state after every epoch."""
    from ..config import PretrainConfig, resolve_size
    from ..train import pretrain
    from ..train.engine import pick_device

    def start():
        dev = pick_device(device.value)
        preset = resolve_size(size.value, dev)
        config = PretrainConfig(
            tasks=tasks,
            dataset=dataset,
            holdout_fold=holdout_fold,
            max_rows=max_rows,
            data_dir=data_dir_str(data_dir),
            model=ModelConfig.preset(preset, **_given(dim=dim, layers=layers, members=members, dropout=dropout)),
            train=TrainConfig.preset(
                preset,
                **_given(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay),
                seed=seed,
                threads=threads,
                device=dev,
                sym_dropout=sym_dropout,
                val_fraction=val_fraction,
                patience=patience,
                dist_timeout=dist_timeout,
                precision=precision.value,
                deterministic=deterministic,
            ),
            mtl=_mtl_config(balance, surgery, 0.0, monitor_every, monitor_k),
        )
        return pretrain(config, out, progress=not no_progress)

    if dataset not in ("mp", "mp_e_form", "matbench_mp_e_form"):
        raise typer.BadParameter(
            "only 'mp' (matbench mp_e_form; mp_gap joins through --tasks) is supported", param_hint="--dataset"
        )
    dataset = "mp"
    _run("pretrain", start, resume, out, progress=not no_progress)


@app.command("finetune")
def finetune_cmd(
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", help="Pretrained run folder. Default: the latest finished pretrain run in the user cache."
    ),
    dataset: str = typer.Option(
        "expt_gap",
        "--dataset",
        help="expt_gap (matbench, 4,604 experimental gaps) or a "
        "CSV/JSON path with a formula column and a band-gap column (bad rows are reported and "
        "left out).",
    ),
    target: Optional[str] = typer.Option(
        None, "--target", help="Target column of a user file (default: its only/'gap' column)."
    ),
    aux: str = typer.Option(
        "dft_energy",
        "--aux",
        callback=parse_aux,
        help="Auxiliary DFT anchor task(s), comma-separated: dft_energy, dft_gap, or none.",
    ),
    aux_source: AuxSource = typer.Option(
        AuxSource.replay,
        "--aux-source",
        help="replay: mini-batches of the original "
        "DFT rows with true labels; distill: the pretrained model's own DFT "
        "predictions on the fine-tuning compositions.",
    ),
    aux_weight: float = typer.Option(
        default_of(FinetuneConfig, "aux_weight"),
        "--aux-weight",
        min=0.0,
        help="Static weight of each auxiliary loss (main loss weight 1).",
    ),
    holdout_fold: str = HoldoutOpt,
    max_train_rows: Optional[int] = typer.Option(
        None, "--max-train-rows", min=1, help="Use at most this many fine-tuning rows (learning curves, quick tries)."
    ),
    replay_max_rows: Optional[int] = typer.Option(
        None, "--replay-max-rows", min=1, help="Use at most this many DFT rows for replay."
    ),
    epochs: int = typer.Option(FT.epochs, "--epochs", min=1, help="Passes over the fine-tuning rows."),
    batch_size: int = typer.Option(
        FT.batch_size, "--batch-size", min=1, help="Rows per step (replay batches have the same size)."
    ),
    lr: float = typer.Option(FT.lr, "--lr", callback=positive, help="Peak learning rate (warm-up then cosine decay)."),
    symmetry: SymmetrySource = typer.Option(
        SymmetrySource(default_of(FinetuneConfig, "symmetry")),
        "--symmetry",
        help="none: the "
        "gap head learns compositions only; mp_ground_state: training rows whose "
        "composition Materials Project knows carry its ground state's space group "
        "(with symmetry dropout), so a given structure informs the prediction.",
    ),
    gap_head: GapHead = GapHeadOpt,
    metal_gate: MetalGateSource = MetalGateOpt,
    val_fraction: float = ValFractionOpt,
    patience: int = PatienceOpt,
    average_epochs: int = AverageEpochsOpt,
    out: Optional[Path] = OutOpt,
    seed: int = SeedOpt,
    threads: int = ThreadsOpt,
    device: Device = DeviceOpt,
    precision: Precision = PrecisionOpt,
    deterministic: bool = DeterministicOpt,
    dist_timeout: float = DistTimeoutOpt,
    resume: bool = ResumeOpt,
    no_progress: bool = NoProgressOpt,
    balance: Balance = BalanceOpt,
    surgery: SurgeryChoice = SurgeryOpt,
    soft_share: float = typer.Option(
        0.0,
        "--soft-share",
        min=0.0,
        help="L2-SP soft sharing: lambda of the penalty "
        "(lambda/2)·||theta - theta_pretrained||^2 on the shared encoder. 0 = off.",
    ),
    monitor_every: int = MonitorEveryOpt,
    monitor_k: int = MonitorKOpt,
    data_dir: Optional[Path] = DataDirOpt,
) -> None:
    """Fine-tune a pretrained model on experimental band gaps, with DFT task(s) as an auxiliary anchor loss."""
    from ..train import finetune
    from ..train.engine import pick_device

    def start():
        config = FinetuneConfig(
            checkpoint=checkpoint,
            dataset=dataset,
            target=target,
            aux=aux,
            aux_source=aux_source.value,
            aux_weight=aux_weight,
            holdout_fold=holdout_fold,
            max_train_rows=max_train_rows,
            replay_max_rows=replay_max_rows,
            symmetry=symmetry.value,
            gap_head=gap_head.value,
            metal_gate=metal_gate.value,
            data_dir=data_dir_str(data_dir),
            train=TrainConfig.preset(
                "finetune",
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                seed=seed,
                threads=threads,
                device=pick_device(device.value),
                val_fraction=val_fraction,
                patience=patience,
                average_epochs=average_epochs,
                dist_timeout=dist_timeout,
                precision=precision.value,
                deterministic=deterministic,
            ),
            mtl=_mtl_config(balance, surgery, soft_share, monitor_every, monitor_k),
        )
        return finetune(config, out, progress=not no_progress)

    _run("finetune", start, resume, out, progress=not no_progress)
