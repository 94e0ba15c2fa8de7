"""Recalibrated ensemble spreads (matmtl.uncertainty) and their use in predictions."""

import numpy as np
import pytest

from matmtl import uncertainty


def test_fit_recovers_a_known_calibration():
    rng = np.random.default_rng(0)
    spread = rng.uniform(0.01, 0.2, 4000)
    sigma = 3.0 * spread + 0.1
    y = rng.normal(0.0, sigma)
    rec = uncertainty.fit(np.zeros_like(y), spread, y)
    assert rec["a"] == pytest.approx(3.0, rel=0.15) and rec["b"] == pytest.approx(0.1, rel=0.2)
    assert rec["coverage_1sigma"] == pytest.approx(0.683, abs=0.03)
    assert rec["coverage_2sigma"] == pytest.approx(0.954, abs=0.02)
    assert rec["spearman_spread_abs_error"] > 0.2 and rec["rows"] == 4000
    np.testing.assert_allclose(uncertainty.apply(spread, rec), rec["a"] * spread + rec["b"])


def test_spread_that_carries_no_information_gets_a_constant_sigma():
    rng = np.random.default_rng(1)
    spread = rng.uniform(0.0, 0.01, 2000)
    y = rng.normal(0.0, 0.5, 2000)  # errors independent of the spread
    rec = uncertainty.fit(np.zeros_like(y), spread, y)
    sig = uncertainty.apply(spread, rec)
    assert np.all(sig > 0) and sig.mean() == pytest.approx(0.5, rel=0.1)


def test_too_few_rows_or_no_record():
    assert uncertainty.fit(np.zeros(5), np.ones(5), np.ones(5)) is None
    spread = np.array([0.1, 0.2])
    np.testing.assert_array_equal(uncertainty.apply(spread, None), spread)
    nan_rows = np.full(50, np.nan)
    assert uncertainty.fit(nan_rows, nan_rows, nan_rows) is None
