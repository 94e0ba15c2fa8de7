"""TrainConfig.precision (bf16 autocast) and TrainConfig.deterministic: through config,
config.json and the command line; bf16 reaches the forward pass while losses and per-task
gradients stay fp32; fp32 (the default) is unchanged (the bit-for-bit tests of
test_train_pipeline.py, test_kill_resume.py and test_distributed.py)."""

import json
import os

import numpy as np
import pytest
import torch
from _tiny import tiny_finetune, tiny_ft, tiny_pretrain, tiny_train
from typer.testing import CliRunner

from matmtl.config import MTLConfig, TrainConfig, config_from_dict
from matmtl.errors import ConfigError
from matmtl.mtl import GradNorm, MTLBackward, PCGrad
from matmtl.train import finetune, pretrain

# TrainConfig.numeric_dict() of the default config as every cached evaluation cell hashed it
FINGERPRINT_KEYS = [
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup",
    "seed",
    "threads",
    "device",
    "sym_dropout",
    "grad_clip",
    "val_fraction",
    "val_rows",
    "patience",
]


@pytest.mark.parametrize("preset", list(TrainConfig.PRESETS))
def test_default_fingerprint_fields_are_unchanged(preset):
    cfg = TrainConfig.preset(preset)
    assert list(cfg.numeric_dict()) == FINGERPRINT_KEYS
    bf16 = TrainConfig.preset(preset, precision="bf16", deterministic=True).numeric_dict()
    assert bf16 == {**cfg.numeric_dict(), "precision": "bf16", "deterministic": True}


def test_settings_round_trip_and_old_run_folders_read_defaults():
    cfg = tiny_pretrain(train=tiny_train(precision="bf16", deterministic=True))
    back = config_from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back.train.precision == "bf16" and back.train.deterministic is True and back == cfg
    old = cfg.to_dict()
    for k in ("precision", "deterministic"):
        del old["train"][k]  # a run folder written before these settings
    train = config_from_dict(old).train
    assert train.precision == "fp32" and train.deterministic is False
    with pytest.raises(ConfigError, match="TrainConfig.precision"):
        TrainConfig(precision="fp16")
    with pytest.raises(ConfigError, match="TrainConfig.deterministic"):
        TrainConfig(deterministic="yes")


class _Stop(Exception):
    pass


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_command_line_options_reach_the_config(command, monkeypatch, tmp_path):
    from matmtl import train
    from matmtl.cli import app

    seen = []

    def capture(config, out, progress=True):
        seen.append(config)
        raise _Stop

    monkeypatch.setenv("MATMTL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(train, command, capture)
    args = [command, "--device", "cpu", "--out", str(tmp_path / "run")]
    r = CliRunner().invoke(app, args + ["--precision", "bf16", "--deterministic"])
    assert isinstance(r.exception, _Stop), r.output
    r = CliRunner().invoke(app, args)
    assert isinstance(r.exception, _Stop), r.output
    assert (seen[0].train.precision, seen[0].train.deterministic) == ("bf16", True)
    assert (seen[1].train.precision, seen[1].train.deterministic) == ("fp32", False)
    r = CliRunner().invoke(app, args + ["--precision", "fp16"])
    assert r.exit_code == 2 and "--precision" in r.output


def test_cuda_determinism_switch(monkeypatch):
    """The switch itself (no GPU needed): strict deterministic algorithms and cuBLAS's
    workspace setting; off again gives torch's default kernels."""
    from matmtl.train.engine import CUBLAS_WORKSPACE, cuda_determinism

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        cuda_determinism(True)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
        assert (
            torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
        )
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        cuda_determinism(False)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:  # what set_determinism leaves on CPU
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny pretraining + fine-tuning runs in fp32 and bf16 (GradNorm and PCGrad need the
    per-task gradients; the monitor gets (T, k, d) samples), recording the dtypes seen."""
    from matmtl.models.net import Encoder
    from matmtl.mtl import GeometryMonitor

    root = tmp_path_factory.mktemp("precision")
    seen = {"encoder": set(), "grads": set(), "losses": set(), "monitor": set()}
    enc, finish, submit = Encoder.forward, MTLBackward._finish, GeometryMonitor.submit

    def enc_spy(self, *a, **kw):
        out = enc(self, *a, **kw)
        if torch.is_grad_enabled():  # (training steps, not validation scoring)
            seen["encoder"].add(out.dtype)
        return out

    def finish_spy(self, scalars, grads, ddp=False):
        seen["losses"].update(s.dtype for s in (scalars.values() if isinstance(scalars, dict) else scalars))
        if grads is not None:
            seen["grads"].add(grads.dtype)
        return finish(self, scalars, grads, ddp)

    def submit_spy(self, step, tasks, grads):
        seen["monitor"].add(grads.dtype)
        return submit(self, step, tasks, grads)

    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MATMTL_CACHE_DIR", str(root / "cache"))
        mp.setattr(Encoder, "forward", enc_spy)
        mp.setattr(MTLBackward, "_finish", finish_spy)
        mp.setattr(GeometryMonitor, "submit", submit_spy)
        mtl = MTLConfig(balancer=GradNorm(), surgery=PCGrad(), monitor_every=2, monitor_k=2)
        for precision in ("fp32", "bf16"):
            for k in seen:
                seen[k] = set()
            pre = pretrain(
                tiny_pretrain(["e_form", "gap_pbe"], max_rows=200, train=tiny_train(epochs=1, precision=precision)),
                root / f"pre-{precision}",
                progress=False,
            )
            ft = finetune(
                tiny_finetune(
                    pre.run_dir, max_train_rows=64, replay_max_rows=64, train=tiny_ft(precision=precision), mtl=mtl
                ),
                root / f"ft-{precision}",
                progress=False,
            )
            out[precision] = (pre, ft, {k: set(v) for k, v in seen.items()})
    return out


def test_bf16_trains_with_finite_metrics_and_differs_from_fp32(runs):
    for precision, (pre, ft, _) in runs.items():
        assert np.isfinite(pre.metrics["holdout"]["e_form"]["mae"]), precision
        assert np.isfinite(ft.metrics["holdout"]["gap_expt"]["mae"]), precision
        assert all(np.isfinite(v) for row in ft.history for k, v in row.items() if k.startswith("loss")), precision
        assert config_from_dict(json.loads((ft.run_dir / "config.json").read_text())).train.precision == precision
    # autocast really reached the forward pass: other numbers, not far from fp32's
    (pre32, ft32, _), (pre16, ft16, _) = runs["fp32"], runs["bf16"]
    assert pre16.history[0]["loss"] != pre32.history[0]["loss"]
    assert ft16.history[-1]["loss"] != ft32.history[-1]["loss"]
    assert abs(pre16.history[0]["loss"] - pre32.history[0]["loss"]) < 0.05 * pre32.history[0]["loss"]


def test_bf16_forward_with_fp32_losses_and_task_gradients(runs):
    # fp32: no autocast anywhere (an fp32 encoder output; the default's numbers are checked bit for bit elsewhere)
    assert runs["fp32"][2] == {k: {torch.float32} for k in ("encoder", "grads", "losses", "monitor")}
    seen = runs["bf16"][2]
    assert seen["encoder"] == {torch.bfloat16}  # the encoder ran under autocast
    assert seen["losses"] == seen["grads"] == seen["monitor"] == {torch.float32}
