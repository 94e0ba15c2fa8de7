"""matmtl.predict / load_model / `matmtl predict` on a tiny fine-tuned model."""

import json

import numpy as np
import pandas as pd
import pytest
from _tiny import tiny_ft, tiny_pretrain
from pymatgen.core import Composition, Lattice, Molecule, Structure
from typer.testing import CliRunner

import matmtl
from matmtl.checkpoints import CheckpointError
from matmtl.cli import app
from matmtl.config import FinetuneConfig
from matmtl.errors import DataError, MatmtlError
from matmtl.train import finetune, pretrain


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A user cache holding one tiny pretrain and one tiny fine-tune run (on compositions
    only, ``symmetry="none"``, so the trust notes about symmetry have something to say)."""
    root = tmp_path_factory.mktemp("predcache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MATMTL_CACHE_DIR", str(root))
        pretrain(tiny_pretrain(max_rows=300), progress=False)
        finetune(
            FinetuneConfig(aux_source="distill", max_train_rows=200, holdout_fold=0, symmetry="none", train=tiny_ft()),
            progress=False,
        )
    return root


@pytest.fixture
def use_cache(cache, monkeypatch):
    monkeypatch.setenv("MATMTL_CACHE_DIR", str(cache))
    return cache


def nacl():
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def si():
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])


def test_single_inputs_give_a_prediction(use_cache):
    for x in ("GaAs", Composition("Si"), nacl()):
        p = matmtl.predict(x)
        assert p.gap_expt >= 0 and np.isfinite(p.e_form) and p.gap_expt_std >= 0 and p.e_form_std >= 0
        assert 0 <= p.p_metal <= 1
    assert matmtl.predict(nacl()).spg_num == 225 and matmtl.predict("NaCl").spg_num == 0
    assert matmtl.predict(nacl()).formula == "NaCl"


def test_list_gives_a_dataframe(use_cache):
    df = matmtl.predict([si(), "NaCl", Composition("GaAs")])
    assert list(df.columns) == [
        "input",
        "formula",
        "spg_num",
        "gap_expt",
        "gap_expt_std",
        "p_metal",
        "e_form",
        "e_form_std",
        "note",
        "trust",
    ]
    assert df["spg_num"].tolist() == [227, 0, 0] and df["gap_expt"].notna().all()


def test_model_object_is_reusable_and_matches_predict(use_cache):
    m = matmtl.load_model()
    a = m.predict(["GaAs", "ZnO"])
    b = matmtl.predict(["GaAs", "ZnO"], model=m.path)
    pd.testing.assert_frame_equal(a, b)
    assert m.meta["kind"] == "finetune" and "gap_expt" in m.tasks


def test_bad_inputs_raise_clear_errors(use_cache):
    disordered = Structure(Lattice.cubic(4), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    with pytest.raises(DataError, match="disordered"):
        matmtl.predict(disordered)
    with pytest.raises(DataError, match="molecules are not supported"):
        matmtl.predict(Molecule(["H", "H"], [[0, 0, 0], [0, 0, 0.74]]))
    with pytest.raises(DataError, match="empty"):
        matmtl.predict([])
    with pytest.raises(DataError, match="unparsable|unknown element"):
        matmtl.predict("Qz3")
    with pytest.raises(DataError, match="never seen in training"):
        matmtl.predict("Og2")  # an element outside the training vocabulary
    with pytest.raises(DataError, match="expected"):
        matmtl.predict([3.5])


def test_on_bad_nan_keeps_rows_with_a_note(use_cache):
    df = matmtl.predict(["GaAs", "Og2", "Qz3"], on_bad="nan")
    assert np.isfinite(df.loc[0, "gap_expt"]) and df.loc[1:, "gap_expt"].isna().all()
    assert "never seen" in df.loc[1, "note"] and df.loc[2, "note"]


def test_without_a_run_of_your_own_the_shipped_model_answers(tmp_path, monkeypatch):
    from matmtl import zoo

    monkeypatch.setenv("MATMTL_CACHE_DIR", str(tmp_path))
    assert matmtl.load_model().path == zoo.PRETRAINED_DIR / zoo.DEFAULT_MODEL
    monkeypatch.setattr(zoo, "PRETRAINED_DIR", tmp_path / "no-models")
    with pytest.raises(MatmtlError, match="matmtl pretrain.*matmtl finetune"):
        matmtl.load_model()


def test_corrupt_model_names_the_file(use_cache, tmp_path):
    import shutil

    src = matmtl.load_model().path
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    (bad / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        matmtl.load_model(bad)


def test_cli_predict_files_and_formulas(use_cache, tmp_path):
    nacl().to(filename=str(tmp_path / "nacl.cif"))
    si().to(filename=str(tmp_path / "POSCAR"), fmt="poscar")
    pd.DataFrame({"formula": ["GaN", "Og2"]}).to_csv(tmp_path / "f.csv", index=False)
    out = tmp_path / "pred.csv"
    r = CliRunner().invoke(
        app,
        [
            "predict",
            str(tmp_path / "nacl.cif"),
            str(tmp_path / "POSCAR"),
            str(tmp_path / "f.csv"),
            "-f",
            "ZnO",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out)
    assert df["formula"].tolist() == ["NaCl", "Si", "GaN", "Og", "ZnO"]
    assert df.loc[[0, 1], "spg_num"].tolist() == [225, 227]
    assert {"gap_expt (eV)", "gap_expt_std (eV)", "e_form (eV/atom)", "e_form_std (eV/atom)"} <= set(df.columns)
    assert df.loc[3, "gap_expt (eV)"] != df.loc[3, "gap_expt (eV)"]  # NaN with a note, not a number
    r = CliRunner().invoke(app, ["predict", "-f", "GaN", "-f", "Si", "--out", str(tmp_path / "pred.json")])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "pred.json").read_text())  # JSON, not CSV, when the name says .json
    assert doc["units"]["gap_expt"] == "eV" and [p["formula"] for p in doc["predictions"]] == ["GaN", "Si"]
    for bad in (str(tmp_path), str(tmp_path / "pred.txt")):
        r = CliRunner().invoke(app, ["predict", "-f", "GaN", "--out", bad])
        assert r.exit_code == 2 and "--out" in r.output
    r = CliRunner().invoke(app, ["predict", "-f", "GaAs", "--csv"])
    assert r.exit_code == 0 and "gap_expt" in r.output


def test_cli_pretrain_finetune_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("MATMTL_CACHE_DIR", str(tmp_path / "c"))
    run = CliRunner()
    r = run.invoke(
        app,
        [
            "pretrain",
            "--max-rows",
            "200",
            "--epochs",
            "1",
            "--dim",
            "32",
            "--layers",
            "1",
            "--members",
            "2",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "pre"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "pre" / "model.safetensors").exists()
    r = run.invoke(
        app,
        [
            "finetune",
            "--checkpoint",
            str(tmp_path / "pre"),
            "--max-train-rows",
            "100",
            "--epochs",
            "1",
            "--aux",
            "dft_energy",
            "--aux-source",
            "replay",
            "--threads",
            "1",
            "--out",
            str(tmp_path / "ft"),
        ],
    )
    assert r.exit_code == 0, r.output
    r = run.invoke(app, ["predict", "-f", "GaAs", "--model", str(tmp_path / "ft"), "--csv"])
    assert r.exit_code == 0 and "GaAs" in r.output
    # the same --out again: refused, the existing run is untouched
    r = run.invoke(app, ["pretrain", "--max-rows", "200", "--epochs", "1", "--out", str(tmp_path / "pre")])
    assert r.exit_code != 0 and isinstance(r.exception, MatmtlError)


def test_cli_help_explains_options():
    r = CliRunner().invoke(app, ["finetune", "--help"])
    assert r.exit_code == 0
    for opt in ("--aux-source", "--aux-weight", "--holdout-fold", "--checkpoint", "--resume"):
        assert opt in r.output


def test_uncertainty_is_the_recalibrated_ensemble_spread(use_cache):
    from matmtl import uncertainty

    m = matmtl.load_model()
    rec = m.meta["uncertainty"]["gap_expt"]
    assert rec["rows"] > 0 and rec["a"] >= 0 and rec["b"] > 0
    assert m.metrics["validation"]["gap_expt"]["calibration"] == rec  # fitted on validation rows, not test rows
    assert set(m.metrics["holdout"]["gap_expt"]["calibrated_coverage"]) == {"within_1sigma", "within_2sigma"}
    raw = m.net.predict_arrays(*_features(m, ["GaAs", "ZnO"]), ["gap_expt"])["gap_expt"].std(1)
    np.testing.assert_allclose(m.predict(["GaAs", "ZnO"])["gap_expt_std"], uncertainty.apply(raw, rec), rtol=1e-6)
    # the distilled e_form head keeps the calibration of the pretrained checkpoint
    assert m.meta["uncertainty"]["e_form"]["from"] == "parent checkpoint"


def _features(m, formulas):
    f = m.featurizer(formulas)
    return f.z, f.frac, f.spg


def test_trust_column_on_a_trained_model(use_cache):
    m = matmtl.load_model()
    df = m.predict(["GaAs", si(), "Si"])
    assert m.domains()["gap_expt"].threshold is not None  # stored in the checkpoint, or rebuilt from its config
    assert "trained on compositions only" in df.loc[1, "trust"]
    assert (df.loc[[1, 2], "e_form"] == 0).all() and "e_form = 0 eV/atom" in df.loc[2, "trust"]
