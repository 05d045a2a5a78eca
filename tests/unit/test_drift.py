import numpy as np
import pandas as pd
import pytest
from prefect.states import Completed, Failed

from tasks.drift import (
    DriftSettings,
    categorical_drift,
    drift_table,
    numeric_drift,
    overall_status,
    psi,
)
from tasks.errors import DataInputError, GateFailed
from tasks.features import histogram_bins
from tasks.io import retry_on_io_errors


def numeric_stats(values: pd.Series) -> dict:
    return {
        "kind": "numeric",
        "percentiles": values.quantile([i / 100 for i in range(101)]).tolist(),
        "bins": histogram_bins(values),
    }


@pytest.fixture
def training():
    rng = np.random.default_rng(0)
    values = pd.Series(rng.normal(50, 10, 5000))
    return values, numeric_stats(values)


def test_a_binary_column_from_the_same_distribution_does_not_drift():
    rng = np.random.default_rng(3)
    train = pd.Series((rng.random(2000) < 0.3).astype(float))
    value_psi, ks = numeric_drift(
        pd.Series((rng.random(500) < 0.3).astype(float)), numeric_stats(train)
    )
    assert value_psi < 0.02 and np.isnan(ks)
    assert (
        numeric_drift(pd.Series((rng.random(500) < 0.8).astype(float)), numeric_stats(train))[0]
        > 0.25
    )


def test_numeric_psi_and_ks_are_small_for_the_same_distribution(training):
    values, stats = training
    rng = np.random.default_rng(1)
    same_psi, same_ks = numeric_drift(pd.Series(rng.normal(50, 10, 2000)), stats)
    assert same_psi < 0.02 and same_ks < 0.05
    shifted_psi, shifted_ks = numeric_drift(pd.Series(rng.normal(60, 10, 2000)), stats)
    assert shifted_psi > 0.25 and shifted_ks == pytest.approx(0.38, abs=0.05)  # Φ(0.5) - Φ(-0.5)


def test_psi_formula():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(
        0.4 * np.log(0.9 / 0.5) - 0.4 * np.log(0.1 / 0.5)
    )


def test_categorical_psi_counts_new_levels(training):
    frequencies = {"gold": 0.5, "silver": 0.5}
    assert categorical_drift(pd.Series(["gold", "silver"] * 50), frequencies) == pytest.approx(0)
    assert categorical_drift(pd.Series(["gold"] * 50 + ["platinum"] * 50), frequencies) > 1


def test_table_statuses_and_predicted_rate(training):
    values, stats = training
    stats = {"x": stats, "c": {"kind": "categorical", "frequencies": {"a": 1.0}}}
    frame = pd.DataFrame({"x": values.sample(500, random_state=0).to_numpy(), "c": ["a"] * 500})
    settings = DriftSettings()
    table = drift_table(frame, stats, settings, predicted_rate=0.05, reference_rate=0.04)
    assert overall_status(table) == "ok"
    table = drift_table(
        frame.assign(x=frame.x + 15), stats, settings, predicted_rate=0.2, reference_rate=0.04
    )
    assert table.set_index("feature").loc[["x", "predicted_positive_rate"], "status"].tolist() == [
        "fail",
        "fail",
    ]


def test_retries_are_for_io_errors_only():
    assert retry_on_io_errors(None, None, Failed(data=OSError("stale NFS handle")))
    assert retry_on_io_errors(None, None, Failed(data=TimeoutError()))
    assert not retry_on_io_errors(None, None, Failed(data=GateFailed("raw", ["bad"])))
    assert not retry_on_io_errors(None, None, Failed(data=DataInputError("missing")))
    assert not retry_on_io_errors(None, None, Failed(data=FileNotFoundError("gone")))
    assert not retry_on_io_errors(None, None, Completed())
