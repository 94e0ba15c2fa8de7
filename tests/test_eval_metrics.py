"""Evaluation harness, pure parts: fold aggregation vs numpy, the cell cache, the
relatedness summary, the markdown generator and the command line (no training)."""

import json

import numpy as np
import pytest
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from matmtl.eval import cli as eval_cli
from matmtl.eval.cells import CellKey, CellStore, fingerprint
from matmtl.eval.cli import cli_main
from matmtl.eval.metrics import aggregate_folds, regression_metrics
from matmtl.eval.relatedness import average_over_folds, summarize_records
from matmtl.eval.report import LEADERBOARD, render_markdown


def _folds(seed=0, n=(921, 921, 921, 921, 920)):
    rng = np.random.default_rng(seed)
    out = []
    for m in n:
        y = np.where(rng.random(m) < 0.5, 0.0, rng.gamma(2.0, 1.0, m))
        p = np.clip(y + rng.normal(0, 0.4, m), 0, None)
        out.append((y, p))
    return out


def test_fold_metrics_match_sklearn():
    for y, p in _folds():
        m = regression_metrics(y, p)
        assert m["mae"] == pytest.approx(mean_absolute_error(y, p), rel=1e-12)
        assert m["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, p)), rel=1e-12)
        assert m["r2"] == pytest.approx(r2_score(y, p), rel=1e-12)
        assert m["max_error"] == pytest.approx(np.abs(y - p).max())
        assert m["n"] == len(y)


def test_aggregation_over_folds_matches_numpy():
    folds = _folds(1)
    per = [regression_metrics(y, p) for y, p in folds]
    agg = aggregate_folds(per)
    maes = np.array([np.abs(y - p).mean() for y, p in folds])
    assert agg["mae_mean"] == pytest.approx(maes.mean(), rel=1e-12)
    assert agg["mae_std"] == pytest.approx(np.std(maes), rel=1e-12)  # population std, as matbench
    assert agg["fold_mae"] == pytest.approx(list(maes))
    assert agg["rmse"] == pytest.approx(np.mean([np.sqrt(np.mean((y - p) ** 2)) for y, p in folds]), rel=1e-12)
    assert agg["r2"] == pytest.approx(np.mean([r2_score(y, p) for y, p in folds]), rel=1e-12)
    assert agg["folds_done"] == [0, 1, 2, 3, 4]


def test_aggregation_with_missing_folds():
    per = [regression_metrics(*f) for f in _folds(2, (50, 50))]
    agg = aggregate_folds([per[0], None, per[1], None, None])
    assert agg["fold_mae"][1] is None and agg["folds_done"] == [0, 2]
    assert agg["mae_mean"] == pytest.approx((per[0]["mae"] + per[1]["mae"]) / 2)
    empty = aggregate_folds([None] * 5)
    assert empty["mae_mean"] is None and empty["fold_mae"] == [None] * 5
    with pytest.raises(ValueError):
        regression_metrics([1.0, 2.0], [1.0])


def test_cell_store_roundtrip_and_fingerprint(tmp_path):
    store = CellStore(tmp_path)
    key = CellKey("expt_gap", "rf_magpie", 2, 0.25)
    fp = fingerprint({"a": 1})
    assert fp == fingerprint({"a": 1}) and fp != fingerprint({"a": 2})
    assert store.get(key, fp) is None
    store.put(key, fp, {"metrics": {"mae": 0.5}})
    assert store.get(key, fp)["metrics"]["mae"] == 0.5
    assert store.get(key, fingerprint({"a": 2})) is None  # other settings: not reused
    store.path(key, fp).write_text("{not json")  # never trusted
    assert store.get(key, fp) is None


def test_relatedness_summary_both_record_shapes():
    geo = [
        {
            "step": s,
            "tasks": ["gap_expt", "e_form"],
            "mean_cosine": [[1, c], [c, 1]],
            "angles": [[[0, 0], [a, 90 * np.pi / 180]], [[a, 1.2], [0, 0]]],
        }
        for s, c, a in ((0, 0.5, 0.1), (10, -0.1, 0.3), (20, 0.2, 0.2))
    ]
    s = summarize_records(geo)["gap_expt|e_form"]
    assert s["records"] == 3 and s["cosine_mean"] == pytest.approx(0.2)
    assert s["conflict_share"] == pytest.approx(1 / 3) and s["cosine_last_third"] == pytest.approx(0.2)
    assert s["principal_angles_deg_mean"][0] == pytest.approx(np.degrees(0.2))
    cos = summarize_records([{"step": 0, "e_form|gap_expt": 0.3}, {"step": 50, "e_form|gap_expt": -0.1}])
    assert cos["e_form|gap_expt"]["cosine_mean"] == pytest.approx(0.1)
    assert summarize_records([]) == {}
    avg = average_over_folds({0: {"p": {**s}}, 1: {"p": {**s, "cosine_mean": 0.4}}})
    assert avg["p"]["cosine_mean"] == pytest.approx(0.3) and avg["p"]["folds"] == 2


def _results():
    v = {
        "status": "done",
        "mae_mean": 0.4123,
        "mae_std": 0.0111,
        "fold_mae": [0.41, 0.42, 0.40, 0.41, 0.42],
        "rmse": 0.77,
        "r2": 0.71,
        "command": "matmtl evaluate --variants rf_magpie",
        "hardware": "TestCPU x2",
        "seconds": 99,
    }
    expt = {
        "protocol": "matbench_v0.1",
        "task": "matbench_expt_gap",
        "unit": "eV",
        "folds": [0, 1, 2, 3, 4],
        "variants": {
            "rf_magpie": v,
            "finetune": {
                "status": "not run",
                "mae_mean": None,
                "mae_std": None,
                "fold_mae": [None] * 5,
                "rmse": None,
                "r2": None,
            },
        },
        "forgetting": {"finetune": {"before": 0.09, "after": None}},
        "data_efficiency": {"fractions": [0.5, 1.0], "variants": {}},
        "relatedness": {"note": "no neural variant has run yet", "variants": {}},
        "command": "matmtl evaluate --variants rf_magpie",
        "hardware": "TestCPU x2",
        "seconds": 120,
        "quick": False,
    }
    mp = {
        "protocol": "matbench_v0.1",
        "task": "matbench_mp_e_form",
        "unit": "eV/atom",
        "folds": [0],
        "variants": {
            "pretrain": {
                **v,
                "mae_mean": 0.0612,
                "mae_std": 0.0,
                "fold_mae": [0.0612],
                "mae_composition_only_mean": 0.0701,
                "mae_composition_only_std": 0.0,
                "fold_mae_composition_only": [0.0701],
            }
        },
        "subset_note": "Folds evaluated: [0]",
        "command": "matmtl evaluate",
        "hardware": "TestCPU x2",
    }
    return expt, mp


def test_markdown_is_generated_from_the_results():
    expt, mp = _results()
    page = render_markdown(expt, mp, None, figure="../results/plot.png")
    assert "Generated by `matmtl evaluate`" in page
    assert "0.412 ± 0.011" in page and "0.410 / 0.420 / 0.400 / 0.410 / 0.420" in page
    for name, mae, _ in LEADERBOARD["matbench_expt_gap"] + LEADERBOARD["matbench_mp_e_form"]:
        assert name in page and f"{mae:.4f}" in page
    assert "matmtl evaluate --variants rf_magpie" in page and "TestCPU x2" in page
    assert "| not run |" in page
    assert "**Empty: no neural variant has run yet**" in page  # clearly labelled empty relatedness section
    assert "0.0612" in page and "0.0701" in page  # mp table + composition-only line
    # ours are ranked among the leaderboard rows by MAE
    assert page.index("leaderboard: CrabNet |") < page.index("`rf_magpie`") < page.index("RF-SCM/Magpie")
    expt["variants"]["rf_magpie"]["mae_mean"] = 0.3999
    assert "0.400 ± 0.011" in render_markdown(expt)  # nothing typed in: the page follows the JSON
    json.dumps(expt)  # the shapes stay JSON-able


def test_one_regression_metrics():
    import matmtl.metrics

    assert regression_metrics is matmtl.metrics.regression_metrics  # eval re-exports the one implementation


def test_cli_parses_options_and_rejects_bad_ones(capsys):
    assert eval_cli.parse_variants("rf_magpie,finetune") == ("rf_magpie", "finetune")
    assert eval_cli.parse_variants("all")[0] == "rf_magpie" and "rf_magpie" not in eval_cli.parse_variants("neural")
    assert eval_cli.parse_folds("3,0") == (0, 3) and eval_cli.parse_folds("all") == (0, 1, 2, 3, 4)
    assert eval_cli.parse_fractions("0.1,1") == (0.1, 1.0) and eval_cli.parse_fractions("none") == ()
    assert eval_cli.parse_mp_folds("all") == (0, 1, 2, 3, 4) and eval_cli.parse_mp_folds("auto") is None
    assert eval_cli.parse_mp_folds("none") == ()
    # K=V overrides: JSON literals, checked by the config dataclass itself
    assert eval_cli.parse_overrides("epochs=3,lr=1e-3,device=cpu", "train") == {
        "epochs": 3,
        "lr": 1e-3,
        "device": "cpu",
    }
    assert eval_cli.parse_overrides("dim=64", "model") == {"dim": 64}
    for bad in ("epochs=0", "nope=1", "lr=fast", "epochs"):
        with pytest.raises(eval_cli.typer.BadParameter):
            eval_cli.parse_overrides(bad, "train")
    for parse, bad in (
        (eval_cli.parse_folds, "5"),
        (eval_cli.parse_folds, "0,0"),
        (eval_cli.parse_fractions, "0,1"),
        (eval_cli.parse_variants, "bogus"),
        (eval_cli.parse_efficiency_variants, "rf"),
    ):
        with pytest.raises(eval_cli.typer.BadParameter):
            parse(bad)
    capsys.readouterr()
    assert cli_main(["--help"]) == 0
    assert "--force" in capsys.readouterr().out
    for argv, flag in (
        (["--variants", "bogus"], "--variants"),
        (["--folds", "7"], "--folds"),
        (["--monitor-k", "1"], "--monitor-k"),
        (["--anchor", "best"], "--anchor"),
        (["--train-config", "epochs=-1"], "--train-config"),
        (["--folds", "0", "--efficiency-folds", "1"], "--efficiency-folds"),
    ):
        assert cli_main(argv) == 2, argv  # bad arguments: a message naming the flag, not a traceback
        assert flag in capsys.readouterr().err, argv


def test_library_errors_name_parameters():
    from matmtl.errors import ConfigError
    from matmtl.eval import EvalSettings

    for kw, name in (
        ({"folds": (7,)}, "EvalSettings.folds"),
        ({"fractions": (0,)}, "EvalSettings.fractions"),
        ({"anchor": "best"}, "EvalSettings.anchor"),
        ({"monitor_k": 1}, "EvalSettings.monitor_k"),
        ({"train_overrides": {"epochs": 0}}, "EvalSettings.train_overrides: TrainConfig.epochs"),
        ({"model_overrides": {"width": 3}}, "EvalSettings.model_overrides"),
        ({"pretrain_tasks": ("gap_pbe",)}, "EvalSettings.pretrain_tasks"),
    ):
        with pytest.raises(ConfigError) as info:
            EvalSettings(**kw)
        assert name in str(info.value) and "--" not in str(info.value), kw


def test_quick_uses_the_tiny_presets():
    from matmtl.config import TrainConfig
    from matmtl.eval import EvalSettings
    from matmtl.models import ModelConfig

    s = EvalSettings(quick=True, train_overrides={"lr": 3e-4})
    assert s.finetune_train("cpu") == TrainConfig.preset("finetune-tiny", lr=3e-4)
    c = s.pretrain_config("cpu", 0)
    assert c.model == ModelConfig.preset("tiny") and c.train == TrainConfig.preset("tiny")
    full = EvalSettings()
    assert full.finetune_train("cpu") == TrainConfig.preset("finetune")
    assert full.pretrain_config("cuda", 0).model == ModelConfig.preset("large")
    assert full.pretrain_config("cpu", 0).train == TrainConfig.preset("default")


def test_evaluate_cmd_registers_in_a_typer_app():
    """`app.command("evaluate")(evaluate_cmd)`, as matmtl.cli registers it."""
    import typer
    from typer.testing import CliRunner

    app = typer.Typer(rich_markup_mode="rich", pretty_exceptions_enable=False)
    app.command("evaluate")(eval_cli.evaluate_cmd)
    app.command("other")(lambda: None)
    res = CliRunner().invoke(app, ["evaluate", "--help"], prog_name="matmtl")
    assert res.exit_code == 0 and "matmtl evaluate" in res.output and "--force" in res.output
    res = CliRunner().invoke(app, ["evaluate", "--anchor", "best"], prog_name="matmtl")
    assert res.exit_code == 2 and "--anchor" in res.output


def test_protocol_settings_reach_the_finetune_configs_and_fingerprints(tmp_path):
    from pathlib import Path

    from matmtl.config import TrainConfig
    from matmtl.eval import EvalSettings
    from matmtl.eval.finetune_cells import FinetuneCells
    from matmtl.eval.settings import VARIANTS

    d = EvalSettings()
    preset = TrainConfig.preset("finetune")
    assert (d.val_fraction, d.patience) == (preset.val_fraction, preset.patience)  # the preset's defaults
    assert d.anchor == "validation" and d.symmetry == "mp_ground_state"
    assert d.submission_variant == "finetune_anchor_replay"
    s = EvalSettings(val_fraction=0.2, patience=5, symmetry="none")
    assert (s.finetune_train("cpu").val_fraction, s.finetune_train("cpu").patience) == (0.2, 5)

    class Pre:  # only the checkpoint identity is read by the fingerprint and the config
        identity = {"data_sha256": "x"}

    def cells(settings):
        return FinetuneCells(settings, "cpu", tmp_path, None, Pre())

    c = cells(s).config(VARIANTS["finetune_anchor_replay"], Path("ckpt"), 0, None)
    assert c.symmetry == "none" and c.train.val_fraction == 0.2 and c.train.patience == 5
    spec = VARIANTS["finetune"]
    fps = {cells(EvalSettings(**kw)).fp(spec) for kw in ({}, {"symmetry": "none"}, {"patience": 3})}
    fps |= {cells(EvalSettings(val_fraction=0.2)).fp(spec)}
    assert len(fps) == 4  # each protocol setting makes other cells
    assert cells(EvalSettings()).fp(spec) == cells(EvalSettings()).fp(spec)
    # a setting that cannot change the numbers (the distributed timeout) keeps the cells
    assert cells(EvalSettings(train_overrides={"dist_timeout": 5.0})).fp(spec) == cells(EvalSettings()).fp(spec)


def test_protocol_settings_are_checked():
    from matmtl.errors import ConfigError
    from matmtl.eval import EvalSettings

    for kw, name in (
        ({"symmetry": "spglib"}, "EvalSettings.symmetry"),
        ({"val_fraction": 1.5}, "EvalSettings.val_fraction"),
        ({"patience": -1}, "EvalSettings.patience"),
        ({"val_fraction": 0.0}, "EvalSettings.anchor"),  # choosing on validation rows needs some
        ({"train_overrides": {"val_fraction": 0.2}}, "EvalSettings.train_overrides"),
        ({"submission_variant": "best"}, "EvalSettings.submission_variant"),
        ({"anchor": "inner"}, "EvalSettings.anchor"),  # the inner 80/20 runs are gone
    ):
        with pytest.raises(ConfigError) as info:
            EvalSettings(**kw)
        assert name in str(info.value), kw
    assert EvalSettings(val_fraction=0.0, anchor="replay").val_fraction == 0.0  # a fixed source needs none


def test_anchor_source_from_the_validation_maes():
    from matmtl.errors import MatmtlError
    from matmtl.eval.finetune_cells import choose_anchor

    def rec(mae):
        return {"validation": {"rows": 368, "mae": mae}}

    assert choose_anchor(rec(0.30), rec(0.31)) == {
        "replay": 0.30,
        "distill": 0.31,
        "validation_rows": 368,
        "chosen": "replay",
        "rule": "validation",
    }
    assert choose_anchor(rec(0.32), rec(0.31))["chosen"] == "distill"
    assert choose_anchor(rec(0.31), rec(0.31))["chosen"] == "replay"  # a tie keeps replay
    with pytest.raises(MatmtlError, match="no validation MAE"):
        choose_anchor({"validation": None}, rec(0.3))


def test_cli_protocol_options(capsys):
    for argv, flag in (
        (["--anchor", "inner"], "--anchor"),
        (["--symmetry", "spglib"], "--symmetry"),
        (["--val-fraction", "2"], "--val-fraction"),
        (["--patience", "-1"], "--patience"),
        (["--submission-variant", "best"], "--submission-variant"),
    ):
        assert cli_main(argv) == 2, argv
        assert flag in capsys.readouterr().err, argv
