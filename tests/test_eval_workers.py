"""Several evaluation workers sharing one work dir (matmtl.eval.claims, docs/evaluation.md
"Several workers"): claim files (atomic, refused to a second worker, stale ones taken
over, removed once the record is written, failures recorded), each cell trained as one
plain process even under torchrun's environment, and real workers (independent
processes, torchrun-style ranks, a killed worker, a failing rank) on a tiny baseline
evaluation giving the results of one worker, each cell computed once.

Nothing here depends on speed: the workers are held at known points through files
(tests/_eval_worker_child.py), and time limits only turn a hang into a failure."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from matmtl.distributed import World, join, single_process
from matmtl.eval.cells import CellKey, Cells, CellStore
from matmtl.eval.claims import (
    Busy,
    CellFailed,
    Claims,
    ClaimSettings,
    Worker,
    WorkerStopped,
    claim_file,
    failure_file,
    stopping_on_sigterm,
)

CHILD = str(Path(__file__).resolve().parent / "_eval_worker_child.py")
ROOT = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()
FAST = ClaimSettings(lease=60, poll=0.05)
LIMIT = 150  # seconds before a worker counts as hung


def _worker(pid: int, host: str = HOST, started: float | None = None, **kw) -> Worker:
    return Worker(host, pid, time.time() if started is None else started, **kw)


def _claims(pid: int = os.getpid(), console=None, **kw) -> Claims:
    return Claims(FAST, console, _worker(pid, **kw))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200), buf


# -- claim files -------------------------------------------------------------------------------


def test_a_claim_is_atomic_names_its_holder_and_is_refused_to_a_second_worker(tmp_path):
    target = tmp_path / "cells" / "fold0-frac1.json"
    path = claim_file(target)
    assert path.name == "fold0-frac1.claim" and claim_file(tmp_path / "fold0").name == "fold0.claim"
    me = _claims()
    assert me.try_claim(path)
    info = json.loads(path.read_text())
    assert (info["host"], info["pid"]) == (HOST, os.getpid()) and info["started"] and info["token"]
    other = _claims(os.getppid())  # another live process of this host
    assert not other.try_claim(path)
    holder = other.holder(path)
    assert holder.stale is None and f"{HOST}:{os.getpid()}" in holder.label
    with pytest.raises(Busy, match="fold 0"):  # skipped while it is held
        other.obtain("expt_gap/x fold 0", target, lambda: None, lambda: pytest.fail("computed twice"), defer=True)
    me.release(path)
    assert not path.exists() and other.try_claim(path)
    assert not me.try_claim(path)  # now the other one's
    other.close()
    assert not path.exists()  # closing a worker releases what it still holds


def test_stale_claims_are_taken_over(tmp_path):
    console, out = _console()
    me = _claims(console=console)
    gone = tmp_path / "gone.claim"  # its process ended on this host: taken over at once
    gone.write_text(json.dumps({"host": HOST, "pid": _dead_pid(), "token": "a"}))
    assert me.try_claim(gone) and json.loads(gone.read_text())["pid"] == os.getpid()
    assert "taking over" in out.getvalue() and "is gone" in out.getvalue()
    far = tmp_path / "far.claim"  # another machine: only the lease tells
    far.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "b"}))
    assert not me.try_claim(far)
    old = time.time() - 3600
    os.utime(far, (old, old))
    assert me.try_claim(far) and "lease" in out.getvalue()
    quiet = tmp_path / "quiet.claim"  # alive on this host but silent past the lease (a reused pid)
    quiet.write_text(json.dumps({"host": HOST, "pid": os.getppid(), "token": "c"}))
    os.utime(quiet, (old, old))
    assert me.try_claim(quiet)
    torn = tmp_path / "torn.claim"  # a claim still being written is live until its lease ends
    torn.write_text("")
    assert not me.try_claim(torn)
    os.utime(torn, (old, old))
    assert me.try_claim(torn)
    me.close()


def test_a_holder_refreshes_its_lease_and_a_takeover_never_removes_a_fresh_claim(tmp_path):
    me, other = _claims(), _claims(os.getppid())
    path = tmp_path / "x.claim"
    assert me.try_claim(path)
    old = time.time() - 3600
    os.utime(path, (old, old))
    me.refresh()  # what the heartbeat thread does every lease/4
    assert time.time() - path.stat().st_mtime < 60 and not other.try_claim(path)
    # judged stale, but a fresh claim took its place meanwhile: the taker gives it back
    assert not other._take_over(path, b"the stale claim it had judged")
    assert json.loads(path.read_text())["pid"] == os.getpid()
    me.close()


def _cells(tmp_path, claims: Claims) -> Cells:
    return Cells(
        CellStore(tmp_path / "work"),
        claims.console or Console(file=io.StringIO()),
        command="t",
        hardware="h",
        claims=claims,
    )


def test_the_claim_is_held_while_a_cell_computes_as_one_process_and_removed_with_the_record(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun (no process group runs)
    monkeypatch.setenv("RANK", "1")
    cells = _cells(tmp_path, Claims(FAST))
    assert cells.claims.worker.rank == 1 and cells.claims.worker.size == 2
    key = CellKey("expt_gap", "rf_magpie", 3)
    record = cells.store.path(key, "fp")
    seen = {}

    def compute():
        seen["claim"] = json.loads(claim_file(record).read_text())
        seen["world"] = join()  # what training in the cell gets: one process, not torchrun's world
        return {"metrics": {"mae": 0.5}}

    rec = cells.run(key, "fp", compute)
    assert seen["claim"]["pid"] == os.getpid() and seen["claim"]["rank"] == 1
    assert seen["world"] == World() and World.from_env() == World(1, 2, 1, 2)
    assert rec["metrics"]["mae"] == 0.5 and cells.store.get(key, "fp") == rec
    assert not claim_file(record).exists() and not list(record.parent.glob("*.claim*"))
    with single_process():
        assert join() == World()
    cells.claims.close()


def test_a_failed_cell_is_recorded_and_stops_the_workers_that_wait_for_it(tmp_path):
    console, out = _console()
    started_before = time.time() - 10
    failing = _cells(tmp_path, _claims(console=console))
    key = CellKey("expt_gap", "finetune_anchor_replay", 2)
    record = failing.store.path(key, "fp")

    def boom():
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        failing.run(key, "fp", boom)
    assert not claim_file(record).exists()
    info = json.loads(failure_file(record).read_text())
    assert "RuntimeError: out of memory" in info["error"]
    # a worker that was running when it failed stops with the error instead of waiting for it
    waiting = _cells(tmp_path, _claims(os.getppid(), started=started_before))
    with pytest.raises(CellFailed, match=r"expt_gap/finetune_anchor_replay fold 2 failed in worker .*out of memory"):
        waiting.run(key, "fp", lambda: pytest.fail("a failed cell is not retried by a running worker"))
    # a worker started afterwards (the same command run again) tries it again
    later = _cells(tmp_path, _claims(os.getppid(), started=time.time() + 1))
    assert later.run(key, "fp", lambda: {"metrics": {"mae": 0.25}})["metrics"]["mae"] == 0.25
    assert not failure_file(record).exists()


def test_a_worker_waits_for_a_cell_another_one_computes(tmp_path):
    """The holder is simulated: a claim of another live process, and the record written
    once the waiting worker has said what it waits for."""
    lines, said = [], threading.Event()

    class Recording:
        def print(self, text, *a, **k):
            lines.append(str(text))
            if "waiting for" in str(text):
                said.set()

    store = CellStore(tmp_path / "work")
    key = CellKey("expt_gap", "finetune_anchor_replay", 2)
    holder = _claims(os.getppid())
    assert holder.try_claim(claim_file(store.path(key, "fp")))

    def finish():
        if said.wait(LIMIT):
            store.put(key, "fp", {"metrics": {"mae": 0.3}})
            holder.release(claim_file(store.path(key, "fp")))

    t = threading.Thread(target=finish)
    t.start()
    cells = Cells(store, Recording(), command="t", hardware="h", claims=Claims(FAST, Recording()))
    with pytest.raises(Busy):
        with cells.deferring():
            cells.run(key, "fp", lambda: pytest.fail("held by another worker"))
    rec = cells.run(key, "fp", lambda: pytest.fail("held by another worker"))
    t.join()
    assert rec["metrics"]["mae"] == 0.3
    waiting = next(x for x in lines if "waiting for" in x)
    assert f"waiting for expt_gap/finetune_anchor_replay fold 2 ({HOST}:{os.getppid()})" in waiting
    assert any(f"done by {HOST}:{os.getppid()}" in x for x in lines)


def _settings(tmp_path, **kw):
    from matmtl.eval import EvalSettings

    return EvalSettings(quick=True, work_dir=str(tmp_path / "work"), progress=False, **kw)


def test_the_pretraining_run_is_made_by_one_worker_and_waited_for_by_the_others(tmp_path, monkeypatch):
    from matmtl.eval import pretrained as pre_mod

    made = []

    def fake_pretrain(run_dir, config, *, progress):
        made.append(run_dir)
        run_dir.mkdir(parents=True)
        (run_dir / "model.json").write_text("{}")
        return run_dir

    monkeypatch.setattr(pre_mod, "ensure_pretrain", fake_pretrain)
    s = _settings(tmp_path)
    cells = _cells(tmp_path, _claims())
    pre = pre_mod.Pretrained(s, "cpu", tmp_path / "work", cells)
    run_dir = tmp_path / "work" / "runs" / "pretrain" / pre.fp / "fold0"
    other = _claims(os.getppid())
    assert other.try_claim(claim_file(run_dir))  # another worker is pretraining
    with pytest.raises(Busy, match="pretraining run holding out mp fold 0"), cells.deferring():
        pre.checkpoint(0)
    assert made == [] and "transfer" not in pre.__dict__
    run_dir.mkdir(parents=True)  # ... and finishes
    (run_dir / "model.json").write_text("{}")
    other.release(claim_file(run_dir))
    assert pre.checkpoint(0) == run_dir and made == []
    assert pre.checkpoint(1) == run_dir.with_name("fold1") and made == [run_dir.with_name("fold1")]  # free: made here
    assert not list((tmp_path / "work").rglob("*.claim"))


def test_the_anchor_choice_of_a_fold_waits_for_its_replay_and_distill_cells(tmp_path, monkeypatch):
    from matmtl.eval.finetune_cells import FinetuneCells
    from matmtl.eval.pretrained import Pretrained
    from matmtl.eval.settings import VARIANTS

    ckpt = tmp_path / "given"
    ckpt.mkdir()
    (ckpt / "model.json").write_text(json.dumps({"config": {"holdout_fold": 0}, "created": "t"}))
    s = _settings(tmp_path, checkpoint=str(ckpt))
    cells = _cells(tmp_path, _claims())
    pre = Pretrained(s, "cpu", tmp_path / "work", cells)
    monkeypatch.setattr(pre, "forgetting", lambda: None)
    ft = FinetuneCells(s, "cpu", tmp_path / "work", cells, pre)
    replay, distill = (VARIANTS[f"finetune_anchor_{a}"] for a in ("replay", "distill"))
    key = CellKey("expt_gap", replay.name, 0)
    other = _claims(os.getppid())
    assert other.try_claim(claim_file(cells.store.path(key, ft.fp(replay))))  # another worker runs replay fold 0
    cells.store.put(CellKey("expt_gap", distill.name, 0), ft.fp(distill), {"validation": {"mae": 0.2, "rows": 20}})
    with pytest.raises(Busy, match="finetune_anchor_replay fold 0"), cells.deferring():
        ft.anchor_choice(0)  # the PCGrad and data-efficiency cells of fold 0 are skipped for now
    assert ft.selection == {}
    cells.store.put(key, ft.fp(replay), {"validation": {"mae": 0.1, "rows": 20}})
    other.release(claim_file(cells.store.path(key, ft.fp(replay))))
    assert ft.anchor_choice(0) == "replay" and ft.selection[0]["replay"] == 0.1


def test_sigterm_stops_a_worker_with_a_clear_error():
    with pytest.raises(WorkerStopped, match=r"stopped by SIGTERM \(torchrun ends every rank"):
        with stopping_on_sigterm(_worker(os.getpid(), rank=1, size=2)):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # the handler raises at once


def test_claim_settings_are_checked():
    from matmtl.errors import ConfigError

    with pytest.raises(ConfigError, match="ClaimSettings.lease"):
        ClaimSettings(lease=0)


# -- real workers on a tiny baseline evaluation ------------------------------------------------

ARGS = [
    "--variants", "rf_magpie", "--folds", "0,1", "--fractions", "none", "--skip-mp", "--quick",
    "--out", "out", "--markdown", "none", "--force", "--work-dir", "work", "--no-progress",
    "--claim-poll", "0.05", "--claim-lease", "60",
]  # fmt: skip
VOLATILE = {"seconds", "compute_seconds", "generated", "load_average", "load_average_at_end", "finished"}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("workers-cache")  # the Magpie features, made once


def _start(cwd: Path, name: str, cache: Path, *opts: str, rank: int | None = None) -> tuple[subprocess.Popen, Path]:
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MATMTL_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(k, None)
    if rank is not None:
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    out = cwd / f"{name}.out"
    with open(out, "w") as fh:
        p = subprocess.Popen(
            [sys.executable, CHILD, str(cwd / f"{name}.log"), *opts, "--", *ARGS],
            cwd=cwd,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    return p, out


def _wait(procs, outs) -> list[int]:
    deadline = time.time() + LIMIT
    codes = []
    try:
        for p, out in zip(procs, outs):
            try:
                codes.append(p.wait(max(1.0, deadline - time.time())))
            except subprocess.TimeoutExpired:
                pytest.fail(f"a worker still runs after {LIMIT} s (a hang):\n{out.read_text()[-3000:]}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return codes


def _until(check, procs, outs, what: str) -> None:
    deadline = time.time() + LIMIT
    while not check():
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            pytest.fail(f"never saw {what}:\n" + "\n---\n".join(o.read_text()[-3000:] for o in outs))
        time.sleep(0.05)


def _computed(cwd: Path) -> list[tuple[int, int]]:
    """(pid, fold) of every baseline cell computed by the workers run in ``cwd``."""
    rows = []
    for log in cwd.glob("*.log"):
        rows += [(int(p), int(f)) for p, f, _ in (line.split() for line in log.read_text().splitlines())]
    return rows


def _stable(obj):
    """``obj`` without timings, floats to 12 significant digits: the random forest sums its
    trees' predictions in threads, in whatever order they finish, so two runs of one cell
    (one worker or several) agree to ~1e-16, not bit for bit."""
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    if isinstance(obj, float):
        return float(f"{obj:.12g}")
    return obj


def _results(cwd: Path) -> dict:
    out = cwd / "out"
    return {n: _stable(json.loads((out / n).read_text())) for n in ("expt_gap.json", "expt_gap_predictions.json")}


def _records(cwd: Path) -> dict:
    recs = {}
    for p in (cwd / "work" / "cells").rglob("*.json"):
        r = json.loads(p.read_text())
        recs[str(p.relative_to(cwd))] = _stable([r["pred"], r["metrics"], r["fingerprint"], r["key"]])
    return recs


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shared_cache):
    """One worker alone: the results every split must give."""
    cwd = tmp_path_factory.mktemp("one-worker")
    p, out = _start(cwd, "alone", shared_cache)
    assert _wait([p], [out]) == [0], out.read_text()
    assert sorted(f for _, f in _computed(cwd)) == [0, 1]
    return cwd


def _no_claims_left(cwd: Path) -> None:
    assert not [p for p in (cwd / "work").rglob("*") if ".claim" in p.name or p.name.endswith(".failed")]


def test_two_independent_workers_split_the_cells_and_give_the_results_of_one(tmp_path, shared_cache, reference):
    """Worker a or b claims fold 0 and is held there until the other one, having done
    fold 1, waits for it: so each computes one cell, whatever their speeds."""
    go = tmp_path / "go"
    started = [_start(tmp_path, n, shared_cache, "--block-fold", "0", str(go)) for n in ("a", "b")]
    procs, outs = [p for p, _ in started], [o for _, o in started]
    _until(lambda: any("waiting for expt_gap/rf_magpie fold 0" in o.read_text() for o in outs), procs, outs, "a wait")
    go.touch()
    assert _wait(procs, outs) == [0, 0], "\n".join(o.read_text()[-3000:] for o in outs)
    computed = _computed(tmp_path)
    assert sorted(f for _, f in computed) == [0, 1] and len({pid for pid, _ in computed}) == 2  # each cell once
    assert _results(tmp_path) == _results(reference)
    assert _records(tmp_path) == _records(reference)
    _no_claims_left(tmp_path)


def test_torchrun_ranks_split_the_cells_and_rank_0_alone_writes(tmp_path, shared_cache, reference):
    go = tmp_path / "go"
    started = [_start(tmp_path, f"rank{r}", shared_cache, "--block-fold", "1", str(go), rank=r) for r in (0, 1)]
    procs, outs = [p for p, _ in started], [o for _, o in started]
    _until(lambda: any((tmp_path / f"rank{r}.log.computing").exists() for r in (0, 1)), procs, outs, "fold 1")
    held = 0 if (tmp_path / "rank0.log.computing").exists() else 1
    # the other rank has fold 0 to do, then waits for fold 1 to assemble (rank 0) or to finish (rank 1)
    _until(lambda: "waiting for expt_gap/rf_magpie fold 1" in outs[1 - held].read_text(), procs, outs, "a wait")
    go.touch()
    assert _wait(procs, outs) == [0, 0], "\n".join(o.read_text()[-3000:] for o in outs)
    assert sorted(f for _, f in _computed(tmp_path)) == [0, 1]
    assert "evaluation written" in outs[0].read_text()
    rank1 = outs[1].read_text()
    assert "rank 1 of 2: every cell is done" in rank1 and "evaluation written" not in rank1
    assert _results(tmp_path) == _results(reference)
    _no_claims_left(tmp_path)


def test_a_killed_workers_claim_is_taken_over_and_the_sweep_continues(tmp_path, shared_cache, reference):
    p, out = _start(tmp_path, "killed", shared_cache, "--block-fold", "1", str(tmp_path / "never"))
    _until(lambda: (tmp_path / "killed.log.computing").exists(), [p], [out], "fold 1 in progress")
    p.kill()
    p.wait()
    claims = list((tmp_path / "work").rglob("*.claim"))
    assert len(claims) == 1 and json.loads(claims[0].read_text())["pid"] == p.pid
    q, out2 = _start(tmp_path, "again", shared_cache)
    assert _wait([q], [out2]) == [0], out2.read_text()
    text = out2.read_text()
    assert "taking over" in text and f"process {p.pid} is gone" in text
    assert [f for pid, f in _computed(tmp_path) if pid == q.pid] == [1]  # fold 0 was finished before the kill
    assert _results(tmp_path) == _results(reference)
    _no_claims_left(tmp_path)


def test_a_failing_rank_stops_the_rank_waiting_for_its_cell_with_its_error(tmp_path, shared_cache):
    go = tmp_path / "go"
    started = [
        _start(tmp_path, f"rank{r}", shared_cache, "--block-fold", "0", str(go), "--fail", rank=r) for r in (0, 1)
    ]
    procs, outs = [p for p, _ in started], [o for _, o in started]
    _until(lambda: any("waiting for expt_gap/rf_magpie fold 0" in o.read_text() for o in outs), procs, outs, "a wait")
    go.touch()
    assert _wait(procs, outs) == [1, 1]
    held = 0 if (tmp_path / "rank0.log.computing").exists() else 1
    failed, waiting = outs[held].read_text(), outs[1 - held].read_text()
    assert "RuntimeError: boom" in failed
    assert "fold 0 failed in worker" in waiting and "boom" in waiting and f"rank {held} of 2" in waiting
    assert not list((tmp_path / "work").rglob("*.claim"))
