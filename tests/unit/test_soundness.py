"""Properties of the statistical building blocks, on synthetic data whose truth is known: the
split keeps linked rows together at the requested shares, the calibration maps invert what each
strategy does to the score, thresholds consider flagging nothing, ranking is cross-fitted, the
bootstrap resamples groups, SMOTE keeps whole numbers whole, row identity survives re-typing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tasks.calibration import Calibration, fit_platt, focal_posterior, prior_shift, sigmoid
from tasks.compare import paired_bootstrap
from tasks.config import TrainConfig
from tasks.features import Preprocessing
from tasks.ingest import canonical_categories, row_hashes
from tasks.model import FORWARD_COST, MAX_SCORING_SHARE, check_interval, schedule
from tasks.split import assign_components, components, positive_quotas
from tasks.strategies import STRATEGIES
from tasks.thresholds import parse_objective, tune_threshold
from tasks.train import Part, crossfit, resample

SHARES = (0.6, 0.1, 0.1, 0.2)
MINIMUMS = (5, 5, 5, 5)


# --- the split ---------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(200, 3000),
    duplicate_share=st.floats(0.0, 0.6),
    prevalence=st.floats(0.02, 0.4),
    group_size=st.sampled_from([None, 2, 7]),
    seed=st.integers(0, 10_000),
)
def test_linked_rows_never_straddle_parts_and_shares_are_met(
    n, duplicate_share, prevalence, group_size, seed
):
    """Rows sharing a feature hash or a group value stay in one part; every part's rows and
    positives are within what the largest component allows of the requested share."""
    rng = np.random.default_rng(seed)
    distinct = max(int(n * (1 - duplicate_share)), 1)
    hashes = rng.integers(0, distinct, size=n).astype("uint64")  # repeats = duplicate rows
    y = (rng.random(n) < prevalence).astype(np.int64)
    groups = None if group_size is None else rng.integers(0, max(n // group_size, 1), size=n)
    component = components(hashes, groups)
    part = assign_components(component, y, SHARES, MINIMUMS, seed)
    by_component = pd.Series(part).groupby(component).nunique()
    assert (by_component == 1).all()
    assert (pd.Series(part).groupby(hashes).nunique() == 1).all()
    if groups is not None:
        assert (pd.Series(part).groupby(groups).nunique() == 1).all()
    largest = np.bincount(component).max()
    for index, share in enumerate(SHARES):
        rows = int((part == index).sum())
        assert abs(rows - share * n) <= largest + 1 + 0.02 * n


def test_heavily_duplicated_small_data_keeps_its_shares_and_minimum_positives():
    """2,225 rows, most of them repeats of a few hundred feature rows, 22 positives: the old
    split (stratified on groups as if they were rows) was off by 0.061 in train share and left
    4 positives in test. Largest components first, then single rows to fill the quotas."""
    rng = np.random.default_rng(0)
    n = 2225
    sizes = np.r_[rng.integers(2, 40, size=60), np.ones(600, dtype=int)]
    hashes = np.repeat(np.arange(len(sizes)), sizes)[:n]
    hashes = np.r_[hashes, np.arange(10_000, 10_000 + n - len(hashes))]
    y = np.zeros(n, dtype=np.int64)
    y[rng.choice(np.flatnonzero(np.bincount(hashes)[hashes] == 1), 22, replace=False)] = 1
    part = assign_components(components(hashes.astype("uint64")), y, SHARES, MINIMUMS, 42)
    shares = np.bincount(part, minlength=4) / n
    assert np.abs(shares - SHARES).max() < 0.02
    positives = np.bincount(part, weights=y, minlength=4)
    assert (positives >= 5).all() and positives.sum() == 22


@given(positives=st.integers(0, 200))
def test_positive_quotas_meet_minimums_when_the_data_allows(positives):
    quota = positive_quotas(positives, SHARES, MINIMUMS)
    assert quota.sum() == positives
    if positives >= sum(MINIMUMS):
        assert (quota >= np.asarray(MINIMUMS)).all()
    else:
        assert (quota >= 0).all()


def test_assignment_is_seeded():
    rng = np.random.default_rng(3)
    hashes, y = rng.integers(0, 300, 1000).astype("uint64"), (rng.random(1000) < 0.1).astype(int)
    a = assign_components(components(hashes), y, SHARES, MINIMUMS, 1)
    b = assign_components(components(hashes), y, SHARES, MINIMUMS, 1)
    c = assign_components(components(hashes), y, SHARES, MINIMUMS, 2)
    assert (a == b).all() and (a != c).any()


# --- row identity --------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True),
            st.integers(-(2**60), 2**60).map(float),
            st.sampled_from([0.0, -0.0, 1.0, 2.5, 2**53, -(2**53), 1e300]),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_numeric_categories_print_each_value_by_its_own_rule(values):
    """Each present value prints as an integer when it is whole and below 2**53 in magnitude,
    else by its shortest repr; missing stays missing (the levels are formatted once per distinct
    value, which must not change any row's text)."""
    column = pd.Series(values, dtype="float64")
    expected = [
        None
        if np.isnan(v)
        else str(int(v))
        if np.isfinite(v) and v == np.round(v) and abs(v) < 2**53
        else repr(float(v))
        for v in values
    ]
    text = canonical_categories(column)
    assert [None if pd.isna(t) else t for t in text] == expected
    assert list(canonical_categories(column.astype("float32")).isna()) == list(column.isna())


def test_row_hash_survives_reordering_and_a_dtype_change():
    """A column of integer codes that gains a missing value is read as float ('1' -> 1.0); a
    numeric column read as int or float; rows re-sorted: the same rows hash the same."""
    frame = pd.DataFrame({"n": [1, 2, 3, 4], "code": [1, 2, 1, 3], "text": ["a", "b", None, "a"]})
    typed = frame.assign(n=frame["n"].astype("float64"), code=frame["code"].astype("float64"))
    typed = pd.concat([typed, pd.DataFrame({"n": [5.0], "code": [np.nan], "text": ["z"]})])
    typed = typed.iloc[::-1].reset_index(drop=True)
    a = row_hashes(frame, ["n"], ["code", "text"])
    b = row_hashes(typed, ["n"], ["code", "text"])
    assert set(a) <= set(b) and len(set(b)) == 5
    assert list(canonical_categories(typed["code"]).fillna("?")) == ["?", "3", "1", "2", "1"]
    assert (
        row_hashes(pd.DataFrame({"n": [0.0]}), ["n"], [])[0]
        == row_hashes(pd.DataFrame({"n": [-0.0]}), ["n"], [])[0]
    )


# --- calibration ---------------------------------------------------------------------------------


def test_prior_shift_recovers_the_true_posterior():
    """Bayes: a classifier trained under prior pi' outputs the posterior under pi'; the shift
    returns exactly the posterior under the true prior."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=1000)
    true_prior, trained_prior = 0.03, 0.5
    likelihood_ratio = np.exp(1.5 * x - 0.5 * 1.5**2)  # N(1.5, 1) against N(0, 1)
    odds = likelihood_ratio * true_prior / (1 - true_prior)
    posterior = odds / (1 + odds)
    trained_odds = likelihood_ratio * trained_prior / (1 - trained_prior)
    trained_posterior = trained_odds / (1 + trained_odds)
    np.testing.assert_allclose(
        prior_shift(trained_posterior, trained_prior, true_prior), posterior, rtol=1e-6
    )


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.97])
def test_focal_inverse_recovers_the_posterior_the_loss_was_minimised_for(alpha):
    """For each true posterior q, find the score p minimising the expected focal loss by grid
    search; the closed-form inverse maps p back to q. A logit shift does not."""
    grid = np.linspace(1e-4, 1 - 1e-4, 200_001)
    for q in (0.02, 0.1, 0.3, 0.6, 0.9):
        loss = -alpha * q * (1 - grid) ** 2 * np.log(grid) - (1 - alpha) * (
            1 - q
        ) * grid**2 * np.log(1 - grid)
        p = grid[np.argmin(loss)]
        assert focal_posterior(p, alpha, 2.0) == pytest.approx(q, abs=2e-3)
    loss = -alpha * 0.9 * (1 - grid) ** 2 * np.log(grid) - (1 - alpha) * 0.1 * grid**2 * np.log(
        1 - grid
    )
    squeezed = grid[np.argmin(loss)]
    assert abs(prior_shift(squeezed, alpha, 0.5) - 0.9) > 0.05  # the old correction was wrong


def test_ensemble_members_are_corrected_one_by_one():
    members = [np.array([0.9, 0.2]), np.array([0.5, 0.4])]
    calibration = Calibration(method="prior", trained_prior=0.5, true_prior=0.1)
    expected = np.mean([prior_shift(m, 0.5, 0.1) for m in members], axis=0)
    np.testing.assert_allclose(calibration.apply(members), expected)


def test_platt_scaling_recovers_a_monotone_distortion():
    rng = np.random.default_rng(0)
    q = sigmoid(rng.normal(-2, 1.5, size=20_000))
    y = (rng.random(len(q)) < q).astype(int)
    distorted = sigmoid(0.4 * np.log(q / (1 - q)) + 1.0)  # too flat, too high
    calibrated = fit_platt(distorted, y, "test").apply([distorted])
    assert np.abs(calibrated - q).mean() < 0.01 < np.abs(distorted - q).mean()


# --- thresholds and ranking ----------------------------------------------------------------------


def test_cost_objective_considers_flagging_nothing():
    """Positives are rare and the scores useless: every alert costs more than it saves, so the
    cheapest rule flags nothing (cost 5 here, where the best non-empty rule costs more)."""
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(100, int), np.ones(5, int)]
    p = rng.random(105)
    threshold, value = tune_threshold(y, p, parse_objective("cost:FP=1,FN=1"))
    assert threshold > p.max() and value == -5
    recall_threshold, _ = tune_threshold(y, p, parse_objective("recall@precision:0.01"))
    assert recall_threshold <= p.max()  # flagging nothing is never feasible there


def test_rank_metrics_are_cross_fitted_over_the_validation_halves():
    """A threshold tuned on a half and scored on the same half is optimistic: on pure noise the
    in-sample F1 is well above the cross-fitted one."""
    rng = np.random.default_rng(0)

    def part(n):
        y = (rng.random(n) < 0.1).astype(np.int64)
        return Part(numeric=None, codes=None, y=y, ids=np.arange(n), inputs=None)

    stop, tune = part(300), part(300)
    p_stop, p_tune = rng.random(300), rng.random(300)
    objective = parse_objective("f1")
    _, in_sample = tune_threshold(tune.y, p_tune, objective)
    honest = crossfit(stop, tune, p_stop, p_tune, objective)
    assert honest["f1"] < in_sample - 0.02
    assert set(honest) == {"f1", "mcc", "balanced_accuracy", "g_mean", "objective"}


# --- bootstrap ------------------------------------------------------------------------------------


def test_group_bootstrap_resamples_whole_groups():
    """Rows of a group move together: with 20 groups of 50 identical rows, the interval is as
    wide as 20 observations allow, far wider than 1,000 independent rows would give."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), 50)
    y = np.repeat((rng.random(20) < 0.4).astype(float), 50)
    a = np.repeat(rng.random(20), 50)
    b = np.repeat(rng.random(20), 50)
    objective = parse_objective("f1")
    rows = paired_bootstrap(y, a, b, 0.5, 0.5, objective, 1000, 0)
    grouped = paired_bootstrap(y, a, b, 0.5, 0.5, objective, 1000, 0, groups)
    width = lambda r: r["pr_auc_interval"]["high"] - r["pr_auc_interval"]["low"]  # noqa: E731
    assert grouped["resampled"] == "20 groups" and rows["resampled"] == "rows"
    assert width(grouped) > 3 * width(rows)


def test_too_few_bootstrap_resamples_are_refused():
    with pytest.raises(ValidationError, match="unstable 95% interval bounds; use at least 1000"):
        TrainConfig(bootstrap=500)
    assert TrainConfig().bootstrap == 2000


# --- training schedule ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_train", "minority", "batch"),
    [(228_000, 456, 2048), (228_000, 27_000, 2048), (340, 127, 256)],
)
def test_every_strategy_is_checked_on_one_schedule_within_a_pool_pass(n_train, minority, batch):
    interval = check_interval(n_train, minority, batch)
    full = -(-n_train // batch)
    assert interval <= max(full, 8)  # at most a pass, or one compiled call of tiny data
    # an undersampled pool (2 x minority rows) is cycled at most a few times between checks
    assert interval * batch <= max(2 * minority, full * batch / 32) + 8 * batch
    plan = schedule(n_train, minority, batch, epochs=40, patience=6)
    assert plan["max_checks"] * plan["steps_per_check"] >= 40 * full
    assert plan["steps_per_check"] % min(plan["steps_per_check"], 8) == 0


@settings(max_examples=80, deadline=None)
@given(
    n_train=st.integers(20, 2_000_000),
    share=st.floats(0.001, 0.5),
    stop_share=st.floats(0.02, 0.5),
    batch=st.sampled_from([32, 256, 1024, 4096]),
)
def test_scoring_the_stop_half_costs_a_bounded_share_of_training(n_train, share, stop_share, batch):
    """Between two checks the networks train long enough that scoring the stop half (a forward
    pass per row, ~1/3 of a training step's row) costs at most MAX_SCORING_SHARE of it, unless
    that would take more than a pass; and the interval never grows past a pass (every strategy
    is still checked at least once per pass over the whole training split)."""
    minority = max(1, int(n_train * share))
    stop_rows = int(n_train * stop_share)
    interval = check_interval(n_train, minority, batch, stop_rows)
    full = -(-n_train // batch)
    assert interval <= -(-full // 8) * 8  # a pass, rounded up to whole compiled calls
    if interval < full:
        assert stop_rows * FORWARD_COST <= MAX_SCORING_SHARE * interval * batch
    assert interval >= check_interval(n_train, minority, batch)  # only ever fewer checks
    # insurance: 38,111 stop-half rows every 32 steps of 2,048 rows was ~19% of training
    assert check_interval(228_665, 28_026, 2048, 38_111) == 64


@settings(max_examples=60, deadline=None)
@given(
    n_train=st.integers(20, 2_000_000),
    share=st.floats(0.001, 0.5),
    batch=st.sampled_from([32, 256, 1024, 4096]),
    epochs=st.integers(1, 60),
    patience=st.integers(1, 10),
)
def test_the_budget_is_sized_in_optimizer_steps(n_train, share, batch, epochs, patience):
    """Tiny data gets at least the step floors; data whose passes already exceed them gets
    exactly its passes (the floors never shrink a budget)."""
    minority = max(1, int(n_train * share))
    full = -(-n_train // batch)
    plain = schedule(n_train, minority, batch, epochs, patience)
    floored = schedule(n_train, minority, batch, epochs, patience, 2000, 500)
    step = floored["steps_per_check"]
    assert floored["max_checks"] * step >= max(epochs * full, 2000)
    assert floored["patience"] * step >= max(500, patience * full * 0.5)
    assert floored["max_checks"] >= plain["max_checks"]
    assert floored["patience"] >= plain["patience"]
    if epochs * full >= 2000 + step and patience * full >= 500 + step and full >= 500:
        assert floored == plain


def test_sizing_the_run_in_passes_turns_the_step_floors_off():
    assert (TrainConfig().min_steps, TrainConfig().min_patience_steps) == (2000, 500)
    assert (TrainConfig(epochs=2).min_steps, TrainConfig(epochs=2).min_patience_steps) == (0, 0)
    assert TrainConfig(patience=3).min_patience_steps == 0
    assert TrainConfig(epochs=2, min_steps=100).min_steps == 100
    again = TrainConfig.model_validate_json(TrainConfig(epochs=2).model_dump_json())
    assert again.min_steps == 0  # a deployment's parameters keep what the user asked for


# --- SMOTE ----------------------------------------------------------------------------------------


def _prep(numeric, integer_valued, means, scales):
    return Preprocessing(
        numeric=numeric,
        categorical=[],
        impute="none",
        impute_values={},
        clip_bounds={},
        means=means,
        scales=scales,
        categories={},
        integer_valued=integer_valued,
        dropped_constant=[],
        positive_label="1",
        negative_label="0",
        target="y",
        id=None,
    )


def test_smote_keeps_whole_number_columns_whole():
    """An undeclared 0/1 flag and a count interpolated by SMOTE become whole numbers again."""
    rng = np.random.default_rng(0)
    n = 300
    flag, count, real = rng.integers(0, 2, n), rng.poisson(3, n), rng.normal(size=n)
    y = (rng.random(n) < 0.15).astype(np.int64)
    raw = np.c_[flag, count, real].astype(np.float64)
    means, scales = raw.mean(axis=0), raw.std(axis=0)
    scaled = ((raw - means) / scales).astype(np.float32)
    part = Part(
        numeric=scaled, codes=np.zeros((n, 0), np.int32), y=y, ids=np.arange(n), inputs=None
    )
    prep = _prep(
        ["flag", "count", "real"],
        ["flag", "count"],
        dict(zip(["flag", "count", "real"], means, strict=True)),
        dict(zip(["flag", "count", "real"], scales, strict=True)),
    )
    sample = resample(STRATEGIES["smote"], part, seed=0, prep=prep)
    back = sample.numeric.astype(np.float64) * scales + means
    np.testing.assert_allclose(back[:, :2], np.round(back[:, :2]), atol=1e-4)
    assert set(np.round(back[:, 0])) <= {0.0, 1.0}
    assert not np.allclose(back[n:, 2], np.round(back[n:, 2]))  # real values stay interpolated


def test_smote_on_categoricals_only_uses_smoten():
    rng = np.random.default_rng(0)
    n = 200
    codes = rng.integers(0, 4, size=(n, 2)).astype(np.int32)
    y = (rng.random(n) < 0.2).astype(np.int64)
    part = Part(
        numeric=np.zeros((n, 0), np.float32), codes=codes, y=y, ids=np.arange(n), inputs=None
    )
    sample = resample(STRATEGIES["smote"], part, seed=0)
    assert sample.y.sum() == (sample.y == 0).sum()
    assert set(np.unique(sample.codes)) <= {0, 1, 2, 3}


def test_ranking_by_a_threshold_metric_uses_the_cross_fitted_value():
    from tasks.train import select

    def record(name, in_sample, crossfitted):
        return {
            "strategy": name,
            "status": "ok",
            "eligible": True,
            "validation": {"f1": in_sample, "crossfit": {"f1": crossfitted}},
        }

    ranked, selected = select([record("lucky", 0.9, 0.2), record("steady", 0.6, 0.5)], "f1")
    assert selected == "steady" and [r["strategy"] for r in ranked] == ["steady", "lucky"]


def test_a_stricter_gate_limit_does_not_reuse_a_feature_set_built_under_a_looser_one():
    """A stored feature set passed its split, outlier and feature gates under the limits it was
    built with: those limits are part of its address, so a stricter run rebuilds (and re-gates)."""
    from tasks.features import fingerprint

    config = TrainConfig()
    for change in (
        {"split_ratio_tolerance": 0.01},
        {"max_removed_share": 0.05},
        {"scale_tolerance": 1e-6},
        {"min_positives_per_half": 8},
        {"max_categories": 10},
        {"min_class_count": 50},
    ):
        assert fingerprint(config.model_copy(update=change), "sha") != fingerprint(config, "sha"), (
            change
        )
    assert fingerprint(config.model_copy(update={"epochs": 3}), "sha") == fingerprint(config, "sha")
