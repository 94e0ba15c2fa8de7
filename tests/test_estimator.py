"""matmtl.BandGapRegressor: scikit-learn's estimator contract, fine-tuning through
matmtl.train.finetune, cross-validation and pipelines, bad input (tiny settings)."""

import pickle

import numpy as np
import pandas as pd
import pytest
from _tiny import tiny_pretrain
from pymatgen.core import Composition, Lattice, Structure
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import cross_val_score, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils import estimator_checks as checks

import matmtl
from matmtl import BandGapRegressor, zoo
from matmtl.data import load_dataset
from matmtl.errors import ConfigError, DataError, InputTypeError, MatmtlError
from matmtl.train import pretrain

TINY = dict(preset="finetune-tiny", epochs=2, replay_max_rows=200)


@pytest.fixture(scope="module")
def gaps(mirror):
    """96 experimental band gaps of matbench expt_gap (seeded sample)."""
    frame = load_dataset("expt_gap", mirror).frame.sample(96, random_state=0)
    return frame["formula"].tolist(), frame["gap_expt"].to_numpy()


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, mirror):
    """A tiny pretrained e_form model (no experimental data seen: honest cross-validation)."""
    root = tmp_path_factory.mktemp("pre")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MATMTL_CACHE_DIR", str(root / "cache"))
        return pretrain(tiny_pretrain(max_rows=300), root / "run", progress=False).run_dir


def test_the_estimator_contract_without_fitting():
    reg = BandGapRegressor(epochs=3, aux="dft_energy")
    params = reg.get_params()
    assert params["base_model"] == zoo.DEFAULT_MODEL and params["epochs"] == 3 and params["aux"] == "dft_energy"
    assert reg.set_params(lr=1e-3, seed=2) is reg and (reg.lr, reg.seed) == (1e-3, 2)
    twin = clone(reg)
    assert twin is not reg and twin.get_params() == reg.get_params()
    assert repr(reg) == "BandGapRegressor(epochs=3, lr=0.001, seed=2)"
    with pytest.raises(NotFittedError):
        reg.predict(["GaN"])
    for check in (
        checks.check_estimator_cloneable,
        checks.check_estimator_repr,
        checks.check_no_attributes_set_in_init,
        checks.check_get_params_invariance,
        checks.check_set_params,
        checks.check_parameters_default_constructible,
        checks.check_do_not_raise_errors_in_init_or_set_params,
        checks.check_mixin_order,
        checks.check_estimators_unfitted,
        checks.check_valid_tag_types,
    ):
        check("BandGapRegressor", BandGapRegressor())
    assert BandGapRegressor().__sklearn_tags__().input_tags.string


@pytest.mark.parametrize(
    "X, y, error, match",
    [
        (["GaN", "ZnO"], [3.4], DataError, "X has 2 rows but y has 1"),
        (["GaN", "ZnO"], [3.4, np.nan], DataError, r"NaN or infinite \(rows 1\)"),
        (["GaN", "ZnO"], [3.4, -0.2], DataError, r"negative band gap.*y\[1\] = -0.2"),
        (["GaN", "ZnO"], [[3.4, 1], [3.3, 1]], DataError, "one band gap per row"),
        (["GaN", "ZnO"], ["3.4", "wide"], DataError, "band gaps must be numbers"),
        ("GaN", [3.4], InputTypeError, r"not a list of inputs.*\[X\]"),
        (pd.DataFrame({"a": ["GaN"], "b": ["x"]}), [3.4], DataError, "DataFrame with 2 columns"),
        (np.array([["GaN", "x"]]), [3.4], DataError, r"shape \(1, 2\)"),
        ([], [], DataError, "no rows"),
        (["GaN", "Qq2O"], [3.4, 1.0], DataError, r"X\[1\]"),
        (["GaN", 3.0], [3.4, 1.0], InputTypeError, r"X\[1\]"),
        (["GaN", "LiNaKRbCsBeMgCaSrBaO"], [3.4, 1.0], DataError, r"X\[1\]: .* has 11 elements"),
        (["GaN", "OgO2"], [3.4, 1.0], DataError, r"X\[1\]: element\(s\) Og beyond"),
    ],
)
def test_bad_input_is_refused_before_training(X, y, error, match, tmp_path):
    reg = BandGapRegressor(run_dir=tmp_path / "run", **TINY)
    with pytest.raises(error, match=match):
        reg.fit(X, y)
    assert not (tmp_path / "run").exists() and not hasattr(reg, "model_")


def test_bad_settings_and_a_used_run_dir_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"BandGapRegressor: TrainConfig.epochs"):
        BandGapRegressor(epochs=0).fit(["GaN"], [3.4])
    with pytest.raises(ConfigError, match="FinetuneConfig.aux"):
        BandGapRegressor(aux="dft_magic").fit(["GaN"], [3.4])
    with pytest.raises(MatmtlError, match="no shipped model named 'nope'"):
        BandGapRegressor(base_model="nope").fit(["GaN"], [3.4])
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    with pytest.raises(MatmtlError, match="never overwrites a run"):
        BandGapRegressor(run_dir=tmp_path / "used", **TINY).fit(["GaN"], [3.4])


def test_cross_validation_fine_tunes_on_the_training_folds_only(gaps, pretrained):
    X, y = gaps
    reg = BandGapRegressor(base_model=str(pretrained), **TINY)
    scores = cross_val_score(reg, X, y, cv=2, scoring="neg_mean_absolute_error")
    assert scores.shape == (2,) and np.all(np.isfinite(scores)) and np.all(scores < 0)
    out = cross_validate(reg, X, y, cv=2, return_estimator=True)
    for est in out["estimator"]:
        m = est.metrics_
        # the run's validation rows are a share of the 48 training-fold rows; no test-fold row is seen
        assert m["train_rows"] + m["validation_rows"] == 48 and m["validation_rows"] == 5 and m["holdout_rows"] == 0
        assert m["replay"]["e_form"]["train_rows"] == 200 and est.run_dir_ is None
        assert est.predict(["GaN"])[0] >= 0


def _formula_column(frame):
    return frame[["formula"]]


def test_a_pipeline_on_a_dataframe(gaps, pretrained):
    X, y = gaps
    frame = pd.DataFrame({"formula": X, "note": "expt"})
    pipe = make_pipeline(FunctionTransformer(_formula_column), BandGapRegressor(base_model=str(pretrained), **TINY))
    pred = pipe.fit(frame[:80], y[:80]).predict(frame[80:])
    assert pred.shape == (16,) and pred.dtype == np.float64 and np.all(pred >= 0)
    assert np.isfinite(pipe.score(frame[80:], y[80:]))


def test_the_shipped_model_fine_tuned_kept_and_pickled(gaps, tmp_path):
    X, y = gaps
    gaas = Structure.from_spacegroup("F-43m", Lattice.cubic(5.653), ["Ga", "As"], [[0, 0, 0], [0.25] * 3])
    X = [*X[:40], gaas, Composition("ZnO")]
    y = np.array([*y[:40], 1.42, 3.4])
    reg = BandGapRegressor(run_dir=tmp_path / "mine", **TINY).fit(X, y)
    assert reg.run_dir_ == tmp_path / "mine" and (reg.run_dir_ / "model.json").is_file()
    table = pd.read_csv(tmp_path / "mine.train.csv")  # the rows it was trained on, beside the run
    assert len(table) == 42 and table["spg_num"].tolist()[-2:] == [216, 0]
    assert reg.model_.meta["parent"]["checkpoint"].endswith(zoo.DEFAULT_MODEL)
    # the gap head kept training: its domain still holds the shipped model's compositions
    assert reg.model_.meta["domain"]["gap_expt"]["compositions"] > 1000

    gap, std = reg.predict(["GaN", gaas], return_std=True)
    assert gap.shape == std.shape == (2,) and np.all(gap > 0) and np.all(std > 0)
    assert np.allclose(matmtl.predict(["GaN", gaas], model=str(reg.run_dir_))["gap_expt"], gap)

    state = reg.__getstate__()  # plain data: safetensors bytes and JSON, no torch objects
    assert isinstance(state["model_"]["weights"], bytes) and isinstance(state["model_"]["meta"], dict)
    back = pickle.loads(pickle.dumps(reg))
    assert np.array_equal(back.predict(["GaN", gaas]), gap)
    assert not hasattr(clone(reg), "model_")
