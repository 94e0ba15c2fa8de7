"""`matmtl data ...`: the datasets, their sources and statistics."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..options import DataDirOpt
from .app import console, err_console

data_app = typer.Typer(help="Datasets: list them, show one, write the manifest.", no_args_is_help=True)


@data_app.command("list")
def data_list(data_dir: Optional[Path] = DataDirOpt) -> None:
    """List the named datasets, their targets and where each would be read from."""
    from ..data import REGISTRY
    from ..data.sources import describe_sources

    table = Table(title="matmtl datasets")
    for col in ("name", "aliases", "rows", "input", "targets", "read from"):
        table.add_column(col)
    for spec in REGISTRY.values():
        targets = ", ".join(f"{t.name} ({t.unit})" for t in spec.targets)
        table.add_row(
            spec.name, ", ".join(spec.aliases), f"{spec.rows:,}", spec.input, targets, describe_sources(spec, data_dir)
        )
    console.print(table)
    console.print("Any CSV/JSON file path with a formula (or structure) column and numeric targets also works.")


@data_app.command("show")
def data_show(
    name: str = typer.Argument(..., help="Dataset name (see `matmtl data list`) or a CSV/JSON path."),
    data_dir: Optional[Path] = DataDirOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Rows, columns, units, source and summary statistics of a dataset."""
    from ..data import load_dataset

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
        table.add_row(
            t,
            s["unit"],
            *(f"{s[k]:.4g}" for k in ("mean", "std", "min", "median", "max")),
            f"{100 * s['fraction_zero']:.1f}%",
        )
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
    write: Optional[Path] = typer.Option(
        None, "--write", help="Write to this file (e.g. data/manifest.json) instead of stdout."
    ),
) -> None:
    """The dataset manifest (sources, columns, units, licences, citations) as JSON."""
    from ..data import manifest
    from ..io import atomic_write_json

    if write:
        atomic_write_json(write, manifest())
        console.print(f"wrote {write}")
    else:
        print(json.dumps(manifest(), indent=2))


# -- training and prediction ---------------------------------------------------------
