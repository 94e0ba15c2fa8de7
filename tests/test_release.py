"""The release recipe end to end on tiny settings, and the shipped-model registry
(names, cards, SHA-256 checks, format versions)."""

import json
from pathlib import Path

import numpy as np
import pytest

from matmtl import zoo
from matmtl.errors import MatmtlError
from matmtl.release import REFERENCE_FORMULAS, Recipe, experimental_table, release

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A tiny release into a temporary model folder (symmetry lookup from a small MP slice)."""
    from matmtl.train import data as train_data
    from matmtl.train import finetuning as ft_module

    root = tmp_path_factory.mktemp("release")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MATMTL_CACHE_DIR", str(root / "cache"))

        def small_lookup(data_dir=None):
            ds = train_data._load("mp", data_dir)
            d = train_data.to_taskdata(ds, np.arange(3000), {"e_form": "e_form"})
            return dict(zip(train_data.composition_keys(d.z, d.frac), d.spg.tolist()))

        mp.setattr(ft_module, "mp_ground_state_symmetry", small_lookup)
        folder = release(
            Recipe(name="tiny-test-v1", tiny=True, max_rows=300), root / "work", root / "models", progress=False
        )
    return folder


def test_a_release_writes_a_verified_model_with_its_card(released, monkeypatch):
    card = json.loads((released / "card.json").read_text())
    assert card["name"] == "tiny-test-v1" and card["card_version"] == zoo.CARD_VERSION
    assert card["sha256"] == zoo.file_digests(released)
    assert set(card["reference_predictions"]) == set(REFERENCE_FORMULAS)
    assert card["data"]["experimental"]["compositions"] > 4604  # matbench + Zhuo, repeats merged
    assert card["recipe"]["finetune"]["symmetry"] == "mp_ground_state"
    assert any("CC-BY 4.0" in lic for lic in card["licences"]) and len(card["citations"]) == 3
    assert "validation" in card and card["validation"]["gap_expt"]["rows"] > 0
    # the anchor is chosen as the evaluation chooses it: both runs, the lower validation MAE
    anchor = card["recipe"]["anchor"]
    maes = {s: anchor[s] for s in ("replay", "distill")}
    assert anchor["rule"] == "validation" and anchor["chosen"] == min(maes, key=lambda s: (maes[s], s != "replay"))
    assert card["recipe"]["finetune"]["aux_source"] == anchor["chosen"]
    assert card["validation"]["gap_expt"]["mae"] == maes[anchor["chosen"]]
    monkeypatch.setattr(zoo, "PRETRAINED_DIR", released.parent)
    assert [m["name"] for m in zoo.list_models()] == ["tiny-test-v1"]
    assert zoo.resolve("tiny-test-v1") == released
    import matmtl

    model = matmtl.load_model("tiny-test-v1")
    df = model.predict(REFERENCE_FORMULAS)
    for r in df.itertuples():  # the stored reference values are what the loaded model predicts
        ref = card["reference_predictions"][r.input]
        assert r.gap_expt == pytest.approx(ref["gap_expt"], abs=1e-5)
        assert r.e_form == pytest.approx(ref["e_form"], abs=1e-5)
    assert df.loc[df.input == "Si", "e_form"].item() == 0.0  # a pure element: the reference state


def test_a_damaged_or_newer_model_is_refused(released, tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "models" / "tiny-test-v1"
    shutil.copytree(released, copy)
    monkeypatch.setattr(zoo, "PRETRAINED_DIR", copy.parent)
    meta = json.loads((copy / "model.json").read_text())
    meta["note"] = "edited"
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(MatmtlError, match="do not match the SHA-256"):
        zoo.resolve("tiny-test-v1")
    card = json.loads((copy / "card.json").read_text())
    (copy / "card.json").write_text(
        json.dumps({**card, "card_version": zoo.CARD_VERSION + 1, "package_version": "9.0"})
    )
    with pytest.raises(MatmtlError, match="newer than this matmtl reads.*matmtl 9.0"):
        zoo.card("tiny-test-v1")
    with pytest.raises(zoo.ModelNotFound, match="no shipped model named 'nope'"):
        zoo.resolve("nope")


def test_the_metal_gate_ships_with_the_model_and_is_checked(released, tmp_path, monkeypatch):
    """The kept run's DFT metal gate is in the card; its file (when the mode needs a table)
    ships beside the weights under the card's SHA-256, and a gate file added, edited or
    removed after the release is refused."""
    import shutil

    from matmtl.metal_gate import GATE_FILE, MODES, load

    card = json.loads((released / "card.json").read_text())
    gate = card["metal_gate"]
    assert gate["mode"] in MODES and gate["validation_mae"][gate["mode"]] == min(gate["validation_mae"].values())
    assert (released / GATE_FILE).is_file() and GATE_FILE in card["sha256"]
    assert load(released / GATE_FILE)[0].mode == gate["mode"]
    copy = tmp_path / "models" / "tiny-test-v1"
    shutil.copytree(released, copy)
    monkeypatch.setattr(zoo, "PRETRAINED_DIR", copy.parent)
    (copy / GATE_FILE).unlink()
    with pytest.raises(MatmtlError, match=f"{GATE_FILE} listed in its card.json is missing"):
        zoo.resolve("tiny-test-v1")
    shutil.copy2(released / GATE_FILE, copy / GATE_FILE)
    assert zoo.resolve("tiny-test-v1") == copy
    nogate = {**card, "sha256": {k: v for k, v in card["sha256"].items() if k != GATE_FILE}}
    (copy / "card.json").write_text(json.dumps(nogate))
    with pytest.raises(MatmtlError, match=f"{GATE_FILE} do not match the SHA-256"):
        zoo.resolve("tiny-test-v1")


def test_the_card_says_what_the_gate_would_do_to_training_rows(released, tmp_path):
    """The card's evidence for leaving training compositions alone: the kept run's gate
    applied to its own training rows; checked by hand on a copy whose gate calls one
    training composition (measured gapped) a metal."""
    import shutil

    import pandas as pd

    import matmtl
    from matmtl.metal_gate import GATE_FILE, MetalGate, PbeGaps, key_string, save
    from matmtl.release import gate_on_training_rows
    from matmtl.train.data import composition_keys

    card = json.loads((released / "card.json").read_text())
    rec, work = card["metal_gate"]["on_training_rows"], released.parent.parent / "work"
    table = pd.read_csv(work / "experimental_gaps.csv")
    kept = work / ("finetune" if card["recipe"]["anchor"]["chosen"] == "replay" else "finetune-distill")
    held = json.loads((kept / "validation_predictions.json").read_text())["rows"]
    assert rec["rows"] == len(table) - len(held) and 0 <= rec["changed_measured_gapped"] <= rec["changed"]
    run = tmp_path / "run"
    shutil.copytree(kept, run)
    train = table.drop(index=held)
    gapped = train[train["gap_expt"] > 1].iloc[0]
    f = matmtl.load_model(run).featurizer([gapped["formula"]], where="test")
    key = key_string(composition_keys(f.z, f.frac)[0])
    save(run / GATE_FILE, MetalGate("metal"), PbeGaps({key: 0.0}, {}))
    got = gate_on_training_rows(run, work / "experimental_gaps.csv")
    n = int((train["formula"] == gapped["formula"]).sum())  # the table holds a composition once
    assert got["changed"] == got["changed_measured_gapped"] == n == 1
    assert got["mae_changed_gated"] == pytest.approx(gapped["gap_expt"], abs=1e-9)
    assert got["mae_gated"] - got["mae_ungated"] == pytest.approx(
        (got["mae_changed_gated"] - got["mae_changed_ungated"]) / got["rows"], abs=1e-9
    )


def test_a_retired_model_name_says_what_replaced_it():
    import matmtl

    assert zoo.RETIRED
    for old, (new, _why) in zoo.RETIRED.items():  # each points at the model shipped now
        assert zoo.shipped(new) is not None and zoo.DEFAULT_MODEL == new
        for call in (zoo.resolve, zoo.card, matmtl.load_model):
            with pytest.raises(zoo.ModelNotFound, match=f"{old!r} is no longer shipped: it was replaced by {new!r}"):
                call(old)


def test_a_release_never_replaces_a_shipped_model(released):
    with pytest.raises(MatmtlError, match="--force"):
        release(Recipe(name="tiny-test-v1", tiny=True), released.parent / "work", released.parent)


def test_a_release_refuses_runs_made_with_other_settings(released, tmp_path):
    work = released.parent.parent / "work"  # the fixture's finished runs
    with pytest.raises(MatmtlError, match=r"pretrain was made with other settings than this recipe \(mtl\)"):
        other = "gradnorm"  # neither the default balancer nor static
        release(Recipe(name="other", tiny=True, max_rows=300, balance=other), work, tmp_path)
    assert not (tmp_path / "other").exists()
    longer = Recipe(name="longer", tiny=True, max_rows=300, pretrain_epochs=7)
    assert longer.pretrain_config().train.epochs == 7 and Recipe(tiny=True).pretrain_config().train.epochs != 7
    with pytest.raises(MatmtlError, match=r"pretrain was made with other settings .*train\.epochs"):
        release(longer, work, tmp_path)
    with pytest.raises(MatmtlError, match="pretrain_epochs must be >= 1"):
        Recipe(pretrain_epochs=0)


def test_the_anchor_source_follows_the_validation_rows(tmp_path):
    from matmtl.release import choose_source

    def run(name, mae):
        folder = tmp_path / name
        folder.mkdir()
        val = {} if mae is None else {"gap_expt": {"mae": mae, "rows": 10}}
        (folder / "metrics.json").write_text(json.dumps({"validation": val}))
        return folder

    assert choose_source({"replay": run("r1", 0.3), "distill": run("d1", 0.2)})["chosen"] == "distill"
    assert choose_source({"replay": run("r2", 0.2), "distill": run("d2", 0.2)})["chosen"] == "replay"  # tie
    assert choose_source({"distill": run("d3", 0.5)}) == {"rule": "fixed", "chosen": "distill", "distill": 0.5}
    with pytest.raises(MatmtlError, match="no validation MAE"):
        choose_source({"replay": run("r4", None), "distill": run("d4", 0.2)})
    with pytest.raises(MatmtlError, match="anchor must be one of"):
        Recipe(anchor="pcgrad")
    assert Recipe(anchor="replay").sources() == ("replay",)
    assert Recipe(balance="uncertainty").pretrain_config().mtl.balancer.to_dict()["name"] == "uncertainty"


def test_the_card_carries_the_recipe_chosen_over_seeds(tmp_path):
    from matmtl.release import benchmark_figures

    single = tmp_path / "expt_gap.json"
    single.write_text(
        json.dumps(
            {
                "task": "matbench_expt_gap",
                "unit": "eV",
                "variants": {"finetune": {"mae_mean": 0.3}, "finetune_anchor_pcgrad": {"mae_mean": None}},
            }
        )
    )
    assert "over_seeds" not in benchmark_figures(single, tmp_path / "absent.json")
    assert list(benchmark_figures(single, tmp_path / "absent.json")["variants"]) == ["finetune"]  # run ones only
    seeds = tmp_path / "seeds.json"
    row = {"mae_mean": 0.28, "seed_std": 0.006, "seed_mae": [0.28, 0.29, 0.27], "seeds": [0, 1, 2]}
    seeds.write_text(
        json.dumps(
            {
                "choice": {"chosen": "unc"},
                "recipes": {"unc": {"checkpoint": "c", "variants": {"finetune_anchor": row}}, "static": {}},
            }
        )
    )
    over = benchmark_figures(single, seeds)["over_seeds"]
    assert over["recipe"] == "unc" and over["variants"]["finetune_anchor"]["seed_mae"] == [0.28, 0.29, 0.27]
    assert benchmark_figures(tmp_path / "none.json") is None
    # the same runs with the DFT metal gate, where that file exists (the repository's own)
    assert "metal_gate" not in benchmark_figures(single, seeds, tmp_path / "absent.json")
    gate = benchmark_figures(single, seeds, ROOT / "results" / "expt_gap_metal_gate.json")["metal_gate"]
    recipe = gate["variants"]["finetune_anchor"]
    whole = json.loads((ROOT / "results" / "expt_gap_metal_gate.json").read_text())
    written = whole["variants"]["finetune_anchor"]
    assert (
        recipe["seeds"] == written["seeds"] == len(whole["sources"]) >= 3
        and recipe["mae_gated"] == written["mae_gated"]
        and "scripts/metal_gate.py" in gate["command"]
    )


def test_experimental_table_merges_repeats_by_median(tmp_path):
    info = experimental_table(tmp_path / "gaps.csv")
    import pandas as pd

    t = pd.read_csv(tmp_path / "gaps.csv")
    assert info["compositions"] == len(t) and t["formula"].is_unique and (t["gap_expt"] >= 0).all()
    # one row per composition as training reads it: no two rows with the same element fractions
    # (reduced formulas alone leave e.g. Cu9S5 and Cu1.8S apart, and training merged them again)
    from matmtl.data.validate import composition_key

    keys = [composition_key(f) for f in t["formula"]]
    assert len(set(keys)) == len(keys)
    assert info["sources"]["matbench_expt_gap"] == 4604 and info["sources"]["zhuo2018"] == 6354
    for f in ("GaAs", "NaCl", "MgO", "ZnO", "GaN", "CdTe"):  # textbook crystals absent from matbench expt_gap
        assert f in set(t["formula"]), f
    assert (t["measurements"] > 1).sum() == info["compositions_with_repeats"] > 0
