"""The pymatgen-free formula path (matmtl.data.composition, matmtl.data.periodic) gives
exactly what pymatgen gives: element amounts, fractions, formulas and features, on every
formula of the mirror's experimental sets, samples of its DFT sets and hand-picked odd ones."""

import csv
import math
import re
import warnings

import numpy as np
import pytest
from pymatgen.core import Composition, Element

from matmtl.data.composition import ElementAmounts, composition_of_z, is_pymatgen, parse_like_pymatgen
from matmtl.data.featurize import Featurizer
from matmtl.data.formula import check_formula, parse_formula, read_composition, read_formula
from matmtl.data.periodic import SYMBOLS, X_OF, Z_OF, symbol
from matmtl.data.validate import beyond_max_z, parse_composition
from matmtl.errors import DataError

ODD = [
    "Fe2O3", "Ca(OH)2", "K4[Fe(CN)6]", "{Fe}2O3", "Y3N@C80", "Fe2 O3", "Li0.5CoO2", "Ba0.333333Sr0.666667TiO3",
    "Na0.33333333333333V2O5", "XeF2", "KrF2", "RnF2", "HeNe", "LiO", "NaO2", "H2O2", "HO", "O2", "N", "H", "Cl2",
    "(NH4)2SO4", "Mg(ClO4)2", "Ca3(PO4)2", "CH3NH3PbI3", "Fe1e-5O", "Fe.5O", "Fe2O3.5", "Og", "Rf2O", "Li4Fe4P4O16",
    "Si0.000000001O2", "C60", "Cs2AgBiBr6", "LiFePO4", "Al2(SO4)3", "Fe((OH)2)3", "Fe(OH", "Fe2O3)", "D2O", "Xx2O",
    "Uue", "nacl", "2", "", " ", "Fe-1O", "Fe*2", "Fe2O3*", "Fe/O", "GaAs0.5P0.5", "In0.53Ga0.47As", "Zn0.99Mn.01O",
]  # fmt: skip


def _rows(path, column, every=1):
    with open(path, newline="") as fh:
        return [r[column] for i, r in enumerate(csv.DictReader(fh)) if i % every == 0]


@pytest.fixture(scope="module")
def formulas(mirror):
    crab = mirror / "crabnet" / "data"
    return sorted(
        set(
            ODD
            + _rows(crab / "matbench" / "expt_gap.csv", "formula")
            + _rows(mirror / "roost" / "data" / "datasets" / "expt-bandgaps.csv", "composition")
            + _rows(crab / "matbench" / "mp_e_form.csv", "formula", every=10)
            + _rows(crab / "benchmark_data" / "OQMD_Bandgap" / "test.csv", "formula", every=10)
        )
    )


def _pymatgen(text):
    """pymatgen's Composition of ``text``, or None where it refuses it."""
    try:
        return Composition(text)
    except Exception:
        return None


def test_the_periodic_table_is_pymatgens():
    assert len(SYMBOLS) == 118 and symbol(1) == "H" and symbol(118) == "Og"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen: "no Pauling electronegativity for He"
        for sym, z in Z_OF.items():
            el = Element(sym)
            assert el.Z == z and Element.from_Z(z).symbol == sym
            assert (math.isnan(el.X) and math.isnan(X_OF[sym])) or el.X == X_OF[sym], sym
            assert Composition(sym).elements == [el]  # pymatgen reads every symbol as that element


def test_amounts_and_formulas_are_pymatgens(formulas):
    compared = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for text in formulas:
            mine, ref = parse_like_pymatgen(text), _pymatgen(text)
            if mine is None:  # left to pymatgen: it refuses, or a symbol is not an element H..Og (D, Xx)
                assert ref is None or set(re.findall(r"[A-Z][a-z]*", text)) - set(Z_OF), text
                continue
            assert ref is not None, text
            got = ElementAmounts(mine)
            assert got.amounts == ref.get_el_amt_dict() and list(got.amounts) == list(ref.get_el_amt_dict()), text
            assert got.num_atoms == ref.num_atoms, text
            assert got.fractions() == ref.fractional_composition.get_el_amt_dict(), text
            assert got.formula == ref.formula, text
            assert got.reduced_formula == ref.reduced_formula, text
            assert got.integer_formula(1000) == ref.get_integer_formula_and_factor(max_denominator=1000)[0], text
            compared += 1
    assert compared > 20000


def test_reading_a_formula_gives_parse_compositions_answer(formulas):
    """read_composition (no pymatgen) and parse_composition (pymatgen) agree: the same
    amounts, or the same refusal with the same message."""
    for text in formulas:
        try:
            ref = parse_composition(text, "row 3")
        except DataError as exc:
            with pytest.raises(DataError) as info:
                read_composition(text, "row 3")
            assert str(info.value) == str(exc), text
            continue
        got = read_composition(text, "row 3")
        assert got.amounts == ref.get_el_amt_dict() and got.formula == ref.formula, text
        assert parse_formula(text) == read_formula(text).to_pymatgen(), text


def test_features_of_a_formula_are_the_same_either_way(formulas):
    usable = [f for f in formulas if check_formula(f)[1] is None and not beyond_max_z(check_formula(f)[0])]
    light = [read_composition(f) for f in usable]
    fz = Featurizer(cache=False, max_elements=12)
    a, b = fz(usable), fz(light)
    np.testing.assert_array_equal(a.z, b.z)
    np.testing.assert_array_equal(a.frac, b.frac)


def test_from_pymatgen_keeps_pymatgens_answers():
    comp = Composition({"Fe": 0.5, "O": 0.25})
    got = ElementAmounts.from_pymatgen(comp)
    assert got.to_pymatgen() is comp and got.reduced_formula == comp.reduced_formula
    assert got.integer_formula(1000) == "Fe2O" and got.symbols == ["Fe", "O"] and got.z == [26, 8]
    assert is_pymatgen(comp, "Composition") and not is_pymatgen("Fe2O3", "Composition", "IStructure")


def test_training_domain_formulas_are_pymatgens():
    z, frac = np.array([[3, 8, 0], [26, 8, 15]]), np.array([[0.5, 0.25, 0], [0.142857, 0.571429, 0.285714]])
    for zi, fi in zip(z, frac):
        ref = Composition({Element.from_Z(int(a)).symbol: float(b) for a, b in zip(zi, fi) if a > 0})
        assert composition_of_z(zi, fi).integer_formula(1000) == ref.get_integer_formula_and_factor(1000)[0]
