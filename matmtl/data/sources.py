"""Where dataset files come from, in order: an explicit directory (``--data-dir`` or
$MATMTL_DATA_DIR), the offline mirror ``../shared/data`` beside the repository, then
the online path for real users, matminer's ``load_dataset`` (figshare downloads).

Every reader returns a raw pandas table with matmtl's column names
(``id``, ``formula``, optional ``spg_num``/``crys_sys``/``mp_id``/``cif``, targets).
Nothing is ever written into a data source."""

from __future__ import annotations

import bz2
import json
import os
import re
import tarfile
from pathlib import Path

import pandas as pd

from ..errors import DataError, DatasetNotFound
from .registry import DatasetSpec

_REPO_ROOT = Path(__file__).resolve().parents[2]

# matbench artifact / matminer column names -> matmtl's canonical target names
_TARGET_COLUMNS = {"e_form": "e_form", "gap pbe": "gap_pbe", "gap expt": "gap_expt"}


def explicit_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The directory the user named (argument first, then $MATMTL_DATA_DIR), or None."""
    chosen = data_dir if data_dir is not None else os.environ.get("MATMTL_DATA_DIR")
    if not chosen:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DatasetNotFound(f"data directory {str(path)!r} does not exist")
    return path


def mirror_dirs() -> list[Path]:
    """Candidate offline mirrors: ``../shared/data`` beside the repository (editable
    installs and source trees), then beside / below the working directory."""
    cands = [
        _REPO_ROOT.parent / "shared" / "data",
        Path.cwd().parent / "shared" / "data",
        Path.cwd() / "shared" / "data",
    ]
    seen, out = set(), []
    for c in cands:
        c = c.resolve()
        if c not in seen and c.is_dir():
            seen.add(c)
            out.append(c)
    return out


def find_local(spec: DatasetSpec, root: Path) -> tuple[str, Path] | None:
    """('mirror', dir) if root holds the mirror layout for spec, ('matminer', file) if it
    holds matminer's own file for it, else None."""
    if all((root / f).is_file() for f in spec.mirror_files):
        return "mirror", root
    if spec.matminer_name:
        f = root / f"{spec.matminer_name}.json.gz"
        if f.is_file():
            return "matminer", f
    return None


def read_mirror(spec: DatasetSpec, root: Path) -> pd.DataFrame:
    if spec.name == "mp_cgcnn":
        return _read_cgcnn(root)
    if spec.name == "oqmd_gap":
        return _read_crabnet_parts(root, spec)
    return _read_matbench_artifact(root / spec.mirror_files[0])


def _read_crabnet_parts(root: Path, spec: DatasetSpec) -> pd.DataFrame:
    """CrabNet's benchmark CSVs (``formula,target``), one after another; a row's id names
    its file and line (e.g. ``train:0``)."""
    frames = []
    for rel in spec.mirror_files:
        try:
            part = pd.read_csv(root / rel, keep_default_na=False, na_values=[""])
        except (OSError, ValueError) as exc:
            raise DataError(f"{root / rel}: not a readable CSV ({exc})") from exc
        if list(part.columns) != ["formula", "target"]:
            raise DataError(f"{root / rel}: expected the columns formula,target; found {list(part.columns)}")
        part.insert(0, "id", [f"{Path(rel).stem}:{i}" for i in range(len(part))])
        frames.append(part)
    return pd.concat(frames, ignore_index=True).rename(columns={"target": spec.targets[0].name})


def _read_matbench_artifact(path: Path) -> pd.DataFrame:
    """bz2-compressed pandas ``to_json(orient="columns")``: {col: {"0": v0, ...}}."""
    try:
        with bz2.open(path, "rt") as fh:
            cols = json.load(fh)
    except (OSError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: not a readable matbench artifact ({exc})") from exc
    frame = pd.DataFrame({c: pd.Series({int(k): v for k, v in col.items()}) for c, col in cols.items()}).sort_index()
    return frame.rename(columns={"mbid": "id", "composition": "formula", **_TARGET_COLUMNS})


_FORMULA_SUM = re.compile(r"^_chemical_formula_sum\s+['\"]?([^'\"\n]+)['\"]?", re.M)


def _read_cgcnn(root: Path) -> pd.DataFrame:
    """The CGCNN MP set: CIF texts from the tarball, e_form and mp-id by index."""
    base = root / "crysxpp" / "data"
    props = pd.read_csv(base / "id_prop.csv", header=None, names=["index", "e_form"])
    ids = pd.read_csv(base / "material_id_hash.csv", header=None, names=["index", "mp_id"])
    cifs: dict[int, str] = {}
    with tarfile.open(base / "cifs.tar.gz", "r:gz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".cif"):
                continue
            cifs[int(Path(member.name).stem)] = tar.extractfile(member).read().decode()
    frame = props.merge(ids, on="index", validate="one_to_one").sort_values("index")
    frame["cif"] = frame["index"].map(cifs)
    frame["formula"] = [_cif_formula(t) for t in frame["cif"]]
    frame["id"] = frame["mp_id"]
    return frame[["id", "formula", "mp_id", "cif", "e_form"]].reset_index(drop=True)


def _cif_formula(text) -> str | None:
    if not isinstance(text, str):
        return None
    m = _FORMULA_SUM.search(text)
    return m.group(1).strip() if m else None


def read_matminer(spec: DatasetSpec, data_home: str | os.PathLike | None = None, download: bool = True) -> pd.DataFrame:
    """matminer's ``load_dataset`` (downloads from figshare unless the file is already in
    its data home: ``data_home``, $MATMINER_DATA, or matminer's package folder).
    Structures are reduced to formula, space group and crystal system."""
    if spec.matminer_name is None:
        raise DatasetNotFound(f"{spec.name}: no local copy found and matminer does not distribute it")
    from matminer.datasets import load_dataset as mm_load

    home = data_home if data_home is not None else os.environ.get("MATMINER_DATA")
    try:
        raw = mm_load(spec.matminer_name, data_home=str(home) if home else None, download_if_missing=download)
    except (OSError, ValueError, UserWarning) as exc:
        raise DatasetNotFound(f"{spec.name}: matminer could not provide {spec.matminer_name!r} ({exc})") from exc
    return from_matminer_frame(raw, spec)


def from_matminer_frame(raw: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    frame = raw.rename(columns=_TARGET_COLUMNS)
    out = pd.DataFrame({"id": [f"{spec.matminer_name}-{i}" for i in range(len(frame))]})
    if "structure" in frame.columns:
        from .featurize import symmetry_of

        sym = [symmetry_of(s) for s in frame["structure"]]
        out["formula"] = [s.composition.formula for s in frame["structure"]]
        out["spg_num"] = [s[0] for s in sym]
        out["crys_sys"] = [s[1] for s in sym]
    else:
        col = "composition" if "composition" in frame.columns else "formula"
        out["formula"] = [c.formula if hasattr(c, "formula") else c for c in frame[col]]
    for t in spec.target_names:
        out[t] = frame[t].to_numpy()
    return out


_DECIMAL_COMMA = re.compile(r"^\s*[-+]?\d+,\d+(?:[eE][-+]?\d+)?\s*$")


def read_user_file(path: Path, sep: str | None = None) -> pd.DataFrame:
    """A user's CSV/TSV or JSON table (JSON: records or pandas' column orient).

    ``sep=None`` detects the separator of a .csv: a comma, else (when the header holds
    no comma) ``;``, a tab or ``|``; a ``;``-separated file whose numbers use a decimal
    comma ("1,42") is read as such. ``frame.attrs`` records ``separator`` and ``decimal``."""
    if not path.is_file():
        raise DatasetNotFound(f"{path}: no such file" + (" (it is a folder)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    suffixes = "".join(path.suffixes[-2:]).lower()
    try:
        if suffixes.endswith((".csv", ".csv.gz", ".csv.bz2", ".tsv", ".tsv.gz", ".txt")):
            default = "\t" if ".tsv" in suffixes else ","
            return _read_delimited(path, sep or default, detect=sep is None)
        if suffixes.endswith((".json", ".json.gz", ".json.bz2")):
            return pd.read_json(path)
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({_one_line(exc)}); save the file as UTF-8") from None
    except (pd.errors.EmptyDataError, ValueError, OSError) as exc:
        raise DataError(f"{path}: could not be read as a table ({_one_line(exc)})") from exc
    raise DataError(f"{path}: unsupported file type; use .csv, .tsv or .json (optionally .gz/.bz2)")


def _read_delimited(path: Path, sep: str, detect: bool) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, sep=sep)
    except pd.errors.ParserError as exc:
        head = _first_line(path)
        other = next((c for c in (";", "\t", "|") if c in head and c != sep), None)
        if detect and other:
            frame = pd.read_csv(path, sep=other)
            sep = other
        else:
            hint = f" (the header holds {other!r}: is it {other!r}-separated? pass sep={other!r})" if other else ""
            raise DataError(
                f"{path}: could not be read as a {_sep_name(sep)}-separated table ({_one_line(exc)}){hint}"
            ) from None
    if detect and frame.shape[1] == 1:
        header = str(frame.columns[0])
        other = next((c for c in (";", "\t", "|") if c in header), None)
        if other:
            frame = pd.read_csv(path, sep=other)
            sep = other
    header = [str(c).strip() for c in pd.read_csv(path, sep=sep, header=None, nrows=1).iloc[0].tolist()]
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:  # pandas would silently rename the second one ("gap" -> "gap.1")
        raise DataError(f"{path}: repeated column name(s) {repeated} in the header")
    decimal = "."
    if sep != ",":
        comma_cols = [
            c
            for c in frame.columns
            if frame[c].dtype == object
            and frame[c]
            .dropna()
            .map(lambda v: bool(_DECIMAL_COMMA.match(str(v))))
            .pipe(lambda m: len(m) > 0 and bool(m.all()))
        ]
        if comma_cols:
            frame = pd.read_csv(path, sep=sep, decimal=",")
            decimal = ","
    frame.attrs["separator"], frame.attrs["decimal"] = sep, decimal
    return frame


def _first_line(path: Path) -> str:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else bz2.open if path.suffix == ".bz2" else open
    try:
        with opener(path, "rt", errors="replace") as fh:
            return fh.readline()
    except OSError:
        return ""


def _sep_name(sep: str) -> str:
    return {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}.get(sep, repr(sep))


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]


def describe_sources(spec: DatasetSpec, data_dir=None) -> str:
    """One line saying where ``spec`` would be read from, for `matmtl data list`."""
    explicit = explicit_dir(data_dir) if data_dir or os.environ.get("MATMTL_DATA_DIR") else None
    for root in [explicit] if explicit else mirror_dirs():
        hit = find_local(spec, root)
        if hit:
            return f"{hit[0]}: {hit[1]}"
    return "online (matminer)" if spec.matminer_name else "not available"


__all__ = ["explicit_dir", "mirror_dirs", "find_local", "read_mirror", "read_matminer", "read_user_file"]
