"""The CUDA paths (skipped without a CUDA GPU; scripts/gpu_check.sh runs them): tiny
pretraining in fp32 and bf16, deterministic repeats, multi-task strategies on the GPU,
and the geometry core's torch (CUDA) path against the Rust (CPU) one."""

import numpy as np
import pytest
import torch
from _tiny import tiny_finetune, tiny_ft, tiny_pretrain, tiny_train
from safetensors.torch import load_file

from matmtl import geometry as geo
from matmtl.config import MTLConfig
from matmtl.mtl import GradNorm, PCGrad, Uncertainty
from matmtl.train import finetune, pretrain

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MATMTL_CACHE_DIR", str(tmp_path / "cache"))


def _pre(tmp_path, name, **train):
    cfg = tiny_pretrain(["e_form", "gap_pbe"], max_rows=400, train=tiny_train(device="cuda", **train))
    return pretrain(cfg, tmp_path / name, progress=False)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_tiny_pretrain_on_cuda_has_finite_metrics(tmp_path, precision):
    res = _pre(tmp_path, precision, precision=precision)
    assert all(np.isfinite(res.metrics["holdout"][t]["mae"]) for t in ("e_form", "gap_pbe"))
    assert all(np.isfinite(v) for row in res.history for k, v in row.items() if k.startswith("loss"))


def test_cuda_and_cpu_runs_agree_roughly(tmp_path):
    gpu = _pre(tmp_path, "gpu")
    cpu = pretrain(
        tiny_pretrain(["e_form", "gap_pbe"], max_rows=400, train=tiny_train(device="cpu")),
        tmp_path / "cpu",
        progress=False,
    )
    a, b = gpu.history[-1]["loss"], cpu.history[-1]["loss"]
    assert abs(a - b) < 0.02 * abs(b), (a, b)  # same seeds and batches; kernels differ in rounding only


def test_deterministic_cuda_runs_repeat_exactly(tmp_path):
    a, b = (_pre(tmp_path, f"det{i}", deterministic=True) for i in range(2))
    wa, wb = load_file(str(a.run_dir / "model.safetensors")), load_file(str(b.run_dir / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    "mtl",
    [
        MTLConfig(balancer=Uncertainty()),
        MTLConfig(balancer=GradNorm(), surgery=PCGrad(), monitor_every=2, monitor_k=2),
    ],
)
def test_finetune_strategies_on_cuda(tmp_path, mtl):
    pre = _pre(tmp_path, "pre", precision="bf16")
    train = tiny_ft(device="cuda", precision="bf16")
    cfg = tiny_finetune(pre.run_dir, max_train_rows=96, replay_max_rows=128, mtl=mtl, train=train)
    res = finetune(cfg, tmp_path / "ft", progress=False)
    assert np.isfinite(res.metrics["holdout"]["gap_expt"]["mae"])
    if mtl.monitor_every:
        assert len(res.metrics["gradient_geometry"]) >= 2


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-8), (torch.float32, 1e-3)])
def test_geometry_cuda_path_agrees_with_the_cpu_path(dtype, tol):
    g = torch.Generator().manual_seed(0)
    mats = [torch.randn(5000, 4, generator=g, dtype=dtype) for _ in range(3)]
    cpu = geo.subspace_geometry(mats)
    gpu = geo.subspace_geometry([m.cuda() for m in mats])
    assert gpu.backend == "torch" and cpu.backend != "torch"
    assert np.allclose(np.asarray(gpu.angles), np.asarray(cpu.angles), atol=tol)
    assert np.allclose(np.asarray(gpu.mean_cosine), np.asarray(cpu.mean_cosine), atol=tol)
    grads = torch.randn(3, 5000, generator=g, dtype=dtype)
    a, b = geo.pcgrad(grads, seed=7), geo.pcgrad(grads.cuda(), seed=7)
    assert b.total.is_cuda and torch.allclose(b.total.cpu(), a.total, atol=tol * 10, rtol=tol)
