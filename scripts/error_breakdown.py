"""Where the test error of a matbench_expt_gap evaluation comes from: the metal/non-metal
decision or the size of the gap (issue #14).

    python scripts/error_breakdown.py results/expt_gap_predictions.json \
        --json results/expt_gap_error_breakdown.json

Reads the test predictions that ``matmtl evaluate`` writes (``expt_gap_predictions.json``:
per fold the measured gaps, per variant the predictions in the same order) and splits each
variant's absolute error over all its test rows (eV) into four parts:
  - ``metal_called_gapped``: measured 0 eV (a metal), predicted above 0;
  - ``gapped_called_metal``: measured above 0, predicted exactly 0 (the gap head's metal
    decision; a regressor that never says 0 has no rows here);
  - ``gap_size``: measured and predicted above 0 (the regression error);
  - ``metal_called_metal``: both 0 (no error).
Each part has its row count, its mean absolute error and its share of the summed error;
the parts' errors add up to the variant's MAE times its rows. ``finetune_anchor`` is the
anchored recipe: per fold the anchor source the evaluation chose on validation rows
(``anchor_source_per_fold``), when the file has it. Nothing is fitted here; the test rows
are only scored.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

PARTS = ("metal_called_gapped", "gapped_called_metal", "gap_size", "metal_called_metal")


def breakdown(target, pred) -> dict:
    """The four parts of the absolute error of ``pred`` against ``target`` (eV)."""
    y, p = np.asarray(target, dtype=float), np.asarray(pred, dtype=float)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"targets {y.shape} and predictions {p.shape} must be 1-D of the same length")
    if not (np.isfinite(y).all() and np.isfinite(p).all()):
        raise ValueError("targets and predictions must be finite")
    err = np.abs(p - y)
    metal, said_metal = y == 0, p == 0
    masks = {
        "metal_called_gapped": metal & ~said_metal,
        "gapped_called_metal": ~metal & said_metal,
        "gap_size": ~metal & ~said_metal,
        "metal_called_metal": metal & said_metal,
    }
    total = float(err.sum())
    parts = {
        name: {
            "rows": int(m.sum()),
            "mae": float(err[m].mean()) if m.any() else None,
            "error_share": float(err[m].sum() / total) if total > 0 else 0.0,
        }
        for name, m in masks.items()
    }
    return {"rows": int(y.size), "mae": float(err.mean()), "unit": "eV", "parts": parts}


def variants_of(predictions: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each variant's (targets, predictions) over every fold it ran, in fold order; with
    ``anchor_source_per_fold``, also ``finetune_anchor`` (the chosen source per fold)."""
    folds, runs = predictions["folds"], dict(predictions["variants"])
    chosen = predictions.get("anchor_source_per_fold") or {}
    sources = {k: runs.get(f"finetune_anchor_{src}", {}) for k, src in chosen.items()}
    if sources and all(k in run for k, run in sources.items()):
        runs["finetune_anchor"] = {k: run[k] for k, run in sources.items()}
    out = {}
    for name, per_fold in runs.items():
        keys = sorted(per_fold, key=int)
        out[name] = (
            np.concatenate([np.asarray(folds[k]["target"], dtype=float) for k in keys]),
            np.concatenate([np.asarray(per_fold[k], dtype=float) for k in keys]),
        )
    return out


def table(result: dict) -> str:
    lines = [
        "| variant | rows | MAE (eV) | " + " | ".join(f"{p}: rows, MAE, share" for p in PARTS) + " |",
        "|---|---|---|" + "---|" * len(PARTS),
    ]
    for name, b in result["variants"].items():
        cells = []
        for p in PARTS:
            part = b["parts"][p]
            mae = "–" if part["mae"] is None else f"{part['mae']:.3f}"
            cells.append(f"{part['rows']}, {mae}, {100 * part['error_share']:.0f}%")
        lines.append(f"| `{name}` | {b['rows']} | {b['mae']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("predictions", type=Path, help="expt_gap_predictions.json of a matmtl evaluate run")
    ap.add_argument("--json", type=Path, default=None, help="write the breakdown here")
    args = ap.parse_args(argv)
    try:
        runs = variants_of(json.loads(args.predictions.read_text()))
        variants = {name: breakdown(y, p) for name, (y, p) in runs.items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: cannot read the predictions in {args.predictions}: {exc}", file=sys.stderr)
        return 2
    result = {
        "about": " ".join(__doc__.split("\n\n")[2].split()),
        "source": str(args.predictions),
        "command": "python " + " ".join(["scripts/error_breakdown.py", *(argv if argv is not None else sys.argv[1:])]),
        "variants": variants,
    }
    return publish(table(result), result, args.json)


def publish(text: str, result: dict, path: Path | None) -> int:
    """Print ``text`` (the table), write ``result`` to ``path`` if given; exit status 0."""
    print(text)
    if path:
        from matmtl.io import atomic_write_json

        atomic_write_json(path, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
