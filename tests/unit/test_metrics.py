"""The numpy metrics (tasks.evaluate) are scikit-learn's metrics: checked on random scores with
ties, rare and common positives, and thresholds that flag nothing or everything."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics

from tasks.calibration import EPS
from tasks.evaluate import average_precision, roc_auc, score_metrics, threshold_metrics


def cases():
    rng = np.random.default_rng(11)
    for case in range(40):
        n = int(rng.integers(5, 400))
        prevalence = [0.01, 0.1, 0.5, 0.9][case % 4]
        y = (rng.random(n) < prevalence).astype(np.int64)
        y[:2] = [1, 0]  # both classes present
        scores = np.clip(0.3 * y + rng.normal(0.4, 0.25, n), 0, 1)
        if case % 3 == 0:
            scores = np.round(scores, 1)  # many ties
        if case % 7 == 0:
            scores = np.full(n, 0.5)  # all tied
        yield y, scores


@pytest.mark.parametrize(("y", "scores"), list(cases()))
def test_threshold_free_metrics_are_scikit_learns(y, scores):
    ours = score_metrics(y, scores)
    assert ours["pr_auc"] == pytest.approx(metrics.average_precision_score(y, scores), abs=1e-12)
    assert ours["roc_auc"] == pytest.approx(metrics.roc_auc_score(y, scores), abs=1e-12)
    assert ours["brier"] == pytest.approx(metrics.brier_score_loss(y, scores), abs=1e-12)
    clipped = np.clip(scores, EPS, 1 - EPS)
    assert ours["log_loss"] == pytest.approx(metrics.log_loss(y, clipped, labels=[0, 1]), rel=1e-9)


@pytest.mark.parametrize(("y", "scores"), list(cases())[:12])
@pytest.mark.parametrize("threshold", [-1.0, 0.3, 0.5, 0.55, 2.0])
def test_metrics_at_a_threshold_are_scikit_learns(y, scores, threshold):
    ours = threshold_metrics(y, scores, threshold)
    predicted = (scores >= threshold).astype(np.int64)
    tn, fp, fn, tp = metrics.confusion_matrix(y, predicted, labels=[0, 1]).ravel()
    assert ours["confusion_matrix"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    assert ours["f1"] == pytest.approx(metrics.f1_score(y, predicted, zero_division=0))
    assert ours["precision"] == pytest.approx(
        metrics.precision_score(y, predicted, zero_division=0)
    )
    assert ours["recall"] == pytest.approx(metrics.recall_score(y, predicted, zero_division=0))
    assert ours["mcc"] == pytest.approx(metrics.matthews_corrcoef(y, predicted), abs=1e-12)
    assert ours["balanced_accuracy"] == pytest.approx(
        metrics.balanced_accuracy_score(y, predicted), abs=1e-12
    )


def test_one_class_has_no_ranking_metric():
    assert np.isnan(average_precision(np.zeros(5), np.linspace(0, 1, 5)))
    with pytest.raises(ValueError, match="Only one class"):
        roc_auc(np.ones(5), np.linspace(0, 1, 5))


@settings(max_examples=40, deadline=None)
@given(
    share=st.floats(min_value=0.002, max_value=0.998),
    trials=st.integers(min_value=5, max_value=400),
)
def test_the_wilson_interval_covers_the_true_share_about_95_percent_of_the_time(share, trials):
    """The answer box's intervals (precision, recall, alert rate): over many draws from a known
    share, the 95% Wilson interval covers it close to 95% of the time (exact binomial
    coverage, not a simulation), never less than 85% even for rare shares and few trials
    (where the normal approximation covers far less), and it stays inside [0, 1]."""
    from scipy.stats import binom

    from tasks.evaluate import wilson_interval

    ks = np.arange(trials + 1)
    bounds = np.array([wilson_interval(int(k), trials)[1:] for k in ks])
    assert (bounds >= 0).all() and (bounds <= 1).all() and (bounds[:, 0] <= bounds[:, 1]).all()
    covers = (bounds[:, 0] <= share) & (share <= bounds[:, 1])
    coverage = float(binom.pmf(ks, trials, share)[covers].sum())
    assert coverage >= 0.85
    if trials * min(share, 1 - share) >= 10:  # away from the edges: close to nominal
        assert 0.92 <= coverage <= 0.98


def test_the_wilson_interval_at_the_edges():
    from tasks.evaluate import wilson_interval

    value, low, high = wilson_interval(0, 20)
    assert value == 0 and low == 0 and 0.1 < high < 0.2  # 0 of 20 still allows ~16%
    value, low, high = wilson_interval(20, 20)
    assert value == 1 and high == 1 and 0.8 < low < 0.9
    assert all(np.isnan(x) for x in wilson_interval(0, 0))
