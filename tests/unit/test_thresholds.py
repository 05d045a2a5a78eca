import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.calibration import prior_shift
from tasks.errors import ConfigError, StrategyError
from tasks.evaluate import evaluate, threshold_metrics
from tasks.thresholds import parse_objective, tune_threshold


def brute_force(y, p, score):
    best_t, best = None, -np.inf
    for t in sorted(set(p), reverse=True):
        pred = p >= t
        tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
        fn = int((~pred & (y == 1)).sum())
        value = score(tp, fp, fn)
        if value > best:
            best_t, best = t, value
    return best_t, best


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.2).astype(int)
    p = np.clip(0.3 * y + rng.normal(0.35, 0.2, 300), 0, 1).round(3)  # ties on purpose
    return y, p


def middle_below(p, edge):
    """The midpoint between a flagged score and the next lower distinct score."""
    lower = [v for v in set(p) if v < edge]
    return (edge + max(lower)) / 2 if lower else edge


def test_f1_matches_a_brute_force_search_over_every_distinct_score(scores):
    y, p = scores
    t, value = tune_threshold(y, p, parse_objective("f1"))
    bt, bv = brute_force(y, p, lambda tp, fp, fn: 2 * tp / (2 * tp + fp + fn))
    assert value == pytest.approx(bv)
    assert t == pytest.approx(middle_below(p, bt))  # the middle of the gap below the edge
    assert ((p >= t) == (p >= bt)).all()  # the same decisions on these rows
    assert threshold_metrics(y, p, t)["f1"] == pytest.approx(value)


@given(
    st.lists(st.tuples(st.booleans(), st.floats(0, 1)), min_size=2, max_size=60),
    st.sampled_from(["f1", "fbeta:2", "cost:FP=1,FN=5"]),
)
@settings(max_examples=200, deadline=None)
def test_the_threshold_is_the_middle_of_the_gap_and_decides_like_the_edge(rows, text):
    """Property: against the brute-force best score (ties: the highest), the tuned threshold
    flags exactly the same rows and sits halfway to the next lower score."""
    y = np.array([int(a) for a, _ in rows])
    p = np.array([b for _, b in rows])
    objective = parse_objective(text)
    scorer = {
        "f1": lambda tp, fp, fn: 2 * tp / max(2 * tp + fp + fn, 1),
        "fbeta:2": lambda tp, fp, fn: 5 * tp / max(5 * tp + 4 * fn + fp, 1),
        "cost:FP=1,FN=5": lambda tp, fp, fn: -(fp + 5 * fn),
    }[text]
    t, value = tune_threshold(y, p, objective)
    bt, bv = brute_force(y, p, scorer)
    if t > p.max():  # flagging nothing, which wins ties (it is the highest threshold)
        assert value >= bv - 1e-12
        return
    assert value == pytest.approx(bv)
    assert ((p >= t) == (p >= bt)).all()
    lower = p[p < bt]
    assert t == (pytest.approx((bt + lower.max()) / 2) if lower.size else bt)


def test_fbeta_and_cost(scores):
    y, p = scores
    t2, v2 = tune_threshold(y, p, parse_objective("fbeta:2"))
    bt2, bv2 = brute_force(y, p, lambda tp, fp, fn: 5 * tp / (5 * tp + 4 * fn + fp))
    assert t2 == pytest.approx(middle_below(p, bt2)) and v2 == pytest.approx(bv2)
    tc, vc = tune_threshold(y, p, parse_objective("cost:FP=1,FN=10"))
    bt, bv = brute_force(y, p, lambda tp, fp, fn: -(fp + 10 * fn))
    assert tc == pytest.approx(middle_below(p, bt)) and vc == pytest.approx(bv)
    assert (
        tc <= tune_threshold(y, p, parse_objective("cost:FP=10,FN=1"))[0]
    )  # dear misses -> lower t


def test_recall_at_precision(scores):
    y, p = scores
    t, recall = tune_threshold(y, p, parse_objective("recall@precision:0.6"))
    metrics = threshold_metrics(y, p, t)
    assert metrics["precision"] >= 0.6 and metrics["recall"] == pytest.approx(recall)
    for other in set(p):  # no feasible threshold has higher recall
        m = threshold_metrics(y, p, other)
        assert not (m["precision"] >= 0.6 and m["recall"] > recall + 1e-12)
    with pytest.raises(StrategyError, match="no threshold reaches precision 1"):
        tune_threshold(
            np.array([1, 0, 1, 0]),
            np.array([0.9, 0.9, 0.8, 0.8]),
            parse_objective("recall@precision:1"),
        )


@pytest.mark.parametrize("text", ["f2", "fbeta:0", "cost:FP=1", "recall@precision:1.5", "auc"])
def test_bad_objectives_are_rejected(text):
    with pytest.raises(ConfigError, match="unknown objective"):
        parse_objective(text)


def test_rule_is_positive_iff_p_at_least_t():
    m = threshold_metrics(np.array([1, 0, 1]), np.array([0.5, 0.5, 0.4]), 0.5)
    assert m["confusion_matrix"] == {"tn": 0, "fp": 1, "fn": 1, "tp": 1}


def test_prior_correction_shifts_back_to_the_true_prior():
    p = np.array([0.5, 0.8, 0.2])
    corrected = prior_shift(p, trained_prior=0.5, true_prior=0.1)
    assert corrected[0] == pytest.approx(0.1)  # an undecided balanced model -> the base rate
    assert np.all(np.diff(np.argsort(corrected)) == np.diff(np.argsort(p)))  # ranking unchanged
    assert np.allclose(prior_shift(p, 0.3, 0.3), p)  # no prior change -> unchanged


def test_evaluate_reports_every_metric():
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    m = evaluate(y, p, 0.35, p)
    assert m["confusion_matrix"] == {"tn": 2, "fp": 1, "fn": 0, "tp": 3}
    assert m["recall"] == 1 and m["precision"] == pytest.approx(0.75)
    assert m["g_mean"] == pytest.approx(np.sqrt(1 * 2 / 3))
    assert m["balanced_accuracy"] == pytest.approx((1 + 2 / 3) / 2)
    assert set(m) >= {
        "pr_auc",
        "roc_auc",
        "mcc",
        "brier",
        "log_loss",
        "brier_corrected",
        "log_loss_corrected",
    }
