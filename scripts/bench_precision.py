"""Pretraining epoch time in fp32 and bf16 (TrainConfig.precision), side by side in one run,
on seeded synthetic rows (two tasks, e_form + a gap hurdle head) through matmtl's Trainer.

    python scripts/bench_precision.py [--device cuda] [--rows 32768] [--batch 1024] [--size large]
                                      [--epochs 3] [--case plain|gradnorm+pcgrad] [--json FILE]

Each precision trains ``--epochs`` epochs from the same seed; the time reported is the
fastest epoch after the first (warm-up: kernel selection, caches). Also reported: the
last epoch's mean training loss of each (bf16 should be close to fp32, not equal).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_distributed import synthetic_trainer  # noqa: E402  (seeded synthetic rows)

CASES = {"plain": ("static", "none"), "gradnorm+pcgrad": ("gradnorm", "pcgrad")}


def run(args, precision: str) -> dict:
    import torch

    from matmtl.config import TrainConfig
    from matmtl.train.engine import set_determinism

    balancer, surgery = CASES[args.case]
    cfg = TrainConfig.preset(
        "default", epochs=args.epochs, batch_size=args.batch, device=args.device, precision=precision, threads=0
    )
    set_determinism(cfg.seed, cfg.threads, cfg.device)
    with tempfile.TemporaryDirectory() as tmp:
        _, trainer = synthetic_trainer(cfg, balancer, surgery, args.size, args.rows, Path(tmp), progress=False)
        t0 = time.perf_counter()
        history = trainer.fit()
        if args.device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    seconds = [h["seconds"] for h in history[1:]] or [history[0]["seconds"]]
    return {
        "epoch_seconds": min(seconds),
        "step_ms": 1000 * min(seconds) / trainer.steps_per_epoch,
        "rows_per_s": args.rows / min(seconds),
        "last_loss": history[-1]["loss"],
        "wall_seconds": round(wall, 2),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if args.device == "cuda" else None,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--size", default="default", choices=["tiny", "default", "large"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--case", default="plain", choices=list(CASES))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch

    results = {}
    for precision in ("fp32", "bf16"):
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        results[precision] = run(args, precision)
    print(f"{'':8}{'epoch s':>10}{'step ms':>10}{'rows/s':>12}{'last loss':>12}{'peak MiB':>10}")
    for p, r in results.items():
        print(
            f"{p:8}{r['epoch_seconds']:>10.3f}{r['step_ms']:>10.2f}{r['rows_per_s']:>12.0f}"
            f"{r['last_loss']:>12.6f}{str(r['peak_gpu_mib']):>10}"
        )
    speedup = results["fp32"]["epoch_seconds"] / results["bf16"]["epoch_seconds"]
    print(f"bf16 speed-up of an epoch: {speedup:.2f}x")
    if args.json:
        device = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
        out = {"settings": vars(args), "device": device, "torch": torch.__version__, "results": results}
        out["bf16_speedup"] = speedup
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
