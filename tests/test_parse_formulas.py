"""Formula parsing: hydrates read as sums or refused by name, zero and underflowing amounts
refused, never a silent misread; inputs of the wrong type get a TypeError naming them."""

import pytest
from pymatgen.core import Composition, Lattice, Structure

from matmtl.data import parse_composition
from matmtl.data.formula import FormulaError, parse_formula
from matmtl.errors import DataError, InputTypeError


@pytest.mark.parametrize(
    "text,expected",
    [
        ("CuSO4.5H2O", "CuH10SO9"),
        ("CuSO4·5H2O", "CuH10SO9"),
        ("CuSO4*5H2O", "CuH10SO9"),
        ("CuSO4 · 5 H2O", "CuH10SO9"),
        ("CuSO4•5H2O", "CuH10SO9"),
        ("MgSO4.H2O", "MgH2SO5"),
        ("KAl(SO4)2.12H2O", "KAlH24(SO10)2"),
        ("Na2CO3·10H2O", "Na2H20CO13"),
        ("NaCl.2H2O", "NaH4ClO2"),
        ("CuSO4·5H2O·NH3", "CuH13SNO9"),
        ("Fe₂O₃", "Fe2O3"),
        ("Ba0.5Sr0.5TiO3", "BaSrTi2O6"),
        ("Li1.5Al0.5Ge1.5(PO4)3", "Li3AlGe3P6O24"),
        ("Fe2O3.5", "Fe4O7"),
        ("2H2O", "H2O"),
    ],
)
def test_good_formulas_read_as_meant(text, expected):
    got = parse_formula(text).fractional_composition
    assert got.almost_equals(Composition(expected).fractional_composition), (text, got)
    assert parse_composition(text).fractional_composition.almost_equals(got)


def test_hydrate_is_the_sum_not_a_decimal():
    c = parse_formula("CuSO4.5H2O")
    assert c == Composition("CuSO4") + 5 * Composition("H2O")
    assert c.formula == "Cu1 H10 S1 O9"


@pytest.mark.parametrize(
    "text,kind,detail",
    [
        ("NaCl0", "zero amount", "amount '0' of Cl is 0"),
        ("Fe0.0O3", "zero amount", "amount '0.0' of Fe is 0"),
        ("H1e-400O", "zero amount", "amount '1e-400' of H underflows to 0"),
        ("H1e-30O", "zero amount", "amount of H is too small"),
        ("Fe1e-7O", "zero amount", "Fe below 1e-06 of the atoms"),
        ("Fe2(SO4)0Na", "zero amount", "of a bracketed group is 0"),
        ("H1e400", "unparsable formula", "is not finite"),
        ("Fe0.5H2O", "ambiguous formula", "reads as a decimal amount or as a hydrate"),
        ("CuSO4·xH2O", "unparsable formula", "unstated amount 'x'"),
        ("CuSO4·", "unparsable formula", "empty part"),
        ("·H2O", "unparsable formula", "empty part"),
        ("CuSO4·0H2O", "zero amount", "count '0'"),
        ("", "empty formula", ""),
        ("Xx2O", "unknown element", "Xx"),
        ("nacl", "unparsable formula", ""),
    ],
)
def test_misreads_are_refused_by_name(text, kind, detail):
    with pytest.raises(FormulaError) as info:
        parse_formula(text)
    assert info.value.kind == kind and detail in str(info.value)
    with pytest.raises(DataError, match=f"row 7: {kind}"):
        parse_composition(text, "row 7")


@pytest.mark.parametrize(
    "value,name",
    [(None, "NoneType"), (3, "int"), (2.5, "float"), ({"a": 1}, "dict"), (b"NaCl", "bytes"), (["NaCl"], "list")],
)
def test_wrong_types_are_type_errors_naming_the_input(value, name):
    with pytest.raises(TypeError, match=f"input 4: expected a formula string or Composition, got {name}") as info:
        parse_composition(value, "input 4")
    assert isinstance(info.value, InputTypeError) and isinstance(info.value, DataError)


def test_composition_objects_are_checked_too():
    assert parse_composition(Composition("Fe2O3")).formula == "Fe2 O3"
    with pytest.raises(DataError, match="zero amount"):
        parse_composition(Composition({"Fe": 1e-7, "O": 1}))


def test_structures_with_overlapping_atoms_or_no_volume_are_refused():
    from matmtl.data import check_structure

    s = Structure(Lattice.cubic(4), ["Na", "Cl"], [[0, 0, 0], [0.01, 0, 0]])
    with pytest.raises(DataError, match=r"atoms on top of each other: sites 0 \(Na\) and 1 \(Cl\) are 0.040 Å apart"):
        check_structure(s, "cell 2")
    flat = Structure(Lattice([[4, 0, 0], [0, 4, 0], [0, 0, 1e-9]]), ["Na"], [[0, 0, 0]])
    with pytest.raises(DataError, match="degenerate lattice"):
        check_structure(flat)
