"""Loading named datasets and user tables into a checked :class:`Dataset`."""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError, DatasetNotFound, InputTypeError
from .featurize import Features, Featurizer
from .folds import matbench_folds
from .registry import REGISTRY, DatasetSpec, get_spec
from .sources import (
    explicit_dir,
    find_local,
    from_matminer_frame,
    mirror_dirs,
    read_matminer,
    read_mirror,
    read_user_file,
)
from .validate import (
    DUPLICATE_RULES,
    BadRows,
    Duplicates,
    clean_table,
    merge_duplicates,
)

FORMULA_COLUMNS = ("formula", "composition", "formula_pretty", "pretty_formula", "reduced_formula")
STRUCTURE_COLUMNS = ("structure", "cif")
ID_COLUMNS = ("id", "mbid", "material_id", "mp_id", "task_id")
_GAP = re.compile(r"gap", re.I)


@dataclass
class Dataset:
    """A checked table: one row per material, in the source's row order.

    ``frame`` columns: ``row`` (position in the source, which the official folds
    index), ``id``, ``formula`` (pymatgen's canonical formula), optional ``spg_num``,
    ``crys_sys``, ``cif``, and one column per target.
    """

    name: str
    frame: pd.DataFrame
    targets: list[str]
    units: dict[str, str]
    source: str
    bad_rows: BadRows
    spec: DatasetSpec | None = field(default=None, repr=False)
    duplicates: Duplicates | None = field(default=None, repr=False)
    metadata: list[str] = field(default_factory=list)  # other columns, carried along, never checked

    def report(self) -> str:
        """Everything found when the table was read: rows left out (and why), repeated
        compositions (and how they were merged), the targets and the metadata columns."""
        lines = [self.bad_rows.summary(self.name)]
        if self.duplicates is not None and self.duplicates.n_groups:
            lines.append(self.duplicates.summary(self.name, self.units))
        lines.append(
            f"{self.name}: {len(self)} rows; target(s) {self.targets}"
            + (f"; kept as metadata: {self.metadata}" if self.metadata else "")
        )
        return "\n".join(lines)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def formulas(self) -> list[str]:
        return self.frame["formula"].tolist()

    def target(self, name: str | None = None) -> np.ndarray:
        name = name or self.targets[0]
        if name not in self.targets:
            raise DataError(f"{self.name} has no target {name!r}; targets: {self.targets}")
        return self.frame[name].to_numpy(dtype=np.float64)

    def folds(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Matbench's 5 official folds as positions into ``frame`` (train, test).
        Folds are defined on the source's row order, so rows left out as bad simply
        drop out of whichever fold held them."""
        folds = matbench_folds(self.bad_rows.n_read)
        pos = np.full(self.bad_rows.n_read, -1)
        pos[self.frame["row"].to_numpy()] = np.arange(len(self.frame))
        return [(pos[tr][pos[tr] >= 0], pos[te][pos[te] >= 0]) for tr, te in folds]

    def subset(self, idx) -> "Dataset":
        return Dataset(
            self.name,
            self.frame.iloc[idx].reset_index(drop=True),
            self.targets,
            self.units,
            self.source,
            self.bad_rows,
            self.spec,
            self.duplicates,
            self.metadata,
        )

    def features(self, featurizer: Featurizer | None = None) -> Features:
        """Model inputs for every row (cached on disk). Space groups come from the
        table where it has them; CIF structures are parsed and analysed."""
        featurizer = featurizer or Featurizer()
        spg = self.frame["spg_num"].to_numpy() if "spg_num" in self.frame else None
        # CIF texts are parsed (and symmetry-analysed) only on a cache miss
        items = self.frame["cif"].tolist() if "cif" in self.frame else self.formulas
        return featurizer(items, spg=spg, where=self.name)

    def summary(self) -> dict:
        """Rows, columns, units, source and per-target statistics."""
        stats = {}
        for t in self.targets:
            v = self.target(t)
            stats[t] = {
                "unit": self.units.get(t, "?"),
                "mean": float(v.mean()),
                "std": float(v.std()),
                "min": float(v.min()),
                "median": float(np.median(v)),
                "max": float(v.max()),
                "fraction_zero": float(np.mean(v == 0)),
            }
        return {
            "name": self.name,
            "rows": len(self),
            "rows_read": self.bad_rows.n_read,
            "rows_left_out": self.bad_rows.n_bad,
            "columns": [c for c in self.frame.columns if c != "row"],
            "source": self.source,
            "targets": stats,
            "distinct_elements": len({el for f in self.formulas for el in re.findall(r"[A-Z][a-z]?", f)}),
        }


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    source: str = "auto",
    targets: list[str] | str | None = None,
    duplicates: str = "median",
) -> Dataset:
    """Load a named dataset (``mp``/``mp_e_form``, ``mp_gap``, ``expt_gap``, ``mp_cgcnn``)
    or a user CSV/JSON file path (then ``targets`` and ``duplicates`` go to
    :func:`load_table`; named datasets have fixed targets and are never merged, since the
    official folds index their rows).

    Where from (``source="auto"``): ``data_dir`` or $MATMTL_DATA_DIR if given (the mirror
    layout or matminer's ``<name>.json.gz``; nothing else is tried then), else the offline
    mirror ``../shared/data``, else matminer's ``load_dataset`` (downloads). ``source`` may
    force ``"local"`` (no download) or ``"matminer"``.
    """
    if source not in ("auto", "local", "matminer"):
        raise ValueError(f"source must be 'auto', 'local' or 'matminer', got {source!r}")
    if not isinstance(name, (str, os.PathLike)):
        raise InputTypeError(f"dataset: expected a dataset name or a file path, got {type(name).__name__}")
    name = os.fspath(name)
    path = Path(name).expanduser()
    if name.lower() not in _all_names() and (path.suffix or path.exists()):
        return load_table(path, targets=targets, duplicates=duplicates)
    spec = get_spec(name)
    if targets is not None:
        wanted = [targets] if isinstance(targets, str) else list(targets)
        unknown = [t for t in wanted if t not in spec.target_names]
        if unknown:
            raise DataError(f"{spec.name}: no target {unknown[0]!r}; its target(s): {spec.target_names}")
    raw, where = _read_named(spec, data_dir, source)
    targets = {t.name: t.nonnegative for t in spec.targets}
    frame, report = clean_table(raw, name=spec.name, targets=targets)
    if len(frame) + report.n_bad != spec.rows:
        # a different copy of the data: usable, but the official folds would not apply
        import warnings

        warnings.warn(f"{spec.name}: read {report.n_read} rows from {where}, expected {spec.rows}", stacklevel=2)
    return Dataset(spec.name, frame, spec.target_names, {t.name: t.unit for t in spec.targets}, where, report, spec)


def _all_names() -> set[str]:
    return {a for s in REGISTRY.values() for a in (s.name, *s.aliases)}


def read_named(name: str, data_dir=None) -> pd.DataFrame:
    """The raw table of a named dataset, as stored (no row checks, no featurizing): for a
    quick look-up over many rows; :func:`load_dataset` is the checked way in."""
    return _read_named(get_spec(name), data_dir, "auto")[0]


def _read_named(spec: DatasetSpec, data_dir, source: str) -> tuple[pd.DataFrame, str]:
    if source != "matminer":
        explicit = explicit_dir(data_dir)
        roots = [explicit] if explicit else mirror_dirs()
        for root in roots:
            hit = find_local(spec, root)
            if hit and hit[0] == "mirror":
                return read_mirror(spec, root), str(root)
            if hit and hit[0] == "matminer":
                return read_matminer(spec, data_home=hit[1].parent, download=False), str(hit[1])
        if explicit or source == "local":
            where = str(explicit) if explicit else "the offline mirror (../shared/data)"
            raise DatasetNotFound(
                f"{spec.name}: not found in {where}; expected {list(spec.mirror_files)}"
                + (f" or {spec.matminer_name}.json.gz" if spec.matminer_name else "")
            )
    frame = read_matminer(spec)
    return frame, f"matminer:{spec.matminer_name}"


#: numeric columns that are never targets unless named
_NOT_TARGETS = {"id", "row", "spg_num", "spacegroup", "space_group", "index", "unnamed: 0"}
_TARGET_NAME = re.compile(r"gap|e_form|formation|^target$|^y$", re.I)


def _find_columns(raw: pd.DataFrame, path: Path, formula_col, structure_col, id_col, wanted):
    """(formula, structure, id) column names of a user table: given, or found by name."""
    cols = list(raw.columns)
    fcol = formula_col or _first(cols, FORMULA_COLUMNS)
    scol = structure_col or (None if fcol else _first(cols, STRUCTURE_COLUMNS))
    for given in (formula_col, structure_col, id_col, *(wanted or [])):
        if given is not None and given not in cols:
            raise DataError(f"{path}: no column {given!r}; columns present: {cols}" + _sep_hint(raw))
    if fcol is None and scol is None:
        raise DataError(
            f"{path}: no formula or structure column (looked for {FORMULA_COLUMNS + STRUCTURE_COLUMNS}); "
            f"columns: {cols}" + _sep_hint(raw)
        )
    return fcol, scol, id_col or _first(cols, ID_COLUMNS)


def load_table(
    path: str | os.PathLike,
    *,
    formula_col: str | None = None,
    structure_col: str | None = None,
    targets: list[str] | str | None = None,
    id_col: str | None = None,
    nonnegative: list[str] | None = None,
    duplicates: str = "median",
    sep: str | None = None,
) -> Dataset:
    """A user's CSV/TSV/JSON with a formula (or structure) column and target column(s).

    Columns are found by name when not given: formula from {formula, composition, ...},
    structure from {structure, cif}, id from {id, mbid, material_id, ...}. ``targets``
    names the target column(s); without it, the table's only numeric column, else its
    only column named like a target (gap, e_form, formation..., target) is the target, and
    anything else is a DataError asking for ``targets``. Every other column is kept as
    metadata (``ds.metadata``): only targets are checked, so a half-empty extra column
    never costs a row. Targets whose name contains "gap" must be non-negative unless
    ``nonnegative`` says otherwise.

    Reported when the table is read (DataWarning; details in ``ds.bad_rows`` and
    ``ds.duplicates``, all of it in ``ds.report()``): rows left out and why
    (``ds.bad_rows.write(path)`` lists every one), and compositions that appear on several
    rows, merged per ``duplicates`` (``median`` by default, ``mean``, ``first``, or
    ``keep``) with the spread of their values. ``sep``: the separator (default: detected,
    so a ``;``-separated file is read as such)."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputTypeError(f"load_table: expected a file path, got {type(path).__name__}")
    path = Path(path).expanduser()
    if duplicates not in DUPLICATE_RULES:
        raise DataError(f"duplicates must be one of {', '.join(DUPLICATE_RULES)}, got {duplicates!r}")
    raw = read_user_file(path, sep=sep)
    if len(raw) == 0:
        raise DataError(f"{path}: the table is empty")
    raw.columns = [str(c).strip() for c in raw.columns]
    cols = list(raw.columns)
    if len(set(cols)) != len(cols):
        raise DataError(f"{path}: repeated column name(s) {sorted({c for c in cols if cols.count(c) > 1})}")
    wanted = [targets] if isinstance(targets, str) else (list(targets) if targets is not None else None)
    fcol, scol, icol = _find_columns(raw, path, formula_col, structure_col, id_col, wanted)
    frame = raw.copy()
    problems = None
    if scol is not None:
        frame, problems = _structures_to_formulas(frame, scol, path)
        fcol = "formula"
    frame = frame.rename(columns={fcol: "formula"})
    if icol is None or icol == fcol:
        frame.insert(0, "id", [f"row-{i}" for i in range(len(frame))])
    else:
        frame = frame.rename(columns={icol: "id"})
    tcols = wanted if wanted is not None else _guess_targets(frame, path, {fcol, icol, scol})
    if not tcols:
        raise DataError(f"{path}: no target column given (targets=[])")
    for t in tcols:
        if t in ("formula", "id") or t == fcol or t == icol:
            raise DataError(f"{path}: {t!r} is the formula/id column, not a target")
    nonneg = set(nonnegative) if nonnegative is not None else {t for t in tcols if _GAP.search(t)}
    frame, report = clean_table(frame, name=path.name, targets={t: t in nonneg for t in tcols}, problems=problems)
    by = ("spg_num",) if "spg_num" in frame.columns else ()
    units = {t: ("eV" if _GAP.search(t) else "unknown") for t in tcols}
    frame, dups = merge_duplicates(frame, list(tcols), name=path.name, rule=duplicates, by=by, units=units)
    skip = {"row", "id", "formula", "cif", "spg_num", "crys_sys", *tcols}
    metadata = [c for c in frame.columns if c not in skip]
    source = str(path) + (
        f" (separator {raw.attrs['separator']!r}, decimal {raw.attrs['decimal']!r})"
        if raw.attrs.get("separator", ",") not in (",", "\t")
        else ""
    )
    return Dataset(path.stem, frame, list(tcols), units, source, report, duplicates=dups, metadata=metadata)


def _guess_targets(frame: pd.DataFrame, path: Path, skip: set) -> list[str]:
    numeric = [
        c
        for c in frame.columns
        if c not in skip
        and c not in ("id", "formula", "cif", "structure")
        and str(c).lower() not in _NOT_TARGETS
        and pd.api.types.is_numeric_dtype(frame[c])
        and not pd.api.types.is_bool_dtype(frame[c])
    ]
    if len(numeric) == 1:
        return numeric
    named = [c for c in numeric if _TARGET_NAME.search(str(c))]
    if len(named) == 1:
        return named
    if not numeric:
        others = [c for c in frame.columns if c not in ("id", "formula", "row")]
        raise DataError(
            f"{path}: no numeric target column found; columns: {others}"
            + _sep_hint(frame)
            + " (name the target with targets=[...], --target on the command line)"
        )
    choices = named or numeric
    raise DataError(
        f"{path}: several possible target columns {choices}; name the target(s) with targets=[...] "
        "(--target on the command line); the other columns are kept as metadata"
    )


def _sep_hint(frame: pd.DataFrame) -> str:
    cols = [str(c) for c in frame.columns]
    if len(cols) == 1 and any(ch in cols[0] for ch in ";\t|"):
        return " (the header looks separated by something other than the file's separator: pass sep=)"
    return ""


def _first(cols: list[str], names: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in cols}
    return next((lower[n] for n in names if n in lower), None)


def _structures_to_formulas(frame: pd.DataFrame, scol: str, path: Path) -> tuple[pd.DataFrame, dict]:
    """CIF text (or pymatgen dict JSON) per row -> formula + space group. Rows whose
    structure cannot be used are returned as problems (reason, detail), reported as bad
    rows with the reason: unreadable, disordered, several structures in one cell..."""
    from pymatgen.core import Structure

    from .featurize import symmetry_of
    from .validate import check_structure

    formulas, spg, cifs, problems = [], [], [], {}
    for i, text in enumerate(frame[scol]):
        where = f"{path.name} row {i}"
        try:
            if isinstance(text, dict):
                s = Structure.from_dict(text)
            elif isinstance(text, str) and text.strip():
                blocks = len(re.findall(r"^\s*data_", text, flags=re.M))
                if blocks > 1:
                    raise DataError(f"{where}: {blocks} CIF data blocks in one cell; give one structure per row")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    s = Structure.from_str(text, fmt="cif")
            else:
                raise DataError(f"{where}: no structure (empty cell)")
            check_structure(s, where)
        except DataError as exc:
            problems[i] = ("unusable structure", str(exc).removeprefix(f"{where}: "))
            formulas.append(None), spg.append(0), cifs.append(None)
            continue
        except Exception as exc:  # pymatgen's CIF reader raises many types on garbage
            problems[i] = ("unreadable structure", " ".join(str(exc).split())[:200] or type(exc).__name__)
            formulas.append(None), spg.append(0), cifs.append(None)
            continue
        formulas.append(s.composition.formula)
        spg.append(symmetry_of(s)[0])
        cifs.append(s.to(fmt="cif"))
    out = frame.drop(columns=[scol])
    out["formula"], out["spg_num"], out["cif"] = formulas, spg, cifs
    return out, problems


__all__ = ["Dataset", "load_dataset", "load_table", "from_matminer_frame"]
