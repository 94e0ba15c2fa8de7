"""scripts/textbook_gaps.py: every crystal it builds has the space group it names, and the
shipped model answers each one from its structure and from its formula (gaps >= 0, eV)."""

from __future__ import annotations

import pytest
from _scripts import load_script

SPG = {"Fd-3m": 227, "F-43m": 216, "P6_3mc": 186, "Fm-3m": 225}


@pytest.fixture(scope="module")
def script():
    return load_script("textbook_gaps")


def test_the_crystals_have_their_space_groups(script):
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    for name, (spg, *_rest) in script.CRYSTALS.items():
        s = script.structure(name)
        assert s.composition.reduced_formula == name
        assert SpacegroupAnalyzer(s, symprec=0.01).get_space_group_number() == SPG[spg], name


def test_the_shipped_model_answers_every_crystal(script):
    from matmtl import zoo

    res = script.measure()
    assert set(res["crystals"]) == set(script.CRYSTALS) and res["unit"] == "eV"
    assert res["model"] == zoo.DEFAULT_MODEL  # by name, even where a run of one's own exists
    for name, r in res["crystals"].items():
        assert r["structure"] >= 0 and r["formula"] >= 0 and r["spg_num"] == SPG[script.CRYSTALS[name][0]]
        assert "pure element" in r["trust"] or len(script.CRYSTALS[name][2]) > 1
    assert 0 <= res["structure_better_or_equal"] <= len(script.CRYSTALS)
    assert "| MAE |" in script.table(res)
