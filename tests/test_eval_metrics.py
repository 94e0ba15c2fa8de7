"""Evaluation harness, pure parts: fold aggregation vs numpy, the cell cache, the
relatedness summary, the markdown generator and the command line (no training)."""
import json

import numpy as np
import pytest
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from matmtl.eval.cells import CellKey, CellStore, fingerprint
from matmtl.eval.cli import build_parser, cli_main
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
    geo = [{"step": s, "tasks": ["gap_expt", "e_form"], "mean_cosine": [[1, c], [c, 1]],
            "angles": [[[0, 0], [a, 90 * np.pi / 180]], [[a, 1.2], [0, 0]]]}
           for s, c, a in ((0, 0.5, 0.1), (10, -0.1, 0.3), (20, 0.2, 0.2))]
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
    v = {"status": "done", "mae_mean": 0.4123, "mae_std": 0.0111, "fold_mae": [0.41, 0.42, 0.40, 0.41, 0.42],
         "rmse": 0.77, "r2": 0.71, "command": "matmtl evaluate --variants rf_magpie", "hardware": "TestCPU x2", "seconds": 99}
    expt = {"protocol": "matbench_v0.1", "task": "matbench_expt_gap", "unit": "eV", "folds": [0, 1, 2, 3, 4],
            "variants": {"rf_magpie": v, "finetune": {"status": "not run", "mae_mean": None, "mae_std": None,
                                                      "fold_mae": [None] * 5, "rmse": None, "r2": None}},
            "forgetting": {"finetune": {"before": 0.09, "after": None}}, "data_efficiency": {"fractions": [0.5, 1.0], "variants": {}},
            "relatedness": {"note": "no neural variant has run yet", "variants": {}},
            "command": "matmtl evaluate --variants rf_magpie", "hardware": "TestCPU x2", "seconds": 120, "quick": False}
    mp = {"protocol": "matbench_v0.1", "task": "matbench_mp_e_form", "unit": "eV/atom", "folds": [0],
          "variants": {"pretrain": {**v, "mae_mean": 0.0612, "mae_std": 0.0, "fold_mae": [0.0612],
                                    "mae_composition_only_mean": 0.0701, "mae_composition_only_std": 0.0,
                                    "fold_mae_composition_only": [0.0701]}},
          "subset_note": "Folds evaluated: [0]", "command": "matmtl evaluate", "hardware": "TestCPU x2"}
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


def test_cli_parses_options_and_rejects_bad_ones(capsys):
    a = build_parser().parse_args(["--variants", "rf_magpie,finetune", "--folds", "0,3", "--fractions", "0.1,1",
                                   "--train-config", "epochs=3,lr=1e-3", "--mp-folds", "all", "--quick"])
    assert a.variants == ("rf_magpie", "finetune") and a.folds == (0, 3) and a.fractions == (0.1, 1.0)
    assert a.train_config == {"epochs": "3", "lr": "1e-3"} and a.mp_folds == (0, 1, 2, 3, 4) and a.quick
    assert build_parser().parse_args(["--variants", "all"]).variants[0] == "rf_magpie"
    assert build_parser().parse_args(["--fractions", "none"]).fractions == ()
    assert cli_main(["--variants", "bogus"]) == 2
    assert cli_main(["--help"]) == 0
    assert cli_main(["--folds", "7", "--out", "unused"]) == 1  # a clean error, not a traceback
    assert "--folds" in capsys.readouterr().err
