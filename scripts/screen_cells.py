"""Screen fine-tuning recipes on chosen matbench_expt_gap cells, without the full evaluation
(issue #14: screen ideas on a subset of folds, with paired differences, at a training share).

    python scripts/screen_cells.py --checkpoint RUN --folds 0,1,2,3,4 --fraction 0.05 --seeds 0,1 \\
        --recipe plain=finetune --recipe replay=finetune_anchor_replay \\
        --recipe replay_l2sp=finetune_anchor_replay:soft_share=0.01 \\
        --recipe distill=finetune_anchor_distill --pick anchored=replay,distill \\
        --reference replay --work-dir DIR --json OUT

A recipe is NAME=VARIANT[:KEY=VALUE,...]: one of the evaluation's fine-tuning variants and
settings of ``matmtl evaluate`` (EvalSettings fields, values read as JSON: soft_share,
aux_weight, aux, patience, val_fraction, gap_head, symmetry, ...). Each (recipe, seed, fold)
is one cell of the evaluation harness, run at ``--fraction`` of the training fold (the
seeded draw of ``matmtl evaluate --fractions``), cached in ``--work-dir`` and shared with
``matmtl evaluate`` runs of the same settings there: a re-run reuses finished cells. Nothing
else runs (no 100% cells, no baseline, no mp tasks).

Reported per recipe (MAE in eV, ungated model predictions): the mean over seeds of the
folds' mean test MAE and its seed spread (sd over seeds), the same for the validation MAE
(each run's own validation rows, which chose its epoch), and against the reference the
per-fold paired difference (each fold averaged over the seeds; mean +- SE over folds; within
1 SE a tie), for test and validation. The rule fixed before any result is read: a recipe is
preferred to the reference only where its validation difference is lower by more than 1 SE;
the test figures are reported, never used to choose.

``--pick NAME=A,B,...`` adds a recipe made of the given ones: per seed and fold, the cell of
A, B, ... with the lowest validation MAE (their runs share the seed's validation rows), as
``matmtl evaluate --anchor validation`` picks the anchor source. Its validation MAE is the
minimum over its candidates, which flatters it, so a picked recipe is reported (with how
often each candidate was taken) and never chosen by the rule.

``--against OTHER.json`` pairs each recipe with the same recipe (same name, variant and
settings) in another screen's results, made from another checkpoint at the same share: per
fold, the mean over the seeds of this cell minus that cell (same seed, so the same training
and validation rows), mean +- SE over the folds; written as ``vs_other_checkpoint``. It asks
whether a pretraining change transfers; that screen's folds and seeds must cover these.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_recipe(text: str) -> tuple[str, str, dict]:
    """``NAME=VARIANT[:KEY=VALUE,...]`` -> (name, variant, overrides)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(f"expected NAME=VARIANT[:KEY=VALUE,...], got {text!r}")
    variant, _, opts = rest.partition(":")
    overrides = {}
    for item in filter(None, opts.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{name}: expected KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value  # a plain string (gap_head=correction)
    return name, variant, overrides


def _ints(text: str) -> list[int]:
    try:
        out = [int(k) for k in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if len(set(out)) != len(out) or min(out) < 0:
        raise argparse.ArgumentTypeError(f"expected distinct integers >= 0, got {text!r}")
    return out


def _fraction(text: str) -> float:
    try:
        f = float(text)
    except ValueError:
        f = math.nan
    if not 0 < f <= 1:
        raise argparse.ArgumentTypeError(f"expected a share of the training fold in (0, 1], got {text!r}")
    return f


def settings_of(args, variant: str, overrides: dict, seed: int):
    """The EvalSettings of one recipe and seed (checked by EvalSettings itself)."""
    from matmtl.eval.settings import EvalSettings

    base = dict(
        variants=(variant,),
        folds=tuple(args.folds),
        fractions=(args.fraction,),
        checkpoint=args.checkpoint,
        anchor="replay",  # (no 100% replay/distill cells to choose from: the variant names its source)
        skip_baseline=True,
        skip_mp=True,
        work_dir=args.work_dir,
        out=str(Path(args.work_dir) / "screen-unused"),  # (Evaluation checks it; nothing is written there)
        seed=seed,
        data_dir=args.data_dir,
        quick=args.quick,
        progress=False,
        command="scripts/screen_cells.py",
    )
    return EvalSettings(**{**base, **overrides})


def run_cells(args, recipes: list[tuple[str, str, dict]]) -> dict:
    """Each recipe's cell records: {name: {seed: {fold: record}}} (computed or cached)."""
    from matmtl.eval.runner import Evaluation

    out: dict = {name: {} for name, _, _ in recipes}
    for seed in args.seeds:  # seed by seed: a screen cut short has every recipe on its first seeds
        for name, variant, overrides in recipes:
            s = settings_of(args, variant, overrides, seed)
            ev = Evaluation(s)
            try:
                for fold in args.folds:
                    rec = ev.finetunes.cell(s.spec(variant), fold, args.fraction)
                    print(
                        f"{name} seed {seed} fold {fold}: validation MAE {rec['validation']['mae']:.4f} eV, "
                        f"test MAE {rec['metrics']['mae']:.4f} eV ({rec['train_seconds'] or 0:.0f} s of training)",
                        flush=True,
                    )
                    out[name].setdefault(seed, {})[fold] = rec
            finally:
                ev.claims.close()
    return out


def parse_pick(text: str) -> tuple[str, list[str]]:
    """``NAME=A,B,...`` -> (name, [A, B, ...])."""
    name, sep, rest = text.partition("=")
    members = [m for m in rest.split(",") if m]
    if not sep or not name or len(members) < 2 or len(set(members)) != len(members):
        raise argparse.ArgumentTypeError(f"expected NAME=RECIPE,RECIPE[,...] (distinct recipes), got {text!r}")
    return name, members


def add_picks(cells: dict, picks: list[tuple[str, list[str]]]) -> dict:
    """Each pick as a recipe: per seed and fold, its candidates' cell with the lowest validation
    MAE (the first on a tie). Returns {name: {candidate: cells taken}}."""
    taken: dict = {}
    for name, members in picks:
        cells[name], taken[name] = {}, dict.fromkeys(members, 0)
        for seed, by_fold in cells[members[0]].items():
            for fold in by_fold:
                best = min(members, key=lambda m: cells[m][seed][fold]["validation"]["mae"])
                cells[name].setdefault(seed, {})[fold] = cells[best][seed][fold]
                taken[name][best] += 1
    return taken


def _mean_se(x) -> dict:
    x = np.asarray(x, float)
    se = float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else None
    return {"mean": float(np.mean(x)), "se": se}


def _verdict(d: dict) -> str:
    if d["se"] is None or abs(d["mean"]) <= d["se"]:
        return "tie"
    side = "lower" if d["mean"] < 0 else "higher"
    return f"{side} by {abs(d['mean']) / d['se']:.1f} SE" if d["se"] > 0 else f"{side} on every fold (no spread)"


def summarize(cells: dict, reference: str, seeds: list[int], folds: list[int], picked: dict | None = None) -> dict:
    """Per recipe: test and validation MAE (mean over seeds of the folds' mean, seed sd; and
    per seed and fold) and the per-fold paired differences against the reference; the choice
    by the rule above, among the recipes that are not ``picked`` ({name: candidates taken})."""
    picked = picked or {}

    def grid(name: str, key: str) -> np.ndarray:  # seeds x folds
        def mae(rec: dict) -> float:
            return rec["metrics"]["mae"] if key == "test" else rec["validation"]["mae"]

        return np.array([[mae(cells[name][s][k]) for k in folds] for s in seeds])

    out: dict = {"reference": reference, "recipes": {}}
    for name in cells:
        res = out["recipes"][name] = {}
        for key in ("test", "validation"):
            g = grid(name, key)
            per_seed = g.mean(1)
            res[key] = {
                "mae_mean": float(per_seed.mean()),
                "seed_sd": float(per_seed.std(ddof=1)) if len(seeds) > 1 else None,
                "per_seed": per_seed.tolist(),
                "per_fold": g.mean(0).tolist(),
                "per_seed_and_fold": g.tolist(),
            }
            if name != reference:
                d = _mean_se(g.mean(0) - grid(reference, key).mean(0))
                res[key]["minus_reference"] = {**d, "verdict": _verdict(d)}
        res["best_epoch_mean"] = float(np.mean([cells[name][s][k]["best_epoch"] for s in seeds for k in folds]))
        res["train_seconds"] = float(sum(cells[name][s][k]["train_seconds"] or 0 for s in seeds for k in folds))
        if name in picked:
            res["picked"] = picked[name]
            res["train_seconds"] = None  # (its candidates' time)
    better = [
        n
        for n, r in out["recipes"].items()
        if n != reference and n not in picked and r["validation"]["minus_reference"]["verdict"].startswith("lower")
    ]
    best = min(better, key=lambda n: out["recipes"][n]["validation"]["mae_mean"]) if better else reference
    out["choice"] = {
        "rule": "lowest validation MAE among the recipes lower than the reference by more than 1 SE "
        "(per-fold paired, validation rows; a picked recipe is never chosen); else the reference",
        "chosen": best,
    }
    return out


def read_against(path: str, args) -> dict:
    """Another screen's results (``--against``), checked to cover this screen's cells."""
    try:
        other = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if not isinstance(other, dict) or not {"recipes", "fraction", "folds", "seeds"} <= set(other):
        raise ValueError(f"{path} is not a screen_cells result (no recipes, fraction, folds, seeds)")
    if other["fraction"] != args.fraction:
        raise ValueError(f"{path} is a screen at fraction {other['fraction']}, this one at {args.fraction}")
    for key in ("folds", "seeds"):
        if missing := sorted(set(getattr(args, key)) - set(other[key])):
            raise ValueError(f"{path} has no cells for {key} {missing} (it has {other[key]})")
    return other


def vs_other(res: dict, other: dict, source: str, seeds: list[int], folds: list[int]) -> dict:
    """Each recipe minus the same recipe in ``other`` (another checkpoint's screen), per fold
    averaged over the seeds, mean +- SE over the folds; recipes it lacks, or has with other
    settings, are listed as not paired."""

    def settings(r: dict, name: str):  # a recipe's variant and settings, or a pick's candidates
        return (r.get("recipes_given") or {}).get(name) or (r.get("picks_given") or {}).get(name)

    si = [other["seeds"].index(s) for s in seeds]
    fi = [other["folds"].index(k) for k in folds]
    out: dict = {
        "other": source,
        "other_checkpoint": other.get("checkpoint"),
        "how": "per fold, the mean over seeds of (this cell - the other screen's cell of the same recipe, "
        "seed and fold); mean and SE over the folds; MAE in eV",
        "recipes": {},
        "not_paired": {},
    }
    for name, r in res["recipes"].items():
        if name not in other["recipes"]:
            out["not_paired"][name] = "not in the other screen"
            continue
        if settings(res, name) != settings(other, name):
            out["not_paired"][name] = f"other settings there: {settings(other, name)} vs {settings(res, name)}"
            continue
        row = out["recipes"][name] = {}
        for key in ("test", "validation"):
            a = np.asarray(r[key]["per_seed_and_fold"])
            b = np.asarray(other["recipes"][name][key]["per_seed_and_fold"])[np.ix_(si, fi)]
            d = _mean_se((a - b).mean(0))
            row[key] = {"this": float(a.mean()), "other": float(b.mean()), **d, "verdict": _verdict(d)}
    return out


def _fmt(d: dict | None) -> str:
    if d is None:
        return ""
    se = "n/a" if d["se"] is None else f"{d['se']:.4f}"
    return f"{d['mean']:+.4f} +- {se} ({d['verdict']})"


def _reference(p: argparse.ArgumentParser, args) -> str:
    """The reference recipe's name, once the recipe and pick names are checked."""
    names = [r[0] for r in args.recipe]
    if len(set(names)) != len(names):
        p.error(f"--recipe: each name once, got {names}")
    for name, members in args.pick:
        if name in names:
            p.error(f"--pick {name}: the name is taken ({', '.join(names)})")
        if unknown := [m for m in members if m not in names[: len(args.recipe)]]:
            p.error(f"--pick {name}: not a --recipe: {', '.join(unknown)}")
        names.append(name)
    reference = args.reference or names[0]
    if reference not in names:
        p.error(f"--reference: {reference!r} is not a recipe ({', '.join(names)})")
    return reference


def report(res: dict, against: str | None) -> None:
    """The results, a line per recipe (and per pairing with --against)."""
    for name, r in res["recipes"].items():
        t, v = r["test"], r["validation"]
        print(
            f"{name}: test {t['mae_mean']:.4f} (seed sd {t['seed_sd'] or 0:.4f}) {_fmt(t.get('minus_reference'))}"
            f" | validation {v['mae_mean']:.4f} {_fmt(v.get('minus_reference'))}"
            + (f" | picked {r['picked']}" if "picked" in r else "")
        )
    print(f"chosen on validation rows: {res['choice']['chosen']}")
    for name, r in (res.get("vs_other_checkpoint") or {}).get("recipes", {}).items():
        print(f"{name} vs {against}: test {_fmt(r['test'])} | validation {_fmt(r['validation'])}")
    for name, why in (res.get("vs_other_checkpoint") or {}).get("not_paired", {}).items():
        print(f"{name}: not paired with {against} ({why})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="the pretraining run to fine-tune")
    p.add_argument("--folds", type=_ints, default=[0, 1, 2, 3, 4], help="matbench expt_gap folds, e.g. 0,1")
    p.add_argument("--seeds", type=_ints, default=[0], help="fine-tuning seeds, e.g. 0,1,2")
    p.add_argument("--fraction", type=_fraction, default=1.0, help="share of each training fold (default 1)")
    p.add_argument("--recipe", type=parse_recipe, action="append", required=True, help="NAME=VARIANT[:K=V,...]")
    p.add_argument(
        "--pick",
        type=parse_pick,
        action="append",
        default=[],
        help="NAME=A,B: per seed and fold, the recipe with the lower validation MAE",
    )
    p.add_argument("--reference", help="the recipe the others are paired against (default: the first)")
    p.add_argument("--work-dir", required=True, help="the cells' cache (shared with matmtl evaluate --work-dir)")
    p.add_argument("--json", help="write the results here")
    p.add_argument(
        "--against", help="another screen's --json (another checkpoint, same share): pair each recipe with it"
    )
    p.add_argument("--data-dir", default=None)
    p.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)  # tests: the harness's quick settings
    args = p.parse_args(argv)
    reference = _reference(p, args)
    if not Path(args.checkpoint).is_dir():
        p.error(f"--checkpoint: no run folder at {args.checkpoint}")
    try:  # checked before any cell runs
        other = read_against(args.against, args) if args.against else None
    except ValueError as exc:
        p.error(f"--against: {exc}")
    from matmtl.errors import MatmtlError
    from matmtl.eval.settings import NEURAL_VARIANTS
    from matmtl.io import atomic_write_json

    for name, variant, overrides in args.recipe:
        if variant not in NEURAL_VARIANTS or variant == "finetune_anchor_pcgrad":
            p.error(f"--recipe {name}: unknown fine-tuning variant {variant!r}")
        try:
            s = settings_of(args, variant, overrides, args.seeds[0])
        except (MatmtlError, TypeError) as exc:
            p.error(f"--recipe {name}: {exc}")
        if not s.val_fraction > 0:  # the screen compares and chooses on validation rows
            p.error(f"--recipe {name}: val_fraction must be > 0 (a screen chooses on validation rows), got 0")
    try:
        cells = run_cells(args, args.recipe)
    except MatmtlError as exc:
        print(f"screen_cells: {exc}", file=sys.stderr)
        return 1
    picked = add_picks(cells, args.pick)
    res = summarize(cells, reference, args.seeds, args.folds, picked)
    res.update(
        task="matbench_expt_gap",
        unit="eV",
        fraction=args.fraction,
        folds=args.folds,
        seeds=args.seeds,
        checkpoint=str(args.checkpoint),
        recipes_given={n: {"variant": v, "settings": o} for n, v, o in args.recipe},
        picks_given={n: m for n, m in args.pick},
        command="python scripts/screen_cells.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        about=__doc__,
    )
    if other is not None:
        res["vs_other_checkpoint"] = vs_other(res, other, args.against, args.seeds, args.folds)
    report(res, args.against)
    if args.json:
        atomic_write_json(Path(args.json), res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
