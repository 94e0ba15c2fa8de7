"""Benchmark matmtl.geometry's Rust core against the alternatives, on the same inputs.

Principal angles of all task pairs for float32 gradient samples (d, k) x T:
  rust       : matmtl.geometry.subspace_geometry (Rust core; angles + mean cosines)
  scipy      : scipy.linalg.subspace_angles over every pair (fewer repeats: seconds per pair)
  torch_cpu  : a batched torch path on CPU tensors: one batched QR of all tasks, then
               svdvals of all pairs' Q_s^T Q_t and arccos (cosines only -- lighter than
               matmtl's own torch backend, which also computes sines)
  numpy_gram : X.T @ X for the concatenated d x (T k) matrix X (built outside the timer),
               the product every pair needs
  read_floor : one pass reading every input byte: numpy's sum over the input arrays
               (one thread; the floor the targets refer to)
  read_floor_mt : the same pass with torch's sum on all threads -- the machine's
               real read bandwidth, a stricter floor
PCGrad on T gradients of length d (float32):
  rust_pcgrad  : matmtl.geometry.pcgrad (projected gradients and their sum)
  rust_pcgrad_out : the same, writing into output arrays reused from call to call (out=)
  rust_pcgrad_total : the same with return_projected=False (only the sum is written)
  torch_pcgrad : the textbook torch implementation (Yu et al.: sequential dot
                 products and in-place projections), same visiting orders
  read_floor, read_floor_mt : as above, over the T gradients

Each size runs in this one process; the table shows the median time and the ratio to
rust (the JSON has seconds). Usage:

    python scripts/bench_geometry.py [--sizes 1000000,16,4 ...] [--json results/bench_geometry.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from itertools import combinations

import numpy as np
import scipy
import torch
from scipy.linalg import subspace_angles

from matmtl import _core
from matmtl import geometry as geo

DEFAULT_SIZES = [(100_000, 8, 2), (1_000_000, 16, 4), (4_000_000, 32, 3)]


def median_seconds(fn, repeats: int, warmup: bool = True) -> float:
    if warmup:
        fn()  # allocations, thread pools, page faults
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def read_floors(arrays, repeats: int) -> dict:
    tensors = [torch.from_numpy(a) for a in arrays]
    return {
        "read_floor": median_seconds(lambda: [np.add.reduce(a, axis=None) for a in arrays], repeats),
        "read_floor_mt": median_seconds(lambda: [t.sum() for t in tensors], repeats),
    }


def torch_batched_angles(tensors):
    """All pairs' principal angles the usual torch way: QR + svdvals."""
    Q = torch.linalg.qr(torch.stack(tensors)).Q  # (T, d, k)
    T, d, k = Q.shape
    flat = Q.transpose(0, 1).reshape(d, T * k)
    M = (flat.T @ flat).reshape(T, k, T, k).transpose(1, 2)  # Q_s^T Q_t
    return torch.arccos(torch.linalg.svdvals(M).clamp(max=1.0))


def bench_angles(d: int, k: int, T: int, args) -> list[dict]:
    rng = np.random.default_rng(args.seed)
    tasks = [rng.standard_normal((d, k), dtype=np.float32) for _ in range(T)]
    X = np.concatenate(tasks, axis=1)
    tensors = [torch.from_numpy(t) for t in tasks]
    scipy_repeats = args.scipy_repeats if args.scipy_repeats else (3 if d * k * T <= 2_000_000 else 1)
    timings = {
        "rust": median_seconds(lambda: geo.subspace_geometry(tasks), args.repeats),
        "numpy_gram": median_seconds(lambda: X.T @ X, args.repeats),
        **read_floors(tasks, args.repeats),
        "torch_cpu": median_seconds(lambda: torch_batched_angles(tensors), args.torch_repeats),
        # No warm-up run for scipy: nothing to warm up, and seconds per pair.
        "scipy": median_seconds(lambda: [subspace_angles(tasks[s], tasks[t]) for s, t in combinations(range(T), 2)], scipy_repeats, warmup=False),
    }
    return [{"impl": name, "op": "angles", "d": d, "k": k, "T": T, "dtype": "float32", "seconds_median": sec} for name, sec in timings.items()]


def torch_pcgrad_reference(grads: torch.Tensor, orders: list[list[int]]):
    """PCGrad as usually written in torch (Yu et al. 2020, Algorithm 1)."""
    projected = grads.clone()
    for i, order in enumerate(orders):
        g = projected[i]
        for j in order:
            dot = torch.dot(g, grads[j])
            if dot < 0:
                g -= dot / torch.dot(grads[j], grads[j]) * grads[j]
    return projected, projected.sum(0)


def bench_pcgrad(d: int, T: int, args) -> list[dict]:
    rng = np.random.default_rng(args.seed)
    shared = rng.standard_normal(d, dtype=np.float32)
    grads = np.stack([0.3 * shared + rng.standard_normal(d, dtype=np.float32) for _ in range(T)])
    orders = geo.pcgrad_orders(T, args.seed)
    buffers = (np.empty((T, d), np.float32), np.empty(d, np.float32))  # reused, as a training loop would
    tensor = torch.from_numpy(grads)
    timings = {
        "rust_pcgrad": median_seconds(lambda: geo.pcgrad(grads, seed=args.seed), args.repeats),
        "rust_pcgrad_out": median_seconds(lambda: geo.pcgrad(grads, seed=args.seed, out=buffers), args.repeats),
        "rust_pcgrad_total": median_seconds(lambda: geo.pcgrad(grads, seed=args.seed, return_projected=False), args.repeats),
        "torch_pcgrad": median_seconds(lambda: torch_pcgrad_reference(tensor, orders), args.torch_repeats),
        **read_floors(list(grads), args.repeats),
    }
    return [{"impl": name, "op": "pcgrad", "d": d, "k": 1, "T": T, "dtype": "float32", "seconds_median": sec} for name, sec in timings.items()]


def machine(load_before: tuple) -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "simd": _core.simd_isa(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "matmtl_core": _core.__version__,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        # Other work on the machine skews timings; the 1-minute load average
        # before and after the run records how busy it was.
        "loadavg_1min_before": round(load_before[0], 2),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
    }


def print_table(rows: list[dict]) -> None:
    print(f"{'impl':<19}{'op':<8}{'d':>10}{'k':>4}{'T':>3}  {'dtype':<8}{'median ms':>12}{'vs rust':>10}")
    for row in rows:
        same = [r for r in rows if (r["op"], r["d"], r["k"], r["T"]) == (row["op"], row["d"], row["k"], row["T"])]
        rust = next(r for r in same if r["impl"] in ("rust", "rust_pcgrad"))
        ratio = row["seconds_median"] / rust["seconds_median"]
        print(f"{row['impl']:<19}{row['op']:<8}{row['d']:>10}{row['k']:>4}{row['T']:>3}  {row['dtype']:<8}{row['seconds_median'] * 1e3:>12.3f}{ratio:>9.2f}x")


def parse_size(text: str) -> tuple[int, int, int]:
    d, k, T = (int(float(x)) for x in text.split(","))
    return d, k, T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=parse_size, action="append", metavar="d,k,T", help="angle benchmark size (repeatable); default: the three standard sizes")
    parser.add_argument("--repeats", type=int, default=11, help="timed runs for rust, numpy and the read floor")
    parser.add_argument("--torch-repeats", type=int, default=3)
    parser.add_argument("--scipy-repeats", type=int, default=0, help="default: 3 for small inputs, 1 above 2M values")
    parser.add_argument("--pcgrad", type=parse_size, default=(10_000_000, 1, 8), metavar="d,1,T", help="PCGrad size (default 1e7,1,8)")
    parser.add_argument("--no-pcgrad", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()

    load_before = os.getloadavg()
    rows = []
    for d, k, T in args.sizes or DEFAULT_SIZES:
        new = bench_angles(d, k, T, args)
        rows += new
        print_table(new)
    if not args.no_pcgrad:
        d, _, T = args.pcgrad
        new = bench_pcgrad(d, T, args)
        rows += new
        print_table(new)
    print()
    print_table(rows)
    if args.json:
        from matmtl.io import atomic_write_json

        atomic_write_json(args.json, {"results": rows, "machine": machine(load_before),
                                      "command": " ".join(["python"] + sys.argv)})


if __name__ == "__main__":
    main()
