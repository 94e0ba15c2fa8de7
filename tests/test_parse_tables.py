"""User tables: named targets, metadata never costs a row, repeated compositions merged by
a stated rule with their spread, every left-out row written out, ;-separated files."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from matmtl.data import DataWarning, load_dataset, load_table
from matmtl.errors import DataError


def _csv(tmp_path, name, frame, **kw):
    p = tmp_path / name
    frame.to_csv(p, index=False, **kw)
    return p


def test_half_empty_metadata_column_drops_no_row(tmp_path):
    rng = np.random.default_rng(0)
    formulas = [f"Ga{i + 1}As{i + 2}" for i in range(1200)]
    temp = np.where(np.arange(1200) % 2 == 0, 300.0, np.nan)  # half empty
    p = _csv(
        tmp_path, "my.csv", pd.DataFrame({"formula": formulas, "gap": rng.uniform(0, 3, 1200), "temperature_K": temp})
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # nothing to report
        ds = load_table(p)
    assert len(ds) == 1200 and ds.targets == ["gap"] and ds.metadata == ["temperature_K"]
    assert ds.frame["temperature_K"].isna().sum() == 600
    # named explicitly (the CLI's --target), same result; via load_dataset too
    assert len(load_table(p, targets=["gap"])) == 1200
    assert len(load_dataset(str(p), targets="gap")) == 1200


def test_several_numeric_columns_need_a_named_target(tmp_path):
    p = _csv(tmp_path, "t.csv", pd.DataFrame({"formula": ["Si", "GaAs"], "gap_a": [1.1, 1.4], "gap_b": [1.2, 1.5]}))
    with pytest.raises(DataError, match=r"several possible target columns \['gap_a', 'gap_b'\].*targets=\[...\]"):
        load_table(p)
    ds = load_table(p, targets=["gap_b"])
    assert ds.targets == ["gap_b"] and ds.metadata == ["gap_a"]
    both = load_table(p, targets=["gap_a", "gap_b"])
    assert both.targets == ["gap_a", "gap_b"]
    with pytest.raises(DataError, match="no column 'Eg'"):
        load_table(p, targets="Eg")


def test_conflicting_duplicates_are_merged_by_the_median_and_reported(tmp_path):
    frame = pd.DataFrame(
        {"formula": ["SiO2", "NaCl", "SiO2", "GaAs", "Si2O4", "NaCl"], "gap": [8.5, 8.5, 0.0, 1.42, 3.0, 8.5]}
    )
    p = _csv(tmp_path, "dups.csv", frame)
    with pytest.warns(DataWarning) as rec:
        ds = load_table(p)
    msg = " ".join(str(w.message) for w in rec)
    assert "2 composition(s) appear on more than one row (5 rows in all)" in msg
    assert "median" in msg and "1 disagree" in msg
    assert "'Si1 O2' rows 0, 2, 4: gap 8.5 / 0 / 3 eV -> 3 (spread 8.5 eV)" in msg
    assert len(ds) == 3
    got = dict(zip(ds.frame["formula"], ds.frame["gap"]))
    assert got == {"Si1 O2": 3.0, "Na1 Cl1": 8.5, "Ga1 As1": 1.42}
    assert ds.duplicates.n_groups == 2 and len(ds.duplicates.conflicting) == 1
    assert ds.duplicates.to_dict()["groups"][0]["spread"] == {"gap": 8.5}
    assert "disagree" in ds.report()
    # other rules
    with pytest.warns(DataWarning):
        assert dict(zip(*load_table(p, duplicates="mean").frame[["formula", "gap"]].to_numpy().T))[
            "Si1 O2"
        ] == pytest.approx(11.5 / 3)
    with pytest.warns(DataWarning, match="all kept as separate rows"):
        assert len(load_table(p, duplicates="keep")) == 6
    with pytest.raises(DataError, match="duplicates must be one of"):
        load_table(p, duplicates="max")


def test_polymorphs_with_different_space_groups_are_not_merged(tmp_path):
    from pymatgen.core import Lattice, Structure

    a = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])
    b = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.9), ["Si"], [[0, 0, 0]])
    p = _csv(tmp_path, "poly.csv", pd.DataFrame({"cif": [a.to(fmt="cif"), b.to(fmt="cif")], "e_form": [0.0, 0.5]}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        ds = load_table(p)
    assert len(ds) == 2 and sorted(ds.frame["spg_num"]) == [225, 227]


def test_every_left_out_row_is_kept_and_can_be_written(tmp_path):
    n = 50
    formulas = ["Qq2"] * n + ["NaCl0"] * 5 + ["GaAs"]
    p = _csv(tmp_path, "bad.csv", pd.DataFrame({"id": range(n + 6), "formula": formulas, "gap": [1.0] * (n + 6)}))
    with pytest.warns(DataWarning) as rec:
        ds = load_table(p)
    msg = str(rec[0].message)
    assert "left out 55 of 56 rows" in msg and msg.count("row ") <= 2 * 3 + 2  # a few examples, not all 55
    assert len(ds.bad_rows.rows) == 55 and ds.bad_rows.reasons == {"unknown element": 50, "zero amount": 5}
    out = ds.bad_rows.write(tmp_path / "bad_rows.csv")
    written = pd.read_csv(out)
    assert len(written) == 55 and list(written.columns) == ["row", "id", "reason", "where", "value"]
    assert written["row"].tolist() == list(range(55))
    js = json.loads(ds.bad_rows.write(tmp_path / "bad_rows.json").read_text())
    assert js["n_bad"] == 55 and len(js["rows"]) == 55
    with pytest.raises(DataError, match="unsupported file type for the bad rows"):
        ds.bad_rows.write(tmp_path / "bad.xlsx")
    with pytest.raises(DataError, match="is a folder"):
        ds.bad_rows.write(tmp_path)


def test_semicolon_separated_file_with_decimal_commas(tmp_path):
    p = tmp_path / "eu.csv"
    p.write_text("formula;gap;temperature_K\nGaAs;1,42;300\nSi;1,12;\nCuSO4·5H2O;3,5;295\n", encoding="utf-8")
    ds = load_table(p)
    assert ds.targets == ["gap"] and ds.target("gap").tolist() == [1.42, 1.12, 3.5]
    assert ds.formulas == ["Ga1 As1", "Si1", "Cu1 H10 S1 O9"]
    assert "separator ';'" in ds.source and "decimal ','" in ds.source
    # ... or named: a wrong separator names the columns it found
    with pytest.raises(DataError, match="no formula or structure column.*sep="):
        load_table(p, sep=",")


def test_hydrates_in_tables_are_sums_and_misreads_are_refused(tmp_path):
    p = _csv(
        tmp_path,
        "h.csv",
        pd.DataFrame({"formula": ["CuSO4.5H2O", "Fe0.0O3", "H1e-400O", "Fe0.5H2O"], "gap": [2.0, 2.0, 2.0, 2.0]}),
    )
    with pytest.warns(DataWarning, match="left out 3 of 4"):
        ds = load_table(p)
    assert ds.formulas == ["Cu1 H10 S1 O9"]
    assert ds.bad_rows.reasons == {"zero amount": 2, "ambiguous formula": 1}


def test_structure_cells_report_their_reason(tmp_path):
    from pymatgen.core import Lattice, Structure

    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])
    two = si.to(fmt="cif") + "\n" + si.to(fmt="cif").replace("data_Si", "data_Si2")
    p = _csv(tmp_path, "s.csv", pd.DataFrame({"cif": [si.to(fmt="cif"), two, "garbage", None], "e_form": [0, 0, 0, 0]}))
    with pytest.warns(DataWarning, match="left out 3 of 4"):
        ds = load_table(p)
    reasons = {r["reason"] for r in ds.bad_rows.rows}
    assert reasons == {"unusable structure", "unreadable structure"}
    assert any("2 CIF data blocks in one cell" in r["where"] for r in ds.bad_rows.rows)


def test_named_dataset_targets_are_checked():
    with pytest.raises(DataError, match="expt_gap: no target 'gap'"):
        load_dataset("expt_gap", targets=["gap"])
