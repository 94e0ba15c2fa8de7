"""One process of the data-parallel tests (tests/test_distributed.py), started by them
several times side by side (rank and world from the environment, as torchrun sets it), or
called in the test process itself for the one-process reference.

    python tests/_distributed_child.py engine OUT     synthetic rows, several MTL settings
    python tests/_distributed_child.py fail OUT       rank 1 raises in its third step
    python tests/_distributed_child.py stuck OUT      rank 1 stops answering in its third step
    python tests/_distributed_child.py runs OUT       tiny pretrain (CLI) -> finetune -> half a finetune
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# the engine settings: (name, balancer, surgery, monitor_every)
ENGINE_CASES = [
    ("static_sum", "static", "none", 0),  # plain steps: DistributedDataParallel
    ("gradnorm_pcgrad_monitor", "gradnorm", "pcgrad", 2),  # per-task gradients, monitor samples
    ("uncertainty_halfspace", "uncertainty", "halfspace", 0),
    ("uncertainty_sum_monitor", "uncertainty", "none", 3),  # DDP on plain steps, collectives on monitored ones
]


def synthetic_sources(members: int):
    """Seeded rows (the same in every process): a main source with two partly labelled
    tasks (some rows carry neither label) and a replay-like source, of sizes that do not
    split evenly."""
    from matmtl.train.engine import Source, TaskData

    def rows(n, seed, tasks):
        rng = np.random.default_rng(seed)
        k = rng.integers(1, 5, n)
        z = np.zeros((n, 10), np.int64)
        frac = np.zeros((n, 10), np.float32)
        for i in range(n):
            z[i, : k[i]] = rng.choice(np.arange(1, 84), k[i], replace=False)
            f = rng.random(k[i]) + 0.1
            frac[i, : k[i]] = f / f.sum()
        spg = np.where(rng.random(n) < 0.7, rng.integers(1, 231, n), 0).astype(np.int64)
        signal = frac[:, :1].sum(1) * (z[:, 0] % 7)
        targets = {}
        if "e_form" in tasks:
            e = (signal - 1.5 + 0.3 * rng.standard_normal(n)).astype(np.float32)
            e[rng.random(n) < 0.3] = np.nan
            targets["e_form"] = e
        if "gap_pbe" in tasks:
            g = np.maximum(0, signal - 1 + rng.standard_normal(n)).astype(np.float32)
            g[rng.random(n) < 0.3] = np.nan
            targets["gap_pbe"] = g
        return TaskData(z, frac, spg, targets).with_bootstrap(members, seed)

    return [
        Source(rows(203, 1, ("e_form", "gap_pbe")), ["e_form", "gap_pbe"], 48, "main"),
        Source(rows(150, 2, ("e_form",)), ["e_form"], 48, "replay"),
    ]


def train_engine(out: Path, world, *, fail_at: int | None = None, stuck_at: int | None = None) -> None:
    """Each ENGINE_CASES setting on the synthetic rows; rank 0 writes the weights, the
    history, the MTL state and the norm of every step's gradients (what the engine clips)
    to ``out/<name>.*``, the other ranks their weights to ``out/<name>.rank<r>.safetensors``."""
    from matmtl.config import MTLConfig, TrainConfig
    from matmtl.models import ModelConfig, MultiTaskModel, TaskSpec
    from matmtl.train.engine import Trainer, set_determinism

    cfg = TrainConfig.preset("tiny", epochs=2, threads=1)
    for name, balancer, surgery, every in ENGINE_CASES:
        set_determinism(cfg.seed, cfg.threads)
        model = MultiTaskModel(
            ModelConfig.preset("tiny"),
            [TaskSpec("e_form", "regression", "eV/atom", -1.0, 1.0), TaskSpec("gap_pbe", "hurdle", "eV")],
        )
        mtl = MTLConfig(balancer=balancer, surgery=surgery, monitor_every=every, monitor_k=2)
        trainer = Trainer(
            model, cfg, mtl, synthetic_sources(2), out / f"state-{name}", weights={"e_form@replay": 0.5}, world=world
        )
        if fail_at is not None or stuck_at is not None:
            _sabotage(trainer, world, fail_at, stuck_at)
        with recording_grad_norms() as norms:
            history = trainer.fit()
        weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, out / (f"{name}.safetensors" if world.is_main else f"{name}.rank{world.rank}.safetensors"))
        if world.is_main:
            state = trainer.mtl.state_dict()
            (out / f"{name}.json").write_text(json.dumps({"history": history, "mtl": state, "grad_norms": norms}))


@contextmanager
def recording_grad_norms():
    """The norm of the gradients of every step (``clip_grad_norm_`` returns it), in a list."""
    norms, clip = [], torch.nn.utils.clip_grad_norm_

    def clip_and_record(params, max_norm, *args, **kwargs):
        norm = clip(params, max_norm, *args, **kwargs)
        norms.append(float(norm))
        return norm

    torch.nn.utils.clip_grad_norm_ = clip_and_record
    try:
        yield norms
    finally:
        torch.nn.utils.clip_grad_norm_ = clip


def _sabotage(trainer, world, fail_at, stuck_at) -> None:
    """Rank 1 raises (``fail_at``) or stops answering (``stuck_at``) at that step."""
    real = trainer._backward

    def backward(rows):
        if world.rank == 1 and trainer.step == fail_at:
            raise RuntimeError("injected failure on rank 1")
        if world.rank == 1 and trainer.step == stuck_at:
            time.sleep(3600)
        return real(rows)

    trainer._backward = backward


def runs(out: Path) -> None:
    """Under torchrun: a tiny pretrain through the command line, a replay-anchored
    finetune (GradNorm + PCGrad + monitor) from it, and the same finetune stopped after one
    epoch (resumed later by one process). Other ranks record any file they write."""
    from _tiny import tiny_finetune, tiny_ft

    from matmtl.cli import app
    from matmtl.config import MTLConfig
    from matmtl.train import finetune

    if os.environ.get("RANK", "0") != "0":
        _record_writes(out / "rank1-writes.json")
    app(
        [
            "pretrain",
            *("--tasks", "e_form", "--size", "tiny", "--max-rows", "300", "--holdout-fold", "0"),
            *("--threads", "1", "--out", str(out / "pre"), "--dist-timeout", "120"),
        ],
        standalone_mode=False,
    )
    cfg = finetune_config(out / "pre", tiny_finetune, tiny_ft, MTLConfig)
    finetune(cfg, out / "ft", progress=False)
    finetune(cfg, out / "ft_part", progress=False, stop_after=1)


def finetune_config(pre: Path, tiny_finetune, tiny_ft, MTLConfig):
    return tiny_finetune(
        pre,
        aux=("dft_energy",),
        max_train_rows=300,
        replay_max_rows=300,
        train=tiny_ft(epochs=2, threads=1, dist_timeout=120),
        mtl=MTLConfig(balancer="gradnorm", surgery="pcgrad", monitor_every=3, monitor_k=2),
    )


def _record_writes(path: Path) -> None:
    """Every file this process opens for writing, makes, renames or removes, listed in
    ``path`` when it exits (an audit hook)."""
    import atexit

    seen: list[str] = []

    def hook(event, args):
        if event == "open" and isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            seen.append(str(args[0]))
        elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree"):
            seen.append(f"{event} {args[0]}")

    sys.addaudithook(hook)
    atexit.register(lambda: path.write_text(json.dumps(seen)))


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    if mode == "runs":
        runs(out)
        return
    from matmtl.distributed import join

    timeout = 8.0 if mode == "stuck" else 60.0
    world = join("cpu", timeout)
    if mode == "engine":
        train_engine(out, world)
    elif mode == "fail":
        train_engine(out, world, fail_at=2)
    elif mode == "stuck":
        train_engine(out, world, stuck_at=2)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
