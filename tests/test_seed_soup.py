"""scripts/seed_soup.py on a tiny pretraining: members share their validation rows, the
soup is the mean of their weights, the report is complete, and members are reused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _scripts import load_script


def test_a_seed_soup_is_the_mean_of_its_members(pretrained, tmp_path, capsys):
    from matmtl.checkpoints import load_checkpoint
    from matmtl.io import sha256_file

    script = load_script("seed_soup")
    args = ["--checkpoint", str(pretrained.run_dir), "--folds", "0", "--members", "2", "--group", "3"]
    args += ["--tiny", "--max-train-rows", "150", "--work", str(tmp_path / "work"), "--json", str(tmp_path / "s.json")]
    assert script.main(args) == 0
    out = json.loads((tmp_path / "s.json").read_text())
    (fold,) = out["sources"]["replay"]["folds"]
    assert fold["gate_modes"]["soup"] in ("off", "metal", "both") and len(fold["gate_modes"]["members"]) == 2
    assert fold["seeds"] == [3, 103] == script.member_seeds(3, 2)
    assert out["checkpoint_sha256"] == sha256_file(pretrained.run_dir / "model.safetensors")
    members = [tmp_path / "work" / "replay" / "fold0" / f"seed{s}" for s in fold["seeds"]]
    rows = [json.loads((m / "validation_predictions.json").read_text())["rows"] for m in members]
    assert rows[0] == rows[1] and len(rows[0]) == fold["validation_rows"]  # one split seed
    # the soup's weights are the members' mean (checked on the encoder)
    a, b = (load_checkpoint(m)[0].state_dict() for m in members)
    _, soup = script._soup(members)
    for k, v in soup.state_dict().items():
        if v.is_floating_point():
            assert np.allclose(v.numpy(), (a[k].double().numpy() + b[k].double().numpy()) / 2, atol=1e-6), k
    for kind in ("plain", "gated"):
        for key in ("validation_mae", "test_mae"):
            b = fold[kind][key]
            assert set(b) == {"members", "ensemble", "soup"} and len(b["members"]) == 2
            assert all(np.isfinite(v) for v in b["members"] + [b["ensemble"], b["soup"]])
        assert "_test_errors" not in fold[kind]
    assert set(out["sources"]["replay"]["gated"]["paired_over_folds"]["test_mae"]) == {
        "soup_minus_member_0",
        "soup_minus_member_mean",
        "soup_minus_ensemble",
    }
    assert "soup" in capsys.readouterr().out
    # a second call reuses the finished members (same numbers, no retraining)
    stamp = [(m / "model.safetensors").stat().st_mtime_ns for m in members]
    assert script.main(args) == 0
    assert [(m / "model.safetensors").stat().st_mtime_ns for m in members] == stamp
    assert json.loads((tmp_path / "s.json").read_text())["sources"] == out["sources"]


def test_bad_arguments_are_named(tmp_path, capsys):
    script = load_script("seed_soup")
    for args, flag in (
        (["--checkpoint", str(tmp_path), "--work", str(tmp_path), "--members", "1"], "--members"),
        (["--checkpoint", str(tmp_path), "--work", str(tmp_path), "--folds", "a,b"], "--folds"),
        (["--checkpoint", str(tmp_path), "--work", str(tmp_path), "--folds", "0,7"], "--folds"),
        (["--checkpoint", str(tmp_path), "--work", str(tmp_path), "--folds", "1,1"], "--folds"),
        (["--combine", "a.json", "b.json", "--folds", "x"], "--folds"),
        (["--checkpoint", str(tmp_path / "none"), "--work", str(tmp_path)], "--checkpoint"),
        (["--checkpoint", str(tmp_path), "--work", str(tmp_path), "--aux-source", "magic"], "--aux-source"),
    ):
        with pytest.raises(SystemExit):
            script.main(args)
        assert flag in capsys.readouterr().err


def test_a_single_pair_has_no_standard_error():
    """One cell has no spread: its SE is None (null in JSON, 'n/a' printed), never NaN."""
    script = load_script("seed_soup")
    one = script._paired([0.30], [0.28])
    assert one["mean"] == pytest.approx(0.02) and one["se"] is None
    two = script._paired([0.30, 0.26], [0.28, 0.25])
    assert two["se"] == pytest.approx(abs(0.02 - 0.01) / 2)  # sd (ddof 1) of [0.02, 0.01] / sqrt(2)
    assert script._diffs({"soup_minus_ensemble": one}) == "ensemble +0.0200 +- n/a"


def test_the_anchored_choice_is_made_per_fold_on_validation_rows():
    """Each of member 0, the ensemble and the soup takes, per fold, the source with the
    lower validation MAE, and brings that source's test MAE; the first source on a tie."""
    script = load_script("seed_soup")

    def block(val, test):  # val/test: (member 0, other member, ensemble, soup)
        return {
            "validation_mae": {"members": list(val[:2]), "ensemble": val[2], "soup": val[3]},
            "test_mae": {"members": list(test[:2]), "ensemble": test[2], "soup": test[3]},
            "_test_errors": {"member_0": [test[0]] * 2, "ensemble": [test[2]] * 2, "soup": [test[3]] * 2},
        }

    def fold(k, val, test, gated_val=None):  # the gate here lowers every test MAE by 0.5
        gated = block(gated_val or val, tuple(t - 0.5 for t in test))
        return {"fold": k, "plain": block(val, test), "gated": gated}

    replay = [
        fold(0, (0.3, 0.3, 0.2, 0.25), (1.0, 1.0, 1.1, 1.2)),
        fold(1, (0.5, 0.5, 0.5, 0.5), (2.0, 2.0, 2.1, 2.2)),
    ]
    distill = [
        # gated, distill's member 0 would look better on validation: the choice stays the ungated one's
        fold(0, (0.4, 0.3, 0.1, 0.25), (3.0, 3.0, 3.1, 3.2), gated_val=(0.0, 0.3, 0.1, 0.25)),
        fold(1, (0.1, 0.5, 0.5, 0.4), (4.0, 4.0, 4.1, 4.2)),
    ]
    rows = script.anchored({"replay": replay, "distill": distill})
    assert rows[0]["chosen"] == {"member_0": "replay", "ensemble": "distill", "soup": "replay"}  # soup: a tie
    assert rows[1]["chosen"] == {"member_0": "distill", "ensemble": "replay", "soup": "distill"}
    assert rows[0]["plain"]["test_mae"] == {"member_0": 1.0, "ensemble": 3.1, "soup": 1.2}
    assert rows[0]["gated"]["test_mae"] == {"member_0": 0.5, "ensemble": 2.6, "soup": 0.7}
    assert rows[1]["plain"]["test_paired"]["soup_minus_member_0"]["mean"] == pytest.approx(0.2)
    summary = script.summarize([r["plain"] for r in rows])
    assert summary["mean_over_folds"]["test_mae"]["soup"] == pytest.approx((1.2 + 4.2) / 2)
    assert set(summary["paired_over_folds"]["test_mae"]) == {"soup_minus_member_0", "soup_minus_ensemble"}


def _group(script, group: int, tests: list[tuple], members=2, sources=("replay",)) -> dict:
    """A group's JSON as main() writes it, from per-fold test MAEs (member 0, member 1,
    ensemble, soup); validation MAEs are those minus 0.1, and gating lowers all by 0.05."""

    def block(t, shift):
        t = [x - shift for x in t]
        return {
            "validation_mae": {"members": [t[0] - 0.1, t[1] - 0.1], "ensemble": t[2] - 0.1, "soup": t[3] - 0.1},
            "test_mae": {"members": t[:2], "ensemble": t[2], "soup": t[3]},
        }

    folds = [{"fold": k, "plain": block(t, 0.0), "gated": block(t, 0.05)} for k, t in enumerate(tests)]
    per_source = {"folds": folds, **{kind: script.summarize([f[kind] for f in folds]) for kind in ("plain", "gated")}}
    return {"checkpoint": "run", "members": members, "group": group, "sources": {s: per_source for s in sources}}


def test_groups_are_combined_per_source_with_their_spread_and_paired_cells(tmp_path, capsys):
    script = load_script("seed_soup")
    g0 = _group(script, 0, [(1.0, 2.0, 1.2, 1.1), (2.0, 2.0, 2.0, 1.5)], sources=("replay", "distill"))
    g1 = _group(script, 1, [(3.0, 1.0, 1.5, 1.0), (1.0, 1.0, 1.0, 1.0)])
    g1["checkpoint_sha256"] = "abc"
    out = script.combine([g0, g1])
    assert out["checkpoints"] == {"0": {"path": "run", "sha256": None}, "1": {"path": "run", "sha256": "abc"}}
    out = out["sources"]
    rep, dis = out["replay"]["plain"], out["distill"]["plain"]
    assert out["replay"]["groups"] == [0, 1] and out["distill"]["groups"] == [0]
    # group means over folds: soup 1.3 and 1.0; member means 1.75 and 1.5
    assert rep["test_mae_mean_over_groups"]["soup"] == pytest.approx(1.15)
    assert rep["test_mae_std_over_groups"]["soup"] == pytest.approx(np.std([1.3, 1.0], ddof=1))
    assert rep["test_mae_mean_over_groups"]["member_mean"] == pytest.approx(1.625)
    # paired over the 4 (group, fold) cells: soup - member_0 = 0.1, -0.5, -2.0, 0.0
    d = np.array([0.1, -0.5, -2.0, 0.0])
    assert rep["cells"] == 4
    assert rep["paired_over_cells"]["soup_minus_member_0"]["mean"] == pytest.approx(d.mean())
    assert rep["paired_over_cells"]["soup_minus_member_0"]["se"] == pytest.approx(d.std(ddof=1) / 2)
    assert out["replay"]["gated"]["test_mae_mean_over_groups"]["soup"] == pytest.approx(1.1)
    # only chosen folds: fold 1 of each group (soup 1.5 and 1.0; member 0 2.0 and 1.0)
    one = script.combine([g0, g1], folds=[1])["sources"]["replay"]["plain"]
    assert one["cells"] == 2 and one["test_mae_mean_over_groups"]["soup"] == pytest.approx(1.25)
    assert one["paired_over_cells"]["soup_minus_member_0"]["mean"] == pytest.approx(-0.25)
    # a source one group has: its figures, no spread
    assert dis["test_mae_mean_over_groups"]["soup"] == pytest.approx(1.3) and dis["cells"] == 2
    assert dis["test_mae_std_over_groups"]["soup"] is None
    # through the command line: a JSON file with no NaN, the figures printed
    paths = []
    for g in (g0, g1):
        paths.append(tmp_path / f"g{g['group']}.json")
        paths[-1].write_text(json.dumps(g))
    assert script.main(["--combine", *map(str, paths), "--json", str(tmp_path / "all.json")]) == 0
    text = (tmp_path / "all.json").read_text()
    assert "NaN" not in text and json.loads(text)["sources"]["replay"]["plain"]["cells"] == 4
    assert json.loads(text)["checkpoints"]["1"]["sha256"] == "abc"
    assert "soup minus (4 cells)" in capsys.readouterr().out


def test_groups_that_do_not_match_are_refused_by_name(tmp_path, capsys):
    script = load_script("seed_soup")
    g0 = _group(script, 0, [(1.0, 1.0, 1.0, 1.0)])
    for other, word in (
        (_group(script, 1, [(1.0, 1.0, 1.0, 1.0)], members=3), "members"),
        (_group(script, 0, [(1.0, 1.0, 1.0, 1.0)]), "given twice"),
        (_group(script, 1, [(1.0, 1.0, 1.0, 1.0), (1.0, 1.0, 1.0, 1.0)]), "different folds"),
    ):
        with pytest.raises(ValueError, match=word):
            script.combine([g0, other])
    with pytest.raises(ValueError, match=r"no fold \[3\]"):
        script.combine([g0, _group(script, 1, [(1.0, 1.0, 1.0, 1.0)])], folds=[0, 3])
    (tmp_path / "g0.json").write_text(json.dumps(g0))
    assert script.main(["--combine", str(tmp_path / "g0.json"), str(tmp_path / "missing.json")]) == 1
    assert "missing.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(["--combine", str(tmp_path / "g0.json")])
    assert "at least two" in capsys.readouterr().err
