"""A composition without pymatgen, for reading formula strings fast (:class:`ElementAmounts`).

``matmtl.predict("GaN")`` needs a composition's element amounts, fractions and formulas,
not pymatgen's 0.1 s import. This module computes them the way pymatgen computes them:

* :func:`parse_like_pymatgen` is pymatgen's own formula algorithm (``Composition(text)``:
  brackets expanded in place, amounts summed per symbol, amounts under 1e-8 dropped), for
  formulas of the elements H..Og. Anything else (an unknown symbol, a malformed string)
  gives None, and the caller asks pymatgen itself, for its answer and its message.
* ``formula``, ``reduced_formula`` and ``integer_formula`` follow pymatgen's: elements by
  electronegativity, a trailing polyanion in brackets, special formulas such as Li2O2.

An ElementAmounts made from a pymatgen object (:meth:`ElementAmounts.from_pymatgen`) keeps
pymatgen's own answers. tests/test_formula_light.py compares all of this with pymatgen on
every formula of the datasets, so a pymatgen release that changes them is noticed.
"""

from __future__ import annotations

import math
import re
import sys
from collections import defaultdict
from typing import Mapping

from .periodic import SYMBOLS, X_OF, Z_OF

#: pymatgen's ``Composition.amount_tolerance``: smaller amounts are dropped
AMOUNT_TOLERANCE = 1e-8
#: pymatgen's ``Composition.special_formulas``: reduced formulas it does not reduce fully
SPECIAL_FORMULAS = {
    "LiO": "Li2O2",
    "NaO": "Na2O2",
    "KO": "K2O2",
    "HO": "H2O2",
    "CsO": "Cs2O2",
    "RbO": "Rb2O2",
    "O": "O2",
    "N": "N2",
    "F": "F2",
    "Cl": "Cl2",
    "H": "H2",
}
_INVALID = re.compile(r"[\s\d.*/]*$")
_GROUP = re.compile(r"([A-Z][a-z]*)\s*([-*\.e\d]*)")
_PAREN = re.compile(r"\(([^\(\)]+)\)\s*([\.e\d]*)")
_BRACKETS = str.maketrans("[]{}", "()()")


def parse_like_pymatgen(text: str) -> dict[str, float] | None:
    """symbol -> amount as ``pymatgen.core.Composition(text)`` holds them, or None where
    pymatgen would refuse ``text`` or hold something other than the elements H..Og."""
    if _INVALID.match(text):
        return None
    formula = text.replace("@", "").translate(_BRACKETS)
    try:
        match = _PAREN.search(formula)
        while match:
            factor = float(match[2]) if match[2] != "" else 1.0
            unit = _symbol_amounts(match[1], factor)
            formula = formula.replace(match.group(), "".join(f"{el}{amt}" for el, amt in unit.items()), 1)
            match = _PAREN.search(formula)
        amounts = _symbol_amounts(formula, 1.0)
    except ValueError:
        return None
    if any(sym not in Z_OF for sym in amounts) or any(amt < -AMOUNT_TOLERANCE for amt in amounts.values()):
        return None
    return amounts


def _symbol_amounts(form: str, factor: float) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for match in _GROUP.finditer(form):
        out[match[1]] += (float(match[2]) if match[2].strip() != "" else 1.0) * factor
        form = form.replace(match.group(), "", 1)
    if form.strip():
        raise ValueError(f"{form} is an invalid formula")
    return out


class ElementAmounts:
    """Element symbol -> amount, in input order, for the elements H..Og: what matmtl needs
    of a pymatgen ``Composition``, with the same numbers and formulas."""

    __slots__ = ("amounts", "num_atoms", "_pmg")

    def __init__(self, amounts: Mapping[str, float]):
        """As ``pymatgen.core.Composition(amounts)``: amounts under 1e-8 are dropped, a
        negative amount or an unknown symbol is a ValueError."""
        self.amounts: dict[str, float] = {}
        self.num_atoms: float = 0
        self._pmg = None
        for sym, amt in amounts.items():
            if sym not in Z_OF:
                raise ValueError(f"unknown element {sym!r}")
            if amt < -AMOUNT_TOLERANCE:
                raise ValueError(f"negative amount {amt!r} of {sym}")
            if abs(amt) >= AMOUNT_TOLERANCE:
                self.amounts[sym] = amt
                self.num_atoms += abs(amt)

    @classmethod
    def parse(cls, text: str) -> "ElementAmounts":
        """``pymatgen.core.Composition(text)``, without pymatgen where :func:`parse_like_pymatgen` can."""
        amounts = parse_like_pymatgen(text)
        if amounts is not None:
            return cls(amounts)
        from pymatgen.core import Composition

        return cls.from_pymatgen(Composition(text))

    @classmethod
    def from_pymatgen(cls, comp) -> "ElementAmounts":
        """From a pymatgen Composition of elements (its formulas and fractions are its own)."""
        out = cls(comp.get_el_amt_dict())
        out._pmg = comp
        return out

    def to_pymatgen(self):
        """The pymatgen Composition (imports pymatgen)."""
        if self._pmg is not None:
            return self._pmg
        from pymatgen.core import Composition

        return Composition(self.amounts)

    def __len__(self) -> int:
        return len(self.amounts)

    def __repr__(self) -> str:
        return f"ElementAmounts({self.formula!r})"

    @property
    def symbols(self) -> list[str]:
        return list(self.amounts)

    @property
    def z(self) -> list[int]:
        """Atomic numbers, in the order of :attr:`symbols`."""
        return [Z_OF[s] for s in self.amounts]

    def fractions(self) -> dict[str, float]:
        """symbol -> share of the atoms (pymatgen's ``fractional_composition.get_el_amt_dict()``)."""
        if self._pmg is not None:
            return self._pmg.fractional_composition.get_el_amt_dict()
        shares = {s: a / self.num_atoms for s, a in self.amounts.items()}
        return {s: v for s, v in shares.items() if abs(v) >= AMOUNT_TOLERANCE}

    @property
    def formula(self) -> str:
        """pymatgen's ``formula``: e.g. "Li4 Fe4 P4 O16", elements by electronegativity."""
        if self._pmg is not None:
            return self._pmg.formula
        return " ".join(
            f"{s}{_format_amount(self.amounts[s], ignore_ones=False)}" for s in _by_electronegativity(self.amounts)
        )

    @property
    def reduced_formula(self) -> str:
        """pymatgen's ``reduced_formula``: e.g. "LiFePO4", "Li2O2", "Fe0.5O0.5" (non-integer amounts)."""
        if self._pmg is not None:
            return self._pmg.reduced_formula
        if not all(abs(v - round(v)) < AMOUNT_TOLERANCE for v in self.amounts.values()):
            return self.formula.replace(" ", "")
        formula, _ = _reduce({s: round(v) for s, v in self.amounts.items()})
        return SPECIAL_FORMULAS.get(formula, formula)

    def integer_formula(self, max_denominator: int = 10000) -> str:
        """pymatgen's ``get_integer_formula_and_factor(max_denominator)[0]``: "Li0.5O0.25" -> "Li2O"."""
        if self._pmg is not None:
            return self._pmg.get_integer_formula_and_factor(max_denominator=max_denominator)[0]
        values = list(self.amounts.values())
        gcd = _gcd_float(values, 1 / max_denominator)
        formula, _ = _reduce({s: round(v / gcd) for s, v in self.amounts.items()})
        return SPECIAL_FORMULAS.get(formula, formula)


def is_pymatgen(obj, *names: str) -> bool:
    """True if ``obj`` is an instance of one of the ``pymatgen.core`` classes ``names``.
    Never imports pymatgen: while it is not imported, nothing can be one."""
    core = sys.modules.get("pymatgen.core")
    return core is not None and isinstance(obj, tuple(getattr(core, n) for n in names))


def composition_of_z(z, amounts) -> ElementAmounts:
    """An ElementAmounts from atomic numbers and their amounts (padding z = 0 skipped)."""
    return ElementAmounts({SYMBOLS[int(a) - 1]: float(b) for a, b in zip(z, amounts) if a > 0})


def _by_electronegativity(symbols) -> list[str]:
    """pymatgen's order of elements in a formula: electronegativity (none: last), then symbol."""
    return sorted(symbols, key=lambda s: [math.inf if math.isnan(X_OF[s]) else X_OF[s], s])


def _reduce(sym_amt: Mapping[str, float]) -> tuple[str, int]:
    """pymatgen's ``reduce_formula`` (without IUPAC ordering): (reduced formula, factor)."""
    syms = [s for s in _by_electronegativity(sym_amt) if abs(sym_amt[s]) > AMOUNT_TOLERANCE]
    factor = 1
    if all(int(v) == v for v in sym_amt.values()):
        factor = abs(math.gcd(*(int(v) for v in sym_amt.values())))
    polyanion = []
    if len(syms) >= 3 and X_OF[syms[-1]] - X_OF[syms[-2]] < 1.65:
        poly_form, poly_factor = _reduce({syms[i]: sym_amt[syms[i]] / factor for i in (-2, -1)})
        if poly_factor != 1:
            polyanion.append(f"({poly_form}){poly_factor}")
    syms = syms[: len(syms) - 2 if polyanion else len(syms)]
    parts = [f"{s}{_format_amount(sym_amt[s] * 1.0 / factor)}" for s in syms]
    return "".join(parts + polyanion), factor


def _format_amount(value: float, ignore_ones: bool = True, tol: float = 1e-8):
    """pymatgen's ``formula_double_format``: "" for 1 (if ``ignore_ones``), an integer
    when within ``tol`` of one, else the value rounded to 8 decimals."""
    if ignore_ones and math.isclose(value, 1, abs_tol=tol):
        return ""
    if math.isclose(value, round(value), abs_tol=tol, rel_tol=0):
        return round(value)
    return round(value, 8)


def _gcd_float(numbers: list[float], tol: float) -> float:
    """monty's ``gcd_float``: the greatest common divisor of floats, within ``tol``."""

    def pair(a: float, b: float) -> float:
        while b > tol:
            a, b = b, a % b
        return a

    n = numbers[0]
    for v in numbers[1:]:
        n = pair(n, v)
    return n


__all__ = ["AMOUNT_TOLERANCE", "ElementAmounts", "composition_of_z", "is_pymatgen", "parse_like_pymatgen"]


def composition_keys(z, frac) -> list[tuple]:
    """A hashable key per row for its reduced composition (elements with fractions): rows of
    atomic numbers ``z`` (0 padding) and their fractions ``frac``, as featurized."""
    import numpy as np

    z = np.asarray(z)
    fr = np.asarray(frac, dtype=np.float32).astype(np.float64)
    share = np.round(fr / fr.sum(axis=1, keepdims=True), 4)
    return [tuple(sorted(zip(zr[zr > 0].tolist(), sr[zr > 0].tolist()))) for zr, sr in zip(z, share)]
