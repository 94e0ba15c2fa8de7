"""The ``matmtl`` command line."""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .cli_options import (AuxSource, Balance, BalanceOpt, DataDirOpt, Device, DeviceOpt, HoldoutOpt, MonitorEveryOpt, MonitorKOpt,
                          OnBad, OutOpt, ResumeOpt, SeedOpt, Size, SizeOpt, SurgeryChoice, SurgeryOpt, ThreadsOpt,
                          data_dir_str, model_help, parse_aux, parse_tasks, positive, train_help)
from .config import FinetuneConfig, TrainConfig
from .errors import MatmtlError
from .models import ModelConfig

FT = FinetuneConfig().train  # the fine-tuning defaults the options show

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="matmtl",
    help="Materials transfer learning: pretrain on DFT data, fine-tune on experimental band gaps "
    "with a DFT anchor, predict from pymatgen, and inspect multi-task gradient geometry.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: list them, show one, write the manifest.", no_args_is_help=True)
app.add_typer(data_app, name="data")

@data_app.command("list")
def data_list(data_dir: Optional[Path] = DataDirOpt) -> None:
    """List the named datasets, their targets and where each would be read from."""
    from .data import REGISTRY
    from .data.sources import describe_sources

    table = Table(title="matmtl datasets")
    for col in ("name", "aliases", "rows", "input", "targets", "read from"):
        table.add_column(col)
    for spec in REGISTRY.values():
        targets = ", ".join(f"{t.name} ({t.unit})" for t in spec.targets)
        table.add_row(spec.name, ", ".join(spec.aliases), f"{spec.rows:,}", spec.input, targets,
                      describe_sources(spec, data_dir))
    console.print(table)
    console.print("Any CSV/JSON file path with a formula (or structure) column and numeric targets also works.")


@data_app.command("show")
def data_show(
    name: str = typer.Argument(..., help="Dataset name (see `matmtl data list`) or a CSV/JSON path."),
    data_dir: Optional[Path] = DataDirOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Rows, columns, units, source and summary statistics of a dataset."""
    from .data import load_dataset

    with console.status(f"loading {name} ..."), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(name, data_dir)
    for w in caught:
        err_console.print(f"[yellow]warning:[/] {w.message}")
    summary = ds.summary()
    if as_json:
        console.print_json(json.dumps(summary))
        return
    table = Table(title=f"{ds.name}: {summary['rows']:,} rows ({summary['rows_left_out']} left out as bad)")
    for col in ("target", "unit", "mean", "std", "min", "median", "max", "zero"):
        table.add_column(col, justify="right")
    for t, s in summary["targets"].items():
        table.add_row(t, s["unit"], *(f"{s[k]:.4g}" for k in ("mean", "std", "min", "median", "max")),
                      f"{100 * s['fraction_zero']:.1f}%")
    console.print(table)
    console.print(f"columns: {', '.join(summary['columns'])}")
    console.print(f"distinct elements: {summary['distinct_elements']}")
    console.print(f"source: {ds.source}")
    if ds.spec is not None:
        console.print(f"licence: {ds.spec.licence}")
        for c in ds.spec.citation:
            console.print(f"cite: {c}")


@data_app.command("manifest")
def data_manifest(
    write: Optional[Path] = typer.Option(None, "--write", help="Write to this file (e.g. data/manifest.json) instead of stdout."),
) -> None:
    """The dataset manifest (sources, columns, units, licences, citations) as JSON."""
    from .data import manifest
    from .io import atomic_write_json

    if write:
        atomic_write_json(write, manifest())
        console.print(f"wrote {write}")
    else:
        print(json.dumps(manifest(), indent=2))


# -- training and prediction ---------------------------------------------------------


def _warn_lines(caught) -> None:
    for w in caught:
        if type(w.message).__name__ == "DataWarning":
            err_console.print(f"[yellow]warning:[/] {w.message}")


def _run(kind: str, start, resume: bool, out: Optional[Path]):
    """Start a run (or resume one), reporting data warnings; the run folder at the end."""
    from rich.markup import escape

    from .train import resume as resume_run
    from .train.fit import RunInterrupted

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = resume_run(out, kind=kind) if resume else start()
        except RunInterrupted as exc:  # Ctrl-C: say where the state is and how to continue
            state = "no epoch finished yet" if exc.epoch == 0 else f"state saved after epoch {exc.epoch}"
            err_console.print(f"[yellow]interrupted:[/] {escape(str(exc.run_dir))} ({state}). Continue with:\n"
                              f"  matmtl {exc.kind} --resume --out {escape(str(exc.run_dir))}")
            raise typer.Exit(130) from None
    _warn_lines(caught)
    console.print(f"[green]{kind} finished:[/] {res.run_dir}")


def _mtl_config(balance: Balance, surgery: SurgeryChoice, soft_share: float, monitor_every: int, monitor_k: int):
    from .config import MTLConfig
    from .mtl import balancer_from, surgery_from

    return MTLConfig(balancer=balancer_from(balance.value), surgery=surgery_from(surgery.value), soft_share=soft_share,
                     monitor_every=monitor_every, monitor_k=monitor_k)


def _given(**values) -> dict:
    """The options the user set (None = take the preset's value)."""
    return {k: v for k, v in values.items() if v is not None}


@app.command("pretrain")
def pretrain_cmd(
    dataset: str = typer.Option("mp", "--dataset", help="DFT dataset of the main task: mp (matbench mp_e_form, "
                                "132,752 rows)."),
    tasks: str = typer.Option("e_form", "--tasks", callback=parse_tasks, help="Comma-separated DFT tasks: e_form "
                              "(main, always) and gap_pbe (PBE band gap from mp_gap; the two row sets are united, each "
                              "row trains only its own head)."),
    out: Optional[Path] = OutOpt,
    holdout_fold: str = HoldoutOpt,
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Passes over the training rows; "
                                         + train_help("epochs") + "."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Rows per step; "
                                             + train_help("batch_size") + "."),
    lr: Optional[float] = typer.Option(None, "--lr", callback=positive, help="Peak learning rate (AdamW, warm-up then "
                                       "cosine decay); " + train_help("lr") + "."),
    dim: Optional[int] = typer.Option(None, "--dim", min=1, help="Width of the shared encoder; " + model_help("dim") + "."),
    layers: Optional[int] = typer.Option(None, "--layers", min=0, help="Self-attention layers over the elements; "
                                         + model_help("layers") + "."),
    members: Optional[int] = typer.Option(None, "--members", min=1, help="Ensemble members per task head (their spread "
                                          "is the uncertainty); " + model_help("members") + "."),
    sym_dropout: float = typer.Option(TrainConfig().sym_dropout, "--sym-dropout", min=0.0, max=1.0, help="Share of rows "
                                      "trained with the 'unknown symmetry' token, so compositions without a structure "
                                      "are handled."),
    size: Size = SizeOpt,
    max_rows: Optional[int] = typer.Option(None, "--max-rows", min=1, help="Use at most this many training rows per "
                                           "dataset (quick tries)."),
    seed: int = SeedOpt, threads: int = ThreadsOpt, device: Device = DeviceOpt, resume: bool = ResumeOpt,
    balance: Balance = BalanceOpt, surgery: SurgeryChoice = SurgeryOpt,
    monitor_every: int = MonitorEveryOpt, monitor_k: int = MonitorKOpt,
    data_dir: Optional[Path] = DataDirOpt,
) -> None:
    """Pretrain the multi-task model on DFT data (formation energy, optionally the PBE gap).

    Writes a run folder with model.safetensors + model.json (the checkpoint), metrics.json,
    config.json, history.json and PNG plots; saves a resumable state after every epoch."""
    from .config import PretrainConfig, resolve_size
    from .train import pretrain
    from .train.engine import pick_device

    def start():
        dev = pick_device(device.value)
        preset = resolve_size(size.value, dev)
        config = PretrainConfig(
            tasks=tasks, dataset=dataset, holdout_fold=holdout_fold, max_rows=max_rows, data_dir=data_dir_str(data_dir),
            model=ModelConfig.preset(preset, **_given(dim=dim, layers=layers, members=members)),
            train=TrainConfig.preset(preset, **_given(epochs=epochs, batch_size=batch_size, lr=lr), seed=seed,
                                     threads=threads, device=dev, sym_dropout=sym_dropout),
            mtl=_mtl_config(balance, surgery, 0.0, monitor_every, monitor_k))
        return pretrain(config, out)

    if dataset not in ("mp", "mp_e_form", "matbench_mp_e_form"):
        raise typer.BadParameter("only 'mp' (matbench mp_e_form; mp_gap joins through --tasks) is supported",
                                 param_hint="--dataset")
    dataset = "mp"
    _run("pretrain", start, resume, out)


@app.command("finetune")
def finetune_cmd(
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Pretrained run folder. Default: the latest "
                                              "finished pretrain run in the user cache."),
    dataset: str = typer.Option("expt_gap", "--dataset", help="expt_gap (matbench, 4,604 experimental gaps) or a "
                                "CSV/JSON path with a formula column and a band-gap column (bad rows are reported and "
                                "left out)."),
    target: Optional[str] = typer.Option(None, "--target", help="Target column of a user file (default: its only/'gap' "
                                         "column)."),
    aux: str = typer.Option("dft_energy", "--aux", callback=parse_aux, help="Auxiliary DFT anchor task(s), "
                            "comma-separated: dft_energy, dft_gap, or none."),
    aux_source: AuxSource = typer.Option(AuxSource.replay, "--aux-source", help="replay: mini-batches of the original "
                                         "DFT rows with true labels; distill: the pretrained model's own DFT "
                                         "predictions on the fine-tuning compositions."),
    aux_weight: float = typer.Option(FinetuneConfig().aux_weight, "--aux-weight", min=0.0,
                                     help="Static weight of each auxiliary loss (main loss weight 1)."),
    holdout_fold: str = HoldoutOpt,
    max_train_rows: Optional[int] = typer.Option(None, "--max-train-rows", min=1, help="Use at most this many "
                                                 "fine-tuning rows (learning curves, quick tries)."),
    replay_max_rows: Optional[int] = typer.Option(None, "--replay-max-rows", min=1,
                                                  help="Use at most this many DFT rows for replay."),
    epochs: int = typer.Option(FT.epochs, "--epochs", min=1, help="Passes over the fine-tuning rows."),
    batch_size: int = typer.Option(FT.batch_size, "--batch-size", min=1, help="Rows per step (replay batches have the "
                                   "same size)."),
    lr: float = typer.Option(FT.lr, "--lr", callback=positive, help="Peak learning rate (warm-up then cosine decay)."),
    out: Optional[Path] = OutOpt, seed: int = SeedOpt, threads: int = ThreadsOpt, device: Device = DeviceOpt,
    resume: bool = ResumeOpt, balance: Balance = BalanceOpt, surgery: SurgeryChoice = SurgeryOpt,
    soft_share: float = typer.Option(0.0, "--soft-share", min=0.0, help="L2-SP soft sharing: lambda of the penalty "
                                     "(lambda/2)·||theta - theta_pretrained||^2 on the shared encoder. 0 = off."),
    monitor_every: int = MonitorEveryOpt, monitor_k: int = MonitorKOpt,
    data_dir: Optional[Path] = DataDirOpt,
) -> None:
    """Fine-tune a pretrained model on experimental band gaps, with DFT task(s) as an auxiliary anchor loss."""
    from .train import finetune
    from .train.engine import pick_device

    def start():
        config = FinetuneConfig(
            checkpoint=checkpoint, dataset=dataset, target=target, aux=aux, aux_source=aux_source.value,
            aux_weight=aux_weight, holdout_fold=holdout_fold, max_train_rows=max_train_rows,
            replay_max_rows=replay_max_rows, data_dir=data_dir_str(data_dir),
            train=TrainConfig.preset("finetune", epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                     threads=threads, device=pick_device(device.value)),
            mtl=_mtl_config(balance, surgery, soft_share, monitor_every, monitor_k))
        return finetune(config, out)

    _run("finetune", start, resume, out)


@app.command("predict")
def predict_cmd(
    files: Optional[list[Path]] = typer.Argument(None, help="CIF/POSCAR structure files and/or CSV files with a formula column."),
    formula: Optional[list[str]] = typer.Option(None, "--formula", "-f", help="A formula to predict (repeatable)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Checkpoint (run folder). Default: the latest fine-tuned run in the user cache."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the predictions to this CSV (default: print a table, or CSV with --csv)."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV to stdout instead of a table."),
    on_bad: OnBad = typer.Option(OnBad.nan, "--on-bad", help="nan: keep unusable inputs as NaN rows with the reason "
                                 "in 'note'; raise: stop at the first."),
) -> None:
    """Predict the experimental band gap (eV) and DFT formation energy (eV/atom), with ensemble uncertainties."""
    from .io import atomic_write
    from .inference import load_model, read_inputs

    items, labels = ([], [])
    if files:
        items, labels = read_inputs(files)
    for f in formula or []:
        items.append(f), labels.append(f)
    if not items:
        raise MatmtlError("predict: nothing to predict; give CIF/POSCAR/CSV files or --formula")
    m = load_model(model)
    df = m.predict_frame(items, labels, on_bad=on_bad.value)
    if out:
        atomic_write(out, lambda p: df.to_csv(p, index=False, float_format="%.4f"))
        console.print(f"wrote {len(df)} predictions to {out} (model: {m.path})")
    elif as_csv:
        sys.stdout.write(df.to_csv(index=False, float_format="%.4f"))
    else:
        table = Table(title=f"predictions ({m.path.name})")
        for col in ("input", "formula", "spg", "gap_expt (eV)", "± std", "p_metal", "e_form (eV/atom)", "± std", "note"):
            table.add_column(col)
        from rich.markup import escape

        for r in df.itertuples():
            table.add_row(escape(str(r.input)), r.formula, str(r.spg_num), f"{r.gap_expt:.3f}", f"{r.gap_expt_std:.3f}",
                          f"{r.p_metal:.2f}", f"{r.e_form:.3f}", f"{r.e_form_std:.3f}", escape(r.note))
        console.print(table)
    n_bad = int((df["note"] != "").sum())
    if n_bad:
        err_console.print(f"[yellow]warning:[/] {n_bad} input(s) with a note (see the note column)")


@app.command(
    "evaluate",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
)
def evaluate_cmd(ctx: typer.Context) -> None:
    """Matbench v0.1 evaluation: expt_gap variants on the 5 official folds, forgetting, data
    efficiency, mp_e_form/mp_gap, task relatedness, RF/Magpie baseline (resumable; hours on a
    CPU). All options: `matmtl evaluate --help`; see docs/evaluation.md."""
    from .eval import cli_main

    raise typer.Exit(cli_main(list(ctx.args), prog="matmtl evaluate"))


def main() -> None:
    """Entry point: matmtl's own input errors print one clear line, not a traceback."""
    from rich.markup import escape

    try:
        app()
    except MatmtlError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        sys.exit(2)


if __name__ == "__main__":
    main()
