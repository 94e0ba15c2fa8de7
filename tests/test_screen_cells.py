"""scripts/screen_cells.py: recipes as evaluation cells at a training share, their paired
differences against a reference, the choice on validation rows, cached cells reused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _scripts import load_script


def _rec(test: float, val: float) -> dict:
    return {"metrics": {"mae": test}, "validation": {"mae": val}, "best_epoch": 3, "train_seconds": 1.0}


def test_paired_differences_and_the_choice_by_hand():
    script = load_script("screen_cells")
    seeds, folds = [0, 1], [0, 1, 2]
    ref_t = {0: [0.30, 0.32, 0.28], 1: [0.31, 0.33, 0.29]}
    ref_v = {0: [0.25, 0.26, 0.27], 1: [0.25, 0.26, 0.27]}

    # b: test lower on every fold; validation lower by 0.01, 0.02, 0.03 (mean 0.02, SE 0.00577)
    def recipe(dt, dv):  # offsets from the reference per fold index
        return {s: {k: _rec(ref_t[s][i] + dt(i), ref_v[s][i] + dv(i)) for i, k in enumerate(folds)} for s in seeds}

    cells = {
        "ref": recipe(lambda i: 0, lambda i: 0),
        "b": recipe(lambda i: -0.01, lambda i: -0.01 * (i + 1)),
        "c": recipe(lambda i: 0, lambda i: 0.01 if i else -0.01),
    }
    out = script.summarize(cells, "ref", seeds, folds)
    r = out["recipes"]
    assert r["ref"]["test"]["mae_mean"] == pytest.approx(np.mean([0.30, 0.32, 0.28, 0.31, 0.33, 0.29]))
    assert r["ref"]["test"]["seed_sd"] == pytest.approx(np.std([0.30, 0.31], ddof=1))
    assert r["b"]["test"]["minus_reference"]["mean"] == pytest.approx(-0.01)
    assert r["b"]["test"]["minus_reference"]["se"] == pytest.approx(0.0, abs=1e-12)
    d = r["b"]["validation"]["minus_reference"]
    assert d["mean"] == pytest.approx(-0.02) and d["se"] == pytest.approx(0.01 / np.sqrt(3))
    assert d["verdict"] == "lower by 3.5 SE"
    assert r["c"]["validation"]["minus_reference"]["verdict"] == "tie"  # +0.0033 +- 0.0067
    assert "minus_reference" not in r["ref"]["test"]
    assert out["choice"]["chosen"] == "b"
    # a recipe that is not lower on validation rows is never chosen, whatever its test MAE
    del cells["b"]
    assert script.summarize(cells, "ref", seeds, folds)["choice"]["chosen"] == "ref"


def test_a_pick_takes_the_lower_validation_cell_and_is_never_chosen():
    script = load_script("screen_cells")
    seeds, folds = [0, 1], [0, 1]
    cells = {  # per seed: fold 0, fold 1 as (test, validation)
        "ref": {0: {0: _rec(0.30, 0.20), 1: _rec(0.30, 0.20)}, 1: {0: _rec(0.30, 0.20), 1: _rec(0.30, 0.20)}},
        "a": {0: {0: _rec(0.28, 0.10), 1: _rec(0.40, 0.30)}, 1: {0: _rec(0.29, 0.25), 1: _rec(0.35, 0.19)}},
        "b": {0: {0: _rec(0.50, 0.15), 1: _rec(0.25, 0.12)}, 1: {0: _rec(0.31, 0.24), 1: _rec(0.33, 0.19)}},
    }
    picked = script.add_picks(cells, [("ab", ["a", "b"])])
    assert picked == {"ab": {"a": 2, "b": 2}}  # a tie (seed 1, fold 1) goes to the first
    out = script.summarize(cells, "ref", seeds, folds, picked)
    ab = out["recipes"]["ab"]
    assert ab["test"]["per_seed_and_fold"] == [[0.28, 0.25], [0.31, 0.35]]
    assert ab["validation"]["per_seed_and_fold"] == [[0.10, 0.12], [0.24, 0.19]]
    assert ab["picked"] == {"a": 2, "b": 2} and ab["validation"]["minus_reference"]["verdict"].startswith("lower")
    # the pick has the lowest validation MAE (a minimum over a and b, so it flatters itself) and is
    # never the choice: b is, lower than the reference by more than 1 SE (-0.025 +- 0.020)
    assert ab["validation"]["mae_mean"] < out["recipes"]["b"]["validation"]["mae_mean"]
    assert out["choice"]["chosen"] == "b"
    assert script.parse_pick("x=a,b,c") == ("x", ["a", "b", "c"])


def test_against_another_checkpoint_pairs_the_same_recipe_seed_and_fold():
    """--against: each recipe minus the same recipe's cells in another screen (another
    checkpoint), per fold averaged over the seeds, by hand; the other screen may hold more
    seeds and folds; a recipe it lacks or holds with other settings is not paired."""
    script = load_script("screen_cells")
    seeds, folds = [0, 1], [0, 2]
    this = {  # seeds x folds
        "plain": {s: {k: _rec(0.40 + 0.01 * s + 0.001 * k, 0.30 + 0.002 * k) for k in folds} for s in seeds},
        "replay": {s: {k: _rec(0.39, 0.29) for k in folds} for s in seeds},
        "new": {s: {k: _rec(0.38, 0.28) for k in folds} for s in seeds},
    }
    res = script.summarize(this, "plain", seeds, folds)
    res["recipes_given"] = {n: {"variant": "finetune", "settings": {}} for n in this}
    other_cells = {
        "plain": {s: {k: _rec(0.41 + 0.003 * k, 0.30 - 0.01 * s) for k in (0, 1, 2)} for s in (0, 1, 2)},
        "replay": {s: {k: _rec(0.39, 0.29) for k in (0, 1, 2)} for s in (0, 1, 2)},
    }
    other = script.summarize(other_cells, "plain", [0, 1, 2], [0, 1, 2])
    other.update(seeds=[0, 1, 2], folds=[0, 1, 2], checkpoint="elsewhere")
    other["recipes_given"] = {"plain": {"variant": "finetune", "settings": {}}, "replay": {"variant": "x"}}
    v = script.vs_other(res, other, "other.json", seeds, folds)
    # plain, test, fold k: mean over seeds 0, 1 of (0.40 + 0.01 s + 0.001 k) - (0.41 + 0.003 k)
    per_fold = [0.405 + 0.001 * k - 0.41 - 0.003 * k for k in folds]
    t = v["recipes"]["plain"]["test"]
    assert t["mean"] == pytest.approx(np.mean(per_fold))
    assert t["se"] == pytest.approx(np.std(per_fold, ddof=1) / np.sqrt(2))
    assert t["other"] == pytest.approx(np.mean([0.41, 0.416])) and v["other_checkpoint"] == "elsewhere"
    val = v["recipes"]["plain"]["validation"]  # (0.30 + 0.002 k) - (0.30 - 0.01 s), over s = 0, 1
    assert val["mean"] == pytest.approx(np.mean([0.005 + 0.002 * k for k in folds]))
    assert set(v["not_paired"]) == {"replay", "new"} and "other settings" in v["not_paired"]["replay"]


def test_recipes_and_bad_arguments_are_named(tmp_path, capsys):
    script = load_script("screen_cells")
    assert script.parse_recipe("l2=finetune_anchor_replay:soft_share=0.01,gap_head=correction") == (
        "l2",
        "finetune_anchor_replay",
        {"soft_share": 0.01, "gap_head": "correction"},
    )
    ck = str(tmp_path)
    base = ["--checkpoint", ck, "--work-dir", str(tmp_path / "w")]
    bad, other = tmp_path / "bad.json", tmp_path / "other.json"  # --against: checked before any cell runs
    bad.write_text("[1, 2]")
    other.write_text(json.dumps({"recipes": {}, "fraction": 0.05, "folds": [0, 1, 2, 3, 4], "seeds": [0, 1]}))
    for args, flag in (
        (base + ["--recipe", "nothing"], "--recipe"),
        (base + ["--recipe", "a=finetune:soft_share"], "--recipe"),
        (base + ["--recipe", "a=magic"], "magic"),
        (base + ["--recipe", "a=finetune:soft_share=-1"], "soft_share"),
        (base + ["--recipe", "a=finetune:no_such=1"], "no_such"),
        (base + ["--recipe", "a=finetune:val_fraction=0"], "val_fraction must be > 0"),
        (base + ["--recipe", "a=finetune", "--recipe", "a=finetune"], "each name once"),
        (base + ["--recipe", "a=finetune", "--reference", "b"], "--reference"),
        (base + ["--recipe", "a=finetune", "--fraction", "0"], "--fraction"),
        (base + ["--recipe", "a=finetune", "--folds", "0,0"], "--folds"),
        (base + ["--recipe", "a=finetune", "--pick", "p=a"], "--pick"),
        (base + ["--recipe", "a=finetune", "--recipe", "b=finetune", "--pick", "p=a,c"], "not a --recipe: c"),
        (base + ["--recipe", "a=finetune", "--recipe", "b=finetune", "--pick", "a=a,b"], "the name is taken"),
        (["--checkpoint", str(tmp_path / "none"), "--work-dir", ck, "--recipe", "a=finetune"], "--checkpoint"),
        (base + ["--recipe", "a=finetune", "--against", str(tmp_path / "no.json")], "--against: cannot read"),
        (base + ["--recipe", "a=finetune", "--against", str(bad)], "not a screen_cells result"),
        (base + ["--recipe", "a=finetune", "--against", str(other), "--fraction", "0.1"], "at fraction 0.05"),
        (base + ["--recipe", "a=finetune", "--against", str(other), "--fraction", "0.05", "--seeds", "0,3"], "[3]"),
    ):
        with pytest.raises(SystemExit):
            script.main(args)
        assert flag in capsys.readouterr().err, args


def test_cells_at_a_share_are_run_once_and_compared(pretrained, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MATMTL_CACHE_DIR", str(tmp_path / "cache"))
    script = load_script("screen_cells")
    work = tmp_path / "work"
    args = ["--checkpoint", str(pretrained.run_dir), "--folds", "0", "--seeds", "0,1", "--fraction", "0.1"]
    args += ["--recipe", "replay=finetune_anchor_replay", "--recipe", "l2sp=finetune_anchor_replay:soft_share=0.1"]
    args += ["--pick", "either=replay,l2sp"]
    args += ["--work-dir", str(work), "--json", str(tmp_path / "s.json"), "--quick"]
    assert script.main(args) == 0
    out = json.loads((tmp_path / "s.json").read_text())
    assert out["reference"] == "replay" and out["choice"]["chosen"] in ("replay", "l2sp")
    assert out["recipes_given"]["l2sp"] == {"variant": "finetune_anchor_replay", "settings": {"soft_share": 0.1}}
    for name in ("replay", "l2sp"):
        t = out["recipes"][name]["test"]
        assert len(t["per_seed"]) == 2 and all(np.isfinite(t["per_seed"])) and t["seed_sd"] is not None
    assert sum(out["recipes"]["either"]["picked"].values()) == 2  # 2 seeds x 1 fold
    assert out["picks_given"] == {"either": ["replay", "l2sp"]}
    assert "NaN" not in (tmp_path / "s.json").read_text()
    # the cells are the harness's own (one per recipe, seed and fold, at the share); L2-SP makes its own
    cells = sorted((work / "cells" / "expt_gap" / "finetune_anchor_replay").glob("*/fold0-frac0.1.json"))
    assert len(cells) == 4  # 2 recipes x 2 seeds: 4 fingerprints
    stamp = [c.stat().st_mtime_ns for c in cells]
    capsys.readouterr()
    (tmp_path / "s.json").rename(tmp_path / "first.json")
    assert script.main(args + ["--against", str(tmp_path / "first.json")]) == 0  # a re-run reads the cached cells
    assert [c.stat().st_mtime_ns for c in cells] == stamp
    again = json.loads((tmp_path / "s.json").read_text())
    assert again["recipes"] == out["recipes"]
    vs = again["vs_other_checkpoint"]  # the same cells against themselves: no difference
    assert set(vs["recipes"]) == {"replay", "l2sp", "either"} and not vs["not_paired"]
    assert all(vs["recipes"][n][k]["mean"] == 0 for n in vs["recipes"] for k in ("test", "validation"))
    assert "replay vs " in capsys.readouterr().out
    assert not (work / "screen-unused").exists()  # no results files are written
