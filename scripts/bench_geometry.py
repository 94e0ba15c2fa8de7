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
  arith_floor_mt : the arithmetic floor: the multiply-adds the Gram's upper triangle
               needs (n (n + 1) / 2 d, n = T k) at the rate numpy's (OpenBLAS's) square
               float32 product of SGEMM_SIDE^2 matrices reaches on all threads (the
               machine's practical FMA peak), timed in a block of its own before the
               rounds. Whichever floor is higher bounds the angles: memory or arithmetic.
PCGrad on T gradients of length d (float32):
  rust_pcgrad  : matmtl.geometry.pcgrad (projected gradients and their sum)
  rust_pcgrad_out : the same, writing into output arrays reused from call to call (out=)
  rust_pcgrad_total : the same with return_projected=False (only the sum is written)
  rust_pcgrad_total_out : only the sum, into a reused output array (what an optimiser
                 step needs, as a training loop calls it)
  torchjd_pcgrad : torchjd's PCGrad() aggregator on the (T, d) tensor (a Gramian, the
                 weights, one weighted sum: the sum only); skipped with a note when
                 torchjd is not installed (pip install torchjd; not a dependency)
  torch_pcgrad : the textbook torch implementation (Yu et al.: sequential dot
                 products and in-place projections), same visiting orders
  read_floor, read_floor_mt : as above, over the T gradients
  read_floor_2pass_mt : two read passes (torch's sum on all threads, twice): the floor
                 of PCGrad's sum, which must read the gradients once for their Gram and
                 once more for the weighted sum (the weights depend on the whole Gram)
  floor_out_mt : one read pass plus one copy of the T gradients (torch's copy_ on all
                 threads): the least memory traffic of PCGrad with per-task outputs
On a GPU (--device cuda; ops angles_cuda and pcgrad_cuda, every call followed by a
device synchronize), with the tensors in device memory:
  matmtl : subspace_geometry on the device tensors (the torch backend, as `auto` picks)
  matmtl_pcgrad_total_out, matmtl_pcgrad_out : pcgrad into reused device outputs
  torchjd_pcgrad : torchjd's PCGrad() on the same device tensor
  read_floor, read_floor_2pass : one / two reduction passes over the input on the
                 device: its memory-read floor

Implementations of one size are timed round-robin (one call of each per round), so a
change of machine load affects all of them alike; the table shows the median time, its
ratio to rust, and the fastest call (on a machine other jobs share, the fastest call is
the closest to the unshared speed). The JSON has seconds (median and min) and the
target ratios of both under "ratios". Usage:

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

try:  # a benchmark-only peer, not a dependency of matmtl
    from torchjd.aggregation import PCGrad as TorchjdPCGrad
except ImportError:
    TorchjdPCGrad = None

DEFAULT_SIZES = [(100_000, 8, 2), (1_000_000, 16, 4), (4_000_000, 32, 3)]


def timed(fn, repeats: int, warmup: bool = True) -> list[float]:
    """Seconds of `repeats` calls of fn (after one warm-up call)."""
    if warmup:
        fn()  # allocations, thread pools, page faults
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def timed_round_robin(fns: dict, repeats: int) -> dict:
    """Seconds of each function's calls, timed in turns (one call of each per round)
    after one warm-up call each, so that load changes hit all of them alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def rows_of(times: dict, op: str, d: int, k: int, T: int) -> list[dict]:
    """One row per implementation: the median and the fastest of its calls (on a
    machine other jobs share, the fastest call is the closest to the unshared speed)."""
    return [
        {
            **{"impl": name, "op": op, "d": d, "k": k, "T": T, "dtype": "float32"},
            **{"seconds_median": statistics.median(ts), "seconds_min": min(ts), "calls": len(ts)},
        }
        for name, ts in times.items()
    ]


def read_floor_fns(arrays) -> dict:
    tensors = [torch.from_numpy(a) for a in arrays]
    return {
        "read_floor": lambda: [np.add.reduce(a, axis=None) for a in arrays],
        "read_floor_mt": lambda: [t.sum() for t in tensors],
    }


# Side of the square float32 product that measures the machine's arithmetic rate:
# large enough for OpenBLAS to run near peak, small enough to time in ~30 ms.
SGEMM_SIDE = 1536


def arith_floor_seconds(sgemm_seconds: list[float], d: int, n: int) -> list[float]:
    """Per timed product, the seconds the Gram's upper triangle (n (n + 1) / 2 dot
    products of length d) takes at that product's multiply-add rate."""
    needed = n * (n + 1) / 2 * d
    return [t * needed / SGEMM_SIDE**3 for t in sgemm_seconds]


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
    A = rng.standard_normal((SGEMM_SIDE, SGEMM_SIDE), dtype=np.float32)
    # The product runs in a block of its own: OpenBLAS's threads keep spinning for a
    # while after it, which would slow whichever call came next in a round.
    arith = arith_floor_seconds(timed(lambda: A @ A, args.repeats), d, k * T)
    time.sleep(0.5)
    fast = {"rust": lambda: geo.subspace_geometry(tasks), "numpy_gram": lambda: X.T @ X, **read_floor_fns(tasks)}
    times = {**timed_round_robin(fast, args.repeats), "arith_floor_mt": arith}
    times = {
        **times,
        "torch_cpu": timed(lambda: torch_batched_angles(tensors), args.torch_repeats),
        # No warm-up run for scipy: nothing to warm up, and seconds per pair.
        "scipy": timed(
            lambda: [subspace_angles(tasks[s], tasks[t]) for s, t in combinations(range(T), 2)],
            scipy_repeats,
            warmup=False,
        ),
    }
    return rows_of(times, "angles", d, k, T)


def on_device(fns: dict, device: str) -> dict:
    """The functions, each followed by a synchronize of the device (GPU calls return
    before the work is done)."""
    if device != "cuda":
        return fns

    def synced(fn):
        return lambda: (fn(), torch.cuda.synchronize())

    return {name: synced(fn) for name, fn in fns.items()}


def bench_device(device: str, angle_size: tuple[int, int, int], pcgrad_size: tuple[int, int], args) -> list[dict]:
    """matmtl's path for device tensors against torchjd and the device's read floor
    (the GPU rows; ``device`` "cpu" runs the same code on CPU tensors, for the tests)."""
    rng = np.random.default_rng(args.seed)
    d, k, T = angle_size
    tasks = [torch.from_numpy(rng.standard_normal((d, k), dtype=np.float32)).to(device) for _ in range(T)]
    fns = {"matmtl": lambda: geo.subspace_geometry(tasks), "read_floor": lambda: [t.sum() for t in tasks]}
    rows = rows_of(timed_round_robin(on_device(fns, device), args.repeats), f"angles_{device}", d, k, T)
    d, T = pcgrad_size
    shared = rng.standard_normal(d, dtype=np.float32)
    grads = np.stack([0.3 * shared + rng.standard_normal(d, dtype=np.float32) for _ in range(T)])
    tensor = torch.from_numpy(grads).to(device)
    projected, total = torch.empty_like(tensor), torch.empty_like(tensor[0])
    fns = {
        "matmtl_pcgrad_total_out": lambda: geo.pcgrad(
            tensor, seed=args.seed, return_projected=False, out=(None, total)
        ),
        "matmtl_pcgrad_out": lambda: geo.pcgrad(tensor, seed=args.seed, out=(projected, total)),
        "read_floor": lambda: tensor.sum(),
        "read_floor_2pass": lambda: (tensor.sum(), tensor.sum()),
    }
    if TorchjdPCGrad is not None:
        aggregator = TorchjdPCGrad()
        fns["torchjd_pcgrad"] = lambda: aggregator(tensor)
    return rows + rows_of(timed_round_robin(on_device(fns, device), args.repeats), f"pcgrad_{device}", d, 1, T)


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
    projected, total = np.empty((T, d), np.float32), np.empty(d, np.float32)  # reused, as a training loop would
    tensor = torch.from_numpy(grads)
    tensors = list(tensor)
    copy_target = torch.empty_like(tensor)
    fns = {
        "rust_pcgrad": lambda: geo.pcgrad(grads, seed=args.seed),
        "rust_pcgrad_out": lambda: geo.pcgrad(grads, seed=args.seed, out=(projected, total)),
        "rust_pcgrad_total": lambda: geo.pcgrad(grads, seed=args.seed, return_projected=False),
        "rust_pcgrad_total_out": lambda: geo.pcgrad(grads, seed=args.seed, return_projected=False, out=(None, total)),
        **read_floor_fns(list(grads)),
        "read_floor_2pass_mt": lambda: [t.sum() for t in tensors + tensors],
        "floor_out_mt": lambda: ([t.sum() for t in tensors], copy_target.copy_(tensor)),
    }
    if TorchjdPCGrad is not None:
        aggregator = TorchjdPCGrad()
        fns["torchjd_pcgrad"] = lambda: aggregator(tensor)
    else:
        print("note: torchjd is not installed, so its column is skipped (pip install torchjd)")
    times = {
        **timed_round_robin(fns, args.repeats),
        "torch_pcgrad": timed(lambda: torch_pcgrad_reference(tensor, orders), args.torch_repeats),
    }
    return rows_of(times, "pcgrad", d, 1, T)


# The issue-15 targets: (name, numerator impl, denominator impl, op). A ratio above 1
# means the numerator takes longer.
TARGET_RATIOS = [
    ("angles_vs_read_floor_mt", "rust", "read_floor_mt", "angles"),
    ("angles_vs_arith_floor_mt", "rust", "arith_floor_mt", "angles"),
    ("torchjd_vs_pcgrad_total_out", "torchjd_pcgrad", "rust_pcgrad_total_out", "pcgrad"),
    ("torchjd_vs_pcgrad_total", "torchjd_pcgrad", "rust_pcgrad_total", "pcgrad"),
    ("torchjd_vs_pcgrad_out", "torchjd_pcgrad", "rust_pcgrad_out", "pcgrad"),
    ("pcgrad_total_out_vs_2pass_floor", "rust_pcgrad_total_out", "read_floor_2pass_mt", "pcgrad"),
    ("pcgrad_total_vs_2pass_floor", "rust_pcgrad_total", "read_floor_2pass_mt", "pcgrad"),
    ("pcgrad_out_vs_2pass_floor", "rust_pcgrad_out", "read_floor_2pass_mt", "pcgrad"),
    ("pcgrad_out_vs_floor_out", "rust_pcgrad_out", "floor_out_mt", "pcgrad"),
    ("angles_vs_read_floor_cuda", "matmtl", "read_floor", "angles_cuda"),
    ("torchjd_vs_pcgrad_total_out_cuda", "torchjd_pcgrad", "matmtl_pcgrad_total_out", "pcgrad_cuda"),
    ("pcgrad_total_out_vs_2pass_floor_cuda", "matmtl_pcgrad_total_out", "read_floor_2pass", "pcgrad_cuda"),
]


def target_ratios(rows: list[dict], stat: str) -> dict:
    """The ratios the targets refer to, per size (only those whose rows ran), of
    the statistic `stat` ("seconds_median" or "seconds_min")."""
    out = {}
    sizes = sorted({(r["op"], r["d"], r["k"], r["T"]) for r in rows})
    for op, d, k, T in sizes:
        seconds = {r["impl"]: r[stat] for r in rows if (r["op"], r["d"], r["k"], r["T"]) == (op, d, k, T)}
        for name, num, den, target_op in TARGET_RATIOS:
            if op == target_op and num in seconds and den in seconds:
                out[f"{name} (d={d}, k={k}, T={T})"] = round(seconds[num] / seconds[den], 3)
    return out


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
        "torchjd": _torchjd_version(),
        "torch_threads": torch.get_num_threads(),
        "matmtl_core": _core.__version__,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        # Other work on the machine skews timings; the 1-minute load average
        # before and after the run records how busy it was.
        "loadavg_1min_before": round(load_before[0], 2),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
    }


def _torchjd_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torchjd")
    except PackageNotFoundError:
        return None


def print_table(rows: list[dict]) -> None:
    print(
        f"{'impl':<23}{'op':<8}{'d':>10}{'k':>4}{'T':>3}  {'dtype':<8}{'median ms':>12}{'vs first':>10}{'min ms':>10}"
    )
    for row in rows:
        same = [r for r in rows if (r["op"], r["d"], r["k"], r["T"]) == (row["op"], row["d"], row["k"], row["T"])]
        first = same[0]  # rust's own row on the CPU, matmtl's on a device
        ratio = row["seconds_median"] / first["seconds_median"]
        size = f"{row['op']:<8}{row['d']:>10}{row['k']:>4}{row['T']:>3}  {row['dtype']:<8}"
        times = f"{row['seconds_median'] * 1e3:>12.3f}{ratio:>9.2f}x{row['seconds_min'] * 1e3:>10.3f}"
        print(f"{row['impl']:<23}{size}{times}")


def parse_size(text: str) -> tuple[int, int, int]:
    d, k, T = (int(float(x)) for x in text.split(","))
    return d, k, T


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes",
        type=parse_size,
        action="append",
        metavar="d,k,T",
        help="angle benchmark size (repeatable); default: the three standard sizes",
    )
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds for rust, numpy, torchjd and the floors")
    parser.add_argument("--torch-repeats", type=int, default=3)
    parser.add_argument("--scipy-repeats", type=int, default=0, help="default: 3 for small inputs, 1 above 2M values")
    parser.add_argument(
        "--pcgrad", type=parse_size, default=(10_000_000, 1, 8), metavar="d,1,T", help="PCGrad size (default 1e7,1,8)"
    )
    parser.add_argument("--no-pcgrad", action="store_true")
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="cpu (default: the Rust core against its peers) or cuda (the GPU rows: matmtl on device tensors "
        "against torchjd and the device's read floor, at the first --sizes size, default 1e6,16,4, and --pcgrad)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    rows = []
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("bench_geometry: --device cuda, but torch sees no CUDA GPU here", file=sys.stderr)
            return 2
        d, _, T = args.pcgrad
        rows = bench_device("cuda", (args.sizes or [DEFAULT_SIZES[1]])[0], (d, T), args)
        print_table(rows)
    for d, k, T in (args.sizes or DEFAULT_SIZES) if args.device == "cpu" else []:
        new = bench_angles(d, k, T, args)
        rows += new
        print_table(new)
    if not args.no_pcgrad and args.device == "cpu":
        d, _, T = args.pcgrad
        new = bench_pcgrad(d, T, args)
        rows += new
        print_table(new)
    print()
    print_table(rows)
    ratios = {stat: target_ratios(rows, f"seconds_{stat}") for stat in ("median", "min")}
    print(f"\n{'target ratio':<60}{'median':>8}{'min':>8}")
    for name, value in ratios["median"].items():
        print(f"{name:<60}{value:>8.2f}{ratios['min'][name]:>8.2f}")
    if args.json:
        from matmtl.io import atomic_write_json

        atomic_write_json(
            args.json,
            {
                "results": rows,
                "ratios": ratios,
                "machine": {
                    **machine(load_before),
                    "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
                },
                "command": " ".join(["python", "scripts/bench_geometry.py", *(sys.argv[1:] if argv is None else argv)]),
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
