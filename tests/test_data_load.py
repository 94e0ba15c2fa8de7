"""Named datasets load from the offline mirror with the documented row counts and columns."""

import json
from pathlib import Path

import pytest

from matmtl.data import REGISTRY, get_spec, load_dataset, manifest
from matmtl.errors import DataError, DatasetNotFound

EXPECTED = {"mp": 132752, "mp_gap": 106113, "expt_gap": 4604, "mp_cgcnn": 36737, "oqmd_gap": 341608}


@pytest.mark.parametrize("name,rows", EXPECTED.items())
def test_named_dataset_rows(name, rows):
    ds = load_dataset(name)
    assert len(ds) == rows
    assert ds.bad_rows.n_bad == 0
    assert ds.frame["id"].is_unique
    for t in ds.targets:
        assert ds.frame[t].notna().all()


def test_columns_units_and_aliases():
    mp = load_dataset("mp_e_form")
    assert mp.name == "mp" and mp.targets == ["e_form"] and mp.units == {"e_form": "eV/atom"}
    assert {"spg_num", "crys_sys"} <= set(mp.frame.columns)
    assert mp.frame.loc[0, "formula"] == "Pt1 C1" and mp.frame.loc[0, "spg_num"] == 221
    gap = load_dataset("EXPT_GAP")
    assert gap.targets == ["gap_expt"] and (gap.target() >= 0).all()
    assert abs(gap.summary()["targets"]["gap_expt"]["fraction_zero"] - 0.532) < 0.01
    cg = load_dataset("mp_cgcnn")
    assert cg.frame.loc[0, "id"].startswith("mp-") and cg.frame.loc[0, "cif"].startswith("#")
    oq = load_dataset("OQMD_bandgap")  # CrabNet's train, val and test files, in that order
    assert oq.name == "oqmd_gap" and oq.targets == ["gap_oqmd"] and oq.units == {"gap_oqmd": "eV"}
    assert oq.frame.loc[0, "id"] == "train:0" and oq.frame["id"].iloc[-1] == "test:51241"
    assert (oq.target() >= 0).all() and abs(oq.summary()["targets"]["gap_oqmd"]["fraction_zero"] - 0.934) < 0.001
    assert not get_spec("oqmd_gap").official_folds and get_spec("mp").official_folds


def test_a_crabnet_file_with_other_columns_is_a_clear_error(tmp_path):
    base = tmp_path / "crabnet/data/benchmark_data/OQMD_Bandgap"
    base.mkdir(parents=True)
    (base / "train.csv").write_text("formula,target\nGaAs,0.5\n")
    (base / "val.csv").write_text("formula,gap\nSi,0.6\n")
    (base / "test.csv").write_text("formula,target\nNaCl,5.0\n")
    with pytest.raises(DataError, match=r"val.csv: expected the columns formula,target; found \['formula', 'gap'\]"):
        load_dataset("oqmd_gap", data_dir=tmp_path)


def test_unknown_dataset_name():
    with pytest.raises(DataError, match="unknown dataset 'nosuch'.*expt_gap"):
        get_spec("nosuch")


def test_explicit_data_dir_is_exclusive(tmp_path, monkeypatch):
    monkeypatch.setenv("MATMTL_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetNotFound, match="expt_gap: not found in"):
        load_dataset("expt_gap")
    with pytest.raises(DatasetNotFound, match="does not exist"):
        load_dataset("expt_gap", data_dir=tmp_path / "missing")


def test_explicit_data_dir_with_mirror_layout(mirror, tmp_path):
    # a data dir that holds the mirror layout is used as is (here: a symlinked tree)
    target = tmp_path / "matbench"
    target.symlink_to(mirror / "matbench")
    ds = load_dataset("expt_gap", data_dir=tmp_path)
    assert len(ds) == 4604 and ds.source == str(tmp_path)


def test_manifest_in_repo_is_current():
    repo_manifest = Path(__file__).resolve().parents[1] / "data" / "manifest.json"
    assert json.loads(repo_manifest.read_text()) == json.loads(json.dumps(manifest())), (
        "data/manifest.json is stale: run `matmtl data manifest --write data/manifest.json`"
    )
    for entry in manifest()["datasets"]:
        assert entry["licence"] and entry["citation"] and entry["targets"] and entry["source"]
    assert set(REGISTRY) == {e["name"] for e in manifest()["datasets"]}
