"""Gates scale with cells, not columns: a wide family of per-column expectations is screened
with pandas, and whatever fails still goes through Great Expectations, so the messages are the
same as when every column is its own expectation (the path narrow data takes)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks import gates
from tasks.config import TrainConfig
from tasks.errors import GateFailed
from tasks.ingest import ColumnRoles, raw_gate

COLUMNS = 60


def wide_frame(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(200, COLUMNS)), columns=[f"x{i}" for i in range(COLUMNS)])
    frame["y"] = np.where(np.arange(200) % 5 == 0, "yes", "no")
    return frame


def gate(frame: pd.DataFrame):
    roles = ColumnRoles(
        target="y", id=None, numeric=[f"x{i}" for i in range(COLUMNS)], categorical=[]
    )
    return raw_gate(frame, roles, TrainConfig(data="wide.csv", target="y"), [], rows=True)


def test_a_good_wide_table_passes_with_one_gx_expectation_per_screened_family():
    """Each screened family is one GX expectation on the table's column summary (one row per
    column), which GX validates like any other."""
    report = gate(wide_frame())
    assert report.success
    screened = [c for c in report.checked if c["table"] == "data.columns"]
    assert {c["summarises"] for c in screened} == {
        "expect_column_values_to_be_in_type_list",
        "expect_column_values_to_not_be_null",
    }
    assert all(c["columns"] == COLUMNS and c["reason"] and c["success"] for c in screened)
    by_statistic = {c["kwargs"]["column"]: c for c in screened}
    assert by_statistic["dtype"]["expectation"] == "expect_column_values_to_be_in_set"
    assert by_statistic["missing"]["kwargs"]["max_value"] == 0
    assert len(report.checked) < 20  # not one per column


def test_the_column_summary_carries_the_statistics_gx_would_compute():
    """A wide feature table: the summary's means and deviations are each column's, and a
    tolerance that every column misses fails every column by name, as per-column checks do."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(size=(300, 20)), columns=[f"f{i}" for i in range(20)])
    scaled = (frame - frame.mean()) / frame.std()
    bindings = {"feature_columns": [], "scaled_columns": list(frame), "code_columns": []}
    params = {"neg_scale_tolerance": -1e-6, "min_train_std": 0.99, "max_train_std": 1.01}
    facts = pd.DataFrame([{"nonfinite_values": 0, "columns_match": 1, "feature_count": 20}])
    report = gates.validate(
        "features", "features", {"data": scaled, "facts": facts}, bindings, params
    )
    summary = {c["summarises"]: c for c in report.checked if c["table"] == "data.columns"}
    assert summary["expect_column_mean_to_be_between"]["columns"] == 20
    assert summary["expect_column_stdev_to_be_between"]["columns"] == 20
    with pytest.raises(GateFailed) as failed:
        gates.validate(
            "features", "features", {"data": frame * 3 + 1, "facts": facts}, bindings, params
        )
    for i in range(20):
        assert any(f"'f{i}' has mean" in f for f in failed.value.failures)
        assert any(f"'f{i}' has standard deviation" in f for f in failed.value.failures)


@pytest.mark.parametrize("seed", range(3))
def test_failures_read_the_same_as_with_one_expectation_per_column(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    frame = wide_frame(seed)
    text, missing = rng.choice(COLUMNS, 2, replace=False), rng.choice(COLUMNS, 3, replace=False)
    for i in text:
        frame[f"x{i}"] = frame[f"x{i}"].astype(object)
        frame.loc[rng.choice(200, 4), f"x{i}"] = "n/a"
    for i in missing:
        frame.loc[rng.choice(200, 2), f"x{i}"] = np.nan
    with pytest.raises(GateFailed) as screened:
        gate(frame)
    monkeypatch.setattr(gates, "SCREEN_ABOVE", 10**9)  # every column its own GX expectation
    with pytest.raises(GateFailed) as per_column:
        gate(frame)
    assert sorted(screened.value.failures) == sorted(per_column.value.failures)
    for i in text:
        assert any(f"column 'x{i}' is not numeric" in f for f in screened.value.failures)
    for i in set(missing) - set(text):
        assert any(f"column 'x{i}' has" in f and "missing" in f for f in screened.value.failures)
