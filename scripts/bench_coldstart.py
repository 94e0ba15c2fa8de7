"""Cold start of a prediction, side by side with `import torch` alone: each case runs in
fresh processes (median wall time of --repeats runs, peak resident memory). The goal:
import + load + first prediction within 1 s of `import torch`, well under 1 GB.

    python scripts/bench_coldstart.py [--model NAME_OR_PATH] [--json results/bench_coldstart.json]
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import typer

CASES = {
    "import torch": "import torch",
    "import matmtl": "import matmtl",
    "predict('GaN') from a formula": "import matmtl; matmtl.predict('GaN', model=MODEL)",
    "predict(structure) from a pymatgen Structure": (
        "from pymatgen.core import Lattice, Structure; import matmtl; "
        "s = Structure.from_spacegroup('P6_3mc', Lattice.hexagonal(3.189, 5.185), ['Ga', 'N'], "
        "[[1/3, 2/3, 0], [1/3, 2/3, 0.375]]); matmtl.predict(s, model=MODEL)"
    ),
}
PROBE = (
    "import resource, time, sys; t = time.perf_counter(); MODEL = sys.argv[1] or None\n{code}\n"
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
)


def run_case(code: str, model: str) -> tuple[float, float, float]:
    """(wall seconds of the whole process, seconds inside it, peak RSS in MB)."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(code=code), model],
        capture_output=True,
        text=True,
        check=True,
        env={"MATMTL_CACHE_DIR": "/nonexistent-matmtl-cache", "PATH": "/usr/bin:/bin"},
    )
    wall = time.perf_counter() - t0
    inner, rss_kb = out.stdout.split()[-2:]
    return wall, float(inner), float(rss_kb) / 1024


def main(
    model: str = typer.Option("", "--model", help="Model name or path (default: what load_model() picks)."),
    repeats: int = typer.Option(5, "--repeats", min=1),
    json_out: Path = typer.Option(None, "--json", help="Write the figures here too."),
) -> None:
    rows = {}
    for name, code in CASES.items():
        runs = [run_case(code, model) for _ in range(repeats)]
        rows[name] = {
            "wall_s": statistics.median(r[0] for r in runs),
            "in_process_s": statistics.median(r[1] for r in runs),
            "peak_rss_mb": max(r[2] for r in runs),
        }
    base = rows["import torch"]["wall_s"]
    for name, r in rows.items():
        r["over_import_torch_s"] = r["wall_s"] - base
        typer.echo(
            f"{name:48s} {r['wall_s']:6.2f} s  (+{r['over_import_torch_s']:5.2f} s vs import torch)  "
            f"peak {r['peak_rss_mb']:6.0f} MB"
        )
    if json_out:
        json_out.write_text(
            json.dumps(
                {
                    "cases": rows,
                    "repeats": repeats,
                    "model": model or "default",
                    "python": sys.version.split()[0],
                    "machine": platform.processor() or platform.machine(),
                    "command": " ".join(sys.argv),
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    typer.run(main)
