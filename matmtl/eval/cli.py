"""``matmtl evaluate``: the typer command of the evaluation harness.

:func:`evaluate_cmd` is a typer-annotated function (registered in :mod:`matmtl.cli` as
``app.command("evaluate")(evaluate_cmd)``); :func:`cli_main` runs the same command as a
one-command typer app (``python scripts/evaluate.py``). Every value is checked here, and
an error names the flag; defaults come from :class:`~matmtl.eval.settings.EvalSettings`.
Training, data and the runner are imported only when the command runs.

Exit codes: 0 done, 1 an error (a message, not a traceback; also refusing to replace
existing results without ``--force``), 2 bad arguments, 130 Ctrl-C."""

from __future__ import annotations

import json
import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from ..config import GAP_HEAD_HELP, Device, GapHead, SymmetrySource, TrainConfig, default_of
from ..options import NoProgressOpt
from .claims import ClaimSettings
from .settings import (
    ALL_VARIANTS,
    AUX_ALIAS,
    AUX_NAMES,
    DEFAULT_FRACTIONS,
    EFFICIENCY_CHOICES,
    EFFICIENCY_VARIANTS,
    FOLDS,
    NEURAL_VARIANTS,
    EvalSettings,
)

_D = EvalSettings  # the defaults every option shows


class Anchor(str, Enum):
    validation = "validation"
    replay = "replay"
    distill = "distill"


SubmissionVariant = Enum("SubmissionVariant", {v: v for v in ALL_VARIANTS}, type=str)


# -- values that are not a plain choice or number --------------------------------------------


def _items(value: str) -> list[str]:
    return [x.strip() for x in str(value).split(",") if x.strip()]


def _none(value: str) -> bool:
    return str(value).strip().lower() in ("", "none")


def parse_variants(value: str) -> tuple[str, ...]:
    """``--variants``: a comma list of variants, ``all`` or ``neural``."""
    out: list[str] = []
    for v in _items(value):
        add = ALL_VARIANTS if v == "all" else (NEURAL_VARIANTS if v == "neural" else (v,))
        out += [a for a in add if a not in out]
    bad = [v for v in out if v not in ALL_VARIANTS]
    if bad or not out:
        raise typer.BadParameter(
            f"unknown variant(s) {bad or value!r}; choose from all, neural, {', '.join(ALL_VARIANTS)}"
        )
    return tuple(out)


def _fold_list(value: str, allow_empty: bool) -> tuple[int, ...]:
    if str(value).strip().lower() == "all":
        return FOLDS
    if allow_empty and _none(value):
        return ()
    items = _items(value)
    if not items or any(k not in {str(f) for f in FOLDS} for k in items) or len(set(items)) != len(items):
        raise typer.BadParameter(f"must be distinct matbench folds among 0..4 (a comma list or 'all'), got {value!r}")
    return tuple(sorted(int(k) for k in items))


def parse_folds(value: str) -> tuple[int, ...]:
    """``--folds``: a comma list of folds 0..4 or ``all``."""
    return _fold_list(value, allow_empty=False)


def parse_efficiency_folds(value: Optional[str]) -> Optional[tuple[int, ...]]:
    return None if value is None else _fold_list(value, allow_empty=True)


def parse_mp_folds(value: str) -> Optional[tuple[int, ...]]:
    """``--mp-folds``: ``auto`` (None), ``all``, ``none`` or a comma list."""
    return None if str(value).strip().lower() == "auto" else _fold_list(value, allow_empty=True)


def parse_fractions(value: str) -> tuple[float, ...]:
    """``--fractions``: shares in (0, 1] of each training fold, or ``none``."""
    if _none(value):
        return ()
    try:
        out = tuple(float(x) for x in _items(value))
    except ValueError:
        raise typer.BadParameter(f"not a comma list of numbers: {value!r}") from None
    if any(not 0 < f <= 1 for f in out):
        raise typer.BadParameter(f"shares must lie in (0, 1], got {value!r}")
    return out


def parse_efficiency_variants(value: str) -> tuple[str, ...]:
    out = tuple(_items(value))
    bad = [v for v in out if v not in EFFICIENCY_CHOICES]
    if bad:
        raise typer.BadParameter(f"unknown variant(s) {bad}; choose from {', '.join(EFFICIENCY_CHOICES)}")
    return out


def parse_pretrain_tasks(value: str) -> tuple[str, ...]:
    from ..options import parse_tasks

    return parse_tasks(value)


def parse_aux(value: str) -> tuple[str, ...]:
    """``--aux``: the anchored variants' DFT tasks (dft_energy, dft_gap), as aliases."""
    names = [a.strip() for a in value.split(",") if a.strip()]
    if not names or any(a not in AUX_ALIAS for a in names):
        raise typer.BadParameter(f"give DFT tasks among {', '.join(AUX_NAMES)} (comma list); got {value!r}")
    return tuple(dict.fromkeys(AUX_ALIAS[a] for a in names))


def parse_overrides(value: str, kind: str) -> dict:
    """``KEY=VALUE[,KEY=VALUE...]`` with JSON-literal values (``3``, ``1e-3``, ``true``;
    anything else is a string), checked by the config dataclass of ``kind``."""
    from ..config import TrainConfig
    from ..errors import ConfigError
    from ..models import ModelConfig
    from .settings import with_overrides

    out: dict = {}
    for item in _items(value):
        if "=" not in item:
            raise typer.BadParameter(f"expected KEY=VALUE[,KEY=VALUE...], got {item!r}")
        k, v = (x.strip() for x in item.split("=", 1))
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    base = {"model": ModelConfig.preset, "train": TrainConfig.preset}[kind]()
    try:
        with_overrides(base, out)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    return out


def _train_overrides(value: str) -> dict:
    return parse_overrides(value, "train")


def _model_overrides(value: str) -> dict:
    return parse_overrides(value, "model")


def _join(values) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


# -- the command ------------------------------------------------------------------------------


def evaluate_cmd(
    ctx: typer.Context,
    variants: str = typer.Option(
        "all",
        "--variants",
        callback=parse_variants,
        metavar="NAMES",
        help="Comma list: all, neural, " + ", ".join(ALL_VARIANTS) + ".",
    ),
    folds: str = typer.Option(
        "all",
        "--folds",
        callback=parse_folds,
        metavar="FOLDS",
        help="matbench_expt_gap folds (comma list of 0..4, or all).",
    ),
    fractions: str = typer.Option(
        _join(DEFAULT_FRACTIONS),
        "--fractions",
        callback=parse_fractions,
        metavar="SHARES",
        help="Data-efficiency shares of each training fold ('none' skips the curve).",
    ),
    efficiency_variants: str = typer.Option(
        _join(EFFICIENCY_VARIANTS),
        "--efficiency-variants",
        callback=parse_efficiency_variants,
        metavar="NAMES",
        help="Variants on the data-efficiency curve: scratch, finetune, finetune_anchor (the selected anchor), "
        "rf_magpie.",
    ),
    efficiency_folds: Optional[str] = typer.Option(
        None,
        "--efficiency-folds",
        callback=parse_efficiency_folds,
        metavar="FOLDS",
        help="Folds of the data-efficiency curve (default: the --folds); a subset saves hours on a CPU.",
    ),
    mp_folds: str = typer.Option(
        "auto",
        "--mp-folds",
        callback=parse_mp_folds,
        metavar="FOLDS",
        help="Folds of matbench mp_e_form/mp_gap for the pretraining model: auto (the transfer fold on CPU, all on "
        "CUDA), all, none or a comma list; every fold but the transfer checkpoint's needs its own pretraining.",
    ),
    skip_baseline: bool = typer.Option(
        _D.skip_baseline, "--skip-baseline", help="Leave out the RandomForest/Magpie baseline."
    ),
    skip_mp: bool = typer.Option(_D.skip_mp, "--skip-mp", help="Leave out the matbench mp_e_form/mp_gap evaluation."),
    checkpoint: Optional[Path] = typer.Option(
        None,
        "--checkpoint",
        exists=True,
        help="Pretrained run folder to fine-tune from (default: pretrain one on mp with --pretrain-fold held out, "
        "cached and resumable).",
    ),
    pretrain_tasks: str = typer.Option(
        _join(_D.pretrain_tasks),
        "--pretrain-tasks",
        callback=parse_pretrain_tasks,
        metavar="TASKS",
        help="Tasks of the pretraining run the harness makes.",
    ),
    pretrain_fold: int = typer.Option(
        _D.pretrain_fold, "--pretrain-fold", min=0, max=4, help="mp fold held out by the transfer checkpoint."
    ),
    anchor: Anchor = typer.Option(
        Anchor(_D.anchor),
        "--anchor",
        help="Anchor source of PCGrad and the data-efficiency curve: 'validation' chooses per fold the lower "
        "validation MAE of that fold's replay and distill runs (their own validation rows; no extra runs), "
        "or fixed.",
    ),
    symmetry: SymmetrySource = typer.Option(
        SymmetrySource(_D.symmetry),
        "--symmetry",
        help="Fine-tuning rows carry no space group (none) or their Materials Project ground state's "
        "(mp_ground_state; also measures structure vs formula on the test rows).",
    ),
    gap_head: GapHead = typer.Option(GapHead(_D.gap_head), "--gap-head", help=GAP_HEAD_HELP),
    val_fraction: Optional[float] = typer.Option(
        None,
        "--val-fraction",
        min=0.0,
        max=0.99,
        help="Share of each fine-tuning run's training rows held out as its validation rows (they choose the "
        "epoch, the metal cut, the calibration and the anchor source). Default: the fine-tuning preset's "
        f"({default_of(TrainConfig, 'val_fraction'):g}).",
    ),
    patience: Optional[int] = typer.Option(
        None,
        "--patience",
        min=0,
        help="Stop a fine-tuning run after this many epochs without a better validation MAE (0: all epochs; the "
        f"best epoch is kept either way). Default: the fine-tuning preset's ({default_of(TrainConfig, 'patience')}).",
    ),
    submission_variant: SubmissionVariant = typer.Option(
        SubmissionVariant(_D.submission_variant),
        "--submission-variant",
        help="The variant written to the matbench results file results.json.gz.",
    ),
    aux: str = typer.Option(
        ",".join(_D.aux),
        "--aux",
        callback=parse_aux,
        help="DFT task(s) the anchored variants keep: dft_energy (formation energy), dft_gap (PBE gap; the "
        "checkpoint needs that head), or both.",
    ),
    aux_weight: float = typer.Option(_D.aux_weight, "--aux-weight", min=0.0, help="Weight of the DFT anchor loss."),
    soft_share: float = typer.Option(
        _D.soft_share,
        "--soft-share",
        min=0.0,
        help="L2-SP towards the pretrained encoder (lambda) in every variant that starts from it; 0 = off.",
    ),
    monitor_every: int = typer.Option(
        _D.monitor_every,
        "--monitor-every",
        min=0,
        help="Gradient-geometry monitor period (steps) in the anchored runs; 0 = off (no relatedness section).",
    ),
    monitor_k: int = typer.Option(_D.monitor_k, "--monitor-k", min=2, help="Micro-batches per task gradient subspace."),
    forgetting_rows: int = typer.Option(
        _D.forgetting_rows, "--forgetting-rows", min=1, help="Size of the fixed held-out mp_e_form subset."
    ),
    rf_trees: int = typer.Option(_D.rf_trees, "--rf-trees", min=1, help="Trees of the RandomForest baseline."),
    train_config: str = typer.Option(
        "",
        "--train-config",
        metavar="K=V,...",
        callback=_train_overrides,
        help="Fine-tuning TrainConfig fields for every variant, e.g. epochs=30,lr=1e-3 "
        "(precision=bf16 and deterministic=true too: both enter the cells' fingerprints when set).",
    ),
    pretrain_config: str = typer.Option(
        "",
        "--pretrain-config",
        metavar="K=V,...",
        callback=_train_overrides,
        help="Pretraining TrainConfig fields, e.g. epochs=10,precision=bf16.",
    ),
    model_config: str = typer.Option(
        "", "--model-config", metavar="K=V,...", callback=_model_overrides, help="Pretraining ModelConfig fields."
    ),
    quick: bool = typer.Option(
        _D.quick, "--quick", help="Tiny presets and capped rows: a smoke test (numbers are not results)."
    ),
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        file_okay=False,
        help="Folder of the results JSON files and the plot. Default: a new folder <matmtl cache>/eval/results-<time>. "
        "The committed results: --out results --markdown docs/results.md --force.",
    ),
    markdown: Optional[str] = typer.Option(
        None,
        "--markdown",
        metavar="PATH|none",
        help="The generated results page (default: <out>/results.md; 'none': no page).",
    ),
    force: bool = typer.Option(
        _D.force, "--force", help="Replace results files that already exist in --out (and the --markdown page)."
    ),
    work_dir: Optional[Path] = typer.Option(
        None, "--work-dir", file_okay=False, help="Cell cache and run folders (default: <matmtl cache>/eval)."
    ),
    seed: int = typer.Option(_D.seed, "--seed", min=0, help="Random seed of every cell."),
    device: Device = typer.Option(
        Device(_D.device), "--device", help="auto (CUDA if available, else CPU), cpu or cuda."
    ),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", file_okay=False, help="Dataset folder (default: $MATMTL_DATA_DIR, else the offline mirror)."
    ),
    keep_runs: bool = typer.Option(_D.keep_runs, "--keep-runs", help="Keep the fine-tuning run folders (~20 MB each)."),
    no_progress: bool = NoProgressOpt,
    claim_lease: float = typer.Option(
        ClaimSettings.lease,
        "--claim-lease",
        min=1.0,
        help="Workers sharing a --work-dir (torchrun ranks, or the same command started several times): seconds "
        "without a refresh after which another worker's claim on a cell is taken over (a claim of a process that "
        "is gone on this host is taken over at once).",
    ),
    claim_poll: float = typer.Option(
        ClaimSettings.poll,
        "--claim-poll",
        min=0.01,
        help="Seconds between two looks at cells that other workers are computing.",
    ),
) -> None:
    """Matbench v0.1 evaluation: matbench_expt_gap variants on the 5 official folds, forgetting, data
    efficiency, matbench mp_e_form/mp_gap, task relatedness and a RandomForest/Magpie baseline. Finished
    (variant, fold, fraction) cells are cached, so a killed evaluation continues where it stopped.
    Results go to a new folder in the matmtl cache unless --out says otherwise. See docs/evaluation.md."""
    from rich.console import Console

    from ..errors import DistributedError, MatmtlError

    if efficiency_folds is not None and not set(efficiency_folds) <= set(folds):
        raise typer.BadParameter(
            f"{list(efficiency_folds)} are not among --folds {list(folds)}", param_hint="'--efficiency-folds'"
        )
    err = Console(stderr=True)
    try:
        settings = EvalSettings(
            variants=variants,
            folds=folds,
            fractions=fractions,
            efficiency_variants=efficiency_variants,
            efficiency_folds=efficiency_folds,
            mp_folds=mp_folds,
            skip_baseline=skip_baseline,
            skip_mp=skip_mp or mp_folds == (),
            checkpoint=_str(checkpoint),
            quick=quick,
            out=_str(out),
            markdown=None if markdown is None or _none(markdown) else markdown,
            page=markdown is None or not _none(markdown),
            force=force,
            work_dir=_str(work_dir),
            train_overrides=train_config,
            pretrain_overrides=pretrain_config,
            model_overrides=model_config,
            pretrain_tasks=pretrain_tasks,
            pretrain_fold=pretrain_fold,
            anchor=anchor.value,
            symmetry=symmetry.value,
            gap_head=gap_head.value,
            val_fraction=val_fraction,
            patience=patience,
            submission_variant=submission_variant.value,
            aux=aux,
            aux_weight=aux_weight,
            soft_share=soft_share,
            monitor_every=monitor_every,
            monitor_k=monitor_k,
            forgetting_rows=forgetting_rows,
            rf_trees=rf_trees,
            seed=seed,
            device=device.value,
            data_dir=_str(data_dir),
            keep_runs=keep_runs,
            progress=not no_progress,
            command=command_line(ctx),
        )
        from ..distributed import World

        world = World.from_env()  # torchrun: this rank's place (no process group)
        if world.is_main:  # the ranks > 0 write no results
            _refuse_existing(settings, err)
        from .claims import stopping_on_sigterm
        from .runner import Evaluation

        ev = Evaluation(settings, claims=ClaimSettings(lease=claim_lease, poll=claim_poll))
        with stopping_on_sigterm(ev.worker):
            results = ev.run()
    except (MatmtlError, DistributedError) as exc:
        from rich.markup import escape

        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print(
            "[yellow]interrupted[/]: finished cells are cached; run the same command again (with --force when "
            "it wrote results already) to continue"
        )
        raise typer.Exit(130) from None
    if not ev.writes:
        Console().print(f"[green]rank {world.rank} of {world.size}: every cell is done[/]; rank 0 writes the results")
        return
    page = f" and {ev.outputs.page}" if ev.outputs.page else ""
    files = (results.get("expt_gap") or {}).get("files") or {}
    extra = list((files.get("predictions") or {}).get("files") or [])
    extra += [files["submission"]["file"]] if (files.get("submission") or {}).get("file") else []
    written = [str(ev.out / f"{n}.json") for n in results] + [str(ev.out / n) for n in extra]
    Console().print(f"[green]evaluation written:[/] {', '.join(written)}{page}")


def _str(path) -> Optional[str]:
    return None if path is None else str(path)


def _refuse_existing(settings: EvalSettings, err) -> None:
    """Existing results files in --out (or the --markdown page) are kept unless --force."""
    from .output import planned_outputs

    planned = planned_outputs(settings)
    existing = planned.existing() if planned and not settings.force else []
    if existing:
        from rich.markup import escape

        files = ", ".join(escape(str(p)) for p in existing)
        err.print(
            f"[red]error:[/] {files} already exist(s); matmtl evaluate does not replace results files unless "
            "--force is given (finished cells are cached: a re-run with --force only computes what is missing), "
            "or choose another --out / --markdown"
        )
        raise typer.Exit(1)


def command_line(ctx) -> str:
    """The command as typed, rebuilt from the options given (defaults left out)."""
    parts = []
    for p in ctx.command.params:
        source = ctx.get_parameter_source(p.name)
        if source is None or source.name not in ("COMMANDLINE", "ENVIRONMENT"):
            continue
        if getattr(p, "is_flag", False):
            parts.append(p.opts[0] if ctx.params[p.name] else (p.secondary_opts or p.opts)[0])
        else:
            parts += [p.opts[0], _show(ctx.params[p.name])]
    return " ".join([ctx.command_path, *map(shlex.quote, parts)])


def _show(v) -> str:
    if isinstance(v, Enum):
        return str(v.value)
    if isinstance(v, dict):
        return ",".join(f"{k}={json.dumps(x) if not isinstance(x, str) else x}" for k, x in v.items())
    if isinstance(v, (tuple, list)):
        return _join(v) if v else "none"
    if v is None:
        return "auto"
    return str(v)


def cli_main(argv: list[str] | None = None, prog: str = "matmtl evaluate") -> int:
    """Run ``matmtl evaluate`` with ``argv`` as a one-command typer app; returns the exit
    code (0 done, 1 error, 2 bad arguments, 130 Ctrl-C)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="rich")
    app.command()(evaluate_cmd)
    command = typer.main.get_command(app)
    try:
        command.main(args=list(sys.argv[1:] if argv is None else argv), prog_name=prog, standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
