"""Early stopping's criterion (tasks.model.stop_half_scores): the stop half's log-likelihood
under the probability a branch reports (its exact calibration map, or a logistic
recalibration fitted on those rows, tasks.calibration.platt).

Known truth: the recalibration is scikit-learn's logistic regression on the score's logit; an
exact map undoes what its strategy did to the probabilities, and the recalibration is blind to
it; and on a stop half with few positives the criterion picks a better check of a simulated
training run, whose true quality at every check is known, than average precision does."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score

from tasks.calibration import (
    PLATT_C,
    Calibration,
    fit_platt,
    log_likelihood,
    logit,
    platt,
    prior_shift,
    sigmoid,
)
from tasks.model import STOP_CRITERION, StopWatch, patience_gain, stop_half_scores


def labelled_scores(seed: int, rows: int, separation: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(rows) < 0.3).astype(np.int64)
    y[:2] = [0, 1]  # both classes
    return y, sigmoid(separation * (2 * y - 1) + rng.normal(size=rows))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    rows=st.integers(8, 3000),
    separation=st.floats(0.0, 8.0),
)
def test_platt_solves_scikit_learns_logistic_regression(seed, rows, separation):
    """Slope and intercept of LogisticRegression(C=PLATT_C) on the logit, separable rows
    included (large separations), and the log-likelihood of the fitted probabilities."""
    y, scores = labelled_scores(seed, rows, separation)
    slope, intercept, log_likelihood = platt(scores, y)
    z = logit(scores).reshape(-1, 1)
    reference = LogisticRegression(C=PLATT_C, tol=1e-12, max_iter=100_000).fit(z, y)
    assert slope == pytest.approx(reference.coef_[0, 0], rel=1e-4, abs=1e-4)
    assert intercept == pytest.approx(reference.intercept_[0], rel=1e-4, abs=1e-4)
    q = np.clip(reference.predict_proba(z)[:, 1], 1e-300, 1 - 1e-16)
    expected = np.mean(y * np.log(q) + (1 - y) * np.log1p(-q))
    assert log_likelihood == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert fit_platt(scores, y, "x").slope == slope  # the calibration uses the same fit


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    trained_prior=st.floats(0.02, 0.98),
    scale=st.floats(0.3, 3.0),
)
def test_the_criterion_judges_the_probability_reported(seed, trained_prior, scale):
    """A prior shift (resampling, class weights) adds a constant to the logit; a temperature
    multiplies it. The network's exact map (here the prior shift back) gives the criterion of
    the undistorted probabilities, which is their log-likelihood; the recalibration, for
    branches without an exact map, is blind to both distortions (up to the tiny penalty on the
    slope)."""
    y, scores = labelled_scores(seed, 300, 1.0)
    honest = stop_half_scores(y, scores, Calibration(method="identity"))[STOP_CRITERION]
    assert honest == pytest.approx(log_likelihood(y, scores))
    shifted = prior_shift(scores, 0.3, trained_prior)
    undo = Calibration(method="prior", trained_prior=trained_prior, true_prior=0.3)
    assert stop_half_scores(y, shifted, undo)[STOP_CRITERION] == pytest.approx(honest, abs=1e-9)
    recalibrated = stop_half_scores(y, scores)[STOP_CRITERION]
    assert recalibrated >= honest - 1e-9  # the fitted map is at least as good as none
    tempered = sigmoid(scale * logit(scores))
    for distorted in (shifted, tempered):
        assert stop_half_scores(y, distorted)[STOP_CRITERION] == pytest.approx(
            recalibrated, abs=1e-4
        )


def simulated_run(rng: np.random.Generator, rows: int, checks: int):
    """A training run's scores at each check for `rows` stop-half rows: the logit is
    strength[k] * (signal) + noise[k] * (the row's own nuisance direction), the signal-to-noise
    ratio rising to a peak at check 12 then falling (overfitting). Returns labels and scores."""
    u = rng.normal(size=rows)
    y = (rng.random(rows) < sigmoid(2.5 * u - 3.2)).astype(np.int64)  # ~8% positives
    nuisance = rng.normal(size=rows)
    k = np.arange(checks)
    ratio = 3.0 * np.exp(-(((k - 12) / 7.0) ** 2))
    scores = sigmoid(ratio[:, None] * u[None, :] + nuisance[None, :] - 1.0)
    return y, scores, ratio


def true_quality(ratio: np.ndarray) -> np.ndarray:
    """Each check's population average precision, from 400,000 fresh rows."""
    rng = np.random.default_rng(99)
    y, scores, _ = simulated_run(rng, 400_000, len(ratio))
    return np.array([average_precision_score(y, s) for s in scores])


def test_on_few_positives_the_criterion_stops_nearer_the_best_check_than_average_precision():
    """200 stop halves of 60 rows (~5 positives) from the same known run: the check with the
    best criterion (recalibrated: the simulated scores have no exact map) loses less true
    average precision than the check with the best stop-half average precision (the max over
    noisy checks favours a lucky one)."""
    checks = 24
    quality = true_quality(simulated_run(np.random.default_rng(0), 10, checks)[2])
    rng = np.random.default_rng(1)
    regret = {"val_pr_auc": [], STOP_CRITERION: []}
    for _ in range(200):
        y, scores, _ = simulated_run(rng, 60, checks)
        if y.sum() < 2:
            continue
        per_check = [stop_half_scores(y, s) for s in scores]
        for key in regret:
            chosen = int(np.argmax([values[key] for values in per_check]))
            regret[key].append(quality.max() - quality[chosen])
    lost_ll, lost_ap = np.mean(regret[STOP_CRITERION]), np.mean(regret["val_pr_auc"])
    assert lost_ll < 0.75 * lost_ap, (lost_ll, lost_ap)


def watch_settings(patience: int, warmup: int, gain: float):
    from tasks.model import TrainSettings

    return TrainSettings(
        hidden=(4,),
        dropout=0.0,
        learning_rate=0.01,
        batch_size=8,
        steps_per_check=1,
        max_checks=100,
        patience=patience,
        warmup_checks=warmup,
        patience_gain=gain,
    )


def run_watch(values: list[float], settings) -> tuple[list[int], int | None, StopWatch]:
    """The checks whose weights were kept, and the check training stopped after."""
    watch, kept = StopWatch(settings), []
    for check, value in enumerate(values, start=1):
        keep, stop = watch.observe(value, check)
        if keep:
            kept.append(check)
        if stop:
            return kept, check, watch
    return kept, None, watch


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(-3, 0), min_size=1, max_size=40),
    patience=st.integers(1, 6),
    warmup=st.integers(1, 10),
    gain=st.sampled_from([0.0, 0.01, 0.1]),
)
def test_the_watch_keeps_the_best_check_and_stops_after_patience_without_real_gain(
    values, patience, warmup, gain
):
    """The kept weights are always those of the best check so far (the first of equals); training
    stops at the first check past the warm-up that is `patience` checks after the criterion last
    rose more than `gain` above its level at the previous such rise."""
    kept, stopped, watch = run_watch(values, watch_settings(patience, warmup, gain))
    seen = values[: stopped or len(values)]
    assert watch.best_check == int(np.argmax(seen)) + 1 and watch.best == max(seen)
    assert kept == [
        c for c in range(1, len(seen) + 1) if seen[c - 1] > max(seen[: c - 1], default=-np.inf)
    ]
    anchor, reset = -np.inf, 0
    expected = None
    for check, value in enumerate(values, start=1):
        if value > anchor + gain:
            anchor, reset = value, check
        elif check - reset >= patience and check >= warmup:
            expected = check
            break
    assert stopped == expected


def test_a_criterion_that_only_creeps_up_stops_though_its_best_check_moves():
    """Regression (session 13): on small data the log-likelihood rises by a sliver every check
    as the probabilities sharpen; with a gain of 0 a network never ran out of patience and
    trained to its step budget. Now it stops `patience` checks after its last real gain, keeping
    the best (latest) weights; a gain of 0 still trains on."""
    creeping = [-0.5 + 0.01 * k for k in range(5)] + [-0.46 + 1e-4 * k for k in range(1, 60)]
    kept, stopped, watch = run_watch(creeping, watch_settings(patience=5, warmup=1, gain=0.01))
    assert stopped == 5 + 5 and watch.best_check == stopped == kept[-1]
    assert run_watch(creeping, watch_settings(patience=5, warmup=1, gain=0.0))[1] is None


def test_the_gain_is_one_nat_over_the_stop_half():
    assert patience_gain(57) == pytest.approx(1 / 57) and patience_gain(38_000) < 3e-5
