"""The DFT metal gate (matmtl.metal_gate) on finished matbench_expt_gap evaluations
(issue #14): does checking the metal decision against Materials Project's PBE gap lower
the test MAE, with the gate chosen on each run's validation rows?

    python scripts/metal_gate.py results results/seeds/pretrain75-s1 results/seeds/pretrain75-s2 \
        --json results/expt_gap_metal_gate.json

Each argument is the output folder of one ``matmtl evaluate`` run (one fine-tuning seed);
its expt_gap_predictions.json holds, per variant and fold, the test predictions and the
predictions on the run's validation rows. For every variant, seed and fold the gate's line
(PBE gap to experimental gap) is fitted on the fold's training rows that are not
validation rows, its mode (off / metal / both) is chosen on the validation rows, and the
test fold is then gated once. ``finetune_anchor`` is the anchored recipe with the anchor
source the evaluation chose per fold; ``finetune_anchor_mean`` averages a seed's replay and
distill models (the same validation rows), its gate chosen on the average's own
validation predictions. Reported per variant: the test MAE (eV) per seed without and with
the gate, the seed mean and spread, the validation MAE without and with the gate (the mean
over folds), the modes chosen, the fold-paired difference (each fold's difference averaged
over seeds, then mean and standard error over folds) and the row-level paired difference
per seed, and the error breakdown (scripts/error_breakdown.py) of the last seed without
(``pred``) and with (``gated``) the gate. ``--ensemble K`` also scores seed ensembles (see
:func:`seed_ensembles`). As in fine-tuning, compounds of the lanthanides Ce..Yb and
actinides Pa..No (matmtl.metal_gate.OPEN_F) have no PBE gap and pass unchanged;
``--open-f`` reads theirs too (the earlier rule). All evaluations must have the same folds
and test rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from error_breakdown import breakdown, publish  # noqa: E402

from matmtl.metal_gate import MODES, SOURCE, fit, leave_seen, seen_rows, trained_keys  # noqa: E402

PREDICTIONS = "expt_gap_predictions.json"
MEAN = "finetune_anchor_mean"


def pbe_gaps(
    data_dir: str | None = None, open_f: bool = False
) -> tuple[dict[str, int], np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """expt_gap's matbench id -> dataset position, each row's measured gap and the PBE gap
    of its composition's MP ground state (NaN where MP does not have it), all in eV, and
    each row's composition as featurized, (z, frac) (a held-out row whose composition is
    also a training row's is not gated: :func:`matmtl.metal_gate.leave_seen`)."""
    from matmtl.metal_gate import PbeGaps
    from matmtl.train.data import _load, composition_keys, to_taskdata

    ds = _load("expt_gap", data_dir)
    rows = to_taskdata(ds, np.arange(len(ds)), {"gap_expt": "gap_expt"})
    gap = PbeGaps.from_data(data_dir, open_f=open_f).lookup(
        composition_keys(rows.z, rows.frac), np.zeros(len(ds), np.int64)
    )
    ids = {str(i): k for k, i in enumerate(ds.frame["id"].astype(str))}
    return ids, rows.targets["gap_expt"].astype(float), gap, (rows.z, rows.frac)


def gate_runs(
    predictions: dict, ids: dict[str, int], target: np.ndarray, gap: np.ndarray, comp: tuple[np.ndarray, np.ndarray]
) -> dict:
    """Per variant with validation predictions, per fold: the chosen gate, its validation
    MAEs and the test predictions without and with it (``comp``: each dataset row's
    composition, (z, frac); a held-out row with a training row's composition is not gated,
    as in fine-tuning)."""
    z, frac = comp
    runs = dict(predictions["variants"])
    validation = dict(predictions.get("validation") or {})
    chosen = predictions.get("anchor_source_per_fold") or {}
    usable = {
        k: f"finetune_anchor_{src}"
        for k, src in chosen.items()
        if k in (runs.get(f"finetune_anchor_{src}") or {}) and k in (validation.get(f"finetune_anchor_{src}") or {})
    }
    if usable and len(usable) == len(chosen):
        runs["finetune_anchor"] = {k: runs[v][k] for k, v in usable.items()}
        validation["finetune_anchor"] = {k: validation[v][k] for k, v in usable.items()}
    _add_mean(runs, validation)
    out: dict = {}
    for name, per_fold in validation.items():
        for k, val in per_fold.items():
            test = np.array([ids[str(i)] for i in predictions["folds"][k]["ids"]])
            if not np.allclose(target[test], predictions["folds"][k]["target"], atol=1e-3):
                raise ValueError(f"fold {k}: the file's measured gaps are not the dataset's")
            va = np.asarray(val["rows"], dtype=int)
            if not np.allclose(target[va], val["target"], atol=1e-3):
                raise ValueError(f"{name}, fold {k}: the validation rows' gaps are not the dataset's")
            train = np.setdiff1d(np.setdiff1d(np.arange(len(target)), test), va)
            trained = trained_keys(z[train], frac[train])

            def held_out(rows: np.ndarray, trained=trained) -> np.ndarray:
                return leave_seen(gap[rows], seen_rows(z[rows], frac[rows], trained))

            gate, maes = fit(gap[train], target[train], val["pred"], val["target"], held_out(va))
            pred = np.asarray(runs[name][k], dtype=float)
            gap_test = held_out(test)
            out.setdefault(name, {})[k] = {
                "gate": gate.to_dict(),
                "validation_mae": maes,
                "validation_rows": int(va.size),
                "target": target[test],
                "pred": pred,
                "gated": gate.apply(pred, gap_test),
                "pbe_known": int(np.isfinite(gap_test).sum()),
            }
    return out


def _add_mean(runs: dict, validation: dict, sources=("finetune_anchor_replay", "finetune_anchor_distill")) -> None:
    """``finetune_anchor_mean``: a seed's replay and distill models averaged (test and
    validation predictions); the gate is then chosen on the averaged model's own
    validation predictions. Made only when both ran the same folds on the same validation
    rows (one seed), and left out otherwise."""
    if not all(s in runs and s in validation for s in sources):
        return
    a, b = (validation[s] for s in sources)
    folds = sorted(a, key=int)
    if sorted(b, key=int) != folds or any(a[k]["rows"] != b[k]["rows"] for k in folds):
        return
    if any(k not in runs[s] for s in sources for k in folds):
        return
    runs[MEAN] = {
        k: list((np.asarray(runs[sources[0]][k], float) + np.asarray(runs[sources[1]][k], float)) / 2) for k in folds
    }
    validation[MEAN] = {
        k: {**a[k], "pred": list((np.asarray(a[k]["pred"], float) + np.asarray(b[k]["pred"], float)) / 2)}
        for k in folds
    }


def summarize(per_seed: list[dict]) -> dict:
    """Per variant over the seeds: test MAE without and with the gate, the paired
    differences and the modes chosen."""
    out = {}
    for name in per_seed[0]:
        seeds = [s[name] for s in per_seed if name in s]
        plain, gated, row_diff, modes, val_off, val_gated = [], [], [], [], [], []
        fold_diff: dict[str, list[float]] = {}
        for runs in seeds:
            keys = sorted(runs, key=int)
            y = np.concatenate([runs[k]["target"] for k in keys])
            p = np.concatenate([runs[k]["pred"] for k in keys])
            g = np.concatenate([runs[k]["gated"] for k in keys])
            plain.append(float(np.abs(p - y).mean()))
            gated.append(float(np.abs(g - y).mean()))
            d = np.abs(g - y) - np.abs(p - y)
            row_diff.append(
                {"mean": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(d.size)), "rows": int(d.size)}
            )
            for k in keys:
                r = runs[k]
                fold_diff.setdefault(k, []).append(_mae(r) - _mae(r, "pred"))
                modes.append(r["gate"]["mode"])
            val_off.append(float(np.mean([runs[k]["validation_mae"]["off"] for k in keys])))
            val_gated.append(float(np.mean([runs[k]["validation_mae"][runs[k]["gate"]["mode"]] for k in keys])))
        last = seeds[-1]
        out[name] = {
            "seeds": len(seeds),
            "mae": _spread(plain),
            "mae_gated": _spread(gated),
            # the mean of the folds' validation MAEs (the gated one is what chose the mode)
            "validation_mae": _spread(val_off),
            "validation_mae_gated": _spread(val_gated),
            "fold_paired_difference": _fold_paired(fold_diff),
            "row_paired_difference_per_seed": row_diff,
            "modes_chosen": {m: modes.count(m) for m in MODES},
            "breakdown_last_seed": {
                kind: breakdown(
                    np.concatenate([last[k]["target"] for k in sorted(last, key=int)]),
                    np.concatenate([last[k][kind] for k in sorted(last, key=int)]),
                )
                for kind in ("pred", "gated")
            },
            "test_rows_with_pbe_gap": int(sum(last[k]["pbe_known"] for k in last)),
            "unit": "eV",
        }
    return out


def anchored_vs_plain(per_seed: list[dict], anchored: str = "finetune_anchor", plain: str = "finetune") -> dict | None:
    """The anchored recipe against plain fine-tuning, both gated: the fold-paired test MAE
    difference (eV; each fold's difference averaged over seeds, then mean and standard
    error over folds), over the seeds that have both; None when none has."""
    both = [s for s in per_seed if anchored in s and plain in s]
    if not both:
        return None
    diffs: dict[str, list[float]] = {}
    for s in both:
        for k in s[anchored]:
            if k in s[plain]:
                diffs.setdefault(k, []).append(_mae(s[anchored][k]) - _mae(s[plain][k]))
    return {"variants": [anchored, plain], "seeds": len(both), **_fold_paired(diffs), "unit": "eV"}


def seed_ensembles(per_seed: list[dict], size: int, reference: str = "finetune_anchor") -> dict:
    """Seed ensembles as a recipe with replicates: the seeds, in the order given, split into
    groups of ``size`` (a remainder is left out); a group's model is the average of its
    members' gated predictions (each member's gate chosen on its own validation rows, as
    the seeds hold out different rows). Per variant that every seed has: each group's test
    MAE without and with the gate (``per_group``), their mean and spread over groups, and
    two fold-paired differences of the gated ensemble (eV; each fold's difference averaged
    over groups, then mean and standard error over folds): against its members' mean gated
    MAE, and against the gated single models of ``reference`` of the same seeds (None where
    a seed lacks that reference on a fold)."""
    if size < 2:
        raise ValueError(f"a seed ensemble needs at least 2 members, got {size}")
    groups = [per_seed[i : i + size] for i in range(0, len(per_seed) - size + 1, size)]
    if not groups:
        raise ValueError(f"a seed ensemble of {size} needs at least {size} evaluations, got {len(per_seed)}")
    out: dict = {}
    for name in per_seed[0]:
        if not all(name in s for s in per_seed) or len({tuple(s[name]) for s in per_seed}) != 1:
            continue  # a variant every seed has on the same folds
        keys = sorted(per_seed[0][name], key=int)
        has_reference = all(k in (s.get(reference) or {}) for s in per_seed for k in keys)
        plain, gated = [], []
        vs_members: dict[str, list[float]] = {}
        vs_reference: dict[str, list[float]] = {}
        for group in groups:
            ens = {
                k: {kind: np.mean([s[name][k][kind] for s in group], axis=0) for kind in ("pred", "gated")}
                | {"target": group[0][name][k]["target"]}
                for k in keys
            }
            y = np.concatenate([ens[k]["target"] for k in keys])
            plain.append(float(np.abs(np.concatenate([ens[k]["pred"] for k in keys]) - y).mean()))
            gated.append(float(np.abs(np.concatenate([ens[k]["gated"] for k in keys]) - y).mean()))
            for k in keys:
                vs_members.setdefault(k, []).append(_mae(ens[k]) - np.mean([_mae(s[name][k]) for s in group]))
                if has_reference:
                    vs_reference.setdefault(k, []).append(
                        _mae(ens[k]) - np.mean([_mae(s[reference][k]) for s in group])
                    )
        out[name] = {
            "members": size,
            "groups": len(groups),
            "seeds_left_out": len(per_seed) - size * len(groups),
            "mae": _spread(plain, "per_group"),
            "mae_gated": _spread(gated, "per_group"),
            "vs_members_gated": _fold_paired(vs_members),
            f"vs_{reference}_gated": _fold_paired(vs_reference) if has_reference else None,
            "unit": "eV",
        }
    return out


def _mae(run: dict, kind: str = "gated") -> float:
    """The MAE (eV) of one run's ``kind`` predictions ("gated" or "pred") on its test rows."""
    return float(np.abs(run[kind] - run["target"]).mean())


def _fold_paired(diffs: dict[str, list[float]]) -> dict:
    """Paired differences per fold (several seeds or groups on one fold share its test
    rows, so they are averaged first): mean and standard error over folds (eV)."""
    return _paired([float(np.mean(v)) for _, v in sorted(diffs.items(), key=lambda kv: int(kv[0]))])


def _paired(diffs: list[float]) -> dict:
    """Paired differences (eV): their mean, standard error and count."""
    d = np.array(diffs, dtype=float)
    return {
        "mean": float(d.mean()),
        "se": float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else None,
        "folds": int(d.size),
    }


def ensemble_table(ensembles: dict, reference: str = "finetune_anchor") -> str:
    """The seed ensembles of one group size (:func:`seed_ensembles`) as a markdown table."""
    if not ensembles:
        return ""
    lines = [
        "| variant | seed ensemble | MAE (eV) | gated MAE (eV), mean ± std over groups "
        f"| gated, vs its members | gated, vs `{reference}` of its seeds |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in ensembles.items():
        g = e["mae_gated"]
        std = "" if g["std"] is None else f" ± {g['std']:.4f}"
        lines.append(
            f"| `{name}` | {e['groups']} x {e['members']} seeds | {e['mae']['mean']:.4f} | {g['mean']:.4f}{std} | "
            f"{_pm(e['vs_members_gated'])} | {_pm(e[f'vs_{reference}_gated']) if e[f'vs_{reference}_gated'] else '–'} |"
        )
    return "\n".join(lines)


def _pm(d: dict) -> str:
    return f"{d['mean']:+.4f}" + ("" if d["se"] is None else f" ± {d['se']:.4f}")


def _spread(values: list[float], each: str = "per_seed") -> dict:
    v = np.array(values)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else None, each: values}


def table(summary: dict) -> str:
    lines = [
        "| variant | seeds | MAE (eV) | gated MAE (eV) | fold-paired difference | modes chosen (off/metal/both) |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        modes = "/".join(str(s["modes_chosen"][m]) for m in MODES)
        lines.append(
            f"| `{name}` | {s['seeds']} | {s['mae']['mean']:.4f} | {s['mae_gated']['mean']:.4f} | "
            f"{_pm(s['fold_paired_difference'])} | {modes} |"
        )
    return "\n".join(lines)


def same_test_rows(predictions: list[dict], files: list[Path]) -> None:
    """Refuse evaluations whose folds or test rows differ from the first one's."""
    first = predictions[0]["folds"]
    for p, f in zip(predictions[1:], files[1:]):
        if sorted(p["folds"]) != sorted(first):
            raise ValueError(f"{f}: folds {sorted(p['folds'])}, but {files[0]} has {sorted(first)}")
        for k, fold in p["folds"].items():
            if fold["ids"] != first[k]["ids"]:
                raise ValueError(f"{f}: fold {k}'s test rows differ from {files[0]}'s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("evaluations", type=Path, nargs="+", help="matmtl evaluate output folders, one per seed")
    ap.add_argument("--json", type=Path, default=None, help="write the result here")
    ap.add_argument(
        "--ensemble",
        type=int,
        action="append",
        default=[],
        metavar="K",
        help="also score seed ensembles of K seeds (repeatable): the evaluations in the order given, in groups of K",
    )
    ap.add_argument(
        "--open-f",
        action="store_true",
        help="also read the PBE gaps of lanthanide (Ce..Yb) and actinide (Pa..No) compounds (the earlier rule)",
    )
    ap.add_argument("--data-dir", default=None, help="the dataset mirror (default: found as matmtl finds it)")
    args = ap.parse_args(argv)
    try:
        files = [d / PREDICTIONS if d.is_dir() else d for d in args.evaluations]
        if len({f.resolve() for f in files}) < len(files):
            raise ValueError("an evaluation is given twice (one folder per seed)")
        predictions = [json.loads(f.read_text()) for f in files]
        same_test_rows(predictions, files)
        ids, target, gap, comp = pbe_gaps(args.data_dir, open_f=args.open_f)
        per_seed = [gate_runs(p, ids, target, gap, comp) for p in predictions]
        if not per_seed[0]:
            raise ValueError("no variant has validation predictions")
        summary = summarize(per_seed)
        ensembles = {str(k): seed_ensembles(per_seed, k) for k in args.ensemble}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = {
        "about": " ".join(__doc__.split("\n\n")[2].split()),
        "sources": [str(f) for f in files],
        "command": "python " + " ".join(["scripts/metal_gate.py", *(argv if argv is not None else sys.argv[1:])]),
        "pbe_source": SOURCE,
        "open_f": args.open_f,
        "variants": summary,
        "anchored_vs_plain_gated": anchored_vs_plain(per_seed),
        "seed_ensembles": ensembles,
        "per_fold": [
            {
                name: {
                    k: {key: r[key] for key in ("gate", "validation_mae", "validation_rows")} for k, r in runs.items()
                }
                for name, runs in seed.items()
            }
            for seed in per_seed
        ],
    }
    tables = [table(summary), *(ensemble_table(e) for e in ensembles.values())]
    return publish("\n\n".join(t for t in tables if t), result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
