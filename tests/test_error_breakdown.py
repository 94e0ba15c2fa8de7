"""scripts/error_breakdown.py: the parts of the absolute error add up to the MAE, each row
lands in exactly one part, and the anchored recipe is scored with the source chosen per fold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    return load_script("error_breakdown")


def test_known_rows_land_in_their_parts(script):
    target = [0.0, 0.0, 1.0, 2.0, 3.0, 0.0]
    pred = [0.5, 0.0, 0.0, 2.5, 2.0, 2.0]
    b = script.breakdown(target, pred)
    parts = b["parts"]
    assert b["rows"] == 6 and b["mae"] == pytest.approx(np.mean([0.5, 0, 1, 0.5, 1, 2]))
    assert (parts["metal_called_gapped"]["rows"], parts["metal_called_gapped"]["mae"]) == (2, pytest.approx(1.25))
    assert (parts["gapped_called_metal"]["rows"], parts["gapped_called_metal"]["mae"]) == (1, pytest.approx(1.0))
    assert (parts["gap_size"]["rows"], parts["gap_size"]["mae"]) == (2, pytest.approx(0.75))
    assert (parts["metal_called_metal"]["rows"], parts["metal_called_metal"]["mae"]) == (1, 0.0)
    assert sum(p["rows"] for p in parts.values()) == 6
    assert sum(p["error_share"] for p in parts.values()) == pytest.approx(1.0)


def test_empty_parts_and_a_perfect_model(script):
    b = script.breakdown([0.0, 1.0], [0.0, 1.0])
    assert b["mae"] == 0 and b["parts"]["gapped_called_metal"]["mae"] is None
    assert all(p["error_share"] == 0 for p in b["parts"].values())


@pytest.mark.parametrize("target, pred", [([0.0, 1.0], [0.0]), ([0.0, np.nan], [0.0, 1.0]), ([[1.0]], [[1.0]])])
def test_bad_arrays_are_refused(script, target, pred):
    with pytest.raises(ValueError):
        script.breakdown(target, pred)


def test_the_repository_predictions(script, tmp_path, capsys):
    """On results/expt_gap_predictions.json: each variant's MAE is the one the evaluation
    reported, and the anchored recipe follows the anchor chosen per fold."""
    source = ROOT / "results" / "expt_gap_predictions.json"
    out = tmp_path / "breakdown.json"
    assert script.main([str(source), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["about"].startswith("Reads the test predictions")
    reported = json.loads((ROOT / "results" / "expt_gap.json").read_text())
    preds = json.loads(source.read_text())
    for name, b in result["variants"].items():
        parts = b["parts"].values()
        assert sum(p["rows"] for p in parts) == b["rows"] == 4604
        assert sum(p["error_share"] for p in parts) == pytest.approx(1.0)
        if name != "finetune_anchor":  # the fold MAEs the evaluation wrote, row-weighted (4-decimal predictions)
            rows = [len(preds["folds"][k]["target"]) for k in sorted(preds["folds"], key=int)]
            written = np.average(reported["variants"][name]["fold_mae"], weights=rows)
            assert b["mae"] == pytest.approx(written, abs=1e-4)
    chosen = preds["anchor_source_per_fold"]
    y, p = script.variants_of(preds)["finetune_anchor"]
    expect = np.concatenate([preds["variants"][f"finetune_anchor_{chosen[k]}"][k] for k in sorted(chosen, key=int)])
    assert np.array_equal(p, expect) and y.size == 4604
    assert "metal_called_gapped" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content",
    [
        "{}",  # not an evaluation's predictions
        "not json",
        # a non-finite prediction: refused with the reason, no traceback
        '{"folds": {"0": {"target": [0.0, 1.0]}}, "variants": {"v": {"0": [0.0, NaN]}}}',
    ],
)
def test_unreadable_file_is_a_clear_error(script, tmp_path, capsys, content):
    bad = tmp_path / "p.json"
    bad.write_text(content)
    assert script.main([str(bad)]) == 2
    assert "cannot read the predictions" in capsys.readouterr().err
