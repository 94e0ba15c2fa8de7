"""Checking inputs: single formulas and structures (clear errors) and whole tables
(bad rows reported and left out, never silently)."""

from __future__ import annotations

import json
import math
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError, InputTypeError, type_hint
from .composition import is_pymatgen
from .formula import MIN_FRACTION, check_formula, formula_problem
from .periodic import MAX_Z, Z_OF

if TYPE_CHECKING:  # imported where used: reading a formula imports neither
    import pandas as pd
    from pymatgen.core import Composition, Structure

_check_formula = check_formula  # the name older code used
_type_hint = type_hint


class DataWarning(UserWarning):
    """Bad rows were left out of a table."""


def parse_composition(value, where: str = "input") -> Composition:
    """A pymatgen Composition from a formula string or Composition, or a DataError
    that says what is wrong and where (``where`` names the input, e.g. 'row 12').
    Anything else (None, a number, a dict, bytes) raises :class:`InputTypeError`, a
    TypeError that is also a DataError."""
    if is_pymatgen(value, "Composition"):
        from pymatgen.core import Element

        bad = [getattr(el, "symbol", str(el)) for el in value.elements if not isinstance(el, Element)]
        if bad:
            raise DataError(f"{where}: unknown element {', '.join(bad)} in {value!r}")
        n = value.num_atoms
        if not n > 0 or not math.isfinite(n):
            raise DataError(f"{where}: composition has no atoms {value!r}")
        small = [el.symbol for el, amt in value.items() if amt / n < MIN_FRACTION]
        if small:
            raise DataError(
                f"{where}: zero amount in {value!r} ({', '.join(small)} below {MIN_FRACTION:g} of the atoms)"
            )
        return value
    if isinstance(value, str):
        text = value
    else:
        raise InputTypeError(
            f"{where}: expected a formula string or Composition, got {type(value).__name__}{type_hint(value)}"
        )
    formula, problem, detail = check_formula(text)
    if problem:
        raise formula_problem(where, text, problem, detail)
    from pymatgen.core import Composition

    return Composition(formula)


#: two sites closer than this (Å) are the same place: a broken structure
MIN_SITE_DISTANCE = 0.5


def check_structure(structure, where: str = "input") -> Structure:
    """The structure itself if matmtl can use it, else a DataError. Refused: molecules,
    disordered structures (partial occupancies: their symmetry and composition per site
    are not what the model was trained on), a degenerate or non-finite lattice, and
    atoms on top of each other (closer than 0.5 Å)."""
    if not is_pymatgen(structure, "IStructure"):
        if type(structure).__name__ in ("Molecule", "IMolecule"):
            raise DataError(
                f"{where}: expected a pymatgen Structure, got {type(structure).__name__} "
                "(molecules are not supported: matmtl models periodic solids)"
            )
        raise InputTypeError(f"{where}: expected a pymatgen Structure, got {type(structure).__name__}")
    if len(structure) == 0:
        raise DataError(f"{where}: the structure has no sites")
    matrix = np.asarray(structure.lattice.matrix, dtype=float)
    if not np.all(np.isfinite(matrix)) or not np.all(np.isfinite(structure.frac_coords)):
        raise DataError(f"{where}: the structure has non-finite lattice vectors or coordinates")
    volume = abs(float(np.linalg.det(matrix)))
    if volume < 1e-3 * len(structure):
        raise DataError(f"{where}: degenerate lattice (cell volume {volume:.3g} Å^3 for {len(structure)} sites)")
    if not structure.is_ordered:
        raise DataError(
            f"{where}: disordered structure (partial occupancies) {structure.composition.formula!r}; "
            "order it first (e.g. pymatgen's OrderDisorderedStructureTransformation) or pass its Composition"
        )
    if len(structure) <= 5000:
        centers, points, _, dists = structure.get_neighbor_list(MIN_SITE_DISTANCE)
        if len(dists):
            i, j = int(centers[0]), int(points[0])
            raise DataError(
                f"{where}: atoms on top of each other: sites {i} ({structure[i].specie}) and {j} "
                f"({structure[j].specie}) are {float(dists[0]):.3f} Å apart (under {MIN_SITE_DISTANCE} Å)"
            )
    parse_composition(structure.composition, where)
    return structure


@dataclass
class BadRows:
    """What a table check left out: every left-out row with its reason (``rows``),
    counts per reason, and a few examples per reason for messages. ``write(path)``
    writes the full list (CSV or JSON by suffix)."""

    n_read: int
    reasons: Counter = field(default_factory=Counter)
    rows: list[dict] = field(default_factory=list)
    max_examples: int = 3  # shown in messages; all rows are kept in ``rows``

    def add(self, reason: str, where: str, *, row: int | None = None, ident=None, value=None) -> None:
        self.reasons[reason] += 1
        self.rows.append(
            {
                "row": row,
                "id": None if ident is None else str(ident),
                "reason": reason,
                "where": where,
                "value": None if value is None else str(value),
            }
        )

    @property
    def examples(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for r in self.rows:
            ex = out.setdefault(r["reason"], [])
            if len(ex) < self.max_examples:
                ex.append(r["where"])
        return out

    @property
    def n_bad(self) -> int:
        return sum(self.reasons.values())

    def summary(self, name: str) -> str:
        if not self.n_bad:
            return f"{name}: all {self.n_read} rows usable"
        ex = self.examples
        parts = [f"{n} {reason} (e.g. {'; '.join(ex[reason])})" for reason, n in self.reasons.most_common()]
        return f"{name}: left out {self.n_bad} of {self.n_read} rows: " + ", ".join(parts)

    def to_dict(self) -> dict:
        return {"n_read": self.n_read, "n_bad": self.n_bad, "reasons": dict(self.reasons), "examples": self.examples}

    def frame(self) -> pd.DataFrame:
        """Every left-out row: source row, id, reason, where (the message) and value."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["row", "id", "reason", "where", "value"])

    def write(self, path: str | Path) -> Path:
        """Write every left-out row to ``path`` (.csv, .tsv or .json), atomically."""
        from ..io import atomic_write

        path = Path(path).expanduser()
        suffix = path.suffix.lower()
        if path.is_dir():
            raise DataError(f"{path} is a folder; give a file name ending .csv or .json for the bad rows")
        frame = self.frame()
        if suffix in (".csv", ".tsv"):
            atomic_write(path, lambda p: frame.to_csv(p, index=False, sep="\t" if suffix == ".tsv" else ","))
        elif suffix == ".json":
            text = (
                json.dumps(
                    {"n_read": self.n_read, "n_bad": self.n_bad, "reasons": dict(self.reasons), "rows": self.rows},
                    indent=1,
                )
                + "\n"
            )
            atomic_write(path, lambda p: p.write_text(text))
        else:
            raise DataError(f"{path}: unsupported file type for the bad rows; use .csv, .tsv or .json")
        return path


@dataclass
class Duplicates:
    """Compositions that appear on more than one row of a table and how they were merged."""

    rule: str
    groups: list[dict] = field(default_factory=list)  # formula, rows, ids, values per target, merged, spread

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def n_rows(self) -> int:
        return sum(len(g["rows"]) for g in self.groups)

    @property
    def conflicting(self) -> list[dict]:
        return [g for g in self.groups if any(s > 0 for s in g["spread"].values())]

    def summary(self, name: str, units: dict[str, str] | None = None, show: int = 3) -> str:
        if not self.groups:
            return f"{name}: no repeated compositions"
        units = units or {}
        what = {
            "median": "merged to one row each by the median of their values",
            "mean": "merged to one row each by the mean of their values",
            "first": "merged to one row each, keeping the first row's values",
            "keep": "all kept as separate rows",
        }[self.rule]
        text = (
            f"{name}: {self.n_groups} composition(s) appear on more than one row ({self.n_rows} rows in all), "
            f"{what} (duplicates={self.rule!r})"
        )
        bad = sorted(self.conflicting, key=lambda g: -max(g["spread"].values()))
        if bad:
            shown = []
            for g in bad[:show]:
                t = max(g["spread"], key=g["spread"].get)
                u = f" {units[t]}" if units.get(t) not in (None, "", "unknown") else ""
                vals = " / ".join(f"{v:g}" for v in g["values"][t])
                merged = f" -> {g['merged'][t]:g}" if self.rule != "keep" else ""
                shown.append(
                    f"{g['formula']!r} rows {', '.join(map(str, g['rows']))}: {t} {vals}{u}{merged} "
                    f"(spread {g['spread'][t]:g}{u})"
                )
            text += f"; {len(bad)} disagree, e.g. " + "; ".join(shown)
        return text

    def to_dict(self) -> dict:
        return {
            "rule": self.rule,
            "n_groups": self.n_groups,
            "n_rows": self.n_rows,
            "n_conflicting": len(self.conflicting),
            "groups": self.groups,
        }


DUPLICATE_RULES = ("median", "mean", "first", "keep")


def merge_duplicates(
    frame: pd.DataFrame,
    targets: list[str],
    *,
    name: str,
    rule: str = "median",
    by: tuple[str, ...] = (),
    units: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, Duplicates]:
    """Rows of a checked table (canonical ``formula`` column) that hold the same
    composition (same element fractions; plus the same values of the ``by`` columns,
    e.g. space group) are merged to one row per ``rule``: ``median`` (default), ``mean``,
    ``first``, or ``keep`` (reported, not merged). The merged row keeps the first row's
    id, position and other columns. Warns (DataWarning) with the groups' spread."""
    import pandas as pd

    if rule not in DUPLICATE_RULES:
        raise DataError(f"duplicates must be one of {', '.join(DUPLICATE_RULES)}, got {rule!r}")
    report = Duplicates(rule)
    if len(frame) < 2:
        return frame, report
    keys = [composition_key(f) for f in frame["formula"]]
    key = pd.Series(keys, index=frame.index).astype(str)
    for col in by:
        if col in frame.columns:
            key = key + "|" + frame[col].astype(str)
    sizes = key.map(key.value_counts())
    if not (sizes > 1).any():
        return frame, report
    keep = np.ones(len(frame), dtype=bool)
    out = frame.copy()
    for idx in frame.groupby(key.to_numpy(), sort=False).indices.values():
        if len(idx) < 2:
            continue
        idx = np.sort(idx)
        values = {t: [float(v) for v in frame[t].to_numpy()[idx]] for t in targets}
        merged = {
            t: float({"median": np.median, "mean": np.mean}.get(rule, lambda v: v[0])(np.asarray(v)))
            for t, v in values.items()
        }
        report.groups.append(
            {
                "formula": str(frame["formula"].iloc[idx[0]]),
                "rows": [int(r) for r in frame["row"].to_numpy()[idx]] if "row" in frame else [int(i) for i in idx],
                "ids": [str(i) for i in frame["id"].to_numpy()[idx]] if "id" in frame else [],
                "values": values,
                "merged": merged,
                "spread": {t: float(np.ptp(v)) for t, v in values.items()},
            }
        )
        if rule != "keep":
            for t in targets:
                out.iloc[idx[0], out.columns.get_loc(t)] = merged[t]
            keep[idx[1:]] = False
    out = out.loc[keep].reset_index(drop=True)
    warnings.warn(report.summary(name, units), DataWarning, stacklevel=3)
    return out, report


def composition_key(formula: str) -> str:
    """The identity of a composition as training reads it: its element fractions (to 1e-9),
    so Cu9S5 and Cu1.8S are one composition."""
    from pymatgen.core import Composition

    comp = Composition(formula).fractional_composition
    return " ".join(f"{el.symbol}{amt:.9f}" for el, amt in sorted(comp.items(), key=lambda x: x[0].Z))


def beyond_max_z(formula: str) -> str:
    """The elements of a canonical formula that no matmtl model embeds (past Lr), or ''."""
    return ", ".join(s for s in re.findall(r"[A-Z][a-z]*", formula) if Z_OF.get(s, MAX_Z + 1) > MAX_Z)


def _check_row(i: int, raw, frame: pd.DataFrame, targets: dict[str, bool], values: dict, repeated: bool):
    """(canonical formula, None) for a usable row, else (None, (reason, detail, value))."""
    text = raw.formula if is_pymatgen(raw, "Composition") else raw
    if not isinstance(text, str):
        if raw is None or (isinstance(raw, float) and math.isnan(raw)):
            return None, ("missing formula", "", None)
        return None, ("formula is not text", repr(raw), raw)
    formula, problem, detail = check_formula(text)
    if problem:
        return None, (problem, f"{text!r}" + (f" ({detail})" if detail else ""), text)
    beyond = beyond_max_z(formula)
    if beyond:
        return None, ("element beyond Lr", f"{text!r} ({beyond}: matmtl models embed H..Lr)", text)
    for col, nonneg in targets.items():
        v = values[col][i]
        if not math.isfinite(v):
            return None, (f"missing or non-finite {col}", f"{frame[col].iloc[i]}", frame[col].iloc[i])
        if nonneg and v < 0:
            return None, (f"negative {col} (impossible)", f"{v}", v)
    if repeated:
        return None, ("duplicated id", "", None)
    return formula, None


def clean_table(
    frame: pd.DataFrame,
    *,
    name: str,
    targets: dict[str, bool],
    formula_col: str = "formula",
    id_col: str = "id",
    problems: dict[int, tuple[str, str]] | None = None,
) -> tuple[pd.DataFrame, BadRows]:
    """Check a table row by row and leave out the bad rows, reporting them.

    ``targets`` maps each target column to whether it must be non-negative (band gaps);
    only target columns are checked (other columns are carried along, never a reason to
    leave a row out). Checks: an empty table, missing columns, unparsable formulas
    (hydrates are read as sums, zero amounts refused), unknown elements, NaN/inf or
    non-numeric targets, impossible (negative) band gaps, duplicated ids. ``problems``:
    rows already known to be bad (position -> (reason, detail)), e.g. unreadable
    structures. The formula column is replaced by pymatgen's canonical formula. The
    input frame is not modified. Warns (DataWarning) when rows are left out; every
    left-out row is listed in the returned BadRows.
    """
    import pandas as pd

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
    problems = problems or {}

    for i in range(len(frame)):
        if i in problems:
            formula, bad = None, (*problems[i], None)
        else:
            formula, bad = _check_row(i, formulas[i], frame, targets, values, repeated[i])
        if bad is None:
            canonical[i] = formula
            continue
        reason, detail, value = bad
        where = f"row {i} (id {ids[i]})"
        report.add(reason, f"{where}: {detail}" if detail else where, row=i, ident=ids[i], value=value)
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
