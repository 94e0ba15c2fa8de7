"""PNG plots for run folders: loss curves, parity plots and (when recorded) gradient
gradient-geometry traces. Uses matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def loss_curves(history: list[dict], path: Path, title: str = "") -> Path | None:
    if not history:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ep = [h["epoch"] for h in history]
    for k in sorted({k for h in history for k in h if k.startswith("loss")}):
        axes[0].plot(ep, [h.get(k, np.nan) for h in history], label=k)
    (
        axes[0].set_xlabel("epoch"),
        axes[0].set_ylabel("training loss"),
        axes[0].set_yscale("log"),
        axes[0].legend(fontsize=8),
    )
    for k in sorted({k for h in history for k in h if k.startswith(("val_mae", "mae"))}):
        axes[1].plot(ep, [h.get(k, np.nan) for h in history], marker=".", label=k)
    axes[1].set_xlabel("epoch"), axes[1].set_ylabel("held-out MAE"), axes[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parity(y: np.ndarray, p: np.ndarray, path: Path, name: str, unit: str, std: np.ndarray | None = None) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    mae = float(np.mean(np.abs(y - p)))
    ax.scatter(y, p, s=3, alpha=0.35, c="tab:blue", rasterized=True)
    lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel(f"true {name} ({unit})"), ax.set_ylabel(f"predicted {name} ({unit})")
    ax.set_title(f"{name}: MAE {mae:.3f} {unit} (n={len(y)})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def geometry_traces(records: list[dict], path: Path) -> Path | None:
    """The gradient-geometry monitor over training: for each task pair, the smallest
    and largest principal angle between the tasks' gradient subspaces (degrees) and
    the cosine of their mean gradients, against the step."""
    if not records:
        return None
    plt = _plt()
    fig, (ax_a, ax_c) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [r["step"] for r in records]
    tasks = records[0]["tasks"]
    for i in range(len(tasks)):
        for j in range(i + 1, len(tasks)):
            label = f"{tasks[i]} | {tasks[j]}"
            ang = np.degrees(np.array([r["angles"][i][j] for r in records]))  # (steps, k)
            (line,) = ax_a.plot(steps, ang[:, 0], label=f"{label}: smallest")
            ax_a.plot(steps, ang[:, -1], ls="--", color=line.get_color(), label=f"{label}: largest")
            ax_c.plot(steps, [r["mean_cosine"][i][j] for r in records], color=line.get_color(), label=label)
    ax_a.set_ylim(0, 90), ax_a.set_xlabel("step"), ax_a.set_ylabel("principal angle (deg)")
    ax_a.set_title("task gradient subspaces"), ax_a.legend(fontsize=7)
    ax_c.axhline(0, color="k", lw=0.5)
    (
        ax_c.set_ylim(-1, 1),
        ax_c.set_xlabel("step"),
        ax_c.set_ylabel("cosine of mean task gradients"),
        ax_c.legend(fontsize=7),
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
