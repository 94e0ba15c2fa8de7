"""Pretrain -> finetune -> predict on tiny settings, determinism, resume, run folders."""

import warnings

import numpy as np
import pandas as pd
import pytest
from _tiny import tiny_finetune, tiny_ft, tiny_pretrain, tiny_train
from safetensors.torch import load_file

from matmtl.config import FinetuneConfig, MTLConfig, PretrainConfig
from matmtl.errors import ConfigError, MatmtlError
from matmtl.mtl import GradNorm, HalfSpace, PCGrad, Uncertainty
from matmtl.train import finetune, pretrain, resume


def _weights(run_dir, name="model.safetensors"):
    return load_file(str(run_dir / name))


def test_pretrain_writes_a_complete_run_folder(pretrained):
    d = pretrained.run_dir
    for f in (
        "model.safetensors",
        "model.json",
        "metrics.json",
        "config.json",
        "history.json",
        "loss_curves.png",
        "parity_e_form.png",
        "parity_gap_pbe.png",
        "state/state-0002.safetensors",
        "state/state.json",
    ):
        assert (d / f).is_file(), f
    assert len(list((d / "state").glob("*.safetensors"))) == 1  # older epochs' states are removed
    m = pretrained.metrics
    assert set(m["holdout"]) == {"e_form", "gap_pbe"}
    assert m["holdout"]["e_form"]["rows"] == 100 and np.isfinite(m["holdout"]["e_form"]["mae"])
    assert m["data"]["e_form"]["train_rows"] + m["data"]["e_form"]["validation_rows"] == 400
    assert m["data"]["e_form"]["validation_rows"] > 0 and set(m["validation"]) == {"e_form", "gap_pbe"}
    # the kept weights are the best validation epoch's
    scores = [h["val_mae_e_form"] for h in pretrained.history]
    assert m["best_epoch"] == 1 + int(np.argmin(scores)) and m["best_validation_score"] == min(scores)


def test_a_single_task_gap_pbe_pretraining_selects_on_its_own_task(tmp_path):
    """The negative-transfer baseline: gap_pbe alone trains, keeps its best gap_pbe epoch,
    and a fine-tuning that asks it for an e_form anchor is refused by name."""
    res = pretrain(tiny_pretrain(["gap_pbe"], max_rows=300), tmp_path / "gap", progress=False)
    m = res.metrics
    assert m["tasks"] == ["gap_pbe"] and set(m["holdout"]) == {"gap_pbe"}
    scores = [h["val_mae_gap_pbe"] for h in res.history]
    assert m["best_epoch"] == 1 + int(np.argmin(scores))
    with pytest.raises(MatmtlError, match="no 'e_form' head"):
        finetune(tiny_finetune(str(res.run_dir), aux=("e_form",)), tmp_path / "ft", progress=False)
    assert PretrainConfig(tasks=("gap_pbe", "e_form")).main_task == "e_form"


def test_two_seeded_runs_are_identical(tmp_path):
    a = pretrain(tiny_pretrain(max_rows=300), tmp_path / "a", progress=False)
    b = pretrain(tiny_pretrain(max_rows=300), tmp_path / "b", progress=False)
    wa, wb = _weights(a.run_dir), _weights(b.run_dir)
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)
    assert a.metrics["holdout"] == b.metrics["holdout"]


def test_resume_ends_where_an_uninterrupted_run_would(tmp_path):
    cfg = tiny_pretrain(max_rows=300, train=tiny_train(epochs=3))
    full = pretrain(cfg, tmp_path / "full", progress=False)
    part = pretrain(cfg, tmp_path / "part", stop_after=1, progress=False)  # "killed" after epoch 1
    assert not part.finished and not (tmp_path / "part" / "model.json").exists()
    resumed = resume(tmp_path / "part", progress=False)
    wa, wb = _weights(full.run_dir), _weights(resumed.run_dir)
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)
    assert resumed.metrics["holdout"] == full.metrics["holdout"]
    with pytest.raises(MatmtlError, match="already finished"):
        resume(tmp_path / "part", progress=False)


def test_a_new_run_never_overwrites_a_run_folder(pretrained):
    before = (pretrained.run_dir / "model.safetensors").read_bytes()
    with pytest.raises(MatmtlError, match="never overwrites"):
        pretrain(tiny_pretrain(max_rows=100), pretrained.run_dir, progress=False)
    assert (pretrained.run_dir / "model.safetensors").read_bytes() == before


def test_default_run_folders_are_distinct(tmp_path, monkeypatch):
    from matmtl.train.runs import new_run_dir

    monkeypatch.setenv("MATMTL_CACHE_DIR", str(tmp_path))
    assert new_run_dir("pretrain") != new_run_dir("pretrain")


@pytest.mark.parametrize("source", ["replay", "distill"])
def test_finetune_with_anchor(pretrained, tmp_path, source):
    res = finetune(
        tiny_finetune(
            pretrained.run_dir,
            aux=("dft_energy", "dft_gap"),
            aux_source=source,
            max_train_rows=200,
            replay_max_rows=300,
        ),
        tmp_path / "ft",
        progress=False,
    )
    m = res.metrics
    assert m["aux"] == ["e_form", "gap_pbe"] and m["aux_source"] == source
    assert "gap_expt" in m["holdout"] and m["holdout"]["gap_expt"]["rows"] == 921
    assert (res.run_dir / "parity_gap_expt.png").exists()
    from matmtl.checkpoints import load_checkpoint

    model, meta = load_checkpoint(res.run_dir)
    assert set(model.tasks) == {"e_form", "gap_pbe", "gap_expt"} and meta["parent"]["checkpoint"]


def test_finetune_without_anchor_drops_stale_heads(pretrained, tmp_path):
    res = finetune(
        tiny_finetune(pretrained.run_dir, aux=(), max_train_rows=150, train=tiny_ft(epochs=1)),
        tmp_path / "ft",
        progress=False,
    )
    assert set(res.metrics["dropped_heads"]) == {"e_form", "gap_pbe"}


def test_finetune_user_file_with_bad_rows(pretrained, tmp_path):
    rows = [
        ("GaAs", 1.42),
        ("Si", 1.12),
        ("NaCl", 8.5),
        ("Cu", 0.0),
        ("ZnO", 3.3),
        ("Xx2O", 1.0),
        ("GaN", -3.4),
        ("Fe2O3", 2.2),
        ("MgO", 7.8),
        ("Al", 0.0),
        ("AlN", 6.0),
        ("CdTe", 1.5),
    ]
    csv = tmp_path / "gaps.csv"
    pd.DataFrame(rows, columns=["formula", "band_gap"]).to_csv(csv, index=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = finetune(
            tiny_finetune(
                pretrained.run_dir, dataset=str(csv), aux_source="distill", holdout_fold=None, train=tiny_ft(epochs=1)
            ),
            tmp_path / "ft",
            progress=False,
        )
    assert res.metrics["train_rows"] + res.metrics["validation_rows"] == 10
    assert res.metrics["bad_rows"]["n_bad"] == 2
    assert any("left out 2" in str(w.message) for w in caught)


def test_finetune_errors(pretrained, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="FinetuneConfig.aux_source"):
        FinetuneConfig(checkpoint=str(pretrained.run_dir), aux_source="magic")
    with pytest.raises(ConfigError, match="FinetuneConfig.aux .*unknown"):
        FinetuneConfig(checkpoint=str(pretrained.run_dir), aux=("dft_magic",))
    monkeypatch.setenv("MATMTL_CACHE_DIR", str(tmp_path / "empty-cache"))
    with pytest.raises(MatmtlError, match="matmtl pretrain"):
        finetune(FinetuneConfig(), tmp_path / "y", progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_aux_dft_gap_and_correction_learning_need_a_gap_head(tmp_path):
    pre = pretrain(tiny_pretrain(max_rows=100, train=tiny_train(epochs=1)), tmp_path / "p", progress=False)
    with pytest.raises(MatmtlError, match="gap_pbe"):
        finetune(tiny_finetune(pre.run_dir, aux=("dft_gap",)), tmp_path / "f", progress=False)
    with pytest.raises(MatmtlError, match="gap_head='correction'.* no 'gap_pbe' head"):
        finetune(tiny_finetune(pre.run_dir, gap_head="correction"), tmp_path / "f", progress=False)
    assert not (tmp_path / "f").exists()
    with pytest.raises(ConfigError, match="FinetuneConfig.gap_head must be one of warm_start, correction"):
        FinetuneConfig(checkpoint=str(pre.run_dir), gap_head="delta")


@pytest.mark.parametrize("source", ["replay", "distill"])
def test_correction_learning_keeps_the_dft_gap_head_frozen_inside_the_new_head(pretrained, tmp_path, source):
    """gap_head="correction": the experimental-gap head is the pretrained DFT gap head,
    frozen, plus a learned correction; the kept model holds that frozen copy (the stale
    gap_pbe head itself is dropped as usual) and reloads with the same predictions."""
    from matmtl.checkpoints import load_checkpoint

    res = finetune(
        tiny_finetune(
            pretrained.run_dir, gap_head="correction", aux_source=source, max_train_rows=200, replay_max_rows=300
        ),
        tmp_path / "ft",
        progress=False,
    )
    assert res.metrics["gap_head"] == "correction" and "gap_pbe" in res.metrics["dropped_heads"]
    model, meta = load_checkpoint(res.run_dir)
    assert model.tasks["gap_expt"].head == "correction" and "gap_pbe" not in model.heads
    assert [t.get("head") for t in meta["tasks"] if t["name"] == "gap_expt"] == ["correction"]
    parent = _weights(pretrained.run_dir)
    for k in ("w1", "b1", "w2", "b2"):
        np.testing.assert_array_equal(
            model.heads["gap_expt"].base.state_dict()[k].numpy(), parent[f"heads.gap_pbe.{k}"].numpy()
        )
    assert np.abs(model.heads["gap_expt"].delta.w2.detach().numpy()).max() > 0  # the correction trained
    z, f, s = np.array([[31, 7]]), np.array([[0.5, 0.5]], np.float32), np.array([186])
    again, _ = load_checkpoint(res.run_dir)
    np.testing.assert_array_equal(model.predict_arrays(z, f, s)["gap_expt"], again.predict_arrays(z, f, s)["gap_expt"])
    assert (model.predict_arrays(z, f, s)["gap_expt"] >= 0).all()
    if source == "distill":
        return
    # a fine-tuned checkpoint goes on training its own head: correction learning from one with a
    # plain head is refused, naming why
    plain = finetune(tiny_finetune(pretrained.run_dir, max_train_rows=100, train=tiny_ft(epochs=1)), tmp_path / "p")
    with pytest.raises(MatmtlError, match="fine-tuned already .* plain 'mlp' head"):
        finetune(tiny_finetune(plain.run_dir, gap_head="correction"), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "source, mtl",
    [
        ("replay", MTLConfig(balancer=Uncertainty())),
        ("replay", MTLConfig(balancer=GradNorm(alpha=1.0), surgery=PCGrad())),
        ("replay", MTLConfig(surgery=HalfSpace(), soft_share=0.1)),
        ("distill", MTLConfig(surgery=PCGrad(), monitor_every=2, monitor_k=2)),
    ],
)
def test_finetune_with_each_mtl_option(pretrained, tmp_path, source, mtl):
    res = finetune(
        tiny_finetune(pretrained.run_dir, aux_source=source, max_train_rows=96, replay_max_rows=128, mtl=mtl),
        tmp_path / "ft",
        progress=False,
    )
    assert np.isfinite(res.metrics["holdout"]["gap_expt"]["mae"])
    stored = _read(res.run_dir / "config.json")  # the run records its multi-task settings, typed on reading
    assert stored["mtl"]["balancer"] == mtl.balancer.to_dict() and stored["mtl"]["surgery"] == mtl.surgery.to_dict()
    from matmtl.config import config_from_dict

    assert config_from_dict(stored).mtl == mtl and res.metrics["aux_source"] == source
    if mtl.monitor_every:
        geo = res.metrics["gradient_geometry"]
        assert len(geo) >= 2 and geo[0]["tasks"] == ["gap_expt", "e_form"]
        angles = np.array(geo[0]["angles"])
        assert angles.shape == (2, 2, 2) and ((angles >= 0) & (angles <= np.pi / 2 + 1e-9)).all()
        assert (res.run_dir / "gradient_geometry.png").is_file()


def test_monitored_gradnorm_run_resumes_exactly(pretrained, tmp_path):
    cfg = tiny_finetune(
        pretrained.run_dir,
        max_train_rows=96,
        replay_max_rows=128,
        mtl=MTLConfig(balancer=GradNorm(), monitor_every=3, monitor_k=2),
    )
    full = finetune(cfg, tmp_path / "full", progress=False)
    finetune(cfg, tmp_path / "part", stop_after=1, progress=False)
    resumed = resume(tmp_path / "part", progress=False)
    wa, wb = _weights(full.run_dir), _weights(resumed.run_dir)
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)
    assert full.metrics["gradient_geometry"] == resumed.metrics["gradient_geometry"]


def test_bad_mtl_options():
    with pytest.raises(ConfigError, match="unknown surgery 'magic'"):
        MTLConfig(surgery="magic")
    with pytest.raises(ConfigError, match="unknown balancing 'magic'"):
        MTLConfig(balancer="magic")
    with pytest.raises(ConfigError, match="PretrainConfig.mtl.soft_share"):
        PretrainConfig(mtl=MTLConfig(soft_share=1.0))
    with pytest.raises(ConfigError, match="MTLConfig.monitor_k"):
        MTLConfig(monitor_every=5, monitor_k=1)


def _read(path):
    import json

    return json.loads(path.read_text())


def test_finetune_resume_matches_uninterrupted(pretrained, tmp_path):
    cfg = tiny_finetune(pretrained.run_dir, aux_source="replay", max_train_rows=120, replay_max_rows=200)
    full = finetune(cfg, tmp_path / "full", progress=False)
    part = finetune(cfg, tmp_path / "part", stop_after=1, progress=False)
    assert not part.finished
    resumed = resume(tmp_path / "part", progress=False)
    wa, wb = _weights(full.run_dir), _weights(resumed.run_dir)
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)


def test_corrupt_resume_state_is_a_clear_error(tmp_path):
    from matmtl.checkpoints import CheckpointError

    pretrain(tiny_pretrain(max_rows=100), tmp_path / "p", stop_after=1, progress=False)
    (tmp_path / "p" / "state" / "state-0001.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="state-0001.safetensors"):
        resume(tmp_path / "p", progress=False)


def test_a_run_folder_of_the_previous_format_still_resumes(pretrained, tmp_path):
    """config.json without a version (mtl settings as strings) and a state.json whose
    multi-task state is under "combiner", as matmtl 0.1 wrote them."""
    import json

    cfg = tiny_finetune(
        pretrained.run_dir, max_train_rows=96, replay_max_rows=128, mtl=MTLConfig(balancer=GradNorm(), surgery=PCGrad())
    )
    full = finetune(cfg, tmp_path / "full", progress=False)
    finetune(cfg, tmp_path / "old", stop_after=1, progress=False)
    new = _read(tmp_path / "old" / "config.json")
    old = {k: v for k, v in new.items() if k != "version"}
    old["mtl"] = {"balance": "gradnorm", "surgery": "pcgrad", "soft_share": 0.0, "monitor_every": 0, "monitor_k": 4}
    (tmp_path / "old" / "config.json").write_text(json.dumps(old))
    state = _read(tmp_path / "old" / "state" / "state.json")
    state["combiner"] = state.pop("mtl")
    (tmp_path / "old" / "state" / "state.json").write_text(json.dumps(state))
    resumed = resume(tmp_path / "old", progress=False)
    wa, wb = _weights(full.run_dir), _weights(resumed.run_dir)
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)


def test_a_config_from_a_newer_matmtl_is_refused(pretrained, tmp_path):
    import json

    from matmtl.config import config_from_dict

    d = _read(pretrained.run_dir / "config.json")
    assert config_from_dict(d) == PretrainConfig(
        **{k: getattr(config_from_dict(d), k) for k in ("tasks",)},
        **{k: getattr(config_from_dict(d), k) for k in ("holdout_fold", "max_rows", "model", "train", "mtl")},
    )
    with pytest.raises(ConfigError, match="newer than this matmtl reads"):
        config_from_dict({**d, "version": 99})
    with pytest.raises(ConfigError, match="unknown setting"):
        config_from_dict({**d, "warp_speed": 9})
    assert json.loads(json.dumps(d)) == d


def test_nothing_is_fitted_on_the_test_rows(pretrained, tmp_path):
    """Scrambling the held-out fold's labels changes its score and nothing else: the
    weights, the chosen epoch, the metal cut and the calibration come from training and
    validation rows only."""
    from matmtl.data import load_dataset

    ds = load_dataset("expt_gap")
    table = ds.frame.iloc[:300][["id", "formula", "gap_expt"]].copy()
    table.to_csv(tmp_path / "a.csv", index=False)
    _, test = load_dataset(str(tmp_path / "a.csv")).folds()[0]
    rng = np.random.default_rng(0)
    table.loc[table.index[test], "gap_expt"] = rng.permutation(table["gap_expt"].to_numpy()[test]) + 1.0
    table.to_csv(tmp_path / "b.csv", index=False)
    runs = [
        finetune(
            tiny_finetune(
                pretrained.run_dir, dataset=str(tmp_path / f"{n}.csv"), aux_source="distill", train=tiny_ft(epochs=3)
            ),
            tmp_path / n,
            progress=False,
        )
        for n in ("a", "b")
    ]
    (a, b) = runs
    wa, wb = _weights(a.run_dir), _weights(b.run_dir)
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)
    assert a.metrics["validation"] == b.metrics["validation"] and a.metrics["best_epoch"] == b.metrics["best_epoch"]
    assert a.metrics["holdout"]["gap_expt"]["mae"] != b.metrics["holdout"]["gap_expt"]["mae"]
    from matmtl.checkpoints import load_checkpoint

    (ma, meta_a), (mb, meta_b) = load_checkpoint(a.run_dir), load_checkpoint(b.run_dir)
    assert meta_a["uncertainty"] == meta_b["uncertainty"]
    assert ma.tasks["gap_expt"].metal_cut == mb.tasks["gap_expt"].metal_cut
    # the DFT metal gate: its line and mode come from training and validation rows only
    gate_a, gate_b = a.metrics["metal_gate"], b.metrics["metal_gate"]
    assert {k: v for k, v in gate_a.items() if not k.startswith("holdout")} == {
        k: v for k, v in gate_b.items() if not k.startswith("holdout")
    }
    assert gate_a["holdout_mae"] != gate_b["holdout_mae"]


def test_the_metal_gate_is_fitted_and_written_or_left_out(pretrained, tmp_path):
    """With the default --metal-gate mp_pbe a run writes its gate (the mode with the lowest
    validation MAE) and scores the held-out rows with and without it; with none, nothing."""
    from matmtl.metal_gate import GATE_FILE, MODES, load

    cfg = dict(max_train_rows=200, train=tiny_ft(epochs=1))
    gated = finetune(tiny_finetune(pretrained.run_dir, **cfg), tmp_path / "g", progress=False)
    rec = gated.metrics["metal_gate"]
    assert rec["mode"] in MODES and rec["validation_mae"][rec["mode"]] == min(rec["validation_mae"].values())
    assert 0 < rec["validation_rows_with_pbe_gap"] <= rec["validation_rows"] == gated.metrics["validation_rows"]
    assert rec["holdout_mae"] == pytest.approx(gated.metrics["holdout"]["gap_expt"]["mae"])
    assert load(gated.run_dir / GATE_FILE)[0].mode == rec["mode"]
    plain = finetune(tiny_finetune(pretrained.run_dir, metal_gate="none", **cfg), tmp_path / "p", progress=False)
    assert "metal_gate" not in plain.metrics and not (plain.run_dir / GATE_FILE).exists()


def test_validation_rows_are_a_seeded_part_of_the_training_rows():
    from matmtl.train.data import split_validation
    from matmtl.train.engine import TaskData

    n = 200
    data = TaskData(
        np.arange(n)[:, None], np.ones((n, 1), np.float32), np.zeros(n, np.int64), {"t": np.arange(n, dtype=np.float32)}
    )
    tr, va = split_validation(data, 0.1, seed=3)
    assert len(va) == 20 and len(tr) == 180
    assert not set(tr.z[:, 0]) & set(va.z[:, 0]) and set(tr.z[:, 0]) | set(va.z[:, 0]) == set(range(n))
    assert np.array_equal(split_validation(data, 0.1, seed=3)[1].z, va.z)
    assert not np.array_equal(split_validation(data, 0.1, seed=4)[1].z, va.z)
    assert len(split_validation(data, 0.0, seed=3)[1]) == 0


def test_early_stopping_keeps_the_best_epoch_and_resumes_exactly(pretrained, tmp_path):
    from matmtl.train.selection import BestEpoch

    best = BestEpoch("val", patience=2)
    model = torch_linear()
    for epoch, score in enumerate([3.0, 2.0, 2.5, 2.4], start=1):
        best.update(epoch, {"val": score}, model)
    assert best.epoch == 2 and best.stop(4) and not best.stop(3)
    cfg = tiny_finetune(
        pretrained.run_dir, max_train_rows=150, aux_source="distill", train=tiny_ft(epochs=4, patience=1, lr=5e-2)
    )
    full = finetune(cfg, tmp_path / "full", progress=False)
    finetune(cfg, tmp_path / "part", stop_after=1, progress=False)
    resumed = resume(tmp_path / "part", progress=False)
    assert full.metrics["best_epoch"] == resumed.metrics["best_epoch"]
    assert (
        full.metrics["epochs"] == resumed.metrics["epochs"]
        and full.metrics["validation"] == resumed.metrics["validation"]
    )
    scores = [h["val_mae_gap_expt"] for h in full.history]
    assert full.metrics["best_epoch"] == 1 + int(np.argmin(scores))
    if full.metrics["stopped_early"]:
        assert full.metrics["epochs"] - full.metrics["best_epoch"] == 1


def torch_linear():
    import torch

    return torch.nn.Linear(2, 1)


def test_a_finetune_that_fails_validation_leaves_no_run_folder(pretrained, tmp_path):
    """Unusable labels are found when the table is read, before a run folder exists."""
    csv = tmp_path / "gaps.csv"
    pd.DataFrame({"formula": ["GaN", "NaCl"], "gap": [-3.4, -1.0]}).to_csv(csv, index=False)
    with pytest.raises(MatmtlError, match="no usable rows"):
        finetune(
            tiny_finetune(pretrained.run_dir, dataset=str(csv), holdout_fold=None), tmp_path / "ft", progress=False
        )
    assert not (tmp_path / "ft").exists()


def test_a_gate_that_cannot_be_fitted_never_costs_the_run(pretrained, tmp_path, monkeypatch):
    """Without Materials Project tables the gate is off and says why; an unexpected failure
    while fitting it leaves the trained, ungated model and says what failed."""
    import matmtl.metal_gate as mg
    from matmtl.errors import DataError

    cfg = dict(max_train_rows=120, train=tiny_ft(epochs=1))

    def no_tables(data_dir=None):
        raise DataError("mp_gap: not found")

    monkeypatch.setattr(mg.PbeGaps, "from_data", staticmethod(no_tables))
    off = finetune(tiny_finetune(pretrained.run_dir, **cfg), tmp_path / "a", progress=False)
    assert off.metrics["metal_gate"] == {"mode": "off", "skipped": "no Materials Project PBE gaps (mp_gap: not found)"}
    assert (off.run_dir / "model.safetensors").is_file() and not (off.run_dir / mg.GATE_FILE).exists()

    def broken(*args, **kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(mg.PbeGaps, "from_data", staticmethod(lambda data_dir=None: mg.PbeGaps()))
    monkeypatch.setattr(mg, "choose", broken)
    failed = finetune(tiny_finetune(pretrained.run_dir, **cfg), tmp_path / "b", progress=False)
    assert failed.metrics["metal_gate"]["skipped"] == "the gate failed: RuntimeError: boom"
    assert (failed.run_dir / "model.safetensors").is_file()


def _linear_with(w: float):
    import torch

    m = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(w)
    return m


def test_kept_epochs_are_the_best_few_and_survive_a_state_round_trip():
    from matmtl.train.selection import BestEpoch

    best = BestEpoch("val", keep=3)
    for epoch, (w, score) in enumerate([(1.5, 0.5), (3.0, 1.0), (2.4, 0.4), (10.0, 8.0), (2.0, 0.4)], start=1):
        best.update(epoch, {"val": score}, _linear_with(w))
    # best first, the earlier epoch first on a tie; epoch 4 (8.0) and then epoch 2 (1.0) fall out
    assert [s.epoch for s in best.kept] == [3, 5, 1] and best.epoch == 3 and best.score == 0.4
    again = BestEpoch("val", keep=3)
    again.load(best.state_dict(), best.tensors())
    assert [(s.epoch, s.score) for s in again.kept] == [(3, 0.4), (5, 0.4), (1, 0.5)]
    assert all(float(s.weights["weight"]) == float(t.weights["weight"]) for s, t in zip(best.kept, again.kept))
    # a state written by a single-epoch selection (no "kept" list) still loads
    one = BestEpoch("val")
    one.load({"key": "val", "epoch": 3, "score": 0.4}, {"best.weight": best.kept[0].weights["weight"]})
    assert one.epoch == 3 and [s.epoch for s in one.kept] == [3]
    # keep=1 is the plain best epoch
    single = BestEpoch("val")
    for epoch, score in enumerate([3.0, 2.0, 2.0, 2.5], start=1):
        single.update(epoch, {"val": score}, _linear_with(score))
    assert [s.epoch for s in single.kept] == [2] and "best1.weight" not in single.tensors()


def test_the_greedy_weight_average_adds_an_epoch_only_when_validation_improves():
    from matmtl.train.selection import BestEpoch, average_kept

    best = BestEpoch("val", keep=3)
    for epoch, w in enumerate([1.5, 3.0, 2.4, 10.0], start=1):
        best.update(epoch, {"val": abs(w - 2.0)}, _linear_with(w))
    model = _linear_with(0.0)
    out = average_kept(model, best, lambda m: abs(m.weight.item() - 2.0))
    # kept: 2.4 (0.4), 1.5 (0.5), 3.0 (1.0); 2.4+1.5 averages to 1.95 (0.05): joins;
    # + 3.0 averages to 2.3 (0.3): worse, left out
    assert out["candidates"] == [3, 1, 2] and out["averaged_epochs"] == [3, 1]
    assert out["averaged_validation_score"] == pytest.approx(0.05, abs=1e-6)
    assert out["best_epoch_validation_score"] == pytest.approx(0.4, abs=1e-6)
    assert model.weight.item() == pytest.approx(1.95, abs=1e-6)
    assert [e for e, _ in out["tried"]] == [1, 2]


def test_a_finetune_with_averaged_epochs_keeps_the_average_and_resumes_exactly(pretrained, tmp_path):
    from safetensors.torch import load_file

    from matmtl.train.selection import mean_weights

    cfg = tiny_finetune(
        pretrained.run_dir,
        max_train_rows=150,
        aux_source="replay",
        replay_max_rows=200,
        train=tiny_ft(epochs=5, lr=5e-2, average_epochs=3),
    )
    full = finetune(cfg, tmp_path / "full", progress=False)
    avg = full.metrics["weight_average"]
    scores = {h["epoch"]: h["val_mae_gap_expt"] for h in full.history}
    assert avg["candidates"] == sorted(scores, key=lambda e: (scores[e], e))[:3]
    assert avg["averaged_epochs"][0] == full.metrics["best_epoch"] == avg["candidates"][0]
    assert avg["averaged_validation_score"] <= full.metrics["best_validation_score"] == min(scores.values())
    # the written model is the mean of the kept epochs that were averaged (their weights are in the state)
    state = load_file(str(full.run_dir / "state" / "state-0005.safetensors"))
    kept = _read(full.run_dir / "state" / "state.json")["best"]["kept"]
    snaps = {
        e: {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"best{'' if i == 0 else i}.")}
        for i, (e, _) in enumerate(kept)
    }
    expect = mean_weights([snaps[e] for e in avg["averaged_epochs"]])
    written = _weights(full.run_dir)
    shared = [k for k in written if k.startswith("encoder.") and k in expect]
    assert shared and all(np.array_equal(written[k].numpy(), expect[k].numpy()) for k in shared)
    # an interrupted run, resumed, averages the same epochs into the same weights
    finetune(cfg, tmp_path / "part", stop_after=2, progress=False)
    resumed = resume(tmp_path / "part", progress=False)
    assert resumed.metrics["weight_average"] == avg
    wb = _weights(resumed.run_dir)
    assert all(np.array_equal(written[k].numpy(), wb[k].numpy()) for k in written)
    with pytest.raises(ConfigError, match="average_epochs"):
        tiny_ft(average_epochs=0)
    assert (
        "average_epochs" not in tiny_ft().numeric_dict()
        and tiny_ft(average_epochs=3).numeric_dict()["average_epochs"] == 3
    )


def test_runs_with_one_split_seed_share_their_validation_rows(pretrained, tmp_path):
    """split_seed fixes the validation rows (and a training subsample) apart from the
    training seed; split_seed == seed is the default run, bit for bit."""

    def run(name, **kw):
        cfg = tiny_finetune(pretrained.run_dir, max_train_rows=150, train=tiny_ft(**kw))
        res = finetune(cfg, tmp_path / name, progress=False)
        return res, _read(res.run_dir / "validation_predictions.json")

    base, vb = run("base", seed=1)
    same, vs = run("same", seed=1, split_seed=1)
    other, vo = run("other", seed=2, split_seed=1)
    free, vf = run("free", seed=2)
    wa, ws = _weights(base.run_dir), _weights(same.run_dir)
    assert all(np.array_equal(wa[k].numpy(), ws[k].numpy()) for k in wa)
    assert vb["rows"] == vs["rows"] == vo["rows"] and vf["rows"] != vb["rows"]
    wo = _weights(other.run_dir)  # another training seed: other weights
    assert not all(np.array_equal(wa[k].numpy(), wo[k].numpy()) for k in wa)
    assert base.metrics["train_rows"] == other.metrics["train_rows"]
    with pytest.raises(ConfigError, match="split_seed"):
        tiny_ft(split_seed=-1)
    assert "split_seed" not in tiny_ft().numeric_dict() and tiny_ft(split_seed=4).numeric_dict()["split_seed"] == 4
