"""Predictions from pymatgen objects, formulas and files (``matmtl.predict``, ``matmtl.load_model``).

>>> import matmtl
>>> matmtl.predict("GaAs")                     # one input -> Prediction
>>> matmtl.predict([structure, "NaCl", comp])  # a list -> pandas DataFrame
>>> model = matmtl.load_model()                # the latest fine-tuned run; reuse it
>>> model.predict(many_structures)

Outputs: ``gap_expt`` (band gap on the experimental scale, eV, from the fine-tuned
head), ``e_form`` (DFT formation energy, eV/atom, from the DFT head), each with an
uncertainty ``*_std``: the spread of the head's ensemble members recalibrated on the
training run's held-out rows (sigma = a*spread + b, see :mod:`matmtl.uncertainty`;
the raw spread where the run had no held-out labels for that task), ``p_metal`` (the
probability the material is a metal, gap 0) and ``spg_num`` (0 = no structure given:
the model then uses its "unknown symmetry" token). A head the model does not have
(e.g. e_form after ``finetune --aux none``) gives NaN with a note, never a stale number.

Inputs the model cannot handle (unparsable formula, disordered structure, Molecule,
an element never seen in training) raise DataError by default; ``on_bad="nan"``
keeps the row with NaN predictions and the reason in the ``note`` column instead.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from . import uncertainty
from .errors import DataError, MatmtlError

COLUMNS = ["input", "formula", "spg_num", "gap_expt", "gap_expt_std", "p_metal", "e_form", "e_form_std", "note"]


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

    def to_dict(self) -> dict:
        return asdict(self)


class Model:
    """A loaded checkpoint ready to predict; load once with :func:`load_model`, reuse."""

    def __init__(self, net, meta: dict, path: Path):
        self.net, self.meta, self.path = net, meta, Path(path)
        self.elements = set(meta.get("elements") or [])
        self.tasks = list(net.tasks)
        from .data import Featurizer

        fs = meta.get("featurizer") or {}
        self.featurizer = Featurizer(max_elements=int(fs.get("max_elements", 10)), symprec=float(fs.get("symprec", 0.1)),
                                     cache=False)

    def __repr__(self) -> str:
        return f"matmtl.Model({self.path}, kind={self.meta.get('kind')}, tasks={self.tasks})"

    @property
    def metrics(self) -> dict:
        return self.meta.get("metrics", {})

    def predict(self, x, *, on_bad: str = "raise", batch_size: int = 2048):
        """A Prediction for one input (Structure, Composition or formula string), a
        DataFrame (columns: COLUMNS) for a list/tuple of them."""
        single = _is_single(x)
        items = [x] if single else list(x)
        if not items:
            raise DataError("predict: empty input (give a Structure, Composition, formula string or a list of them)")
        df = self.predict_frame(items, on_bad=on_bad, batch_size=batch_size)
        if single:
            row = df.iloc[0]
            return Prediction(str(row["formula"]), float(row["gap_expt"]), float(row["gap_expt_std"]),
                              float(row["p_metal"]), float(row["e_form"]), float(row["e_form_std"]),
                              int(row["spg_num"]), str(row["note"]))
        return df

    def predict_frame(self, items: Sequence, labels: Sequence[str] | None = None, *, on_bad: str = "raise",
                      batch_size: int = 2048):
        import pandas as pd

        if on_bad not in ("raise", "nan"):
            raise ValueError(f"on_bad must be 'raise' or 'nan', got {on_bad!r}")
        n = len(items)
        labels = list(labels) if labels is not None else [_label(x, i) for i, x in enumerate(items)]
        comps, spg, notes = [None] * n, np.zeros(n, np.int64), [""] * n
        for i, x in enumerate(items):
            try:
                comps[i], spg[i] = _composition_and_symmetry(x, f"input {i} ({labels[i]})", self.featurizer.symprec)
            except DataError as exc:
                if on_bad == "raise":
                    raise
                notes[i] = str(exc)
        ok = np.array([c is not None for c in comps])
        formulas = [c.reduced_formula if c is not None else "" for c in comps]
        out = {k: np.full(n, np.nan) for k in ("gap_expt", "gap_expt_std", "p_metal", "e_form", "e_form_std")}
        if ok.any():
            good = np.flatnonzero(ok)
            f = self.featurizer([comps[i] for i in good], spg=spg[good], where="predict")
            unseen = self._unseen(f.z)
            if unseen:
                bad_rows = {r: s for r, s in unseen.items()}
                if on_bad == "raise":
                    r, syms = next(iter(bad_rows.items()))
                    raise DataError(
                        f"input {good[r]} ({labels[good[r]]}): element(s) {', '.join(syms)} never seen in training "
                        f"by {self.path}; the model would extrapolate blindly, so it gives no number "
                        f"(on_bad='nan' keeps such rows as NaN) [{len(bad_rows)} input(s) affected]")
                for r, syms in bad_rows.items():
                    notes[good[r]] = f"element(s) {', '.join(syms)} never seen in training"
                keep = np.array([r not in bad_rows for r in range(len(good))])
                good, f = good[keep], f.subset(np.flatnonzero(keep))
            if len(good):
                preds = self.net.predict_arrays(f.z, f.frac, f.spg, self.tasks, batch_size=batch_size)
                if "gap_expt" in preds:
                    out["gap_expt"][good] = preds["gap_expt"].mean(1)
                    out["gap_expt_std"][good] = self._sigma("gap_expt", preds["gap_expt"].std(1))
                    out["p_metal"][good] = preds["gap_expt_p_metal"].mean(1)
                if "e_form" in preds:
                    out["e_form"][good] = preds["e_form"].mean(1)
                    out["e_form_std"][good] = self._sigma("e_form", preds["e_form"].std(1))
        missing = [t for t in ("gap_expt", "e_form") if t not in self.tasks]
        if missing:
            msg = f"this model has no {' / '.join(missing)} head ({self.meta.get('kind')} checkpoint {self.path})"
            notes = [f"{n_}; {msg}" if n_ else msg for n_ in notes]
        df = pd.DataFrame({"input": labels, "formula": formulas, "spg_num": spg, **out, "note": notes})
        return df[COLUMNS]

    def _sigma(self, task: str, spread: np.ndarray) -> np.ndarray:
        """The ensemble spread recalibrated on the run's held-out rows (matmtl.uncertainty)."""
        return uncertainty.apply(spread, self.meta.get("uncertainty", {}).get(task))

    def _unseen(self, z: np.ndarray) -> dict[int, list[str]]:
        from pymatgen.core import Element

        from .models import MAX_Z

        vocab = [e for e in self.elements if e <= MAX_Z] or list(range(1, MAX_Z + 1))
        known = np.zeros(max(int(z.max()), MAX_Z) + 1, dtype=bool)
        known[0] = True
        known[vocab] = True
        bad = ~known[z]
        return {int(r): sorted({Element.from_Z(int(v)).symbol for v in z[r][bad[r]]}) for r in np.flatnonzero(bad.any(1))}


def _is_single(x) -> bool:
    from pymatgen.core import Composition, Structure

    return isinstance(x, (str, Composition, Structure)) or type(x).__name__ in ("Molecule", "IStructure")


def _label(x, i: int) -> str:
    if isinstance(x, str):
        return x
    comp = getattr(x, "composition", x)
    try:
        return f"{type(x).__name__}:{comp.reduced_formula}"
    except Exception:
        return f"{type(x).__name__}#{i}"


def _composition_and_symmetry(x, where: str, symprec: float):
    from pymatgen.core import Composition, Structure

    from .data import check_structure, parse_composition, symmetry_of

    if isinstance(x, Structure) or type(x).__name__ == "Molecule":
        s = check_structure(x, where)
        return parse_composition(s.composition, where), symmetry_of(s, symprec)[0]
    if isinstance(x, (str, Composition)):
        return parse_composition(x, where), 0
    raise DataError(f"{where}: expected a pymatgen Structure, Composition or formula string, got {type(x).__name__}")


# -- model discovery ---------------------------------------------------------------

def load_model(path: str | Path | None = None, device: str = "cpu") -> Model:
    """A reusable :class:`Model`. ``path``: a run folder (or its model.safetensors /
    model.json); default: the latest fine-tuned run in the user cache."""
    from .checkpoints import load_checkpoint
    from .train.runs import latest_run, runs_root

    if path is None:
        path = latest_run("finetune")
        if path is None:
            raise MatmtlError(f"no fine-tuned model in {runs_root()}; make one with `matmtl pretrain` then "
                              "`matmtl finetune` (scripts/quickstart.sh does both), or pass a checkpoint path")
    net, meta = load_checkpoint(path, device)
    from .checkpoints import resolve

    return Model(net, meta, resolve(path))


_DEFAULT: dict[str, Model] = {}


def predict(x, model: Model | str | Path | None = None, *, on_bad: str = "raise"):
    """Predict the experimental band gap and DFT formation energy (with ensemble
    uncertainties) for a Structure, Composition, formula string or a list of them.
    ``model``: a Model, a checkpoint path, or None for the latest fine-tuned run (cached
    in-process)."""
    if not isinstance(model, Model):
        from .checkpoints import resolve
        from .train.runs import latest_run

        target = resolve(model) if model is not None else latest_run("finetune")
        if target is None:
            load_model(None)  # raises the error that says which commands make a model
        meta = Path(target) / "model.json"
        key = f"{target}:{meta.stat().st_mtime_ns if meta.exists() else 0}"
        if key not in _DEFAULT:
            _DEFAULT.clear()
            _DEFAULT[key] = load_model(target)
        model = _DEFAULT[key]
    return model.predict(x, on_bad=on_bad)


# -- files ---------------------------------------------------------------------------

STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar", ".json")


def read_inputs(paths: Iterable[str | Path]) -> tuple[list[Any], list[str]]:
    """(items, labels) from CIF/POSCAR files and CSV files of formulas (a formula or
    composition column; an id column, if present, labels the rows)."""
    import pandas as pd
    from pymatgen.core import Structure

    items, labels = [], []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise DataError(f"{p}: file not found")
        name = p.name.lower()
        if p.suffix.lower() in (".csv", ".tsv", ".txt") and not name.startswith(("poscar", "contcar")):
            try:
                df = pd.read_csv(p, sep="\t" if p.suffix.lower() == ".tsv" else ",")
            except Exception as exc:
                raise DataError(f"{p}: cannot read the table ({exc})") from None
            lower = {c.lower(): c for c in df.columns}
            col = next((lower[c] for c in ("formula", "composition", "formula_pretty", "reduced_formula") if c in lower), None)
            if col is None:
                raise DataError(f"{p}: no formula column (formula/composition); columns: {list(df.columns)}")
            idc = next((lower[c] for c in ("id", "mbid", "material_id", "name") if c in lower), None)
            for i, f in enumerate(df[col]):
                items.append(f if isinstance(f, str) else str(f))
                labels.append(f"{p.name}:{df[idc].iloc[i] if idc else i}")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                s = Structure.from_file(str(p))
        except Exception as exc:
            raise DataError(f"{p}: not a readable structure file (CIF/POSCAR) ({str(exc)[:200]})") from None
        items.append(s)
        labels.append(p.name)
    if not items:
        raise DataError("predict: no inputs (give CIF/POSCAR files or a CSV of formulas)")
    return items, labels
