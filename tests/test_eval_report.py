"""The results are pure functions of the cell records: given records in, the results
dicts out (no training, no files)."""

import copy
import json

import numpy as np
import pytest

from matmtl.eval import EvalSettings
from matmtl.eval.report import Records, expt_results, mp_results, render_markdown, variant_entry
from matmtl.train.data import task_unit


def _cell(
    mae, fold, *, forgetting=None, relatedness=None, n_train=100, hardware="CPU x2", command="cmd-a", val=None, sf=None
):
    rec = {
        "metrics": {"mae": mae, "rmse": mae * 2, "r2": 0.5, "n": 50},
        "validation": {"rows": 10, "mae": val if val is not None else mae - 0.01, "metal_cut": 0.45},
        "best_epoch": 40 + fold,
        "epochs": 60,
        "stopped_early": fold == 1,
        "n_train": n_train,
        "n_test": 50,
        "seconds": 10.0,
        "hardware": hardware,
        "command": command,
        "status": "done",
        "key": {"fold": fold},
        "monitor_records": 3 if relatedness else 0,
        "relatedness": relatedness or {},
    }
    if sf is not None:
        rec["structure_vs_formula"] = {
            "rows": 700 + fold,
            "unit": "eV",
            "mae_formula": sf[0],
            "mae_mp_ground_state_structure": sf[1],
            "mae_formula_nonmetals": sf[0] * 2,
            "mae_mp_ground_state_structure_nonmetals": sf[1] * 2,
        }
    if forgetting is not None:
        rec["forgetting"] = {"before": 0.08, "after": forgetting, "how": "own e_form head", "rows": 200}
    return rec


def _pair(cos):
    return {
        "gap_expt|e_form": {
            "records": 3,
            "cosine_mean": cos,
            "cosine_min": cos - 0.1,
            "cosine_first_third": cos,
            "cosine_last_third": cos,
            "conflict_share": 0.0,
        }
    }


PROV = {
    "command": "matmtl evaluate --quick",
    "hardware": "CPU x2",
    "device": "cpu",
    "seconds": 1.0,
    "compute_seconds": 2.0,
    "generated": "now",
    "quick": False,
    "load_average_at_end": None,
    "work_dir": "/w",
}


def _records():
    rec = Records()
    rec.expt["rf_magpie"] = {0: _cell(0.40, 0), 1: _cell(0.50, 1, hardware="CPU y4")}
    rec.expt["finetune"] = {0: _cell(0.30, 0, forgetting=0.20)}  # fold 1 not finished
    rec.expt["finetune_anchor_replay"] = {
        0: _cell(0.28, 0, forgetting=0.09, relatedness=_pair(0.2), val=0.30, sf=(0.30, 0.32)),
        1: _cell(0.32, 1, forgetting=0.11, relatedness=_pair(0.4), val=0.30, sf=(0.34, 0.30)),
    }
    rec.expt["finetune_anchor_pcgrad"] = {0: _cell(0.29, 0, forgetting=0.10), 1: _cell(0.31, 1, forgetting=0.12)}
    rec.selection.update(
        {
            0: {"chosen": "replay", "replay": 0.3, "distill": 0.31, "rule": "validation"},
            1: {"chosen": "replay", "replay": 0.3, "distill": 0.4, "rule": "validation"},
        }
    )
    rec.eff["finetune"] = {
        0.5: {0: _cell(0.35, 0, n_train=50), 1: _cell(0.45, 1, n_train=52)},
        1.0: {0: _cell(0.30, 0)},
    }
    rec.before = {"before": 0.08, "rows": 200, "mp_fold": 0}
    return rec


def _expt(rec, s, prev=None):
    return expt_results(
        rec,
        s,
        prev=prev or {},
        provenance=PROV,
        folds_check={"checked": True, "match": True},
        pretraining={"checkpoint": "ckpt"},
        configs={"finetune_train": {"epochs": 60}},
    )


def test_expt_results_from_cell_records():
    s = EvalSettings(folds=(0, 1), fractions=(0.5, 1.0), command="matmtl evaluate --quick")
    rec = _records()
    frozen = copy.deepcopy(rec)
    res = _expt(rec, s)
    assert res == _expt(rec, s) and rec == frozen  # pure: same answer, inputs untouched
    json.dumps(res)
    assert res["unit"] == task_unit("gap_expt") and res["task"] == "matbench_expt_gap"
    rf = res["variants"]["rf_magpie"]
    assert rf["status"] == "done" and rf["fold_mae"] == [0.40, 0.50]
    assert rf["mae_mean"] == pytest.approx(0.45) and rf["mae_std"] == pytest.approx(0.05)  # population std
    assert rf["hardware"] == "CPU x2; CPU y4" and rf["settings"]["n_estimators"] == s.rf_trees
    ft = res["variants"]["finetune"]
    assert ft["status"] == "partial" and ft["fold_mae"] == [0.30, None] and ft["mae_mean"] == pytest.approx(0.30)
    assert res["variants"]["scratch"]["status"] == "not run" and res["variants"]["scratch"]["mae_mean"] is None
    assert res["variants"]["finetune_anchor_pcgrad"]["anchor_source_per_fold"] == {"0": "replay", "1": "replay"}
    # forgetting: per variant, and the selected anchor of each fold
    fg = res["forgetting"]
    assert fg["unit"] == task_unit("e_form") and fg["finetune"]["before"] == 0.08
    assert fg["finetune"]["fold_after"] == [0.20, None]
    assert (
        fg["finetune_anchor"]["after"] == pytest.approx(0.10)
        and fg["finetune_anchor"]["anchor"] == "per-fold selection"
    )
    # data efficiency: fraction keys, completeness
    de = res["data_efficiency"]["variants"]["finetune"]
    assert de["0.5"]["mae_mean"] == pytest.approx(0.40) and de["0.5"]["complete"] and de["0.5"]["n_train_mean"] == 51
    assert de["1"]["complete"] is False
    # relatedness averaged over folds; single-task variants have no pairs
    rel = res["relatedness"]["variants"]
    assert rel["finetune"]["pairs"] == {} and "rf_magpie" not in rel
    assert rel["finetune_anchor_replay"]["pairs"]["gap_expt|e_form"]["cosine_mean"] == pytest.approx(0.3)
    assert res["anchor_selection"]["folds"]["1"]["chosen"] == "replay"
    assert "validation MAE" in res["anchor_selection"]["rule"] and "inner" not in res["anchor_selection"]["rule"]
    # the validation rows next to the test scores: MAE, kept epoch, early stops, metal cut
    rp = res["variants"]["finetune_anchor_replay"]
    assert rp["validation_mae_mean"] == pytest.approx(0.30) and rp["fold_validation_mae"] == [0.30, 0.30]
    assert rp["best_epoch_mean"] == pytest.approx(40.5) and rp["fold_best_epoch"] == [40, 41]
    assert rp["stopped_early_folds"] == [1] and rp["fold_metal_cut"] == [0.45, 0.45]
    assert ft["fold_validation_mae"] == [pytest.approx(0.29), None] and "validation_mae_mean" not in rf
    # structure vs formula: the mean over the folds that measured it
    sf = res["structure_vs_formula"]["variants"]
    assert set(sf) == {"finetune_anchor_replay"} and sf["finetune_anchor_replay"]["rows"] == [700, 701]
    assert sf["finetune_anchor_replay"]["mae_formula_mean"] == pytest.approx(0.32)
    assert sf["finetune_anchor_replay"]["mae_mp_ground_state_structure_mean"] == pytest.approx(0.31)
    assert sf["finetune_anchor_replay"]["mae_formula_nonmetals_mean"] == pytest.approx(0.64)
    assert sf["finetune_anchor_replay"]["structure_minus_formula"] == pytest.approx(-0.01)
    page = render_markdown(res)
    assert "validation MAE (mean)" in page and "| 0.300 | 40.5 |" in page
    assert "Structure vs formula" in page and "| `finetune_anchor_replay` | 700 / 701 | 0.320 | 0.310 |" in page
    assert "| 0 | 0.300 | 0.310 | replay |" in page  # the anchor choice with both validation MAEs
    assert res["settings"]["eval"]["folds"] == (0, 1) and "command" not in res["settings"]["eval"]
    assert res["settings"]["finetune_train"] == {"epochs": 60} and res["command"] == PROV["command"]


def test_variants_not_run_keep_their_earlier_entry():
    s = EvalSettings(folds=(0, 1), fractions=())
    rec = Records(expt={"rf_magpie": {0: _cell(0.4, 0), 1: _cell(0.5, 1)}})
    earlier = {
        "protocol": "matbench_v0.1",
        "quick": False,
        "variants": {"scratch": {"status": "done", "mae_mean": 0.33, "command": "old"}},
        "data_efficiency": {"variants": {"scratch": {"1": {"mae_mean": 0.33}}}},
    }
    res = _expt(rec, s, prev=earlier)
    assert res["variants"]["scratch"] == {
        "status": "done",
        "mae_mean": 0.33,
        "command": "old",
        "from_earlier_invocation": True,
    }
    assert res["data_efficiency"] == earlier["data_efficiency"]  # nothing new on the curve: the earlier one stays
    assert res["forgetting"]["finetune"] == {"before": None, "after": None}
    assert "no neural variant has run yet" in res["relatedness"]["note"]
    quick_earlier = {**earlier, "quick": True}  # quick numbers never mix with real ones
    assert _expt(rec, s, prev=quick_earlier)["variants"]["scratch"]["status"] == "not run"


def test_variant_entry_of_one_variant():
    s = EvalSettings(folds=(0, 1, 2), command="c")
    e = variant_entry("scratch", {2: _cell(0.6, 2)}, s, {}, "fallback hw")
    assert e["folds_done"] == [2] and e["fold_mae"] == [None, None, 0.6] and e["status"] == "partial"
    assert e["description"].startswith("same architecture") and e["command"] == "c"
    assert variant_entry("scratch", {}, s, {}, "fallback hw")["hardware"] == "fallback hw"


def test_mp_results_from_cell_records():
    s = EvalSettings(quick=True, pretrain_tasks=("e_form",), command="c")
    ef = {"mae": 0.1, "rmse": 0.2, "r2": 0.9, "mae_composition_only": 0.12, "test_rows": 300}
    mp = {
        0: {
            "e_form": ef,
            "gap_pbe": {"status": "not available", "reason": "no gap_pbe head"},
            "seconds": 5,
            "hardware": "h",
        }
    }
    res = mp_results(mp, s, PROV)
    assert set(res) == {"mp_e_form", "mp_gap"} and mp_results({}, s, PROV) == {}
    e = res["mp_e_form"]
    assert e["unit"] == task_unit("e_form") and e["task"] == "matbench_mp_e_form" and e["folds"] == [0]
    v = e["variants"]["pretrain"]
    assert v["status"] == "subset of folds" and v["mae_mean"] == 0.1 and v["mae_composition_only_mean"] == 0.12
    assert "capped (quick)" in e["subset_note"]
    g = res["mp_gap"]
    assert g["unit"] == task_unit("gap_pbe") and g["variants"]["pretrain"]["status"] == "not available"
    assert g["variants"]["pretrain"]["reason"] == "no gap_pbe head"
    page = render_markdown(_expt(_records(), EvalSettings(folds=(0, 1), fractions=(0.5, 1.0))), e, g)
    assert "matbench_mp_e_form" in page and f"e_form MAE before ({task_unit('e_form')})" in page
    assert np.isfinite(v["mae_mean"])


def test_every_folds_anchor_choice_is_recorded_even_when_no_later_cell_uses_it():
    """``--anchor validation`` without PCGrad or a data-efficiency curve: each fold with a
    replay and a distill run (both with a validation MAE) gets its choice, the lower
    validation MAE, replay on a tie; a choice already made stays."""
    from matmtl.eval.finetune_cells import record_anchor_choices

    def run(mae):
        return {"validation": None if mae is None else {"mae": mae, "rows": 10}}

    expt = {
        "finetune_anchor_replay": {0: run(0.30), 1: run(0.20), 2: run(0.25), 3: run(0.2), 4: run(0.1)},
        "finetune_anchor_distill": {0: run(0.25), 1: run(0.30), 2: run(0.25), 3: run(None)},
    }
    selection = {1: {"chosen": "distill", "rule": "validation"}}
    record_anchor_choices(selection, expt)
    assert {k: v["chosen"] for k, v in selection.items()} == {0: "distill", 1: "distill", 2: "replay"}
    assert selection[0]["replay"] == 0.30 and selection[0]["distill"] == 0.25
    record_anchor_choices(empty := {}, {"finetune_anchor_replay": expt["finetune_anchor_replay"]})
    assert empty == {}
