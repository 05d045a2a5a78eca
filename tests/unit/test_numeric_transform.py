"""The normal-quantile transform of numeric columns (tasks.features): properties on synthetic
data whose distribution is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import ndtri

from tasks.features import Preprocessing, fit_quantiles, normal_scores, raw_values

DISTRIBUTIONS = {
    "normal": lambda rng, n: rng.normal(size=n),
    "lognormal": lambda rng, n: rng.lognormal(3, 2, n),
    "pareto": lambda rng, n: rng.pareto(0.8, n),
    "cauchy": lambda rng, n: rng.standard_cauchy(n),
    "counts": lambda rng, n: rng.poisson(0.3, n).astype(float),
    "flag": lambda rng, n: (rng.random(n) < 0.05).astype(float),
}


def _fitted(values: np.ndarray) -> tuple[np.ndarray, dict]:
    quantiles = fit_quantiles(pd.DataFrame({"x": values}))
    return normal_scores(values[:, None], ["x"], quantiles)[:, 0], quantiles


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(sorted(DISTRIBUTIONS)),
    n=st.integers(2, 3000),
    seed=st.integers(0, 10_000),
)
def test_ranks_are_kept_and_every_value_lands_within_a_few_units(name, n, seed):
    """Whatever the tail: larger raw values never get smaller scores, and no training value
    maps beyond the normal quantile of the plotting position 1/(2n)."""
    values = DISTRIBUTIONS[name](np.random.default_rng(seed), n)
    if np.unique(values).size < 2:
        return
    scores, _ = _fitted(values)
    order = np.argsort(values, kind="stable")
    assert np.all(np.diff(scores[order]) >= -1e-12)
    assert np.abs(scores).max() <= -ndtri(0.5 / n) + 1e-9


@pytest.mark.parametrize("name", ["lognormal", "pareto", "cauchy"])
def test_heavy_tails_stop_squashing_the_bulk_of_the_rows(name):
    """Standardising a heavy-tailed column puts most rows in a sliver (a few extreme rows set
    the scale); after the quantile transform the middle half of the rows spans about the
    standard normal's interquartile range (1.35)."""
    values = DISTRIBUTIONS[name](np.random.default_rng(0), 20_000)
    standard = (values - values.mean()) / values.std()
    scores, _ = _fitted(values)
    scores = (scores - scores.mean()) / scores.std()

    def iqr(v: np.ndarray) -> float:
        return float(np.subtract(*np.percentile(v, [75, 25])))

    assert iqr(standard) < 0.2
    assert iqr(scores) == pytest.approx(1.349, abs=0.05)


def test_unseen_values_take_the_extreme_scores_and_missing_values_stay_missing():
    values = np.random.default_rng(1).normal(size=500)
    _, quantiles = _fitted(values)
    knots, scores = quantiles["x"]
    out = normal_scores(np.array([[-1e9], [1e9], [np.nan]]), ["x"], quantiles)[:, 0]
    assert out[0] == scores[0] and out[1] == scores[-1] and np.isnan(out[2])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(80, 2000))
def test_the_inverse_recovers_raw_values_within_the_training_range(seed, n):
    rng = np.random.default_rng(seed)
    values = rng.lognormal(0, 1.5, n)
    _, quantiles = _fitted(values)
    probe = rng.uniform(values.min(), values.max(), 200)
    back = raw_values(normal_scores(probe[:, None], ["x"], quantiles), ["x"], quantiles)[:, 0]
    np.testing.assert_allclose(back, probe, rtol=1e-9, atol=1e-9)


def test_synthesised_rows_snap_to_whole_raw_values_through_the_transform():
    """SMOTE interpolates in the transformed space; snap_whole must undo scaling and the
    quantile map, round, and map back, so a count stays a count."""
    rng = np.random.default_rng(2)
    raw = pd.DataFrame({"count": rng.poisson(4, 400).astype(float), "real": rng.normal(size=400)})
    quantiles = fit_quantiles(raw)
    shaped = normal_scores(raw.to_numpy(), ["count", "real"], quantiles)
    prep = Preprocessing(
        numeric=["count", "real"],
        categorical=[],
        impute="none",
        impute_values={},
        clip_bounds={},
        means=dict(zip(["count", "real"], shaped.mean(axis=0), strict=True)),
        scales=dict(zip(["count", "real"], shaped.std(axis=0), strict=True)),
        quantiles=quantiles,
        categories={},
        integer_valued=["count"],
        dropped_constant=[],
        positive_label="1",
        negative_label="0",
        target="y",
        id=None,
    )
    scaled = prep.transform(raw).to_numpy(dtype=np.float64)
    between = 0.37 * scaled[:-1] + 0.63 * scaled[1:]  # what SMOTE makes
    snapped = prep.snap_whole(between)
    back = raw_values(snapped * prep._scales + prep._means, ["count", "real"], prep.quantiles)
    np.testing.assert_allclose(back[:, 0], np.round(back[:, 0]), atol=1e-6)
    np.testing.assert_array_equal(snapped[:, 1], between[:, 1])  # real values stay interpolated
    assert set(np.round(back[:, 0])) <= set(raw["count"])


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(sorted(DISTRIBUTIONS)),
    n=st.integers(2, 3000),
    seed=st.integers(0, 10_000),
)
def test_the_robust_transform_keeps_order_and_bounds_every_value_by_the_clip(name, n, seed):
    """Robust scaling then smooth clipping: monotone, never beyond the soft bound (3), and
    the same map for values beyond the training range as for its extremes."""
    values = DISTRIBUTIONS[name](np.random.default_rng(seed), n)
    if np.unique(values).size < 2:
        return
    knots = fit_quantiles(pd.DataFrame({"x": values}), "robust")
    scores = normal_scores(values[:, None], ["x"], knots)[:, 0]
    order = np.argsort(values, kind="stable")
    assert np.all(np.diff(scores[order]) >= -1e-12)
    assert np.abs(scores).max() < 3.0
    beyond = normal_scores(np.array([[values.max() * 10 + 1e9]]), ["x"], knots)[0, 0]
    assert beyond == pytest.approx(scores.max())


def test_the_robust_transform_is_linear_in_the_bulk_and_squashes_only_the_tails():
    """On normal data the map is the standardisation bent only by the smooth clip: z / sqrt(1
    + (z/3)^2) with z in units of sigma (within 0.03 over the middle 98% of rows, the curve
    the knots interpolate); a Cauchy column's far tail is bounded by 3 where standardising
    would leave its bulk in a sliver."""
    rng = np.random.default_rng(1)
    values = rng.normal(10.0, 4.0, 50_000)
    knots = fit_quantiles(pd.DataFrame({"x": values}), "robust")
    grid = np.linspace(*np.quantile(values, [0.01, 0.99]), 200)
    mapped = normal_scores(grid[:, None], ["x"], knots)[:, 0]
    z = (grid - 10.0) / 4.0
    np.testing.assert_allclose(mapped, z / np.sqrt(1 + (z / 3) ** 2), atol=0.03)
    tail = DISTRIBUTIONS["cauchy"](rng, 20_000)
    scores = normal_scores(tail[:, None], ["x"], fit_quantiles(pd.DataFrame({"x": tail}), "robust"))
    assert np.abs(scores).max() < 3.0
    assert float(np.subtract(*np.percentile(scores, [75, 25]))) == pytest.approx(1.35, rel=0.1)


def test_the_standard_transform_fits_no_knots():
    assert fit_quantiles(pd.DataFrame({"x": np.arange(10.0)}), "standard") == {}
