import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny import tiny_model

from matmtl.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_tensors,
    optimizer_tensors,
    restore_optimizer,
    save_checkpoint,
)
from matmtl.errors import MatmtlError
from matmtl.models import MultiTaskModel, TaskSpec


def _model():
    torch.manual_seed(1)
    return MultiTaskModel(
        tiny_model(), [TaskSpec("e_form", mean=-1.2, std=1.1, unit="eV/atom"), TaskSpec("gap_expt", "hurdle")]
    )


def test_round_trip_same_predictions(tmp_path):
    m = _model()
    save_checkpoint(tmp_path / "ck", m, {"kind": "test", "elements": [1, 8]})
    m2, meta = load_checkpoint(tmp_path / "ck")
    z = np.array([[8, 26, 0]])
    f = np.array([[0.6, 0.4, 0]], np.float32)
    s = np.array([0])
    a, b = m.predict_arrays(z, f, s), m2.predict_arrays(z, f, s)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert meta["kind"] == "test" and meta["tasks"][0]["std"] == pytest.approx(1.1)
    assert {"torch", "pymatgen", "matmtl"} <= set(meta["versions"])
    # what the floats depend on besides the packages: the CPU's kernels and torch's threads
    assert meta["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert meta["machine"]["threads"] == torch.get_num_threads() and meta["machine"]["cpu"]
    # loading by file name works too
    load_checkpoint(tmp_path / "ck" / "model.safetensors")


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="nothere"):
        load_checkpoint(tmp_path / "nothere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="model.json"):
        load_checkpoint(tmp_path / "empty")
    assert issubclass(CheckpointError, MatmtlError)


def test_corrupt_weights_and_json(tmp_path):
    save_checkpoint(tmp_path / "ck", _model(), {})
    w = tmp_path / "ck" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(tmp_path / "ck")
    save_checkpoint(tmp_path / "ck2", _model(), {})
    (tmp_path / "ck2" / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt JSON"):
        load_checkpoint(tmp_path / "ck2")


def test_weights_from_another_model_are_refused(tmp_path):
    save_checkpoint(tmp_path / "a", _model(), {})
    other = MultiTaskModel(tiny_model(dim=48), [TaskSpec("e_form")])
    save_checkpoint(tmp_path / "b", other, {})
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path / "a")


def test_optimizer_state_round_trip(tmp_path):
    from matmtl.checkpoints import save_tensors

    m = _model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m(torch.tensor([[8, 26]]), torch.tensor([[0.5, 0.5]]), torch.tensor([0]))["e_form"].sum().backward()
    opt.step()
    t, meta = optimizer_tensors(opt)
    save_tensors(tmp_path / "o.safetensors", t)
    opt2 = torch.optim.AdamW(m.parameters(), lr=1e-3)
    restore_optimizer(opt2, load_tensors(tmp_path / "o.safetensors"), meta)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for k in s1["state"]:
        for key, v in s1["state"][k].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(s2["state"][k][key]))


def test_no_pickle_anywhere_in_the_package():
    root = Path(__file__).resolve().parents[1] / "matmtl"
    for p in root.rglob("*.py"):
        text = p.read_text()
        assert not re.search(r"torch\.load\(|import pickle|pickle\.load|allow_pickle=True", text), p
