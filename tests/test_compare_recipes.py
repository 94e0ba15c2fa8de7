"""scripts/compare_recipes.py on small evaluation folders written here: the seed mean and
spread, the anchor chosen per seed and fold on validation MAEs only, the seed ensemble
scored from averaged predictions, the paired differences, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _scripts import load_script

TARGET = {"0": [0.0, 1.0, 2.0], "1": [0.5, 0.0, 3.0]}
IDS = {"0": ["a", "b", "c"], "1": ["d", "e", "f"]}
TRAIN = {"epochs": 60, "lr": 5e-4, "seed": 0, "threads": 2, "device": "cpu"}


@pytest.fixture(scope="module")
def script():
    return load_script("compare_recipes")


def write_folder(folder: Path, seed: int, preds: dict, val: dict, checkpoint="ckpt", train=None, target=TARGET):
    """An evaluate --out folder: preds[variant][fold] test predictions, val[variant] the
    per-fold validation MAEs."""
    folder.mkdir(parents=True)
    variants = {}
    for name, per_fold in preds.items():
        fold_mae = [float(np.mean(np.abs(np.array(per_fold[k]) - target[k]))) for k in ("0", "1")]
        variants[name] = {"status": "done", "fold_mae": fold_mae, "fold_validation_mae": val.get(name)}
    variants["rf_magpie"] = {"status": "not run"}
    summary = {
        "folds": [0, 1],
        "variants": variants,
        "command": f"matmtl evaluate --seed {seed}",
        "settings": {
            "eval": {"seed": seed, "checkpoint": checkpoint},
            "finetune_train": {**(train or TRAIN), "seed": seed},
        },
    }
    folds = {k: {"ids": IDS[k], "target": target[k]} for k in ("0", "1")}
    (folder / "expt_gap.json").write_text(json.dumps(summary))
    (folder / "expt_gap_predictions.json").write_text(json.dumps({"folds": folds, "variants": preds}))
    return folder


def shifted(offset: float) -> dict:
    return {k: [max(0.0, t + offset) for t in v] for k, v in TARGET.items()}


@pytest.fixture()
def recipes(tmp_path):
    # seed 0: replay off by 0.1, distill by 0.3; seed 1: replay off by 0.3 (below), distill by 0.1
    a0 = write_folder(
        tmp_path / "a0",
        0,
        {"finetune_anchor_replay": shifted(0.1), "finetune_anchor_distill": shifted(0.3), "finetune": shifted(0.2)},
        {"finetune_anchor_replay": [0.2, 0.2], "finetune_anchor_distill": [0.3, 0.1]},
    )
    a1 = write_folder(
        tmp_path / "a1",
        1,
        {"finetune_anchor_replay": shifted(-0.3), "finetune_anchor_distill": shifted(0.1), "finetune": shifted(0.4)},
        {"finetune_anchor_replay": [0.2, 0.2], "finetune_anchor_distill": [0.2, 0.3]},
    )
    b0 = write_folder(
        tmp_path / "b0",
        0,
        {"finetune_anchor_replay": shifted(0.05), "finetune_anchor_distill": shifted(0.05)},
        {"finetune_anchor_replay": [0.1, 0.1], "finetune_anchor_distill": [0.2, 0.2]},
        checkpoint="other",
    )
    return {"a": [a0, a1], "b": [b0]}


def test_seed_mean_spread_selection_and_ensemble(script, recipes):
    res = script.compare(script.load(recipes), ("a", "finetune_anchor_replay"))
    a = res["recipes"]["a"]["variants"]
    replay = a["finetune_anchor_replay"]
    # per-seed 5-fold means of the fold MAEs; the spread is their sample std
    s0 = np.mean([0.1, np.mean([0.1, 0.1, 0.1])])
    s1 = np.mean([np.mean([0.0, 0.3, 0.3]), np.mean([0.3, 0.0, 0.3])])  # clipped at 0
    assert replay["seed_mae"] == pytest.approx([s0, s1])
    assert replay["mae_mean"] == pytest.approx((s0 + s1) / 2)
    assert replay["seed_std"] == pytest.approx(np.std([s0, s1], ddof=1))
    # ensemble: predictions averaged over the seeds, clipped ones included, then scored
    ens0 = np.mean(np.abs((np.array(shifted(0.1)["0"]) + np.array(shifted(-0.3)["0"])) / 2 - TARGET["0"]))
    ens1 = np.mean(np.abs((np.array(shifted(0.1)["1"]) + np.array(shifted(-0.3)["1"])) / 2 - TARGET["1"]))
    assert replay["ensemble_fold_mae"] == pytest.approx([ens0, ens1])
    # the selected anchor follows the validation MAEs (replay on a tie), never the test rows
    sel = a["finetune_anchor"]
    assert sel["anchor_source"] == {"0": {"0": "replay", "1": "distill"}, "1": {"0": "replay", "1": "replay"}}
    assert sel["seed_mae"][0] == pytest.approx(np.mean([0.1, 0.3]))
    # replay and distill averaged per seed: scored from the averaged predictions, never chosen
    mean = a["finetune_anchor_mean"]
    assert mean["seed_mae"][0] == pytest.approx(0.2) and mean["validation_mae_mean"] is None
    # paired differences against the reference, per fold averaged over seeds
    fin = a["finetune"]
    d = np.array(fin["fold_mae"]) - np.array(replay["fold_mae"])
    assert fin["paired_vs_reference"]["mean"] == pytest.approx(d.mean())
    assert fin["paired_vs_reference"]["se"] == pytest.approx(np.std(d, ddof=1) / np.sqrt(2))
    assert replay["paired_vs_reference"] == {"mean": 0.0, "se": 0.0}
    # a recipe with one seed has no spread
    assert res["recipes"]["b"]["variants"]["finetune_anchor_replay"]["seed_std"] is None
    assert "finetune" not in res["recipes"]["b"]["variants"]
    assert "| a | finetune_anchor |" in script.markdown(res)
    # the best recipe: the lowest validation MAE of the selected anchor (test MAEs not read)
    assert sel["validation_mae_mean"] == pytest.approx(np.mean([0.2, 0.1, 0.2, 0.2]))
    assert res["choice"]["chosen"] == "b"
    assert fin["validation_mae_mean"] is None  # this folder has no validation MAEs for it


def test_the_averaged_anchors_get_a_validation_mae_from_kept_validation_predictions(script, recipes):
    a0 = recipes["a"][0]
    path = a0 / "expt_gap_predictions.json"
    obj = json.loads(path.read_text())
    rows, target = [7, 9], [1.0, 0.0]
    obj["validation"] = {
        "finetune_anchor_replay": {k: {"rows": rows, "target": target, "pred": [1.2, 0.2]} for k in ("0", "1")},
        "finetune_anchor_distill": {k: {"rows": rows, "target": target, "pred": [0.9, 0.0]} for k in ("0", "1")},
    }
    path.write_text(json.dumps(obj))
    seed = script.Seed(a0)
    # mean predictions (1.05, 0.1) against (1.0, 0.0)
    assert seed.fold_mae("finetune_anchor_mean", 0, "fold_validation_mae") == pytest.approx(0.075)
    row = script.row([seed], "finetune_anchor_mean")
    assert row["validation_mae_mean"] == pytest.approx(0.075)
    # without them (the other seed's folder), no validation MAE: never a made-up number
    assert script.row([script.Seed(recipes["a"][1])], "finetune_anchor_mean")["validation_mae_mean"] is None


def test_refusals(script, recipes, tmp_path):
    with pytest.raises(script.Refused, match="repeat"):
        script.load({"a": [recipes["a"][0], recipes["a"][0]]})
    odd = write_folder(
        tmp_path / "odd",
        2,
        {"finetune_anchor_replay": shifted(0.1)},
        {"finetune_anchor_replay": [0.1, 0.1]},
        train={**TRAIN, "lr": 1e-3},
    )
    newer = write_folder(
        tmp_path / "newer",
        5,
        {"finetune_anchor_replay": shifted(0.1)},
        {"finetune_anchor_replay": [0.1, 0.1]},
        train={**TRAIN, "precision": "fp32"},  # a setting added later, at its default
    )
    script.load({"a": recipes["a"], "newer": [newer]})
    # recipes may differ in their settings (what is compared), the seeds of one recipe not
    script.load({"a": recipes["a"], "odd": [odd]})
    with pytest.raises(script.Refused, match=r"\['lr'\] differ .*one recipe"):
        script.load({"a": [recipes["a"][0], odd]})
    other = write_folder(
        tmp_path / "rows",
        3,
        {"finetune_anchor_replay": shifted(0.1)},
        {"finetune_anchor_replay": [0.1, 0.1]},
        target={"0": [0.0, 1.0, 2.5], "1": TARGET["1"]},
    )
    with pytest.raises(script.Refused, match="test rows differ"):
        script.load({"a": recipes["a"], "rows": [other]})
    mixed = write_folder(
        tmp_path / "mixed", 4, {"finetune": shifted(0.1)}, {"finetune": [0.1, 0.1]}, checkpoint="elsewhere"
    )
    with pytest.raises(script.Refused, match="different checkpoints"):
        script.load({"a": [recipes["a"][0], mixed]})
    with pytest.raises(script.Refused, match="reference"):
        script.compare(script.load({"b": recipes["b"]}), ("b", "finetune"))


def test_command_line(script, recipes, tmp_path, capsys):
    out = tmp_path / "cmp.json"
    rc = script.main(
        [
            f"a={recipes['a'][0]},{recipes['a'][1]}",
            f"b={recipes['b'][0]}",
            "--json",
            str(out),
            "--markdown",
            str(tmp_path / "t.md"),
            "--note",
            "Pretraining: two runs.",
        ]
    )
    assert rc == 0
    assert json.loads(out.read_text())["reference"] == "a:finetune_anchor_replay"
    page = (tmp_path / "t.md").read_text()
    assert "| b | finetune_anchor_replay |" in page and "Pretraining: two runs." in page
    assert "This page: `python scripts/compare_recipes.py a=" in page
    assert script.main(["a=" + str(tmp_path / "missing")]) == 2
    assert "no expt_gap.json" in capsys.readouterr().err


def add_curve(folder: Path, per_variant: dict, fractions=(0.1, 1.0), val=None) -> None:
    """Give an evaluate folder a data-efficiency curve: per_variant[v][fraction] = fold MAEs
    (``val[v][fraction]``: the runs' validation MAEs, where given)."""
    path = folder / "expt_gap.json"
    summary = json.loads(path.read_text())
    val = val or {}
    variants = {
        v: {
            script_frac(f): {
                "fold_mae": maes,
                "mae_mean": float(np.mean(maes)),
                "complete": True,
                "fold_validation_mae": val.get(v, {}).get(f, [None, None]),
            }
            for f, maes in per.items()
        }
        for v, per in per_variant.items()
    }
    summary["data_efficiency"] = {"fractions": list(fractions), "folds": [0, 1], "variants": variants}
    path.write_text(json.dumps(summary))


def script_frac(f: float) -> str:
    return "1" if f == 1.0 else str(f)


def test_the_data_efficiency_curve_over_seeds(script, recipes):
    a0, a1 = recipes["a"]
    add_curve(
        a0,
        {
            "scratch": {0.1: [0.9, 0.8], 1.0: [0.5, 0.6]},
            "finetune": {0.1: [0.5, 0.5], 1.0: [0.30, 0.32]},
            "finetune_anchor": {0.1: [0.4, 0.5], 1.0: [0.30, 0.32]},
        },
        # at 10%, seed 0: validation prefers the anchor in fold 0, plain fine-tuning in fold 1
        val={"finetune": {0.1: [0.3, 0.2]}, "finetune_anchor": {0.1: [0.2, 0.3]}},
    )
    add_curve(
        a1,
        {
            "scratch": {0.1: [0.7, 0.8], 1.0: [0.5, 0.6]},
            "finetune": {0.1: [0.5, 0.7], 1.0: [0.31, 0.33]},
            "finetune_anchor": {0.1: [0.4, 0.6]},  # 100% missing in this seed: not averaged
        },
        val={"finetune": {0.1: [0.3, 0.3]}, "finetune_anchor": {0.1: [0.3, 0.3]}},  # ties: the anchor
    )
    res = script.compare(script.load({"a": [a0, a1]}), ("a", "finetune_anchor_replay"))
    c = res["recipes"]["a"]["data_efficiency"]
    low = c["rows"]["0.1"]
    assert low["variants"]["finetune_anchor"]["seed_mae"] == pytest.approx([0.45, 0.5])
    assert low["variants"]["finetune_anchor"]["seed_std"] == pytest.approx(np.std([0.45, 0.5], ddof=1))
    # paired per fold after averaging the seeds: anchor (0.4, 0.55) vs finetune (0.5, 0.6)
    d = np.array([0.4 - 0.5, 0.55 - 0.6])
    pair = low["paired"]["finetune_anchor - finetune"]
    assert pair["mean"] == pytest.approx(d.mean()) and pair["se"] == pytest.approx(np.std(d, ddof=1) / np.sqrt(2))
    assert pair["verdict"].startswith("lower by")
    assert low["paired"]["finetune_anchor - scratch"]["mean"] == pytest.approx(np.mean([0.4 - 0.8, 0.55 - 0.8]))
    # the anchor or plain fine-tuning, chosen per seed and fold on validation MAEs only
    either = low["variants"]["anchor_or_plain"]
    assert either["seed_mae"] == pytest.approx([np.mean([0.4, 0.5]), np.mean([0.4, 0.6])])
    assert low["anchor_chosen_share"] == pytest.approx(0.75)
    assert "anchor_or_plain - finetune" in low["paired"]
    assert "anchor_or_plain" not in c["rows"]["1"]["variants"]  # no validation MAEs at 100% here
    full = c["rows"]["1"]
    assert "finetune_anchor" not in full["variants"] and full["paired"] == {}
    assert script.verdict(0.001, 0.002) == "tie" and script.verdict(0.01, 0.002) == "higher by 5.0 SE"
    page = script.page(res, "cmd")
    assert "Data efficiency, recipe **a** (2 seeds" in page and "| 10% | finetune_anchor |" in page
    # a recipe whose folders have no curve gets none
    assert (
        script.compare(script.load({"b": recipes["b"]}), ("b", "finetune_anchor_replay"))["recipes"]["b"][
            "data_efficiency"
        ]
        is None
    )
