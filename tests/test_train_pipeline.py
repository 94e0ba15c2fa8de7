"""Pretrain -> finetune -> predict on tiny settings, determinism, resume, run folders."""
import warnings

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from matmtl.errors import MatmtlError
from matmtl.train.finetune import finetune
from matmtl.train.pretrain import pretrain

from _tiny import tiny_ft, tiny_model, tiny_train


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """One tiny pretrain (e_form + gap_pbe) shared by the module's tests."""
    root = tmp_path_factory.mktemp("pre")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MATMTL_CACHE_DIR", str(root / "cache"))
        res = pretrain(["e_form", "gap_pbe"], out=root / "run", max_rows=400, model=tiny_model(), train=tiny_train(),
                       progress=False)
    return res


def _weights(run_dir, name="model.safetensors"):
    return load_file(str(run_dir / name))


def test_pretrain_writes_a_complete_run_folder(pretrained):
    d = pretrained.run_dir
    for f in ("model.safetensors", "model.json", "metrics.json", "config.json", "history.json", "loss_curves.png",
              "parity_e_form.png", "parity_gap_pbe.png", "state/state.safetensors", "state/state.json"):
        assert (d / f).is_file(), f
    m = pretrained.metrics
    assert set(m["holdout"]) == {"e_form", "gap_pbe"}
    assert m["holdout"]["e_form"]["rows"] == 100 and np.isfinite(m["holdout"]["e_form"]["mae"])
    assert m["data"]["e_form"]["train_rows"] == 400


def test_two_seeded_runs_are_identical(tmp_path):
    a = pretrain(["e_form"], out=tmp_path / "a", max_rows=300, model=tiny_model(), train=tiny_train(), progress=False)
    b = pretrain(["e_form"], out=tmp_path / "b", max_rows=300, model=tiny_model(), train=tiny_train(), progress=False)
    wa, wb = _weights(a.run_dir), _weights(b.run_dir)
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)
    assert a.metrics["holdout"] == b.metrics["holdout"]


def test_resume_ends_where_an_uninterrupted_run_would(tmp_path):
    cfg = dict(max_rows=300, model=tiny_model(), train=tiny_train(epochs=3), progress=False)
    full = pretrain(["e_form"], out=tmp_path / "full", **cfg)
    part = pretrain(["e_form"], out=tmp_path / "part", stop_after=1, **cfg)  # "killed" after epoch 1
    assert not part.finished and not (tmp_path / "part" / "model.json").exists()
    resumed = pretrain(resume=tmp_path / "part", progress=False)
    wa, wb = _weights(full.run_dir), _weights(resumed.run_dir)
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)
    assert resumed.metrics["holdout"] == full.metrics["holdout"]
    with pytest.raises(MatmtlError, match="already finished"):
        pretrain(resume=tmp_path / "part", progress=False)


def test_a_new_run_never_overwrites_a_run_folder(pretrained):
    before = (pretrained.run_dir / "model.safetensors").read_bytes()
    with pytest.raises(MatmtlError, match="never overwrites"):
        pretrain(["e_form"], out=pretrained.run_dir, max_rows=100, model=tiny_model(), train=tiny_train(), progress=False)
    assert (pretrained.run_dir / "model.safetensors").read_bytes() == before


def test_default_run_folders_are_distinct(tmp_path, monkeypatch):
    from matmtl.train.runs import new_run_dir

    monkeypatch.setenv("MATMTL_CACHE_DIR", str(tmp_path))
    assert new_run_dir("pretrain") != new_run_dir("pretrain")


@pytest.mark.parametrize("source", ["replay", "distill"])
def test_finetune_with_anchor(pretrained, tmp_path, source):
    res = finetune(checkpoint=pretrained.run_dir, aux="dft_energy,dft_gap", aux_source=source, max_train_rows=200,
                   replay_max_rows=300, out=tmp_path / "ft", train=tiny_ft(), progress=False)
    m = res.metrics
    assert m["aux"] == ["e_form", "gap_pbe"] and m["aux_source"] == source
    assert "gap_expt" in m["holdout"] and m["holdout"]["gap_expt"]["rows"] == 921
    assert (res.run_dir / "parity_gap_expt.png").exists()
    from matmtl.checkpoints import load_checkpoint

    model, meta = load_checkpoint(res.run_dir)
    assert set(model.tasks) == {"e_form", "gap_pbe", "gap_expt"} and meta["parent"]["checkpoint"]


def test_finetune_without_anchor_drops_stale_heads(pretrained, tmp_path):
    res = finetune(checkpoint=pretrained.run_dir, aux="none", max_train_rows=150, out=tmp_path / "ft",
                   train=tiny_ft(epochs=1), progress=False)
    assert set(res.metrics["dropped_heads"]) == {"e_form", "gap_pbe"}


def test_finetune_user_file_with_bad_rows(pretrained, tmp_path):
    rows = [("GaAs", 1.42), ("Si", 1.12), ("NaCl", 8.5), ("Cu", 0.0), ("ZnO", 3.3), ("Xx2O", 1.0), ("GaN", -3.4),
            ("Fe2O3", 2.2), ("MgO", 7.8), ("Al", 0.0), ("AlN", 6.0), ("CdTe", 1.5)]
    csv = tmp_path / "gaps.csv"
    pd.DataFrame(rows, columns=["formula", "band_gap"]).to_csv(csv, index=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = finetune(checkpoint=pretrained.run_dir, dataset=str(csv), aux="dft_energy", aux_source="distill",
                       holdout_fold="none", out=tmp_path / "ft", train=tiny_ft(epochs=1), progress=False)
    assert res.metrics["train_rows"] == 10
    assert res.metrics["bad_rows"]["n_bad"] == 2
    assert any("left out 2" in str(w.message) for w in caught)


def test_finetune_errors(pretrained, tmp_path, monkeypatch):
    with pytest.raises(MatmtlError, match="aux-source"):
        finetune(checkpoint=pretrained.run_dir, aux_source="magic", out=tmp_path / "x", progress=False)
    with pytest.raises(MatmtlError, match="unknown auxiliary"):
        finetune(checkpoint=pretrained.run_dir, aux="dft_magic", out=tmp_path / "x", progress=False)
    monkeypatch.setenv("MATMTL_CACHE_DIR", str(tmp_path / "empty-cache"))
    with pytest.raises(MatmtlError, match="matmtl pretrain"):
        finetune(out=tmp_path / "y", progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_aux_dft_gap_needs_a_gap_head(tmp_path):
    pre = pretrain(["e_form"], out=tmp_path / "p", max_rows=100, model=tiny_model(), train=tiny_train(epochs=1),
                   progress=False)
    with pytest.raises(MatmtlError, match="gap_pbe"):
        finetune(checkpoint=pre.run_dir, aux="dft_gap", out=tmp_path / "f", progress=False)


@pytest.mark.parametrize("opts", [
    dict(balancing="uncertainty"),
    dict(balancing="gradnorm", surgery="pcgrad"),
    dict(surgery="halfspace", soft_share=0.1),
    dict(aux_source="distill", surgery="pcgrad", monitor_every=2, monitor_k=2),
])
def test_finetune_with_each_mtl_option(pretrained, tmp_path, opts):
    opts = {"aux_source": "replay", **opts}
    res = finetune(checkpoint=pretrained.run_dir, aux="dft_energy", max_train_rows=96, replay_max_rows=128,
                   train=tiny_ft(epochs=2), out=tmp_path / "ft", progress=False, **opts)
    assert np.isfinite(res.metrics["holdout"]["gap_expt"]["mae"])
    stored = _read(res.run_dir / "config.json")["mtl"]  # the run records its multi-task settings
    assert stored["balance"] == opts.get("balancing", "static") and stored["surgery"] == opts.get("surgery", "none")
    assert stored["soft_share"] == opts.get("soft_share", 0.0) and res.metrics["aux_source"] == opts["aux_source"]
    if opts.get("monitor_every"):
        geo = res.metrics["gradient_geometry"]
        assert len(geo) >= 2 and geo[0]["tasks"] == ["gap_expt", "e_form"]
        angles = np.array(geo[0]["angles"])
        assert angles.shape == (2, 2, 2) and ((angles >= 0) & (angles <= np.pi / 2 + 1e-9)).all()
        assert (res.run_dir / "gradient_geometry.png").is_file()


def test_monitored_gradnorm_run_resumes_exactly(pretrained, tmp_path):
    cfg = dict(checkpoint=pretrained.run_dir, aux="dft_energy", max_train_rows=96, replay_max_rows=128,
               train=tiny_ft(epochs=2), progress=False, balancing="gradnorm", monitor_every=3, monitor_k=2)
    full = finetune(out=tmp_path / "full", **cfg)
    finetune(out=tmp_path / "part", stop_after=1, **cfg)
    resumed = finetune(resume=tmp_path / "part", progress=False)
    wa, wb = _weights(full.run_dir), _weights(resumed.run_dir)
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)
    assert full.metrics["gradient_geometry"] == resumed.metrics["gradient_geometry"]


def test_bad_mtl_options(pretrained, tmp_path):
    with pytest.raises(MatmtlError, match="--surgery"):
        finetune(checkpoint=pretrained.run_dir, surgery="magic", out=tmp_path / "a", progress=False)
    with pytest.raises(MatmtlError, match="--balance"):
        finetune(checkpoint=pretrained.run_dir, balancing="magic", out=tmp_path / "b", progress=False)
    with pytest.raises(MatmtlError, match="soft-share"):
        pretrain(["e_form"], soft_share=1.0, out=tmp_path / "c", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _read(path):
    import json

    return json.loads(path.read_text())


def test_finetune_resume_matches_uninterrupted(pretrained, tmp_path):
    cfg = dict(checkpoint=pretrained.run_dir, aux="dft_energy", aux_source="replay", max_train_rows=120,
               replay_max_rows=200, train=tiny_ft(epochs=2), progress=False)
    full = finetune(out=tmp_path / "full", **cfg)
    part = finetune(out=tmp_path / "part", stop_after=1, **cfg)
    assert not part.finished
    resumed = finetune(resume=tmp_path / "part", progress=False)
    wa, wb = _weights(full.run_dir), _weights(resumed.run_dir)
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)


def test_corrupt_resume_state_is_a_clear_error(tmp_path):
    from matmtl.checkpoints import CheckpointError

    pretrain(["e_form"], out=tmp_path / "p", stop_after=1, max_rows=100, model=tiny_model(), train=tiny_train(),
             progress=False)
    (tmp_path / "p" / "state" / "state.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="state.safetensors"):
        pretrain(resume=tmp_path / "p", progress=False)
