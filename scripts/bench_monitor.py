"""What the gradient-geometry monitor adds to a training step.

Runs, in one process on the same model and batches:
  off        : MTLBackward with no monitor (the baseline step);
  grads_only : every N steps the monitored step's (T, k, d) per-task gradients, angles
               not computed (isolates what the gradients cost from what the angles cost);
  rust_sync  : the monitor every N steps, angles by the Rust core inline (the CPU default);
  rust_bg    : the same, in a background thread (the CUDA default);
  torch_sync : the same angles computed synchronously with torch (QR + SVD) every N steps.
  full_grads : every N steps the T per-task gradients of the whole batch (no micro-batches),
               as PCGrad takes them every step: T backward passes instead of one, the least any
               per-task gradient costs with autograd; grads_only less this is what the k
               micro-batches add.
  torchjd_grads : the peer: every N steps the same (T, k, d) per-task, per-micro-batch
               gradients from torchjd (one encoder pass on the whole batch, T*k losses,
               torchjd.autojac.mtl_backward's Jacobian, jac_to_grad with its Sum()), no angles;
               the other steps as `off`. Compare with grads_only (skipped when torchjd is
               not installed: pip install torchjd; not a dependency).
With --methods, also grads_<method> rows: grads_only with the per-task gradients forced
through one path of matmtl.mtl.gradients ("batched": the vmapped backward, the default;
"loop": one backward per task), side by side with the rest.
Prints the mean and median step time of each and the overhead of the mean relative to
`off` (across runs), and splits the monitor's overhead into gradients and angles (within
runs, below); --json writes them.
Differences between runs carry the machine's drift (+-10% between runs on a shared 2-core
machine), so each monitored run is also measured within itself: its monitored steps
against its ordinary steps, which alternate step by step (`within_run`: the extra time of
the monitored steps over `every` ordinary steps), and the angle calls are timed where they
run (`angles_share`: their time over `every` ordinary steps); what a monitored step
leaves to the next one (the background thread's angles, colder caches) is counted too.
The modes are interleaved over --rounds rounds so machine noise hits all of them alike;
on a busy machine, --threads 1 --clock cpu (process CPU time) is the steadier measure,
and --skip rust_bg torch_sync shortens the run.

    python scripts/bench_monitor.py --every 10 --k 4 [--device cuda] [--json results/bench_monitor.json]
    python scripts/bench_monitor.py --every 10 --k 4 --methods batched loop   # old vs new paths
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import sys
import time

import numpy as np
import torch

from matmtl import geometry
from matmtl.mtl import GeometryMonitor, MTLBackward, gradients, surgery_from
from matmtl.mtl import backward as mtl_backward


class Net(torch.nn.Module):
    """A shared MLP encoder with two heads, about the size of matmtl's own encoder."""

    def __init__(self, d_in: int, width: int, depth: int):
        super().__init__()
        layers, d = [], d_in
        for _ in range(depth):
            layers += [torch.nn.Linear(d, width), torch.nn.SiLU()]
            d = width
        self.encoder = torch.nn.Sequential(*layers)
        self.heads = torch.nn.ModuleList([torch.nn.Linear(width, 1) for _ in range(2)])


class TimedMonitor(GeometryMonitor):
    """The monitor with each submit (the angles, when inline) timed where it runs."""

    clock = staticmethod(time.perf_counter)

    def __init__(self, every, k, background=False):
        super().__init__(every, k, background=background)
        self.submit_seconds: list[float] = []

    def submit(self, step, tasks, grads):
        t0 = self.clock()
        self._submit(step, tasks, grads)
        self.submit_seconds.append(self.clock() - t0)

    def _submit(self, step, tasks, grads):
        super().submit(step, tasks, grads)


class SyncTorchMonitor(TimedMonitor):
    """Reference: the same angles, synchronously, with torch on the gradients' device."""

    def _submit(self, step, tasks, grads):  # grads: (T, k, d)
        mats = [grads[t].T for t in range(grads.shape[0])]  # (d, k) views on the device
        res = geometry.subspace_geometry(mats, backend="torch")
        if grads.is_cuda:
            torch.cuda.synchronize()
        self.records.append({"step": step, "angles": np.asarray(res.angles).tolist()})


class GradsOnlyMonitor(TimedMonitor):
    """The monitored steps' gradients without any angles: the part of the cost the
    angle backend cannot change."""

    def _submit(self, step, tasks, grads):
        pass


class Steps:
    """One run's step times (after warm-up), which steps fed the monitor, and the
    monitor's own submit times."""

    def __init__(self):
        self.times: list[float] = []
        self.monitored: list[bool] = []
        self.submit_seconds: list[float] = []

    def __iadd__(self, other: Steps) -> Steps:
        self.times += other.times
        self.monitored += other.monitored
        self.submit_seconds += other.submit_seconds
        return self

    def split(self) -> tuple[list[float], list[float], list[float]]:
        """Step times: (monitored, the ordinary steps right after a monitored one, the
        other ordinary steps)."""
        kinds = [
            "mon" if m else "after" if i and self.monitored[i - 1] else "rest" for i, m in enumerate(self.monitored)
        ]
        return tuple([t for t, kind in zip(self.times, kinds) if kind == want] for want in ("mon", "after", "rest"))


def run(mode: str, args, device: str) -> Steps:
    method = mode[len("grads_") :] if mode.startswith("grads_") and mode != "grads_only" else "auto"
    chunked = mtl_backward.chunked_shared_grads
    mtl_backward.chunked_shared_grads = functools.partial(gradients.chunked_shared_grads, method=method)
    try:
        return _run(mode, args, device)
    finally:
        mtl_backward.chunked_shared_grads = chunked


def _monitor(mode: str, args) -> TimedMonitor | None:
    """The monitor a mode runs with (None: no monitor)."""
    if mode in ("rust_bg", "rust_sync"):
        return TimedMonitor(args.every, args.k, background=mode == "rust_bg")
    if mode == "torch_sync":
        return SyncTorchMonitor(args.every, args.k)
    if mode.startswith("grads_"):
        return GradsOnlyMonitor(args.every, args.k)
    return None


def _run(mode: str, args, device: str) -> Steps:
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    TimedMonitor.clock = staticmethod(clock)
    torch.manual_seed(0)
    net = Net(args.d_in, args.width, args.depth).to(device)
    monitor = _monitor(mode, args)
    jd = mode == "torchjd_grads"
    if jd:
        from torchjd.aggregation import Sum
        from torchjd.autojac import jac_to_grad
        from torchjd.autojac import mtl_backward as jd_backward

        summed = Sum()
    surgery = surgery_from(args.surgery)
    mtl = MTLBackward(net.parameters(), net.encoder.parameters(), ["gap", "e_form"], monitor=monitor, surgery=surgery)
    # full_grads: every N steps, the step PCGrad takes (T whole-batch task gradients)
    full = mode == "full_grads" and MTLBackward(
        net.parameters(), net.encoder.parameters(), ["gap", "e_form"], surgery=surgery_from("pcgrad")
    )
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(args.batch, args.d_in, generator=g).to(device)
    y = torch.randn(2, args.batch, generator=g).to(device)
    out = Steps()
    for step in range(args.steps + args.warmup):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = clock()
        opt.zero_grad(set_to_none=True)
        monitored = (jd or full) and step % args.every == 0 or mtl.monitor_due()
        if jd and step % args.every == 0:  # torchjd: the T x k per-micro-batch task gradients
            z = net.encoder(x)
            rows = torch.tensor_split(torch.arange(args.batch, device=device), args.k)
            losses = [
                (h(z[r]).squeeze(-1) - y[i][r]).abs().mean() / args.k for i, h in enumerate(net.heads) for r in rows
            ]
            jd_backward(losses, z, shared_params=list(net.encoder.parameters()))
            jac_to_grad(list(net.encoder.parameters()), summed)
        elif mtl.monitor_due():  # the encoder on k micro-batches (same total work as one pass)
            feats = [net.encoder(xc) for xc in torch.tensor_split(x, args.k)]
            ys = [torch.tensor_split(y[i], args.k) for i in range(2)]
            losses = {
                t: [(h(zc).squeeze(-1) - ys[i][c]).abs().mean() for c, zc in enumerate(feats)]
                for i, (t, h) in enumerate(zip(["gap", "e_form"], net.heads))
            }
            mtl.backward_microbatches(losses, feats)
        else:
            z = net.encoder(x)
            losses = {
                t: (h(z).squeeze(-1) - y[i]).abs().mean() for i, (t, h) in enumerate(zip(["gap", "e_form"], net.heads))
            }
            (full if full and monitored else mtl).backward(losses, z)
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            out.times.append(clock() - t0)
            out.monitored.append(monitored)
        elif monitor is not None:  # warm-up calls are not measured
            monitor.submit_seconds.clear()
    mtl.close()
    if full:
        full.close()
    out.submit_seconds = list(monitor.submit_seconds) if monitor is not None else []
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--d-in", type=int, default=256)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument(
        "--surgery",
        default="none",
        choices=["none", "pcgrad", "halfspace"],
        help="gradient surgery in every step (then every step computes per-task gradients)",
    )
    ap.add_argument(
        "--methods",
        nargs="*",
        default=[],
        choices=["batched", "loop"],
        help="also grads_<method> rows: the per-task gradients forced through that path",
    )
    ap.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["rust_bg", "torch_sync"],
        help="leave these modes out (a shorter run on a busy machine)",
    )
    ap.add_argument("--no-torchjd", action="store_true", help="leave out the torchjd_grads row")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over the modes, interleaved")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument(
        "--clock", default="wall", choices=["wall", "cpu"], help="wall time, or the process's CPU time (busy machines)"
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n_shared = sum(p.numel() for p in Net(args.d_in, args.width, args.depth).encoder.parameters())
    results = {}
    # interleave the modes over rounds so machine noise hits all of them alike
    modes = (
        "off",
        "full_grads",
        "grads_only",
        *(f"grads_{m}" for m in args.methods),
        "rust_sync",
        "rust_bg",
        "torch_sync",
    )
    modes = tuple(m for m in modes if m not in args.skip)
    if not args.no_torchjd and _has_torchjd():
        modes += ("torchjd_grads",)
    elif not args.no_torchjd:
        print("note: torchjd is not installed, so its row is skipped (pip install torchjd)")
    per_mode: dict[str, Steps] = {m: Steps() for m in modes}
    for _ in range(args.rounds):
        for mode in per_mode:
            per_mode[mode] += run(mode, args, args.device)
    base = statistics.mean(per_mode["off"].times)
    print(
        f"shared parameters d={n_shared:,}, k={args.k}, T=2, monitor every {args.every} steps, "
        f"batch {args.batch}, surgery {args.surgery}, device {args.device}, torch threads {torch.get_num_threads()}, "
        f"{args.clock} clock"
    )
    print(f"{'mode':<14}{'mean step (ms)':>16}{'median (ms)':>14}{'overhead':>10}{'within run':>12}{'angles':>9}")
    for mode, steps in per_mode.items():
        ts = steps.times
        mean = statistics.mean(ts)
        results[mode] = {"mean_s": mean, "median_s": statistics.median(ts), "overhead_vs_off": mean / base - 1}
        results[mode].update(within_run(mode, steps, args.every))
        inside = results[mode].get("within_run")
        angles = results[mode].get("angles_share")
        print(
            f"{mode:<14}{1e3 * mean:>16.3f}{1e3 * statistics.median(ts):>14.3f}{100 * (mean / base - 1):>9.1f}%"
            + (f"{100 * inside:>11.1f}%" if inside is not None else f"{'':>12}")
            + (f"{100 * angles:>8.1f}%" if angles is not None else "")
        )
    # the split uses the within-run figures: differences between runs carry the drift
    inside = {m: r for m, r in results.items() if "within_run" in r}
    grads = inside.get("grads_only", {}).get("within_run")
    split = {
        m: {"gradients": grads, "angles": inside[m]["within_run"] - grads}
        for m in ("rust_sync", "rust_bg", "torch_sync")
        if m in inside and grads is not None
    }
    if inside:
        print("within each run (its monitored steps, and the steps right after them, against its other steps):")
        for m, r in inside.items():
            angles = f", of it the angle calls {100 * r['angles_share']:.2f}%" if "angles_share" in r else ""
            print(
                f"  {m}: {100 * r['within_run']:.1f}% over {r['monitored_steps']} monitored steps "
                f"(the next step's share {100 * r['next_step']:.1f}%){angles}"
            )
    if grads is not None and "torchjd_grads" in inside:
        jd = inside["torchjd_grads"]["within_run"]
        print(f"per-task gradients of the monitored steps: matmtl {100 * grads:.1f}%, torchjd {100 * jd:.1f}%")
    for m, part in split.items():
        print(
            f"{m}: {100 * inside[m]['within_run']:.1f}% = per-task gradients {100 * part['gradients']:.1f}% "
            f"+ angles {100 * part['angles']:.1f}%"
        )
    if args.json:
        from matmtl.io import atomic_write_json

        atomic_write_json(
            args.json,
            {
                "results": results,
                "overhead_split": split,
                "d_shared": n_shared,
                "args": vars(args),
                "command": "python " + " ".join(["scripts/bench_monitor.py", *(argv or sys.argv[1:])]),
                "machine": {
                    "platform": platform.platform(),
                    "processor": platform.processor(),
                    "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name() if args.device == "cuda" else None,
                },
            },
        )
    return 0


def within_run(mode: str, steps: Steps, every: int) -> dict:
    """A monitored run measured against itself. Per cycle of ``every`` steps, the
    monitor adds the monitored step's extra time and whatever it leaves to the next step
    (the background thread's angles, colder caches), both over the cycle's other
    ordinary steps: ``within_run`` is that extra over ``every`` ordinary steps (the
    monitor's whole overhead at that cadence), ``next_step`` the part the next step
    carries, ``angles_share`` the timed angle calls (inline monitors) on the same scale,
    ``monitored_steps`` how many monitored steps it rests on. Empty without monitored
    steps or without ordinary steps between them."""
    mon, after, rest = steps.split()
    if not mon or not after or not rest or mode == "off":
        return {}
    base = statistics.mean(rest)
    next_step = statistics.mean(after) - base
    out = {
        "within_run": (statistics.mean(mon) - base + next_step) / (every * base),
        "next_step": next_step / (every * base),
        "monitored_steps": len(mon),
    }
    if steps.submit_seconds and mode in ("rust_sync", "torch_sync"):
        out["angles_share"] = statistics.mean(steps.submit_seconds) / (every * base)
    return out


def _has_torchjd() -> bool:
    try:
        import torchjd.autojac  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
