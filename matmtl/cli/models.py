"""`matmtl models list|show`: the shipped models and their cards."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from .app import app, console

models_app = typer.Typer(help="Shipped pretrained models: list them, show a model's card.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list() -> None:
    """The models shipped with matmtl (use one with `matmtl predict --model NAME`)."""
    from .. import zoo

    table = Table(title="shipped matmtl models")
    for col in ("name", "version", "size (MB)", "trained on", "description"):
        table.add_column(col)
    for m in zoo.list_models():
        table.add_row(m["name"], str(m["version"]), f"{m['size_mb']:.1f}", m["trained_on"], m["description"])
    console.print(table)
    console.print(f"default: {zoo.DEFAULT_MODEL} (used when no fine-tuned run of your own is in the cache)")


@models_app.command("show")
def models_show(
    name: str = typer.Argument(..., help="A shipped model's name (see `matmtl models list`)."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole card as JSON."),
) -> None:
    """A shipped model's card: data, command, version, benchmark figures, calibration, licences."""
    from rich.markup import escape

    from .. import zoo

    c = zoo.card(name)
    if as_json:
        console.print_json(json.dumps(c))
        return
    console.print(f"[bold]{escape(c['name'])}[/] (version {c.get('version')}): {escape(c.get('description', ''))}")
    for key, label in (
        ("data", "data"),
        ("recipe", "recipe"),
        ("benchmark", "benchmark"),
        ("validation", "validation"),
        ("outputs", "outputs"),
    ):
        if c.get(key):
            console.print(f"[bold]{label}[/]")
            for k, v in c[key].items():
                console.print(f"  {escape(str(k))}: {escape(json.dumps(v) if isinstance(v, (dict, list)) else str(v))}")
    console.print(
        f"[bold]made by[/] `{escape(c.get('command', ''))}` at commit {c.get('commit')} "
        f"(matmtl {c.get('package_version')})"
    )
    for lic in c.get("licences", []):
        console.print(f"licence: {escape(lic)}")
    for cit in c.get("citations", []):
        console.print(f"cite: {escape(cit)}")
    console.print(f"sha256: {json.dumps(c.get('sha256', {}))}")
