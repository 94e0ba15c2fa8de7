"""Checkpoints: model.json is checked by a schema before any tensor is allocated, the
stored SHA-256s cover the JSON and the weights, old checkpoints still load; atomic writes
follow the umask and survive a write that fails part-way."""

import errno
import json
import os
import shutil
import stat

import numpy as np
import pytest
import torch

from matmtl import io as mio
from matmtl.checkpoints import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    validate_meta,
    write_meta,
)
from matmtl.models import ModelConfig, MultiTaskModel, TaskSpec


def _model():
    torch.manual_seed(1)
    cfg = ModelConfig(dim=32, layers=1, heads=2, head_hidden=32, members=2, spg_dim=8)
    return MultiTaskModel(
        cfg, [TaskSpec("e_form", mean=-1.2, std=1.1, unit="eV/atom"), TaskSpec("gap_expt", "hurdle", "eV")]
    )


@pytest.fixture
def ck(tmp_path):
    save_checkpoint(tmp_path / "ck", _model(), {"kind": "test", "elements": [1, 8, 26]})
    return tmp_path / "ck"


def _edited(ck, tmp_path, change, name="edited", rehash=False):
    dst = tmp_path / name
    shutil.copytree(ck, dst)
    meta = json.loads((dst / "model.json").read_text())
    change(meta)
    if rehash:
        write_meta(dst, meta)
    else:
        (dst / "model.json").write_text(json.dumps(meta))
    return dst


def test_round_trip_records_and_checks_both_hashes(ck):
    meta = json.loads((ck / "model.json").read_text())
    assert set(meta["sha256"]) >= {"weights", "checkpoint"}
    assert meta["sha256"]["weights"] == mio.sha256_file(ck / "model.safetensors")
    model, meta2 = load_checkpoint(ck)
    assert meta2["kind"] == "test"


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda m: m["model_config"].update(dim=200000), r"model_config.dim = 200000 is outside the sane range"),
        (lambda m: m["model_config"].update(dim="192x"), r"model_config.dim must be an integer, got '192x'"),
        (lambda m: m["model_config"].update(layers=True), r"model_config.layers must be an integer"),
        (lambda m: m["model_config"].update(members=10**6), r"model_config.members = 1000000 is outside"),
        (lambda m: m["model_config"].update(heads=3), r"must be a multiple of model_config.heads"),
        (lambda m: m["model_config"].update(dropout=float("nan")), r"model_config.dropout must be a number"),
        (lambda m: m.update(model_config=[1, 2]), r"model_config must be an object"),
        (lambda m: m.update(tasks=[]), r"tasks must be a list of 1..32"),
        (lambda m: m.update(tasks=[{"name": f"t{i}"} for i in range(40)]), r"tasks must be a list of 1..32"),
        (lambda m: m["tasks"][0].update(mean=9.7), r"normalisation mean 9.7 is not a finite number within ±5 eV/atom"),
        (lambda m: m["tasks"][0].update(std=0.0), r"normalisation std 0.0"),
        (lambda m: m["tasks"][0].update(std=float("inf")), r"tasks\[0\].std \(e_form\) must be a finite number"),
        (lambda m: m["tasks"][1].update(kind="magic"), r"tasks\[1\].kind must be one of"),
        (
            lambda m: m["tasks"][1].update(head="linear"),
            r"tasks\[1\].head \(\w+\) must be one of \('mlp', 'correction'\)",
        ),
        (lambda m: m["tasks"][1].update(head=3), r"tasks\[1\].head \(\w+\) must be one of"),
        (lambda m: m["tasks"][1].update(name=""), r"tasks\[1\].name must be a non-empty string"),
        (lambda m: m["tasks"].append(dict(m["tasks"][0])), r"task 'e_form' appears twice"),
        (lambda m: m.update(format_version=99), r"checkpoint format 99, this matmtl reads 1"),
        (lambda m: m.update(elements=[1, 500]), r"elements must be a list of atomic numbers"),
        (lambda m: m.update(featurizer={"max_elements": "ten"}), r"featurizer.max_elements must be an integer"),
        (lambda m: m.update(uncertainty={"e_form": {"a": -1, "b": 0.1}}), r"uncertainty.e_form must hold finite"),
    ],
)
def test_schema_refuses_bad_metadata_before_allocating(ck, tmp_path, change, message, monkeypatch):
    bad = _edited(ck, tmp_path, change, rehash=False)
    # nothing may be built for real: a real (non-meta) model construction would fail the test
    import matmtl.models as models

    real = models.MultiTaskModel

    def guarded(*a, **k):
        raise AssertionError("a model was allocated before the metadata was checked")

    monkeypatch.setattr(models, "MultiTaskModel", guarded)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(bad)
    assert "model.json" in str(info.value)
    monkeypatch.setattr(models, "MultiTaskModel", real)


def test_edited_json_or_swapped_weights_fail_the_hash(ck, tmp_path):
    # a plausible edit (within the schema) is caught by the hash over the JSON
    edited = _edited(ck, tmp_path, lambda m: m["tasks"][0].update(mean=-1.0))
    with pytest.raises(CheckpointError, match="edited after saving"):
        load_checkpoint(edited)
    # the same edit re-signed deliberately loads
    load_checkpoint(_edited(ck, tmp_path, lambda m: m["tasks"][0].update(mean=-1.0), "resigned", rehash=True))
    # weights of the same shapes from another model: the weights hash
    other = tmp_path / "other"
    torch.manual_seed(5)
    m = _model()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01)
    save_checkpoint(other, m, {"kind": "test"})
    swapped = tmp_path / "swapped"
    shutil.copytree(ck, swapped)
    (swapped / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="model.safetensors: weights do not match the SHA-256"):
        load_checkpoint(swapped)


def test_old_checkpoint_without_hash_loads_with_the_shape_check(ck, tmp_path):
    old = _edited(ck, tmp_path, lambda m: m.pop("sha256"), "old")
    model, meta = load_checkpoint(old)
    assert "sha256" not in meta
    # ... and its weights are still checked against its model.json, before allocation
    wrong = _edited(ck, tmp_path, lambda m: (m.pop("sha256"), m["model_config"].update(dim=64)), "old_wrong")
    with pytest.raises(CheckpointError, match="weights do not match .*shapes differ"):
        load_checkpoint(wrong)


def test_malformed_hash_record(ck, tmp_path):
    with pytest.raises(CheckpointError, match="malformed sha256 record"):
        load_checkpoint(_edited(ck, tmp_path, lambda m: m.update(sha256="abc")))


def test_validate_meta_accepts_what_save_writes(ck):
    validate_meta(json.loads((ck / "model.json").read_text()))


def test_the_load_path_hashes_the_same_text_as_the_save_path(ck):
    """Loading skips the normalising JSON round trip (model.json is plain JSON already);
    the text hashed must not change by that."""
    from matmtl import zoo
    from matmtl.checkpoints import _canonical

    for folder in (ck, zoo.PRETRAINED_DIR / zoo.DEFAULT_MODEL):
        meta = json.loads((folder / "model.json").read_text())
        assert _canonical(meta, from_json=True) == _canonical(meta)


# -- atomic writes --------------------------------------------------------------------


def test_atomic_write_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = mio.atomic_write_json(tmp_path / "a.json", {"x": 1})
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
        os.umask(0o002)
        q = mio.atomic_write_json(tmp_path / "b.json", {"x": 1})
        assert stat.S_IMODE(q.stat().st_mode) == 0o664
        # an existing file keeps the mode it was given
        os.chmod(p, 0o640)
        mio.atomic_write_json(p, {"x": 2})
        assert stat.S_IMODE(p.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_checkpoint_files_are_group_readable(tmp_path):
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "ck", _model(), {})
    finally:
        os.umask(old)
    for f in ("model.json", "model.safetensors"):
        assert stat.S_IMODE((tmp_path / "ck" / f).stat().st_mode) == 0o644


def test_enospc_mid_write_keeps_the_previous_file_and_no_temp(tmp_path):
    target = tmp_path / "data.json"
    mio.atomic_write_json(target, {"version": 1})
    before = target.read_bytes()

    def failing(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b'{"version": 2, "half')  # part of the new content reached the disk
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(mio.WriteError) as info:
        mio.atomic_write(target, failing)
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert "data.json" in str(info.value) and "previous file is unchanged" in str(info.value)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]


def test_enospc_while_saving_a_checkpoint_keeps_the_old_one(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "ck", _model(), {"kind": "old"})
    files = {f: (tmp_path / "ck" / f).read_bytes() for f in ("model.json", "model.safetensors")}
    import safetensors.torch as st

    def no_space(tensors, filename, *a, **k):
        with open(filename, "wb") as fh:
            fh.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(st, "save_file", no_space)
    with pytest.raises(mio.WriteError, match="No space left on device"):
        save_checkpoint(tmp_path / "ck", _model(), {"kind": "new"})
    assert {f: (tmp_path / "ck" / f).read_bytes() for f in files} == files
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["model.json", "model.safetensors"]
    monkeypatch.undo()
    load_checkpoint(tmp_path / "ck")


def test_write_into_a_folder_name_is_refused(tmp_path):
    with pytest.raises(mio.WriteError, match="is a folder"):
        mio.atomic_write_json(tmp_path, {"x": 1})


def test_predictions_identical_after_reload(ck):
    m1, _ = load_checkpoint(ck)
    m2, _ = load_checkpoint(ck)
    z, f, s = np.array([[8, 26, 0]]), np.array([[0.6, 0.4, 0]], np.float32), np.array([0])
    a, b = m1.predict_arrays(z, f, s), m2.predict_arrays(z, f, s)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_full_disk_costs_the_feature_cache_not_the_run(monkeypatch):
    from matmtl.data import Featurizer

    def no_space(path, write):
        raise mio.WriteError(errno.ENOSPC, f"could not write {path}: No space left on device", str(path))

    monkeypatch.setattr("matmtl.data.featurize.atomic_write", no_space)
    with pytest.warns(RuntimeWarning, match="featurization cache not written"):
        f = Featurizer(min_cached_rows=1)(["GaAs", "NaCl"])
    assert f.z.shape[0] == 2
