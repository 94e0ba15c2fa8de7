"""`matmtl predict`: files, folders and formulas in; a table, CSV or JSON out."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import MatmtlError
from ..options import OnBad
from .app import app, console, err_console


@app.command("predict")
def predict_cmd(
    files: Optional[list[Path]] = typer.Argument(
        None,
        help="Structure files (CIF, also multi-block; POSCAR; extxyz and "
        "other ASE formats), folders or globs of them, and CSV files with a "
        "formula column.",
    ),
    formula: Optional[list[str]] = typer.Option(None, "--formula", "-f", help="A formula to predict (repeatable)."),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        help="A shipped model's name (`matmtl models list`) or a "
        "checkpoint (run folder). Default: your latest fine-tuned run in the user "
        "cache, else the shipped default model.",
    ),
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        "-o",
        help="Write the predictions to this file: .csv (units in "
        "the column names), .tsv or .json (units, model, rows). Default: print a table.",
    ),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV to stdout instead of a table."),
    on_bad: OnBad = typer.Option(
        OnBad.nan,
        "--on-bad",
        help="nan: keep unusable inputs as NaN rows with the reason in 'note'; raise: stop at the first.",
    ),
) -> None:
    """Predict the experimental band gap (eV) and DFT formation energy (eV/atom), with calibrated uncertainties and
    trust notes."""
    from rich.markup import escape

    from ..inference import load_model
    from ..predict_io import read_inputs, write_predictions

    if out is not None and out.suffix.lower() not in (".csv", ".tsv", ".json"):
        raise typer.BadParameter(f"{out}: give a file name ending .csv, .tsv or .json", param_hint="--out")
    if out is not None and out.is_dir():
        raise typer.BadParameter(f"{out} is a folder; give a file name ending .csv, .tsv or .json", param_hint="--out")
    items, labels = read_inputs(files, on_bad=on_bad.value) if files else ([], [])
    for f in formula or []:
        items.append(f), labels.append(f)
    if not items:
        raise MatmtlError("predict: nothing to predict; give structure files, folders, CSV files or --formula")
    m = load_model(model)
    df = m.predict_frame(items, labels, on_bad=on_bad.value)
    if out:
        write_predictions(df, out, model=m.path, units_in_header=True)
        console.print(f"wrote {len(df)} predictions to {out} (model: {m.path})")
    elif as_csv:
        sys.stdout.write(df.to_csv(index=False, float_format="%.4f"))
    else:
        table = Table(title=f"predictions ({m.path.name})")
        for col in (
            "input",
            "formula",
            "spg",
            "gap_expt (eV)",
            "± std",
            "p_metal",
            "e_form (eV/atom)",
            "± std",
            "note / trust",
        ):
            table.add_column(col)
        for r in df.itertuples():
            table.add_row(
                escape(str(r.input)),
                r.formula,
                str(r.spg_num),
                f"{r.gap_expt:.3f}",
                f"{r.gap_expt_std:.3f}",
                f"{r.p_metal:.2f}",
                f"{r.e_form:.3f}",
                f"{r.e_form_std:.3f}",
                escape("; ".join(x for x in (r.note, r.trust) if x)),
            )
        console.print(table)
    n_bad = int((df["note"] != "").sum())
    if n_bad:
        err_console.print(f"[yellow]warning:[/] {n_bad} input(s) with a note (see the note column)")
