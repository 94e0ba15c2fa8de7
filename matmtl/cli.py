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

from .errors import MatmtlError

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

DataDirOpt = typer.Option(
    None, "--data-dir", envvar="MATMTL_DATA_DIR",
    help="Folder holding the dataset files (the offline-mirror layout or matminer's <name>.json.gz). "
    "Default: the offline mirror ../shared/data beside the repository, then matminer's download.",
)


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

DeviceOpt = typer.Option("auto", "--device", help="auto (CUDA if available, else CPU), cpu or cuda.")
SeedOpt = typer.Option(0, "--seed", help="Random seed. Seeded CPU runs with the same --threads repeat exactly.")
ThreadsOpt = typer.Option(2, "--threads", help="CPU threads for torch (fixed, so seeded runs repeat; 0 = torch's default).")
OutOpt = typer.Option(None, "--out", help="Run folder to create (must not exist or be empty). Default: <user cache>/runs/<kind>-<timestamp>.")
ResumeOpt = typer.Option(False, "--resume", help="Continue an unfinished run (the one named by --out, else the latest unfinished one) "
                         "from its last saved epoch; its stored settings are used and the other options ignored.")
BalanceOpt = typer.Option("static", "--balance", help="Loss balancing: static (fixed weights), uncertainty (Kendall et al. "
                          "2018, learned task variances) or gradnorm (Chen et al. 2018, equalises the tasks' gradient norms, "
                          "so eV and eV/atom tasks talk on equal terms). Static weights act as a prior for the other two.")
SurgeryOpt = typer.Option("none", "--surgery", help="Gradient surgery on the shared encoder: none, pcgrad (Yu et al. 2020: "
                          "project away conflicting task gradients) or halfspace (the update nearest to the main task's "
                          "gradient that does not increase the auxiliary losses to first order).")
MonitorEveryOpt = typer.Option(0, "--monitor-every", help="Every N steps, record the principal angles between the tasks' "
                               "gradient subspaces and the cosine of their mean gradients (metrics.json, "
                               "gradient_geometry.png). 0 = off.")
MonitorKOpt = typer.Option(4, "--monitor-k", help="Micro-batches per task gradient subspace for the monitor (k >= 2).")
HoldoutOpt = typer.Option("0", "--holdout-fold", help="Matbench fold (0-4) whose official test rows are held out and scored; "
                          "'none' trains on every row.")


def _warn_lines(caught) -> None:
    for w in caught:
        err_console.print(f"[yellow]warning:[/] {w.message}")


@app.command("pretrain")
def pretrain_cmd(
    dataset: str = typer.Option("mp", "--dataset", help="DFT dataset of the main task: mp (matbench mp_e_form, 132,752 rows)."),
    tasks: str = typer.Option("e_form", "--tasks", help="Comma-separated DFT tasks: e_form (main, always) and gap_pbe "
                              "(PBE band gap from mp_gap; the two row sets are united, each row trains only its own head)."),
    out: Optional[Path] = OutOpt,
    holdout_fold: str = HoldoutOpt,
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Passes over the training rows (default 25 on CPU, 100 with --size large)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Rows per step (default 256; 1024 with --size large)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (AdamW, warm-up then cosine decay; default 1.5e-3)."),
    dim: Optional[int] = typer.Option(None, "--dim", help="Width of the shared encoder (default 192; 256 with --size large)."),
    layers: Optional[int] = typer.Option(None, "--layers", help="Self-attention layers over the elements (default 3; 4 with --size large)."),
    members: int = typer.Option(4, "--members", help="Ensemble members per task head (their spread is the uncertainty)."),
    sym_dropout: float = typer.Option(0.25, "--sym-dropout", help="Share of rows trained with the 'unknown symmetry' token, so "
                                      "compositions without a structure are handled."),
    size: str = typer.Option("auto", "--size", help="Preset: small (CPU, default), large (GPU) or auto (large on CUDA)."),
    max_rows: Optional[int] = typer.Option(None, "--max-rows", help="Use at most this many training rows per dataset (quick tries)."),
    seed: int = SeedOpt, threads: int = ThreadsOpt, device: str = DeviceOpt, resume: bool = ResumeOpt,
    balance: str = BalanceOpt, surgery: str = SurgeryOpt,
    monitor_every: int = MonitorEveryOpt, monitor_k: int = MonitorKOpt,
    data_dir: Optional[Path] = DataDirOpt,
) -> None:
    """Pretrain the multi-task model on DFT data (formation energy, optionally the PBE gap).

    Writes a run folder with model.safetensors + model.json (the checkpoint), metrics.json,
    config.json, history.json and PNG plots; saves a resumable state after every epoch."""
    from .models import ModelConfig
    from .train.engine import TrainConfig, pick_device
    from .train.pretrain import pretrain

    dev = pick_device(device)
    large = size == "large" or (size == "auto" and dev == "cuda")
    if size not in ("auto", "small", "large"):
        raise typer.BadParameter("--size must be auto, small or large")
    mcfg = ModelConfig(dim=dim or (256 if large else 192), layers=layers or (4 if large else 3), members=members)
    tcfg = TrainConfig(epochs=epochs or (100 if large else 25), batch_size=batch_size or (1024 if large else 256),
                       lr=lr or (2e-3 if large else 1.5e-3), seed=seed, threads=threads, device=dev, sym_dropout=sym_dropout)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = pretrain(tasks.split(","), dataset=dataset, out=out, holdout_fold=holdout_fold, max_rows=max_rows,
                       model=mcfg, train=tcfg, balancing=balance, surgery=surgery, monitor_every=monitor_every,
                       monitor_k=monitor_k, resume=resume,
                       data_dir=str(data_dir) if data_dir else None)
    _warn_lines([w for w in caught if "DataWarning" in type(w.message).__name__])
    console.print(f"[green]pretrain finished:[/] {res.run_dir}")


@app.command("finetune")
def finetune_cmd(
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Pretrained run folder. Default: the latest finished "
                                              "pretrain run in the user cache."),
    dataset: str = typer.Option("expt_gap", "--dataset", help="expt_gap (matbench, 4,604 experimental gaps) or a CSV/JSON path with "
                                "a formula column and a band-gap column (bad rows are reported and left out)."),
    target: Optional[str] = typer.Option(None, "--target", help="Target column of a user file (default: its only/'gap' column)."),
    aux: str = typer.Option("dft_energy", "--aux", help="Auxiliary DFT anchor task(s), comma-separated: dft_energy, dft_gap, or none."),
    aux_source: str = typer.Option("replay", "--aux-source", help="replay: mini-batches of the original DFT rows with true labels; "
                                   "distill: the pretrained model's own DFT predictions on the fine-tuning compositions."),
    aux_weight: float = typer.Option(0.5, "--aux-weight", help="Static weight of each auxiliary loss (main loss weight 1)."),
    holdout_fold: str = HoldoutOpt,
    max_train_rows: Optional[int] = typer.Option(None, "--max-train-rows", help="Use at most this many fine-tuning rows (learning curves, quick tries)."),
    replay_max_rows: Optional[int] = typer.Option(None, "--replay-max-rows", help="Use at most this many DFT rows for replay."),
    epochs: int = typer.Option(60, "--epochs", help="Passes over the fine-tuning rows."),
    batch_size: int = typer.Option(64, "--batch-size", help="Rows per step (replay batches have the same size)."),
    lr: float = typer.Option(5e-4, "--lr", help="Peak learning rate (warm-up then cosine decay)."),
    out: Optional[Path] = OutOpt, seed: int = SeedOpt, threads: int = ThreadsOpt, device: str = DeviceOpt,
    resume: bool = ResumeOpt, balance: str = BalanceOpt, surgery: str = SurgeryOpt,
    soft_share: float = typer.Option(0.0, "--soft-share", help="L2-SP soft sharing: lambda of the penalty "
                                     "(lambda/2)·||theta - theta_pretrained||^2 on the shared encoder. 0 = off."),
    monitor_every: int = MonitorEveryOpt, monitor_k: int = MonitorKOpt,
    data_dir: Optional[Path] = DataDirOpt,
) -> None:
    """Fine-tune a pretrained model on experimental band gaps, with DFT task(s) as an auxiliary anchor loss."""
    from .train.engine import TrainConfig, pick_device
    from .train.finetune import FINETUNE_DEFAULTS, finetune

    tcfg = TrainConfig(**{**FINETUNE_DEFAULTS, "epochs": epochs, "batch_size": batch_size, "lr": lr}, seed=seed,
                       threads=threads, device=pick_device(device))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = finetune(checkpoint=checkpoint, dataset=dataset, target=target, aux=aux, aux_source=aux_source,
                       aux_weight=aux_weight, holdout_fold=holdout_fold, max_train_rows=max_train_rows,
                       replay_max_rows=replay_max_rows, out=out, train=tcfg, balancing=balance, surgery=surgery,
                       soft_share=soft_share, monitor_every=monitor_every, monitor_k=monitor_k,
                       resume=resume, data_dir=str(data_dir) if data_dir else None)
    _warn_lines([w for w in caught if type(w.message).__name__ == "DataWarning"])
    console.print(f"[green]finetune finished:[/] {res.run_dir}")


@app.command("predict")
def predict_cmd(
    files: Optional[list[Path]] = typer.Argument(None, help="CIF/POSCAR structure files and/or CSV files with a formula column."),
    formula: Optional[list[str]] = typer.Option(None, "--formula", "-f", help="A formula to predict (repeatable)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Checkpoint (run folder). Default: the latest fine-tuned run in the user cache."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the predictions to this CSV (default: print a table, or CSV with --csv)."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV to stdout instead of a table."),
    on_bad: str = typer.Option("nan", "--on-bad", help="nan: keep unusable inputs as NaN rows with the reason in 'note'; raise: stop at the first."),
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
    df = m.predict_frame(items, labels, on_bad=on_bad)
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
