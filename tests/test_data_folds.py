"""Matbench's official folds, checked against the official v0.1 test ids."""

import numpy as np
import pytest

from matmtl.data import load_dataset, matbench_folds, official_test_ids

TASKS = {"expt_gap": "matbench_expt_gap", "mp": "matbench_mp_e_form", "mp_gap": "matbench_mp_gap"}


@pytest.mark.parametrize("name", list(TASKS))
def test_folds_match_official_test_ids(name, mirror):
    ds = load_dataset(name)
    official = official_test_ids(mirror / "matbench/benchmarks/matbench_v0.1_dummy/results.json.gz", TASKS[name])
    ids = ds.frame["id"].to_numpy()
    for k, (train, test) in enumerate(ds.folds()):
        assert set(ids[test]) == official[k], f"fold {k} of {name}"
        assert len(np.intersect1d(train, test)) == 0
        assert len(train) + len(test) == len(ds)


def test_fold_sizes_and_determinism():
    folds = matbench_folds(4604)
    assert [len(te) for _, te in folds] == [921, 921, 921, 921, 920]
    again = matbench_folds(4604)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    covered = np.sort(np.concatenate([te for _, te in folds]))
    assert np.array_equal(covered, np.arange(4604))


def test_too_few_rows():
    with pytest.raises(ValueError, match="at least 5 rows"):
        matbench_folds(3)


@pytest.mark.parametrize("holdout", [0, None])
def test_oqmd_gaps_hold_out_the_compositions_the_matbench_tasks_hold_out(holdout):
    """OQMD has no official folds: with a held-out matbench fold, its rows whose composition
    is in that fold (of any matbench task trained alongside) are left out of training."""
    from matmtl.train.data import composition_keys, dft_split

    tr, te, info = dft_split(["e_form", "gap_oqmd"], holdout, 400, 0)
    oq = np.isfinite(tr.targets["gap_oqmd"])
    assert info["gap_oqmd"]["holdout_rows"] == 0 and info["gap_oqmd"]["train_rows"] == oq.sum()
    assert np.isnan(te.targets["gap_oqmd"]).all()
    if holdout is None:
        assert oq.sum() == 400 and info["gap_oqmd"]["left_out_as_held_out_elsewhere"] == 0
        return
    mp = load_dataset("mp")
    fold = mp.subset(mp.folds()[holdout][1]).features()
    held = set(composition_keys(fold.z, fold.frac))
    assert not held & set(composition_keys(tr.z[oq], tr.frac[oq]))
    left = info["gap_oqmd"]["left_out_as_held_out_elsewhere"]
    assert left > 0 and oq.sum() + left == 400
