"""matmtl.mtl on small models where the right answer is known."""

import numpy as np
import pytest
import torch

from matmtl.mtl import (
    GeometryMonitor,
    GradNorm,
    HalfSpace,
    MTLBackward,
    PCGrad,
    Static,
    Sum,
    Uncertainty,
    balancer_from,
    shared_grads,
    surgery_from,
)


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


@pytest.mark.parametrize("balancer", [Static(), Uncertainty()])
def test_fast_path_equals_weighted_sum_backward(balancer):
    x, ya, yb = _data()
    ref, model = TwoHead(), TwoHead()
    z, out = ref(x)
    (2.0 * ((out["a"] - ya) ** 2).mean() + 0.5 * ((out["b"] - yb) ** 2).mean()).backward()
    mtl = MTLBackward(
        model.parameters(), model.encoder.parameters(), ["a", "b"], balancer=balancer, weights={"a": 2.0, "b": 0.5}
    )
    z, out = model(x)
    mtl.backward({"a": ((out["a"] - ya) ** 2).mean(), "b": ((out["b"] - yb) ** 2).mean()}, z)
    assert torch.allclose(_flat_grad(model.parameters()), _flat_grad(ref.parameters()), atol=1e-6)


def test_uncertainty_weighting_downweights_the_noisy_task():
    model = TwoHead()
    x, ya, _ = _data(256)
    noisy = ya + 3.0 * torch.randn(256, generator=torch.Generator().manual_seed(5))
    mtl = MTLBackward(model.parameters(), model.encoder.parameters(), ["a", "b"], balancer=Uncertainty())
    opt = torch.optim.Adam([*model.parameters(), *mtl.parameters()], lr=0.1)
    for _ in range(60):
        opt.zero_grad()
        z, out = model(x)
        mtl.backward({"a": ((out["a"] - ya) ** 2).mean(), "b": ((out["b"] - noisy) ** 2).mean()}, z)
        opt.step()
    w = mtl.balancer.current()
    assert w[0] > 5 * w[1]


def test_gradnorm_equalises_gradient_norms():
    model = TwoHead()
    x, ya, yb = _data(128)
    # the same kind of target in two units: task b is 100x larger (eV vs meV)
    mtl = MTLBackward(model.parameters(), model.encoder.parameters(), ["a", "b"], balancer=GradNorm())
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
    with pytest.raises(TypeError, match="surgery must be a .*Surgery object"):
        MTLBackward(model.parameters(), model.encoder.parameters(), ["a", "b"], surgery="pcgrad")
    with pytest.raises(TypeError, match="balancer must be a .*Balancer object"):
        MTLBackward(model.parameters(), model.encoder.parameters(), ["a", "b"], balancer="gradnorm")
    with pytest.raises(ValueError, match="unknown surgery"):
        surgery_from("magic")
    with pytest.raises(ValueError, match="unknown balancing"):
        balancer_from({"name": "magic"})
    with pytest.raises(ValueError, match="main task 'c'"):
        MTLBackward(model.parameters(), model.encoder.parameters(), ["a", "b"], surgery=HalfSpace("c"))
    with pytest.raises(ValueError, match="alpha >= 0"):
        GradNorm(alpha=-1)
    with pytest.raises(ValueError, match="unknown task"):
        MTLBackward(model.parameters(), model.encoder.parameters(), ["a", "b"], weights={"c": 1.0})
    with pytest.raises(ValueError, match="background must be"):
        GeometryMonitor(every=1, k=2, background="yes")
    mtl = MTLBackward(model.parameters(), model.encoder.parameters(), ["a", "b"])
    x, ya, yb = _data()
    z, out = model(x)
    with pytest.raises(ValueError, match="losses missing"):
        mtl.backward({"a": out["a"].mean()}, z)
    with pytest.raises(ValueError, match="must be a scalar tensor"):
        mtl.backward({"a": out["a"], "b": out["b"].mean()}, z)
    with pytest.raises(FloatingPointError, match=r"task\(s\) \['b'\]"):
        mtl.backward({"a": out["a"].mean(), "b": out["b"].mean() * float("nan")}, z)


def _losses(model, x, ya, yb):
    z, out = model(x)
    return z, {"a": ((out["a"] - ya) ** 2).mean(), "b": ((out["b"] - yb) ** 2).mean()}


def _chunked(model, x, ya, yb, k):
    """The encoder on k micro-batches, as a monitored step needs it."""
    feats, losses = [], {"a": [], "b": []}
    for xs, a, b in zip(torch.tensor_split(x, k), torch.tensor_split(ya, k), torch.tensor_split(yb, k)):
        z = model.encoder(xs)
        feats.append(z)
        losses["a"].append(((model.heads["a"](z).squeeze(-1) - a) ** 2).mean())
        losses["b"].append(((model.heads["b"](z).squeeze(-1) - b) ** 2).mean())
    return feats, losses


def _step(model, mtl, x, ya, yb, k):
    if mtl.monitor_due():
        feats, losses = _chunked(model, x, ya, yb, k)
        return mtl.backward_microbatches(losses, feats)
    z, losses = _losses(model, x, ya, yb)
    return mtl.backward(losses, z)


@pytest.mark.parametrize(
    "balancer, weights",
    [
        (Static, None),
        (Static, {"a": 0.3, "b": 2.5}),  # the plain sum, fused over the micro-batch samples
        (Uncertainty, {"a": 2.0}),  # learned weights, still the plain sum
        (GradNorm, None),  # reads the (T, d) task gradients: their mean over micro-batches
    ],
)
def test_monitored_step_gives_the_same_update_as_a_plain_step(balancer, weights):
    x, ya, yb = _data(64)
    plain, monitored = TwoHead(), TwoHead()
    z, losses = _losses(plain, x, ya, yb)
    kw = dict(weights=weights)
    MTLBackward(plain.parameters(), plain.encoder.parameters(), ["a", "b"], balancer=balancer(), **kw).backward(
        losses, z
    )
    mtl = MTLBackward(
        monitored.parameters(),
        monitored.encoder.parameters(),
        ["a", "b"],
        balancer=balancer(),
        monitor=GeometryMonitor(1, 4),
        **kw,
    )
    _step(monitored, mtl, x, ya, yb, 4)
    assert torch.allclose(_flat_grad(monitored.parameters()), _flat_grad(plain.parameters()), atol=1e-6)
    (rec,) = mtl.close()
    assert np.array(rec["angles"]).shape == (2, 2, 4)


def test_identical_tasks_angles_zero_and_surgery_has_no_effect():
    x, ya, _ = _data(64)
    grads = {}
    records = None
    for surgery in (Sum(), PCGrad(), HalfSpace()):
        model = TwoHead()
        with torch.no_grad():  # two identical heads on one target: identical tasks
            model.heads["b"].load_state_dict(model.heads["a"].state_dict())
        mtl = MTLBackward(
            model.parameters(),
            model.encoder.parameters(),
            ["a", "b"],
            surgery=surgery,
            monitor=GeometryMonitor(every=1, k=4),
        )
        _step(model, mtl, x, ya, ya, 4)
        grads[surgery.name] = _flat_grad(model.encoder.parameters())
        records = mtl.close()
    assert torch.allclose(grads["pcgrad"], grads["none"], atol=1e-6)
    assert torch.allclose(grads["halfspace"], grads["none"], atol=1e-6)
    (rec,) = records
    angles = np.array(rec["angles"])
    assert angles.shape == (2, 2, 4) and np.allclose(angles[0, 1], 0.0, atol=1e-3)
    assert np.isclose(rec["mean_cosine"][0][1], 1.0, atol=1e-5)


def test_opposed_tasks_pcgrad_removes_the_conflict():
    x, ya, _ = _data(64)
    model = TwoHead()
    with torch.no_grad():  # head b = -head a, same target: the tasks pull the encoder apart
        for pb, pa in zip(model.heads["b"].parameters(), model.heads["a"].parameters()):
            pb.copy_(-pa)
    mtl = MTLBackward(
        model.parameters(),
        model.encoder.parameters(),
        ["a", "b"],
        surgery=PCGrad(),
        seed=3,
        monitor=GeometryMonitor(every=1, k=2),
    )
    z, losses = _losses(model, x, ya, 0.3 * ya)
    params = list(model.encoder.parameters())
    g = shared_grads([losses["a"], losses["b"]], z, params)
    assert float(g[0] @ g[1]) < 0  # a real conflict
    _step(model, mtl, x, ya, 0.3 * ya, 2)
    update = _flat_grad(params)
    from matmtl import geometry

    ref = geometry.pcgrad(g.detach(), seed=3)
    for i in range(2):  # neither projected gradient conflicts with the other task
        assert float(ref.projected[i] @ g[1 - i]) >= -1e-6
    assert torch.allclose(update, ref.total, atol=1e-5)
    assert mtl.close()[0]["mean_cosine"][0][1] < 0


def test_halfspace_update_does_not_increase_the_anchor_loss():
    x, ya, yb = _data(64)
    model = TwoHead()
    mtl = MTLBackward(
        model.parameters(), model.encoder.parameters(), ["a", "b"], surgery=HalfSpace("a"), weights={"b": 0.1}
    )
    z, losses = _losses(model, x, ya, yb)
    params = list(model.encoder.parameters())
    g_anchor = shared_grads([losses["b"]], z, params)[0]
    mtl.backward(losses, z)
    assert float(_flat_grad(params) @ g_anchor) >= -1e-7


@pytest.mark.parametrize("background", ["auto", True, False])
def test_monitor_records_every_n_steps_inline_or_in_the_background(background):
    model = TwoHead()
    x, ya, yb = _data(64)
    monitor = GeometryMonitor(every=3, k=4, background=background)
    mtl = MTLBackward(model.parameters(), model.encoder.parameters(), ["a", "b"], monitor=monitor)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(7):
        opt.zero_grad()
        _step(model, mtl, x, ya, yb, 4)
        opt.step()
    records = mtl.close()
    assert (monitor._pool is not None) == (background is True)  # CPU gradients: inline unless forced
    assert [r["step"] for r in records] == [0, 3, 6]
    for r in records:
        a = np.array(r["angles"])
        assert a.shape == (2, 2, 4) and ((a >= 0) & (a <= np.pi / 2 + 1e-9)).all()
        assert np.allclose(a, a.transpose(1, 0, 2))


def test_monitored_step_needs_micro_batches():
    model = TwoHead()
    x, ya, yb = _data(64)
    mtl = MTLBackward(model.parameters(), model.encoder.parameters(), ["a", "b"], monitor=GeometryMonitor(1, 4))
    z, losses = _losses(model, x, ya, yb)
    with pytest.raises(ValueError, match="feeds the gradient monitor"):
        mtl.backward(losses, z)
    feats, chunks = _chunked(model, x, ya, yb, 4)
    chunks["b"] = chunks["b"][:3]
    with pytest.raises(ValueError, match=r"loss of task\(s\) \['b'\] must be a list of 4"):
        mtl.backward_microbatches(chunks, feats)


def test_heads_reading_two_batches_through_one_encoder():
    # fine-tuning batch for task a, a replayed batch for task b: features is a tuple
    model = TwoHead()
    x1, ya, _ = _data(32, seed=1)
    x2, _, yb = _data(48, seed=2)
    z1, z2 = model.encoder(x1), model.encoder(x2)
    la = ((model.heads["a"](z1).squeeze(-1) - ya) ** 2).mean()
    lb = ((model.heads["b"](z2).squeeze(-1) - yb) ** 2).mean()
    params = list(model.encoder.parameters())
    g = shared_grads([la, lb], (z1, z2), params)
    for row, loss in zip(g, (la, lb)):
        ref = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params, retain_graph=True)])
        assert torch.allclose(row, ref, atol=1e-6)


@pytest.mark.parametrize(
    "make", [Static, Uncertainty, lambda: GradNorm(alpha=0.5, lr=0.05), Sum, PCGrad, lambda: HalfSpace("b")]
)
def test_strategies_round_trip_through_json(make):
    import json

    obj = make()
    back = (
        balancer_from
        if hasattr(obj, "needs_grads") and obj.name in ("static", "uncertainty", "gradnorm")
        else surgery_from
    )(json.loads(json.dumps(obj.to_dict())))
    assert back == obj and type(back) is type(obj) and repr(back) == repr(obj)


def test_state_dict_restores_a_gradnorm_run():
    """MTLBackward's torch-style state: step count, learned weights and monitor records."""
    x, ya, yb = _data(128)
    runs = []
    for _ in range(2):
        model = TwoHead()
        runs.append(
            (
                model,
                MTLBackward(
                    model.parameters(),
                    model.encoder.parameters(),
                    ["a", "b"],
                    balancer=GradNorm(),
                    monitor=GeometryMonitor(every=2, k=2),
                ),
            )
        )
    (m1, a), (m2, b) = runs
    for _ in range(3):
        _step(m1, a, x, ya, 10 * yb, 2)
    b.load_state_dict(json_round_trip(a.state_dict()))
    assert b.step == a.step == 3 and torch.equal(b.balancer.current(), a.balancer.current())
    assert b.records() == a.records() and len(a.records()) == 2


def json_round_trip(obj):
    import json

    return json.loads(json.dumps(obj))


# -- the monitor's per-micro-batch gradients on several kinds of encoder -------------------


class _Tied(torch.nn.Module):
    """Linear, LayerNorm, one linear layer applied twice (tied weights), and a shared
    parameter the forward pass never uses: linear-layer and generic parameters mixed."""

    def __init__(self):
        super().__init__()
        self.inp, self.norm, self.mid = torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 8)
        self.unused = torch.nn.Parameter(torch.ones(3))

    def forward(self, x):
        h = torch.nn.functional.silu(self.norm(self.inp(x)))
        return self.mid(torch.tanh(self.mid(h)))


class _Tokens(torch.nn.Module):
    """3-D input to the linear layers (tokens), a bias-free layer (mm) and a parameter
    used as ``x @ W`` with its bias added apart (a generic parameter)."""

    def __init__(self):
        super().__init__()
        self.tok = torch.nn.Linear(2, 8)
        self.proj = torch.nn.Linear(8, 8, bias=False)
        self.w = torch.nn.Parameter(torch.randn(8, 8) / 3)
        self.b = torch.nn.Parameter(torch.randn(8) / 3)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.tok(x.view(len(x), 3, 2))).mean(1)
        return torch.tanh(self.proj(h)) @ self.w + self.b


class _Conv(torch.nn.Module):
    """No linear layer at all: the generic paths."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 2, 3)

    def forward(self, x):
        return torch.tanh(self.conv(x.unsqueeze(1))).flatten(1)[:, :8]


_ENCODERS = {
    "mlp": lambda: torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8)),
    "tied_norm_unused": _Tied,
    "tokens_mm_matmul": _Tokens,
    "conv": _Conv,
}


def _model(encoder: str) -> TwoHead:
    model = TwoHead()
    torch.manual_seed(3)
    model.encoder = _ENCODERS[encoder]()
    return model


def _reference(losses: dict, params: list) -> torch.Tensor:
    """(T, k, d): each task's gradient on each micro-batch, one autograd call each."""
    rows = []
    for chunk_losses in losses.values():
        for loss in chunk_losses:
            gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True) if loss.requires_grad else ()
            gs = gs or [None] * len(params)
            rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(gs, params)]))
    return torch.stack(rows).view(len(losses), -1, rows[0].numel())


@pytest.mark.parametrize("encoder", list(_ENCODERS))
@pytest.mark.parametrize("method", ["auto", "batched", "loop"])
def test_microbatch_gradients_equal_per_task_per_microbatch_autograd(encoder, method):
    from matmtl.mtl.gradients import chunked_shared_grads

    model = _model(encoder)
    x, ya, yb = _data(64)
    feats, losses = _chunked(model, x, ya, yb, 4)
    params = list(model.encoder.parameters())
    ref = _reference(losses, params)
    out = torch.full_like(ref, float("nan"))  # every entry written, unused parameters' zeros included
    got = chunked_shared_grads(losses, feats, params, out=out, method=method)
    assert got is out
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-7), (got - ref).abs().max()
    if encoder == "tied_norm_unused":
        assert params[0] is model.encoder.unused and (got[..., :3] == 0).all()  # (own parameters come first)


@pytest.mark.parametrize("encoder", ["mlp", "tied_norm_unused"])
def test_microbatch_gradients_when_micro_batches_share_one_graph(encoder):
    """Micro-batches sliced from ONE encoder pass (the chunks' graphs share their linear
    layers), a tuple of representations, a task without rows in one micro-batch."""
    from matmtl.mtl.gradients import chunked_shared_grads

    model = _model(encoder)
    x, ya, yb = _data(64)
    x2, _, _ = _data(32, seed=7)
    z, z2 = model.encoder(x), model.encoder(x2)
    feats = [(z[i * 16 : (i + 1) * 16], z2[i * 8 : (i + 1) * 8]) for i in range(4)]
    losses = {
        "a": [
            ((model.heads["a"](f).squeeze(-1) - ya[i * 16 : (i + 1) * 16]) ** 2).mean()
            for i, (f, _) in enumerate(feats)
        ],
        "b": [(model.heads["b"](f2).squeeze(-1) - 1.0).abs().mean() for _, f2 in feats],
    }
    losses["b"][2] = torch.zeros(())  # no labelled rows of task b in micro-batch 2
    params = list(model.encoder.parameters())
    ref = _reference(losses, params)
    got = chunked_shared_grads(losses, feats, params)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-7)
    assert (got[1, 2] == 0).all()


@pytest.mark.parametrize("encoder", list(_ENCODERS))
@pytest.mark.parametrize("surgery", [Sum, PCGrad])
def test_monitored_step_update_unchanged_on_every_gradient_path(encoder, surgery):
    """The monitored step's parameter gradients are the plain step's, whichever path
    computed the per-task gradients, and the monitor receives the reference (T, k, d)."""
    x, ya, yb = _data(64)
    plain, monitored = _model(encoder), _model(encoder)
    z, losses = _losses(plain, x, ya, yb)
    MTLBackward(plain.parameters(), plain.encoder.parameters(), ["a", "b"], surgery=surgery()).backward(losses, z)
    seen = []

    class Keep(GeometryMonitor):
        def submit(self, step, tasks, grads):
            seen.append(grads.clone())

    shared = list(monitored.encoder.parameters())
    mtl = MTLBackward(monitored.parameters(), shared, ["a", "b"], surgery=surgery(), monitor=Keep(1, 4))
    feats, chunks = _chunked(monitored, x, ya, yb, 4)
    ref = _reference(chunks, shared)
    mtl.backward_microbatches(chunks, feats)
    for p in plain.parameters():  # (a plain step leaves an unused parameter's gradient None)
        p.grad = torch.zeros_like(p) if p.grad is None else p.grad
    assert torch.allclose(_flat_grad(monitored.parameters()), _flat_grad(plain.parameters()), rtol=1e-5, atol=1e-6)
    assert torch.allclose(seen[0], ref, rtol=1e-5, atol=1e-7)


def test_gradient_method_is_checked():
    from matmtl.mtl.gradients import chunked_shared_grads

    model = TwoHead()
    feats, losses = _chunked(model, *_data(16), 2)
    with pytest.raises(ValueError, match="method must be one of"):
        chunked_shared_grads(losses, feats, list(model.encoder.parameters()), method="vmap")
