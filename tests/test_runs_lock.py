"""Run folders have one writer: atomic claims (of processes racing on one --out exactly one
wins), a lock held for the run's lifetime, resume refused while a live process holds it,
no folder left behind by a run that fails before its first saved state."""

import json
import multiprocessing as mp
import os
import signal
import stat
import time

import pytest

from matmtl.errors import MatmtlError
from matmtl.train.runs import (
    RunBusyError,
    claim_run_dir,
    interrupted_message,
    latest_run,
    lock_is_held,
    new_run_dir,
    open_for_resume,
    read_lock_info,
    resume_hint,
)

CTX = mp.get_context("fork")


def _race(out, barrier, results):
    barrier.wait()
    try:
        run = claim_run_dir("pretrain", out)
    except MatmtlError as exc:
        results.put(("lost", type(exc).__name__))
        return
    results.put(("won", os.getpid()))
    time.sleep(0.3)  # hold it while the others try
    run.release()


@pytest.mark.parametrize("pre_existing_empty", [False, True])
def test_racing_claims_on_one_out_exactly_one_wins(tmp_path, pre_existing_empty):
    for trial in range(3):
        out = tmp_path / f"run{trial}"
        if pre_existing_empty:
            out.mkdir()
        n = 4
        barrier, results = CTX.Barrier(n), CTX.Queue()
        procs = [CTX.Process(target=_race, args=(out, barrier, results)) for _ in range(n)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        got = [results.get(timeout=5) for _ in range(n)]
        assert sum(1 for g in got if g[0] == "won") == 1, got
        assert out.is_dir()
        assert not [p for p in tmp_path.iterdir() if ".claim-" in p.name]  # no temporary folders left


def test_claim_creates_locks_and_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        run = claim_run_dir("finetune", tmp_path / "a")
    finally:
        os.umask(old)
    assert run.path.is_dir() and run.held and lock_is_held(run.path)
    assert stat.S_IMODE(run.path.stat().st_mode) == 0o755
    info = read_lock_info(run.path)
    assert info["pid"] == os.getpid() and info["kind"] == "finetune"
    with pytest.raises(RunBusyError, match="claimed by process"):
        claim_run_dir("finetune", tmp_path / "a")
    run.release()
    assert not lock_is_held(run.path)


def test_failure_before_first_saved_state_leaves_no_folder(tmp_path):
    out = tmp_path / "r"
    with pytest.raises(ValueError, match="negative label"):
        with claim_run_dir("finetune", out) as run:
            (run.path / "config.json").write_text("{}")
            raise ValueError("negative label")
    assert not out.exists()
    assert latest_run("finetune", complete=False) is None
    # a folder the user made empty stays, empty
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        with claim_run_dir("finetune", out) as run:
            (run.path / "config.json").write_text("{}")
            raise KeyboardInterrupt
    assert out.is_dir() and not any(out.iterdir())
    # the default location too
    with pytest.raises(RuntimeError):
        with claim_run_dir("pretrain") as run:
            made = run.path
            raise RuntimeError("bad settings")
    assert not made.exists()


def test_failure_after_a_saved_state_keeps_the_folder_and_says_how_to_resume(tmp_path):
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        with claim_run_dir("pretrain", out) as run:
            (run.path / "config.json").write_text(json.dumps({"kind": "pretrain"}))
            (run.path / "state").mkdir()
            (run.path / "state" / "state.json").write_text(json.dumps({"epoch": 4}))
            raise KeyboardInterrupt
    assert out.is_dir() and not lock_is_held(out)
    msg = interrupted_message(out, "pretrain")
    assert str(out / "state") in msg and "after epoch 4" in msg
    assert f"matmtl pretrain --resume --out {out}" in msg
    # a new run may not take it; a resume may
    with pytest.raises(MatmtlError, match="already exists and is not empty.*--resume --out"):
        claim_run_dir("pretrain", out)
    with open_for_resume(out, "pretrain") as run:
        assert run.resumed and lock_is_held(out)
    assert out.is_dir()


def test_resume_hint_is_the_exact_command(tmp_path):
    assert resume_hint(tmp_path / "my run", "finetune") == f"matmtl finetune --resume --out '{tmp_path / 'my run'}'"
    assert resume_hint("/x/y", "pretrain") == "matmtl pretrain --resume --out /x/y"


def _hold(out, ready, stop):
    run = open_for_resume(out)
    ready.set()
    stop.wait(30)
    run.release()


def test_resume_refuses_a_run_a_live_process_holds(tmp_path):
    out = tmp_path / "live"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"kind": "pretrain"}))
    ready, stop = CTX.Event(), CTX.Event()
    p = CTX.Process(target=_hold, args=(out, ready, stop))
    p.start()
    try:
        assert ready.wait(20)
        with pytest.raises(RunBusyError, match=f"still being written by process {p.pid}"):
            open_for_resume(out, "pretrain")
    finally:
        os.kill(p.pid, signal.SIGKILL)  # dies holding the lock: the kernel releases it
        p.join(10)
    assert (out / ".lock").exists()  # a stale lock file ...
    with open_for_resume(out, "pretrain"):  # ... does not block
        assert read_lock_info(out)["pid"] == os.getpid()


def test_resume_checks(tmp_path):
    with pytest.raises(MatmtlError, match="no such folder"):
        open_for_resume(tmp_path / "missing")
    (tmp_path / "nocfg").mkdir()
    with pytest.raises(MatmtlError, match="no config.json"):
        open_for_resume(tmp_path / "nocfg")
    done = tmp_path / "done"
    done.mkdir()
    (done / "config.json").write_text(json.dumps({"kind": "finetune"}))
    with pytest.raises(MatmtlError, match="is a finetune run, not a pretrain run"):
        open_for_resume(done, "pretrain")
    (done / "model.json").write_text("{}")
    with pytest.raises(MatmtlError, match="already finished"):
        open_for_resume(done, "finetune")


def test_bad_kind_and_out_is_a_file(tmp_path):
    with pytest.raises(MatmtlError, match="run kind must be one of"):
        claim_run_dir("evaluate", tmp_path / "x")
    (tmp_path / "f").write_text("x")
    with pytest.raises(MatmtlError, match="is a file"):
        claim_run_dir("pretrain", tmp_path / "f")


def test_new_run_dir_still_works(tmp_path):
    p = new_run_dir("pretrain", tmp_path / "n")
    assert p.is_dir() and not any(p.iterdir())  # released: no lock file left
    with pytest.raises(MatmtlError):
        (p / "config.json").write_text("{}")
        new_run_dir("pretrain", p)
