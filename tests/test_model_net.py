import numpy as np
import pytest
import torch
from _tiny import tiny_model

from matmtl.models import (
    MAX_Z,
    CorrectionHead,
    ModelConfig,
    MultiTaskModel,
    TaskSpec,
    crystal_system_of_spg,
    element_table,
    state_shapes,
)


def test_element_table_covers_h_to_lr():
    t = element_table()
    assert t.shape == (MAX_Z + 1, 200)
    assert np.all(t[0] == 0) and np.all(np.abs(t[1:]).sum(1) > 0)


@pytest.mark.parametrize(
    "spg,cs",
    [
        (0, 0),
        (1, 1),
        (2, 1),
        (3, 2),
        (15, 2),
        (16, 3),
        (74, 3),
        (75, 4),
        (142, 4),
        (143, 5),
        (167, 5),
        (168, 6),
        (194, 6),
        (195, 7),
        (230, 7),
    ],
)
def test_crystal_system_of_spg(spg, cs):
    assert crystal_system_of_spg(np.array([spg]))[0] == cs


def _batch():
    z = torch.tensor([[14, 0, 0], [11, 17, 0], [31, 33, 0]])
    frac = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0.5, 0.5, 0]])
    spg = torch.tensor([227, 225, 0])
    return z, frac, spg


def test_forward_shapes_and_padding_invariance():
    torch.manual_seed(0)
    m = MultiTaskModel(tiny_model(), [TaskSpec("e_form"), TaskSpec("gap_pbe", "hurdle")]).eval()
    z, frac, spg = _batch()
    out = m(z, frac, spg)
    assert out["e_form"].shape == (3, 2, 1) and out["gap_pbe"].shape == (3, 2, 2)
    # extra padding columns change nothing
    z2 = torch.cat([z, torch.zeros(3, 7, dtype=torch.long)], 1)
    f2 = torch.cat([frac, torch.zeros(3, 7)], 1)
    assert torch.allclose(m(z2, f2, spg)["e_form"], out["e_form"], atol=1e-6)


def test_hurdle_point_is_zero_when_metal_likely_and_nonnegative():
    task = TaskSpec("gap", "hurdle")
    raw = torch.tensor([[[3.0, 1.0]], [[-3.0, 1.0]], [[-3.0, -20.0]]])  # (B, members=1, 2)
    p = MultiTaskModel.point(task, raw)
    assert p[0, 0] == 0 and p[1, 0] > 1.0 and p[2, 0] >= 0


def test_regression_point_denormalises():
    task = TaskSpec("e_form", mean=-1.0, std=2.0)
    assert MultiTaskModel.point(task, torch.tensor([[[0.5]]])).item() == pytest.approx(0.0)


def test_unknown_symmetry_token_changes_prediction_but_runs():
    torch.manual_seed(0)
    m = MultiTaskModel(tiny_model(), [TaskSpec("e_form")]).eval()
    z, frac, spg = _batch()
    a = m.predict_arrays(z.numpy(), frac.numpy(), spg.numpy())["e_form"]
    b = m.predict_arrays(z.numpy(), frac.numpy(), np.zeros(3, dtype=np.int64))["e_form"]
    assert np.all(np.isfinite(b)) and not np.allclose(a[:2], b[:2])


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(),
        ModelConfig.preset("tiny"),
        ModelConfig.preset("large"),
        ModelConfig(dim=24, layers=0, heads=3, ff_mult=3, spg_dim=5, head_hidden=7, members=3, n_fourier=2),
    ],
    ids=["default", "tiny", "large", "odd"],
)
def test_state_shapes_are_the_built_models(cfg):
    """The shapes a checkpoint is checked against (computed, nothing built) are the model's."""
    tasks = [TaskSpec("e_form"), TaskSpec("gap_expt", "hurdle", head="correction"), TaskSpec("gap_pbe", "hurdle")]
    built = {k: tuple(v.shape) for k, v in MultiTaskModel(cfg, tasks).state_dict().items()}
    assert state_shapes(cfg, tasks) == built
    with pytest.raises(ValueError, match="unknown element embedding"):
        state_shapes(ModelConfig(embedding="magpie"), tasks)


def test_a_model_from_its_state_reads_no_embedding_file(monkeypatch):
    torch.manual_seed(0)
    tasks = [TaskSpec("e_form"), TaskSpec("gap_expt", "hurdle")]
    m = MultiTaskModel(tiny_model(), tasks)
    import matmtl.models.net as net

    def no_file(name):
        raise AssertionError("the element table was read from its data file")

    monkeypatch.setattr(net, "element_table", no_file)
    m2 = MultiTaskModel.from_state(tiny_model(), tasks, m.state_dict())
    z, f, s = np.array([[8, 26]]), np.array([[0.6, 0.4]], np.float32), np.array([0])
    for k, v in m.predict_arrays(z, f, s).items():
        np.testing.assert_array_equal(v, m2.predict_arrays(z, f, s)[k])
    with pytest.raises(RuntimeError):
        MultiTaskModel.from_state(tiny_model(dim=48), tasks, m.state_dict())


def test_a_correction_head_starts_as_its_frozen_base_and_learns_only_the_difference():
    """Δ-learning: the head is base + delta; delta's last layer starts at zero, so the head
    answers as its base until it trains, and a training step moves delta only."""
    torch.manual_seed(0)
    head = CorrectionHead(dim=8, hidden=5, members=3, out=2)
    h = torch.randn(6, 8)
    torch.testing.assert_close(head(h), head.base(h))
    base_before = {k: v.clone() for k, v in head.base.state_dict().items()}
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        (head(h) - 1.0).abs().mean().backward()
        opt.step()
    assert all(p.grad is None for p in head.base.parameters())
    for k, v in head.base.state_dict().items():
        torch.testing.assert_close(v, base_before[k], rtol=0, atol=0)
    assert not torch.allclose(head(h), head.base(h))


def test_a_model_with_a_correction_head_loads_from_its_state_and_refuses_an_unknown_head():
    torch.manual_seed(1)
    tasks = [TaskSpec("gap_pbe", "hurdle"), TaskSpec("gap_expt", "hurdle", head="correction")]
    m = MultiTaskModel(tiny_model(), tasks)
    with torch.no_grad():
        m.heads["gap_expt"].delta.w2.normal_()
    m2 = MultiTaskModel.from_state(tiny_model(), tasks, m.state_dict())
    assert not any(p.requires_grad for p in m2.heads["gap_expt"].base.parameters())
    z, f, s = np.array([[8, 26], [14, 0]]), np.array([[0.6, 0.4], [1.0, 0.0]], np.float32), np.array([0, 227])
    out, out2 = m.predict_arrays(z, f, s), m2.predict_arrays(z, f, s)
    for k, v in out.items():
        np.testing.assert_array_equal(v, out2[k])
    assert (out["gap_expt"] >= 0).all()
    with pytest.raises(ValueError, match="head must be one of"):
        MultiTaskModel(tiny_model(), [TaskSpec("gap_expt", "hurdle", head="linear")])
