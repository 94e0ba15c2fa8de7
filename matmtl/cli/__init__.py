"""The ``matmtl`` command line: one typer app; each command group is a small module that
turns strings into the library's typed objects (options and their checks in matmtl/options.py,
shared with the evaluate command in matmtl/eval/cli.py)."""

from __future__ import annotations

import sys

from ..errors import DistributedError, MatmtlError
from ..eval.cli import evaluate_cmd
from . import data, models, predict, train  # noqa: F401  (registers the commands)
from .app import app, err_console
from .data import data_app

app.add_typer(data_app, name="data")
app.command("evaluate")(evaluate_cmd)


def main() -> None:
    """Entry point: matmtl's own input errors, and a data-parallel run that lost a process,
    print one clear line, not a traceback."""
    from rich.markup import escape

    try:
        app()
    except (MatmtlError, DistributedError) as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        sys.exit(2)


if __name__ == "__main__":
    main()
