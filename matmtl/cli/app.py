"""The typer application and its consoles, shared by the command modules."""

from __future__ import annotations

import typer
from rich.console import Console

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
