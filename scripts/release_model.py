"""Reproduce a shipped model: `python scripts/release_model.py` (hours on a 2-core CPU;
resumable: the runs live in --work). See matmtl/release.py for the recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from matmtl.config import PRETRAIN_BALANCER
from matmtl.eval.cli import Anchor
from matmtl.options import Balance, parse_fold
from matmtl.zoo import DEFAULT_MODEL, PRETRAINED_DIR


def main(
    name: str = typer.Option(DEFAULT_MODEL, "--name", help="Model name (folder under matmtl/pretrained/)."),
    version: str = typer.Option("1", "--version", help="Model version written to its card."),
    work: Path = typer.Option(Path("release-work"), "--work", help="Folder for the training runs (resumable)."),
    out: Path = typer.Option(PRETRAINED_DIR, "--out", help="Where the model folder goes."),
    holdout_fold: str = typer.Option(
        "none",
        "--holdout-fold",
        callback=parse_fold,
        help="mp fold held out in pretraining ('none': every row but validation).",
    ),
    symmetry: str = typer.Option("mp_ground_state", "--symmetry", help="none or mp_ground_state (see finetune)."),
    tiny: bool = typer.Option(
        False, "--tiny", help="Tiny settings (the suite's end-to-end check; meaningless numbers)."
    ),
    max_rows: Optional[int] = typer.Option(None, "--max-rows", min=1, help="Cap DFT rows per dataset (quick tries)."),
    seed: int = typer.Option(0, "--seed", min=0),
    balance: Balance = typer.Option(Balance(PRETRAIN_BALANCER), "--balance", help="Pretraining loss balancer."),
    anchor: Anchor = typer.Option(
        Anchor.validation,
        "--anchor",
        help="Fine-tuning anchor source: replay, distill, or validation (both runs; the lower validation MAE kept).",
    ),
    pretrain_epochs: Optional[int] = typer.Option(
        None, "--pretrain-epochs", min=1, help="Pretraining epochs (default: the size preset's, 25)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing model folder of that name."),
) -> None:
    from matmtl.release import Recipe, release

    recipe = Recipe(
        name=name,
        version=version,
        holdout_fold=holdout_fold,
        symmetry=symmetry,
        seed=seed,
        tiny=tiny,
        max_rows=max_rows,
        balance=balance.value,
        anchor=anchor.value,
        pretrain_epochs=pretrain_epochs,
    )
    target = release(recipe, work, out, force=force)
    typer.echo(f"wrote {target}")


if __name__ == "__main__":
    typer.run(main)
