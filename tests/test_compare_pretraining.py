"""scripts/compare_pretraining.py on tiny pretraining runs: the held-out rows it re-predicts are
the runs' own, the paired differences are of those rows, and the default balancer follows the
validation-only rule."""

from __future__ import annotations

import json

import pytest
from _scripts import load_script
from _tiny import tiny_model, tiny_pretrain, tiny_train

from matmtl.config import MTLConfig, PretrainConfig
from matmtl.mtl import Uncertainty
from matmtl.train import pretrain


def _script():
    return load_script("compare_pretraining")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    made = {}
    for name, mtl, tasks in (
        ("static", MTLConfig(), ("e_form", "gap_pbe")),
        ("uncertainty", MTLConfig(balancer=Uncertainty()), ("e_form", "gap_pbe")),
        ("single", MTLConfig(), ("e_form",)),
    ):
        cfg = tiny_pretrain(tasks, train=tiny_train(epochs=1), mtl=mtl, max_rows=400)
        made[name] = pretrain(cfg, root / name, progress=False).run_dir
    return made


def test_paired_holdout_rows_are_the_runs_own(runs, tmp_path):
    out_json, out_md = tmp_path / "cmp.json", tmp_path / "cmp.md"
    args = [f"{k}={v}" for k, v in runs.items()] + ["--json", str(out_json), "--markdown", str(out_md)]
    assert _script().main(args) == 0
    res = json.loads(out_json.read_text())
    assert res["reference"] == "static" and res["holdout_fold"] == 0
    for name, r in res["runs"].items():
        # the re-predicted held-out MAE is the one the run reported: the same rows, the same model
        for t, mae in r["holdout_mae"].items():
            assert r["holdout_mae_recomputed"][t] == pytest.approx(mae, rel=1e-5), (name, t)
    unc, single = res["runs"]["uncertainty"], res["runs"]["single"]
    assert set(unc["paired"]) == {"e_form", "gap_pbe"} and set(single["paired"]) == {"e_form"}
    d = unc["paired"]["e_form"]
    # (the mean of per-row differences vs the difference of two float32 MAEs: equal to float32 rounding)
    expect = unc["holdout_mae"]["e_form"] - res["runs"]["static"]["holdout_mae"]["e_form"]
    assert d["diff"] == pytest.approx(expect, abs=1e-6)
    assert d["se"] > 0 and d["rows"] > 0
    # the rule: a balancer replaces the reference only if better on every task's validation rows
    v_ref, v_unc = res["runs"]["static"]["validation_mae"], unc["validation_mae"]
    better = all(v_unc[t] < v_ref[t] for t in v_ref)
    assert res["choice"]["chosen"] == ("uncertainty" if better else "static")
    assert "single" not in res["choice"]["candidates_better_on_every_task"]  # other tasks: never a candidate
    # negative transfer: each multi-task run against the single-task run, on its one task
    pairs = {(x["multi"], x["single"], x["task"]): x for x in res["transfer"]}
    assert set(pairs) == {("static", "single", "e_form"), ("uncertainty", "single", "e_form")}
    x = pairs[("uncertainty", "single", "e_form")]
    assert x["diff"] == pytest.approx(unc["holdout_mae"]["e_form"] - single["holdout_mae"]["e_form"], rel=1e-4)
    assert x["verdict"] in ("tie", "negative transfer", "positive transfer") and x["same_epochs"]
    page = out_md.read_text()
    assert "negative transfer" in page and "| e_form (eV/atom) | `uncertainty` | `single` |" in page
    assert "Balancer chosen by this page's validation-only rule" in page and "pretraining default" in page
    assert "--balance static" in page  # the run commands name their balancer
    # ... and every setting that is not the default (here: the tiny preset, with its epochs overridden)
    assert "--holdout-fold 0 --size tiny --epochs 1 --threads 1 --max-rows 400 --balance" in page


def test_runs_holding_out_other_rows_are_refused(runs, tmp_path, capsys):
    other = tmp_path / "other"
    cfg = tiny_pretrain(("e_form",), train=tiny_train(epochs=1), max_rows=300)
    pretrain(cfg, other, progress=False)
    with pytest.raises(SystemExit):
        _script().main([f"static={runs['static']}", f"other={other}"])
    assert "must hold out the same rows" in capsys.readouterr().err


def test_a_task_without_held_out_rows_is_compared_on_validation_rows_only(runs, tmp_path):
    """OQMD gaps have no official folds, so no held-out rows: the run is compared on the
    tasks it shares with the reference, and its OQMD task only by its validation MAE."""
    cfg = tiny_pretrain(("e_form", "gap_pbe", "gap_oqmd"), train=tiny_train(epochs=1), max_rows=400)
    oqmd = pretrain(cfg, tmp_path / "oqmd", progress=False).run_dir
    out_json = tmp_path / "cmp.json"
    assert _script().main([f"static={runs['static']}", f"oqmd={oqmd}", "--json", str(out_json)]) == 0
    r = json.loads(out_json.read_text())["runs"]["oqmd"]
    assert set(r["paired"]) == {"e_form", "gap_pbe"} and set(r["holdout_mae_recomputed"]) == {"e_form", "gap_pbe"}
    assert "gap_oqmd" not in r["holdout_mae"] and r["validation_mae"]["gap_oqmd"] >= 0


def test_the_run_command_remakes_the_run(tmp_path):
    """The command listed for a run, given to the CLI, makes a run with the same settings:
    surgery, monitor, dropout, on/off switches and every other non-default flag included (the
    flags are read from the CLI itself); and the monitor's records are summarised per task pair."""
    import shlex

    from typer.testing import CliRunner

    from matmtl.cli.app import app
    from matmtl.mtl import PCGrad

    mtl = MTLConfig(balancer=Uncertainty(), surgery=PCGrad(), monitor_every=2)
    cfg = PretrainConfig(
        tasks=("e_form", "gap_pbe"),
        model=tiny_model(dropout=0.2),
        train=tiny_train(epochs=1, lr=3e-3, seed=4, deterministic=True, dist_timeout=60.0),
        mtl=mtl,
        holdout_fold=0,
        max_rows=300,
    )
    made = pretrain(cfg, tmp_path / "made", progress=False).run_dir
    cmd = _script().run_command(made)
    assert cmd.startswith("matmtl pretrain --tasks e_form,gap_pbe --holdout-fold 0 --size tiny")
    for flag in (
        "--dropout 0.2",
        "--epochs 1",
        "--lr 0.003",
        "--seed 4",
        "--max-rows 300",
        "--monitor-every 2",
        "--deterministic",
        "--dist-timeout 60.0",
    ):
        assert flag in cmd, (flag, cmd)
    assert cmd.endswith("--balance uncertainty --surgery pcgrad") and "without a flag" not in cmd
    argv = shlex.split(cmd)[1:] + ["--out", str(tmp_path / "remade"), "--no-progress", "--device", "cpu"]
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 0, r.output
    a, b = (json.loads((d / "config.json").read_text()) for d in (made, tmp_path / "remade"))
    for key in ("created", "data_dir"):
        a.pop(key, None), b.pop(key, None)
    assert a == b
    # a strategy setting no flag sets is named after the command, not dropped
    from matmtl.mtl import HalfSpace

    cfg.mtl = MTLConfig(balancer=Uncertainty(), surgery=HalfSpace(main="gap_pbe"))
    other = pretrain(cfg, tmp_path / "halfspace", progress=False).run_dir
    named = '(settings without a flag: mtl.surgery={"name": "halfspace", "main": "gap_pbe"})'
    assert _script().run_command(other).endswith(f"--surgery halfspace {named}")
    geometry = _script().describe(made)["gradient_geometry"]
    assert set(geometry) == {"e_form|gap_pbe"} and geometry["e_form|gap_pbe"]["records"] >= 1
    assert -1 <= geometry["e_form|gap_pbe"]["cosine_mean"] <= 1
