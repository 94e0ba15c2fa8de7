"""Files in and out of ``predict``: reading structures and formula tables from files,
folders and glob patterns, and writing predictions as CSV or JSON.

Inputs (:func:`read_inputs`):

* ``.cif`` / ``.mcif``: every data block is a structure (labelled ``file.cif#block`` when
  there are several; a block without atoms, such as a journal's metadata block, is
  skipped with a DataWarning);
* ``POSCAR`` / ``CONTCAR`` / ``*.vasp`` / ``*.poscar``: pymatgen;
* ``.json``: a pymatgen ``Structure.as_dict()`` (or a list of them), else a table;
* ``.xyz`` / ``.extxyz`` and the other formats in :data:`ASE_SUFFIXES`: every frame,
  through ASE (an optional dependency: a clear error when it is missing);
* ``.csv`` / ``.tsv`` / ``.txt``: a table with a formula column (an id column labels rows);
* a folder: the files in it of those types (others skipped, with a DataWarning naming
  them); a glob pattern (``"structures/*.cif"``): the files it matches.

With ``on_bad="nan"`` an unreadable file (or CIF block, or frame) becomes a
:class:`BadInput` that ``predict`` keeps as a NaN row with the reason in ``note``.
"""

from __future__ import annotations

import glob
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .errors import DataError, MatmtlError

ON_BAD = ("raise", "nan")
PYMATGEN_SUFFIXES = (".cif", ".mcif", ".vasp", ".poscar")
ASE_SUFFIXES = (".xyz", ".extxyz", ".traj", ".xsf", ".cell", ".res", ".gen", ".pdb", ".cfg", ".lmp", ".gro")
TABLE_SUFFIXES = (".csv", ".tsv", ".txt")
POSCAR_NAMES = ("poscar", "contcar")
KNOWN_SUFFIXES = PYMATGEN_SUFFIXES + ASE_SUFFIXES + TABLE_SUFFIXES + (".json",)
_GLOB_CHARS = "*?["

#: units of the prediction columns (written into JSON; see :func:`write_predictions`)
UNITS = {
    "spg_num": "space-group number (0 = no structure given)",
    "gap_expt": "eV",
    "gap_expt_std": "eV",
    "p_metal": "probability (0-1)",
    "e_form": "eV/atom",
    "e_form_std": "eV/atom",
}


class BadInputWarning(UserWarning):
    """Something in an input file or folder was skipped (the message says what and why)."""


@dataclass(frozen=True)
class BadInput:
    """An input that could not be read; ``predict(on_bad="nan")`` keeps it as a NaN row
    with ``reason`` in its note."""

    reason: str


def check_on_bad(on_bad) -> str:
    """``on_bad`` itself if valid, else a MatmtlError naming the choices."""
    if on_bad not in ON_BAD:
        raise MatmtlError(
            f"on_bad must be one of {', '.join(repr(c) for c in ON_BAD)} "
            f"('raise': stop at the first unusable input; 'nan': keep it as a NaN row with the reason "
            f"in 'note'), got {on_bad!r}"
        )
    return on_bad


def is_path_like(x) -> bool:
    """True for inputs meant as files: a Path, or a string holding a path separator, a
    glob pattern or a known file suffix. A bare word ("POSCAR", "Si") is a formula."""
    if isinstance(x, os.PathLike):
        return True
    if not isinstance(x, str):
        return False
    s = x.strip()
    if not s or "\n" in s:
        return False
    if "/" in s or os.sep in s:
        return True
    return Path(s).suffix.lower() in KNOWN_SUFFIXES


# -- reading -------------------------------------------------------------------------


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[tuple[Path, str | None]]:
    """Files from paths, folders and glob patterns, in order: (path, problem or None).
    A missing file is kept with its problem (the caller decides per ``on_bad``)."""
    out: list[tuple[Path, str | None]] = []
    for raw in paths:
        if not isinstance(raw, (str, os.PathLike)):
            raise DataError(f"predict: expected file paths, got {type(raw).__name__} ({raw!r})")
        text = os.path.expanduser(os.fspath(raw))
        p = Path(text)
        if not p.exists() and any(c in text for c in _GLOB_CHARS):
            hits = sorted(glob.glob(text, recursive=True))
            files = [Path(h) for h in hits if Path(h).is_file()]
            if not files:
                out.append((p, f"{text}: no file matches this pattern"))
            out.extend((f, None) for f in files)
        elif p.is_dir():
            out.extend(_folder(p))
        elif not p.exists():
            out.append((p, f"{p}: file not found"))
        else:
            out.append((p, None))
    return out


def _folder(folder: Path) -> list[tuple[Path, str | None]]:
    files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
    known = [f for f in files if _kind(f) is not None]
    other = [f.name for f in files if _kind(f) is None]
    if other:
        warnings.warn(
            f"{folder}: skipped {len(other)} file(s) of a type predict does not read: "
            f"{', '.join(other[:5])}{' ...' if len(other) > 5 else ''}",
            BadInputWarning,
            stacklevel=3,
        )
    if not known:
        return [
            (
                folder,
                f"{folder}: no structure or formula files in this folder "
                f"(looked for {', '.join(KNOWN_SUFFIXES)}, POSCAR, CONTCAR)",
            )
        ]
    return [(f, None) for f in known]


def _kind(p: Path) -> str | None:
    name, suffix = p.name.lower(), p.suffix.lower()
    if name.startswith(POSCAR_NAMES) or suffix in PYMATGEN_SUFFIXES:
        return "pymatgen"
    if suffix in TABLE_SUFFIXES:
        return "table"
    if suffix == ".json":
        return "json"
    if suffix in ASE_SUFFIXES:
        return "ase"
    return None


def read_inputs(paths: Iterable[str | os.PathLike], *, on_bad: str = "raise") -> tuple[list[Any], list[str]]:
    """(items, labels) from structure files, formula tables, folders and glob patterns
    (see the module doc). ``on_bad="raise"``: an unreadable file raises DataError naming
    it; ``"nan"``: it becomes a :class:`BadInput` item (a NaN row in ``predict``)."""
    check_on_bad(on_bad)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    items, labels = [], []
    for path, problem in expand_paths(paths):
        try:
            if problem:
                raise DataError(problem)
            got = read_file(path)
        except DataError as exc:
            if on_bad == "raise":
                raise
            items.append(BadInput(str(exc)))
            labels.append(path.name or str(path))
            continue
        for item, label in got:
            items.append(item)
            labels.append(label)
    if not items:
        raise DataError("predict: no inputs (give CIF/POSCAR/extxyz files, folders of them or a CSV of formulas)")
    return items, labels


def read_file(path: str | os.PathLike) -> list[tuple[Any, str]]:
    """[(item, label)] from one file: structures (or BadInput for a bad CIF block / frame)
    or formula strings. Raises DataError naming the file when it cannot be read at all."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: the file is empty")
    kind = _kind(p)
    if kind == "table":
        return _read_table(p)
    if kind == "json":
        return _read_json(p)
    if kind == "ase":
        return _read_ase(p)
    if p.suffix.lower() in (".cif", ".mcif"):
        return _read_cif(p)
    return [(_read_pymatgen(p), p.name)]


def _read_pymatgen(p: Path):
    from pymatgen.core import Structure

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Structure.from_file(str(p))
    except Exception as exc:  # pymatgen raises many exception types on garbage
        raise DataError(f"{p}: not a readable structure file (CIF/POSCAR) ({_short(exc)})") from None


def _read_cif(p: Path) -> list[tuple[Any, str]]:
    from pymatgen.io.cif import CifFile, CifParser

    try:
        text = p.read_text(errors="strict")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not a text file (CIF expected) ({_short(exc)})") from None
    try:
        blocks = CifFile.from_str(text).data
    except Exception as exc:
        raise DataError(f"{p}: not a readable CIF file ({_short(exc)})") from None
    if not blocks:
        raise DataError(f"{p}: no CIF data block (no 'data_' line)")
    out, skipped = [], []
    many = len(blocks) > 1
    for name, block in blocks.items():
        label = f"{p.name}#{name}" if many else p.name
        if "_atom_site_fract_x" not in block.data and "_atom_site_Cartn_x" not in block.data:
            skipped.append(name)
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                structs = CifParser.from_str(str(block)).parse_structures(primitive=False, on_error="raise")
            if not structs:
                raise ValueError("no structure")
            out.append((structs[0], label))
        except Exception as exc:
            out.append((BadInput(f"{label}: unreadable CIF block ({_short(exc)})"), label))
    if skipped:
        warnings.warn(f"{p}: skipped CIF block(s) without atoms: {', '.join(skipped)}", BadInputWarning, stacklevel=3)
    if not out:
        raise DataError(f"{p}: no CIF block holds a structure (blocks: {', '.join(blocks)})")
    if not many and isinstance(out[0][0], BadInput):
        raise DataError(out[0][0].reason)
    return out


def _read_json(p: Path) -> list[tuple[Any, str]]:
    from pymatgen.core import Structure

    try:
        obj = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{p}: not valid JSON ({_short(exc)})") from None

    def is_structure(o) -> bool:
        return isinstance(o, dict) and "lattice" in o and "sites" in o

    def to_structure(o, label):
        if o.get("@class") in ("Molecule", "IMolecule") or ("sites" in o and "lattice" not in o):
            return BadInput(f"{label}: a Molecule (molecules are not supported: matmtl models periodic solids)")
        try:
            return Structure.from_dict(o)
        except Exception as exc:
            return BadInput(f"{label}: not a readable pymatgen Structure ({_short(exc)})")

    if isinstance(obj, dict) and (is_structure(obj) or obj.get("@class") in ("Molecule", "IMolecule")):
        item = to_structure(obj, p.name)
        if isinstance(item, BadInput):
            raise DataError(item.reason)
        return [(item, p.name)]
    if isinstance(obj, list) and obj and all(isinstance(o, dict) for o in obj) and any(is_structure(o) for o in obj):
        return [
            (
                to_structure(o, f"{p.name}#{k}")
                if is_structure(o)
                else BadInput(f"{p.name}#{k}: not a pymatgen Structure dict"),
                f"{p.name}#{k}",
            )
            for k, o in enumerate(obj)
        ]
    import pandas as pd

    try:
        frame = pd.DataFrame(obj) if isinstance(obj, list) else pd.DataFrame(obj)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{p}: JSON that is neither a pymatgen Structure nor a table ({_short(exc)})") from None
    return _formula_rows(frame, p)


def _read_table(p: Path) -> list[tuple[Any, str]]:
    from .data.sources import read_user_file

    try:
        frame = read_user_file(p)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{p}: cannot read the table ({_short(exc)})") from None
    return _formula_rows(frame, p)


def _formula_rows(frame, p: Path) -> list[tuple[Any, str]]:
    if len(frame) == 0:
        raise DataError(f"{p}: the table has no rows")
    lower = {str(c).lower().strip(): c for c in frame.columns}
    col = next(
        (
            lower[c]
            for c in ("formula", "composition", "formula_pretty", "pretty_formula", "reduced_formula")
            if c in lower
        ),
        None,
    )
    if col is None:
        hint = ""
        if len(frame.columns) == 1 and any(ch in str(frame.columns[0]) for ch in ";\t|"):
            hint = " (the header looks separated by another character)"
        raise DataError(f"{p}: no formula column (formula/composition); columns: {list(frame.columns)}{hint}")
    idc = next((lower[c] for c in ("id", "mbid", "material_id", "name") if c in lower), None)
    rows = []
    for i, f in enumerate(frame[col].tolist()):
        label = f"{p.name}:{frame[idc].iloc[i] if idc else i}"
        if isinstance(f, str):
            f = f.strip()
        elif not (f is None or (isinstance(f, float) and f != f)):  # NaN/None stay: a "missing formula" note
            f = str(f)
        rows.append((f, label))
    return rows


def _read_ase(p: Path) -> list[tuple[Any, str]]:
    try:
        from ase.io import read as ase_read
    except ImportError:
        raise DataError(
            f"{p}: reading {p.suffix or p.name} files needs ASE, which is not installed "
            "(pip install ase), or convert it to CIF/POSCAR"
        ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frames = ase_read(str(p), index=":")
    except Exception as exc:  # ASE raises many exception types on garbage
        raise DataError(f"{p}: not readable by ASE ({_short(exc)})") from None
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise DataError(f"{p}: no structure in the file")
    many = len(frames) > 1
    out = []
    for k, atoms in enumerate(frames):
        label = f"{p.name}#{k}" if many else p.name
        try:
            out.append((atoms_to_structure(atoms, label), label))
        except DataError as exc:
            if not many:
                raise
            out.append((BadInput(str(exc)), label))
    return out


def is_ase_atoms(x) -> bool:
    return type(x).__name__ == "Atoms" and type(x).__module__.startswith("ase")


def atoms_to_structure(atoms, where: str = "input"):
    """A pymatgen Structure from ASE Atoms (pymatgen's AseAtomsAdaptor), refusing atoms
    without a periodic 3-D cell (molecules)."""
    import numpy as np
    from pymatgen.io.ase import AseAtomsAdaptor

    pbc = [bool(v) for v in np.atleast_1d(atoms.pbc)]
    cell = np.asarray(atoms.cell[:], dtype=float)
    volume = abs(float(np.linalg.det(cell))) if cell.shape == (3, 3) else 0.0
    if len(atoms) == 0:
        raise DataError(f"{where}: ASE Atoms with no atoms")
    if not any(pbc) or volume < 1e-6:
        raise DataError(
            f"{where}: ASE Atoms without a periodic 3-D cell (pbc={pbc}, cell volume {volume:.3g} Å^3); "
            "matmtl models periodic solids (molecules are not supported)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AseAtomsAdaptor.get_structure(atoms)
    except Exception as exc:
        raise DataError(f"{where}: ASE Atoms could not be converted to a pymatgen Structure ({_short(exc)})") from None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


# -- writing ------------------------------------------------------------------------


def write_predictions(
    df, path: str | os.PathLike, *, model: str | os.PathLike | None = None, units_in_header: bool = False
) -> Path:
    """Write a predictions DataFrame to ``path``, atomically, in the format its suffix
    names: ``.csv`` (or ``.tsv``): the DataFrame's columns (those of ``matmtl.predict``),
    with ``units_in_header=True`` headers carry units (``gap_expt (eV)``); ``.json``: an
    object ``{"units": {...}, "model": ..., "columns": [...], "n": ..., "predictions":
    [one object per row]}`` (NaN written as null). Any other suffix, or a folder, is a
    MatmtlError naming the path. Returns the path."""
    import pandas as pd

    from . import __version__
    from .io import atomic_write

    if not isinstance(df, pd.DataFrame):
        raise MatmtlError(f"write_predictions: expected a pandas DataFrame, got {type(df).__name__}")
    path = Path(path).expanduser()
    if path.is_dir():
        raise MatmtlError(f"{path} is a folder; give a file name ending .csv or .json for the predictions")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        out = (
            df.rename(columns={c: f"{c} ({UNITS[c]})" for c in df.columns if c in UNITS and c != "spg_num"})
            if units_in_header
            else df
        )
        sep = "\t" if suffix == ".tsv" else ","
        atomic_write(path, lambda p: out.to_csv(p, index=False, sep=sep, float_format="%.6g"))
    elif suffix == ".json":
        records = json.loads(df.to_json(orient="records", double_precision=10))
        doc = {
            "matmtl_version": __version__,
            "model": None if model is None else str(model),
            "units": {c: u for c, u in UNITS.items() if c in df.columns},
            "columns": [str(c) for c in df.columns],
            "n": len(df),
            "predictions": records,
        }
        text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
        atomic_write(path, lambda p: p.write_text(text))
    else:
        raise MatmtlError(
            f"{path}: cannot tell the output format from the suffix {suffix or '(none)'!r}; use .csv, .tsv or .json"
        )
    return path


def read_predictions(path: str | os.PathLike):
    """A predictions file written by :func:`write_predictions`, back as a DataFrame with
    the API's column names (units stripped from CSV headers)."""
    import re

    import pandas as pd

    path = Path(path)
    if path.suffix.lower() == ".json":
        doc = json.loads(path.read_text())
        return pd.DataFrame(doc["predictions"], columns=doc.get("columns"))
    df = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", keep_default_na=True)
    return df.rename(columns=lambda c: re.sub(r"\s*\(.*\)$", "", str(c)))


__all__ = [
    "ON_BAD",
    "UNITS",
    "BadInput",
    "BadInputWarning",
    "check_on_bad",
    "is_path_like",
    "expand_paths",
    "read_inputs",
    "read_file",
    "atoms_to_structure",
    "is_ase_atoms",
    "write_predictions",
    "read_predictions",
]
