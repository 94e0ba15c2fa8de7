"""End of a run: final held-out scores, checkpoint, metrics.json, plots, summary table."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..checkpoints import save_checkpoint
from ..io import atomic_write_json
from ..metrics import regression_metrics
from .. import plots, uncertainty


def finish_run(run_dir: Path, model, holdout, tasks: list[str], history: list[dict], meta: dict, metrics: dict,
               mtl=None, progress: bool = True) -> dict:
    out: dict = {"holdout": {}}
    # ensemble spreads recalibrated on the held-out rows (see matmtl.uncertainty);
    # tasks without held-out labels keep a calibration they inherited, if any
    calibrations = dict(meta.get("uncertainty", {}))
    if holdout is not None and len(holdout):
        preds = model.predict_arrays(holdout.z, holdout.frac, holdout.spg, tasks)
        nosym = model.predict_arrays(holdout.z, holdout.frac, np.zeros_like(holdout.spg), tasks)
        for t in tasks:
            y = np.asarray(holdout.targets[t], dtype=np.float64)
            m = np.isfinite(y)
            if not m.any():
                continue
            p, s = preds[t].mean(1), preds[t].std(1)
            scores = regression_metrics(y[m], p[m])
            row = {
                "rows": int(m.sum()), "mae": scores["mae"], "rmse": scores["rmse"],
                "mae_without_symmetry": regression_metrics(y[m], nosym[t].mean(1)[m])["mae"],
                "mean_std": float(s[m].mean()), "unit": model.tasks[t].unit,
            }
            cal = uncertainty.fit(p[m], s[m], y[m])
            if cal is not None:
                row["calibration"] = cal
                calibrations[t] = cal
            if f"{t}_p_metal" in preds:
                row["metal_accuracy"] = float(((preds[f"{t}_p_metal"].mean(1) > 0.5) == (y <= 0))[m].mean())
            out["holdout"][t] = row
            plots.parity(y[m], p[m], run_dir / f"parity_{t}.png", t, model.tasks[t].unit)
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


def print_summary(run_dir: Path, metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{metrics.get('kind', 'run')} summary: {run_dir}")
    for col in ("task", "held-out rows", "MAE", "RMSE", "MAE w/o symmetry", "mean ensemble std", "metal acc."):
        table.add_column(col, justify="right")
    for t, r in metrics.get("holdout", {}).items():
        u = r.get("unit", "")
        table.add_row(t, str(r["rows"]), f"{r['mae']:.4f} {u}", f"{r['rmse']:.4f}", f"{r['mae_without_symmetry']:.4f}",
                      f"{r['mean_std']:.4f}", f"{r['metal_accuracy']:.3f}" if "metal_accuracy" in r else "-")
    if not metrics.get("holdout"):
        table.add_row("(no held-out rows)", "-", "-", "-", "-", "-", "-")
    c = Console()
    c.print(table)
    extra = {k: metrics[k] for k in ("epochs", "train_seconds") if k in metrics}
    c.print(f"run folder: {run_dir}  " + "  ".join(f"{k}={v}" for k, v in extra.items()))
