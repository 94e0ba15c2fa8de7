"""The DFT metal gate: the experimental-gap model's metal / non-metal decision checked
against Materials Project's PBE band gap of the same composition (issue #14).

Almost half of the expt_gap test error comes from the metal decision on a few rows
(results/expt_gap_error_breakdown.json). PBE knows metals well: a compound that is a
metal in PBE is rarely gapped in experiment, and PBE's typical failure is the other way
round (small-gap semiconductors it calls metals). The gate reads the PBE gap of the
composition's MP ground state (the polymorph with the lowest formation energy), or of
MP's polymorph in the given structure's space group (:class:`PbeGaps`, from
:func:`matmtl.train.data.mp_pbe_gaps`; what MP does not have passes unchanged, and so does
every compound of a lanthanide Ce..Yb or actinide Pa..No, :data:`OPEN_F`, whose partly
filled f shell PBE without +U puts at the Fermi level, and every composition the model
was trained on, :func:`leave_seen`) and, by its ``mode``:

* ``"off"``: the model's prediction as it is;
* ``"metal"``: 0 eV where PBE calls it a metal (its gap is 0);
* ``"both"``: as ``"metal"``, and where the model says metal (a prediction of exactly
  0 eV: every ensemble member calls it a metal) but PBE gives a gap, the PBE gap on the
  experimental scale, ``slope * gap + intercept`` (a line fitted on training rows that
  are gapped in both).

Which mode a run uses is chosen on its validation rows (:func:`choose`), like the metal
cut of the gap head; the line is fitted on its training rows (:func:`fit_line`). Nothing
here reads a test row. A fine-tuning run writes its gate and the PBE gaps that gate needs
to ``metal_gate.json.gz`` in the run folder (:func:`save`; gzipped JSON, read back by
:func:`load`, never unpickled).
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import MatmtlError

GATE_FILE = "metal_gate.json.gz"
FORMAT = 1
SOURCE = (
    "matbench mp_gap PBE gaps (median over the rows of a composition and space group); the ground state "
    "is the polymorph with the lowest formation energy in matbench mp_e_form; compositions with a "
    "lanthanide Ce..Yb or an actinide Pa..No are left out (PBE without +U misplaces their 4f/5f states)"
)

MODES = ("off", "metal", "both")
#: the lanthanides Ce..Yb and actinides Pa..No, whose 4f / 5f shells are partly filled in most
#: of their compounds (a heuristic by element, not by oxidation state): PBE without +U puts
#: those states at the Fermi level, so MP's PBE gap of their compounds is weak evidence
OPEN_F = frozenset(range(58, 71)) | frozenset(range(91, 103))


def has_open_f(z) -> np.ndarray:
    """Per row of atomic numbers ``z`` (rows x elements, 0 padding): does it hold an
    element of :data:`OPEN_F` (so the gate reads no PBE gap for it)?"""
    return np.isin(np.asarray(z), list(OPEN_F)).any(axis=1)


@dataclass(frozen=True)
class MetalGate:
    """A fitted gate: ``mode`` (one of :data:`MODES`) and the line from PBE to
    experimental gaps (eV) that ``"both"`` uses."""

    mode: str = "off"
    slope: float = 1.0
    intercept: float = 0.0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"metal gate mode must be one of {MODES}, got {self.mode!r}")
        if not (np.isfinite(self.slope) and np.isfinite(self.intercept)):
            raise ValueError(f"metal gate line must be finite, got slope {self.slope}, intercept {self.intercept}")

    def apply(self, pred, pbe_gap) -> np.ndarray:
        """``pred`` (eV, >= 0; exactly 0 is the model's metal call) gated by ``pbe_gap``
        (eV per row; NaN where MP does not have the composition)."""
        p, g = _rows(pred, pbe_gap)
        out = p.copy()
        if self.mode == "off":
            return out
        known = np.isfinite(g)
        out[known & (g == 0)] = 0.0
        if self.mode == "both":
            fill = known & (g > 0) & (p == 0)
            out[fill] = np.maximum(self.slope * g[fill] + self.intercept, 0.0)
        return out

    def to_dict(self) -> dict:
        return {**asdict(self), "unit": "eV"}

    @classmethod
    def from_dict(cls, d: dict) -> "MetalGate":
        return cls(mode=str(d["mode"]), slope=float(d["slope"]), intercept=float(d["intercept"]))


def _rows(pred, pbe_gap) -> tuple[np.ndarray, np.ndarray]:
    p, g = np.asarray(pred, dtype=float), np.asarray(pbe_gap, dtype=float)
    if p.ndim != 1 or p.shape != g.shape:
        raise ValueError(f"predictions {p.shape} and PBE gaps {g.shape} must be 1-D of the same length")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("predictions must be finite and >= 0 eV")
    if (g[np.isfinite(g)] < 0).any() or np.isinf(g).any():
        raise ValueError("PBE gaps must be >= 0 eV, or NaN where unknown")
    return p, g


def fit_line(pbe_gap, target) -> tuple[float, float]:
    """Least-squares ``target ~ slope * pbe_gap + intercept`` over the rows gapped in both
    (eV); (1, 0) when fewer than 2 such rows, or no spread in the PBE gaps."""
    g, y = np.asarray(pbe_gap, dtype=float), np.asarray(target, dtype=float)
    m = np.isfinite(g) & (g > 0) & (y > 0)
    if m.sum() < 2 or np.ptp(g[m]) == 0:
        return 1.0, 0.0
    slope, intercept = np.polyfit(g[m], y[m], 1)
    return float(slope), float(intercept)


def choose(pred, target, pbe_gap, line: tuple[float, float]) -> tuple[MetalGate, dict[str, float]]:
    """The gate with the lowest MAE on validation rows (``pred``: the model's predictions
    on them, ``target``: their measured gaps); a tie goes to the simpler mode (the order
    of :data:`MODES`). Returns it and every mode's validation MAE (eV)."""
    y = np.asarray(target, dtype=float)
    if y.shape != np.shape(pred) or not np.isfinite(y).all():
        raise ValueError("validation targets must be finite, one per prediction")
    if y.size == 0:
        raise ValueError("no validation rows: the metal gate cannot be chosen")
    gates = [MetalGate(mode, *line) for mode in MODES]
    maes = {g.mode: float(np.abs(g.apply(pred, pbe_gap) - y).mean()) for g in gates}
    best = min(gates, key=lambda g: maes[g.mode])  # min keeps the first of equal ones
    return best, maes


def fit(train_pbe, train_target, val_pred, val_target, val_pbe) -> tuple[MetalGate, dict[str, float]]:
    """The gate of one run: its line fitted on the training rows (their PBE and measured
    gaps), its mode chosen on the validation rows (the model's predictions, the measured
    and the PBE gaps); see :func:`fit_line` and :func:`choose`."""
    return choose(val_pred, val_target, val_pbe, fit_line(train_pbe, train_target))


def trained_keys(z, frac) -> set[str]:
    """The compositions of training rows (featurized atomic numbers ``z`` and fractions
    ``frac``, or a stored training domain's, :class:`matmtl.uncertainty.Domain`) as key
    strings, the fractions first rounded to 6 decimals as a domain record stores them: keys
    from the rows and from their domain are the same (:func:`seen_rows` reads them)."""
    return {key_string(k) for k in _keys6(z, frac)}


def seen_rows(z, frac, trained: set[str]) -> np.ndarray:
    """Per row of ``z`` / ``frac``: is its composition one of ``trained``
    (:func:`trained_keys`), one the model was trained on?"""
    return np.fromiter((key_string(k) in trained for k in _keys6(z, frac)), dtype=bool, count=len(z))


def _keys6(z, frac) -> list[tuple]:
    from .data.composition import composition_keys

    return composition_keys(z, np.round(np.asarray(frac, dtype=np.float64), 6) * (np.asarray(z) > 0))


def leave_seen(pbe_gap, seen) -> np.ndarray:
    """``pbe_gap`` (eV per row) with NaN, so the gate passes the row, where ``seen`` (per
    row, :func:`seen_rows`): a composition the model was trained on. The model has learned
    that composition's measured gap, and the gate's mode was chosen on validation rows,
    which it was not trained on: on the shipped model's own training compositions the gate
    would change 112 answers, 103 of them measured gapped, and raise their MAE from 0.36 to
    1.15 eV (GaSb, InAs, InSb: metals in PBE, measured 0.81, 0.41, 0.23 eV)."""
    out, seen = np.array(pbe_gap, dtype=float), np.asarray(seen, dtype=bool)
    if out.shape != seen.shape:
        raise ValueError(f"{out.shape} PBE gaps for {seen.shape} rows")
    out[seen] = np.nan
    return out


def key_string(key: tuple) -> str:
    """A composition key (:func:`matmtl.data.composition.composition_keys`) as text: "Z:share,..."."""
    return ",".join(f"{z}:{share:g}" for z, share in key)


@dataclass(frozen=True)
class PbeGaps:
    """Materials Project PBE gaps (eV) by composition: ``ground_state`` maps a key string
    (:func:`key_string`) to its ground state's gap, ``by_symmetry`` maps "key|space group"
    to that polymorph's gap."""

    ground_state: dict[str, float] = field(default_factory=dict)
    by_symmetry: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_data(cls, data_dir: str | None = None, *, open_f: bool = False) -> "PbeGaps":
        """From the dataset mirror's mp_gap and mp_e_form tables (built once per process;
        treat the result as read-only). Every composition with an element of :data:`OPEN_F`
        is left out (its gap reads as unknown, so the gate passes it) unless ``open_f``."""
        return _from_data(data_dir, open_f)

    def lookup(self, keys: list[tuple], spg) -> np.ndarray:
        """Per row the PBE gap (eV) of composition ``keys[i]`` in space group ``spg[i]``
        (0: no structure, the ground state); NaN where MP has no such polymorph."""
        spg = np.asarray(spg, dtype=np.int64)
        out = np.full(len(keys), np.nan)
        for i, (key, s) in enumerate(zip(keys, spg.tolist())):
            k = key_string(key)
            out[i] = self.by_symmetry.get(f"{k}|{s}", np.nan) if s > 0 else self.ground_state.get(k, np.nan)
        return out

    def needed_by(self, mode: str) -> "PbeGaps":
        """Only what a gate of ``mode`` reads: nothing for "off", the PBE metals for
        "metal", everything for "both" (keeps the shipped file small)."""
        if mode == "off":
            return PbeGaps()
        if mode == "metal":
            return PbeGaps(
                {k: g for k, g in self.ground_state.items() if g == 0},
                {k: g for k, g in self.by_symmetry.items() if g == 0},
            )
        return self


@lru_cache(maxsize=4)
def _from_data(data_dir: str | None, open_f: bool) -> PbeGaps:
    from .train.data import mp_ground_state_symmetry, mp_pbe_gaps

    gaps, ground = mp_pbe_gaps(data_dir), mp_ground_state_symmetry(data_dir)
    if not open_f:
        gaps = {(k, s): g for (k, s), g in gaps.items() if not any(z in OPEN_F for z, _ in k)}
    by_symmetry = {f"{key_string(k)}|{s}": g for (k, s), g in gaps.items()}
    ground_state = {key_string(k): gaps[(k, s)] for k, s in ground.items() if (k, s) in gaps}
    return PbeGaps(ground_state, by_symmetry)


def dumps(gate: MetalGate, gaps: PbeGaps, extra: dict | None = None) -> bytes:
    """``gate`` and the PBE gaps it needs as gzipped JSON (what :func:`save` writes)."""
    doc = {
        "format": FORMAT,
        "gate": gate.to_dict(),
        "source": SOURCE,
        **(extra or {}),
        **asdict(gaps.needed_by(gate.mode)),
    }
    return gzip.compress(json.dumps(doc, separators=(",", ":")).encode(), mtime=0)


def loads(data: bytes, where: str | Path) -> tuple[MetalGate, PbeGaps]:
    """What :func:`dumps` wrote; MatmtlError naming ``where`` and what is wrong when it
    is not that."""
    try:
        doc = json.loads(gzip.decompress(data))
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT}")
        gate = MetalGate.from_dict(doc["gate"])
        tables = []
        for name in ("ground_state", "by_symmetry"):
            table = doc[name]
            if not isinstance(table, dict) or not all(
                isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in table.values()
            ):
                raise ValueError(f"{name} must map compositions to finite gaps >= 0 eV")
            tables.append({str(k): float(v) for k, v in table.items()})
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, gzip.BadGzipFile) as exc:
        raise MatmtlError(f"{where}: not a readable metal gate file ({exc})") from None
    return gate, PbeGaps(*tables)


def save(path: str | Path, gate: MetalGate, gaps: PbeGaps, extra: dict | None = None) -> Path:
    """Write ``gate`` and the PBE gaps it needs to ``path`` (gzipped JSON, atomically)."""
    from .io import atomic_write

    data = dumps(gate, gaps, extra)
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def load(path: str | Path) -> tuple[MetalGate, PbeGaps]:
    """Read a gate file written by :func:`save` (see :func:`loads`)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise MatmtlError(f"{path}: not a readable metal gate file ({exc})") from None
    return loads(data, path)
