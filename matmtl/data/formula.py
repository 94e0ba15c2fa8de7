"""Reading chemical formulas: pymatgen's grammar, plus what it does not check, without
importing pymatgen (:mod:`matmtl.data.composition` reads formulas as pymatgen does; pymatgen
itself is asked only about a formula outside that, for its answer and its message).

pymatgen reads ``CuSO4.5H2O`` as CuH2SO5.5 (the ``.5`` becomes a decimal amount),
drops elements whose amount is zero (``NaCl0`` becomes Na, ``H1e-400O`` becomes O),
and refuses ``CuSO4·5H2O``. Here:

* hydrate / adduct notation is read as the sum of its parts: ``CuSO4·5H2O``,
  ``CuSO4*5H2O`` and ``CuSO4.5H2O`` are all CuSO4 + 5 H2O = CuH10SO9. A ``.`` is an
  adduct separator only when what follows it is a known adduct molecule (H2O, NH3, ...;
  see :data:`ADDUCTS`) with an optional count, and only when the part before it has at
  least two elements; ``Fe0.5H2O`` (one element before the dot) is ambiguous and refused
  by name. An unstated count (``·xH2O``) is refused.
* an amount that is zero, underflows to zero (``1e-400``), is not finite, or is below
  :data:`MIN_FRACTION` of the atoms is refused, naming the element.
* Unicode subscript digits (``Fe₂O₃``) are read as digits.

:func:`read_formula` gives a pymatgen-free :class:`~matmtl.data.composition.ElementAmounts`
(what ``matmtl.predict`` uses), :func:`parse_formula` the same composition as a pymatgen
``Composition``; :func:`read_composition` is ``parse_composition`` for a formula string
(its checks, messages and amounts) without pymatgen.
"""

from __future__ import annotations

import math
import re
import warnings
from functools import lru_cache
from typing import TYPE_CHECKING

from ..errors import DataError
from .composition import ElementAmounts, parse_like_pymatgen
from .periodic import Z_OF

if TYPE_CHECKING:
    from pymatgen.core import Composition

#: molecules written after a "." or "·" in hydrate / adduct notation
ADDUCTS = (
    "H2O",
    "D2O",
    "NH3",
    "H2O2",
    "HF",
    "HCl",
    "HBr",
    "HI",
    "CO2",
    "SO2",
    "CH3OH",
    "C2H5OH",
    "CH3CN",
    "C6H6",
    "C5H5N",
    "C4H8O",
    "C3H6O",
    "CH2Cl2",
    "CHCl3",
    "DMF",
    "DMSO",
)
_NAMED = {"DMF": "C3H7NO", "DMSO": "C2H6OS"}  # abbreviations of solvents
#: an element below this share of the atoms is refused (meaningless for the model, and
#: usually a typo or an underflow)
MIN_FRACTION = 1e-6
_SEPARATORS = "·•∙⋅*"
_SUBSCRIPTS = str.maketrans("₀₁₂₃₄₅₆₇₈₉", "0123456789")
_ADDUCT_RE = "|".join(sorted((re.escape(a) for a in ADDUCTS), key=len, reverse=True))
_COUNT = r"(?:\d+(?:\.\d*)?|\.\d+|[xnyz])"
# a "." followed by an optional count and a known adduct, up to the end or the next separator
_DOT_SPLIT = re.compile(rf"\.(?=\s*{_COUNT}?\s*(?:{_ADDUCT_RE})\s*(?:$|[.{_SEPARATORS}]))")
_LEADING = re.compile(rf"^\s*({_COUNT})\s*(?=[A-Z(\[])")
_TOKEN = re.compile(r"([A-Z][a-z]*)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)?")
_SYMBOL = re.compile(r"[A-Z][a-z]*")
_GROUP = re.compile(r"[)\]]\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")


class FormulaError(DataError):
    """A formula cannot be read unambiguously. ``kind`` names the problem (e.g.
    "unparsable formula"), ``detail`` says more."""

    def __init__(self, kind: str, text: str, detail: str = ""):
        self.kind, self.text, self.detail = kind, text, detail
        super().__init__(f"{kind} {text!r}" + (f" ({detail})" if detail else ""))


def parse_formula(text: str) -> Composition:
    """The pymatgen Composition a formula string means, or FormulaError (see the module doc)."""
    return read_formula(text).to_pymatgen()


def read_formula(text: str) -> ElementAmounts:
    """The composition a formula string means, without pymatgen, or FormulaError (see the module doc)."""
    original = text
    text = text.translate(_SUBSCRIPTS).strip()
    if not text:
        raise FormulaError("empty formula", original)
    parts = _split_parts(text, original)
    if len(parts) == 1:
        count, body = _leading_count(parts[0].strip(), 0, parts, original)
        if count == 1.0:
            return _check_amounts(_plain(_NAMED.get(body, body), original), original)
    total: dict[str, float] = {}
    for k, part in enumerate(parts):
        count, body = _leading_count(part.strip(), k, parts, original)
        for sym, amt in _plain(_NAMED.get(body, body), original).amounts.items():
            total[sym] = total.get(sym, 0.0) + count * amt
    return _check_amounts(ElementAmounts(total), original)


@lru_cache(maxsize=4096)
def check_formula(text: str) -> tuple[str | None, str | None, str]:
    """(pymatgen's canonical formula, None, "") or (None, kind of problem, detail)."""
    try:
        comp = read_formula(text)
        with warnings.catch_warnings():
            # pymatgen warns when it sorts noble gases by electronegativity: noise here
            warnings.simplefilter("ignore")
            canonical = comp.formula
    except FormulaError as exc:
        return None, exc.kind, exc.detail
    return canonical, None, ""


def formula_problem(where: str, text: str, kind: str, detail: str) -> DataError:
    """The DataError for a formula ``check_formula`` refused."""
    return DataError(f"{where}: {kind} {text!r}" + (f" ({detail})" if detail else ""))


def read_composition(text: str, where: str = "input") -> ElementAmounts:
    """``parse_composition`` of a formula string without pymatgen: the same checks and
    messages, and the amounts of pymatgen's ``Composition`` of the canonical formula."""
    canonical, kind, detail = check_formula(text)
    if kind:
        raise formula_problem(where, text, kind, detail)
    return ElementAmounts.parse(canonical)


def _split_parts(text: str, original: str) -> list[str]:
    """The adduct parts of a formula ('CuSO4·5H2O' -> ['CuSO4', '5H2O']); a '.' splits only
    before a known adduct molecule, and an ambiguous one is refused."""
    parts: list[str] = []
    for piece in re.split(f"[{_SEPARATORS}]", text):
        sub = _DOT_SPLIT.split(piece)
        if len(sub) > 1:
            base = sub[0].strip()
            if base and re.search(r"\d\s*$", base) and len(set(re.findall(r"[A-Z][a-z]*", base))) < 2:
                raise FormulaError(
                    "ambiguous formula",
                    original,
                    f"'{piece.strip()}' reads as a decimal amount or as a hydrate; write a hydrate "
                    f"with '·' (e.g. 'CuSO4·5H2O') or every amount for the decimal reading "
                    f"(e.g. '{piece.strip()}1')",
                )
        parts.extend(sub)
    return parts


def _leading_count(part: str, k: int, parts: list[str], original: str) -> tuple[float, str]:
    """(count, body) of one adduct part: '5H2O' -> (5.0, 'H2O')."""
    if not part:
        raise FormulaError("unparsable formula", original, "empty part around a '·', '*' or '.' separator")
    m = _LEADING.match(part)
    if not m:
        return 1.0, part
    word = m.group(1)
    if word.isalpha():
        raise FormulaError(
            "unparsable formula",
            original,
            f"unstated amount {word!r} in '{part}'; give the number (e.g. 5{part[m.end() :]})",
        )
    count = float(word)
    if k == 0 and len(parts) == 1 and not re.search(r"[A-Z]", part[m.end() :]):
        raise FormulaError("unparsable formula", original)
    body = part[m.end() :]
    if not count > 0 or not math.isfinite(count):
        raise FormulaError("zero amount", original, f"count {word!r} of '{body}'")
    return count, body


def _check_amounts(comp: ElementAmounts, original: str) -> ElementAmounts:
    """Refuse a composition without atoms or with a vanishing amount of an element."""
    n = comp.num_atoms
    if not n > 0 or not math.isfinite(n):
        raise FormulaError("composition has no atoms", original)
    small = [sym for sym, amt in comp.amounts.items() if amt / n < MIN_FRACTION]
    if small:
        raise FormulaError(
            "zero amount",
            original,
            f"{', '.join(small)} below {MIN_FRACTION:g} of the atoms: too small "
            "to be meaningful (a typo or an underflowing number?)",
        )
    return comp


def _plain(body: str, original: str) -> ElementAmounts:
    """Element amounts of one hydrate-free part, with the checks pymatgen skips."""
    for m in _TOKEN.finditer(body):
        _check_amount(m.group(2), m.group(1), original)
    if ")" in body or "]" in body:
        for m in _GROUP.finditer(body):
            _check_amount(m.group(1), "a bracketed group", original)
    amounts = parse_like_pymatgen(body)
    comp = ElementAmounts(amounts) if amounts is not None else _plain_by_pymatgen(body, original)
    written = set(_SYMBOL.findall(body))
    if len(written) != len(comp):
        lost = sorted(written - set(comp.amounts))
        if lost and all(_is_element(s) for s in lost):
            raise FormulaError(
                "zero amount", original, f"the amount of {', '.join(lost)} is too small to be meaningful"
            )
    return comp


def _plain_by_pymatgen(body: str, original: str) -> ElementAmounts:
    """A formula the pymatgen-free reader leaves to pymatgen: its reading or its message."""
    from pymatgen.core import Composition, Element

    try:
        comp = Composition(body)
    except Exception as exc:  # pymatgen raises ValueError/KeyError/etc. for garbage
        raise FormulaError("unparsable formula", original, _clean(str(exc))) from None
    bad = [getattr(el, "symbol", str(el)) for el in comp.elements if not isinstance(el, Element)]
    if bad:
        raise FormulaError("unknown element", original, ", ".join(bad))
    return ElementAmounts.from_pymatgen(comp)


def _check_amount(word: str | None, what: str, original: str) -> None:
    if not word:
        return
    try:
        value = float(word)
    except ValueError:
        return  # pymatgen reports it
    if not math.isfinite(value):
        raise FormulaError("unparsable formula", original, f"amount {word!r} of {what} is not finite")
    if value == 0:
        underflow = bool(re.search(r"[1-9]", word.split("e")[0].split("E")[0]))
        raise FormulaError(
            "zero amount", original, f"amount {word!r} of {what} " + ("underflows to 0" if underflow else "is 0")
        )


def _is_element(symbol: str) -> bool:
    if symbol in Z_OF:
        return True
    from pymatgen.core import Element

    try:
        Element(symbol)
    except (ValueError, KeyError):
        return False
    return True


def _clean(msg: str) -> str:
    return msg.strip().rstrip("!.")[:200]


__all__ = [
    "ADDUCTS",
    "MIN_FRACTION",
    "FormulaError",
    "check_formula",
    "formula_problem",
    "parse_formula",
    "read_composition",
    "read_formula",
]
