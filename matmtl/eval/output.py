"""Where the results go, and the only code that writes them.

``EvalSettings.out`` names the folder of the results files (``expt_gap.json``,
``mp_e_form.json``, ``mp_gap.json``, ``expt_gap_data_efficiency.png``, the per-fold test
predictions ``expt_gap_predictions.json`` and the matbench results file
``results.json.gz``); by default it is
a new folder ``<matmtl cache>/eval/results-<timestamp>``, never the repository. The page
goes to ``EvalSettings.markdown`` (default ``<out>/results.md``). Files that already
exist are replaced only with ``EvalSettings.force``: the check runs before any cell, so
a committed ``results/`` is never overwritten by accident. Every write is atomic."""

from __future__ import annotations

import gzip
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import MatmtlError
from ..io import atomic_write, atomic_write_json, cache_dir
from .report import LEADERBOARD, fraction_key, render_markdown
from .settings import EvalSettings
from .submission import split_predictions

FIGURE = "expt_gap_data_efficiency.png"
PREDICTIONS = "expt_gap_predictions.json"
PREDICTIONS_PER_VARIANT = "expt_gap_predictions_{}.json"  # when one file would be too large
SUBMISSION = "results.json.gz"
RESULT_FILES = ("expt_gap.json", "mp_e_form.json", "mp_gap.json", FIGURE, PREDICTIONS, SUBMISSION)
PAGE = "results.md"
MAX_FILE_BYTES = 1 << 20  # every results file stays under 1 MiB
SPLIT_ABOVE = 900 * 1024  # the predictions file is cut per variant above this size


@dataclass(frozen=True)
class Outputs:
    """The results folder and the page (None: no page)."""

    out: Path
    page: Path | None

    def files(self) -> list[Path]:
        return [self.out / n for n in RESULT_FILES] + ([self.page] if self.page else [])

    def existing(self) -> list[Path]:
        """The results files a write would replace."""
        split = sorted(self.out.glob(PREDICTIONS_PER_VARIANT.format("*"))) if self.out.is_dir() else []
        return [p for p in self.files() if p.exists()] + split


def planned_outputs(s: EvalSettings) -> Outputs | None:
    """The outputs of ``s`` when its ``out`` is given (None: a new default folder)."""
    if s.out is None:
        return None
    out = Path(s.out).expanduser()
    return Outputs(out, _page(s, out))


def _page(s: EvalSettings, out: Path) -> Path | None:
    if not s.page:
        return None
    return Path(s.markdown).expanduser() if s.markdown else out / PAGE


def new_results_dir(root: Path | None = None) -> Path:
    """A new, empty folder ``<cache>/eval/results-<timestamp>[-n]`` (made atomically)."""
    root = root or cache_dir() / "eval"
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = root / (f"results-{stamp}" + (f"-{i + 1}" if i else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise MatmtlError(f"could not create a new results folder under {root}")


def prepare_outputs(s: EvalSettings) -> Outputs:
    """The outputs of an evaluation, checked before any work: existing results files are
    refused unless ``EvalSettings.force`` (the error names every one)."""
    planned = planned_outputs(s)
    if planned is None:
        out = new_results_dir()
        return Outputs(out, _page(s, out))
    existing = planned.existing()
    if existing and not s.force:
        raise MatmtlError(
            f"{', '.join(map(str, existing))} already exist(s); the evaluation never replaces results "
            "files unless EvalSettings.force=True (or give another out folder)"
        )
    return planned


def read_json(path: Path) -> dict:
    """A results file, or {} (absent or unreadable)."""
    try:
        obj = json.loads(Path(path).read_text())
        return obj if isinstance(obj, dict) else {}
    except (OSError, ValueError):
        return {}


def prediction_files(obj: dict) -> dict[str, dict]:
    """The predictions file(s): one ``expt_gap_predictions.json``, or one file per
    variant when that would exceed :data:`SPLIT_ABOVE` bytes."""
    if not obj.get("variants"):
        return {}
    if len(_json_text(obj)) <= SPLIT_ABOVE:
        return {PREDICTIONS: obj}
    return {PREDICTIONS_PER_VARIANT.format(v): part for v, part in split_predictions(obj).items()}


def read_predictions(out: Path) -> dict:
    """The predictions of an earlier invocation in ``out`` (one file or per variant
    files, merged), or {}."""
    merged: dict = {}
    for p in [Path(out) / PREDICTIONS, *sorted(Path(out).glob(PREDICTIONS_PER_VARIANT.format("*")))]:
        obj = read_json(p)
        if not obj:
            continue
        merged = {
            **obj,
            **{key: {**merged.get(key, {}), **obj.get(key, {})} for key in ("variants", "folds", "validation")},
        }
    return merged


def _json_text(obj) -> bytes:
    return (json.dumps(obj, indent=None, separators=(",", ":")) + "\n").encode()


def _write_small(path: Path, data: bytes) -> None:
    if len(data) >= MAX_FILE_BYTES:
        raise MatmtlError(f"{path}: {len(data)} bytes; results files stay under {MAX_FILE_BYTES} bytes")
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_predictions(out: Path, files: dict[str, dict]) -> None:
    """Write the predictions file(s) (compact JSON, each < 1 MiB); stale ones of the
    other layout are removed."""
    for name, obj in files.items():
        _write_small(out / name, _json_text(obj))
    if files:
        for p in [out / PREDICTIONS, *out.glob(PREDICTIONS_PER_VARIANT.format("*"))]:
            if p.name not in files and p.is_file():
                p.unlink()


def write_submission(path: Path, obj: dict) -> None:
    """The matbench results file: gzipped JSON (no timestamp in the gzip header)."""
    raw = json.dumps(obj).encode()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh, gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as gz:
            gz.write(raw)

    atomic_write(path, write)
    if path.stat().st_size >= MAX_FILE_BYTES:
        raise MatmtlError(f"{path}: larger than {MAX_FILE_BYTES} bytes")


def write_results(
    outputs: Outputs,
    expt: dict,
    mp: dict[str, dict],
    *,
    predictions: dict[str, dict] | None = None,
    submission: dict | None = None,
) -> dict[str, dict]:
    """Write the results JSON files, the predictions file(s) (``predictions``: name ->
    content, see :func:`prediction_files`), the matbench results file, the
    data-efficiency plot and the page; returns the results by name."""
    out = outputs.out
    out.mkdir(parents=True, exist_ok=True)
    files = {"expt_gap": expt, **mp}
    for name, res in files.items():
        atomic_write_json(out / f"{name}.json", res)
    write_predictions(out, predictions or {})
    if submission is not None:
        write_submission(out / SUBMISSION, submission)
    fig = plot_data_efficiency(expt, out / FIGURE)
    if outputs.page:
        page = outputs.page
        mp_all = {n: mp.get(n) or read_json(out / f"{n}.json") for n in ("mp_e_form", "mp_gap")}
        text = render_markdown(expt, mp_all["mp_e_form"], mp_all["mp_gap"], relative_link(fig, page) if fig else None)
        atomic_write(page, lambda tmp: tmp.write_text(text))
    return files


def relative_link(target: Path, page: Path) -> str:
    return Path(os.path.relpath(Path(target).resolve(), Path(page).resolve().parent)).as_posix()


def plot_data_efficiency(expt: dict, path: Path) -> Path | None:
    """MAE vs training share (log x), one line per variant with the fold std as error
    bars, leaderboard MAEs as dotted lines."""
    de = expt.get("data_efficiency") or {}
    variants = de.get("variants") or {}
    if not variants:
        return None
    from ..plots import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    drew = False
    for name, cells in variants.items():
        xs, ys, es = [], [], []
        for x in de.get("fractions", []):
            c = cells.get(fraction_key(x)) or {}
            if c.get("mae_mean") is not None:
                xs.append(x), ys.append(c["mae_mean"]), es.append(c.get("mae_std") or 0.0)
        if xs:
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=name)
            drew = True
    if not drew:
        plt.close(fig)
        return None
    refs = {n: m for n, m, _ in LEADERBOARD.get(expt.get("task", ""), [])}
    for label in ("Ax/SAASBO CrabNet", "RF-SCM/Magpie"):  # a leading entry and the classic baseline
        if label not in refs:
            continue
        mae = refs[label]
        ax.axhline(mae, ls=":", lw=1, color="grey")
        # x in axes fractions (the data x-axis is logarithmic), y in data units
        ax.text(
            0.01,
            mae,
            f"leaderboard: {label} {mae}",
            fontsize=7,
            va="bottom",
            color="grey",
            transform=ax.get_yaxis_transform(),
        )
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(de.get("fractions", []))
    ax.set_xticklabels([f"{x:.0%}" for x in de.get("fractions", [])])
    ax.set_xlabel("share of each training fold")
    ax.set_ylabel(f"test MAE ({expt.get('unit')})")
    ax.set_title("matbench_expt_gap: data efficiency" + (" (quick settings)" if expt.get("quick") else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path
