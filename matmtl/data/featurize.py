"""Turning compositions and structures into model inputs, cached on disk.

Inputs are formula strings, Compositions (pymatgen's, or matmtl's pymatgen-free
:class:`~matmtl.data.composition.ElementAmounts`), Structures or CIF texts. A featurized input
is: the atomic numbers of its elements and their fractions
(padded to ``max_elements``) and, when known, its space-group number (0 = unknown:
experimental compositions come without a structure). Symmetry analysis is the slow
part for structures, so bulk results are cached under the user cache, keyed by a
hash of the inputs and the featurizer settings: a second run skips the work."""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from ..errors import DataError
from ..io import atomic_write, cache_dir, sha256_of
from .composition import ElementAmounts, is_pymatgen
from .periodic import MAX_Z, SYMBOLS, Z_OF
from .plain import plain_fractions
from .validate import check_structure, parse_composition

if TYPE_CHECKING:  # pymatgen is imported where a structure or a CIF is read
    from pymatgen.core import Structure

FEATURIZER_VERSION = "2"  # 2: symmetry by moyopy
CRYSTAL_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic")
_LAST_SPACE_GROUP = (2, 15, 74, 142, 167, 194, 230)  # of each crystal system, in order


def crystal_system(number: int) -> str:
    """The crystal system of space group ``number`` (1-230), "unknown" for 0."""
    if number == 0:
        return "unknown"
    for last, system in zip(_LAST_SPACE_GROUP, CRYSTAL_SYSTEMS):
        if number <= last:
            return system
    raise ValueError(f"space-group number must be 0..230, got {number}")


def symmetry_of(structure: Structure, symprec: float = 0.1) -> tuple[int, str]:
    """(space-group number, crystal system) of a structure; (0, "unknown") if no
    symmetry search succeeds even at a 10x looser tolerance.

    The search runs in moyopy (Rust), about 8x faster than spglib on Materials
    Project crystals and with the same space groups at symprec 0.1 (the setting MP
    used for the training data's ``spg_num``); spglib (through pymatgen) is the
    fallback for the rare cell moyopy rejects."""
    import moyopy

    cell = moyopy.Cell(
        structure.lattice.matrix.tolist(), structure.frac_coords.tolist(), list(structure.atomic_numbers)
    )
    for prec in (symprec, symprec * 10):
        try:
            number = int(moyopy.MoyoDataset(cell, symprec=prec).number)
        except Exception:  # moyopy refuses some odd cells; a looser tolerance, then spglib
            continue
        return number, crystal_system(number)
    return _spglib_symmetry(structure, symprec)


def _spglib_symmetry(structure: Structure, symprec: float) -> tuple[int, str]:
    import warnings

    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    for prec in (symprec, symprec * 10):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # spglib's error-handling notice
                number = int(SpacegroupAnalyzer(structure, symprec=prec).get_space_group_number())
                return number, crystal_system(number)
        except Exception:  # spglib can fail on odd cells too
            continue
    return 0, "unknown"


@dataclass
class Features:
    z: np.ndarray  # (n, max_elements) int64 atomic numbers, 0 = padding
    frac: np.ndarray  # (n, max_elements) float32 element fractions, rows sum to 1
    spg: np.ndarray  # (n,) int64 space-group number, 0 = unknown

    def __len__(self) -> int:
        return len(self.spg)

    def subset(self, idx) -> "Features":
        return Features(self.z[idx], self.frac[idx], self.spg[idx])


@dataclass(frozen=True)
class Featurizer:
    max_elements: int = 10
    symprec: float = 0.1
    cache: bool = True
    min_cached_rows: int = 512  # tiny batches (predict) are faster to redo than to hash

    def settings(self) -> dict:
        d = asdict(self)
        d.pop("cache"), d.pop("min_cached_rows")
        return {"version": FEATURIZER_VERSION, **d}

    def __call__(self, inputs: Sequence, spg: Iterable[int] | None = None, where: str = "input") -> Features:
        items = list(inputs)
        if not items:
            raise DataError(f"{where}: nothing to featurize (empty input)")
        spg_given = None if spg is None else np.asarray(list(spg), dtype=np.int64)
        if spg_given is not None and len(spg_given) != len(items):
            raise DataError(f"{where}: {len(spg_given)} space groups for {len(items)} inputs")
        path = None
        if self.cache and len(items) >= self.min_cached_rows:
            digest = sha256_of(
                json.dumps(self.settings(), sort_keys=True),
                "\n".join(_content_key(x) for x in items),
                b"" if spg_given is None else spg_given.tobytes(),
            )
            path = cache_dir() / "features" / f"{digest}.npz"
            hit = _load(path)
            if hit is not None:
                return hit
        feats = self._compute(items, spg_given, where)
        if path is not None:
            _save(path, feats)
        return feats

    def _compute(self, items: list, spg_given, where: str) -> Features:
        n, e = len(items), self.max_elements
        z = np.zeros((n, e), dtype=np.int64)
        frac = np.zeros((n, e), dtype=np.float32)
        spg = np.zeros(n, dtype=np.int64)
        for i, x in _rows(items, where):
            pairs, spg[i] = self.read(x, f"{where} {i}" if n > 1 else where)
            z[i, : len(pairs)] = [p[0] for p in pairs]
            frac[i, : len(pairs)] = [p[1] for p in pairs]
        if spg_given is not None:
            spg = np.where(spg_given > 0, spg_given, spg)
        if np.any((spg < 0) | (spg > 230)):
            raise DataError(f"{where}: space-group numbers must be in 1..230 (0 = unknown)")
        return Features(z, frac, spg)

    def read(self, x, label: str = "input") -> tuple[list[tuple[int, float]], int]:
        """(Z, fraction) pairs sorted by Z, and the space group (0: unknown), of one input;
        a DataError naming ``label`` if it cannot be read."""
        pairs = plain_fractions(x) if isinstance(x, str) else None
        spg = 0
        if pairs is None or len(pairs) > self.max_elements:
            pairs, spg = self._read_general(x, label)
        if pairs[-1][0] > MAX_Z:
            beyond = ", ".join(SYMBOLS[z - 1] for z, _ in pairs if z > MAX_Z)
            raise DataError(f"{label}: element(s) {beyond} beyond the {MAX_Z} elements matmtl models embed (H..Lr)")
        return pairs, spg

    def _read_general(self, x, label: str) -> tuple[list[tuple[int, float]], int]:
        """:meth:`read` for structures, CIF texts, Compositions and every formula that
        :func:`~matmtl.data.plain.plain_fractions` leaves to the general reader."""
        spg = 0
        if _is_cif(x):
            x = _read_cif(x, label)
        if is_pymatgen(x, "Structure") or type(x).__name__ == "Molecule":
            s = check_structure(x, label)
            comp = s.composition
            spg = symmetry_of(s, self.symprec)[0]
        elif isinstance(x, ElementAmounts):
            comp = x  # already checked (matmtl.data.formula.read_composition)
        else:
            comp = parse_composition(x, label)
        els = comp.fractions() if isinstance(comp, ElementAmounts) else comp.fractional_composition.get_el_amt_dict()
        if len(els) > self.max_elements:
            raise DataError(
                f"{label}: {comp.formula!r} has {len(els)} elements; this featurizer takes at most {self.max_elements}"
            )
        # sorted by atomic number so the same composition always gives the same row
        return sorted((_z(el), amt) for el, amt in els.items()), spg


def _rows(items: list, where: str):
    """enumerate(items), with a progress bar only where it helps: big batches or
    structures (rich draws it on a terminal only)."""
    if not (len(items) >= 20000 or _has_structures(items)):
        return enumerate(items)
    from rich.progress import track

    return track(enumerate(items), total=len(items), description=f"featurizing {where}", transient=True)


def _read_cif(text: str, label: str) -> Structure:
    from pymatgen.core import Structure

    try:
        return Structure.from_str(text, fmt="cif")
    except Exception as exc:
        raise DataError(f"{label}: unreadable CIF ({exc})") from exc


def _is_cif(x) -> bool:
    # CIF text is taken as a structure; no formula contains a cell-length tag
    return isinstance(x, str) and "_cell_length_a" in x


def _has_structures(items: list) -> bool:
    return any(is_pymatgen(x, "Structure") or _is_cif(x) for x in items[:1] + items[-1:])


def _z(symbol: str) -> int:
    if symbol in Z_OF:
        return Z_OF[symbol]
    from pymatgen.core import Element

    return Element(symbol).Z


def _content_key(x) -> str:
    if is_pymatgen(x, "Structure"):
        return "S:" + json.dumps(x.as_dict(), sort_keys=True)
    if is_pymatgen(x, "Composition") or isinstance(x, ElementAmounts):
        return "C:" + x.formula
    return ("CIF:" if _is_cif(x) else "F:") + str(x)


def _load(path: Path) -> Features | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:  # never unpickle cache files
            return Features(f["z"], f["frac"], f["spg"])
    except (OSError, ValueError, KeyError):
        return None  # a damaged cache entry is recomputed, not trusted


def _save(path: Path, feats: Features) -> None:
    def write(tmp: Path) -> None:
        buf = io.BytesIO()
        np.savez(buf, z=feats.z, frac=feats.frac, spg=feats.spg)
        tmp.write_bytes(buf.getvalue())

    try:
        atomic_write(path, write)
    except OSError as exc:  # a full disk or a read-only cache costs the cache, not the run
        import warnings

        warnings.warn(
            f"featurization cache not written ({exc}); the features are recomputed next time",
            RuntimeWarning,
            stacklevel=3,
        )
