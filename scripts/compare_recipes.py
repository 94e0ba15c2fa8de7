"""Compare matbench_expt_gap recipes over several seeds: the mean over seeds, the seed
spread, the per-fold paired difference against a reference recipe, and the seed ensemble
(issue #14).

    python scripts/compare_recipes.py \
        static=results/static_pretraining,results/seeds/static-s1,results/seeds/static-s2 \
        uncertainty=results,results/seeds/uncertainty-s1,results/seeds/uncertainty-s2 \
        --reference static:finetune_anchor_replay \
        --json results/expt_gap_seeds.json --markdown docs/seeds.md

Each recipe is NAME=FOLDER[,FOLDER...]: the ``--out`` folders of ``matmtl evaluate`` runs
that differ only in ``--seed``; each holds expt_gap.json and expt_gap_predictions.json.
Every folder must cover the same folds with the same test rows, and the folders of one
recipe the same checkpoint and fine-tuning settings apart from the seed; the script
refuses anything else. Between recipes the checkpoint and the fine-tuning settings may
differ (that is what a comparison compares): each recipe's settings that differ from
the first recipe's are listed with it.

Per recipe and variant (units: eV):
  - the 5-fold MAE of each seed, their mean and their standard deviation (the seed spread);
  - the per-fold MAE averaged over seeds, and its paired difference against the reference
    (mean over folds +- its standard error);
  - the seed ensemble: each test row's predictions averaged over the seeds, then scored
    (one ensemble, not a mean over seeds: its spread is not measured).
``finetune_anchor`` is the anchored recipe as the evaluation defines it: per seed and fold,
the replay or distill run with the lower validation MAE (replay on a tie; the rule of
``matmtl evaluate --anchor validation``). ``finetune_anchor_mean`` averages the test
predictions of a seed's replay and distill runs (a two-member ensemble; its seed ensemble
has 2 x seeds members); its validation MAE averages their validation predictions where the
folders keep them (evaluations whose cells ran with matmtl keeping validation predictions),
and it is reported, not chosen, by the rule below. The test
folds are read only to score.

Where every folder of a recipe holds a data-efficiency curve (``matmtl evaluate
--fractions``), the curve is averaged over seeds too: per training share and variant, the
mean over seeds of the 5-fold MAE and its seed spread, and the anchored recipe's paired
differences against plain fine-tuning and against training from scratch (each fold's MAE
averaged over seeds, then mean +- SE over folds; a difference within 1 SE is a tie).
``anchor_or_plain`` takes, per seed, fold and share, the anchored run or the plain one,
whichever has the lower validation MAE (the anchor on a tie): the anchor weight (0.5 or 0)
chosen inside the training fold, as issue #14 lists among its levers.

The best recipe is chosen by a rule fixed before any result was read, on validation rows
only: among the recipes' ``finetune_anchor`` rows, the lowest validation MAE (each run's
own validation rows, averaged over folds and seeds; seed s holds out the same rows in every
recipe); the reference recipe on a tie. Test MAEs are reported, never used to choose.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SELECTED = "finetune_anchor"
AVERAGED = "finetune_anchor_mean"  # replay and distill runs of a seed, predictions averaged
# fine-tuning settings that may differ between the folders of one comparison
FREE = {"seed", "threads", "device"}


class Refused(Exception):
    """The folders cannot be compared; the message says why."""


def _train_defaults() -> dict:
    import dataclasses

    from matmtl.config import TrainConfig

    return {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}


def _read(folder: Path) -> tuple[dict, dict]:
    out = []
    for name in ("expt_gap.json", "expt_gap_predictions.json"):
        path = folder / name
        if not path.is_file():
            raise Refused(f"{folder}: no {name} (not a finished `matmtl evaluate --out` folder?)")
        out.append(json.loads(path.read_text()))
    return out[0], out[1]


class Seed:
    """One evaluation folder: its seed, per-variant fold MAEs and test predictions."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.summary, self.preds = _read(folder)
        settings = self.summary["settings"]
        self.seed = settings["eval"]["seed"]
        self.checkpoint = settings["eval"]["checkpoint"]
        # settings added after a folder was written read as their defaults (e.g. precision)
        train = {**_train_defaults(), **settings["finetune_train"]}
        self.train = {k: v for k, v in train.items() if k not in FREE}
        self.folds = [int(k) for k in self.summary["folds"]]
        self.variants = {
            name: entry for name, entry in self.summary["variants"].items() if entry.get("status") == "done"
        }
        if "finetune_anchor_replay" in self.variants and "finetune_anchor_distill" in self.variants:
            self.variants[SELECTED] = None  # made from the two below
            self.variants[AVERAGED] = None

    def chosen(self, fold: int) -> str:
        """The anchor source of a fold, chosen on its validation rows (evaluate's rule)."""
        from matmtl.eval.finetune_cells import choose_anchor

        i = self.folds.index(fold)
        runs = [
            {"validation": {"mae": self.variants[f"finetune_anchor_{s}"]["fold_validation_mae"][i]}}
            for s in ("replay", "distill")
        ]
        return choose_anchor(*runs)["chosen"]

    def predictions(self, variant: str, fold: int) -> np.ndarray:
        if variant == AVERAGED:
            return np.mean([self.predictions(f"finetune_anchor_{s}", fold) for s in ("replay", "distill")], axis=0)
        if variant == SELECTED:
            variant = f"finetune_anchor_{self.chosen(fold)}"
        return np.asarray(self.preds["variants"][variant][str(fold)], dtype=float)

    def fold_mae(self, variant: str, fold: int, key: str = "fold_mae") -> float:
        """The test MAE of a fold (``key="fold_validation_mae"``: its validation MAE)."""
        if variant == AVERAGED:  # scored from its (rounded) predictions
            if key != "fold_mae":
                return self.averaged_validation_mae(fold)
            target = np.asarray(self.preds["folds"][str(fold)]["target"], dtype=float)
            return float(np.mean(np.abs(self.predictions(variant, fold) - target)))
        if variant == SELECTED:
            variant = f"finetune_anchor_{self.chosen(fold)}"
        value = self.variants[variant].get(key)
        return float("nan") if value is None else float(value[self.folds.index(fold)])

    def averaged_validation_mae(self, fold: int) -> float:
        """The validation MAE of the replay and distill runs' averaged predictions (the same
        validation rows: one seed), or NaN where the folder has no validation predictions."""
        val = self.preds.get("validation") or {}
        runs = [(val.get(f"finetune_anchor_{s}") or {}).get(str(fold)) for s in ("replay", "distill")]
        if not all(runs) or runs[0]["rows"] != runs[1]["rows"]:
            return float("nan")
        mean = (np.asarray(runs[0]["pred"], dtype=float) + np.asarray(runs[1]["pred"], dtype=float)) / 2
        return float(np.mean(np.abs(mean - np.asarray(runs[0]["target"], dtype=float))))


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    se = float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")
    return float(np.mean(x)), se


def _differing(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def load(recipes: dict[str, list[Path]]) -> dict[str, list[Seed]]:
    seeds = {name: [Seed(f) for f in folders] for name, folders in recipes.items()}
    first = next(iter(seeds.values()))[0]
    for name, runs in seeds.items():
        numbers = [r.seed for r in runs]
        if len(set(numbers)) != len(numbers):
            raise Refused(f"recipe {name!r}: seeds {numbers} repeat (one folder per seed)")
        if len({r.checkpoint for r in runs}) != 1:
            raise Refused(f"recipe {name!r}: its folders fine-tuned different checkpoints")
        for r in runs:
            if r.folds != first.folds:
                raise Refused(f"{r.folder}: folds {r.folds}, but {first.folder} has {first.folds}")
            if r.train != runs[0].train:
                diff = _differing(r.train, runs[0].train)
                raise Refused(f"{r.folder}: fine-tuning settings {diff} differ from {runs[0].folder}'s (one recipe)")
            for k in r.folds:
                a, b = r.preds["folds"][str(k)], first.preds["folds"][str(k)]
                if a["ids"] != b["ids"] or a["target"] != b["target"]:
                    raise Refused(f"{r.folder}: fold {k}'s test rows differ from {first.folder}'s")
    return seeds


def row(runs: list[Seed], variant: str) -> dict:
    folds = runs[0].folds
    per = np.array([[r.fold_mae(variant, k) for k in folds] for r in runs])  # (seeds, folds)
    seed_mae = per.mean(axis=1)
    ens = []
    for k in folds:
        target = np.asarray(runs[0].preds["folds"][str(k)]["target"], dtype=float)
        mean_pred = np.mean([r.predictions(variant, k) for r in runs], axis=0)
        ens.append(float(np.mean(np.abs(mean_pred - target))))
    val = float(np.mean([[r.fold_mae(variant, k, "fold_validation_mae") for k in folds] for r in runs]))
    out = {
        "seeds": [r.seed for r in runs],
        "seed_mae": seed_mae.tolist(),
        "mae_mean": float(seed_mae.mean()),
        "seed_std": float(np.std(seed_mae, ddof=1)) if len(runs) > 1 else None,
        "fold_mae": per.mean(axis=0).tolist(),
        "fold_std": float(np.std(per.mean(axis=0), ddof=1)),
        "ensemble_fold_mae": ens,
        "ensemble_mae": float(np.mean(ens)),
        "validation_mae_mean": None if math.isnan(val) else val,
    }
    if variant == SELECTED:
        out["anchor_source"] = {str(r.seed): {str(k): r.chosen(k) for k in folds} for r in runs}
    return out


# on the curve: the anchored run or the plain one, per seed, fold and share, whichever has the
# lower validation MAE (the anchor on a tie): the anchor's weight (0.5 or 0) chosen inside the
# training fold
EITHER = "anchor_or_plain"
CURVE_PAIRS = ((SELECTED, "finetune"), (SELECTED, "scratch"), (EITHER, "finetune"), (EITHER, "scratch"))


def verdict(mean: float, se: float) -> str:
    """'tie' within 1 SE; else which side is lower, and by how many SE."""
    if not se or math.isnan(se) or abs(mean) < se:
        return "tie"
    return f"{'lower' if mean < 0 else 'higher'} by {abs(mean) / se:.1f} SE"


def curve(runs: list[Seed]) -> dict | None:
    """The data-efficiency curve over seeds, or None when a folder has none."""
    curves = [r.summary.get("data_efficiency") for r in runs]
    if not all(c and c.get("variants") for c in curves):
        return None
    folds = curves[0]["folds"]
    if any(c["folds"] != folds for c in curves):
        raise Refused("the data-efficiency curves of one recipe cover different folds")
    fractions = [f for f in curves[0]["fractions"] if all(f in c["fractions"] for c in curves)]
    out = {"folds": folds, "fractions": fractions, "rows": {}}
    for f in fractions:
        key = frac_key(f)
        per, val = {}, {}  # variant -> (seeds, folds) test and validation MAEs
        for v in curves[0]["variants"]:
            entries = [c["variants"].get(v, {}).get(key) for c in curves]
            if all(e and e.get("complete") for e in entries):
                per[v] = np.array([e["fold_mae"] for e in entries], dtype=float)
                if all(e.get("fold_validation_mae") and None not in e["fold_validation_mae"] for e in entries):
                    val[v] = np.array([e["fold_validation_mae"] for e in entries], dtype=float)
        anchor_chosen = None
        if SELECTED in val and "finetune" in val:
            anchor_chosen = val[SELECTED] <= val["finetune"]
            per[EITHER] = np.where(anchor_chosen, per[SELECTED], per["finetune"])
        rows = {}
        for v, m in per.items():
            seed_mae = m.mean(axis=1)
            rows[v] = {
                "seed_mae": seed_mae.tolist(),
                "mae_mean": float(seed_mae.mean()),
                "seed_std": float(np.std(seed_mae, ddof=1)) if len(runs) > 1 else None,
                "fold_mae": m.mean(axis=0).tolist(),
            }
        pairs = {}
        for a, b in CURVE_PAIRS:
            if a in per and b in per:
                d, se = _mean_se(per[a].mean(axis=0) - per[b].mean(axis=0))
                pairs[f"{a} - {b}"] = {"mean": d, "se": se, "verdict": verdict(d, se)}
        out["rows"][key] = {"variants": rows, "paired": pairs}
        if anchor_chosen is not None:
            out["rows"][key]["anchor_chosen_share"] = float(anchor_chosen.mean())
    return out


def frac_key(fraction: float) -> str:
    """The key evaluate gives a share in its data-efficiency record (1.0 -> '1')."""
    from matmtl.eval.cells import frac_label

    return frac_label(fraction)


def compare(seeds: dict[str, list[Seed]], reference: tuple[str, str]) -> dict:
    rows = {}
    for name, runs in seeds.items():
        common = [v for v in runs[0].variants if all(v in r.variants for r in runs)]
        rows[name] = {v: row(runs, v) for v in common}
    ref_name, ref_variant = reference
    if ref_variant not in rows.get(ref_name, {}):
        raise Refused(f"reference {ref_name}:{ref_variant} was not run in every folder of {ref_name!r}")
    ref = np.array(rows[ref_name][ref_variant]["fold_mae"])
    ref_ens = np.array(rows[ref_name][ref_variant]["ensemble_fold_mae"])
    for variants in rows.values():
        for entry in variants.values():
            d, se = _mean_se(np.array(entry["fold_mae"]) - ref)
            e, ese = _mean_se(np.array(entry["ensemble_fold_mae"]) - ref_ens)
            entry["paired_vs_reference"] = {"mean": d, "se": se}
            entry["ensemble_paired_vs_reference_ensemble"] = {"mean": e, "se": ese}
    first = next(iter(seeds.values()))[0]
    return {
        "choice": choose(rows, ref_name),
        "task": "matbench_expt_gap",
        "unit": "eV",
        "folds": first.folds,
        "reference": f"{ref_name}:{ref_variant}",
        "about": __doc__.split("\n\n", 2)[2].strip(),
        "recipes": {
            name: {
                "checkpoint": runs[0].checkpoint,
                "folders": [str(r.folder) for r in runs],
                "commands": [r.summary.get("command") for r in runs],
                "variants": rows[name],
                "data_efficiency": curve(runs),
                "finetune_train_differs": {k: runs[0].train.get(k) for k in _differing(runs[0].train, first.train)},
            }
            for name, runs in seeds.items()
        },
        "finetune_train": {k: v for k, v in first.train.items()},
    }


def choose(rows: dict[str, dict], reference: str) -> dict:
    """The best recipe by the validation rule of the module docstring."""
    val = {name: v[SELECTED]["validation_mae_mean"] for name, v in rows.items() if SELECTED in v}
    val = {name: m for name, m in val.items() if m is not None}
    if not val:
        return {"rule": "validation", "chosen": None, "why": f"no recipe has a {SELECTED} row"}
    best = min(val.values())
    chosen = reference if val.get(reference) == best else min(val, key=val.get)
    return {"rule": "validation", "variant": SELECTED, "validation_mae": val, "chosen": chosen}


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def _pm(mean: float, se: float | None) -> str:
    if se is None or (isinstance(se, float) and math.isnan(se)):
        return f"{mean:+.4f}"
    return f"{mean:+.4f} ± {se:.4f}"


def markdown(result: dict) -> str:
    lines = [
        "| recipe | variant | MAE, mean of seeds (eV) | seed spread (std) | per-seed MAE | "
        f"paired vs {result['reference']} (± SE over folds) | seed ensemble (eV) | validation MAE (eV) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rec in result["recipes"].items():
        for variant, e in rec["variants"].items():
            spread = "–" if e["seed_std"] is None else f"{e['seed_std']:.4f}"
            seeds = ", ".join(f"{m:.4f}" for m in e["seed_mae"])
            lines.append(
                f"| {name} | {variant} | {e['mae_mean']:.4f} | {spread} | {seeds} | "
                f"{_pm(**e['paired_vs_reference'])} | {e['ensemble_mae']:.4f} | {_num(e['validation_mae_mean'])} |"
            )
    choice = result["choice"]
    if choice.get("chosen"):
        lines += ["", f"Chosen on validation rows ({SELECTED}, lowest validation MAE): **{choice['chosen']}**."]
    return "\n".join(lines) + "\n"


def page(result: dict, command: str, notes: list[str] = ()) -> str:
    """The markdown page: the table, the per-fold MAEs and where every number comes from."""
    out = [
        "# matbench_expt_gap over several seeds",
        "",
        "<!-- Generated by scripts/compare_recipes.py from `matmtl evaluate` results folders. "
        "Do not edit by hand: re-run the command below. -->",
        "",
        "MAE in eV on the 5 official matbench folds, each fold's test rows predicted once.",
        "",
        markdown(result),
        "Per fold (mean over seeds, eV):",
        "",
        "| recipe | variant | " + " | ".join(f"fold {k}" for k in result["folds"]) + " |",
        "|---|---|" + "---|" * len(result["folds"]),
    ]
    for name, rec in result["recipes"].items():
        for variant, e in rec["variants"].items():
            out.append(f"| {name} | {variant} | " + " | ".join(f"{m:.4f}" for m in e["fold_mae"]) + " |")
    for name, rec in result["recipes"].items():
        if rec.get("data_efficiency"):
            out += ["", *curve_markdown(name, rec["data_efficiency"], len(rec["folders"]))]
    out += ["", result["about"], "", "Folders and the commands that made them:", ""]
    for name, rec in result["recipes"].items():
        out.append(f"- **{name}** (checkpoint `{rec['checkpoint']}`):")
        out += [f"  - `{c}`" for c in rec["commands"]]
    out += [""] + [f"{n}\n" for n in notes]
    out += [f"This page: `{command}`", ""]
    return "\n".join(out)


def curve_markdown(name: str, c: dict, n_seeds: int) -> list[str]:
    lines = [
        f"Data efficiency, recipe **{name}** ({n_seeds} seeds, folds {', '.join(map(str, c['folds']))}; "
        "MAE in eV, mean of seeds ± seed std; paired differences: mean ± SE over folds, each fold "
        f"averaged over seeds; `{EITHER}`: the anchored or the plain run, whichever has the lower "
        "validation MAE, with the share of (seed, fold) cells where that was the anchored one):",
        "",
        "| share of training rows | variant | MAE (eV) | per-seed MAE | minus finetune | minus scratch |",
        "|---|---|---|---|---|---|",
    ]
    for key, r in c["rows"].items():
        for v, e in r["variants"].items():
            spread = "" if e["seed_std"] is None else f" ± {e['seed_std']:.4f}"
            cells = []
            for other in ("finetune", "scratch"):
                d = r["paired"].get(f"{v} - {other}")
                cells.append(f"{_pm(d['mean'], d['se'])}, {d['verdict']}" if d else "")
            label = v if v != EITHER else f"{v} (anchor in {r['anchor_chosen_share']:.0%})"
            seeds = ", ".join(f"{m:.4f}" for m in e["seed_mae"])
            lines.append(
                f"| {float(key):.0%} | {label} | {e['mae_mean']:.4f}{spread} | {seeds} | " + " | ".join(cells) + " |"
            )
    return lines


def parse_recipe(text: str) -> tuple[str, list[Path]]:
    name, sep, folders = text.partition("=")
    if not sep or not name or not folders:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=FOLDER[,FOLDER...]")
    return name, [Path(f) for f in folders.split(",") if f]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipes", nargs="+", type=parse_recipe, metavar="NAME=FOLDER[,FOLDER...]")
    ap.add_argument("--reference", default=None, help="RECIPE:VARIANT (default: the first recipe's replay anchor)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    ap.add_argument("--note", action="append", default=[], help="A paragraph added to the page (repeatable).")
    args = ap.parse_args(argv)
    recipes = dict(args.recipes)
    if len(recipes) != len(args.recipes):
        ap.error("a recipe name is given twice")
    reference = args.reference or f"{args.recipes[0][0]}:finetune_anchor_replay"
    ref_name, sep, ref_variant = reference.partition(":")
    if not sep:
        ap.error(f"--reference {reference!r}: expected RECIPE:VARIANT")
    try:
        result = compare(load(recipes), (ref_name, ref_variant))
    except (Refused, OSError, KeyError, ValueError) as err:
        print(f"compare_recipes: {err}", file=sys.stderr)
        return 2
    table = markdown(result)
    print(table, end="")
    from matmtl.io import atomic_write, atomic_write_json

    if args.json:
        atomic_write_json(args.json, result)
    if args.markdown:
        cmd = "python scripts/compare_recipes.py " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
        )
        text = page(result, cmd, args.note)
        atomic_write(args.markdown, lambda tmp: tmp.write_text(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
