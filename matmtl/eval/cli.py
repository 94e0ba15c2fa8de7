"""Command line of the evaluation harness: ``matmtl evaluate`` / ``python scripts/evaluate.py``."""
from __future__ import annotations

import argparse
import shlex
import sys

from ..errors import MatmtlError
from .runner import ALL_VARIANTS, DEFAULT_FRACTIONS, EFFICIENCY_VARIANTS, EvalSettings, evaluate


def _list(text: str, conv=str, allow_none: bool = True):
    text = text.strip()
    if allow_none and text.lower() in ("", "none"):
        return ()
    try:
        return tuple(conv(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of {conv.__name__}: {text!r}") from None


def _variants(text: str):
    items = _list(text, allow_none=False)
    out: list[str] = []
    for v in items:
        add = ALL_VARIANTS if v == "all" else (ALL_VARIANTS[1:] if v == "neural" else (v,))
        out += [a for a in add if a not in out]
    bad = [v for v in out if v not in ALL_VARIANTS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {bad}; choose from all, neural, {', '.join(ALL_VARIANTS)}")
    return tuple(out)


def _folds(text: str):
    if text.strip().lower() == "all":
        return (0, 1, 2, 3, 4)
    return _list(text, int, allow_none=False)


def _mp_folds(text: str):
    t = text.strip().lower()
    if t == "auto":
        return None
    if t == "all":
        return (0, 1, 2, 3, 4)
    return _list(text, int)


def _kv(text: str) -> dict:
    out = {}
    for item in text.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE[,KEY=VALUE...], got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def build_parser(prog: str = "matmtl evaluate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Evaluate matmtl under the Matbench v0.1 protocol: matbench_expt_gap variants (5 official folds), "
        "forgetting, data efficiency, matbench mp_e_form/mp_gap, task relatedness and a RandomForest/Magpie baseline. "
        "Finished (variant, fold, fraction) cells are cached, so a killed evaluation continues where it stopped. "
        "See docs/evaluation.md.")
    p.add_argument("--variants", type=_variants, default=ALL_VARIANTS,
                   help="comma-separated: all, neural, " + ", ".join(ALL_VARIANTS))
    p.add_argument("--folds", type=_folds, default=(0, 1, 2, 3, 4), help="matbench_expt_gap folds (comma list or all)")
    p.add_argument("--fractions", type=lambda t: _list(t, float), default=DEFAULT_FRACTIONS,
                   help="data-efficiency shares of each training fold ('none' skips the curve)")
    p.add_argument("--efficiency-variants", type=lambda t: _list(t), default=EFFICIENCY_VARIANTS,
                   help="variants on the data-efficiency curve: scratch, finetune, finetune_anchor (the selected anchor), rf_magpie")
    p.add_argument("--efficiency-folds", type=_folds, default=None,
                   help="folds of the data-efficiency curve (default: the --folds); a subset saves hours on a CPU")
    p.add_argument("--mp-folds", type=_mp_folds, default=None,
                   help="folds of matbench mp_e_form/mp_gap for the pretraining model: auto (fold 0 on CPU, all on CUDA), "
                   "all, none or a list; every fold but the transfer checkpoint's needs its own pretraining")
    p.add_argument("--skip-baseline", action="store_true", help="leave out the RandomForest/Magpie baseline")
    p.add_argument("--skip-mp", action="store_true", help="leave out the matbench mp_e_form/mp_gap evaluation")
    p.add_argument("--checkpoint", default=None, help="pretrained run folder to fine-tune from (default: pretrain one on mp, "
                   "--pretrain-fold held out, cached and resumable)")
    p.add_argument("--pretrain-tasks", type=lambda t: _list(t, allow_none=False), default=("e_form", "gap_pbe"),
                   help="tasks of the pretraining run the harness makes")
    p.add_argument("--pretrain-fold", type=int, default=0, help="mp fold held out by the transfer checkpoint")
    p.add_argument("--anchor", choices=("inner", "replay", "distill"), default="inner",
                   help="anchor source for PCGrad and the data-efficiency curve: chosen per fold on an inner validation "
                   "split of the training fold, or fixed")
    p.add_argument("--aux-weight", type=float, default=0.5, help="weight of the DFT anchor loss")
    p.add_argument("--monitor-every", type=int, default=50,
                   help="gradient-geometry monitor period (steps) in the anchored runs; 0 = off (no relatedness section)")
    p.add_argument("--monitor-k", type=int, default=4, help="micro-batches per task gradient subspace")
    p.add_argument("--forgetting-rows", type=int, default=5000, help="size of the fixed mp_e_form held-out subset")
    p.add_argument("--rf-trees", type=int, default=500, help="trees of the RandomForest baseline")
    p.add_argument("--train-config", type=_kv, default={}, metavar="K=V,...",
                   help="fine-tuning TrainConfig overrides for every variant, e.g. epochs=30,lr=1e-3")
    p.add_argument("--pretrain-config", type=_kv, default={}, metavar="K=V,...", help="pretraining TrainConfig overrides")
    p.add_argument("--model-config", type=_kv, default={}, metavar="K=V,...", help="pretraining ModelConfig overrides")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke test (numbers are not results)")
    p.add_argument("--out", default="results", help="folder of the results JSON files and the plot")
    p.add_argument("--markdown", default="docs/results.md", help="generated results page ('none': do not write)")
    p.add_argument("--work-dir", default=None, help="cell cache and run folders (default: <matmtl cache>/eval)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--data-dir", default=None, help="dataset folder (default: the offline mirror)")
    p.add_argument("--keep-runs", action="store_true", help="keep the fine-tuning run folders (~20 MB each)")
    p.add_argument("--no-progress", action="store_true", help="no per-epoch training progress bars")
    return p


def settings_from_args(args: argparse.Namespace, command: str) -> EvalSettings:
    return EvalSettings(
        variants=args.variants, folds=args.folds, fractions=args.fractions, efficiency_variants=args.efficiency_variants,
        efficiency_folds=args.efficiency_folds, mp_folds=args.mp_folds, skip_baseline=args.skip_baseline, skip_mp=args.skip_mp or args.mp_folds == (),
        checkpoint=args.checkpoint, quick=args.quick, out=args.out,
        markdown=None if str(args.markdown).lower() == "none" else args.markdown, work_dir=args.work_dir,
        train_overrides=args.train_config, pretrain_overrides=args.pretrain_config, model_overrides=args.model_config,
        pretrain_tasks=args.pretrain_tasks, pretrain_fold=args.pretrain_fold, anchor=args.anchor,
        aux_weight=args.aux_weight, monitor_every=args.monitor_every, monitor_k=args.monitor_k,
        forgetting_rows=args.forgetting_rows, rf_trees=args.rf_trees, seed=args.seed, device=args.device,
        data_dir=args.data_dir, keep_runs=args.keep_runs, progress=not args.no_progress, command=command)


def cli_main(argv: list[str] | None = None, prog: str = "matmtl evaluate") -> int:
    """Entry point: parse ``argv``, run the evaluation, return an exit code (0 ok,
    1 error with a message, 2 bad arguments)."""
    from rich.console import Console

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0)
    command = " ".join([prog, *map(shlex.quote, argv)])
    err = Console(stderr=True)
    try:
        settings = settings_from_args(args, command)
        results = evaluate(settings)
    except MatmtlError as exc:
        err.print(f"[red]error:[/] {exc}")
        return 1
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: finished cells are cached; run the same command again to continue")
        return 130
    Console().print(f"[green]evaluation written:[/] {', '.join(f'{args.out}/{n}.json' for n in results)}"
                    + (f" and {settings.markdown}" if settings.markdown else ""))
    return 0
