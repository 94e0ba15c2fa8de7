"""Compare pretraining runs of one matbench fold: loss balancing against the e_form cost of
2-task pretraining (issue #11), and multi-task against single-task (negative transfer).

    python scripts/compare_pretraining.py static=RUN balance_uncertainty=RUN balance_gradnorm=RUN \
        single_e_form=RUN --json results/pretrain_balancing.json --markdown docs/pretraining.md

Each RUN is a finished ``matmtl pretrain --holdout-fold K`` folder. The first run is the
reference. Printed and written, per run and task (units: e_form eV/atom, gap_pbe eV):
  - the MAE on the run's own validation rows (from its metrics.json);
  - the MAE on the held-out matbench fold, and the paired difference against the reference
    on the same held-out rows with its standard error (every model is re-read from its
    checkpoint and predicts those rows here: ensemble mean, as in the run's metrics).

Multi- against single-task (negative transfer): for every single-task run and every
multi-task run that trains the same task, the multi-task run's minus the single-task run's
held-out MAE on that task's rows, ± SE (paired, same rows); within 1 SE is a tie, and a
multi-task model with a higher MAE beyond that shows negative transfer on that task.

Each run's command is rebuilt from its config.json (every setting that differs from the
defaults, surgery and monitor included). A run made with ``--monitor-every`` also gets a
table of its task gradients: per task pair the cosine of the mean gradients on the shared
encoder and the principal angles between the gradient subspaces (matmtl.eval.relatedness).

The rule that picks the default balancer is fixed before any result is read and uses the
validation rows only: among the runs with the reference's tasks, a balancer replaces the
reference only if it has a lower validation MAE on every task; among several such, the
lowest mean of validation MAEs relative to the reference's wins. The held-out fold is
reported, never used to choose.
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

UNITS = {"e_form": "eV/atom", "gap_pbe": "eV", "gap_oqmd": "eV"}


def describe(run: Path) -> dict:
    from matmtl.eval.relatedness import summarize_records
    from matmtl.eval.scoring import monitor_records

    cfg = json.loads((run / "config.json").read_text())
    met = json.loads((run / "metrics.json").read_text())
    mtl = cfg.get("mtl") or {}
    return {
        "path": str(run),
        "tasks": list(cfg["tasks"]),
        "balancer": (mtl.get("balancer") or {}).get("name", "static"),
        "surgery": (mtl.get("surgery") or {}).get("name", "none"),
        "holdout_fold": cfg.get("holdout_fold"),
        "rows": {
            "max_rows": cfg.get("max_rows"),
            "seed": (cfg.get("train") or {}).get("seed", 0),
            "data_dir": cfg.get("data_dir"),
        },
        "epochs": met.get("epochs"),
        "best_epoch": met.get("best_epoch"),
        "train_seconds": met.get("train_seconds"),
        "validation_mae": {t: v["mae"] for t, v in (met.get("validation") or {}).items()},
        "validation_rows": {t: v["rows"] for t, v in (met.get("validation") or {}).items()},
        "holdout_mae": {t: v["mae"] for t, v in (met.get("holdout") or {}).items()},
        "gradient_geometry": summarize_records(monitor_records(run, met)),
    }


def holdout_errors(run: Path, tasks: list[str], fold: int, rows: dict, cache: dict) -> dict[str, np.ndarray]:
    """Per-row absolute errors of the run's model on the held-out fold's rows of each task
    (the rows the run itself held out: ``rows`` gives its ``max_rows`` and seed). A task
    without held-out rows (OQMD gaps: no official folds) has no entry."""
    from matmtl.checkpoints import load_checkpoint
    from matmtl.train.data import dft_split

    net, _ = load_checkpoint(run)
    out = {}
    for t in tasks:
        if t not in cache:
            _, te, _ = dft_split([t], fold, rows["max_rows"], rows["seed"], rows["data_dir"])
            cache[t] = te
        te = cache[t]
        if not len(te):
            continue
        y = np.asarray(te.targets[t], dtype=np.float64)
        pred = net.predict_arrays(te.z, te.frac, te.spg, [t])[t].mean(1)
        out[t] = np.abs(pred - y)
    return out


def choose(runs: dict[str, dict], ref: str) -> dict:
    """The validation-only rule of the module docstring."""
    base = runs[ref]
    better = {}
    for name, r in runs.items():
        if name == ref or r["tasks"] != base["tasks"]:
            continue
        rel = [r["validation_mae"][t] / base["validation_mae"][t] for t in base["tasks"]]
        if all(x < 1 for x in rel):
            better[name] = float(np.mean(rel))
    chosen = min(better, key=better.get) if better else ref
    return {
        "rule": "replace the reference only if lower validation MAE on every task; then lowest mean relative MAE",
        "candidates_better_on_every_task": better,
        "chosen": chosen,
        "balancer": runs[chosen]["balancer"],
    }


def transfer(runs: dict[str, dict], errors: dict[str, dict]) -> list[dict]:
    """Multi- vs single-task on each task a single-task run trains (module docstring)."""
    out = []
    for single, s in runs.items():
        if len(s["tasks"]) != 1:
            continue
        t = s["tasks"][0]
        for multi, m in runs.items():
            if len(m["tasks"]) < 2 or t not in m["tasks"]:
                continue
            d = errors[multi][t] - errors[single][t]
            diff, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))
            if abs(diff) < se:
                verdict = "tie"
            else:
                verdict = "negative transfer" if diff > 0 else "positive transfer"
            out.append(
                {
                    "task": t,
                    "multi": multi,
                    "single": single,
                    "diff": diff,
                    "se": se,
                    "rows": len(d),
                    "verdict": verdict,
                    # the issue's comparison is at the same budget; other pairs are shown, marked
                    "same_epochs": m["epochs"] == s["epochs"],
                }
            )
    return out


def _num(d: dict, t: str) -> str:
    return f"{d[t]:.4f}" if t in d else "–"


def _diff(paired: dict, t: str) -> str:
    if t not in paired:
        return "–"
    d = paired[t]
    tie = " (tie)" if abs(d["diff"]) < d["se"] else ""
    return f"{d['diff']:+.4f} ± {d['se']:.4f}{tie}"


def _strategy(r: dict) -> str:
    return r["balancer"] + (f" + {r['surgery']}" if r.get("surgery", "none") != "none" else "")


def markdown(res: dict) -> str:
    ref = res["reference"]
    lines = [
        "# Pretraining: loss balancing and single- vs multi-task",
        "",
        "<!-- Written by scripts/compare_pretraining.py from the run folders; re-run the command below. -->",
        "",
        f"Matbench mp fold {res['holdout_fold']} held out (predicted once, at the end); every run holds out "
        "a seeded 10% of its own training rows as validation rows, which chose the kept epoch. "
        "Units: e_form eV/atom, gap_pbe eV. The paired difference is the run's minus the reference's "
        f"(`{ref}`) held-out MAE on the same rows, ± its standard error; |difference| < SE is a tie. "
        "`train s`: the run's training wall time, which depends on what else the machine ran.",
        "",
        "| run | tasks | balancer (+ surgery) | validation MAE e_form | validation MAE gap_pbe | held-out e_form | "
        "vs reference | held-out gap_pbe | vs reference | best epoch | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res["runs"].items():
        v, h, p = r["validation_mae"], r["holdout_mae"], r.get("paired", {})
        lines.append(
            f"| `{name}` | {', '.join(r['tasks'])} | {_strategy(r)} | {_num(v, 'e_form')} | {_num(v, 'gap_pbe')} | "
            f"{_num(h, 'e_form')} | {_diff(p, 'e_form')} | {_num(h, 'gap_pbe')} | {_diff(p, 'gap_pbe')} | "
            f"{r['best_epoch']}/{r['epochs']} | {r['train_seconds']} |"
        )
    if res.get("transfer"):
        lines += [
            "",
            "Multi- vs single-task on each task (negative transfer): the multi-task run's minus the "
            "single-task run's held-out MAE on the same rows, ± SE. Only pairs with the same epochs compare "
            "equal budgets; the others are marked.",
            "",
            "| task | multi-task run | single-task run | multi-task MAE | single-task MAE | difference | verdict "
            "| epochs |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for x in res["transfer"]:
            m, s = res["runs"][x["multi"]], res["runs"][x["single"]]
            lines.append(
                f"| {x['task']} ({UNITS[x['task']]}) | `{x['multi']}` | `{x['single']}` | "
                f"{m['holdout_mae'][x['task']]:.4f} | {s['holdout_mae'][x['task']]:.4f} | "
                f"{x['diff']:+.4f} ± {x['se']:.4f} | {x['verdict']} | "
                + ("same" if x["same_epochs"] else f"**{m['epochs']} vs {s['epochs']}: not the same budget**")
                + " |"
            )
    geometry = [(name, pair, g) for name, r in res["runs"].items() for pair, g in r["gradient_geometry"].items()]
    if geometry:
        lines += [
            "",
            "Task gradients during pretraining (runs with `--monitor-every`): the cosine between the tasks' "
            "mean gradients on the shared encoder (over k micro-batches) and the principal angles between "
            "their gradient subspaces, averaged over the records; a negative cosine is a conflict.",
            "",
            "| run | task pair | records (steps) | mean cosine | first → last third | share cos < 0 "
            "| principal angles (deg, mean) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, pair, g in geometry:
            angles = ", ".join(f"{a:.1f}" for a in g.get("principal_angles_deg_mean", [])) or "–"
            lines.append(
                f"| `{name}` | {pair.replace('|', ' vs ')} | {g['records']} ({g['first_step']}–{g['last_step']}) | "
                f"{g['cosine_mean']:.3f} | {g['cosine_first_third']:.3f} → {g['cosine_last_third']:.3f} | "
                f"{g['conflict_share']:.2f} | {angles} |"
            )
    from matmtl.config import PRETRAIN_BALANCER

    c = res["choice"]
    lines += [
        "",
        f"Balancer chosen by this page's validation-only rule on the pretraining tasks ({c['rule']}): "
        f"**{_strategy(res['runs'][c['chosen']])}** (`{c['chosen']}`). It reads validation MAEs without their "
        "spread: a run chosen by a difference smaller than the held-out SE is not a better run.",
        "",
        f"matmtl's pretraining default (`PRETRAIN_BALANCER`) is **{PRETRAIN_BALANCER}**: it is chosen by transfer, "
        "the fine-tuned models' validation MAE on experimental gaps over 3 seeds ([seeds.md](seeds.md)).",
        "",
        f"Command: `{res['command']}`",
        "",
        "Run commands:",
        "",
    ]
    lines += [f"- `{name}`: `{r['command']}`" for name, r in res["runs"].items()]
    return "\n".join(lines) + "\n"


def _pretrain_options() -> dict:
    """The options of ``matmtl pretrain``, read from the CLI itself, by parameter name. A config
    field with an option of the same name is set by that option (--dim sets model.dim)."""
    import typer

    from matmtl.cli.app import app

    command = typer.main.get_command(app).commands["pretrain"]
    return {p.name: p for p in command.params if p.param_type_name == "option"}


def _flag(option, value) -> str | None:
    """``option`` set to ``value`` on a command line; None if it cannot say it (an off switch
    that has no --no- form)."""
    if not option.is_flag:
        return f"{option.opts[0]} {value}"
    if value:
        return option.opts[0]
    return option.secondary_opts[0] if option.secondary_opts else None


def run_command(run: Path) -> str:
    """The ``matmtl pretrain`` command of a run, rebuilt from its config.json: every setting
    that differs from the CPU defaults is named (the balancer always: the default may change).
    Settings that no flag sets (a run made from Python) are listed after the command."""
    from dataclasses import fields

    from matmtl.config import ModelConfig, MTLConfig, TrainConfig
    from matmtl.mtl.balance import balancer_from
    from matmtl.mtl.surgery import surgery_from

    cfg = json.loads((run / "config.json").read_text())
    mtl = cfg.get("mtl") or {}

    def differing(size: str) -> list[tuple[str, str, object]]:
        defaults = {
            "model": {f.name: f.default for f in fields(ModelConfig)} | ModelConfig.PRESETS[size],
            # (--threads has its own CLI default, whatever the --size)
            "train": {f.name: f.default for f in fields(TrainConfig)}
            | {k: v for k, v in TrainConfig.PRESETS[size].items() if k != "threads"},
            "mtl": {f: getattr(MTLConfig, f) for f in ("soft_share", "monitor_every", "monitor_k")},
        }
        return [
            (section, field, value)
            for section, default in defaults.items()
            for field, value in (cfg.get(section) or {}).items()
            if field in default and value != default[field]
        ]

    size = min(("default", "tiny", "large"), key=lambda name: len(differing(name)))  # --size: the nearest preset
    cmd = f"matmtl pretrain --tasks {','.join(cfg['tasks'])} --holdout-fold {cfg.get('holdout_fold')}"
    if size != "default":
        cmd += f" --size {size}"
    options, extra = _pretrain_options(), []
    for section, field, value in differing(size):
        flag = _flag(options[field], value) if field in options else None
        if flag:
            cmd += " " + flag
        else:
            extra.append(f"{section}.{field}={value}")
    if cfg.get("max_rows") is not None:
        cmd += f" --max-rows {cfg['max_rows']}"
    for kind, make, default in (("balancer", balancer_from, "static"), ("surgery", surgery_from, "none")):
        stored = mtl.get(kind) or {"name": default}
        if kind == "balancer" or stored["name"] != default:  # the balancer always: the default may change
            cmd += f" --{'balance' if kind == 'balancer' else kind} {stored['name']}"
        if stored != make(stored["name"]).to_dict():  # settings of the strategy that its flag does not set
            extra.append(f"mtl.{kind}={json.dumps(stored)}")
    return cmd + (f" (settings without a flag: {', '.join(extra)})" if extra else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="NAME=RUN", help="pretraining run folders; the first is the reference")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    from matmtl.io import atomic_write, atomic_write_json

    runs, paths = {}, {}
    for item in args.runs:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            ap.error(f"expected NAME=RUN, got {item!r}")
        paths[name] = Path(path)
        runs[name] = describe(Path(path))
        runs[name]["command"] = run_command(Path(path))
    ref = next(iter(runs))
    held = {(r["holdout_fold"], r["rows"]["max_rows"], r["rows"]["seed"]) for r in runs.values()}
    if len(held) != 1 or None in {h[0] for h in held}:
        ap.error(
            "the runs must hold out the same rows (one matbench fold, the same --max-rows and seed), got "
            + ", ".join(f"fold {f}, max_rows {m}, seed {s}" for f, m, s in sorted(held, key=str))
        )
    fold = runs[ref]["holdout_fold"]
    cache: dict = {}
    errors = {name: holdout_errors(paths[name], r["tasks"], fold, r["rows"], cache) for name, r in runs.items()}
    for name, r in runs.items():
        r["paired"] = {}
        for t in r["tasks"]:
            if name == ref or t not in errors[ref] or t not in errors[name]:
                continue
            d = errors[name][t] - errors[ref][t]
            r["paired"][t] = {"diff": float(d.mean()), "se": float(d.std(ddof=1) / math.sqrt(len(d))), "rows": len(d)}
        r["holdout_mae_recomputed"] = {t: float(e.mean()) for t, e in errors[name].items()}
    res = {
        "holdout_fold": fold,
        "reference": ref,
        "units": UNITS,
        "runs": runs,
        "choice": choose(runs, ref),
        "transfer": transfer(runs, errors),
        "command": "python scripts/compare_pretraining.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    text = markdown(res)
    print(text)
    if args.json:
        atomic_write_json(args.json, res)
    if args.markdown:
        atomic_write(args.markdown, lambda tmp: tmp.write_text(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
