"""Loading named datasets and user tables into a checked :class:`Dataset`."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError, DatasetNotFound
from .featurize import Features, Featurizer
from .folds import matbench_folds
from .registry import REGISTRY, DatasetSpec, get_spec
from .sources import explicit_dir, find_local, from_matminer_frame, mirror_dirs, read_matminer, read_mirror, read_user_file
from .validate import BadRows, clean_table

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
        return Dataset(self.name, self.frame.iloc[idx].reset_index(drop=True), self.targets, self.units,
                       self.source, self.bad_rows, self.spec)

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
                "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
                "median": float(np.median(v)), "max": float(v.max()),
                "fraction_zero": float(np.mean(v == 0)),
            }
        return {
            "name": self.name, "rows": len(self), "rows_read": self.bad_rows.n_read,
            "rows_left_out": self.bad_rows.n_bad, "columns": [c for c in self.frame.columns if c != "row"],
            "source": self.source, "targets": stats,
            "distinct_elements": len({el for f in self.formulas for el in re.findall(r"[A-Z][a-z]?", f)}),
        }


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, source: str = "auto") -> Dataset:
    """Load a named dataset (``mp``/``mp_e_form``, ``mp_gap``, ``expt_gap``, ``mp_cgcnn``)
    or a user CSV/JSON file path.

    Where from (``source="auto"``): ``data_dir`` or $MATMTL_DATA_DIR if given (the mirror
    layout or matminer's ``<name>.json.gz``; nothing else is tried then), else the offline
    mirror ``../shared/data``, else matminer's ``load_dataset`` (downloads). ``source`` may
    force ``"local"`` (no download) or ``"matminer"``.
    """
    if source not in ("auto", "local", "matminer"):
        raise ValueError(f"source must be 'auto', 'local' or 'matminer', got {source!r}")
    path = Path(name).expanduser()
    if name.lower() not in _all_names() and (path.suffix or path.exists()):
        return load_table(path)
    spec = get_spec(name)
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


def load_table(
    path: str | os.PathLike,
    *,
    formula_col: str | None = None,
    structure_col: str | None = None,
    targets: list[str] | None = None,
    id_col: str | None = None,
    nonnegative: list[str] | None = None,
) -> Dataset:
    """A user's CSV/JSON with a formula (or structure) column and one or more target
    columns. Columns are found by name when not given: formula from
    {formula, composition, ...}, structure from {structure, cif}, id from {id, mbid,
    material_id, ...}; targets default to every other numeric column. Targets whose
    name contains "gap" must be non-negative unless ``nonnegative`` says otherwise."""
    path = Path(path)
    raw = read_user_file(path)
    if len(raw) == 0:
        raise DataError(f"{path}: the table is empty")
    cols = list(raw.columns)
    fcol = formula_col or _first(cols, FORMULA_COLUMNS)
    scol = structure_col or (None if fcol else _first(cols, STRUCTURE_COLUMNS))
    for given in (formula_col, structure_col, id_col, *(targets or [])):
        if given is not None and given not in cols:
            raise DataError(f"{path}: no column {given!r}; columns present: {cols}")
    if fcol is None and scol is None:
        raise DataError(f"{path}: no formula or structure column (looked for {FORMULA_COLUMNS + STRUCTURE_COLUMNS}); columns: {cols}")
    icol = id_col or _first(cols, ID_COLUMNS)
    frame = raw.copy()
    if scol is not None:
        frame = _structures_to_formulas(frame, scol, path)
        fcol = "formula"
    frame = frame.rename(columns={fcol: "formula"})
    if icol is None or icol == fcol:
        frame.insert(0, "id", [f"row-{i}" for i in range(len(frame))])
    else:
        frame = frame.rename(columns={icol: "id"})
    skip = {"id", "formula", "cif", "spg_num", "crys_sys", "structure"}
    tcols = targets or [c for c in frame.columns if c not in skip and pd.api.types.is_numeric_dtype(frame[c])]
    if not tcols:
        raise DataError(f"{path}: no numeric target column found; columns: {cols}")
    nonneg = set(nonnegative) if nonnegative is not None else {t for t in tcols if _GAP.search(t)}
    frame, report = clean_table(frame, name=path.name, targets={t: t in nonneg for t in tcols})
    units = {t: ("eV" if _GAP.search(t) else "unknown") for t in tcols}
    return Dataset(path.stem, frame, list(tcols), units, str(path), report)


def _first(cols: list[str], names: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in cols}
    return next((lower[n] for n in names if n in lower), None)


def _structures_to_formulas(frame: pd.DataFrame, scol: str, path: Path) -> pd.DataFrame:
    """CIF text (or pymatgen dict JSON) per row -> formula + space group. Rows whose
    structure cannot be read get no formula and are then reported as bad rows."""
    from pymatgen.core import Structure

    from .featurize import symmetry_of
    from .validate import check_structure

    formulas, spg, cifs = [], [], []
    for i, text in enumerate(frame[scol]):
        try:
            s = Structure.from_dict(text) if isinstance(text, dict) else Structure.from_str(str(text), fmt="cif")
            check_structure(s, f"{path.name} row {i}")
        except Exception:
            formulas.append(None), spg.append(0), cifs.append(None)
            continue
        formulas.append(s.composition.formula)
        spg.append(symmetry_of(s)[0])
        cifs.append(s.to(fmt="cif"))
    out = frame.drop(columns=[scol])
    out["formula"], out["spg_num"], out["cif"] = formulas, spg, cifs
    return out


__all__ = ["Dataset", "load_dataset", "load_table", "from_matminer_frame"]
