"""Data-parallel training speed on this machine, side by side in one run: throughput of one
and two processes, and the share of a two-process step spent communicating (or waiting
for the other process).

    python scripts/bench_distributed.py [--rows 1024] [--batch 256] [--size default] [--json FILE]

Two cases: a plain step (static weights, no surgery: DistributedDataParallel) and a
GradNorm + PCGrad step (the (T, d) task gradients all-reduced before the surgery). Each is
trained on seeded synthetic rows (two tasks) in four set-ups:

* ``1 process, 1 thread`` and ``1 process, 2 threads`` on the global batch;
* ``2 processes, 1 thread each`` on the global batch (each computes half of it);
* ``1 process, half batch``: what each of the two processes computes, alone.

The communication share of a two-process step is 1 - t(half batch) / t(2 processes): the
part of the step that is not its own compute (all-reduces, and waiting for the slower
process). matmtl's own collectives (the path without DDP) are also timed directly.
Epoch times: the fastest epoch after the first (warm-up) of each set-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CASES = {"plain (DDP)": ("static", "none"), "gradnorm+pcgrad (collectives)": ("gradnorm", "pcgrad")}


def synthetic(n: int, members: int):
    from matmtl.train.engine import TaskData

    rng = np.random.default_rng(0)
    k = rng.integers(1, 6, n)
    z = np.zeros((n, 10), np.int64)
    frac = np.zeros((n, 10), np.float32)
    for i in range(n):
        z[i, : k[i]] = rng.choice(np.arange(1, 84), k[i], replace=False)
        f = rng.random(k[i]) + 0.1
        frac[i, : k[i]] = f / f.sum()
    spg = rng.integers(0, 231, n).astype(np.int64)
    signal = (frac[:, 0] * (z[:, 0] % 7)).astype(np.float32)
    targets = {
        "e_form": signal - 1.5 + 0.3 * rng.standard_normal(n).astype(np.float32),
        "gap_pbe": np.maximum(0, signal - 1 + rng.standard_normal(n)).astype(np.float32),
    }
    return TaskData(z, frac, spg, targets).with_bootstrap(members, 0)


def synthetic_trainer(cfg, balancer: str, surgery: str, size: str, rows: int, folder: Path, **trainer_kw):
    """(model, Trainer) of the two-task model of preset ``size`` on ``rows`` synthetic rows,
    saving no state (the benchmarks time the training only)."""
    from matmtl.config import MTLConfig
    from matmtl.models import ModelConfig, MultiTaskModel, TaskSpec
    from matmtl.train.engine import Source, Trainer

    mcfg = ModelConfig.preset(size)
    model = MultiTaskModel(mcfg, [TaskSpec("e_form", "regression", "eV/atom"), TaskSpec("gap_pbe", "hurdle", "eV")])
    sources = [Source(synthetic(rows, mcfg.members), ["e_form", "gap_pbe"], cfg.batch_size)]
    mtl = MTLConfig(balancer=balancer, surgery=surgery)
    trainer = Trainer(model, cfg, mtl, sources, folder, **trainer_kw)
    trainer.save_state = lambda: None
    return model, trainer


def worker(args) -> None:
    """One process: train, print the timings (rank 0) as one JSON line."""
    import tempfile

    import torch

    from matmtl import distributed
    from matmtl.config import TrainConfig
    from matmtl.train.engine import set_determinism

    world = distributed.join("cpu", 600)
    blocked = {"s": 0.0}
    for name in ("sum_", "sum_grads_"):  # time spent inside matmtl's own collectives
        real = getattr(distributed.World, name)

        def timed(self, *a, _real=real, **k):
            t = time.perf_counter()
            try:
                return _real(self, *a, **k)
            finally:
                blocked["s"] += time.perf_counter() - t

        setattr(distributed.World, name, timed)
    balancer, surgery = CASES[args.case]
    cfg = TrainConfig.preset("default", epochs=args.epochs, batch_size=args.batch, threads=args.threads)
    set_determinism(cfg.seed, cfg.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model, trainer = synthetic_trainer(cfg, balancer, surgery, args.size, args.rows, Path(tmp), world=world)
        history = trainer.fit()
    seconds = [h["seconds"] for h in history[1:]] or [history[0]["seconds"]]
    if world.is_main:
        steps = trainer.steps_per_epoch
        shared = sum(p.numel() for p in model.shared_parameters())
        print(
            "RESULT "
            + json.dumps(
                {
                    "epoch_seconds": min(seconds),
                    "step_ms": 1000 * min(seconds) / steps,
                    "rows_per_s": args.rows / min(seconds),
                    "steps_per_epoch": steps,
                    "in_matmtl_collectives_ms_per_step": 1000 * blocked["s"] / (steps * len(history)),
                    "shared_parameters": shared,
                }
            ),
            flush=True,
        )
    del torch


def launch(n: int, argv: list[str], threads: int) -> dict:
    """``n`` processes of this script's worker, with torchrun's environment; rank 0's result."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(n):
        env = {**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(n), "LOCAL_WORLD_SIZE": str(n)}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS=str(threads))
        cmd = [sys.executable, __file__, "--worker", "--threads", str(threads), *argv]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=1800) for p in procs]
    for p, (_, err) in zip(procs, outs):
        if p.returncode != 0:
            raise SystemExit(f"a benchmark process failed:\n{err[-3000:]}")
    line = next(x for x in outs[0][0].splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--size", default="default", help="model preset (tiny, default, large)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--case", default="plain (DDP)", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    results, load_before = {}, os.getloadavg()
    for case in CASES:
        base = ["--case", case, "--epochs", str(args.epochs), "--size", args.size]
        full = [*base, "--rows", str(args.rows), "--batch", str(args.batch)]
        half = [*base, "--rows", str(args.rows // 2), "--batch", str(args.batch // 2)]
        r = {
            "1 process, 1 thread": launch(1, full, 1),
            "1 process, 2 threads": launch(1, full, 2),
            "2 processes, 1 thread each": launch(2, full, 1),
            "1 process, half batch (the compute of each of 2)": launch(1, half, 1),
        }
        two, half_step = r["2 processes, 1 thread each"], r["1 process, half batch (the compute of each of 2)"]
        r["speedup 2 processes vs 1 process 1 thread"] = r["1 process, 1 thread"]["step_ms"] / two["step_ms"]
        r["speedup 2 processes vs 1 process 2 threads"] = r["1 process, 2 threads"]["step_ms"] / two["step_ms"]
        r["communication share of a 2-process step"] = max(0.0, 1 - half_step["step_ms"] / two["step_ms"])
        results[case] = r
        print(
            f"\n{case}: rows {args.rows}, global batch {args.batch}, model {args.size}, load {os.getloadavg()[0]:.1f}"
        )
        for name in ("1 process, 1 thread", "1 process, 2 threads", "2 processes, 1 thread each"):
            print(f"  {name:30s} {r[name]['step_ms']:8.1f} ms/step  {r[name]['rows_per_s']:8.0f} rows/s")
        print(f"  {'each process alone (half)':30s} {half_step['step_ms']:8.1f} ms/step")
        print(
            f"  speedup {r['speedup 2 processes vs 1 process 1 thread']:.2f}x vs 1 thread, "
            f"{r['speedup 2 processes vs 1 process 2 threads']:.2f}x vs 2 threads; communication share "
            f"{100 * r['communication share of a 2-process step']:.0f}% "
            f"(in matmtl's collectives: {two['in_matmtl_collectives_ms_per_step']:.1f} ms/step)"
        )
    if args.json:
        out = {
            "command": "python " + " ".join(sys.argv),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "date": time.strftime("%Y-%m-%d"),
            "settings": {"rows": args.rows, "batch": args.batch, "epochs": args.epochs, "model": args.size},
            "load_average_1_5_15_min": {"before": load_before, "after": os.getloadavg()},
            "note": "epoch time: the fastest epoch after the first; each process 1 torch thread unless said; "
            "a load average above the core count means other jobs shared the CPU",
            "cases": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
