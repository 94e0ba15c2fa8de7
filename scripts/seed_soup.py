"""Weight soup of fine-tuning seeds (issue #14, "seed or snapshot ensembles" that ship as
one model): per matbench expt_gap fold, M fine-tunings of one pretrained checkpoint that
differ only in their training seed and share their validation rows
(``TrainConfig.split_seed``), then the uniform average of their weights (one model of
the same size; its metal cut chosen on the shared validation rows).

    python scripts/seed_soup.py --checkpoint RUN --folds 0,1,2,3,4 --members 3 --group 0 \\
        --aux-source replay,distill --work DIR --json results/screening/seed_soup.json

Member i trains with seed ``group + 100 * i`` and split seed ``group``, so member 0 is the
evaluation's fine-tuning of seed ``group``. Scored per fold, on the shared validation
rows and on the test fold (predicted once; nothing is fitted on it): each member alone,
the ensemble of the members' predictions (M models) and the soup (one model). Test-row
paired differences are mean +- SE over the fold's rows; over folds, mean +- SE of the
per-fold differences. MAE in eV. Members are run folders under ``--work`` and are reused
when they exist, so an interrupted screen resumes. Ungated: the DFT metal gate is not
applied (scripts/metal_gate.py gates evaluation folders).

With two anchor sources (``--aux-source replay,distill``) each is reported, and so is
the anchored recipe as the evaluation defines it: per fold, the source with the lower
validation MAE, chosen separately for member 0, the ensemble and the soup (replay on a
tie). Members of source S are under ``--work``/S.

Several groups (split seeds) are brought together from their JSON files, per source and
for the ungated and the gated figures: each group's mean over folds, their mean and
standard deviation over groups, and the soup's paired differences over all (group, fold)
cells, mean +- SE:

    python scripts/seed_soup.py --combine G0.json G1.json G2.json --json OUT.json
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def member_seeds(group: int, members: int) -> list[int]:
    return [group + 100 * i for i in range(members)]


def _config(args, fold: int, seed: int):
    from matmtl.config import FinetuneConfig, TrainConfig

    preset = "finetune-tiny" if args.tiny else "finetune"
    train = TrainConfig.preset(preset, seed=seed, split_seed=args.group)
    return FinetuneConfig(
        checkpoint=str(args.checkpoint),
        dataset="expt_gap",
        aux=("e_form",),
        aux_source=args.aux_source,
        holdout_fold=fold,
        max_train_rows=args.max_train_rows,
        symmetry="mp_ground_state",
        metal_gate="none",
        data_dir=args.data_dir,
        train=train,
    )


def _member(args, fold: int, seed: int) -> Path:
    from matmtl.train import finetune

    out = Path(args.work) / args.aux_source / f"fold{fold}" / f"seed{seed}"
    if not (out / "model.safetensors").is_file():
        if out.exists():  # an interrupted member: trained again from nothing
            import shutil

            shutil.rmtree(out)
        finetune(_config(args, fold, seed), out, progress=False)
    return out


def _soup(paths: list[Path]):
    import copy

    from matmtl.checkpoints import load_checkpoint
    from matmtl.train.selection import load_weights, mean_weights

    models = [load_checkpoint(p)[0] for p in paths]
    soup = copy.deepcopy(models[0])
    load_weights(soup, mean_weights([m.state_dict() for m in models]))
    return models, soup


def _pred(model, d) -> np.ndarray:
    from matmtl.train.finetuning import MAIN_TASK

    return model.predict_arrays(d.z, d.frac, d.spg, [MAIN_TASK])[MAIN_TASK].mean(1)


def _paired(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean of the paired differences a - b and its SE (None from a single pair: no spread)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else None
    return {"mean": float(d.mean()), "se": se}


def _diffs(d: dict[str, dict]) -> str:
    """``name +m +- se`` for each ``soup_minus_name`` entry (``se n/a`` from a single pair)."""
    return ", ".join(
        f"{k.removeprefix('soup_minus_')} {v['mean']:+.4f} +- " + ("n/a" if v["se"] is None else f"{v['se']:.4f}")
        for k, v in d.items()
    )


def _block(yv, yt, val: list, test: list, soup_v, soup_t) -> dict:
    """MAEs of the members, their ensemble (mean prediction) and the soup, on the
    validation and the test rows, and the soup's test-row paired differences."""
    ens_v, ens_t = np.mean(val, 0), np.mean(test, 0)
    err_t = {"member_0": np.abs(test[0] - yt), "ensemble": np.abs(ens_t - yt), "soup": np.abs(soup_t - yt)}
    return {
        "validation_mae": {
            "members": [float(np.abs(v - yv).mean()) for v in val],
            "ensemble": float(np.abs(ens_v - yv).mean()),
            "soup": float(np.abs(soup_v - yv).mean()),
        },
        "test_mae": {
            "members": [float(np.abs(t - yt).mean()) for t in test],
            "ensemble": float(err_t["ensemble"].mean()),
            "soup": float(err_t["soup"].mean()),
        },
        "test_paired": {
            "soup_minus_member_0": _paired(err_t["soup"], err_t["member_0"]),
            "soup_minus_ensemble": _paired(err_t["soup"], err_t["ensemble"]),
        },
        "_test_errors": {k: v.tolist() for k, v in err_t.items()},  # (for the anchored choice; not written)
    }


def score_fold(args, fold: int) -> dict:
    """One fold: its members (trained or reused), their soup, and both scored ungated
    (``plain``) and with the DFT metal gate (``gated``: each model's own gate, its line fitted
    on the training rows and its mode chosen on the validation rows, as fine-tuning does;
    the ensemble averages the gated members)."""
    from matmtl.metal_gate import PbeGaps
    from matmtl.metal_gate import fit as fit_gate
    from matmtl.train.finetuning import MAIN_TASK, gate_lookup, load_table, split_table
    from matmtl.train.report import choose_metal_cut

    paths = [_member(args, fold, s) for s in member_seeds(args.group, args.members)]
    config = _config(args, fold, args.group)
    _, tr, va, te = split_table(load_table(config), config, config.train)
    models, soup = _soup(paths)
    soup.tasks[MAIN_TASK].metal_cut = choose_metal_cut(soup, va, MAIN_TASK)
    yv, yt = va.targets[MAIN_TASK], te.targets[MAIN_TASK]
    val = [_pred(m, va) for m in models]  # each member's metal cut: chosen on these same rows
    test = [_pred(m, te) for m in models]
    soup_v, soup_t = _pred(soup, va), _pred(soup, te)
    pbe = gate_lookup(PbeGaps.from_data(args.data_dir), tr)
    tr_pbe, va_pbe, te_pbe = pbe(tr, held_out=False), pbe(va), pbe(te)
    modes = []

    def gated(v, t):
        gate, _ = fit_gate(tr_pbe, tr.targets[MAIN_TASK], v, yv, va_pbe)
        modes.append(gate.mode)
        return gate.apply(v, va_pbe), gate.apply(t, te_pbe)

    g_members = [gated(v, t) for v, t in zip(val, test)]
    g_soup = gated(soup_v, soup_t)
    return {
        "fold": fold,
        "validation_rows": int(len(va)),
        "test_rows": int(len(te)),
        "members": [str(p) for p in paths],
        "seeds": member_seeds(args.group, args.members),
        "soup_metal_cut": float(soup.tasks[MAIN_TASK].metal_cut),
        "gate_modes": {"members": modes[:-1], "soup": modes[-1]},
        "plain": _block(yv, yt, val, test, soup_v, soup_t),
        "gated": _block(yv, yt, [g[0] for g in g_members], [g[1] for g in g_members], *g_soup),
    }


def anchored(by_source: dict[str, list[dict]]) -> list[dict]:
    """Per fold, each of member 0, the ensemble and the soup takes the anchor source whose
    ungated validation MAE is lower (the first source on a tie; the evaluation's rule,
    the gate applied after), and brings that source's figures, ungated and gated."""
    sources = list(by_source)
    out = []
    for i, first in enumerate(by_source[sources[0]]):
        folds = {s: by_source[s][i] for s in sources}
        row = {"fold": first["fold"], "chosen": {}}
        for who in ("member_0", "ensemble", "soup"):

            def val(f, who=who):
                v = f["plain"]["validation_mae"]
                return v["members"][0] if who == "member_0" else v[who]

            row["chosen"][who] = min(sources, key=lambda s: (val(folds[s]), sources.index(s)))
        for kind in ("plain", "gated"):
            block = {"validation_mae": {}, "test_mae": {}, "_test_errors": {}}
            for who, src in row["chosen"].items():
                b = folds[src][kind]
                for key in ("validation_mae", "test_mae"):
                    block[key][who] = b[key]["members"][0] if who == "member_0" else b[key][who]
                block["_test_errors"][who] = b["_test_errors"][who]
            err = {k: np.asarray(v) for k, v in block["_test_errors"].items()}
            block["test_paired"] = {
                "soup_minus_member_0": _paired(err["soup"], err["member_0"]),
                "soup_minus_ensemble": _paired(err["soup"], err["ensemble"]),
            }
            row[kind] = block
        out.append(row)
    return out


def _who(f: dict, key: str) -> dict[str, float]:
    """member_0 / member_mean (where the fold lists its members) / ensemble / soup."""
    d = f[key]
    out = {"member_0": d["members"][0], "member_mean": float(np.mean(d["members"]))} if "members" in d else dict(d)
    out.update({"ensemble": d["ensemble"], "soup": d["soup"]})
    return out


def summarize(folds: list[dict]) -> dict:
    """Mean over folds of each model's MAE, and the soup's per-fold paired differences."""
    keys = ("validation_mae", "test_mae")
    rows = {key: [_who(f, key) for f in folds] for key in keys}
    names = list(rows["test_mae"][0])
    return {
        "mean_over_folds": {key: {n: float(np.mean([r[n] for r in rows[key]])) for n in names} for key in keys},
        "paired_over_folds": {
            key: {
                f"soup_minus_{n}": _paired([r["soup"] for r in rows[key]], [r[n] for r in rows[key]])
                for n in names
                if n != "soup"
            }
            for key in keys
        },
    }


def report(blocks: dict[str, list[dict]]) -> dict:
    """Per source (and the anchored choice): the folds' records, and for the ungated and the
    gated figures their means and the soup's paired differences over folds; printed too."""
    out = {}
    for name, per_fold in blocks.items():
        out[name] = {"folds": [_public(f) for f in per_fold]}
        for kind in ("plain", "gated"):
            rows = [f[kind] for f in per_fold]
            out[name][kind] = summarize(rows)
            for f, r in zip(per_fold, rows):
                t, v = _who(r, "test_mae"), _who(r, "validation_mae")
                print(f"{name} {kind} fold {f['fold']}: validation " + _line(v) + " | test " + _line(t))
            m = out[name][kind]["mean_over_folds"]
            for key in ("validation_mae", "test_mae"):
                print(f"{name} {kind} {key} (mean over folds): " + _line(m[key]))
            d = out[name][kind]["paired_over_folds"]["test_mae"]
            print(f"{name} {kind} test, soup minus: {_diffs(d)}")
    return out


def combine(runs: list[dict], folds: list[int] | None = None) -> dict:
    """Groups' results (``main``'s JSON, one per group) brought together per source and
    kind; a source is combined over the groups that have it. The groups must share the
    members per soup and the folds, and differ in their group. Each group's checkpoint is
    recorded (its path, and its weights' sha256 where the group has it): the soup is paired
    with its own members, so groups may come from re-runs of one pretraining recipe, and
    ``checkpoints`` shows whether they did. ``folds``: only these folds (each group must
    have them); the means are taken over the kept folds' records."""
    first = runs[0]
    for r in runs[1:]:
        if r["members"] != first["members"]:
            raise ValueError(
                f"groups {first['group']} and {r['group']} differ in members: {first['members']} vs {r['members']}"
            )
    groups = [r["group"] for r in runs]
    if len(set(groups)) != len(groups):
        raise ValueError(f"a group is given twice: {groups}")
    out = {
        "checkpoints": {str(r["group"]): {"path": r["checkpoint"], "sha256": r.get("checkpoint_sha256")} for r in runs},
        "sources": {},
    }
    for src in dict.fromkeys(s for r in runs for s in r["sources"]):
        have = [r for r in runs if src in r["sources"]]
        records = [_kept_folds(r, src, folds) for r in have]
        given = [[f["fold"] for f in rec] for rec in records]
        if any(f != given[0] for f in given):
            raise ValueError(f"{src}: the groups have different folds: {given} (choose common ones with --folds)")
        out["sources"][src] = res = {"groups": [r["group"] for r in have], "folds": given[0]}
        for kind in ("plain", "gated"):
            by_group = [[_who(f[kind], "test_mae") for f in rec] for rec in records]
            names = list(by_group[0][0])
            per_group = [{n: float(np.mean([c[n] for c in g])) for n in names} for g in by_group]
            cells = [c for g in by_group for c in g]
            res[kind] = {
                "test_mae_per_group": per_group,
                "test_mae_mean_over_groups": {n: float(np.mean([g[n] for g in per_group])) for n in names},
                "test_mae_std_over_groups": {
                    n: float(np.std([g[n] for g in per_group], ddof=1)) if len(have) > 1 else None for n in names
                },
                "paired_over_cells": {
                    f"soup_minus_{n}": _paired([c["soup"] for c in cells], [c[n] for c in cells])
                    for n in names
                    if n != "soup"
                },
                "cells": len(cells),
            }
            m, sd = res[kind]["test_mae_mean_over_groups"], res[kind]["test_mae_std_over_groups"]
            line = ", ".join(f"{n} {m[n]:.4f}" + ("" if sd[n] is None else f" (sd {sd[n]:.4f})") for n in names)
            d = res[kind]["paired_over_cells"]
            print(f"{src} {kind} test, groups {res['groups']}: {line}")
            print(f"{src} {kind} test, soup minus ({len(cells)} cells): {_diffs(d)}")
    return out


def _kept_folds(run: dict, src: str, folds: list[int] | None) -> list[dict]:
    records = run["sources"][src]["folds"]
    if folds is None:
        return records
    have = {f["fold"]: f for f in records}
    missing = [k for k in folds if k not in have]
    if missing:
        raise ValueError(f"group {run['group']}, {src}: no fold {missing} (it has {sorted(have)})")
    return [have[k] for k in folds]


def _combine_main(paths: list[str], json_out: str | None, folds: list[int] | None = None) -> int:
    import json

    from matmtl.io import atomic_write_json

    try:
        runs = [json.loads(Path(p).read_text()) for p in paths]
        combined = combine(runs, folds)
    except (OSError, ValueError, KeyError) as exc:
        print(f"seed_soup --combine: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if json_out:
        atomic_write_json(
            Path(json_out),
            {
                "about": "seed_soup.py --combine: " + combine.__doc__.split(";")[0].strip(),
                "unit": "eV",
                "inputs": list(paths),
                "command": "python scripts/seed_soup.py --combine "
                + " ".join(paths)
                + ("" if folds is None else " --folds " + ",".join(map(str, folds)))
                + f" --json {json_out}",
                **combined,
            },
        )
    return 0


def _fold_list(text: str) -> list[int]:
    """``--folds``: comma-separated matbench fold numbers (0-4), each once."""
    try:
        folds = [int(k) for k in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fold numbers, got {text!r}") from None
    if not folds or any(not 0 <= k <= 4 for k in folds) or len(set(folds)) != len(folds):
        raise argparse.ArgumentTypeError(f"expected distinct fold numbers in 0-4, got {text!r}")
    return folds


def _combine_cli(argv: list[str]) -> int:
    """``--combine JSON ... [--folds K,...] [--json OUT]``: bring groups together."""
    c = argparse.ArgumentParser(description="Bring seed_soup groups together.")
    c.add_argument("--combine", nargs="+", required=True, metavar="JSON", help="the groups' JSON files")
    c.add_argument("--json", help="write the combined results here")
    c.add_argument(
        "--folds", type=_fold_list, help="only these folds, e.g. 0,1,2 (default: all, the same in every group)"
    )
    a = c.parse_args(argv)
    if len(a.combine) < 2:
        c.error("--combine: give at least two groups' JSON files")
    return _combine_main(a.combine, a.json, a.folds)


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if "--combine" in argv:
        return _combine_cli(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="the pretraining run to fine-tune")
    p.add_argument("--folds", type=_fold_list, default="0,1", help="matbench expt_gap folds, e.g. 0,1")
    p.add_argument("--members", type=int, default=3, help="fine-tunings per soup (>= 2)")
    p.add_argument("--group", type=int, default=0, help="the split seed (and member 0's seed)")
    p.add_argument("--aux-source", default="replay", help="replay, distill or replay,distill")
    p.add_argument("--work", required=True, help="folder of the members' run folders (reused)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--max-train-rows", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: the tiny preset
    args = p.parse_args(argv)
    if args.members < 2:
        p.error("--members must be >= 2")
    folds = args.folds
    sources = list(dict.fromkeys(args.aux_source.split(",")))
    if not sources or any(s not in ("replay", "distill") for s in sources):
        p.error(f"--aux-source: expected replay, distill or replay,distill, got {args.aux_source!r}")
    if not Path(args.checkpoint).is_dir():
        p.error(f"--checkpoint: no run folder at {args.checkpoint}")
    from matmtl.errors import MatmtlError
    from matmtl.io import atomic_write_json, sha256_file

    by_source = {}
    try:
        for src in sources:
            by_source[src] = [score_fold(argparse.Namespace(**{**vars(args), "aux_source": src}), k) for k in folds]
    except MatmtlError as exc:
        print(f"seed_soup: {exc}", file=sys.stderr)
        return 1
    out = {
        "about": __doc__.strip(),
        "unit": "eV",
        "checkpoint": str(args.checkpoint),
        # the weights themselves: a folder re-made at the same path is another checkpoint
        "checkpoint_sha256": sha256_file(Path(args.checkpoint) / "model.safetensors"),
        "members": args.members,
        "group": args.group,
        "command": "python scripts/seed_soup.py " + " ".join(argv),
    }
    blocks = dict(by_source)
    if len(sources) > 1:
        blocks["anchored"] = anchored(by_source)
    out["sources"] = report(blocks)
    if args.json:
        atomic_write_json(Path(args.json), out)
    return 0


def _public(f: dict) -> dict:
    """A fold's record without the per-row errors kept for the anchored choice."""
    return {k: _public(v) if isinstance(v, dict) else v for k, v in f.items() if not k.startswith("_")}


def _line(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in d.items())


if __name__ == "__main__":
    sys.exit(main())
