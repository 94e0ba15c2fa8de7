"""Data parallelism (matmtl.distributed, docs/distributed.md) on CPU: two processes (gloo)
take the steps one process takes with the same global batch, rank 0 alone writes the run
folder, a run of two processes resumes in one, and a process that fails or hangs brings
the others down with a clear error instead of a hang.

Tolerances: the two processes sum the same numbers in another order (float32, ~1e-7
relative), and AdamW's first steps divide a gradient by its own size, so an element whose
gradient is near zero moves by up to the learning rate either way: weights agree to 1e-4
after 2 epochs (measured: up to 1.6e-5), losses, gradient norms, balancer states and
validation scores to a relative 1e-4 (measured: ~1e-7), gradient-geometry angles to 1e-5 rad.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import _distributed_child as child
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from matmtl.distributed import World
from matmtl.errors import DistributedError

CHILD = str(Path(child.__file__).resolve())
W_TOL, REL_TOL, ANGLE_TOL = 1e-4, 1e-4, 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(n: int, mode: str, out: Path, *, timeout: float, wait_for=None) -> tuple[list[int | None], list[str]]:
    """``n`` processes of the child side by side, with the environment torchrun would give
    them; waits for ranks ``wait_for`` (default all) at most ``timeout`` seconds (longer
    is a hang: the test fails), then ends the others. Return codes and logs, by rank."""
    out.mkdir(parents=True, exist_ok=True)
    port, procs, logs = _free_port(), [], [out / f"rank{r}.log" for r in range(n)]
    for r in range(n):
        env = {
            **os.environ,
            **dict(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(n), LOCAL_WORLD_SIZE=str(n)),
            **dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1"),
        }
        with open(logs[r], "w") as log:
            procs.append(subprocess.Popen([sys.executable, CHILD, mode, str(out)], env=env, stdout=log, stderr=log))
    deadline = time.time() + timeout
    try:
        for r in wait_for if wait_for is not None else range(n):
            try:
                procs[r].wait(max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"rank {r} still running after {timeout} s (a hang):\n" + logs[r].read_text()[-3000:])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs], [log.read_text() for log in logs]


def _close(a, b, rel=REL_TOL) -> bool:
    return np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=rel, atol=1e-7)


def _max_weight_diff(a: Path, b: Path, prefix: str = "") -> float:
    wa, wb = ({k: v for k, v in load_file(str(p)).items() if k.startswith(prefix)} for p in (a, b))
    assert wa.keys() == wb.keys() and wa
    return max(float(np.abs(wa[k].astype(np.float64) - wb[k]).max(initial=0.0)) for k in wa)


def _same_last_epoch(a: Path, b: Path) -> None:
    """The runs ``a`` and ``b`` ended their last epoch alike: weights (the saved state's,
    not the kept best epoch's) and that epoch's losses."""
    sa, sb = (json.loads((run / "state" / "state.json").read_text()) for run in (a, b))
    assert sa["epoch"] == sb["epoch"] and sa["step"] == sb["step"]
    ta, tb = (run / "state" / s["tensors"] for run, s in ((a, sa), (b, sb)))
    assert _max_weight_diff(ta, tb, prefix="model.") < W_TOL
    ha, hb = sa["history"][-1], sb["history"][-1]
    assert all(_close(ha[k], hb[k]) for k in ha if k.startswith(("loss", "val_"))), (ha, hb)


# -- no processes needed ------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 3, 7, 48, 203])
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_the_shards_of_the_ranks_are_the_batch_in_order(n, size):
    rows = np.arange(100, 100 + n)
    parts = [World(rank=r, size=size).shard(rows) for r in range(size)]
    assert np.array_equal(np.concatenate(parts), rows)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert World(size=size).covers(n) == all(len(p) for p in parts)


def test_one_process_is_the_identity():
    w = World()
    t = torch.arange(3.0)
    assert w.sum_(t, "x") is t and torch.equal(t, torch.arange(3.0))
    p = torch.nn.Parameter(torch.ones(2))
    w.sum_grads_([p], "x")
    assert p.grad is None
    assert w.main_does(lambda: {"a": 1}, "x") == {"a": 1} and w.is_main and w.device("cuda") == torch.device("cuda")


def test_a_bad_timeout_names_the_setting_and_the_flag():
    from typer.testing import CliRunner

    from matmtl.cli import app
    from matmtl.config import TrainConfig
    from matmtl.errors import ConfigError

    with pytest.raises(ConfigError, match="TrainConfig.dist_timeout"):
        TrainConfig(dist_timeout=0)
    r = CliRunner().invoke(app, ["pretrain", "--dist-timeout", "0"])
    assert r.exit_code == 2 and "--dist-timeout" in r.output


# -- two processes --------------------------------------------------------------------------


def _engine_one_process(out: Path) -> None:
    child.train_engine(out, World())


def test_two_processes_take_the_steps_of_one(tmp_path):
    """The engine on seeded synthetic rows (two sources, partly labelled tasks, batches that
    do not split evenly) for static/sum (DistributedDataParallel), GradNorm + PCGrad +
    monitor, uncertainty + half-space, uncertainty + monitor (DDP and collectives mixed)."""
    codes, logs = _launch(2, "engine", tmp_path / "two", timeout=240)
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    _engine_one_process(tmp_path / "one")
    for name, *_ in child.ENGINE_CASES:
        one, two = tmp_path / "one" / name, tmp_path / "two" / name
        # every rank applied the same update: bit for bit the same weights
        assert _max_weight_diff(two.with_suffix(".safetensors"), two.with_suffix(".rank1.safetensors")) == 0.0, name
        assert _max_weight_diff(one.with_suffix(".safetensors"), two.with_suffix(".safetensors")) < W_TOL, name
        a, b = (json.loads(p.with_suffix(".json").read_text()) for p in (one, two))
        for h1, h2 in zip(a["history"], b["history"], strict=True):
            assert h1.keys() == h2.keys()
            assert all(_close(h1[k], h2[k]) for k in h1 if k.startswith("loss")), (name, h1, h2)
        assert _close(a["grad_norms"], b["grad_norms"]), name  # the summed gradients, step by step
        balancer_one, balancer_two = a["mtl"]["balancer"], b["mtl"]["balancer"]
        assert balancer_one.keys() == balancer_two.keys()
        assert all(_close(balancer_one[k], balancer_two[k]) for k in balancer_one), name
        r1, r2 = a["mtl"]["records"], b["mtl"]["records"]
        assert [r["step"] for r in r1] == [r["step"] for r in r2]
        for x, y in zip(r1, r2):
            assert np.allclose(x["angles"], y["angles"], atol=ANGLE_TOL) and _close(x["mean_cosine"], y["mean_cosine"])
    assert any(
        json.loads((tmp_path / "one" / f"{n}.json").read_text())["mtl"]["records"] for n, *_ in child.ENGINE_CASES
    )


def test_a_failing_process_stops_the_others_with_a_clear_error(tmp_path):
    codes, logs = _launch(2, "fail", tmp_path, timeout=120)
    assert codes[0] != 0 and codes[1] != 0
    assert "injected failure on rank 1" in logs[1]
    assert "DistributedError: process 0 of 2:" in logs[0] and "another process stopped" in logs[0], logs[0][-3000:]


def test_a_process_that_stops_answering_times_out(tmp_path):
    t0 = time.time()
    codes, logs = _launch(2, "stuck", tmp_path, timeout=120, wait_for=[0])  # rank 1 sleeps; it is ended afterwards
    assert codes[0] != 0 and time.time() - t0 < 100
    assert "DistributedError: process 0 of 2:" in logs[0] and "within the timeout (8 s" in logs[0], logs[0][-3000:]


@pytest.fixture(scope="module")
def runs_of_two(tmp_path_factory):
    """Under torchrun, 2 processes: a tiny pretrain through the command line, a
    replay-anchored finetune with GradNorm + PCGrad + the monitor, and the same finetune
    stopped after its first epoch."""
    out = tmp_path_factory.mktemp("two")
    env = {**os.environ, "MATMTL_CACHE_DIR": str(out / "cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", CHILD, "runs", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def _same_metrics(a: dict, b: dict) -> None:
    for part in ("validation", "holdout"):
        assert a[part].keys() == b[part].keys()
        for task in a[part]:
            for key in ("mae", "rmse", "mean_std", "rows", "metal_cut"):
                if key in a[part][task]:
                    assert _close(a[part][task][key], b[part][task][key]), (part, task, key)
    assert a["best_epoch"] == b["best_epoch"] and _close(a["best_validation_score"], b["best_validation_score"])


def test_a_run_of_two_processes_is_that_of_one(runs_of_two, tmp_path):
    from matmtl.train import finetune, pretrain
    from matmtl.train.fit import read_config

    two = runs_of_two
    one_pre = pretrain(read_config(two / "pre"), tmp_path / "pre", progress=False)
    assert _max_weight_diff(one_pre.run_dir / "model.safetensors", two / "pre" / "model.safetensors") < W_TOL
    _same_last_epoch(one_pre.run_dir, two / "pre")
    _same_metrics(one_pre.metrics, json.loads((two / "pre" / "metrics.json").read_text()))

    one_ft = finetune(read_config(two / "ft"), tmp_path / "ft", progress=False)  # from the same (2-process) parent
    metrics_two = json.loads((two / "ft" / "metrics.json").read_text())
    assert _max_weight_diff(one_ft.run_dir / "model.safetensors", two / "ft" / "model.safetensors") < W_TOL
    _same_last_epoch(one_ft.run_dir, two / "ft")
    _same_metrics(one_ft.metrics, metrics_two)
    g1, g2 = one_ft.metrics["gradient_geometry"], metrics_two["gradient_geometry"]
    assert [r["step"] for r in g1] == [r["step"] for r in g2] and g1
    assert all(np.allclose(x["angles"], y["angles"], atol=ANGLE_TOL) for x, y in zip(g1, g2))
    assert one_ft.metrics["epochs"] == metrics_two["epochs"] == 2


def test_a_run_of_two_processes_resumes_in_one(runs_of_two):
    from matmtl.train import resume

    two = runs_of_two
    assert not (two / "ft_part" / "model.json").exists() and (two / "ft_part" / "state" / "state.json").is_file()
    resumed = resume(two / "ft_part", progress=False)
    assert _max_weight_diff(resumed.run_dir / "model.safetensors", two / "ft" / "model.safetensors") < W_TOL
    _same_last_epoch(resumed.run_dir, two / "ft")  # its second epoch ran in one process
    _same_metrics(resumed.metrics, json.loads((two / "ft" / "metrics.json").read_text()))


def test_only_rank_0_writes(runs_of_two):
    two = runs_of_two
    written = json.loads((two / "rank1-writes.json").read_text())
    runs = [str(two / name) for name in ("pre", "ft", "ft_part")]
    assert not [w for w in written if any(r in w for r in runs)], written
    for name in ("pre", "ft"):
        assert {p.name for p in (two / name).iterdir()} >= {"model.safetensors", "metrics.json", "history.json"}


def test_a_rank_waiting_on_rank_0_learns_its_error(monkeypatch):
    """What rank 1 sees when rank 0 fails at something it does for all (rank 0's message
    arrives through a fake broadcast)."""
    monkeypatch.setattr(World, "_broadcast_json", lambda self, obj, what: {"error": "MatmtlError: /x exists"})
    with pytest.raises(DistributedError, match="rank 0 failed while claiming the run folder: MatmtlError"):
        World(rank=1, size=2).main_does(lambda: None, "claiming the run folder")
