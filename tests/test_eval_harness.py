"""Evaluation harness on real data with tiny settings: the official folds, the seeded
training-fold subsamples, the baseline, the results JSON shape, resuming finished
cells, and one quick end-to-end run of the neural variants."""

import gzip
import json

import numpy as np
import pytest

from matmtl.data import load_dataset, matbench_folds
from matmtl.eval import EvalSettings, evaluate, protocol
from matmtl.eval import baseline as baseline_mod
from matmtl.eval.baseline import baseline_fp, magpie_features, magpie_path
from matmtl.eval.cells import CellKey, CellStore
from matmtl.eval.settings import QUICK
from matmtl.metrics import regression_metrics


@pytest.fixture(scope="module")
def expt():
    return load_dataset("expt_gap")


def test_folds_are_the_official_matbench_folds(expt, mirror):
    check = protocol.check_official_folds(expt, "expt_gap")
    assert check["checked"] and check["match"], check  # identical to matbench v0.1's official test ids
    assert check["sizes"] == [921, 921, 921, 921, 920]
    seen = np.zeros(len(expt), int)
    for k, (tr, te) in enumerate(matbench_folds(len(expt))):
        ptr, pte = protocol.fold_rows(expt, k)
        assert np.array_equal(np.sort(ptr), np.sort(tr)) and np.array_equal(np.sort(pte), np.sort(te))
        assert not set(ptr) & set(pte)
        seen[pte] += 1
    assert (seen == 1).all()  # every row is tested exactly once


def test_training_subsets_are_seeded_and_inside_the_training_fold(expt):
    from matmtl.train.data import split_rows

    tr_full, te_full = protocol.fold_rows(expt, 1)
    tr, te = protocol.train_test(expt, 1, 0.25, seed=0)
    assert len(tr) == round(0.25 * len(tr_full)) and set(tr) <= set(tr_full)
    assert np.array_equal(te, te_full)  # always the whole test fold
    assert np.array_equal(tr, protocol.train_test(expt, 1, 0.25, seed=0)[0])  # seeded
    assert not np.array_equal(tr, protocol.train_test(expt, 1, 0.25, seed=1)[0])
    # the very rows fine-tuning draws for --max-train-rows N
    assert np.array_equal(tr, split_rows(expt, 1, len(tr), 0, shrink_test=False)[0])
    assert np.array_equal(protocol.train_test(expt, 1, 1.0)[0], tr_full)


def _baseline_settings(tmp_path, **kw):
    return EvalSettings(
        **{
            "variants": ("rf_magpie",),
            "folds": (0, 1),
            "fractions": (),
            "skip_mp": True,
            "quick": True,
            "out": str(tmp_path / "results"),
            "markdown": str(tmp_path / "docs" / "results.md"),
            "work_dir": str(tmp_path / "work"),
            "progress": False,
            "command": "test-baseline",
            "force": True,
            **kw,
        }
    )


def test_baseline_on_a_tiny_subset_and_the_json_shape(tmp_path, expt):
    res = evaluate(_baseline_settings(tmp_path))
    on_disk = json.loads((tmp_path / "results" / "expt_gap.json").read_text())
    assert on_disk == json.loads(json.dumps(res["expt_gap"]))
    assert on_disk["protocol"] == "matbench_v0.1" and on_disk["official_folds"]["match"] is True
    for key in ("variants", "forgetting", "data_efficiency", "command", "hardware", "seconds", "relatedness"):
        assert key in on_disk
    assert set(on_disk["forgetting"]) >= {"finetune", "finetune_anchor"}
    rf = on_disk["variants"]["rf_magpie"]
    assert rf["status"] == "done" and len(rf["fold_mae"]) == 2 and rf["command"] == "test-baseline"
    for k in ("mae_mean", "mae_std", "fold_mae", "rmse", "r2"):
        assert rf[k] is not None
    for name in ("scratch", "finetune", "finetune_anchor_replay", "finetune_anchor_distill", "finetune_anchor_pcgrad"):
        assert on_disk["variants"][name]["status"] == "not run" and on_disk["variants"][name]["mae_mean"] is None
    # the stored predictions reproduce the fold scores; training rows = the seeded quick cap
    y = expt.target("gap_expt")
    fold_maes = []
    store, fp = CellStore(tmp_path / "work"), baseline_fp(_baseline_settings(tmp_path), len(expt))
    for k in (0, 1):
        rec = store.get(CellKey("expt_gap", "rf_magpie", k), fp)
        tr, te = protocol.train_test(expt, k, 1.0, 0, QUICK["expt_cap"])
        assert rec["n_train"] == len(tr) == QUICK["expt_cap"] and rec["n_test"] == len(te)
        m = regression_metrics(y[te], rec["pred"])
        assert m["mae"] == pytest.approx(rec["metrics"]["mae"]) and m["r2"] == pytest.approx(rec["metrics"]["r2"])
        fold_maes.append(m["mae"])
    assert rf["mae_mean"] == pytest.approx(np.mean(fold_maes)) and rf["mae_std"] == pytest.approx(np.std(fold_maes))
    page = (tmp_path / "docs" / "results.md").read_text()
    assert "`rf_magpie`" in page and "test-baseline" in page and "Quick smoke-test settings" in page
    assert not (tmp_path / "results" / "mp_e_form.json").exists()
    # the Magpie table is cached on disk as a plain npz
    tr, te = protocol.train_test(expt, 0, 1.0, 0, QUICK["expt_cap"])
    formulas = [expt.formulas[i] for i in np.concatenate([tr, te])]
    with np.load(magpie_path(formulas), allow_pickle=False) as z:
        X = z["X"]
    assert X.shape == (len(formulas), 132) and np.isfinite(X).all()
    assert np.array_equal(magpie_features(formulas)[0], X)


def test_finished_cells_are_not_run_again(tmp_path, monkeypatch, expt):
    calls = []
    real = baseline_mod.BaselineCells.compute

    def counting(self, fold, fraction):
        calls.append((fold, fraction))
        return real(self, fold, fraction)

    monkeypatch.setattr(baseline_mod.BaselineCells, "compute", counting)
    first = evaluate(_baseline_settings(tmp_path))
    assert sorted(calls) == [(0, 1.0), (1, 1.0)]
    calls.clear()
    again = evaluate(_baseline_settings(tmp_path))  # everything cached
    assert calls == []
    assert (
        again["expt_gap"]["variants"]["rf_magpie"]["fold_mae"] == first["expt_gap"]["variants"]["rf_magpie"]["fold_mae"]
    )
    # a "killed" evaluation: fold 1's cell never finished -> only that cell runs
    fp = baseline_fp(_baseline_settings(tmp_path), len(expt))
    CellStore(tmp_path / "work").path(CellKey("expt_gap", "rf_magpie", 1), fp).unlink()
    evaluate(_baseline_settings(tmp_path))
    assert calls == [(1, 1.0)]
    calls.clear()
    evaluate(_baseline_settings(tmp_path, rf_trees=7))  # other settings: other cells
    assert sorted(calls) == [(0, 1.0), (1, 1.0)]


def test_quick_end_to_end_neural_variants(tmp_path):
    from matmtl.errors import MatmtlError
    from matmtl.eval.submission import check_submission

    s = EvalSettings(
        folds=(0,),
        fractions=(0.5, 1.0),
        quick=True,
        out=str(tmp_path / "results"),
        markdown=str(tmp_path / "results.md"),
        work_dir=str(tmp_path / "work[b]"),  # brackets: printed as they are, not read as markup
        progress=False,
        command="test-quick",
    )
    import io

    from rich.console import Console

    printed = io.StringIO()
    res = evaluate(s, console=Console(file=printed, width=10_000))
    header = printed.getvalue().splitlines()[0]
    assert "[quick]" in header and f"cells cached in {tmp_path / 'work[b]'}" in header
    assert res["expt_gap"]["settings"]["finetune_train"]["epochs"] == 2  # the finetune-tiny preset
    expt = res["expt_gap"]
    for name in ("rf_magpie", "scratch", "finetune", "finetune_anchor_replay", "finetune_anchor_distill"):
        v = expt["variants"][name]
        assert v["status"] == "done", name
        assert np.isfinite(v["mae_mean"]) and len(v["fold_mae"]) == 1 and v["r2"] is not None
    pc = expt["variants"]["finetune_anchor_pcgrad"]
    assert pc["status"] == "done" and pc["anchor_source_per_fold"]["0"] in ("replay", "distill")
    fg = expt["forgetting"]
    for name in ("finetune", "finetune_anchor"):
        assert fg[name]["before"] > 0 and fg[name]["after"] > 0
    assert fg["finetune"]["how"].startswith("pretrained e_form head")
    de = expt["data_efficiency"]
    assert set(de["variants"]) == {"scratch", "finetune", "finetune_anchor"}
    assert de["variants"]["finetune"]["0.5"]["mae_mean"] > 0
    half = json.loads(
        next((tmp_path / "work[b]" / "cells" / "expt_gap" / "finetune").glob("*/fold0-frac0.5.json")).read_text()
    )
    assert de["variants"]["finetune"]["0.5"]["fold_validation_mae"] == [half["validation"]["mae"]]  # its own rows
    # the protocol: every run's own validation rows chose its epoch and metal cut, and the anchor source
    assert (
        expt["settings"]["finetune_train"]["val_fraction"] == 0.1 and expt["settings"]["eval"]["anchor"] == "validation"
    )
    cells = {
        p.parent.parent.name: json.loads(p.read_text())
        for p in (tmp_path / "work[b]" / "cells" / "expt_gap").glob("*/*/fold0-frac1.json")
    }
    for name in ("scratch", "finetune", "finetune_anchor_replay", "finetune_anchor_distill", "finetune_anchor_pcgrad"):
        v, c = expt["variants"][name], cells[name]
        assert c["validation"]["rows"] == c["validation_rows"] == 20 and c["n_train"] == 180  # 10% of the 200 rows
        assert v["fold_validation_mae"] == [c["validation"]["mae"]] and 1 <= v["fold_best_epoch"][0] <= 2
        assert "metal_cut" in c["validation"] and "calibration" in c["validation"]
        assert c["metrics"]["mae"] == pytest.approx(c["metrics"]["finetune_reported_mae"], abs=1e-6)  # one test pass
        # the run's validation predictions: its own validation rows, re-scoring to its validation MAE
        vp = c["validation_pred"]
        assert len(vp["rows"]) == 20 and not set(vp["rows"]) & set(load_dataset("expt_gap").folds()[0][1])
        assert vp["target"] == pytest.approx(load_dataset("expt_gap").target("gap_expt")[vp["rows"]], abs=1e-4)
        assert np.abs(np.subtract(vp["pred"], vp["target"])).mean() == pytest.approx(c["validation"]["mae"], abs=1e-3)
    sel = expt["anchor_selection"]["folds"]["0"]
    r, d = (cells[f"finetune_anchor_{a}"]["validation"]["mae"] for a in ("replay", "distill"))
    assert sel["rule"] == "validation" and (sel["replay"], sel["distill"]) == (r, d)
    assert sel["chosen"] == ("replay" if r <= d else "distill") == pc["anchor_source_per_fold"]["0"]
    assert cells["finetune_anchor_pcgrad"]["spec"]["aux_source"] == sel["chosen"]
    assert sorted(p.name for p in (tmp_path / "work[b]" / "cells").iterdir()) == ["expt_gap", "forgetting", "mp"]
    # the per-fold test predictions: matbench ids, targets and predictions that re-score to the table
    out = tmp_path / "results"
    preds = json.loads((out / "expt_gap_predictions.json").read_text())
    ds = load_dataset("expt_gap")
    te = ds.folds()[0][1]
    assert preds["folds"]["0"]["ids"] == ds.frame["id"].to_numpy()[te].tolist()
    y = np.asarray(preds["folds"]["0"]["target"])
    for name in ("rf_magpie", "scratch", "finetune", "finetune_anchor_replay", "finetune_anchor_distill"):
        mae = np.abs(np.asarray(preds["variants"][name]["0"]) - y).mean()
        assert mae == pytest.approx(expt["variants"][name]["fold_mae"][0], abs=1e-4), name
    for name in ("finetune_anchor_replay", "finetune_anchor_distill"):
        assert preds["validation"][name]["0"] == cells[name]["validation_pred"]
    assert preds["validation"]["finetune_anchor_replay"]["0"]["rows"] == preds["validation"]["finetune"]["0"]["rows"]
    # the matbench results file of the submission variant, in the official format (fold 0 only here)
    with gzip.open(out / "results.json.gz", "rt") as fh:
        sub = json.load(fh)
    with gzip.open(protocol.official_results_file(), "rt") as fh:
        official = json.load(fh)
    assert list(sub) == list(official) and check_submission(sub, official) == []
    task = sub["tasks"]["matbench_expt_gap"]
    assert list(task) == list(official["tasks"]["matbench_expt_gap"]) and list(task["results"]) == ["fold_0"]
    fold = task["results"]["fold_0"]
    assert list(fold) == list(official["tasks"]["matbench_expt_gap"]["results"]["fold_0"])
    assert set(fold["data"]) == set(official["tasks"]["matbench_expt_gap"]["results"]["fold_0"]["data"])
    assert fold["scores"]["mae"] == pytest.approx(expt["variants"]["finetune_anchor_replay"]["fold_mae"][0])
    assert fold["parameters"]["variant"] == "finetune_anchor_replay" and fold["parameters"]["validation_rows"] == 20
    assert sub["user_metadata"]["is_complete"] is False and sub["user_metadata"]["quick"] is True
    assert expt["files"]["submission"]["file"] == "results.json.gz" and expt["files"]["submission"]["folds"] == [0]
    for f in out.iterdir():
        assert f.stat().st_size < 1 << 20, f  # every results file stays under 1 MiB
    rel = expt["relatedness"]["variants"]
    assert rel["finetune"]["pairs"] == {}  # single task: nothing to relate
    assert any(rel[n]["pairs"] for n in ("finetune_anchor_replay", "finetune_anchor_distill"))
    for name, unit in (("mp_e_form", "eV/atom"), ("mp_gap", "eV")):
        mp = json.loads((tmp_path / "results" / f"{name}.json").read_text())
        assert mp["unit"] == unit and mp["folds"] == [0]
        assert (
            mp["variants"]["pretrain"]["mae_mean"] > 0 and mp["variants"]["pretrain"]["mae_composition_only_mean"] > 0
        )
    assert (tmp_path / "results" / "expt_gap_data_efficiency.png").stat().st_size > 1000
    page = (tmp_path / "results.md").read_text()
    assert "matbench_mp_e_form" in page and "Data efficiency" in page and "Forgetting" in page
    # run folders of finished cells are not kept (their numbers are in the cell records)
    assert not list((tmp_path / "work[b]" / "runs" / "expt_gap").rglob("model.safetensors"))
    # a re-run from cached cells reports the same forgetting, "before" included
    with pytest.raises(MatmtlError, match="force"):  # the results of the first run are not replaced silently
        evaluate(s)
    s.force = True
    again = evaluate(s)["expt_gap"]["forgetting"]
    assert (
        again["finetune"]["before"] == fg["finetune"]["before"]
        and again["finetune"]["after"] == fg["finetune"]["after"]
    )


def test_a_cell_killed_mid_training_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    import functools
    import importlib

    from matmtl.errors import MatmtlError

    def settings(name, **kw):
        return EvalSettings(
            **{
                "variants": ("finetune",),
                "folds": (0,),
                "fractions": (),
                "skip_mp": True,
                "quick": True,
                "out": str(tmp_path / name / "results"),
                "page": False,
                "force": True,
                "work_dir": str(tmp_path / name / "work"),
                "progress": False,
                **kw,
            }
        )

    # the module, not the function: `matmtl.train.finetuning` holds it
    ft_mod = importlib.import_module("matmtl.train.finetuning")
    whole = evaluate(settings("whole"))["expt_gap"]["variants"]["finetune"]
    ckpt = next((tmp_path / "whole" / "work" / "runs" / "pretrain").glob("*/fold0"))
    real = ft_mod.finetune

    @functools.wraps(real)
    def killed_after_one_epoch(config, out=None, **kw):
        return real(config, out, **{**kw, "stop_after": 1})

    monkeypatch.setattr(ft_mod, "finetune", killed_after_one_epoch)
    with pytest.raises(MatmtlError, match="did not finish"):
        evaluate(settings("killed", checkpoint=str(ckpt)))
    monkeypatch.setattr(ft_mod, "finetune", real)
    from matmtl.eval import finetune_cells

    states, prep = [], finetune_cells.prepare_run_dir
    monkeypatch.setattr(finetune_cells, "prepare_run_dir", lambda d: states.append(prep(d)) or states[-1])
    resumed = evaluate(settings("killed", checkpoint=str(ckpt)))["expt_gap"]["variants"]["finetune"]
    assert states == ["resume"]  # continued from the saved epoch, not restarted
    assert resumed["fold_mae"] == pytest.approx(whole["fold_mae"], rel=1e-9, abs=1e-12)


def test_matmtl_evaluate_command_reaches_the_harness():
    from typer.testing import CliRunner

    from matmtl.cli import app

    res = CliRunner().invoke(app, ["evaluate", "--help"])
    assert res.exit_code == 0 and "usage: matmtl evaluate" in res.output.lower() and "--variants" in res.output
    res = CliRunner().invoke(app, ["evaluate", "--folds", "9"])
    assert res.exit_code == 2 and "--folds" in res.output and "0..4" in res.output
    res = CliRunner().invoke(app, ["evaluate", "--no-such-option"])
    assert res.exit_code == 2


def test_efficiency_folds_default_to_the_folds_and_must_be_among_them():
    from matmtl.errors import MatmtlError

    assert EvalSettings(folds=(0, 2)).efficiency_folds == (0, 2)
    assert EvalSettings(folds=(0, 2), efficiency_folds=(2,)).efficiency_folds == (2,)
    with pytest.raises(MatmtlError, match=r"EvalSettings\.efficiency_folds"):  # the library names its parameter
        EvalSettings(folds=(0,), efficiency_folds=(1,))


def test_the_anchor_tasks_are_a_setting_with_the_default_cells_unchanged():
    from matmtl.errors import MatmtlError
    from matmtl.eval.settings import VARIANTS

    default = EvalSettings()
    assert default.aux == ("dft_energy",)
    for name in ("scratch", "finetune", "finetune_anchor_replay", "finetune_anchor_distill"):
        assert default.spec(name) == VARIANTS[name]  # so earlier cells keep their fingerprints
    both = EvalSettings(aux=("gap_pbe", "dft_energy"))  # task names read as the aliases
    assert both.aux == ("dft_gap", "dft_energy")
    spec = both.spec("finetune_anchor_distill")
    assert spec.aux == ("dft_gap", "dft_energy") and spec.aux_source == "distill"
    assert "gap_pbe + e_form anchor" in spec.description and both.spec("finetune") == VARIANTS["finetune"]
    assert both.spec("finetune_anchor_pcgrad", "replay").aux == both.aux
    assert "gap_pbe + e_form anchor" in both.description("finetune_anchor_pcgrad")
    for bad, match in (((), "at least one"), (("dft_magic",), "DFT tasks"), (("e_form", "dft_energy"), "repeat")):
        with pytest.raises(MatmtlError, match=match):
            EvalSettings(aux=bad)
    with pytest.raises(
        MatmtlError, match=r"EvalSettings\.pretrain_tasks must include \['gap_pbe'\]: EvalSettings\.aux"
    ):
        EvalSettings(aux=("dft_gap",), pretrain_tasks=("e_form",))  # the harness's own pretraining lacks it
    assert EvalSettings(aux=("dft_gap",), pretrain_tasks=("e_form",), checkpoint="given").aux == ("dft_gap",)


def test_the_gap_head_is_a_setting_with_the_default_cells_unchanged(tmp_path):
    """``--gap-head correction`` makes cells of their own; the default adds nothing to a
    cell's fingerprint, so the cells cached before the setting existed stay valid."""
    from types import SimpleNamespace

    from matmtl.errors import MatmtlError
    from matmtl.eval.finetune_cells import FinetuneCells

    def fps(**kw):
        s = EvalSettings(**kw)
        cells = FinetuneCells(s, "cpu", tmp_path, None, SimpleNamespace(identity={"sha256": "x"}))
        return {v: cells.fp(s.spec(v)) for v in ("scratch", "finetune", "finetune_anchor_replay")}

    default, correction = fps(), fps(gap_head="correction")
    assert fps(gap_head="warm_start") == default
    assert all(default[v] != correction[v] for v in default)
    with pytest.raises(MatmtlError, match=r"EvalSettings\.gap_head must be one of warm_start, correction"):
        EvalSettings(gap_head="delta")


def test_l2_sp_is_a_setting_of_the_pretrained_variants_only(tmp_path):
    """``--soft-share`` reaches the fine-tuning config of the variants that start from the
    pretrained model and their cells' fingerprints; scratch (no pretrained encoder to keep)
    and the default (0) are unchanged, so cells cached before the setting stay valid."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from matmtl.cli import app
    from matmtl.errors import MatmtlError
    from matmtl.eval.finetune_cells import FinetuneCells

    names = ("scratch", "finetune", "finetune_anchor_replay", "finetune_anchor_distill")

    def cells_of(**kw):
        s = EvalSettings(**kw)
        return s, FinetuneCells(s, "cpu", tmp_path, None, SimpleNamespace(identity={"sha256": "x"}))

    (s0, c0), (s1, c1) = cells_of(), cells_of(soft_share=0.01)
    assert {v: c0.fp(s0.spec(v)) for v in names} == {v: cells_of(soft_share=0.0)[1].fp(s0.spec(v)) for v in names}
    for v in names:
        pretrained = s1.spec(v).init == "pretrained"
        assert (c1.fp(s1.spec(v)) != c0.fp(s0.spec(v))) == pretrained
        assert c1.config(s1.spec(v), tmp_path, 0, None).mtl.soft_share == (0.01 if pretrained else 0.0)
        assert c0.config(s0.spec(v), tmp_path, 0, None).mtl.soft_share == 0.0
    with pytest.raises(MatmtlError, match=r"EvalSettings\.soft_share must be >= 0"):
        EvalSettings(soft_share=-1)
    res = CliRunner().invoke(app, ["evaluate", "--soft-share", "-0.5"])
    assert res.exit_code == 2 and "--soft-share" in res.output


def test_evaluate_with_both_dft_anchors_and_correction_learning(tmp_path):
    """``--aux dft_energy,dft_gap --gap-head correction``: the anchored cells train both
    DFT heads, and the gap head learns a correction to the frozen DFT gap head (a quick run).
    Without PCGrad or a data-efficiency curve, the fold's anchor choice is still recorded."""
    s = EvalSettings(
        variants=("finetune_anchor_replay", "finetune_anchor_distill"),
        folds=(0,),
        fractions=(),
        skip_baseline=True,
        skip_mp=True,
        quick=True,
        aux=("dft_energy", "dft_gap"),
        gap_head="correction",
        out=str(tmp_path / "results"),
        page=False,
        work_dir=str(tmp_path / "work"),
        progress=False,
    )
    res = evaluate(s)["expt_gap"]
    v = res["variants"]["finetune_anchor_replay"]
    assert v["status"] == "done" and "e_form + gap_pbe anchor" in v["description"]
    assert list(res["settings"]["eval"]["aux"]) == ["dft_energy", "dft_gap"]
    (cell,) = (tmp_path / "work" / "cells" / "expt_gap" / "finetune_anchor_replay").glob("*/fold0-frac1.json")
    record = json.loads(cell.read_text())
    assert record["spec"]["aux"] == ["dft_energy", "dft_gap"] and record["gap_head"] == "correction"
    assert res["settings"]["eval"]["gap_head"] == "correction"
    sel = res["anchor_selection"]["folds"]["0"]
    maes = [res["variants"][f"finetune_anchor_{src}"]["fold_validation_mae"][0] for src in ("replay", "distill")]
    assert sel["chosen"] == ("replay" if maes[0] <= maes[1] else "distill")
    preds = json.loads((tmp_path / "results" / "expt_gap_predictions.json").read_text())
    assert preds["anchor_source_per_fold"] == {"0": sel["chosen"]}
    from typer.testing import CliRunner

    from matmtl.cli import app

    r = CliRunner().invoke(app, ["evaluate", "--aux", "dft_magic"])
    assert r.exit_code == 2 and "--aux" in r.output
    r = CliRunner().invoke(app, ["evaluate", "--gap-head", "delta"])
    assert r.exit_code == 2 and "--gap-head" in r.output


def test_the_random_forest_baseline_repeats_bit_for_bit():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(300, 12)), rng.normal(size=300)
    X[rng.random(X.shape) < 0.05] = np.nan  # missing features are filled from the training rows
    a = baseline_mod.fit_predict_rf(X[:200], y[:200], X[200:], n_estimators=64, random_state=3)
    b = baseline_mod.fit_predict_rf(X[:200], y[:200], X[200:], n_estimators=64, random_state=3)
    assert np.array_equal(a, b) and np.isfinite(a).all()
