"""Cold start of a prediction, side by side with `import torch` alone.

Each case runs in a fresh Python process with no matmtl cache (MATMTL_CACHE_DIR: a new
empty folder), an empty data folder (MATMTL_DATA_DIR) and a temporary working directory,
importing matmtl from this source tree (or --source, e.g. another checkout, for a
before/after comparison; bytecode caches go to a temporary folder, never into a source
tree; --compare DIR adds the formula case imported from DIR, e.g. the previous
commit's checkout, in the same rounds). The cases run interleaved (round 1: every case,
round 2: every case, ...) so a change of machine load hits them alike; an untimed first
round writes the bytecode caches. Reported per case: the median wall time of the whole
process over --repeats rounds (with min and max), its excess over `import torch` alone,
and the peak resident memory (the largest over the rounds). The goal: import + load +
first prediction within 1 s of `import torch`, well under 1 GB.

    python scripts/bench_coldstart.py [--repeats 7] [--threads N] [--source DIR] [--compare DIR]
                                      [--json results/bench_coldstart.json]

Timings depend on the machine's load: the load average before and after is printed and
stored. --threads N sets OMP_NUM_THREADS / MKL_NUM_THREADS in every case (torch's own
default otherwise); on a busy machine one thread keeps the first forward pass from waiting
on threads the scheduler is not running.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[1]
GAN = (
    "from pymatgen.core import Lattice, Structure; "
    "s = Structure.from_spacegroup('P6_3mc', Lattice.hexagonal(3.189, 5.185), ['Ga', 'N'], "
    "[[1/3, 2/3, 0], [1/3, 2/3, 0.375]])"
)
FORMULA_CASE = "predict('GaN'): import + load + first prediction"
CASES = {
    "import torch": "import torch",
    "import matmtl": "import matmtl",
    FORMULA_CASE: "import matmtl; matmtl.predict('GaN', model=MODEL)",
    "predict(Structure) (pymatgen imported first)": f"{GAN}; import matmtl; matmtl.predict(s, model=MODEL)",
}
BASE = "import torch"
PROBE = (
    "import resource, sys, time; t = time.perf_counter(); MODEL = sys.argv[1] or None\n{code}\n"
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
)


def child_env(source: Path, pycache: Path, data: Path, cache: Path, threads: int | None) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONPATH": str(source),
        "PYTHONPYCACHEPREFIX": str(pycache),
        "MATMTL_CACHE_DIR": str(cache),
        "MATMTL_DATA_DIR": str(data),
    }
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def run_case(code: str, model: str, env: dict[str, str], cwd: Path) -> tuple[float, float, float]:
    """(wall seconds of the whole process, seconds inside it, peak RSS in MB)."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(code=code), model],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
    )
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"case failed ({code}):\n{out.stderr[-2000:]}")
    inner, rss_kb = out.stdout.split()[-2:]
    return wall, float(inner), float(rss_kb) / 1024


def measure(model: str, repeats: int, threads: int | None, source: Path, compare: Path | None) -> dict[str, dict]:
    cases = {name: (code, source) for name, code in CASES.items()}
    if compare is not None:
        cases[f"{FORMULA_CASE}, matmtl from {compare}"] = (CASES[FORMULA_CASE], compare)
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in cases}
    with tempfile.TemporaryDirectory(prefix="matmtl-coldstart-") as tmp:
        tmp = Path(tmp)
        for sub in ("cwd", "data"):
            (tmp / sub).mkdir()
        for r in range(repeats + 1):  # round 0 is the untimed warm-up
            for name, (code, src) in cases.items():
                cache = Path(tempfile.mkdtemp(prefix="cache-", dir=tmp))  # empty: no run of the user's
                env = child_env(src, tmp / "pycache", tmp / "data", cache, threads)
                result = run_case(code, model, env, tmp / "cwd")
                if r:
                    runs[name].append(result)
    base = statistics.median(w for w, _, _ in runs[BASE])
    rows = {}
    for name, rs in runs.items():
        walls = [w for w, _, _ in rs]
        rows[name] = {
            "wall_s": statistics.median(walls),
            "wall_min_s": min(walls),
            "wall_max_s": max(walls),
            "in_process_s": statistics.median(i for _, i, _ in rs),
            "peak_rss_mb": max(m for _, _, m in rs),
            "over_import_torch_s": statistics.median(walls) - base,
            "wall_runs_s": walls,
        }
    return rows


def main(
    model: str = typer.Option(
        "", "--model", help="Model name or path (default: what load_model() picks: the shipped one)."
    ),
    repeats: int = typer.Option(7, "--repeats", min=1, help="Timed rounds (after one untimed warm-up round)."),
    threads: int = typer.Option(0, "--threads", min=0, help="OMP/MKL threads in every case (0: torch's default)."),
    source: Path = typer.Option(ROOT, "--source", help="The source tree matmtl is imported from."),
    compare: Path = typer.Option(None, "--compare", help="Also time the formula case with matmtl from this tree."),
    json_out: Path = typer.Option(None, "--json", help="Write the figures here too."),
) -> None:
    source = source.resolve()
    compare = compare.resolve() if compare else None
    load_before = os.getloadavg()
    rows = measure(model, repeats, threads or None, source, compare)
    load_after = os.getloadavg()
    width = max(map(len, rows))
    typer.echo(f"{'case':{width}s} {'median':>8s} {'min-max':>13s} {'vs import torch':>16s} {'peak RSS':>10s}")
    for name, r in rows.items():
        typer.echo(
            f"{name:{width}s} {r['wall_s']:7.2f}s {r['wall_min_s']:5.2f}-{r['wall_max_s']:5.2f}s "
            f"{r['over_import_torch_s']:+15.2f}s {r['peak_rss_mb']:7.0f} MB"
        )
    typer.echo(
        f"matmtl from {source}; {repeats} rounds, median wall time of fresh processes; "
        f"threads: {threads or 'torch default'}; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after ({os.cpu_count()} CPUs)"
    )
    if json_out:
        doc = {
            "cases": rows,
            "baseline": BASE,
            "repeats": repeats,
            "threads": threads or "torch default",
            "model": model or "default",
            "source": str(source),
            "compare": str(compare) if compare else None,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "machine": platform.processor() or platform.machine(),
            "command": "python " + " ".join(sys.argv),
        }
        json_out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
