"""The column-vectorised computations (written so wide data scales with cells, not columns)
agree with the plain per-column pandas computations they replaced, on random frames with
missing values, flags, constant and all-missing columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.features import impute_and_clip
from tasks.ingest import distinct_counts
from tasks.outliers import outside_bounds, seed_article_rule


def random_frame(seed: int, rows: int = 80) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "heavy": rng.standard_t(2, rows) * 10,
            "normal": rng.normal(size=rows),
            "flag": rng.integers(0, 2, rows).astype(float),
            "count": rng.poisson(3, rows),
            "constant": np.full(rows, 7.0),
            "empty": np.full(rows, np.nan),
            "nullable": pd.array(rng.integers(0, 4, rows), dtype="Int64"),
        }
    )
    for column in ("heavy", "normal", "flag"):
        frame.loc[rng.choice(rows, rows // 10, replace=False), column] = np.nan
    frame.loc[rng.choice(rows, 3, replace=False), "nullable"] = pd.NA
    return frame


@pytest.mark.parametrize("seed", range(5))
def test_distinct_counts_match_pandas(seed):
    frame = random_frame(seed).assign(text=lambda f: np.where(f["count"] > 3, "a", "b"))
    assert distinct_counts(frame, list(frame.columns)) == frame.nunique(dropna=True).to_dict()


@pytest.mark.parametrize("seed", range(5))
def test_impute_and_clip_matches_the_per_column_steps(seed):
    frame = random_frame(seed)
    columns = ["heavy", "normal", "flag", "count", "nullable"]
    impute = {"heavy": 1.5, "flag": 0.0, "nullable": 2.0}  # "normal" keeps its NaNs
    bounds = {"heavy": (-5.0, 5.0), "count": (1.0, 4.0)}
    got = impute_and_clip(frame, columns, impute, bounds)
    for column in columns:
        expected = frame[column].astype("float64")
        if column in impute:
            expected = expected.fillna(impute[column])
        if column in bounds:
            expected = expected.clip(*bounds[column])
        pd.testing.assert_series_equal(got[column], expected, check_names=False)


@pytest.mark.parametrize("seed", range(5))
def test_outside_bounds_matches_the_per_column_loop(seed):
    frame = random_frame(seed)
    bounds = {"heavy": (-5.0, 5.0), "normal": (-1.0, 1.0)}
    expected = pd.Series(False, index=frame.index)
    for column, (low, high) in bounds.items():
        expected |= (frame[column] < low) | (frame[column] > high)
    pd.testing.assert_series_equal(outside_bounds(frame, bounds), expected, check_names=False)


def seed_rule_reference(frame, columns, labels, z=3.0):
    """The seed article's filter as it was written, column after column with pandas."""
    kept = frame[columns]
    for column in columns:
        values = kept[column]
        std = values.std(ddof=0)
        if std == 0 or np.isnan(std):
            continue
        kept = kept[np.abs((values - values.mean()) / std) < z]
    return labels.drop(index=kept.index).value_counts().to_dict()


@pytest.mark.parametrize("seed", range(5))
def test_the_seed_article_rule_matches_its_pandas_form(seed):
    frame = random_frame(seed, rows=300)
    labels = pd.Series(np.where(np.arange(300) % 4 == 0, "yes", "no"), index=frame.index)
    columns = ["heavy", "normal", "count", "constant", "empty"]
    got = seed_article_rule(frame, columns, labels, z=2.0)
    expected = seed_rule_reference(frame, columns, labels, z=2.0)
    assert {k: v["removed"] for k, v in got.items()} == {
        label: expected.get(label, 0) for label in ("no", "yes")
    }
    assert sum(v["removed"] for v in got.values()) > 0  # the rule did remove rows
