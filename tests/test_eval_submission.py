"""The per-fold test predictions and the matbench results file (results.json.gz), from
cell records through the pure functions, checked key by key against the official matbench
v0.1 dummy entry in the mirror (no training)."""

import copy
import gzip
import json

import numpy as np
import pytest

from matmtl.data import load_dataset
from matmtl.eval import protocol
from matmtl.eval.output import PREDICTIONS, SPLIT_ABOVE, prediction_files, read_predictions, write_predictions
from matmtl.eval.submission import (
    check_submission,
    fold_parameters,
    hash_dictionary,
    matbench_scores,
    predictions_file,
    split_predictions,
    submission,
)

TASK = "matbench_expt_gap"


@pytest.fixture(scope="module")
def official(mirror):
    path = protocol.official_results_file()
    assert path is not None, "the mirror has matbench_v0.1_dummy/results.json.gz"
    with gzip.open(path, "rt") as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def folds(mirror):
    """Per fold: the matbench test ids and targets, as the runner builds them."""
    ds = load_dataset("expt_gap")
    ids, y = ds.frame["id"].to_numpy(), ds.target("gap_expt")
    return {k: {"ids": ids[te].tolist(), "target": y[te].tolist()} for k in range(5) for te in [ds.folds()[k][1]]}


def _records(folds, which=range(5), seed=0):
    rng = np.random.default_rng(seed)
    recs = {}
    for k in which:
        y = np.asarray(folds[k]["target"])
        recs[k] = {
            "pred": np.clip(y + rng.normal(0, 0.3, len(y)), 0, None).tolist(),
            "n_train": 3683,
            "validation_rows": 368,
            "validation": {"rows": 368, "mae": 0.3 + 0.01 * k, "metal_cut": 0.45},
            "best_epoch": 30 + k,
            "epochs": 60,
            "stopped_early": False,
            "symmetry": "none",
        }
    return recs


def _submission(folds, recs, variant="finetune_anchor_replay"):
    params = {k: fold_parameters(r, variant, "replay") for k, r in recs.items()}
    meta = {"algorithm": f"matmtl {variant}", "folds_recorded": sorted(recs), "is_complete": len(recs) == 5}
    return submission(
        recs, folds, variant=variant, parameters=params, user_metadata=meta, datestamp="2026.01.02 03:04.05"
    )


FREE = ("parameters", "user_metadata")  # free-form dicts in matbench (the user's own keys)


def assert_same_structure(ours, theirs, path="", subset=("tasks", "results")):
    """``ours`` has the nested keys and value types of ``theirs``; under ``subset`` keys
    (tasks, folds) ours may hold fewer (the folds that were run); free-form dicts are only
    checked to be dicts."""
    assert type(ours) is type(theirs), f"{path}: {type(ours).__name__} vs {type(theirs).__name__}"
    if not isinstance(theirs, dict):
        return
    last = path.rsplit(".", 1)[-1]
    if last in FREE:
        return
    if last in subset:
        assert ours and set(ours) <= set(theirs), f"{path}: {sorted(set(ours) - set(theirs))} not in the official file"
    elif last == "data":  # {test id: prediction}: the same ids, float values
        assert set(ours) == set(theirs), f"{path}: test ids differ"
        assert all(isinstance(v, float) for v in ours.values()), path
        return
    else:
        assert list(ours) == list(theirs), f"{path}: keys {list(ours)} vs {list(theirs)}"
    for k in ours:
        assert_same_structure(ours[k], theirs[k], f"{path}.{k}", subset)


def test_matbench_hash_and_scores_reproduce_the_official_file(official, folds):
    d = copy.deepcopy(official)
    assert hash_dictionary({k: v for k, v in d.items() if k != "hash"}) == d["hash"]
    assert check_submission(d, official) == []
    for k in range(5):  # matbench's scores of the dummy's (constant) predictions
        fold = official["tasks"][TASK]["results"][f"fold_{k}"]
        y = dict(zip(folds[k]["ids"], folds[k]["target"], strict=True))
        ids = list(fold["data"])
        got = matbench_scores([y[i] for i in ids], [fold["data"][i] for i in ids])
        assert got == pytest.approx(fold["scores"], rel=1e-9), k


def test_results_file_has_the_structure_of_the_official_dummy(official, folds):
    recs = _records(folds)
    d = _submission(folds, recs)
    assert_same_structure(d, official)
    res = d["tasks"][TASK]["results"]
    assert list(res) == [f"fold_{k}" for k in range(5)]  # all five: the same fold names
    for k in range(5):
        off = official["tasks"][TASK]["results"][f"fold_{k}"]
        assert set(res[f"fold_{k}"]["data"]) == set(off["data"])  # the official test ids, no more, no less
        assert list(res[f"fold_{k}"]["scores"]) == list(off["scores"])
        assert res[f"fold_{k}"]["scores"]["mae"] == pytest.approx(
            np.mean(np.abs(np.asarray(recs[k]["pred"]) - folds[k]["target"]))
        )
        assert res[f"fold_{k}"]["parameters"]["best_epoch"] == 30 + k
    assert d["benchmark_name"] == official["benchmark_name"] == "matbench_v0.1"
    assert d["version"] == official["version"] and d["datestamp"] == "2026.01.02 03:04.05"
    assert check_submission(d, official) == []
    # it survives the round trip through gzip + json, as written
    again = json.loads(gzip.decompress(gzip.compress(json.dumps(d).encode())))
    assert again == json.loads(json.dumps(d)) and check_submission(again, official) == []
    # tampering is caught: a changed prediction breaks the hash, a missing id the fold check
    bad = json.loads(json.dumps(d))
    first = next(iter(bad["tasks"][TASK]["results"]["fold_0"]["data"]))
    bad["tasks"][TASK]["results"]["fold_0"]["data"][first] += 1.0
    assert check_submission(bad, official) == ["hash does not match the content"]
    del bad["tasks"][TASK]["results"]["fold_1"]["data"][next(iter(bad["tasks"][TASK]["results"]["fold_1"]["data"]))]
    assert any("test ids differ" in p for p in check_submission(bad, official))


def test_a_partial_run_records_only_its_folds(official, folds):
    d = _submission(folds, _records(folds, which=(0, 3)))
    assert_same_structure(d, official)
    assert list(d["tasks"][TASK]["results"]) == ["fold_0", "fold_3"]
    assert d["user_metadata"]["is_complete"] is False and check_submission(d, official) == []
    with pytest.raises(ValueError, match="fold 0"):
        recs = _records(folds, which=(0,))
        recs[0]["pred"] = recs[0]["pred"][:-1]
        _submission(folds, recs)


def test_predictions_file_rescored_and_small(folds, tmp_path):
    expt = {v: _records(folds, seed=i) for i, v in enumerate(("rf_magpie", "scratch", "finetune_anchor_replay"))}
    obj = predictions_file(expt, folds, selection={0: {"chosen": "replay"}}, quick=False, command="c", prev=None)
    assert list(obj["folds"]) == ["0", "1", "2", "3", "4"] and obj["anchor_source_per_fold"] == {"0": "replay"}
    for k in range(5):
        f = obj["folds"][str(k)]
        assert f["ids"] == folds[k]["ids"] and f["target"] == pytest.approx(folds[k]["target"], abs=5e-5)
        for v, recs in expt.items():
            p = obj["variants"][v][str(k)]
            assert p == [round(x, 4) for x in recs[k]["pred"]]
            # anyone can re-score them: the MAE agrees with the unrounded one to the rounding
            mae = np.mean(np.abs(np.asarray(p) - f["target"]))
            assert mae == pytest.approx(np.mean(np.abs(np.asarray(recs[k]["pred"]) - folds[k]["target"])), abs=1e-4)
    files = prediction_files(obj)
    assert list(files) == [PREDICTIONS]
    write_predictions(tmp_path, files)
    assert (tmp_path / PREDICTIONS).stat().st_size < SPLIT_ABOVE  # 3 variants x 5 folds
    # a later invocation with another variant keeps these (as expt_gap.json keeps its variants)
    more = predictions_file(
        {"finetune": _records(folds, which=(0,))}, folds, selection={}, quick=False, command="d",
        prev=read_predictions(tmp_path),
    )  # fmt: skip
    assert set(more["variants"]) == {"rf_magpie", "scratch", "finetune_anchor_replay", "finetune"}
    assert list(more["variants"]["finetune"]) == ["0"] and len(more["folds"]) == 5
    assert predictions_file({}, folds, selection={}, quick=True, command="q", prev=more)["variants"] == {}  # quick
    # too large for one file: one per variant, each with its folds
    parts = split_predictions(more)
    assert set(parts) == set(more["variants"]) and list(parts["finetune"]["folds"]) == ["0"]
    big = {**more, "variants": {f"v{i}": more["variants"]["scratch"] for i in range(30)}}
    files = prediction_files(big)
    assert len(files) == 30 and PREDICTIONS not in files
    write_predictions(tmp_path, files)
    assert not (tmp_path / PREDICTIONS).exists()  # the stale single file is gone
    assert all((tmp_path / n).stat().st_size < 1 << 20 for n in files)
    assert set(read_predictions(tmp_path)["variants"]) == set(big["variants"])


def test_a_rerun_of_another_variant_keeps_the_anchor_choice_of_the_kept_anchored_runs(folds):
    """Re-running only plain fine-tuning keeps the replay and distill predictions from the
    earlier file, and with them the fold's anchor choice; a re-run of one anchored variant
    records its own choices only."""
    anchored = {
        v: _records(folds, which=(0, 1), seed=i)
        for i, v in enumerate(("finetune_anchor_replay", "finetune_anchor_distill"))
    }
    first = predictions_file(
        anchored, folds, selection={0: {"chosen": "distill"}, 1: {"chosen": "replay"}}, quick=False, command="c"
    )
    assert first["anchor_source_per_fold"] == {"0": "distill", "1": "replay"}
    plain = predictions_file(
        {"finetune": _records(folds, which=(0,))}, folds, selection={}, quick=False, command="d", prev=first
    )
    assert plain["anchor_source_per_fold"] == {"0": "distill", "1": "replay"}
    again = predictions_file(
        {"finetune_anchor_replay": anchored["finetune_anchor_replay"]}, folds, selection={0: {"chosen": "replay"}},
        quick=False, command="e", prev=first,
    )  # fmt: skip
    assert again["anchor_source_per_fold"] == {"0": "replay"}  # the replay runs are new: the old choices no longer hold
