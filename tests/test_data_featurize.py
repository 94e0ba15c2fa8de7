"""Featurization and its on-disk cache."""

import numpy as np
import pytest
from pymatgen.core import Composition, Lattice, Structure

from matmtl.data import Featurizer, load_dataset
from matmtl.data import featurize as featurize_mod
from matmtl.errors import DataError
from matmtl.io import cache_dir


def test_features_of_formulas_compositions_structures():
    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])
    f = Featurizer()(["Fe2O3", Composition("NaCl"), si])
    assert f.z.shape == (3, 10) and f.frac.dtype == np.float32
    assert f.z[0, :2].tolist() == [8, 26] and np.allclose(f.frac[0, :2], [0.6, 0.4])
    assert f.z[2, 0] == 14 and f.frac[2, 0] == 1.0
    assert f.spg.tolist() == [0, 0, 227]  # compositions: symmetry unknown
    assert np.allclose(f.frac.sum(1), 1.0)


def test_featurizer_errors():
    with pytest.raises(DataError, match="empty input"):
        Featurizer()([])
    with pytest.raises(DataError, match="input 1: unknown element"):
        Featurizer()(["NaCl", "Xx"])
    with pytest.raises(DataError, match="at most 2"):
        Featurizer(max_elements=2)(["NaClO3"])
    with pytest.raises(DataError, match="2 space groups for 1 inputs"):
        Featurizer()(["NaCl"], spg=[1, 2])


def test_cache_second_run_skips_work(monkeypatch):
    ds = load_dataset("expt_gap")
    fz = Featurizer()
    first = ds.features(fz)
    files = list((cache_dir() / "features").glob("*.npz"))
    assert len(files) == 1

    def boom(*a, **k):
        raise AssertionError("featurization ran again despite the cache")

    monkeypatch.setattr(featurize_mod.Featurizer, "_compute", boom)
    second = ds.features(fz)
    assert np.array_equal(first.z, second.z) and np.array_equal(first.frac, second.frac)
    # other settings or other content: a different cache key
    with pytest.raises(AssertionError, match="ran again"):
        ds.features(Featurizer(max_elements=12))
    with pytest.raises(AssertionError, match="ran again"):
        ds.subset(np.arange(1000)).features(fz)


def test_damaged_cache_entry_is_recomputed():
    ds = load_dataset("expt_gap").subset(np.arange(600))
    first = ds.features()
    (entry,) = (cache_dir() / "features").glob("*.npz")
    entry.write_bytes(b"not an npz")
    again = ds.features()
    assert np.array_equal(first.z, again.z)


def test_mp_space_groups_come_from_the_table():
    ds = load_dataset("mp").subset(np.arange(600))
    f = ds.features()
    assert np.array_equal(f.spg, ds.frame["spg_num"].to_numpy())


@pytest.mark.filterwarnings("ignore::UserWarning")  # pymatgen's notes on the CIFs it reads
def test_cif_structures_featurize_with_symmetry():
    ds = load_dataset("mp_cgcnn").subset(np.arange(3))
    f = ds.features()
    assert (f.spg > 0).all() and (f.z[:, 0] > 0).all()
    with pytest.raises(DataError, match="unreadable CIF"):
        Featurizer()(["data_x\n_cell_length_a 1\nnonsense"])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_symmetry_agrees_with_spglib_on_mp_crystals():
    # moyopy does the search; spglib (pymatgen) is the reference MP used for spg_num
    from pymatgen.core import Structure

    from matmtl.data.featurize import _spglib_symmetry, crystal_system, symmetry_of

    ds = load_dataset("mp_cgcnn").subset(np.arange(40))
    for cif in ds.frame["cif"]:
        s = Structure.from_str(cif, fmt="cif")
        assert symmetry_of(s) == _spglib_symmetry(s, 0.1)
    assert [crystal_system(n) for n in (0, 1, 2, 3, 15, 16, 74, 75, 142, 143, 167, 168, 194, 195, 230)] == [
        "unknown",
        "triclinic",
        "triclinic",
        "monoclinic",
        "monoclinic",
        "orthorhombic",
        "orthorhombic",
        "tetragonal",
        "tetragonal",
        "trigonal",
        "trigonal",
        "hexagonal",
        "hexagonal",
        "cubic",
        "cubic",
    ]
    with pytest.raises(ValueError, match="0..230"):
        crystal_system(231)


def test_symmetry_falls_back_to_spglib_when_moyopy_refuses(monkeypatch):
    import moyopy
    from pymatgen.core import Lattice, Structure

    from matmtl.data.featurize import symmetry_of

    def refuse(*args, **kwargs):
        raise RuntimeError("moyopy cannot handle this cell")

    monkeypatch.setattr(moyopy, "MoyoDataset", refuse)
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert symmetry_of(nacl) == (225, "cubic")
