"""Task relatedness over training, from the gradient-monitor records a run wrote.

Two record shapes are understood:

* the geometry monitor (:mod:`matmtl.mtl.monitor`): ``{"step", "tasks": [T names],
  "angles": T×T×k principal angles (radians, ascending), "mean_cosine": T×T}``;
  each task's gradient subspace is spanned by its gradients on k micro-batches;
* the older cosine monitor: ``{"step", "a|b": cosine, ...}``.

Per task pair and run: the mean over records of each principal angle (degrees), the
mean, minimum and last-third mean of the mean-gradient cosine, and the share of
records with a negative cosine (conflicting gradients). Folds are then averaged.
"""

from __future__ import annotations

import math

import numpy as np


def _pairs_from_record(rec: dict) -> dict[str, dict]:
    out: dict[str, dict] = {}
    if "tasks" in rec and "mean_cosine" in rec:
        tasks = list(rec["tasks"])
        cos = np.asarray(rec["mean_cosine"], dtype=np.float64)
        ang = np.asarray(rec["angles"], dtype=np.float64) if rec.get("angles") is not None else None
        for i in range(len(tasks)):
            for j in range(i + 1, len(tasks)):
                row = {"cosine": float(cos[i, j])}
                if ang is not None and ang.ndim == 3:
                    row["angles_deg"] = np.degrees(ang[i, j]).tolist()
                out[f"{tasks[i]}|{tasks[j]}"] = row
        return out
    for k, v in rec.items():
        if "|" in k and isinstance(v, (int, float)):
            out[k] = {"cosine": float(v)}
    return out


def summarize_records(records: list[dict]) -> dict:
    """Per-pair summary of one run's monitor records ({} when there are none)."""
    if not records:
        return {}
    records = sorted(records, key=lambda r: r.get("step", 0))
    series: dict[str, list[dict]] = {}
    for rec in records:
        for pair, row in _pairs_from_record(rec).items():
            series.setdefault(pair, []).append({"step": rec.get("step", 0), **row})
    out = {}
    for pair, rows in series.items():
        cos = np.array([r["cosine"] for r in rows])
        last = cos[len(cos) - max(1, len(cos) // 3) :]
        s = {
            "records": len(rows),
            "first_step": int(rows[0]["step"]),
            "last_step": int(rows[-1]["step"]),
            "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()),
            "cosine_first_third": float(cos[: max(1, len(cos) // 3)].mean()),
            "cosine_last_third": float(last.mean()),
            "conflict_share": float((cos < 0).mean()),
        }
        angs = [r["angles_deg"] for r in rows if "angles_deg" in r]
        if angs:
            k = min(len(a) for a in angs)
            a = np.array([x[:k] for x in angs])
            s["principal_angles_deg_mean"] = a.mean(0).tolist()
            s["principal_angle_min_deg_mean"] = float(a[:, 0].mean())
        out[pair] = s
    return out


def average_over_folds(per_fold: dict[int, dict]) -> dict:
    """Mean over folds of each numeric summary field, per task pair."""
    pairs = sorted({p for s in per_fold.values() for p in s})
    out = {}
    for pair in pairs:
        rows = [s[pair] for s in per_fold.values() if pair in s]
        agg = {"folds": len(rows)}
        for key in (
            "cosine_mean",
            "cosine_min",
            "cosine_first_third",
            "cosine_last_third",
            "conflict_share",
            "principal_angle_min_deg_mean",
        ):
            vals = [r[key] for r in rows if r.get(key) is not None and math.isfinite(r[key])]
            if vals:
                agg[key] = float(np.mean(vals))
        angs = [r["principal_angles_deg_mean"] for r in rows if "principal_angles_deg_mean" in r]
        if angs:
            k = min(len(a) for a in angs)
            agg["principal_angles_deg_mean"] = np.mean([a[:k] for a in angs], axis=0).tolist()
        agg["records"] = int(sum(r["records"] for r in rows))
        out[pair] = agg
    return out
