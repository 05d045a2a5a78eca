"""The report's curves are scikit-learn's curves (computed once with numpy, thinned for drawing):
checked against scikit-learn on random scores with ties, rare and common positives."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve, roc_curve

from tasks.report import PLOT_POINTS, pr_roc_points, reliability_points, thinned

scored = st.tuples(
    st.integers(10, 600),
    st.sampled_from([0.03, 0.3, 0.8]),
    st.sampled_from([1, 2, 8]),
    st.integers(0, 2**16),
)


def draw(n: int, prevalence: float, decimals: int, seed: int):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    y[:2] = [0, 1]
    return y, np.round(np.clip(0.3 * y + rng.normal(0.4, 0.2, n), 0, 1), decimals)


@settings(max_examples=40, deadline=None)
@given(scored)
def test_the_test_curves_are_scikit_learns(case):
    y, p = draw(*case)
    recall, precision, fpr = pr_roc_points(y, p)
    sk_precision, sk_recall, _ = precision_recall_curve(y, p)
    # scikit-learn lists them lowest threshold first, ending at (recall 0, precision 1)
    np.testing.assert_allclose(recall, sk_recall[::-1], atol=1e-12)
    np.testing.assert_allclose(precision, sk_precision[::-1], atol=1e-12)
    sk_fpr, sk_tpr, _ = roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-12)
    np.testing.assert_allclose(recall, sk_tpr, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(scored)
def test_reliability_points_are_scikit_learns_quantile_calibration_curve(case):
    y, p = draw(*case)
    observed, mean = reliability_points(y, p)
    sk_observed, sk_mean = calibration_curve(y, p, n_bins=8, strategy="quantile")
    np.testing.assert_allclose(observed, sk_observed, atol=1e-12)
    np.testing.assert_allclose(mean, sk_mean, atol=1e-12)


@pytest.mark.parametrize("n", [10, PLOT_POINTS, PLOT_POINTS + 1, 76_000])
def test_thinning_keeps_both_ends_the_head_and_order(n):
    x = np.arange(n) * 2.0
    (kept,) = thinned(x)
    assert kept[0] == 0 and kept[-1] == x[-1] and (np.diff(kept) > 0).all()
    assert len(kept) == min(n, len(kept)) <= PLOT_POINTS
    if n > PLOT_POINTS:
        assert (kept[: PLOT_POINTS // 10] == x[: PLOT_POINTS // 10]).all()
    else:
        assert len(kept) == n
