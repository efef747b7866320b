"""The per-cell statistics of the results tables: bootstrap interval of the mean, paired Wilcoxon test."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from hdm_lightning.stats import bootstrap_ci, paired_test


def _normal(n: int, seed: int) -> list[float]:
    return np.random.default_rng(seed).normal(0.5, 0.2, n).tolist()


def test_bootstrap_ci_contains_the_mean_and_shrinks_with_more_data():
    small, large = _normal(20, 1), _normal(2000, 2)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < np.mean(small) < hi_s and lo_l < np.mean(large) < hi_l
    # the width goes as 1 / sqrt(n): 100 times the data, about a tenth of the width
    assert 0.05 < (hi_l - lo_l) / (hi_s - lo_s) < 0.2
    lo_90, hi_90 = bootstrap_ci(small, level=0.9)
    assert lo_s < lo_90 < hi_90 < hi_s


def test_bootstrap_ci_is_reproducible_whatever_ran_before_and_drops_missing_values():
    values = _normal(50, 3)
    first = bootstrap_ci(values)
    np.random.seed(123)
    np.random.normal(size=1000)  # the global generator moved: no effect
    assert bootstrap_ci(values) == first
    assert bootstrap_ci(values, seed=1) != first
    with_gaps = [*values[:10], None, math.nan, *values[10:]]
    assert bootstrap_ci(with_gaps) == first


def test_bootstrap_ci_equals_scipy_percentile_bootstrap_with_the_same_draws():
    x = np.array(_normal(30, 4))
    ref = sps.bootstrap(
        (x,), np.mean, method="percentile", n_resamples=2000, confidence_level=0.9, rng=np.random.default_rng(7)
    ).confidence_interval
    assert bootstrap_ci(x.tolist(), seed=7, resamples=2000, level=0.9) == pytest.approx((ref.low, ref.high), rel=1e-12)
    # past 2**22 indices the resamples are drawn in blocks of rows: scipy's ``batch`` draws the same way
    big = np.array(_normal(5000, 5))
    rows = (1 << 22) // 5000
    ref = sps.bootstrap(
        (big,), np.mean, method="percentile", n_resamples=1000, batch=rows, rng=np.random.default_rng(0)
    )
    got = bootstrap_ci(big.tolist(), resamples=1000)
    assert got == pytest.approx(tuple(ref.confidence_interval), rel=1e-12)


def test_bootstrap_ci_by_hand_and_edge_cases():
    # two values 0 and 1: resample means 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4, so the 2.5 % and 97.5 %
    # quantiles of 10000 resample means are 0 and 1
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    assert bootstrap_ci([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3))
    for few in ([], [1.0], [None, math.nan, 2.0]):
        lo, hi = bootstrap_ci(few)
        assert math.isnan(lo) and math.isnan(hi)
    for bad in ({"level": 1.0}, {"level": 0}, {"resamples": 0}, {"resamples": 2.5}):
        with pytest.raises(ValueError, match="bootstrap"):
            bootstrap_ci([1.0, 2.0], **bad)


def test_paired_test_matches_scipy_and_the_exact_distribution():
    # differences 1..5, all positive: exact two-sided p = 2 / 2**5
    assert paired_test([1, 2, 3, 4, 5], [0, 0, 0, 0, 0]) == pytest.approx(0.0625)
    a, b = _normal(20, 6), _normal(20, 7)
    assert paired_test(a, b) == pytest.approx(sps.wilcoxon(a, b).pvalue, rel=1e-12)
    # pairs with a missing value on either side are dropped
    assert paired_test([1, 2, None, 3, 4, 5, 9], [0, 0, 0, 0, 0, 0, math.nan]) == pytest.approx(0.0625)


def test_paired_test_edge_cases_never_warn_or_raise():
    values = [0.1, 0.5, 0.9]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(paired_test(values, values))  # the reference against itself: no test
        assert paired_test(values, list(values)) == 1.0  # a test, and every difference is zero
        assert math.isnan(paired_test([1.0], [2.0]))
        assert math.isnan(paired_test([1.0, None], [2.0, 3.0]))
        assert math.isnan(paired_test([], []))
        assert paired_test([1.0, 0.0, 0.0], [0.0, 0.0, 0.0]) == pytest.approx(1.0)  # one non-zero difference
        assert 0 < paired_test([1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 3.0]) <= 1  # ties
    with pytest.raises(ValueError, match="one value per image"):
        paired_test([1.0, 2.0], [1.0])
