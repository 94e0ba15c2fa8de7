"""Bad input: single inputs get a clear error naming what and where; bulk tables have
their bad rows reported (count and first examples) and left out, never silently."""

import json

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Composition, Lattice, Molecule, Structure

from matmtl.data import DataWarning, check_structure, load_dataset, load_table, parse_composition
from matmtl.errors import DataError, DatasetNotFound


@pytest.mark.parametrize(
    "formula,message",
    [
        ("Fe2O3)", "unparsable formula"),
        ("Xx2O", "unknown element"),
        ("", "empty formula"),
        ("H2O-1", "unparsable formula"),
        ("nacl", "unparsable formula"),
    ],
)
def test_single_formula_errors_name_the_problem(formula, message):
    with pytest.raises(DataError, match=f"my input: {message}"):
        parse_composition(formula, "my input")


def test_good_formulas_and_wrong_types():
    assert parse_composition("Fe2O3").formula == "Fe2 O3"
    assert parse_composition(Composition("NaCl")).formula == "Na1 Cl1"
    with pytest.raises(DataError, match="expected a formula string or Composition, got float"):
        parse_composition(float("nan"))


def test_structure_checks():
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert check_structure(nacl) is nacl
    disordered = Structure(Lattice.cubic(3), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    with pytest.raises(DataError, match="disordered structure"):
        check_structure(disordered, "cell 3")
    with pytest.raises(DataError, match="molecules are not supported"):
        check_structure(Molecule(["H", "H"], [[0, 0, 0], [0, 0, 0.74]]))


def _write(tmp_path, name, frame):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_bulk_bad_rows_are_reported_and_left_out(tmp_path):
    frame = pd.DataFrame(
        {
            "id": ["a", "b", "c", "d", "e", "f", "g", "b"],
            "formula": ["NaCl", "Fe2O3)", "Xx2", "GaAs", "Si", "ZnO", "MgO", "KCl"],
            "band_gap": [8.5, 1.0, 2.0, np.nan, -0.5, np.inf, 7.8, 8.4],
        }
    )
    src = _write(tmp_path, "gaps.csv", frame)
    before = src.read_bytes()
    with pytest.warns(DataWarning) as rec:
        ds = load_table(src)
    msg = str(rec[0].message)
    assert "left out 6 of 8 rows" in msg
    for reason in (
        "unparsable formula",
        "unknown element",
        "missing or non-finite band_gap",
        "negative band_gap (impossible)",
        "duplicated id",
    ):
        assert reason in msg
    assert "row 1 (id b): 'Fe2O3)'" in msg  # where, and what
    assert ds.formulas == ["Na1 Cl1", "Mg1 O1"]
    assert ds.frame["row"].tolist() == [0, 6]
    assert ds.bad_rows.reasons["missing or non-finite band_gap"] == 2
    assert src.read_bytes() == before  # nothing is written into a data source


def test_rows_with_elements_no_model_embeds_are_counted_and_left_out(tmp_path):
    frame = pd.DataFrame({"formula": ["NaCl", "OgO2", "Rf(OH)4", "Lr2O3"], "band_gap": [8.5, 1.0, 2.0, 5.0]})
    with pytest.warns(DataWarning, match="left out 2 of 4 rows") as rec:
        ds = load_table(_write(tmp_path, "gaps.csv", frame))
    assert "element beyond Lr" in str(rec[0].message) and "Og" in str(rec[0].message)
    assert ds.formulas == ["Na1 Cl1", "Lr2 O3"]


def test_table_errors(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        load_table(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text("formula,gap\n")
    with pytest.raises(DataError, match="empty"):
        load_table(header_only)
    no_formula = _write(tmp_path, "nof.csv", pd.DataFrame({"name": ["x"], "gap": [1.0]}))
    with pytest.raises(DataError, match="no formula or structure column"):
        load_table(no_formula)
    with pytest.raises(DataError, match="no column 'Eg'"):
        load_table(_write(tmp_path, "t.csv", pd.DataFrame({"formula": ["Si"], "gap": [1.1]})), targets=["Eg"])
    with pytest.raises(DatasetNotFound, match="no such file"):
        load_table(tmp_path / "missing.csv")
    all_bad = _write(tmp_path, "bad.csv", pd.DataFrame({"formula": ["Qq", "Zz"], "gap": [1.0, 2.0]}))
    with pytest.warns(DataWarning), pytest.raises(DataError, match="no usable rows"):
        load_table(all_bad)
    weird = tmp_path / "t.xlsx"
    weird.write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        load_table(weird)


def test_user_json_and_structure_tables(tmp_path):
    path = tmp_path / "gaps.json"
    path.write_text(json.dumps([{"composition": "GaAs", "gap expt": 1.42}, {"composition": "Si", "gap expt": 1.12}]))
    ds = load_dataset(str(path))
    assert ds.targets == ["gap expt"] and ds.formulas == ["Ga1 As1", "Si1"] and ds.units["gap expt"] == "eV"
    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])
    disordered = Structure(Lattice.cubic(3), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    cifs = pd.DataFrame({"cif": [si.to(fmt="cif"), disordered.to(fmt="cif"), "garbage"], "e_form": [0.0, -0.1, 0.2]})
    with pytest.warns(DataWarning, match="left out 2 of 3"):
        st = load_table(_write(tmp_path, "structs.csv", cifs))
    assert st.formulas == ["Si8"] and st.frame.loc[0, "spg_num"] == 227
