"""Fault injection: a training process killed (SIGKILL) at many points, including inside
the writes of its saved state, resumes to exactly the weights of an uninterrupted run; a
write that fails part-way leaves the previous state intact."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from safetensors.numpy import load_file

# the child: a tiny pretraining that kills itself at the K-th file replacement (an atomic
# write landing) or at the S-th optimizer step
CHILD = textwrap.dedent("""
    import os, signal, sys
    import torch
    from matmtl.config import PretrainConfig, TrainConfig
    from matmtl.models import ModelConfig
    from matmtl.train import pretrain
    point, n = sys.argv[2], int(sys.argv[3])
    count = {"n": 0}

    def maybe_die():
        count["n"] += 1
        if count["n"] == n:
            os.kill(os.getpid(), signal.SIGKILL)

    if point == "replace":
        real = os.replace
        def replace(a, b):
            if str(b).endswith((".json", ".safetensors")):
                maybe_die()
            return real(a, b)
        os.replace = replace
    else:
        real_step = torch.optim.AdamW.step
        def step(self, *a, **k):
            maybe_die()
            return real_step(self, *a, **k)
        torch.optim.AdamW.step = step
    cfg = PretrainConfig(tasks=("e_form",), holdout_fold=0, max_rows=240, model=ModelConfig.preset("tiny"),
                         train=TrainConfig.preset("tiny", epochs=3))
    pretrain(cfg, sys.argv[1], progress=False)
""")


def _run_child(out, point, n, cache):
    env = {**os.environ, "PYTHONHASHSEED": "0", "MATMTL_CACHE_DIR": str(cache)}
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(out), point, str(n)], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    done = _run_child(root / "full", "replace", 10_000, root / "cache")
    assert done.returncode == 0, done.stderr[-2000:]
    return root, load_file(str(root / "full" / "model.safetensors"))


# replacements: 1 config.json, then per epoch the state's tensors and state.json, then the
# final files; steps: 3 per epoch
@pytest.mark.parametrize(
    "point, n",
    [
        ("replace", 2),
        ("replace", 3),
        ("replace", 4),
        ("replace", 5),
        ("replace", 7),
        ("replace", 8),
        ("step", 2),
        ("step", 5),
        ("step", 8),
    ],
)
def test_killed_anywhere_resumes_to_identical_weights(reference, point, n, monkeypatch):
    from matmtl.train import resume

    root, want = reference
    out = root / f"killed-{point}-{n}"
    monkeypatch.setenv("MATMTL_CACHE_DIR", str(root / "cache"))
    died = _run_child(out, point, n, root / "cache")
    assert died.returncode == -9, died.stderr[-2000:]  # it really was killed
    resume(out, progress=False)
    got = load_file(str(out / "model.safetensors"))
    assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)


def test_a_failed_state_write_keeps_the_previous_state(tmp_path, monkeypatch):
    """ENOSPC in the middle of an epoch's state write: the run stops with a clear error,
    the previous epoch's state is intact and resuming ends where an uninterrupted run does."""
    import errno

    from matmtl import checkpoints
    from matmtl.config import PretrainConfig, TrainConfig
    from matmtl.models import ModelConfig
    from matmtl.train import pretrain, resume

    cfg = PretrainConfig(
        tasks=("e_form",),
        holdout_fold=0,
        max_rows=240,
        model=ModelConfig.preset("tiny"),
        train=TrainConfig.preset("tiny", epochs=3),
    )
    full = pretrain(cfg, tmp_path / "full", progress=False)
    real, calls = checkpoints.save_tensors, {"n": 0}

    def disk_full_on_second(path, tensors):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, tensors)

    monkeypatch.setattr("matmtl.train.engine.save_tensors", disk_full_on_second)
    with pytest.raises(OSError, match="No space left"):
        pretrain(cfg, tmp_path / "part", progress=False)
    monkeypatch.setattr("matmtl.train.engine.save_tensors", real)
    assert (tmp_path / "part" / "state" / "state-0001.safetensors").is_file()
    resume(tmp_path / "part", progress=False)
    a, b = (load_file(str(p / "model.safetensors")) for p in (full.run_dir, tmp_path / "part"))
    assert all(np.array_equal(a[k], b[k]) for k in a)
