"""The results, built by pure functions: cell records in, the results JSON objects and
the generated markdown page out (the page is made from the JSON only, so it never holds
a number typed in by hand). Nothing here trains, reads or writes files.

* :func:`expt_results`: matbench_expt_gap (variants with their test and validation scores,
  forgetting, data efficiency, anchor selection, structure vs formula, task relatedness,
  settings, provenance);
* :func:`mp_results`: matbench mp_e_form / mp_gap of the pretraining model;
* :func:`render_markdown`: the results page.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from . import protocol
from .metrics import aggregate_folds, mean_std
from .relatedness import average_over_folds
from .settings import ALL_VARIANTS, ANCHORED, FOLDS, VARIANTS, EvalSettings

# Matbench v0.1 leaderboard MAEs for context (as listed in issue #6; matbench.materialsproject.org).
LEADERBOARD = {
    "matbench_expt_gap": [
        ("Darwin (LLM)", 0.2865, ""),
        ("Ax/SAASBO CrabNet", 0.331, ""),
        ("MODNet", 0.333, ""),
        ("CrabNet", 0.346, ""),
        ("RF-SCM/Magpie", 0.446, ""),
    ],
    "matbench_mp_e_form": [
        ("MODNet", 0.0448, "with structure"),
        ("Finder", 0.0839, "composition only"),
        ("CrabNet", 0.0862, "composition only"),
    ],
    "matbench_mp_gap": [],
}

VARIANT_LABELS = {
    "rf_magpie": "RandomForest / Magpie (sklearn baseline)",
    "scratch": "scratch (no pretraining)",
    "finetune": "pretrain → fine-tune, no anchor",
    "finetune_anchor_replay": "pretrain → fine-tune + DFT anchor (replay)",
    "finetune_anchor_distill": "pretrain → fine-tune + DFT anchor (distill)",
    "finetune_anchor_pcgrad": "pretrain → fine-tune + DFT anchor + PCGrad",
    "finetune_anchor": "pretrain → fine-tune + selected DFT anchor",
}

# the matbench mp tasks: (task, results name, matbench task)
MP_TASKS = (
    ("e_form", "mp_e_form", protocol.MATBENCH_TASK["mp"]),
    ("gap_pbe", "mp_gap", protocol.MATBENCH_TASK["mp_gap"]),
)


def unit(task: str) -> str:
    """The unit of a task's target, from the dataset registry."""
    from ..train.data import task_unit

    return task_unit(task)


@dataclass
class Records:
    """The cell records of one evaluation, as the runner collected them."""

    expt: dict[str, dict[int, dict]] = field(default_factory=dict)  # variant -> fold -> record (fraction 100%)
    eff: dict[str, dict[float, dict[int, dict]]] = field(default_factory=dict)  # variant -> fraction -> fold -> record
    selection: dict[int, dict] = field(default_factory=dict)  # fold -> anchor choice
    mp: dict[int, dict] = field(default_factory=dict)  # mp fold -> record
    before: dict | None = None  # the forgetting "before" cell


def _not_run(status: str, n_folds: int, **extra) -> dict:
    return {
        "status": status,
        **extra,
        "mae_mean": None,
        "mae_std": None,
        "fold_mae": [None] * n_folds,
        "rmse": None,
        "r2": None,
    }


def variant_entry(name: str, recs: dict[int, dict], s: EvalSettings, selection: dict[int, dict], hardware: str) -> dict:
    """One variant of the expt_gap table from its per-fold records."""
    folds = list(s.folds)
    agg = aggregate_folds([recs[k].get("metrics") if k in recs else None for k in folds], folds)
    done = agg["folds_done"]
    entry = {
        "status": "done" if len(done) == len(folds) else ("partial" if done else "not run"),
        **{k: agg[k] for k in ("mae_mean", "mae_std", "fold_mae", "rmse", "r2", "fold_rmse", "fold_r2")},
        "folds": folds,
        "folds_done": done,
        "n_train": [recs[k].get("n_train") for k in folds if k in recs],
        "n_test": [recs[k].get("n_test") for k in folds if k in recs],
    }
    if name != "rf_magpie":
        entry.update(validation_summary(recs, folds))
    entry["description"] = s.description(name)
    if name == "finetune_anchor_pcgrad":
        entry["anchor_source_per_fold"] = {str(k): selection.get(k, {}).get("chosen") for k in recs}
    elif name not in VARIANTS:
        entry["settings"] = {"n_estimators": s.rf_trees, "random_state": s.seed, "n_jobs": -1}
    entry["seconds"] = round(sum(r.get("seconds") or 0 for r in recs.values()), 1)
    entry["command"] = s.command
    entry["hardware"] = "; ".join(sorted({r.get("hardware", "") for r in recs.values()})) or hardware
    entry["commands_that_computed_cells"] = sorted({r.get("command", "") for r in recs.values()})
    return entry


def validation_summary(recs: dict[int, dict], folds: list[int]) -> dict:
    """A fine-tuning variant's validation rows over folds: MAE (mean and per fold), the
    kept (best) epoch, the folds that stopped early, the validation rows. These numbers
    chose the epoch, the metal cut and the calibration; the test MAE is next to them."""
    val = {k: (recs[k].get("validation") or {}) for k in folds if k in recs}
    maes = [val[k].get("mae") if k in val else None for k in folds]
    epochs = [recs[k].get("best_epoch") if k in recs else None for k in folds]
    m, sd = mean_std(maes)
    e = [x for x in epochs if x is not None]
    return {
        "validation_mae_mean": m,
        "validation_mae_std": sd,
        "fold_validation_mae": maes,
        "validation_rows": [val[k].get("rows") if k in val else None for k in folds],
        "best_epoch_mean": float(np.mean(e)) if e else None,
        "fold_best_epoch": epochs,
        "epochs_run": [recs[k].get("epochs") if k in recs else None for k in folds],
        "stopped_early_folds": [k for k in folds if k in recs and recs[k].get("stopped_early")],
        "fold_metal_cut": [val[k].get("metal_cut") if k in val else None for k in folds],
    }


def structure_vs_formula_section(expt: dict[str, dict[int, dict]], s: EvalSettings) -> dict:
    """Per fine-tuning variant (runs with ``symmetry="mp_ground_state"``): the test MAE
    on the held-out rows that have a Materials Project polymorph, from the formula alone
    and from the MP ground state's symmetry, averaged over folds."""
    keys = (
        "mae_formula",
        "mae_mp_ground_state_structure",
        "mae_formula_nonmetals",
        "mae_mp_ground_state_structure_nonmetals",
    )
    variants = {}
    for name, recs in expt.items():
        per = {k: r["structure_vs_formula"] for k, r in sorted(recs.items()) if r.get("structure_vs_formula")}
        if not per:
            continue
        entry: dict = {"folds": list(per), "rows": [per[k].get("rows") for k in per]}
        for key in keys:
            vals = [per[k].get(key) for k in per]
            entry[f"{key}_mean"] = mean_std(vals)[0]
            entry[f"fold_{key}"] = vals
        f, st = entry["mae_formula_mean"], entry["mae_mp_ground_state_structure_mean"]
        entry["structure_minus_formula"] = None if f is None or st is None else st - f
        variants[name] = entry
    note = (
        "Test rows whose composition has a Materials Project polymorph, predicted from the formula alone and "
        "from the MP ground state's space group (what a user gets by giving that structure); mean over folds. "
        "Measured once on the test fold; nothing is fitted on it."
        if s.symmetry == "mp_ground_state"
        else "Not measured: the fine-tuning runs used symmetry='none' (--symmetry mp_ground_state measures it)."
    )
    return {"symmetry": s.symmetry, "note": note, "variants": variants}


def expt_results(
    rec: Records,
    s: EvalSettings,
    *,
    prev: dict,
    provenance: dict,
    folds_check: dict,
    pretraining: dict,
    configs: dict,
    files: dict | None = None,
) -> dict:
    """The matbench_expt_gap results. ``prev``: the results file this one replaces
    (variants this invocation did not run keep their entry from it); ``provenance``:
    command, hardware, timings; ``configs``: the training configs of the cells;
    ``files``: the predictions and matbench results files written next to it."""
    if prev.get("quick") != s.quick or prev.get("protocol") != protocol.PROTOCOL:
        prev = {}
    variants: dict[str, dict] = {}
    for name in ALL_VARIANTS:
        earlier = (prev.get("variants") or {}).get(name, {})
        if name in rec.expt:
            variants[name] = variant_entry(name, rec.expt[name], s, rec.selection, provenance.get("hardware", ""))
        elif earlier.get("mae_mean") is not None:
            variants[name] = {**earlier, "from_earlier_invocation": True}
        else:
            variants[name] = _not_run("not run", len(s.folds))
    selection = (
        "All settings are fixed defaults chosen before evaluation; nothing is fitted on a test fold. Every "
        f"fine-tuning run holds out {s.val_fraction:g} of its own training rows (seeded) as validation rows: they "
        "choose the kept epoch"
        + (f" (early stopping after {s.patience} epochs without a better validation MAE)" if s.patience else "")
        + ", the hurdle head's metal cut and the uncertainty calibration. The test fold is predicted once, at "
        "the end. "
        + (
            "The anchor source for PCGrad and the data-efficiency curve is chosen per fold: the lower validation "
            "MAE of that fold's replay and distill runs."
            if s.anchor == "validation"
            else f"The anchor source is fixed to '{s.anchor}'."
        )
    )
    return {
        "protocol": protocol.PROTOCOL,
        "task": protocol.MATBENCH_TASK["expt_gap"],
        "unit": unit("gap_expt"),
        "folds": list(s.folds),
        "official_folds": {
            "definition": "KFold(n_splits=5, shuffle=True, random_state=18012019) over the matbench row order",
            **folds_check,
        },
        "selection": selection,
        "variants": variants,
        "forgetting": forgetting_section(rec, s, prev),
        "data_efficiency": efficiency_section(rec.eff, s, prev),
        "anchor_selection": {"rule": selection_rule(s.anchor), "folds": {str(k): v for k, v in rec.selection.items()}},
        "structure_vs_formula": structure_vs_formula_section(rec.expt, s),
        "relatedness": relatedness_section(rec.expt, s),
        "files": files or {},
        "pretraining": pretraining,
        "settings": settings_section(s, configs),
        "leaderboard_mae": {n: m for n, m, _ in LEADERBOARD[protocol.MATBENCH_TASK["expt_gap"]]},
        **provenance,
    }


def selection_rule(anchor: str) -> str:
    if anchor == "validation":
        return (
            "Per fold, the replay and distill runs of the main table (100% of the training fold) are compared on "
            "their own validation rows (a seeded share of the training rows, the same for both): the lower "
            "validation MAE is chosen, replay on a tie. No extra runs; the test fold is not used."
        )
    return f"Fixed: '{anchor}' (no selection)."


def _forgetting_entry(recs: dict[int, dict], before, folds) -> dict | None:
    vals = {k: r["forgetting"]["after"] for k, r in recs.items() if r.get("forgetting")}
    if not vals:
        return None
    m, sd = mean_std(list(vals.values()))
    how = next(r["forgetting"]["how"] for r in recs.values() if r.get("forgetting"))
    return {"before": before, "after": m, "after_std": sd, "fold_after": [vals.get(k) for k in folds], "how": how}


def forgetting_section(rec: Records, s: EvalSettings, prev: dict) -> dict:
    """e_form MAE before and after fine-tuning, per variant and for the selected anchor."""
    before = (rec.before or {}).get("before")
    u = unit("e_form")
    out: dict = {
        "_about": (
            f"e_form MAE ({u}) on a fixed seeded subset of {s.forgetting_rows} rows of the "
            f"pretraining run's held-out mp_e_form fold ({(rec.before or {}).get('mp_fold', 'fold 0')}), "
            "before (pretrained model) and after fine-tuning (fraction 100%; mean over expt_gap folds). "
            "Without an anchor the e_form head is not trained, so the pretrained head is read on the "
            "fine-tuned encoder."
        ),
        "unit": u,
    }
    for name in ("finetune", *ANCHORED):
        e = _forgetting_entry(rec.expt.get(name, {}), before, s.folds)
        if e:
            out[name] = e
    default = "replay" if s.anchor == "validation" else s.anchor
    chosen = {
        k: rec.expt.get(f"finetune_anchor_{rec.selection.get(k, {}).get('chosen') or default}", {}).get(k)
        for k in s.folds
    }
    e = _forgetting_entry({k: r for k, r in chosen.items() if r}, before, s.folds)
    if e:
        out["finetune_anchor"] = {**e, "anchor": "per-fold selection" if rec.selection else "replay (default)"}
    for name in ("finetune", "finetune_anchor"):
        out.setdefault(name, (prev.get("forgetting") or {}).get(name) or {"before": before, "after": None})
    return out


def efficiency_section(eff: dict[str, dict[float, dict[int, dict]]], s: EvalSettings, prev: dict) -> dict:
    """MAE at each share of the training folds, per variant (mean ± std over folds)."""
    folds = list(s.efficiency_folds)
    out = {
        "fractions": list(s.fractions),
        "folds": folds,
        "subsample": "finetune's seeded draw of N rows, rng [seed, 17]; N = round(fraction x training rows)",
        "variants": {},
    }
    for v, by_frac in eff.items():
        cells = {}
        for x in s.fractions:
            recs = by_frac.get(x, {})
            agg = aggregate_folds([recs[k]["metrics"] if k in recs else None for k in folds], folds)
            cells[fraction_key(x)] = {
                "mae_mean": agg["mae_mean"],
                "mae_std": agg["mae_std"],
                "fold_mae": agg["fold_mae"],
                "n_train_mean": float(np.mean([r["n_train"] for r in recs.values()])) if recs else None,
                "complete": len(agg["folds_done"]) == len(folds),
                # each run's own validation rows (None: the RF baseline has none)
                "fold_validation_mae": [((recs.get(k) or {}).get("validation") or {}).get("mae") for k in folds],
            }
        out["variants"][v] = cells
    if not out["variants"] and (prev.get("data_efficiency") or {}).get("variants"):
        return prev["data_efficiency"]
    return out


def relatedness_section(expt: dict[str, dict[int, dict]], s: EvalSettings) -> dict:
    """Per neural variant: the gradient-monitor summaries averaged over folds."""
    variants = {}
    for name, recs in expt.items():
        if name == "rf_magpie":
            continue
        per_fold = {k: r.get("relatedness") or {} for k, r in recs.items()}
        variants[name] = {
            "monitor_records": sum(r.get("monitor_records", 0) for r in recs.values()),
            "pairs": average_over_folds({k: v for k, v in per_fold.items() if v}),
        }
    if not any(v["pairs"] for v in variants.values()):
        note = "no gradient-monitor records: " + (
            "no neural variant has run yet"
            if not variants
            else "single-task variants (scratch, finetune) have no task pairs, and the anchored runs wrote none "
            f"(monitor every {s.monitor_every} steps)"
        )
    else:
        note = (
            "Task pairs are loss keys of the fine-tuning step (e.g. gap_expt vs e_form, or e_form@replay for "
            f"replayed rows); records every {s.monitor_every} steps, subspaces from k={s.monitor_k} "
            "micro-batches; averaged over records, then over folds. Single-task variants have no pairs."
        )
    return {"note": note, "variants": variants}


def settings_section(s: EvalSettings, configs: dict) -> dict:
    """The evaluation's settings and, when neural variants ran, their training configs."""
    d = asdict(s)
    d.pop("command", None)
    return {"eval": d, **configs}


def mp_results(mp: dict[int, dict], s: EvalSettings, provenance: dict) -> dict[str, dict]:
    """matbench mp_e_form / mp_gap results from the mp cells ({} when none ran)."""
    if not mp:
        return {}
    out = {}
    folds = sorted(mp)
    for task, name, mbname in MP_TASKS:
        per = [mp[k].get(task) if "mae" in (mp[k].get(task) or {}) else None for k in folds]
        agg = aggregate_folds(per, folds)
        comp = [p["mae_composition_only"] if p else None for p in per]
        cm, cs = mean_std(comp)
        if agg["mae_mean"] is None:
            reason = next((mp[k][task].get("reason") for k in folds if isinstance(mp[k].get(task), dict)), "")
            entry = _not_run("not available", len(folds), reason=reason)
        else:
            entry = {
                "status": "done" if len(agg["folds_done"]) == len(FOLDS) else "subset of folds",
                **{
                    k: agg[k]
                    for k in ("mae_mean", "mae_std", "fold_mae", "rmse", "r2", "fold_rmse", "fold_r2", "folds_done")
                },
                "mae_composition_only_mean": cm,
                "mae_composition_only_std": cs,
                "fold_mae_composition_only": comp,
                "test_rows": [p["test_rows"] if p else None for p in per],
                "seconds": round(sum(mp[k].get("seconds") or 0 for k in folds), 1),
                "command": s.command,
                "hardware": "; ".join(sorted({mp[k].get("hardware", "") for k in folds})),
            }
        note = (
            f"Folds evaluated: {folds} of 0-4"
            + (
                ""
                if len(folds) == len(FOLDS)
                else " (a documented subset: on a CPU each fold needs its own pretraining run, ~15 min on 2 CPU cores; "
                "all 5 folds run by default on a GPU or with --mp-folds 0,1,2,3,4)"
            )
            + (". Test rows capped (quick)." if s.quick else ". Full official test folds.")
        )
        out[name] = {
            "protocol": protocol.PROTOCOL,
            "task": mbname,
            "unit": unit(task),
            "folds": folds,
            "model": f"pretrain (tasks {', '.join(s.pretrain_tasks)}; composition + symmetry)",
            "variants": {"pretrain": entry},
            "subset_note": note,
            "leaderboard_mae": {n: m for n, m, _ in LEADERBOARD[mbname]},
            **provenance,
        }
    return out


# -- the markdown page ---------------------------------------------------------------------


def _f(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def _pm(mean, std, digits: int = 3) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def _folds(values, digits: int = 3) -> str:
    if not values:
        return "–"
    return " / ".join(_f(v, digits) for v in values)


def _status(entry: dict) -> str:
    st = entry.get("status", "not run")
    if st == "not available":
        return f"not available ({entry.get('reason', '')})"
    if st == "partial":
        return f"partial (folds {entry.get('folds_done')})"
    return st


def _ranked_table(result: dict, digits: int, unit: str, validation: bool = False) -> list[str]:
    """Ours and the leaderboard ranked by test MAE; ``validation``: with the validation
    MAE (mean over folds) and the mean kept epoch of each variant."""
    task = result.get("task", "")
    rows = []
    for name, e in result.get("variants", {}).items():
        extra = (_f(e.get("validation_mae_mean"), digits), _f(e.get("best_epoch_mean"), 1)) if validation else ()
        rows.append(
            (
                e.get("mae_mean"),
                f"**ours**: {VARIANT_LABELS.get(name, name)} (`{name}`)",
                _pm(e.get("mae_mean"), e.get("mae_std"), digits),
                _folds(e.get("fold_mae"), digits),
                _f(e.get("rmse"), digits),
                _f(e.get("r2"), 3),
                *extra,
                _status(e),
            )
        )
    for name, mae, note in LEADERBOARD.get(task, []):
        label = f"leaderboard: {name}" + (f" ({note})" if note else "")
        blank = ("", "") if validation else ()
        rows.append((mae, label, _f(mae, 4), "", "", "", *blank, "matbench v0.1 leaderboard"))
    done = sorted([r for r in rows if r[0] is not None], key=lambda r: r[0])
    missing = [r for r in rows if r[0] is None]
    head = f"| model | test MAE ({unit}), mean ± std over folds | per-fold MAE | RMSE | R² |"
    head += " validation MAE (mean) | best epoch (mean) |" if validation else ""
    out = [head + " status |", "|---|---|---|---|---|" + ("---|---|" if validation else "") + "---|"]
    out += ["| " + " | ".join(r[1:]) + " |" for r in done + missing]
    return out


def _provenance(result: dict) -> list[str]:
    out = ["| variant | command | hardware | compute seconds |", "|---|---|---|---|"]
    for name, e in result.get("variants", {}).items():
        if e.get("mae_mean") is None:
            continue
        out.append(
            f"| `{name}` | `{e.get('command', result.get('command', ''))}` | "
            f"{e.get('hardware', result.get('hardware', ''))} | {_f(e.get('seconds'), 0)} |"
        )
    return out


def render_markdown(
    expt: dict | None, mp_e_form: dict | None = None, mp_gap: dict | None = None, figure: str | None = None
) -> str:
    """The results page, from the results JSON objects (``figure``: a relative link to
    the data-efficiency PNG)."""
    L = [
        "# Evaluation results",
        "",
        "<!-- Generated by `matmtl evaluate` (matmtl/eval/report.py) from the results JSON files. "
        "Do not edit by hand: re-run the command shown with each table. -->",
        "",
    ]
    L.append(
        "Every number below is written by the evaluation harness; the command that reproduces it and the "
        "machine it ran on are listed with it. Protocol and settings: [evaluation.md](evaluation.md). "
        "One evaluation is one fine-tuning seed (`--seed`); `scripts/compare_recipes.py` combines the "
        "folders of several (mean, seed spread, paired differences; [seeds.md](seeds.md))."
    )
    L.append("")
    if expt:
        u = expt.get("unit") or unit("gap_expt")
        L += [f"## {expt.get('task', 'matbench_expt_gap')} ({expt.get('protocol')}, folds {expt.get('folds')})", ""]
        if expt.get("quick"):
            L += ["> **Quick smoke-test settings** (tiny models, capped rows): these numbers are not results.", ""]
        L += _ranked_table(expt, 3, u, validation=True) + [""]
        L += [
            "Leaderboard rows are the published matbench v0.1 MAEs, for context; ours are computed on the same "
            "5 official folds. MAE std is the population std over folds (as matbench). The validation MAE is "
            "measured on each run's own validation rows (a seeded share of its training rows), which chose the "
            "kept epoch, the metal cut and the calibration; the test fold was predicted once.",
            "",
        ]
        if expt.get("selection"):
            L += [expt["selection"], ""]
        L += [
            f"Command: `{expt.get('command')}`",
            "",
            f"Hardware: {expt.get('hardware')}",
            "",
            f"Compute time of the cells behind these numbers: {_f(expt.get('compute_seconds'), 0)} s "
            f"(wall time of the invocation that wrote this file: {_f(expt.get('seconds'), 0)} s; finished cells are "
            "reused from the cache, so a re-run is fast).",
            "",
        ]
        prov = _provenance(expt)
        if len(prov) > 2:
            L += (
                ["Per variant (a variant may come from an earlier invocation; cached cells are reused):", ""]
                + prov
                + [""]
            )
        L += _forgetting(expt) + _efficiency(expt, figure) + _selection(expt) + _structure(expt) + _relatedness(expt)
        L += _files(expt)
    for res in (mp_e_form, mp_gap):
        if res:
            L += _mp_section(res)
    return "\n".join(L).rstrip() + "\n"


def _forgetting(expt: dict) -> list[str]:
    fg = expt.get("forgetting") or {}
    L = ["### Forgetting: DFT formation energy after fine-tuning", ""]
    info = fg.get("_about", "")
    if info:
        L += [info, ""]
    rows = [(k, v) for k, v in fg.items() if not k.startswith("_") and isinstance(v, dict)]
    if not any(v.get("after") is not None for _, v in rows):
        return L + ["_Not run yet (needs the fine-tuned variants)._", ""]
    L += [
        f"| variant | e_form MAE before ({fg.get('unit') or unit('e_form')}) | after, mean ± std over folds "
        "| per fold | how |",
        "|---|---|---|---|---|",
    ]
    for k, v in rows:
        L.append(
            f"| `{k}` | {_f(v.get('before'), 4)} | {_pm(v.get('after'), v.get('after_std'), 4)} | "
            f"{_folds(v.get('fold_after'), 4)} | {v.get('how', '')} |"
        )
    return L + [""]


def _efficiency(expt: dict, figure: str | None) -> list[str]:
    de = expt.get("data_efficiency") or {}
    L = ["### Data efficiency: MAE vs share of each training fold", ""]
    variants = de.get("variants") or {}
    if not variants:
        return L + ["_Not run yet._", ""]
    fr = de.get("fractions", [])
    L += [
        f"Seeded subsamples of each training fold ({de.get('subsample', '')}); full test folds. MAE in "
        f"{expt.get('unit') or unit('gap_expt')}, "
        "mean ± std over folds.",
        "",
    ]
    L += ["| variant | " + " | ".join(f"{x:.0%}" for x in fr) + " |", "|---|" + "---|" * len(fr)]
    for name, cells in variants.items():
        vals = []
        for x in fr:
            c = cells.get(fraction_key(x)) or {}
            vals.append(_pm(c.get("mae_mean"), c.get("mae_std")) + ("" if c.get("complete", True) else " (partial)"))
        L.append(f"| `{name}` | " + " | ".join(vals) + " |")
    L.append("")
    if figure:
        L += [f"![data efficiency]({figure})", ""]
    return L


def fraction_key(x: float) -> str:
    """The key of a training share in ``data_efficiency`` (``0.05`` -> ``"0.05"``)."""
    return f"{float(x):g}"


def _selection(expt: dict) -> list[str]:
    sel = expt.get("anchor_selection") or {}
    if not sel.get("folds"):
        return []
    L = ["### Anchor selection (inside the training folds)", "", sel.get("rule", ""), ""]
    L += ["| fold | validation MAE replay | validation MAE distill | chosen |", "|---|---|---|---|"]
    for k, v in sorted(sel["folds"].items(), key=lambda kv: int(kv[0])):
        L.append(f"| {k} | {_f(v.get('replay'))} | {_f(v.get('distill'))} | {v.get('chosen')} |")
    return L + [""]


def _structure(expt: dict) -> list[str]:
    sf = expt.get("structure_vs_formula") or {}
    L = ["### Structure vs formula (test rows with a Materials Project polymorph)", ""]
    if sf.get("note"):
        L += [sf["note"], ""]
    variants = sf.get("variants") or {}
    if not variants:
        return L
    u = expt.get("unit") or unit("gap_expt")
    L += [
        f"| variant | rows per fold | MAE from formula ({u}) | MAE from MP ground-state structure | "
        "non-metals: formula | non-metals: structure |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in variants.items():
        L.append(
            f"| `{name}` | {' / '.join(str(r) for r in v.get('rows', []))} | {_f(v.get('mae_formula_mean'))} | "
            f"{_f(v.get('mae_mp_ground_state_structure_mean'))} | {_f(v.get('mae_formula_nonmetals_mean'))} | "
            f"{_f(v.get('mae_mp_ground_state_structure_nonmetals_mean'))} |"
        )
    return L + [""]


def _files(expt: dict) -> list[str]:
    files = expt.get("files") or {}
    pred, sub = files.get("predictions") or {}, files.get("submission") or {}
    L = []
    if pred.get("files"):
        L.append(
            f"Per-fold test predictions (matbench ids, targets, predictions) of {', '.join(pred.get('variants', []))}: "
            + ", ".join(f"`{n}`" for n in pred["files"])
            + "."
        )
    if sub.get("file"):
        L.append(
            f"Matbench results file (leaderboard-submission format) of `{sub.get('variant')}` on folds "
            f"{sub.get('folds')}: `{sub['file']}`"
            + ("" if sub.get("complete") else " (not all 5 folds: incomplete)")
            + "."
        )
    return (["### Files", "", *[x for line in L for x in (line, "")]]) if L else []


def _relatedness(expt: dict) -> list[str]:
    rel = expt.get("relatedness") or {}
    L = ["### Task relatedness (gradient geometry during fine-tuning)", ""]
    per = {k: v for k, v in (rel.get("variants") or {}).items() if v.get("pairs")}
    if not per:
        reason = rel.get("note") or "no monitor records were found in the fine-tuning runs."
        return L + [f"**Empty: {reason}**", ""]
    if rel.get("note"):
        L += [rel["note"], ""]
    L += [
        "| variant | task pair | records | mean cosine | first → last third | share cos < 0 | "
        "principal angles (deg, mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in per.items():
        for pair, s in v["pairs"].items():
            angs = s.get("principal_angles_deg_mean")
            L.append(
                f"| `{name}` | {pair.replace('|', ' vs ')} | {s.get('records')} | {_f(s.get('cosine_mean'))} | "
                f"{_f(s.get('cosine_first_third'))} → {_f(s.get('cosine_last_third'))} | "
                f"{_f(s.get('conflict_share'), 2)} | "
                f"{', '.join(f'{a:.1f}' for a in angs) if angs else '–'} |"
            )
    return L + [""]


def _mp_section(res: dict) -> list[str]:
    unit = res.get("unit", "")
    digits = 4
    L = [f"## {res.get('task')} (pretraining model, composition + symmetry)", ""]
    if res.get("quick"):
        L += ["> **Quick smoke-test settings**: these numbers are not results.", ""]
    if res.get("subset_note"):
        L += [res["subset_note"], ""]
    L += _ranked_table(res, digits, unit) + [""]
    comp = {n: e for n, e in res.get("variants", {}).items() if e.get("mae_composition_only_mean") is not None}
    for e in comp.values():
        L += [
            f"Same model with the symmetry hidden (composition only, comparable to composition-only entries): "
            f"MAE {_pm(e['mae_composition_only_mean'], e.get('mae_composition_only_std'), digits)} {unit} "
            f"(per fold {_folds(e.get('fold_mae_composition_only'), digits)}).",
            "",
        ]
    if not LEADERBOARD.get(res.get("task"), []):
        L += ["(No leaderboard reference values are listed for this task here.)", ""]
    L += [f"Command: `{res.get('command')}`", "", f"Hardware: {res.get('hardware')}", ""]
    return L
