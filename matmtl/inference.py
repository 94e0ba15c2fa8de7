"""Predictions from pymatgen objects, formulas and files (``matmtl.predict``, ``matmtl.load_model``).

>>> import matmtl
>>> matmtl.predict("GaAs")                     # one input -> Prediction
>>> matmtl.predict([structure, "NaCl", comp])  # a list -> pandas DataFrame
>>> matmtl.predict("structures/")              # a folder, a glob or a file -> DataFrame
>>> model = matmtl.load_model()                # the latest fine-tuned run; reuse it
>>> model.predict(many_structures)

Inputs: pymatgen Structure / Composition, a formula string (hydrates such as
``CuSO4·5H2O`` or ``CuSO4.5H2O`` read as the sum CuSO4 + 5 H2O), ASE ``Atoms`` (through
pymatgen's AseAtomsAdaptor), a CIF text, or paths (a Path, or a string with a ``/``, a
glob pattern or a known suffix: see :mod:`matmtl.predict_io`). None, numbers, dicts and
bytes raise :class:`~matmtl.errors.InputTypeError` (a TypeError) naming the input and its
position.

Outputs: ``gap_expt`` (band gap on the experimental scale, eV, from the fine-tuned
head), ``e_form`` (DFT formation energy, eV/atom, from the DFT head), each with an
uncertainty ``*_std``: the spread of the head's ensemble members recalibrated on the
training run's held-out rows (sigma = a*spread + b, see :mod:`matmtl.uncertainty`;
the raw spread where the run had no held-out labels for that task), ``p_metal`` (the
probability the material is a metal, gap 0) and ``spg_num`` (0 = no structure given:
the model then uses its "unknown symmetry" token). A head the model does not have
(e.g. e_form after ``finetune --aux none``) gives NaN with a note, never a stale number.

A single-element input (Si, Cu, a diamond structure) gets ``e_form = 0`` eV/atom with
std 0, by construction: the formation energy is measured from the elemental reference
state, so it is 0 for the element itself (a metastable polymorph given as a structure
lies somewhat above it; this model does not resolve that).

``trust`` says how far to trust each row (empty: nothing to flag), "; "-separated:
elements absent from the head's training data; a composition far from every training
composition (distance and threshold: :mod:`matmtl.uncertainty`); isolated atoms or a
vacuum layer in a structure; a structure given to a head trained on compositions only
(its space group is outside what that head learned); the e_form = 0 rule above; a gap
the checkpoint's DFT metal gate changed (:mod:`matmtl.metal_gate`: 0 eV where Materials
Project's PBE calls the composition's ground state, or the given polymorph, a metal), with
the model's own value.

Inputs the model cannot handle (unparsable formula, disordered structure, Molecule,
an element never seen in training, more elements than the model takes, an unreadable
file) raise DataError by default; ``on_bad="nan"`` keeps the row with NaN predictions
and the reason in the ``note`` column instead. Any other ``on_bad`` is an error.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import uncertainty
from .data.composition import ElementAmounts, is_pymatgen
from .data.formula import read_composition
from .errors import DataError, InputTypeError, MatmtlError, type_hint
from .predict_io import (
    BadInput,
    atoms_to_structure,
    check_on_bad,
    is_ase_atoms,
    is_path_like,
    read_inputs,
)

COLUMNS = [
    "input",
    "formula",
    "spg_num",
    "gap_expt",
    "gap_expt_std",
    "p_metal",
    "e_form",
    "e_form_std",
    "note",
    "trust",
]
#: an empty slab at least this thick (Å) across the cell is a vacuum layer
VACUUM_GAP = 7.0
#: a site is isolated when no atom lies within max(ISOLATED_MIN, ISOLATED_FACTOR x its vdW radius)
ISOLATED_FACTOR, ISOLATED_MIN = 2.4, 3.0
_AXES = "abc"


@dataclass
class Prediction:
    """The prediction for one input."""

    formula: str
    gap_expt: float  # eV, experimental scale
    gap_expt_std: float
    p_metal: float
    e_form: float  # eV/atom, DFT
    e_form_std: float
    spg_num: int  # 0 = unknown (no structure given)
    note: str = ""
    trust: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class Model:
    """A loaded checkpoint ready to predict; load once with :func:`load_model`, reuse."""

    def __init__(self, net, meta: dict, path: Path, metal_gate: tuple | None | str = "from_folder"):
        """``metal_gate``: (MetalGate, PbeGaps), or None for no gate; by default read from
        ``metal_gate.json.gz`` in ``path`` when it is there (see :mod:`matmtl.metal_gate`)."""
        self.net, self.meta, self.path = net, meta, Path(path)
        self.elements = set(meta.get("elements") or [])
        self.tasks = list(net.tasks)
        from .data.featurize import Featurizer

        fs = meta.get("featurizer") or {}
        self.featurizer = Featurizer(
            max_elements=int(fs.get("max_elements", 10)), symprec=float(fs.get("symprec", 0.1)), cache=False
        )
        self._domains: dict[str, Any] | None = None
        self._domain_note = ""
        self._trained_keys: set[str] | None = None
        if metal_gate == "from_folder":
            from .metal_gate import GATE_FILE, load

            file = self.path / GATE_FILE
            metal_gate = load(file) if file.is_file() else None
        #: (MetalGate, PbeGaps) of the checkpoint's DFT metal gate, or None without one
        self.metal_gate = metal_gate

    def __repr__(self) -> str:
        return f"matmtl.Model({self.path}, kind={self.meta.get('kind')}, tasks={self.tasks})"

    @property
    def metrics(self) -> dict:
        return self.meta.get("metrics", {})

    def predict(self, x, *, on_bad: str = "raise", batch_size: int = 2048):
        """A Prediction for one input (Structure, Composition, formula string, ASE
        Atoms), a DataFrame (columns: COLUMNS) for a list/tuple of them or for paths
        (a file, folder or glob pattern)."""
        check_on_bad(on_bad)
        if is_path_like(x):
            items, labels = read_inputs([x], on_bad=on_bad)
            return self.predict_frame(items, labels, on_bad=on_bad, batch_size=batch_size)
        single = _is_single(x)
        items = [x] if single else list(x)
        if not items:
            raise DataError("predict: empty input (give a Structure, Composition, formula string or a list of them)")
        labels = None
        if not single and any(is_path_like(i) for i in items):
            items, labels = _expand(items, on_bad)
        if single:  # no DataFrame (and no pandas import) for one input
            cols = self.predict_columns(items, labels, on_bad=on_bad, batch_size=batch_size)
            return Prediction(
                str(cols["formula"][0]),
                float(cols["gap_expt"][0]),
                float(cols["gap_expt_std"][0]),
                float(cols["p_metal"][0]),
                float(cols["e_form"][0]),
                float(cols["e_form_std"][0]),
                int(cols["spg_num"][0]),
                str(cols["note"][0]),
                str(cols["trust"][0]),
            )
        return self.predict_frame(items, labels, on_bad=on_bad, batch_size=batch_size)

    def predict_frame(
        self, items: Sequence, labels: Sequence[str] | None = None, *, on_bad: str = "raise", batch_size: int = 2048
    ):
        """One row per item (see COLUMNS). Every per-input problem follows ``on_bad``."""
        import pandas as pd

        cols = self.predict_columns(items, labels, on_bad=on_bad, batch_size=batch_size)
        return pd.DataFrame(cols)[COLUMNS]

    def predict_columns(
        self, items: Sequence, labels: Sequence[str] | None = None, *, on_bad: str = "raise", batch_size: int = 2048
    ) -> dict[str, list | np.ndarray]:
        """:meth:`predict_frame` as a dict of columns (COLUMNS, in order; pandas is not imported)."""
        check_on_bad(on_bad)
        n = len(items)
        labels = list(labels) if labels is not None else [_label(x, i) for i, x in enumerate(items)]
        if len(labels) != n:
            raise MatmtlError(f"predict: {len(labels)} labels for {n} inputs")
        comps, structs = [None] * n, [None] * n
        spg, notes, formulas = np.zeros(n, np.int64), [""] * n, [""] * n
        for i, x in enumerate(items):
            where = f"input {i} ({labels[i]})"
            try:
                comps[i], structs[i] = _to_model_input(x, where)
                formulas[i] = _display_formula(comps[i])  # shown even if this model cannot use it
                self._check_usable(comps[i], where)
                if structs[i] is not None:
                    from .data.featurize import symmetry_of

                    spg[i] = symmetry_of(structs[i], self.featurizer.symprec)[0]
            except DataError as exc:
                if on_bad == "raise":
                    raise
                comps[i] = structs[i] = None
                notes[i] = str(exc)
        ok = np.array([c is not None for c in comps], dtype=bool)
        out = {k: np.full(n, np.nan) for k in ("gap_expt", "gap_expt_std", "p_metal", "e_form", "e_form_std")}
        trust = [""] * n
        good = np.flatnonzero(ok)
        if len(good):
            f, good = self._featurize(good, comps, spg, notes, labels, on_bad)
        if len(good):
            preds = self.net.predict_arrays(f.z, f.frac, f.spg, self.tasks, batch_size=batch_size)
            gate_notes = [""] * len(good)
            if "gap_expt" in preds:
                out["gap_expt"][good] = preds["gap_expt"].mean(1)
                out["gap_expt_std"][good] = self._sigma("gap_expt", preds["gap_expt"].std(1))
                out["p_metal"][good] = preds["gap_expt_p_metal"].mean(1)
                gate_notes = self._apply_metal_gate(f, good, out["gap_expt"])
            if "e_form" in preds:
                out["e_form"][good] = preds["e_form"].mean(1)
                out["e_form_std"][good] = self._sigma("e_form", preds["e_form"].std(1))
                single_el = np.array([len(comps[i]) == 1 for i in good], dtype=bool)
                out["e_form"][good[single_el]] = 0.0  # the elemental reference state, by definition
                out["e_form_std"][good[single_el]] = 0.0
            flags = self._trust(good, comps, structs, spg, f)
            for r, i in enumerate(good):
                trust[i] = "; ".join(flags[r] + ([gate_notes[r]] if gate_notes[r] else []))
        missing = [t for t in ("gap_expt", "e_form") if t not in self.tasks]
        if missing:
            msg = f"this model has no {' / '.join(missing)} head ({self.meta.get('kind')} checkpoint {self.path})"
            notes = [f"{n_}; {msg}" if n_ else msg for n_ in notes]
        cols = {"input": labels, "formula": formulas, "spg_num": spg, **out, "note": notes, "trust": trust}
        return {c: cols[c] for c in COLUMNS}

    def _apply_metal_gate(self, f, good, gap: np.ndarray) -> list[str]:
        """Gate the gaps of rows ``good`` in place; a trust note for each row it changed."""
        notes = [""] * len(good)
        if self.metal_gate is None or self.metal_gate[0].mode == "off":
            return notes
        from .data.composition import composition_keys
        from .metal_gate import has_open_f, leave_seen, seen_rows

        gate, gaps = self.metal_gate
        keys = composition_keys(f.z, f.frac)
        every = gaps.lookup(keys, f.spg)
        # a training composition is left alone, unless a structure is given whose polymorph
        # MP calls a metal while its ground state (what the model was trained with) is not
        ground = np.where(f.spg > 0, gaps.lookup(keys, np.zeros_like(f.spg)), every)
        other_phase = (f.spg > 0) & (every == 0) & ~(ground == 0)
        pbe = leave_seen(every, seen_rows(f.z, f.frac, self.trained_keys()) & ~other_phase)
        before = gap[good].copy()
        gap[good] = after = gate.apply(before, pbe)

        def of(r: int) -> str:
            return "its ground state" if f.spg[r] == 0 else f"this polymorph (space group {int(f.spg[r])})"

        for r in np.flatnonzero(np.isnan(pbe) & has_open_f(f.z)):
            notes[r] = (
                "metal gate: not applied (a lanthanide or actinide with a partly filled f shell: "
                "Materials Project's PBE gap is no evidence for it)"
            )
        would = gate.apply(before, every)
        for r in np.flatnonzero(would != after):
            notes[r] = (
                "metal gate: not applied (this composition's measured gap is in the model's training data, "
                f"which the model learned; from Materials Project's PBE gap of {of(r)} it would give "
                f"{would[r]:.2f} eV)"
            )
        for r in np.flatnonzero(after != before):
            if after[r] == 0:
                notes[r] = (
                    f"metal gate: Materials Project's PBE calculation of {of(r)} is a metal, so the gap is "
                    f"set to 0 eV (the model alone: {before[r]:.2f} eV)"
                )
            else:
                notes[r] = (
                    f"metal gate: the model called it a metal, but Materials Project's PBE gap of {of(r)} is "
                    f"{pbe[r]:.2f} eV; the gap is set to {after[r]:.2f} eV on the experimental scale"
                )
        return notes

    def trained_keys(self) -> set[str]:
        """The gap head's training compositions (:func:`matmtl.metal_gate.trained_keys`, from
        its stored domain, which fine-tuning's gate read too; a domain of more than 20,000
        compositions is a sample; empty without one): the metal gate leaves them as the
        model says."""
        if self._trained_keys is None:
            from .metal_gate import trained_keys

            dom = self.domains().get("gap_expt")
            self._trained_keys = set() if dom is None else trained_keys(dom.z, dom.frac)
        return self._trained_keys

    def _featurize(self, good, comps, spg, notes, labels, on_bad):
        """Features of the usable rows; a row the featurizer refuses follows ``on_bad``
        (one by one only if the batch fails, so the usual path stays vectorised)."""
        try:
            return self.featurizer([comps[i] for i in good], spg=spg[good], where="predict"), good
        except DataError:
            pass
        keep = []
        for i in good:
            try:
                self.featurizer([comps[i]], spg=spg[[i]], where=f"input {i} ({labels[i]})")
                keep.append(i)
            except DataError as exc:
                if on_bad == "raise":
                    raise
                notes[i] = str(exc)
        good = np.asarray(keep, dtype=np.int64)
        f = self.featurizer([comps[i] for i in good], spg=spg[good], where="predict") if len(good) else None
        return f, good

    def _check_usable(self, comp, where: str) -> None:
        """Per-input checks against this model (``comp``: an ElementAmounts): element count,
        training vocabulary."""
        from .models.elements import MAX_Z

        limit = self.featurizer.max_elements
        if len(comp) > limit:
            raise DataError(f"{where}: {comp.formula!r} has {len(comp)} elements; this model takes at most {limit}")
        vocab = {e for e in self.elements if e <= MAX_Z} or set(range(1, MAX_Z + 1))
        unseen = sorted({sym for sym, z in zip(comp.symbols, comp.z) if z not in vocab})
        if unseen:
            raise DataError(
                f"{where}: element(s) {', '.join(unseen)} never seen in training by {self.path}; the model "
                "would extrapolate blindly, so it gives no number (on_bad='nan' keeps such rows as NaN)"
            )

    def _sigma(self, task: str, spread: np.ndarray) -> np.ndarray:
        """The ensemble spread recalibrated on the run's held-out rows (matmtl.uncertainty)."""
        return uncertainty.apply(spread, (self.meta.get("uncertainty") or {}).get(task))

    # -- trust notes ------------------------------------------------------------------

    def domains(self) -> dict[str, Any]:
        """task -> uncertainty.Domain for the heads with a stored (or, for fine-tuning runs
        on a named dataset made before domains were stored, reconstructed) training domain."""
        if self._domains is None:
            recs = dict(self.meta.get("domain") or {})
            if "gap_expt" in self.tasks and "gap_expt" not in recs:
                rec, self._domain_note = _reconstruct_domain(self.meta)
                if rec is not None:
                    recs["gap_expt"] = rec
            self._domains = {t: uncertainty.Domain(r) for t, r in recs.items() if t in self.tasks and r}
        return self._domains

    def _trust(self, good: np.ndarray, comps, structs, spg, f) -> list[list[str]]:
        from .data.periodic import symbol

        flags: list[list[str]] = [[] for _ in good]
        domains = self.domains()
        main = "gap_expt" if "gap_expt" in domains else next(iter(domains), None)
        if main is None and "gap_expt" in self.tasks:
            note = self._domain_note or "no training-domain record in this checkpoint"
            for fl in flags:
                fl.append(f"{note}: distance to the training data not checked")
        if main is not None:
            dom = domains[main]
            dist, idx = dom.nearest(f.z, f.frac)
            known = {symbol(z) for z in dom.elements}
            for r, i in enumerate(good):
                flags[r].extend(domain_notes(dom, main, comps[i].symbols, known, dist[r], int(idx[r])))
        for r, i in enumerate(good):
            s = structs[i]
            if s is not None:
                flags[r].extend(structure_flags(s))
                for task, dom in domains.items():
                    if task == "gap_expt" and spg[i] > 0 and dom.symmetry_fraction == 0:
                        flags[r].append(
                            f"structure given, but the {task} head was trained on compositions only: "
                            f"space group {int(spg[i])} is outside what it learned (compare the formula's "
                            "prediction)"
                        )
            if "e_form" in self.tasks and len(comps[i]) == 1:
                flags[r].append("single element: e_form = 0 eV/atom by construction (elemental reference state)")
        return flags


def domain_notes(dom, task: str, symbols, known: set, dist: float, nearest: int) -> list[str]:
    """Trust notes of one composition against the training domain of ``task``'s head."""
    notes = []
    absent = sorted(set(symbols) - known)
    if absent:
        notes.append(f"element(s) {', '.join(absent)} absent from the {task} training data")
    if len(symbols) == 1 and len(dom.z) and not dom.has_pure_elements:
        notes.append(
            f"pure element: the {task} training data hold none, so this gap rests on the DFT pretraining alone "
            "(less reliable)"
        )
    if dom.threshold is not None and dist > dom.threshold:
        notes.append(
            f"far from the {task} training compositions: nearest {dom.formula(nearest)!r} at "
            f"distance {dist:.2f} > {dom.threshold:.2f} (the {dom.rec.get('percentile', 99):g}th "
            "percentile of training nearest-neighbour distances)"
        )
    return notes


def structure_flags(s) -> list[str]:
    """Trust notes for a structure: isolated atoms (no neighbour within max(3 Å, 2.4 x the
    site's van der Waals radius), periodic images included) and vacuum layers (an
    atom-free slab at least VACUUM_GAP thick across the cell)."""
    flags = []
    n = len(s)
    z = np.asarray(s.atomic_numbers)
    cut = np.maximum(ISOLATED_MIN, ISOLATED_FACTOR * np.array([_vdw_radius(int(v)) for v in z]))
    matrix = np.asarray(s.lattice.matrix)
    fc = np.mod(s.frac_coords, 1.0)
    if n <= 48:  # all pairs over the 27 nearest cells (exact for the distances that matter here)
        shifts = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], float)
        cart = fc @ matrix
        images = (shifts @ matrix)[:, None, :] + cart[None]  # (27, n, 3)
        d = np.linalg.norm(cart[:, None, None, :] - images[None], axis=-1)  # (n, 27, n)
        d[np.arange(n), 13, np.arange(n)] = np.inf  # shift (0, 0, 0) of the site itself
        nearest = d.min(axis=(1, 2))
    elif n <= 2000:
        centers, _, _, dists = s.get_neighbor_list(float(cut.max()))
        nearest = np.full(n, np.inf)
        np.minimum.at(nearest, centers.astype(np.int64), dists)
    else:
        nearest = np.zeros(n)
    iso = np.flatnonzero(nearest > cut)
    if len(iso):
        shown = ", ".join(f"{s[i].specie} (site {i})" for i in iso[:3]) + (" ..." if len(iso) > 3 else "")
        flags.append(f"isolated atom(s): {shown} with no neighbour within {cut[iso[0]]:.1f} Å")
    spacing = 1.0 / np.linalg.norm(np.linalg.inv(matrix), axis=0)  # distance between lattice planes
    layers = []
    for k in range(3):
        x = np.sort(fc[:, k])
        width = float(np.diff(np.concatenate([x, [x[0] + 1.0]])).max()) * spacing[k]
        if width >= VACUUM_GAP:
            layers.append((_AXES[k], width))
    if layers:
        flags.append("vacuum: an atom-free layer " + ", ".join(f"{w:.1f} Å thick along {a}" for a, w in layers))
    return flags


@lru_cache(maxsize=None)
def _vdw_radius(z: int) -> float:
    from pymatgen.core import Element

    r = Element.from_Z(z).van_der_waals_radius
    return float(r) if r else 2.0


def _reconstruct_domain(meta: dict) -> tuple[dict | None, str]:
    """The gap head's training domain of a fine-tuning run that did not store one,
    rebuilt from its config (named datasets only: the same rows, fold and subsample)."""
    cfg = meta.get("config") or {}
    if meta.get("kind") != "finetune" or not isinstance(cfg, dict):
        return None, "no training-domain record in this checkpoint"
    dataset = str(cfg.get("dataset", ""))
    try:
        from .data import Featurizer, load_dataset
        from .data.registry import get_spec
        from .train.data import split_rows

        get_spec(dataset)
    except Exception:
        return None, f"no training-domain record in this checkpoint (trained on {dataset!r})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = load_dataset(dataset, cfg.get("data_dir"))
            seed = int((cfg.get("train") or {}).get("seed", 0))
            tr, _ = split_rows(ds, cfg.get("holdout_fold"), cfg.get("max_train_rows"), seed, shrink_test=False)
            f = Featurizer()(ds.subset(tr).formulas, where=f"{dataset} training rows")
        rec = uncertainty.training_domain(f.z, f.frac, np.zeros(len(f), np.int64))
        if str(cfg.get("symmetry", "none")).lower() not in ("none", "false", ""):
            rec["symmetry_fraction"] = None  # symmetry was attached in training: unknown share, no flag
        return rec, ""
    except Exception as exc:  # data gone, an older layout...: say so in the trust column
        return None, f"training domain of {dataset!r} could not be rebuilt ({type(exc).__name__})"


def _display_formula(comp) -> str:
    """The reduced formula, except that a single element is its symbol (pymatgen writes
    one H atom as "H2", its diatomic gas). ``comp``: an ElementAmounts or a pymatgen Composition."""
    symbols = comp.symbols if isinstance(comp, ElementAmounts) else [el.symbol for el in comp.elements]
    if len(symbols) == 1:
        return symbols[0]
    return comp.reduced_formula


def _is_single(x) -> bool:
    """One input (anything that is not a list-like of inputs)."""
    if isinstance(x, (str, bytes, bytearray, dict)):
        return True
    if isinstance(x, (list, tuple)):
        return False
    if isinstance(x, np.ndarray):
        return x.ndim == 0
    if isinstance(x, (set, frozenset)):
        raise InputTypeError("predict: a set has no order; pass a list so the rows match the inputs")
    pd = sys.modules.get("pandas")  # not imported: x cannot be a pandas object
    if pd is not None and isinstance(x, (pd.Series, pd.Index)):
        return False
    if pd is not None and isinstance(x, pd.DataFrame):
        return True  # refused with a hint by _to_model_input
    if is_pymatgen(x, "Composition", "IStructure") or is_ase_atoms(x) or type(x).__name__ in ("Molecule", "IMolecule"):
        return True
    return not hasattr(x, "__iter__")


def _expand(items: list, on_bad: str) -> tuple[list, list[str]]:
    out, labels = [], []
    for i, x in enumerate(items):
        if is_path_like(x):
            got, lab = read_inputs([x], on_bad=on_bad)
            out.extend(got)
            labels.extend(lab)
        else:
            out.append(x)
            labels.append(_label(x, i))
    return out, labels


def _label(x, i: int) -> str:
    if isinstance(x, str):
        if "_cell_length_a" in x:
            return f"CIF text#{i}"
        text = " ".join(x.split()) if "\n" in x else x
        return text if len(text) <= 60 else text[:57] + "..."
    if isinstance(x, BadInput):
        return f"#{i}"
    comp = getattr(x, "composition", x)
    if is_ase_atoms(x):
        comp = None
        try:
            return f"Atoms:{x.get_chemical_formula()}"
        except Exception:
            return f"Atoms#{i}"
    try:
        return f"{type(x).__name__}:{_display_formula(comp)}"
    except Exception:
        return f"{type(x).__name__}#{i}"


def _to_model_input(x, where: str):
    """(ElementAmounts, pymatgen Structure or None) for one input, or DataError /
    InputTypeError. A formula string is read without pymatgen (matmtl.data.formula)."""
    if isinstance(x, BadInput):
        raise DataError(x.reason)
    if isinstance(x, np.str_):
        x = str(x)
    if is_pymatgen(x, "IStructure") or type(x).__name__ in ("Molecule", "IMolecule"):
        return _structure_input(x, where)
    if is_ase_atoms(x):
        return _structure_input(atoms_to_structure(x, where), where)
    if is_pymatgen(x, "Composition"):
        from .data.validate import parse_composition

        return ElementAmounts.from_pymatgen(parse_composition(x, where)), None
    if isinstance(x, str):
        if "_cell_length_a" in x:  # CIF text
            return _cif_text(x, where)
        try:
            return read_composition(x, where), None
        except DataError as exc:
            if x.strip() and os.path.exists(x.strip()):
                raise DataError(
                    f"{exc} (there is a file or folder named {x.strip()!r}: pass Path({x.strip()!r}) to read it)"
                ) from None
            raise
    if isinstance(x, float) and x != x:  # an empty cell of a table
        raise DataError(f"{where}: missing formula (an empty value)")
    raise InputTypeError(
        f"{where}: expected a pymatgen Structure, Composition, ASE Atoms or formula string, got "
        f"{type(x).__name__}{type_hint(x)}"
    )


def _structure_input(x, where: str):
    """(ElementAmounts, Structure) of a structure matmtl can use, else DataError."""
    from .data.validate import check_structure, parse_composition

    s = check_structure(x, where)
    return ElementAmounts.from_pymatgen(parse_composition(s.composition, where)), s


def _cif_text(text: str, where: str):
    import re

    from pymatgen.core import Structure

    blocks = len(re.findall(r"^\s*data_", text, flags=re.M))
    if blocks > 1:
        raise DataError(
            f"{where}: CIF text with {blocks} data blocks; save it to a .cif file and predict the file "
            "(every block becomes a row)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = Structure.from_str(text, fmt="cif")
    except Exception as exc:
        raise DataError(f"{where}: unreadable CIF text ({' '.join(str(exc).split())[:200]})") from None
    return _structure_input(s, where)


# -- model discovery ---------------------------------------------------------------


def load_model(name: str | Path | None = None, device: str = "cpu") -> Model:
    """A reusable :class:`Model`. ``name``: a shipped model's name (``matmtl models list``)
    or a checkpoint path (a run folder, or its model.safetensors / model.json); default:
    the latest fine-tuned run in the user cache, else the shipped default model."""
    from .checkpoints import load_checkpoint, resolve

    path = model_path(name)
    net, meta = load_checkpoint(path, device)
    return Model(net, meta, resolve(path))


def model_path(name: str | Path | None = None) -> Path:
    """Where the model ``load_model(name)`` loads lives (a shipped model's files verified)."""
    from . import zoo
    from .train.runs import latest_run, runs_root

    if name is None:
        name = latest_run("finetune") or (zoo.DEFAULT_MODEL if zoo.shipped(zoo.DEFAULT_MODEL) else None)
        if name is None:
            raise MatmtlError(
                f"no fine-tuned model in {runs_root()} and no shipped model; make one with `matmtl pretrain` then "
                "`matmtl finetune` (scripts/quickstart.sh does both), or pass a checkpoint path"
            )
    return zoo.resolve(name)


_DEFAULT: dict[str, Model] = {}


def predict(x, model: Model | str | Path | None = None, *, on_bad: str = "raise"):
    """Predict the experimental band gap and DFT formation energy (with ensemble
    uncertainties) for a Structure, Composition, formula string or a list of them.
    ``model``: a Model, a shipped model's name, a checkpoint path, or None: the latest
    fine-tuned run in the user cache, else the shipped default model (kept in-process)."""
    check_on_bad(on_bad)
    if not isinstance(model, Model):
        from .checkpoints import resolve

        target = resolve(model_path(model))
        meta = Path(target) / "model.json"
        key = f"{target}:{meta.stat().st_mtime_ns if meta.exists() else 0}"
        if key not in _DEFAULT:
            _DEFAULT.clear()
            _DEFAULT[key] = load_model(target)
        model = _DEFAULT[key]
    return model.predict(x, on_bad=on_bad)


# -- files ---------------------------------------------------------------------------
# read_inputs (structure files, folders, globs, formula tables) lives in matmtl.predict_io

__all__ = ["COLUMNS", "Model", "Prediction", "load_model", "predict", "read_inputs", "structure_flags"]
