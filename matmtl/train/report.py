"""End of a run: what is fitted on the validation rows (the hurdle heads' metal cut, the
uncertainty calibration), the held-out test rows predicted once, then the checkpoint,
metrics.json, plots and a summary table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import plots, uncertainty
from ..checkpoints import save_checkpoint
from ..io import atomic_write_json
from ..metrics import regression_metrics

METAL_CUTS = np.round(np.arange(0.05, 0.951, 0.025), 3)


def finish_run(
    run_dir: Path,
    model,
    holdout,
    validation,
    tasks: list[str],
    history: list[dict],
    meta: dict,
    metrics: dict,
    mtl=None,
    progress: bool = True,
    extra=None,
) -> dict:
    """Fit the metal cuts and calibrations on ``validation``, score ``holdout`` once (and
    ``extra(model)``, a dict of further scores, if given), and write the checkpoint and
    reports. Tasks without validation labels keep a calibration they inherited
    (``meta["uncertainty"]``), if any."""
    out: dict = {"validation": {}, "holdout": {}}
    calibrations = dict(meta.get("uncertainty", {}))
    if validation is not None and len(validation):
        for t in _labelled(validation, tasks):
            if model.tasks[t].kind == "hurdle":
                model.tasks[t].metal_cut = choose_metal_cut(model, validation, t)
        preds = model.predict_arrays(validation.z, validation.frac, validation.spg, tasks)
        for t in _labelled(validation, tasks):
            y, m = _labels(validation, t)
            row = _scores(model, t, preds, y, m)
            cal = uncertainty.fit(preds[t].mean(1)[m], preds[t].std(1)[m], y[m])
            if cal is not None:
                row["calibration"] = calibrations[t] = cal
            out["validation"][t] = row
    if holdout is not None and len(holdout):  # the test rows: predicted once, nothing fitted on them
        preds = model.predict_arrays(holdout.z, holdout.frac, holdout.spg, tasks)
        nosym = model.predict_arrays(holdout.z, holdout.frac, np.zeros_like(holdout.spg), tasks)
        for t in _labelled(holdout, tasks):
            y, m = _labels(holdout, t)
            row = _scores(model, t, preds, y, m)
            row["mae_without_symmetry"] = regression_metrics(y[m], nosym[t].mean(1)[m])["mae"]
            if t in calibrations:
                row["calibrated_coverage"] = coverage(preds[t].mean(1)[m], preds[t].std(1)[m], y[m], calibrations[t])
            out["holdout"][t] = row
            plots.parity(y[m], preds[t].mean(1)[m], run_dir / f"parity_{t}.png", t, model.tasks[t].unit)
    if extra is not None:  # further scores of the finished model (after the cuts above)
        out.update(extra(model))
    records = mtl.close() if mtl is not None else []
    if records:
        # the monitor's principal angles and mean-gradient cosines, in the metrics file too
        out["gradient_geometry"] = records
        plots.geometry_traces(records, run_dir / "gradient_geometry.png")
    metrics = {**metrics, **out}
    calibrations = {t: c for t, c in calibrations.items() if t in model.tasks}
    save_checkpoint(run_dir, model, {**meta, "uncertainty": calibrations, "metrics": metrics})
    atomic_write_json(run_dir / "history.json", history)
    plots.loss_curves(history, run_dir / "loss_curves.png", title=run_dir.name)
    atomic_write_json(run_dir / "metrics.json", metrics)
    if progress:
        print_summary(run_dir, metrics)
    return out


def choose_metal_cut(model, data, task: str) -> float:
    """The metal-probability cut of a hurdle head with the lowest MAE on ``data`` (the
    validation rows); ties go to the cut nearest 0.5."""
    preds = model.predict_arrays(data.z, data.frac, data.spg, [task])
    y, m = _labels(data, task)
    p_metal, positive = preds[f"{task}_p_metal"][m], preds[f"{task}_positive"][m]
    maes = [np.abs(np.where(p_metal > c, 0.0, positive).mean(1) - y[m]).mean() for c in METAL_CUTS]
    best = min(range(len(METAL_CUTS)), key=lambda i: (round(maes[i], 12), abs(METAL_CUTS[i] - 0.5)))
    return float(METAL_CUTS[best])


def coverage(mean, spread, y, record: dict) -> dict:
    """Share of |error| within 1 and 2 calibrated sigma (rows the calibration never saw)."""
    z = np.abs(np.asarray(y) - mean) / uncertainty.apply(spread, record)
    return {"within_1sigma": float(np.mean(z <= 1.0)), "within_2sigma": float(np.mean(z <= 2.0))}


def _labelled(data, tasks) -> list[str]:
    return [t for t in tasks if t in data.targets and np.isfinite(np.asarray(data.targets[t], float)).any()]


def _labels(data, task: str):
    y = np.asarray(data.targets[task], dtype=np.float64)
    return y, np.isfinite(y)


def _scores(model, task: str, preds: dict, y, m) -> dict:
    p, s = preds[task].mean(1), preds[task].std(1)
    scores = regression_metrics(y[m], p[m])
    row = {
        "rows": int(m.sum()),
        "mae": scores["mae"],
        "rmse": scores["rmse"],
        "mean_std": float(s[m].mean()),
        "unit": model.tasks[task].unit,
    }
    if f"{task}_p_metal" in preds:
        cut = model.tasks[task].metal_cut
        row["metal_cut"] = cut
        row["metal_accuracy"] = float(((preds[f"{task}_p_metal"].mean(1) > cut) == (y <= 0))[m].mean())
    return row


def print_summary(run_dir: Path, metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{metrics.get('kind', 'run')} summary: {run_dir}")
    for col in ("task", "rows", "MAE", "RMSE", "MAE w/o symmetry", "mean ensemble std", "metal acc."):
        table.add_column(col, justify="right")
    for part in ("validation", "holdout"):
        for t, r in metrics.get(part, {}).items():
            u = r.get("unit", "")
            table.add_row(
                f"{t} ({'validation' if part == 'validation' else 'test'})",
                str(r["rows"]),
                f"{r['mae']:.4f} {u}",
                f"{r['rmse']:.4f}",
                f"{r['mae_without_symmetry']:.4f}" if "mae_without_symmetry" in r else "-",
                f"{r['mean_std']:.4f}",
                f"{r['metal_accuracy']:.3f}" if "metal_accuracy" in r else "-",
            )
    if not metrics.get("holdout") and not metrics.get("validation"):
        table.add_row("(no validation or held-out rows)", "-", "-", "-", "-", "-", "-")
    c = Console()
    c.print(table)
    extra = {k: metrics[k] for k in ("epochs", "best_epoch", "train_seconds") if k in metrics}
    c.print(f"run folder: {run_dir}  " + "  ".join(f"{k}={v}" for k, v in extra.items()))
    gate = metrics.get("metal_gate")
    if gate:
        c.print(metal_gate_line(gate))


def metal_gate_line(gate: dict) -> str:
    """One line on a run's DFT metal gate (``metrics["metal_gate"]``)."""
    if "skipped" in gate:
        return f"metal gate: off ({gate['skipped']})"
    maes = gate.get("validation_mae") or {}
    line = f"metal gate: mode {gate['mode']}, chosen on validation rows (MAE " + ", ".join(
        f"{m} {v:.4f}" for m, v in maes.items()
    )
    line += " eV)"
    if "holdout_mae_gated" in gate:
        line += f"; test MAE {gate['holdout_mae']:.4f} -> {gate['holdout_mae_gated']:.4f} eV with it"
    return line
