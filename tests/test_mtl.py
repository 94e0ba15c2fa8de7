"""matmtl.mtl on small models where the right answer is known."""
import numpy as np
import pytest
import torch

from matmtl.mtl import GeometryMonitor, MTLBackward, shared_grads


class TwoHead(torch.nn.Module):
    def __init__(self, d_in=6, width=8, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = torch.nn.Sequential(torch.nn.Linear(d_in, width), torch.nn.Tanh(), torch.nn.Linear(width, width))
        self.heads = torch.nn.ModuleDict({"a": torch.nn.Linear(width, 1), "b": torch.nn.Linear(width, 1)})

    def forward(self, x):
        z = self.encoder(x)
        return z, {t: h(z).squeeze(-1) for t, h in self.heads.items()}


def _data(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, x[:, 0] + 0.5 * x[:, 1], torch.randn(n, generator=g)


def _flat_grad(params):
    return torch.cat([p.grad.reshape(-1) for p in params])


def test_batched_task_gradients_equal_separate_backward_passes():
    model = TwoHead()
    x, ya, yb = _data()
    z, out = model(x)
    la, lb = ((out["a"] - ya) ** 2).mean(), (out["b"] - yb).abs().mean()
    params = list(model.encoder.parameters())
    g = shared_grads([la, lb], z, params)
    for row, loss in zip(g, (la, lb)):
        ref = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params, retain_graph=True)])
        assert torch.allclose(row, ref, atol=1e-6)


@pytest.mark.parametrize("balance", ["static", "uncertainty"])
def test_fast_path_equals_weighted_sum_backward(balance):
    x, ya, yb = _data()
    ref, model = TwoHead(), TwoHead()
    z, out = ref(x)
    (2.0 * ((out["a"] - ya) ** 2).mean() + 0.5 * ((out["b"] - yb) ** 2).mean()).backward()
    mtl = MTLBackward(model.parameters(), model.encoder.parameters(), ["a", "b"], balance=balance,
                      weights={"a": 2.0, "b": 0.5})
    z, out = model(x)
    mtl.backward({"a": (out["a"] - ya) ** 2, "b": (out["b"] - yb) ** 2}, z)
    assert torch.allclose(_flat_grad(model.parameters()), _flat_grad(ref.parameters()), atol=1e-6)


def test_uncertainty_weighting_downweights_the_noisy_task():
    model = TwoHead()
    x, ya, _ = _data(256)
    noisy = ya + 3.0 * torch.randn(256, generator=torch.Generator().manual_seed(5))
    mtl = MTLBackward(model.parameters(), model.encoder.parameters(), ["a", "b"], balance="uncertainty")
    opt = torch.optim.Adam([*model.parameters(), *mtl.parameters()], lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        z, out = model(x)
        mtl.backward({"a": (out["a"] - ya) ** 2, "b": (out["b"] - noisy) ** 2}, z)
        opt.step()
    w = mtl.balancer.current()
    assert w[0] > 5 * w[1]


def test_gradnorm_equalises_gradient_norms():
    model = TwoHead()
    x, ya, yb = _data(128)
    # the same kind of target in two units: task b is 100x larger (eV vs meV)
    mtl = MTLBackward(model.parameters(), model.encoder.parameters(), ["a", "b"], balance="gradnorm")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ratios = []
    for _ in range(150):
        opt.zero_grad()
        z, out = model(x)
        losses = {"a": ((out["a"] - ya) ** 2).mean(), "b": ((100 * out["b"] - 100 * ya) ** 2).mean()}
        g = shared_grads([losses["a"], losses["b"]], z, list(model.encoder.parameters())).norm(dim=1)
        w = mtl.balancer.current()
        ratios.append(float((w[1] * g[1]) / (w[0] * g[0])))
        mtl.backward(losses, z)
        opt.step()
    assert ratios[0] > 100  # raw gradient norms differ by orders of magnitude
    assert 0.5 < ratios[-1] < 2.0  # weighted norms end up on equal terms
    assert abs(float(mtl.balancer.current().sum()) - 2.0) < 1e-4


def test_soft_share_pulls_towards_the_pretrained_weights():
    model = TwoHead()
    x, ya, yb = _data()
    mtl = MTLBackward(model.parameters(), model.encoder.parameters(), ["a", "b"], soft_share=10.0)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    z, out = model(x)
    mtl.backward({"a": ((out["a"] - ya) ** 2).mean(), "b": ((out["b"] - yb) ** 2).mean()}, z)
    ref = TwoHead()
    z, out = ref(x)  # same model moved by +1: its plain gradient
    with torch.no_grad():
        for p in ref.encoder.parameters():
            p.add_(1.0)
    z, out = ref(x)
    (((out["a"] - ya) ** 2).mean() + ((out["b"] - yb) ** 2).mean()).backward()
    diff = _flat_grad(model.encoder.parameters()) - _flat_grad(ref.encoder.parameters())
    assert torch.allclose(diff, torch.full_like(diff, 10.0), atol=1e-5)


def test_bad_arguments():
    model = TwoHead()
    with pytest.raises(ValueError, match="unknown surgery"):
        MTLBackward(model.parameters(), model.encoder.parameters(), ["a", "b"], surgery="magic")
    with pytest.raises(ValueError, match="unknown balancing"):
        MTLBackward(model.parameters(), model.encoder.parameters(), ["a", "b"], balance="magic")
    with pytest.raises(ValueError, match="unknown task"):
        MTLBackward(model.parameters(), model.encoder.parameters(), ["a", "b"], weights={"c": 1.0})
    mtl = MTLBackward(model.parameters(), model.encoder.parameters(), ["a", "b"])
    x, ya, yb = _data()
    z, out = model(x)
    with pytest.raises(ValueError, match="losses missing"):
        mtl.backward({"a": out["a"].mean()}, z)
    with pytest.raises(FloatingPointError, match=r"task\(s\) \['b'\]"):
        mtl.backward({"a": out["a"].mean(), "b": out["b"].mean() * float("nan")}, z)
