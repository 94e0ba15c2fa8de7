"""The DFT metal gate (matmtl.metal_gate): what each mode does to known rows, the line and
the mode chosen on the rows they are given, the PBE gaps read from the Materials Project
tables (right for textbook crystals), its file, and predictions through a gated model."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from matmtl.data.composition import composition_keys
from matmtl.errors import MatmtlError
from matmtl.metal_gate import GATE_FILE, MODES, MetalGate, PbeGaps, choose, fit, fit_line, key_string, load, save

ROOT = Path(__file__).resolve().parents[1]
NAN = np.nan


def test_each_mode_on_known_rows():
    pred = [0.0, 1.5, 0.0, 2.0, 0.0, 0.7]
    pbe = [0.0, 0.0, 1.0, 1.2, NAN, NAN]
    gate = MetalGate("off", 1.5, 0.4)
    assert gate.apply(pred, pbe).tolist() == pred
    # "metal": a PBE metal is a metal; unknown compositions and PBE-gapped ones pass
    assert MetalGate("metal", 1.5, 0.4).apply(pred, pbe).tolist() == [0.0, 0.0, 0.0, 2.0, 0.0, 0.7]
    # "both": also, a model metal with a PBE gap gets the PBE gap on the experimental scale
    assert MetalGate("both", 1.5, 0.4).apply(pred, pbe) == pytest.approx([0.0, 0.0, 1.9, 2.0, 0.0, 0.7])
    # the line never gives a negative gap
    assert MetalGate("both", 1.0, -2.0).apply([0.0], [1.0]).tolist() == [0.0]


@pytest.mark.parametrize(
    "pred, pbe",
    [([1.0], [1.0, 2.0]), ([-0.1], [1.0]), ([NAN], [1.0]), ([1.0], [-1.0]), ([1.0], [np.inf]), ([[1.0]], [[1.0]])],
)
def test_bad_rows_are_refused(pred, pbe):
    with pytest.raises(ValueError):
        MetalGate("metal").apply(pred, pbe)


def test_bad_gates_are_refused():
    with pytest.raises(ValueError, match="mode"):
        MetalGate("sometimes")
    with pytest.raises(ValueError, match="finite"):
        MetalGate("both", NAN, 0.0)


def test_the_line_is_fitted_on_rows_gapped_in_both():
    g = np.array([0.5, 1.0, 2.0, 3.0, 0.0, 1.0, NAN])
    y = np.array([1.25, 2.0, 3.5, 5.0, 9.0, 0.0, 4.0])  # 1.5 g + 0.5 on the first four
    assert fit_line(g, y) == pytest.approx((1.5, 0.5))
    assert fit_line([1.0, 0.0], [2.0, 3.0]) == (1.0, 0.0)  # one usable row
    assert fit_line([1.0, 1.0], [2.0, 3.0]) == (1.0, 0.0)  # no spread


def test_the_mode_with_the_lowest_validation_mae_is_chosen():
    y = [0.0, 0.0, 2.0]
    pbe = [0.0, 0.0, 1.0]
    gate, maes = choose([1.0, 0.0, 2.0], y, pbe, (1.0, 1.0))
    assert gate.mode == "metal" and maes["metal"] == 0 < maes["off"]
    assert set(maes) == set(MODES)
    gate, maes = choose([0.0, 0.0, 0.0], y, pbe, (1.0, 1.0))
    assert gate.mode == "both" and (gate.slope, gate.intercept) == (1.0, 1.0)
    # nothing to gain: the simplest mode ("off") on a tie
    gate, _ = choose([0.0, 0.0, 2.0], y, [NAN, NAN, NAN], (1.0, 1.0))
    assert gate.mode == "off"
    with pytest.raises(ValueError, match="no validation rows"):
        choose([], [], [], (1.0, 0.0))
    with pytest.raises(ValueError):
        choose([0.0], [NAN], [0.0], (1.0, 0.0))


SI, CU = ((14, 1.0),), ((29, 1.0),)


def test_lookup_by_ground_state_or_polymorph():
    gaps = PbeGaps(
        {key_string(SI): 0.6, key_string(CU): 0.0}, {f"{key_string(SI)}|227": 0.6, f"{key_string(SI)}|194": 0.0}
    )
    got = gaps.lookup([SI, SI, SI, CU, ((26, 1.0),)], [0, 227, 194, 0, 0])
    assert got[:4].tolist() == [0.6, 0.6, 0.0, 0.0] and np.isnan(got[4])
    assert np.isnan(gaps.lookup([CU], [225])[0])  # a polymorph MP does not have: unknown
    metal = gaps.needed_by("metal")
    assert metal.ground_state == {key_string(CU): 0.0} and list(metal.by_symmetry) == [f"{key_string(SI)}|194"]
    assert gaps.needed_by("off") == PbeGaps() and gaps.needed_by("both") is gaps


def test_file_round_trip_keeps_only_what_the_mode_reads(tmp_path):
    gaps = PbeGaps({key_string(SI): 0.6, key_string(CU): 0.0}, {f"{key_string(SI)}|227": 0.6})
    for mode in MODES:
        path = save(tmp_path / f"{mode}.json.gz", MetalGate(mode, 1.2, 0.3), gaps)
        gate, got = load(path)
        assert gate == MetalGate(mode, 1.2, 0.3)
        assert got == gaps.needed_by(mode)


def _write(path: Path, doc) -> Path:
    path.write_bytes(gzip.compress(json.dumps(doc).encode()))
    return path


@pytest.mark.parametrize(
    "doc",
    [
        {"format": 2},
        {"format": 1, "gate": {"mode": "metal", "slope": 1, "intercept": 0}},
        {"format": 1, "gate": {"mode": "x", "slope": 1, "intercept": 0}, "ground_state": {}, "by_symmetry": {}},
        {
            "format": 1,
            "gate": {"mode": "metal", "slope": 1, "intercept": 0},
            "ground_state": {"a": -1},
            "by_symmetry": {},
        },
        {"format": 1, "gate": {"mode": "metal", "slope": 1, "intercept": 0}, "ground_state": [], "by_symmetry": {}},
        ["not", "a", "gate"],
    ],
)
def test_a_bad_gate_file_is_a_clear_error(tmp_path, doc):
    path = _write(tmp_path / GATE_FILE, doc)
    with pytest.raises(MatmtlError, match="not a readable metal gate file") as err:
        load(path)
    assert str(path) in str(err.value)


def test_a_damaged_gate_file_is_a_clear_error(tmp_path):
    path = tmp_path / GATE_FILE
    path.write_bytes(b"\x1f\x8b not gzip")
    with pytest.raises(MatmtlError, match="not a readable metal gate file"):
        load(path)


@pytest.fixture(scope="module")
def mp_gaps(mirror):
    return PbeGaps.from_data(str(mirror))


def _key(formula: str):
    from matmtl.data import Featurizer
    from matmtl.train.data import composition_keys

    pairs, _ = Featurizer(cache=False).read(formula, "test")
    z, frac = np.zeros((1, 10), np.int64), np.zeros((1, 10), np.float32)
    z[0, : len(pairs)], frac[0, : len(pairs)] = [p[0] for p in pairs], [p[1] for p in pairs]
    return composition_keys(z, frac)[0]


@pytest.mark.parametrize(
    "formula, spg, metal",
    [
        # semiconductors and insulators, by formula (the MP ground state) and as the textbook polymorph
        ("Si", 0, False),
        ("Si", 227, False),
        ("GaAs", 0, False),
        ("GaAs", 216, False),
        ("Ge", 0, False),  # PBE has one Ge polymorph metallic in this space group: the median is not 0
        ("C", 227, False),  # diamond (the ground state in MP's PBE is a graphite-like one, also gapped here)
        ("C", 0, False),
        ("NaCl", 0, False),
        ("ZnO", 186, False),
        ("GaN", 0, False),
        ("InP", 0, False),
        ("CdTe", 0, False),
        ("ZnS", 0, False),
        ("MgO", 225, False),
        # metals
        ("Cu", 0, True),
        ("Al", 225, True),
        ("Fe", 0, True),
        ("TiN", 0, True),
    ],
)
def test_materials_project_gaps_of_textbook_crystals(mp_gaps, formula, spg, metal):
    gap = mp_gaps.lookup([_key(formula)], [spg])[0]
    assert np.isfinite(gap), f"{formula} (space group {spg}) is not in the table"
    assert (gap == 0) == metal, f"{formula}: PBE gap {gap} eV"


def test_lanthanide_and_actinide_compounds_are_left_out(mp_gaps, mirror):
    """By default every composition with a lanthanide Ce..Yb or actinide Pa..No reads as
    unknown (PBE without +U misplaces their f states), by formula and by polymorph;
    ``open_f=True`` (the earlier rule) keeps them, and the rest of the table is the same."""
    from matmtl.metal_gate import OPEN_F, SOURCE, has_open_f

    assert {58, 63, 70, 92, 94} <= OPEN_F and not {57, 71, 90, 21, 39} & OPEN_F  # La, Lu, Th, Sc, Y keep theirs
    rows = np.array([[63, 34, 0], [31, 33, 0], [57, 7, 0], [8, 92, 0]])  # EuSe, GaAs, LaN, UO2
    assert has_open_f(rows).tolist() == [True, False, False, True]
    full = PbeGaps.from_data(str(mirror), open_f=True)
    assert mp_gaps is PbeGaps.from_data(str(mirror), open_f=False) and "lanthanide" in SOURCE

    def has_f(key: str) -> bool:
        return any(int(p.split(":")[0]) in OPEN_F for p in key.split("|")[0].split(","))

    assert {k for k in full.ground_state if has_f(k)} and not any(has_f(k) for k in mp_gaps.ground_state)
    assert mp_gaps.ground_state == {k: g for k, g in full.ground_state.items() if not has_f(k)}
    assert mp_gaps.by_symmetry == {k: g for k, g in full.by_symmetry.items() if not has_f(k)}
    for formula in ("EuO", "CeO2", "UO2", "GdN", "ErB6"):
        assert np.isfinite(full.lookup([_key(formula)], [0])[0]), formula  # MP has them ...
        assert np.isnan(mp_gaps.lookup([_key(formula)], [0])[0]), formula  # ... the gate does not read them
    for formula in ("GaAs", "LaN", "Cu", "ThO2"):
        assert mp_gaps.lookup([_key(formula)], [0])[0] == full.lookup([_key(formula)], [0])[0], formula


def test_the_table_covers_most_experimental_compositions(mp_gaps, mirror):
    from matmtl.train.data import _load, composition_keys, to_taskdata

    ds = _load("expt_gap", str(mirror))
    rows = to_taskdata(ds, np.arange(len(ds)), {"gap_expt": "gap_expt"})
    keys, spg = composition_keys(rows.z, rows.frac), np.zeros(len(ds), np.int64)
    known = np.isfinite(mp_gaps.lookup(keys, spg))
    assert 0.45 < known.mean() < 0.6  # 52% here; the rest pass the gate unchanged
    # 73% with the lanthanide and actinide compounds (a fifth of expt_gap's compositions)
    assert 0.65 < np.isfinite(PbeGaps.from_data(str(mirror), open_f=True).lookup(keys, spg)).mean() < 0.8


def _gated_model(tmp_path, gate: MetalGate, gaps: PbeGaps) -> Path:
    from matmtl import zoo

    folder = tmp_path / "model"
    src = zoo.PRETRAINED_DIR / zoo.DEFAULT_MODEL  # its weights, with the gate given here
    folder.mkdir(parents=True)
    for f in ("model.safetensors", "model.json"):
        shutil.copy2(src / f, folder / f)
    save(folder / GATE_FILE, gate, gaps)
    return folder


def test_predictions_through_a_gated_model(tmp_path):
    import matmtl

    sro = _key("SrO")  # not among the shipped model's training compositions
    plain = matmtl.load_model(_gated_model(tmp_path / "a", MetalGate("off"), PbeGaps()))
    assert key_string(sro) not in plain.trained_keys()
    before = plain.predict(["SrO", "Cu", "Si"])
    # a table that (wrongly, for the test) says SrO is a PBE metal: the gate trusts it
    gaps = PbeGaps({key_string(sro): 0.0}, {f"{key_string(sro)}|225": 0.0})
    gated = matmtl.load_model(_gated_model(tmp_path / "b", MetalGate("metal"), gaps))
    after = gated.predict(["SrO", "Cu", "Si"])
    assert before["gap_expt"][0] > 3 and after["gap_expt"][0] == 0.0
    assert "metal gate" in after["trust"][0] and f"{before['gap_expt'][0]:.2f} eV" in after["trust"][0]
    assert after["gap_expt"][1:].tolist() == before["gap_expt"][1:].tolist()
    assert "metal gate" not in " ".join(after["trust"][1:])
    assert after["p_metal"].tolist() == before["p_metal"].tolist()  # the model's own probability, unchanged
    # a lanthanide compound is not in the gate's table: it passes, and the trust column says why
    eu = gated.predict(["EuSe", "NaCl"])
    assert eu["gap_expt"][0] == pytest.approx(plain.predict(["EuSe"])["gap_expt"][0], abs=1e-5)  # ungated
    assert "metal gate: not applied" in eu["trust"][0] and "not applied" not in eu["trust"][1]
    assert "not applied" not in plain.predict(["EuSe"])["trust"][0]  # no gate, no note about it


def test_the_gate_leaves_the_models_own_training_compositions_alone(tmp_path):
    """A composition whose measured gap the model was trained on keeps the model's answer
    (GaSb, InAs, InSb, NaCl: in the shipped model's training data), with a note of what
    the gate would have given; the same gate still acts on a composition it was not."""
    import matmtl

    seen = ["GaSb", "InAs", "InSb", "NaCl"]
    plain = matmtl.load_model(_gated_model(tmp_path / "a", MetalGate("off"), PbeGaps()))
    assert {key_string(_key(f)) for f in seen} <= plain.trained_keys()
    table = {key_string(_key(f)): 0.0 for f in [*seen, "SrO"]}  # all metals in this (test) table
    gated = matmtl.load_model(_gated_model(tmp_path / "b", MetalGate("metal"), PbeGaps(table, {})))
    before, after = plain.predict([*seen, "SrO"]), gated.predict([*seen, "SrO"])
    assert after["gap_expt"][:4].tolist() == before["gap_expt"][:4].tolist() and (before["gap_expt"][:4] > 0).all()
    for note in after["trust"][:4]:
        assert "metal gate: not applied" in note and "training data" in note and "would give 0.00 eV" in note
    assert after["gap_expt"][4] == 0.0 and "set to 0 eV" in after["trust"][4]


def _rows(*formulas: str) -> tuple[np.ndarray, np.ndarray]:
    from matmtl.data import Featurizer

    f = Featurizer(cache=False)(list(formulas), where="test")
    return f.z, f.frac


def test_seen_rows_are_the_training_compositions_and_are_not_gated():
    from matmtl.metal_gate import leave_seen, seen_rows, trained_keys
    from matmtl.uncertainty import Domain, training_domain

    # Ga2Sb2 is GaSb's composition; a doped composition keeps its key through the 6-decimal domain record
    train = _rows("GaSb", "Ga1.001Sb0.999Se0.003", "NaCl")
    trained = trained_keys(*train)
    dom = Domain(training_domain(*train))
    assert trained_keys(dom.z, dom.frac) == trained  # from the rows or from their stored domain: the same keys
    query = _rows("Ga2Sb2", "Cu", "Ga1.001Sb0.999Se0.003", "Ga1.002Sb0.998Se0.003")
    assert seen_rows(*query, trained).tolist() == [True, False, True, False]
    out = leave_seen([0.0, 0.0, 0.0, 0.0], seen_rows(*query, trained))
    assert np.isnan(out[[0, 2]]).all() and out[[1, 3]].tolist() == [0.0, 0.0]
    assert seen_rows(*_rows("Cu"), set()).tolist() == [False]
    with pytest.raises(ValueError, match="PBE gaps for"):
        leave_seen([0.0, 1.0], [True])


def test_fine_tuning_does_not_gate_held_out_rows_of_a_training_composition(tmp_path, mirror):
    """fit_metal_gate: a validation or test row whose composition is a training row's (GaSb
    twice, a PBE metal) is neither scored by the gate nor changed; another PBE metal (InAs,
    unseen) is, and the gate's domain record (a parent's compositions too) decides."""
    from matmtl.train.engine import TaskData
    from matmtl.train.finetuning import fit_metal_gate
    from matmtl.uncertainty import training_domain

    def data(*formulas, gap):
        z, frac = _rows(*formulas)
        return TaskData(z, frac, np.zeros(len(z), np.int64), {"gap_expt": np.full(len(z), gap)})

    class Constant:  # a model that answers 0.5 eV for everything
        def predict_arrays(self, z, frac, spg, tasks):
            return {"gap_expt": np.full((len(z), 2), 0.5)}

    tr = data("GaSb", "NaCl", "MgO", gap=0.5)
    va, te = data("GaSb", "InAs", gap=0.0), data("Ga2Sb2", "InAs", gap=0.0)
    rec = fit_metal_gate(tmp_path, Constant(), tr, va, te, str(mirror), training_domain(tr.z, tr.frac))
    assert rec["mode"] == "metal" and rec["validation_rows_with_pbe_gap"] == 1  # InAs only
    assert rec["validation_mae"] == {"off": 0.5, "metal": 0.25, "both": 0.25}
    assert rec["holdout_mae"] == 0.5 and rec["holdout_mae_gated"] == 0.25  # GaSb kept at 0.5, InAs set to 0
    # a parent's training composition (in the domain record, not in these rows) is left alone too
    parent = training_domain(*_rows("GaSb", "InAs", "NaCl", "MgO"))
    again = fit_metal_gate(tmp_path, Constant(), tr, va, te, str(mirror), parent)
    assert again["mode"] == "off" and again["validation_rows_with_pbe_gap"] == 0


def test_a_structure_of_a_training_composition_is_gated_only_as_another_phase(tmp_path):
    """The model learned a training composition with its MP ground state: a structure of that
    phase is left alone like its formula; a structure whose polymorph MP calls a metal while
    the ground state is gapped is another phase, and the gate acts on it."""
    from pymatgen.core import Lattice, Structure

    import matmtl

    nacl, gasb = key_string(_key("NaCl")), key_string(_key("GaSb"))
    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    zb = Structure.from_spacegroup("F-43m", Lattice.cubic(6.096), ["Ga", "Sb"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    gaps = PbeGaps({nacl: 5.0, gasb: 0.0}, {f"{nacl}|225": 0.0, f"{gasb}|216": 0.0})  # a test table
    gated = matmtl.load_model(_gated_model(tmp_path, MetalGate("metal"), gaps))
    assert {nacl, gasb} <= gated.trained_keys()
    df = gated.predict([rocksalt, "NaCl", zb, "GaSb"])
    assert df["spg_num"].tolist() == [225, 0, 216, 0]
    assert df["gap_expt"][0] == 0.0 and "this polymorph (space group 225) is a metal" in df["trust"][0]
    assert df["gap_expt"][1] > 3 and "metal gate" not in df["trust"][1]
    for i in (2, 3):  # the ground state's phase, a PBE metal, but a training composition: left alone
        assert df["gap_expt"][i] > 0 and "not applied" in df["trust"][i] and "training data" in df["trust"][i]


def test_a_gated_model_with_a_damaged_gate_file_is_a_clear_error(tmp_path):
    import matmtl

    folder = _gated_model(tmp_path, MetalGate("metal"), PbeGaps())
    (folder / GATE_FILE).write_bytes(b"broken")
    with pytest.raises(MatmtlError, match="metal gate file"):
        matmtl.load_model(folder).predict("NaCl")


# -- scripts/metal_gate.py: the gate on finished evaluations ---------------------------


@pytest.fixture(scope="module")
def script():
    from _scripts import load_script

    return load_script("metal_gate")


def test_the_script_on_the_repository_evaluation(script, mirror, tmp_path, capsys):
    """On results/expt_gap_predictions.json: each variant's ungated MAE is the evaluation's
    own, each fold's mode is the one with the lowest validation MAE, and the gated
    predictions are the gate applied to the stored ones."""
    out = tmp_path / "gate.json"
    assert script.main([str(ROOT / "results"), "--json", str(out), "--data-dir", str(mirror)]) == 0
    result = json.loads(out.read_text())
    assert result["about"].startswith("Each argument is the output folder")
    reported = json.loads((ROOT / "results" / "expt_gap.json").read_text())
    preds = json.loads((ROOT / "results" / "expt_gap_predictions.json").read_text())
    rows = [len(preds["folds"][k]["target"]) for k in sorted(preds["folds"], key=int)]
    for name, v in result["variants"].items():
        assert v["seeds"] == 1 and v["modes_chosen"] and sum(v["modes_chosen"].values()) == 5
        if name not in ("finetune_anchor", "finetune_anchor_mean"):
            written = np.average(reported["variants"][name]["fold_mae"], weights=rows)
            assert v["mae"]["mean"] == pytest.approx(written, abs=1e-4)
        for fold in result["per_fold"][0][name].values():
            maes = fold["validation_mae"]
            assert maes[fold["gate"]["mode"]] == min(maes.values())
    ids, target, gap, comp = script.pbe_gaps(str(mirror))
    for k, fold in preds["folds"].items():  # the gate's rows: validation rows are never test rows
        test = {ids[i] for i in fold["ids"]}
        for name in ("finetune_anchor_replay", "finetune_anchor_distill"):
            assert not test & set(preds["validation"][name][k]["rows"])
    runs = script.gate_runs(preds, ids, target, gap, comp)["finetune_anchor"]
    left = 0
    for k, r in runs.items():
        gate = MetalGate.from_dict(r["gate"])
        test = np.array([ids[i] for i in preds["folds"][k]["ids"]])
        # a test row whose composition is also a training row's (Cu9S5 and Cu1.8S are one) is not gated
        keys = composition_keys(*comp)
        held = set(test) | set(preds["validation"][f"finetune_anchor_{preds['anchor_source_per_fold'][k]}"][k]["rows"])
        train = {key_string(keys[i]) for i in range(len(keys)) if i not in held}
        seen = np.array([key_string(keys[i]) in train for i in test])
        held_out = np.where(seen, np.nan, gap[test])
        assert np.array_equal(r["gated"], gate.apply(r["pred"], held_out))
        left += int((seen & np.isfinite(gap[test])).sum())
    assert left >= 1  # the rule acts here: expt_gap holds 3 compositions twice
    assert "finetune_anchor" in capsys.readouterr().out
    # the anchored recipe against plain fine-tuning, both gated: the mean of the folds' differences
    both = script.gate_runs(preds, ids, target, gap, comp)
    fold_mae = {n: [np.abs(r["gated"] - r["target"]).mean() for r in both[n].values()] for n in both}
    vs = result["anchored_vs_plain_gated"]
    assert vs["folds"] == 5
    assert vs["mean"] == pytest.approx(np.mean(np.subtract(fold_mae["finetune_anchor"], fold_mae["finetune"])))


def test_the_script_averages_a_seeds_replay_and_distill_models(script, mirror):
    """finetune_anchor_mean: the replay and distill runs' test and validation predictions
    averaged (one seed: the same validation rows), gated on its own validation rows; not
    made when the two runs held out different rows."""
    preds = json.loads((ROOT / "results" / "expt_gap_predictions.json").read_text())
    ids, target, gap, comp = script.pbe_gaps(str(mirror))
    runs = script.gate_runs(preds, ids, target, gap, comp)
    replay, distill = preds["variants"]["finetune_anchor_replay"], preds["variants"]["finetune_anchor_distill"]
    for k, r in runs["finetune_anchor_mean"].items():
        assert np.allclose(r["pred"], (np.asarray(replay[k]) + np.asarray(distill[k])) / 2)
        val = [preds["validation"][f"finetune_anchor_{s}"][k] for s in ("replay", "distill")]
        mean = (np.asarray(val[0]["pred"]) + np.asarray(val[1]["pred"])) / 2
        assert r["validation_mae"]["off"] == pytest.approx(np.abs(mean - np.asarray(val[0]["target"])).mean())
    moved = json.loads(json.dumps(preds))
    for val in moved["validation"]["finetune_anchor_distill"].values():  # the same rows, listed otherwise
        for key in ("rows", "target", "pred"):
            val[key].reverse()
    assert "finetune_anchor_mean" not in script.gate_runs(moved, ids, target, gap, comp)
    other = json.loads(json.dumps(preds))  # one fold's distill run held out other rows (another seed's)
    val, test = other["validation"]["finetune_anchor_distill"]["3"], {ids[i] for i in preds["folds"]["3"]["ids"]}
    spare = [i for i in range(len(target)) if i not in test and i not in set(val["rows"])][: len(val["rows"])]
    val["rows"], val["target"] = spare, [float(target[i]) for i in spare]
    runs = script.gate_runs(other, ids, target, gap, comp)
    assert "finetune_anchor_mean" not in runs and "finetune_anchor_distill" in runs  # left out whole, not per fold


def _seed(rng, offset: float) -> dict:
    """One seed's gated runs of one variant over two folds (the script's per-seed form;
    every seed has the same test rows)."""
    out = {}
    for k in ("0", "1"):
        y = np.random.default_rng(int(k)).uniform(0, 3, 20)
        pred = np.clip(y + rng.normal(offset, 0.3, 20), 0, None)
        out[k] = {"target": y, "pred": pred, "gated": pred * 0.9}
    return {"v": out, "finetune_anchor": {k: {**r, "gated": r["pred"]} for k, r in out.items()}}


def test_seed_ensembles_are_groups_of_seeds_with_their_spread(script):
    """Seeds in the order given, in groups of K (a remainder left out); a group's model
    averages its members' gated predictions; its differences against its members and
    against the reference variant are paired per fold (groups averaged on each fold)."""
    rng = np.random.default_rng(0)
    per_seed = [_seed(rng, o) for o in (0.1, -0.1, 0.2, 0.0, 0.3)]
    e = script.seed_ensembles(per_seed, 2)["v"]
    assert (e["groups"], e["members"], e["seeds_left_out"]) == (2, 2, 1)
    groups = (per_seed[0:2], per_seed[2:4])
    for g, group in enumerate(groups):
        y = np.concatenate([group[0]["v"][k]["target"] for k in ("0", "1")])
        for kind, key in (("pred", "mae"), ("gated", "mae_gated")):
            avg = np.mean([np.concatenate([s["v"][k][kind] for k in ("0", "1")]) for s in group], axis=0)
            assert e[key]["per_group"][g] == pytest.approx(np.abs(avg - y).mean())
    for against, key in (("v", "vs_members_gated"), ("finetune_anchor", "vs_finetune_anchor_gated")):
        per_fold = []
        for k in ("0", "1"):
            t = per_seed[0]["v"][k]["target"]
            per_group = [
                np.abs(np.mean([s["v"][k]["gated"] for s in group], axis=0) - t).mean()
                - np.mean([np.abs(s[against][k]["gated"] - t).mean() for s in group])
                for group in groups
            ]
            per_fold.append(np.mean(per_group))
        assert e[key]["mean"] == pytest.approx(np.mean(per_fold)) and e[key]["folds"] == 2
        assert e[key]["se"] == pytest.approx(np.std(per_fold, ddof=1) / np.sqrt(2))
    assert e["vs_members_gated"]["mean"] <= 0  # an average is never worse than its members' mean (MAE is convex)
    assert "2 x 2 seeds" in script.ensemble_table(script.seed_ensembles(per_seed, 2))
    for k in (0, 1, 6):
        with pytest.raises(ValueError, match="seed ensemble"):
            script.seed_ensembles(per_seed, k)
    # a seed without the reference on a fold: the ensemble is still scored, without that comparison
    del per_seed[3]["finetune_anchor"]["1"]
    e = script.seed_ensembles(per_seed, 2)["v"]
    assert e["vs_finetune_anchor_gated"] is None and e["vs_members_gated"]["folds"] == 2
    assert "| – |" in script.ensemble_table({"v": e})


def test_the_script_scores_seed_ensembles_of_the_repository_seeds(script, mirror, tmp_path, capsys):
    """Two evaluations as one 2-seed ensemble: plain fine-tuning's ensemble against the
    anchored recipe's single models, recomputed from the per-seed gated runs."""
    folders = [ROOT / "results", ROOT / "results" / "seeds" / "pretrain75-s1"]
    out = tmp_path / "gate.json"
    argv = [*map(str, folders), "--ensemble", "2", "--json", str(out), "--data-dir", str(mirror)]
    assert script.main(argv) == 0
    e = json.loads(out.read_text())["seed_ensembles"]["2"]["finetune"]
    assert (e["groups"], e["members"], e["seeds_left_out"]) == (1, 2, 0)
    ids, target, gap, comp = script.pbe_gaps(str(mirror))
    per_seed = [
        script.gate_runs(json.loads((f / "expt_gap_predictions.json").read_text()), ids, target, gap, comp)
        for f in folders
    ]
    per_fold = []
    for k in sorted(per_seed[0]["finetune"], key=int):
        t = per_seed[0]["finetune"][k]["target"]
        ens = np.abs((per_seed[0]["finetune"][k]["gated"] + per_seed[1]["finetune"][k]["gated"]) / 2 - t).mean()
        per_fold.append(ens - np.mean([np.abs(s["finetune_anchor"][k]["gated"] - t).mean() for s in per_seed]))
    assert e["vs_finetune_anchor_gated"]["mean"] == pytest.approx(np.mean(per_fold))
    assert "1 x 2 seeds" in capsys.readouterr().out
    for bad, message in (
        ([str(folders[0]), str(folders[0])], "given twice"),
        ([str(folders[0]), "--ensemble", "2"], "at least 2 evaluations"),
        ([*map(str, folders), "--ensemble", "1"], "at least 2 members"),
    ):
        assert script.main([*bad, "--data-dir", str(mirror)]) == 2
        assert message in capsys.readouterr().err


def test_the_script_refuses_evaluations_with_other_test_rows(script, mirror, tmp_path, capsys):
    preds = json.loads((ROOT / "results" / "expt_gap_predictions.json").read_text())
    for change, message in (
        (lambda p: p["folds"].pop("4"), "folds"),
        (lambda p: p["folds"]["2"]["ids"].reverse(), "fold 2's test rows differ"),
    ):
        other = json.loads(json.dumps(preds))
        change(other)
        folder = tmp_path / message.replace(" ", "_").replace("'", "")
        folder.mkdir()
        (folder / "expt_gap_predictions.json").write_text(json.dumps(other))
        assert script.main([str(ROOT / "results"), str(folder), "--data-dir", str(mirror)]) == 2
        assert message in capsys.readouterr().err


def test_the_script_refuses_what_it_cannot_read(script, tmp_path, capsys, mirror):
    bad = tmp_path / "expt_gap_predictions.json"
    for content in ("not json", "{}", '{"folds": {}, "variants": {}, "validation": {}}'):
        bad.write_text(content)
        assert script.main([str(tmp_path), "--data-dir", str(mirror)]) == 2
        assert "error:" in capsys.readouterr().err


def test_the_gate_is_read_at_load_and_survives_pickling(tmp_path):
    """A loaded model holds its gate (deleting the run folder afterwards changes nothing),
    and BandGapRegressor's pickled form carries it."""
    import matmtl
    from matmtl.estimator import freeze, thaw

    sro = key_string(_key("SrO"))  # not a training composition of the model
    folder = _gated_model(tmp_path, MetalGate("metal"), PbeGaps({sro: 0.0}, {}))
    model = matmtl.load_model(folder)
    shutil.rmtree(folder)
    assert model.predict("SrO").gap_expt == 0.0
    again = thaw(freeze(model))
    assert again.metal_gate == model.metal_gate and again.predict("SrO").gap_expt == 0.0
    # a model pickled without a gate stays without one, whatever lies at its old path now
    plain = matmtl.load_model(_gated_model(tmp_path / "plain", MetalGate("off"), PbeGaps()))
    plain.metal_gate = None
    frozen = freeze(plain)
    save(plain.path / GATE_FILE, MetalGate("metal"), PbeGaps({sro: 0.0}, {}))
    assert thaw(frozen).metal_gate is None and thaw(frozen).predict("SrO").gap_expt > 3


def test_a_structure_reads_its_own_polymorph_and_both_fills_a_model_metal(tmp_path):
    """A structure is gated by MP's polymorph in its space group (not the ground state); in
    "both" a composition the model calls a metal gets the PBE gap on the experimental scale."""
    from pymatgen.core import Lattice, Structure

    import matmtl

    sro, cu = key_string(_key("SrO")), key_string(_key("Cu"))  # neither a training composition of the model
    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.16), ["Sr", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    # the table says: SrO's ground state is gapped, its rock-salt polymorph (225) a metal; Cu has a PBE gap
    gaps = PbeGaps({sro: 5.0, cu: 1.0}, {f"{sro}|225": 0.0})
    model = matmtl.load_model(_gated_model(tmp_path, MetalGate("both", 2.0, 0.5), gaps))
    df = model.predict([rocksalt, "SrO", "Cu"])
    assert df["spg_num"].tolist() == [225, 0, 0]
    assert df["gap_expt"][0] == 0.0 and "this polymorph (space group 225) is a metal" in df["trust"][0]
    assert df["gap_expt"][1] > 3 and "metal gate" not in df["trust"][1]
    assert df["gap_expt"][2] == pytest.approx(2.5)  # the model: 0 eV (a metal); PBE 1.0 eV -> 2 x 1.0 + 0.5
    assert "the model called it a metal" in df["trust"][2] and "1.00 eV" in df["trust"][2]


def test_the_run_summary_names_the_gate():
    from matmtl.train.report import metal_gate_line

    line = metal_gate_line(
        {"mode": "metal", "validation_mae": {"off": 0.25, "metal": 0.24}, "holdout_mae": 0.3, "holdout_mae_gated": 0.29}
    )
    assert line.startswith("metal gate: mode metal") and "off 0.2500" in line and "0.3000 -> 0.2900 eV" in line
    assert metal_gate_line({"mode": "off", "skipped": "no validation rows"}) == "metal gate: off (no validation rows)"


def test_fit_is_the_line_on_training_rows_and_the_mode_on_validation_rows():
    gate, maes = fit([0.5, 1.0, 2.0], [1.25, 2.0, 3.5], [0.0, 0.0], [2.0, 0.0], [1.0, 0.0])
    assert (gate.slope, gate.intercept) == pytest.approx((1.5, 0.5))
    assert gate.mode == "both" and maes["both"] == pytest.approx(0.0, abs=1e-9)  # 1.5 x 1 + 0.5 = 2
