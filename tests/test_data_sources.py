"""The online path (matminer's load_dataset) tested offline: the test writes small
files in matminer's own format into a data home and points matminer at it."""

import gzip
import json

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from matmtl.data import load_dataset
from matmtl.errors import DatasetNotFound


def _write_matminer(path, columns, rows):
    # matminer's json.gz: a pandas 'split' frame, pymatgen objects as monty dicts
    payload = {"columns": columns, "index": list(range(len(rows))), "data": rows}
    with gzip.open(path, "wt") as fh:
        json.dump(payload, fh)


def test_matminer_path_compositions(tmp_path, monkeypatch):
    _write_matminer(
        tmp_path / "matbench_expt_gap.json.gz",
        ["composition", "gap expt"],
        [["Si1", 1.12], ["Ga1 As1", 1.42], ["Cu1", 0.0], ["Zz9", 1.0]],
    )
    monkeypatch.setenv("MATMINER_DATA", str(tmp_path))
    with pytest.warns(UserWarning):  # 1 bad row; 4 rows where matbench has 4604
        ds = load_dataset("expt_gap", source="matminer")
    assert ds.source == "matminer:matbench_expt_gap"
    assert ds.formulas == ["Si1", "Ga1 As1", "Cu1"]
    assert np.allclose(ds.target(), [1.12, 1.42, 0.0])
    assert ds.bad_rows.reasons["unknown element"] == 1


def test_matminer_path_structures_get_symmetry(tmp_path, monkeypatch):
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])
    _write_matminer(
        tmp_path / "matbench_mp_e_form.json.gz", ["structure", "e_form"], [[nacl.as_dict(), -2.1], [si.as_dict(), 0.0]]
    )
    monkeypatch.setenv("MATMINER_DATA", str(tmp_path))
    with pytest.warns(UserWarning, match="expected 132752"):
        ds = load_dataset("mp", source="matminer")
    assert ds.frame["spg_num"].tolist() == [225, 227]
    assert ds.frame["crys_sys"].tolist() == ["cubic", "cubic"]
    assert ds.formulas == ["Na4 Cl4", "Si8"]


def test_matminer_file_in_data_dir_is_used_without_download(tmp_path):
    _write_matminer(tmp_path / "matbench_mp_gap.json.gz", ["composition", "gap pbe"], [["Si1", 0.6], ["Cu1", 0.0]])
    with pytest.warns(UserWarning, match="expected 106113"):
        ds = load_dataset("mp_gap", data_dir=tmp_path)
    assert ds.targets == ["gap_pbe"] and len(ds) == 2 and ds.source.endswith("matbench_mp_gap.json.gz")


def test_matminer_missing_file_without_download(tmp_path, monkeypatch):
    from matmtl.data.registry import get_spec
    from matmtl.data.sources import read_matminer

    with pytest.raises(DatasetNotFound, match="matminer could not provide"):
        read_matminer(get_spec("expt_gap"), data_home=tmp_path, download=False)
    with pytest.raises(DatasetNotFound, match="matminer does not distribute"):
        read_matminer(get_spec("mp_cgcnn"))


def test_bad_source_argument():
    with pytest.raises(ValueError, match="source must be"):
        load_dataset("expt_gap", source="web")
