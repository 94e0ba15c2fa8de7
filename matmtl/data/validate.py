"""Checking inputs: single formulas and structures (clear errors) and whole tables
(bad rows reported and left out, never silently)."""
from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
from pymatgen.core import Composition, Element, Structure

from ..errors import DataError


class DataWarning(UserWarning):
    """Bad rows were left out of a table."""


@lru_cache(maxsize=None)
def _check_formula(text: str) -> tuple[str | None, str | None, str]:
    """(pymatgen's canonical formula, None, "") or (None, kind of problem, detail)."""
    if not text.strip():
        return None, "empty formula", ""
    try:
        with warnings.catch_warnings():
            # pymatgen warns when it sorts noble gases by electronegativity: noise here
            warnings.filterwarnings("ignore", message="No Pauling electronegativity")
            comp = Composition(text)
            canonical = comp.formula
    except Exception as exc:  # pymatgen raises ValueError/KeyError/etc. for garbage
        return None, "unparsable formula", str(exc)
    bad = [str(el) for el in comp.elements if not isinstance(el, Element)]
    if bad:
        return None, "unknown element", ", ".join(bad)
    if comp.num_atoms <= 0:
        return None, "composition has no atoms", ""
    return canonical, None, ""


def parse_composition(value, where: str = "input") -> Composition:
    """A pymatgen Composition from a formula string or Composition, or a DataError
    that says what is wrong and where (``where`` names the input, e.g. 'row 12')."""
    if isinstance(value, Composition):
        text = value.formula
    elif isinstance(value, str):
        text = value
    else:
        raise DataError(f"{where}: expected a formula string or Composition, got {type(value).__name__}")
    formula, problem, detail = _check_formula(text)
    if problem:
        raise DataError(f"{where}: {problem} {text!r}" + (f" ({detail})" if detail else ""))
    return Composition(formula)


def check_structure(structure, where: str = "input") -> Structure:
    """The structure itself if matmtl can use it, else a DataError. Disordered
    structures (partial occupancies) are refused: their symmetry and composition
    per site are not what the model was trained on."""
    if not isinstance(structure, Structure):
        raise DataError(
            f"{where}: expected a pymatgen Structure, got {type(structure).__name__}"
            + (" (molecules are not supported: matmtl models periodic solids)" if type(structure).__name__ == "Molecule" else "")
        )
    if len(structure) == 0:
        raise DataError(f"{where}: the structure has no sites")
    if not structure.is_ordered:
        raise DataError(
            f"{where}: disordered structure (partial occupancies) {structure.composition.formula!r}; "
            "order it first (e.g. pymatgen's OrderDisorderedStructureTransformation) or pass its Composition"
        )
    parse_composition(structure.composition, where)
    return structure


@dataclass
class BadRows:
    """What a table check left out: per reason, the count and the first examples."""

    n_read: int
    reasons: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 3

    def add(self, reason: str, where: str) -> None:
        self.reasons[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.max_examples:
            ex.append(where)

    @property
    def n_bad(self) -> int:
        return sum(self.reasons.values())

    def summary(self, name: str) -> str:
        if not self.n_bad:
            return f"{name}: all {self.n_read} rows usable"
        parts = [f"{n} {reason} (e.g. {'; '.join(self.examples[reason])})" for reason, n in self.reasons.most_common()]
        return f"{name}: left out {self.n_bad} of {self.n_read} rows: " + ", ".join(parts)

    def to_dict(self) -> dict:
        return {"n_read": self.n_read, "n_bad": self.n_bad, "reasons": dict(self.reasons), "examples": self.examples}


def clean_table(
    frame: pd.DataFrame,
    *,
    name: str,
    targets: dict[str, bool],
    formula_col: str = "formula",
    id_col: str = "id",
) -> tuple[pd.DataFrame, BadRows]:
    """Check a table row by row and leave out the bad rows, reporting them.

    ``targets`` maps each target column to whether it must be non-negative (band gaps).
    Checks: an empty table, missing columns, unparsable formulas, unknown elements,
    NaN/inf or non-numeric targets, impossible (negative) band gaps, duplicated ids.
    The formula column is replaced by pymatgen's canonical formula. The input frame
    is not modified. Warns (DataWarning) when rows are left out.
    """
    if len(frame) == 0:
        raise DataError(f"{name}: the table is empty")
    missing = [c for c in (id_col, formula_col, *targets) if c not in frame.columns]
    if missing:
        raise DataError(f"{name}: missing column(s) {missing}; columns present: {list(frame.columns)}")

    report = BadRows(n_read=len(frame))
    keep = np.ones(len(frame), dtype=bool)
    ids = frame[id_col].astype(str).to_numpy()
    formulas = frame[formula_col].to_numpy()
    canonical = np.empty(len(frame), dtype=object)
    values = {col: pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float) for col in targets}
    repeated = pd.Series(ids).duplicated().to_numpy()  # later occurrences of an id

    for i in range(len(frame)):
        where = f"row {i} (id {ids[i]})"
        raw = formulas[i]
        text = raw.formula if isinstance(raw, Composition) else raw
        if not isinstance(text, str):
            report.add("missing formula", where)
            keep[i] = False
            continue
        formula, problem, detail = _check_formula(text)
        if problem:
            report.add(problem, f"{where}: {text!r}" + (f" ({detail})" if detail else ""))
            keep[i] = False
            continue
        canonical[i] = formula
        for col, nonneg in targets.items():
            v = values[col][i]
            if not math.isfinite(v):
                report.add(f"missing or non-finite {col}", f"{where}: {frame[col].iloc[i]}")
                keep[i] = False
                break
            if nonneg and v < 0:
                report.add(f"negative {col} (impossible)", f"{where}: {v}")
                keep[i] = False
                break
        if not keep[i]:
            continue
        if repeated[i]:
            report.add("duplicated id", where)
            keep[i] = False

    out = frame.loc[keep].copy()
    out[formula_col] = canonical[keep]
    out[id_col] = ids[keep]
    for col in targets:
        out[col] = values[col][keep]
    out.insert(0, "row", np.flatnonzero(keep))  # position in the source, for the official folds
    out = out.reset_index(drop=True)
    if report.n_bad:
        warnings.warn(report.summary(name), DataWarning, stacklevel=3)
    if len(out) == 0:
        raise DataError(f"{name}: no usable rows. {report.summary(name)}")
    return out, report
