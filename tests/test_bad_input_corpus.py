"""The bad-input corpus: every case gets a clear error naming what and where (a MatmtlError,
never another exception type, so the command line prints one line), or a reported, counted
skip (a warning with the count; the data itself tells what was left out). Covers formulas,
input types, structures, files (CSV/JSON/CIF/POSCAR/extxyz), tables, checkpoints, predict
arguments and run folders. Cases that are per-input in ``predict`` are also checked under
``on_bad="nan"``: the batch survives, the bad row is NaN with the reason in ``note``."""

import json
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Molecule, Structure
from test_trust_notes import tiny_checkpoint

from matmtl.checkpoints import load_checkpoint
from matmtl.data import load_table
from matmtl.errors import MatmtlError
from matmtl.inference import load_model
from matmtl.predict_io import read_inputs, write_predictions
from matmtl.train.runs import claim_run_dir, open_for_resume


@dataclass
class Case:
    id: str
    category: str
    run: Callable  # (ctx) -> result; ctx has .tmp (a fresh folder) and .model
    where: list[str]  # every substring must be in the error message (what and where)
    skip: Callable | None = None  # for counted skips: (result, warnings) -> None, asserting the report
    per_input: object = None  # an input for predict([x, "GaAs"], on_bad="nan") (None: not per-input)
    tags: list = field(default_factory=list)


class Ctx:
    def __init__(self, tmp: Path, model):
        self.tmp, self.model = tmp, model

    def file(self, name: str, content) -> Path:
        p = self.tmp / name
        p.write_bytes(content) if isinstance(content, bytes) else p.write_text(content)
        return p

    def csv(self, name: str, frame: pd.DataFrame) -> Path:
        p = self.tmp / name
        frame.to_csv(p, index=False)
        return p

    def checkpoint(self, change=None, name="ck", weights=None) -> Path:
        dst = self.tmp / name
        shutil.copytree(self.model.path, dst)
        if change is not None:
            meta = json.loads((dst / "model.json").read_text())
            change(meta)
            (dst / "model.json").write_text(json.dumps(meta))
        if weights is not None:
            (dst / "model.safetensors").write_bytes(weights(dst / "model.safetensors"))
        return dst


def nacl():
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def predict_one(x):
    return lambda c: c.model.predict([x])


def formula(id, text, *what):
    return Case(id, "formula", predict_one(text), ["input 0", *what], per_input=text)


def value(id, x, *what):
    return Case(id, "input type", predict_one(x), ["input 0", *what], per_input=x)


def structure(id, make, *what):
    return Case(id, "structure", lambda c: c.model.predict([make()]), ["input 0", *what], per_input=make)


def predict_file(id, name, content, *what, category="file"):
    def run(c):
        return c.model.predict([c.file(name, content)])

    return Case(id, category, run, [name, *what], per_input=("file", name, content))


def table(id, make, *what):
    return Case(id, "table", lambda c: load_table(make(c)), list(what))


def ckpt(id, change=None, *what, weights=None):
    return Case(id, "checkpoint", lambda c: load_checkpoint(c.checkpoint(change, weights=weights)), list(what))


def _counted(n, pattern):
    def check(result, caught):
        msgs = [str(w.message) for w in caught]
        assert any(pattern in m for m in msgs), msgs
        if n is not None:
            assert result is not None and n(result)

    return check


def _disordered():
    return Structure(Lattice.cubic(3), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])


def _cif(struct, name="x"):
    return struct.to(fmt="cif").replace(f"data_{struct.composition.reduced_formula}", f"data_{name}")


CASES = [
    # -- formulas (20) --------------------------------------------------------------------
    formula("unbalanced-paren", "Fe2O3)", "unparsable formula 'Fe2O3)'"),
    formula("unknown-element", "Xx2O", "unknown element 'Xx2O'"),
    formula("empty", "", "empty formula"),
    formula("blank", "   ", "empty formula"),
    formula("negative-amount", "H2O-1", "unparsable formula", "negative"),
    formula("lowercase", "nacl", "unparsable formula 'nacl'"),
    formula("zero-amount", "NaCl0", "zero amount 'NaCl0'", "of Cl is 0"),
    formula("zero-decimal", "Fe0.0O3", "zero amount", "of Fe is 0"),
    formula("underflow", "H1e-400O", "zero amount", "underflows to 0"),
    formula("overflow", "H1e400", "unparsable formula", "not finite"),
    formula("tiny-amount", "Fe1e-7O", "zero amount", "Fe below 1e-06"),
    formula("zero-group", "Fe2(SO4)0Na", "zero amount", "bracketed group is 0"),
    formula("ambiguous-hydrate", "Fe0.5H2O", "ambiguous formula", "hydrate"),
    formula("unstated-hydrate", "CuSO4·xH2O", "unstated amount 'x'"),
    formula("dangling-separator", "CuSO4·", "empty part"),
    formula("zero-hydrate-count", "CuSO4·0H2O", "zero amount", "count '0'"),
    formula("symbol-garbage", "Fe2O3$", "unparsable formula"),
    formula("digits-only", "12345", "unparsable formula '12345'"),
    formula("eleven-elements", "LiBeBNaMgAlSiPSClK", "has 11 elements; this model takes at most 10"),
    formula("never-seen-element", "Og2", "element(s) Og never seen in training"),
    # -- input types (8) ------------------------------------------------------------------
    value("none", None, "got NoneType"),
    value("int", 5, "got int"),
    value("float", 2.5, "got float"),
    value("nan-cell", float("nan"), "missing formula"),
    value("dict", {"lattice": {}, "sites": []}, "got dict", "Structure.from_dict"),
    value("bytes", b"NaCl", "got bytes", "decode"),
    value("nested-list", ["NaCl"], "got list"),
    value("multi-block-cif-text", _cif(nacl(), "a") + "\n" + _cif(nacl(), "b"), "CIF text with 2 data blocks"),
    # -- structures (7) -------------------------------------------------------------------
    structure("disordered", _disordered, "disordered structure"),
    structure("molecule", lambda: Molecule(["H", "H"], [[0, 0, 0], [0, 0, 0.74]]), "molecules are not supported"),
    structure("no-sites", lambda: Structure(Lattice.cubic(3), [], []), "no sites"),
    structure(
        "overlapping-atoms",
        lambda: Structure(Lattice.cubic(4), ["Na", "Cl"], [[0, 0, 0], [0.01, 0, 0]]),
        "atoms on top of each other",
        "sites 0 (Na) and 1 (Cl)",
    ),
    structure(
        "flat-lattice",
        lambda: Structure(Lattice([[4, 0, 0], [0, 4, 0], [0, 0, 1e-9]]), ["Na"], [[0, 0, 0]]),
        "degenerate lattice",
    ),
    structure("non-finite-coords", lambda: Structure(Lattice.cubic(4), ["Na"], [[np.nan, 0, 0]]), "non-finite"),
    structure(
        "never-seen-in-structure", lambda: Structure(Lattice.cubic(5), ["Og"], [[0, 0, 0]]), "element(s) Og never seen"
    ),
    # -- files given to predict (17) --------------------------------------------------------
    predict_file("cif-garbage", "g.cif", "this is not a cif\n", "no CIF data block"),
    predict_file("cif-binary", "b.cif", b"\x89PNG\r\n\x1a\n\x00\x00", "not a text file"),
    predict_file("cif-no-atoms", "n.cif", "data_meta\n_journal_year 2020\n", "no CIF block holds a structure"),
    predict_file(
        "cif-broken-block",
        "k.cif",
        "data_x\n_cell_length_a 3\n_cell_length_b 3\n_cell_length_c 3\n"
        "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\nloop_\n_atom_site_label\n"
        "_atom_site_fract_x\nNa1 0\n",
        "unreadable CIF block",
    ),
    predict_file("cif-disordered", "d.cif", _disordered().to(fmt="cif"), "disordered structure"),
    predict_file("poscar-garbage", "POSCAR", "not a poscar\n1.0\n", "not a readable structure file"),
    predict_file("empty-file", "e.cif", "", "the file is empty"),
    predict_file("vasp-truncated", "t.vasp", nacl().to(fmt="poscar")[:60], "not a readable structure file"),
    predict_file("json-invalid", "j.json", "{not json", "not valid JSON"),
    predict_file("json-molecule", "m.json", json.dumps(Molecule(["H"], [[0, 0, 0]]).as_dict()), "a Molecule"),
    predict_file("json-scalar", "s.json", "5", "neither a pymatgen Structure nor a table"),
    predict_file(
        "json-bad-structure",
        "bs.json",
        json.dumps({"lattice": {"matrix": "x"}, "sites": [1]}),
        "not a readable pymatgen Structure",
    ),
    predict_file("csv-no-formula-column", "c.csv", "name,gap\nx,1\n", "no formula column"),
    predict_file("csv-ragged", "r.csv", "formula,gap\nNaCl,1\nGaAs,1,2,3\n", "Expected 2 fields in line 3"),
    predict_file("csv-latin1", "l.csv", "formula\nGa\xe9As\n".encode("latin-1"), "not UTF-8 text"),
    predict_file("extxyz-garbage", "x.extxyz", "this is not\nan xyz file\n", "not readable by ASE"),
    predict_file(
        "extxyz-molecule", "w.xyz", "3\n\nO 0 0 0\nH 0.76 0.59 0\nH -0.76 0.59 0\n", "without a periodic 3-D cell"
    ),
    Case(
        "missing-file",
        "file",
        lambda c: c.model.predict([c.tmp / "nothere.cif"]),
        ["nothere.cif", "file not found"],
        per_input=("missing",),
    ),
    Case("glob-no-match", "file", lambda c: c.model.predict(str(c.tmp / "*.cif")), ["*.cif", "no file matches"]),
    Case(
        "folder-without-inputs",
        "file",
        lambda c: c.model.predict(c.file("only.md", "x").parent),
        ["no structure or formula files in this folder"],
    ),
    Case(
        "ase-missing",
        "file",
        lambda c: _without_ase(lambda: c.model.predict(c.file("a.extxyz", "1\n\nH 0 0 0\n"))),
        ["a.extxyz", "needs ASE, which is not installed"],
    ),
    # -- tables (15) ----------------------------------------------------------------------
    table("table-empty-file", lambda c: c.file("e.csv", ""), "e.csv", "the file is empty"),
    table("table-header-only", lambda c: c.file("h.csv", "formula,gap\n"), "h.csv", "empty"),
    table("table-no-formula", lambda c: c.file("n.csv", "name,gap\nx,1\n"), "n.csv", "no formula or structure column"),
    table(
        "table-ambiguous-targets",
        lambda c: c.file("a.csv", "formula,gap_a,gap_b\nSi,1,2\n"),
        "a.csv",
        "several possible target columns",
    ),
    table(
        "table-no-numeric", lambda c: c.file("t.csv", "formula,comment\nSi,hi\n"), "t.csv", "no numeric target column"
    ),
    table(
        "table-repeated-columns", lambda c: c.file("rc.csv", "formula,gap,gap\nSi,1,2\n"), "rc.csv", "repeated column"
    ),
    table("table-unsupported-type", lambda c: c.file("t.xlsx", "x"), "t.xlsx", "unsupported file type"),
    table("table-missing", lambda c: c.tmp / "nothere.csv", "nothere.csv", "no such file"),
    table("table-is-folder", lambda c: c.tmp, "no such file", "it is a folder"),
    table("table-all-rows-bad", lambda c: c.file("b.csv", "formula,gap\nQq,1\nNaCl0,2\n"), "b.csv", "no usable rows"),
    table("table-ragged", lambda c: c.file("r.csv", "formula,gap\nNaCl,1\nGaAs,1,2,3\n"), "r.csv", "line 3"),
    table("table-latin1", lambda c: c.file("l.csv", "formula,gap\nGa\xe9As,1\n".encode("latin-1")), "l.csv", "UTF-8"),
    Case(
        "table-named-target-missing",
        "table",
        lambda c: load_table(c.file("t.csv", "formula,gap\nSi,1\n"), targets=["Eg"]),
        ["t.csv", "no column 'Eg'"],
    ),
    Case(
        "table-bad-duplicates-rule",
        "table",
        lambda c: load_table(c.file("t.csv", "formula,gap\nSi,1\n"), duplicates="max"),
        ["duplicates must be one of"],
    ),
    Case("table-wrong-type", "table", lambda c: load_table(42), ["load_table", "expected a file path, got int"]),
    # reported, counted skips (4)
    Case(
        "table-bad-rows-counted",
        "table",
        lambda c: load_table(c.file("br.csv", "id,formula,gap\na,NaCl,1\nb,Fe2O3),2\nc,GaAs,-1\nd,Si,\n")),
        [],
        skip=_counted(lambda ds: len(ds) == 1 and ds.bad_rows.n_bad == 3, "left out 3 of 4 rows"),
    ),
    Case(
        "table-conflicting-duplicates",
        "table",
        lambda c: load_table(c.file("dd.csv", "formula,gap\nSiO2,8.5\nSiO2,0\nSiO2,3\nGaAs,1.4\n")),
        [],
        skip=_counted(
            lambda ds: len(ds) == 2 and ds.duplicates.n_rows == 3, "'Si1 O2' rows 0, 1, 2: gap 8.5 / 0 / 3 eV"
        ),
    ),
    Case(
        "folder-unknown-files-counted",
        "file",
        lambda c: (
            c.file("a.md", "x"),
            c.file("b.png", b"\x89PNG"),
            read_inputs([c.file("s.cif", _cif(nacl())).parent]),
        )[2],
        [],
        skip=_counted(lambda r: len(r[0]) == 1, "skipped 2 file(s)"),
    ),
    Case(
        "cif-metadata-block-counted",
        "file",
        lambda c: read_inputs([c.file("m.cif", "data_meta\n_journal_year 2020\n" + _cif(nacl(), "nacl"))]),
        [],
        skip=_counted(lambda r: r[1] == ["m.cif#nacl"], "skipped CIF block(s) without atoms: meta"),
    ),
    # -- checkpoints (12) -----------------------------------------------------------------
    ckpt("ckpt-huge-dim", lambda m: m["model_config"].update(dim=200000), "model.json", "dim = 200000 is outside"),
    ckpt("ckpt-text-dim", lambda m: m["model_config"].update(dim="192x"), "model.json", "dim must be an integer"),
    ckpt("ckpt-edited-mean", lambda m: m["tasks"][0].update(mean=-0.5), "model.json", "edited after saving"),
    ckpt("ckpt-implausible-mean", lambda m: m["tasks"][0].update(mean=9.7), "model.json", "normalisation mean 9.7"),
    ckpt("ckpt-nan-std", lambda m: m["tasks"][0].update(std=float("nan")), "model.json", "std"),
    ckpt("ckpt-future-format", lambda m: m.update(format_version=2), "model.json", "checkpoint format 2"),
    ckpt("ckpt-no-tasks", lambda m: m.update(tasks=[]), "model.json", "tasks must be a list"),
    ckpt(
        "ckpt-truncated-weights",
        None,
        "model.safetensors",
        "not a readable safetensors file",
        weights=lambda p: p.read_bytes()[:100],
    ),
    ckpt(
        "ckpt-pickle-weights",
        None,
        "model.safetensors",
        "not a readable safetensors file",
        weights=lambda p: b"\x80\x04\x95" + b"\x00" * 64,
    ),
    Case(
        "ckpt-corrupt-json",
        "checkpoint",
        lambda c: load_checkpoint(_json_text(c, "{not json")),
        ["model.json", "corrupt JSON"],
    ),
    Case(
        "ckpt-json-list",
        "checkpoint",
        lambda c: load_checkpoint(_json_text(c, "[1, 2]")),
        ["model.json", "expected a JSON object"],
    ),
    Case("ckpt-missing", "checkpoint", lambda c: load_model(c.tmp / "nothere"), ["nothere", "no checkpoint"]),
    Case(
        "ckpt-no-weights",
        "checkpoint",
        lambda c: load_checkpoint(_no_weights(c)),
        ["model.safetensors", "file not found"],
    ),
    # -- predict arguments and outputs (6) -------------------------------------------------
    Case("on-bad-foo", "argument", lambda c: c.model.predict("GaAs", on_bad="foo"), ["on_bad must be one of", "'foo'"]),
    Case("empty-list", "argument", lambda c: c.model.predict([]), ["empty input"]),
    Case("set-input", "argument", lambda c: c.model.predict({"GaAs"}), ["a set has no order"]),
    Case(
        "out-is-folder",
        "argument",
        lambda c: write_predictions(c.model.predict(["GaAs"]), c.tmp),
        ["is a folder", ".csv or .json"],
    ),
    Case(
        "out-unknown-suffix",
        "argument",
        lambda c: write_predictions(c.model.predict(["GaAs"]), c.tmp / "p.xlsx"),
        ["p.xlsx", "suffix '.xlsx'"],
    ),
    Case("read-inputs-int", "argument", lambda c: read_inputs([3]), ["expected file paths, got int"]),
    # -- run folders (3) ------------------------------------------------------------------
    Case("run-out-is-file", "run", lambda c: claim_run_dir("pretrain", c.file("f", "x")), ["f", "is a file"]),
    Case(
        "run-out-not-empty",
        "run",
        lambda c: (c.file("config.json", "{}"), claim_run_dir("pretrain", c.tmp))[1],
        ["already exists and is not empty", "--resume --out"],
    ),
    Case("resume-not-a-run", "run", lambda c: open_for_resume(c.tmp), ["no config.json"]),
]


def _json_text(c, text):
    dst = c.checkpoint()
    (dst / "model.json").write_text(text)
    return dst


def _no_weights(c):
    dst = c.checkpoint()
    (dst / "model.safetensors").unlink()
    return dst


def _without_ase(fn):
    saved = {k: sys.modules.get(k) for k in ("ase", "ase.io")}
    sys.modules["ase"] = None
    sys.modules["ase.io"] = None
    try:
        return fn()
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(tiny_checkpoint(tmp_path_factory.mktemp("corpus") / "ck"))


def test_corpus_size_and_categories():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 60
    cats = {c.category for c in CASES}
    assert {"formula", "input type", "structure", "file", "table", "checkpoint", "argument", "run"} <= cats


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_named_or_counted(case, model, tmp_path):
    if "extxyz" in case.id or case.id == "extxyz-molecule":
        pytest.importorskip("ase")
    ctx = Ctx(tmp_path, model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if case.skip is not None:
            result = case.run(ctx)
            case.skip(result, caught)
            return
        with pytest.raises(Exception) as info:
            case.run(ctx)
    exc = info.value
    assert isinstance(exc, MatmtlError), f"unexpected exception type {type(exc).__name__}: {exc}"
    msg = str(exc)
    for part in case.where:
        assert part in msg, f"{part!r} not in {msg!r}"
    assert "\n" not in msg.strip() and len(msg) < 1000  # one clear line


PER_INPUT = [c for c in CASES if c.per_input is not None]


@pytest.mark.parametrize("case", PER_INPUT, ids=[c.id for c in PER_INPUT])
def test_per_input_failures_follow_on_bad_nan(case, model, tmp_path):
    x = case.per_input
    if isinstance(x, tuple):
        if x[0] == "missing":
            x = tmp_path / "nothere.cif"
        else:
            if x[1].endswith(("xyz", "extxyz")):
                pytest.importorskip("ase")
            x = Ctx(tmp_path, model).file(x[1], x[2])
    elif callable(x):
        x = x()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = model.predict([x, "GaAs"], on_bad="nan")
    assert len(df) == 2 and df.loc[0, "note"] != ""
    assert np.isnan(df.loc[0, "gap_expt"]) and np.isnan(df.loc[0, "e_form"])
    assert np.isfinite(df.loc[1, "gap_expt"]) and df.loc[1, "note"] == ""
