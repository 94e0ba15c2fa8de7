"""predict: trust notes on every row, e_form = 0 for elements, every per-input failure
follows on_bad, inputs from files/folders/globs/ASE, predictions written as CSV or JSON.
Uses a tiny untrained checkpoint made here (no training), so it runs in seconds."""

import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Composition, Lattice, Structure

from matmtl.checkpoints import save_checkpoint
from matmtl.data import Featurizer
from matmtl.errors import DataError, InputTypeError, MatmtlError
from matmtl.inference import COLUMNS, load_model
from matmtl.models import ModelConfig, MultiTaskModel, TaskSpec
from matmtl.predict_io import read_inputs, read_predictions, write_predictions
from matmtl.uncertainty import Domain, training_domain

TRAINING = (
    "NaCl",
    "KCl",
    "GaAs",
    "GaP",
    "InP",
    "ZnO",
    "ZnS",
    "MgO",
    "CdS",
    "GaN",
    "AlN",
    "LiCl",
    "Fe2O3",
    "CuO",
    "TiO2",
    "SrTiO3",
    "BaTiO3",
    "PbS",
    "Cu2O",
    "SnO2",
    "NaBr",
    "KBr",
    "CaO",
    "SiO2",
    "Al2O3",
)


def tiny_checkpoint(
    folder, formulas=TRAINING, *, symmetry=False, domain=True, kind="finetune", tasks=("e_form", "gap_expt")
):
    """A tiny untrained checkpoint whose gap head 'was trained' on ``formulas``."""
    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, layers=1, heads=2, head_hidden=32, members=2, spg_dim=8)
    specs = {
        "e_form": TaskSpec("e_form", mean=-1.2, std=1.1, unit="eV/atom"),
        "gap_expt": TaskSpec("gap_expt", "hurdle", "eV"),
    }
    model = MultiTaskModel(cfg, [specs[t] for t in tasks])
    meta = {"kind": kind, "elements": list(range(1, 95)), "featurizer": Featurizer().settings()}
    if domain:
        f = Featurizer(cache=False)(list(formulas))
        spg = np.full(len(f), 225 if symmetry else 0)
        meta["domain"] = {"gap_expt": training_domain(f.z, f.frac, spg)}
    save_checkpoint(folder, model, meta)
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(tiny_checkpoint(tmp_path_factory.mktemp("ck") / "ck"))


def nacl():
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def si():
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])


def test_columns_and_single_prediction(model):
    df = model.predict(["GaAs", nacl()])
    assert list(df.columns) == COLUMNS and "trust" in COLUMNS
    p = model.predict("GaAs")
    assert p.trust == "" and p.note == ""


def test_single_elements_have_zero_formation_energy(model):
    df = model.predict(["Si", Composition("Cu"), si(), "O2"])
    assert (df["e_form"] == 0).all() and (df["e_form_std"] == 0).all()
    assert df["trust"].str.contains("e_form = 0 eV/atom by construction").all()
    assert df["gap_expt"].notna().all()  # the gap is still predicted
    assert model.predict("GaAs").e_form != 0


def test_one_h_atom_in_a_box_is_flagged_and_named_h(model):
    h = Structure(Lattice.cubic(10), ["H"], [[0, 0, 0]])
    p = model.predict(h)
    assert p.formula == "H"  # not "H2"
    assert "isolated atom(s): H (site 0)" in p.trust and "vacuum" in p.trust
    assert "element(s) H absent from the gap_expt training data" in p.trust


def test_slab_with_vacuum_is_flagged_bulk_is_not(model):
    bulk = nacl()
    slab = Structure(
        Lattice.from_parameters(5.64, 5.64, 25.64, 90, 90, 90),
        bulk.species,
        [[x, y, z * 5.64 / 25.64] for x, y, z in bulk.frac_coords],
    )
    df = model.predict([bulk, slab])
    assert "vacuum" not in df.loc[0, "trust"] and "isolated" not in df.loc[0, "trust"]
    assert "an atom-free layer" in df.loc[1, "trust"] and "along c" in df.loc[1, "trust"]


def test_structure_given_to_a_composition_head_is_flagged(model, tmp_path):
    p = model.predict(nacl())
    assert p.spg_num == 225 and "trained on compositions only: space group 225" in p.trust
    assert "compositions only" not in model.predict("NaCl").trust
    with_sym = load_model(tiny_checkpoint(tmp_path / "sym", symmetry=True))
    assert "compositions only" not in with_sym.predict(nacl()).trust


def test_far_from_training_and_absent_elements(model):
    dom = model.domains()["gap_expt"]
    assert 0 < dom.threshold <= 1
    df = model.predict(["KCl", "CsAu", "UPt3Ge"])
    assert df.loc[0, "trust"] == ""
    assert "element(s) Au, Cs absent from the gap_expt training data" in df.loc[1, "trust"]
    assert "far from the gap_expt training compositions: nearest" in df.loc[2, "trust"]
    assert "99th percentile" in df.loc[2, "trust"]


def test_pure_elements_are_flagged_when_the_gap_head_never_saw_one(model, tmp_path):
    df = model.predict(["Si", si(), "C", "GaAs"])
    note = "pure element: the gap_expt training data hold none"
    assert df.loc[:2, "trust"].str.contains(note).all() and note not in df.loc[3, "trust"]
    with_si = load_model(tiny_checkpoint(tmp_path / "si", TRAINING + ("Si",)))
    assert note not in with_si.predict("C").trust  # a head that saw an element is not flagged


def test_domain_distance_is_total_variation():
    f = Featurizer(cache=False)(["NaCl", "GaAs"])
    d = Domain(training_domain(f.z, f.frac))
    q = Featurizer(cache=False)(["NaCl", "KCl", "ZnO", "Na2Cl"])
    dist, idx = d.nearest(q.z, q.frac)
    np.testing.assert_allclose(dist, [0.0, 0.5, 1.0, 1 / 6], atol=1e-6)
    assert d.formula(int(idx[1])) == "NaCl"


def test_checkpoint_without_domain_says_so(tmp_path):
    m = load_model(tiny_checkpoint(tmp_path / "nodom", domain=False, kind="test"))
    assert "distance to the training data not checked" in m.predict("GaAs").trust


def test_eleven_elements_do_not_abort_the_batch(model):
    eleven = "LiBeBNaMgAlSiPSClK"
    df = model.predict(["GaAs", eleven, "ZnO"], on_bad="nan")
    assert df["gap_expt"].notna().tolist() == [True, False, True]
    assert "has 11 elements; this model takes at most 10" in df.loc[1, "note"]
    assert df.loc[1, "input"] == eleven
    with pytest.raises(DataError, match="input 1 .*has 11 elements"):
        model.predict(["GaAs", eleven])


@pytest.mark.parametrize("on_bad", ["foo", "NaN", None, 1])
def test_on_bad_is_validated(model, on_bad):
    with pytest.raises(MatmtlError, match="on_bad must be one of 'raise', 'nan'"):
        model.predict("GaAs", on_bad=on_bad)
    with pytest.raises(MatmtlError, match="on_bad must be one of"):
        read_inputs(["x.cif"], on_bad=on_bad)


@pytest.mark.parametrize(
    "value,name", [(None, "NoneType"), (5, "int"), ({"a": 1}, "dict"), (b"GaAs", "bytes"), (3.5, "float")]
)
def test_wrong_input_types_are_type_errors_with_position(model, value, name):
    with pytest.raises(
        TypeError,
        match=rf"input 1 \(.*\): expected a pymatgen Structure, Composition, ASE Atoms "
        rf"or formula string, got {name}",
    ):
        model.predict(["GaAs", value])
    df = model.predict(["GaAs", value], on_bad="nan")  # an input error like any other under on_bad="nan"
    assert f"got {name}" in df.loc[1, "note"]
    with pytest.raises(InputTypeError, match="input 0"):
        model.predict(value)


def test_sets_and_dataframes_are_refused_with_a_hint(model):
    with pytest.raises(TypeError, match="a set has no order"):
        model.predict({"GaAs", "ZnO"})
    with pytest.raises(TypeError, match="pass its formula column"):
        model.predict(pd.DataFrame({"formula": ["GaAs"]}))


def test_hydrates_predict_as_the_sum(model):
    df = model.predict(["CuSO4.5H2O", "CuSO4·5H2O", "CuH10SO9"])
    assert df["formula"].tolist() == ["CuH10SO9"] * 3
    assert df["gap_expt"].nunique() == 1


def test_files_folders_globs_and_multiblock_cif(model, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    two = (
        nacl().to(fmt="cif").replace("data_NaCl", "data_first")
        + "\n"
        + si().to(fmt="cif").replace("data_Si", "data_second")
    )
    (d / "two.cif").write_text(two)
    si().to(filename=str(d / "POSCAR"), fmt="poscar")
    (d / "f.csv").write_text("formula;id\nGaAs;a\n;b\n")
    (d / "s.json").write_text(json.dumps([nacl().as_dict(), si().as_dict()]))
    (d / "readme.md").write_text("not an input")
    with pytest.warns(UserWarning, match="skipped 1 file.*readme.md"):
        df = model.predict(d, on_bad="nan")
    assert df["input"].tolist() == [
        "POSCAR",
        "f.csv:a",
        "f.csv:b",
        "s.json#0",
        "s.json#1",
        "two.cif#first",
        "two.cif#second",
    ]
    assert df["formula"].tolist() == ["Si", "GaAs", "", "NaCl", "Si", "NaCl", "Si"]
    assert "missing formula" in df.loc[2, "note"]
    g = model.predict(str(d / "*.cif"))
    assert g["input"].tolist() == ["two.cif#first", "two.cif#second"]
    mixed = model.predict([str(d / "two.cif"), "ZnO"])
    assert mixed["formula"].tolist() == ["NaCl", "Si", "ZnO"]
    with pytest.raises(DataError, match="no file matches this pattern"):
        model.predict(str(d / "*.vasp"))
    df = model.predict([str(d / "missing.cif"), "GaAs"], on_bad="nan")
    assert "file not found" in df.loc[0, "note"] and np.isfinite(df.loc[1, "gap_expt"])


def test_extxyz_and_ase_atoms(model, tmp_path):
    ase = pytest.importorskip("ase")
    from ase.build import bulk, molecule
    from ase.io import write

    write(str(tmp_path / "frames.extxyz"), [bulk("Cu"), bulk("NaCl", "rocksalt", a=5.64), molecule("H2O")])
    df = model.predict(tmp_path / "frames.extxyz", on_bad="nan")
    assert df["formula"].tolist() == ["Cu", "NaCl", ""]
    assert "frames.extxyz#2: ASE Atoms without a periodic 3-D cell" in df.loc[2, "note"]
    p = model.predict(bulk("Si"))
    assert p.formula == "Si" and p.spg_num == 227
    with pytest.raises(DataError, match="molecules are not supported"):
        model.predict(molecule("H2O"))
    assert isinstance(ase.__version__, str)


def test_missing_ase_gives_a_clear_message(model, tmp_path, monkeypatch):
    (tmp_path / "a.xyz").write_text("1\n\nH 0 0 0\n")
    monkeypatch.setitem(sys.modules, "ase", None)
    monkeypatch.setitem(sys.modules, "ase.io", None)
    with pytest.raises(
        DataError, match=r"a.xyz: reading .xyz files needs ASE, which is not installed \(pip install ase\)"
    ):
        model.predict(tmp_path / "a.xyz")


def test_write_predictions_csv_and_json(model, tmp_path):
    df = model.predict(["GaAs", "Qq2", "Si"], on_bad="nan")
    p = write_predictions(df, tmp_path / "x.json", model=model.path)
    doc = json.loads(p.read_text())
    assert doc["units"]["gap_expt"] == "eV" and doc["units"]["e_form"] == "eV/atom"
    assert doc["n"] == 3 and doc["predictions"][1]["gap_expt"] is None and doc["columns"] == COLUMNS
    assert doc["model"] == str(model.path)
    back = read_predictions(p)
    assert back["formula"].tolist() == ["GaAs", "", "Si"]
    c = write_predictions(df, tmp_path / "x.csv")
    assert list(pd.read_csv(c).columns) == COLUMNS
    u = write_predictions(df, tmp_path / "u.csv", units_in_header=True)
    assert "gap_expt (eV)" in u.read_text().splitlines()[0]
    np.testing.assert_allclose(read_predictions(u)["gap_expt"], df["gap_expt"], rtol=1e-5)
    with pytest.raises(MatmtlError, match="is a folder; give a file name ending .csv or .json"):
        write_predictions(df, tmp_path)
    with pytest.raises(MatmtlError, match=r"cannot tell the output format from the suffix '.xlsx'"):
        write_predictions(df, tmp_path / "x.xlsx")
    with pytest.raises(MatmtlError, match="expected a pandas DataFrame"):
        write_predictions([1, 2], tmp_path / "y.csv")
