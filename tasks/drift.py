"""Drift between new rows and the training statistics stored beside a model.

- PSI per feature: numerics over bins at the training deciles with the exact training share per
  bin, categoricals by level (levels unseen in training count as their own bin).
- KS per numeric feature: the largest gap between the new rows' empirical CDF and the training
  CDF, interpolated from the 101 stored training percentiles.
- The predicted-positive rate against the rate on the test split at the same threshold.
Status per row: ok, warn (PSI >= psi_warn or KS >= ks_warn) or fail (PSI >= psi_fail); the rate
fails when it moves by more than `rate_ratio_limit` times either way."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tasks.config import DriftSettings
from tasks.ingest import MISSING_LEVEL, canonical_categories

EPS = 1e-4


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    expected = np.clip(np.asarray(expected, dtype=float), EPS, None)
    actual = np.clip(np.asarray(actual, dtype=float), EPS, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def numeric_drift(values: pd.Series, stats: dict[str, Any]) -> tuple[float, float]:
    """(PSI over the stored training bins, KS against the training CDF interpolated from the
    stored percentiles; KS only for continuous columns, NaN for discrete ones)."""
    values = values.dropna().astype(float).to_numpy()
    if len(values) == 0:
        return float("nan"), float("nan")
    edges, expected = np.asarray(stats["bins"]["edges"]), np.asarray(stats["bins"]["shares"])
    actual = np.bincount(
        np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1
    ) / len(values)
    cuts = np.asarray(stats["percentiles"], dtype=float)
    if (
        len(np.unique(cuts)) < len(cuts) // 2
    ):  # many ties: a discrete column, the interpolated CDF is meaningless
        return psi(expected, actual), float("nan")
    levels = np.linspace(0, 1, len(cuts))
    ordered = np.sort(values)
    train_cdf = np.interp(ordered, cuts, levels, left=0.0, right=1.0)
    new_cdf_right = np.arange(1, len(ordered) + 1) / len(ordered)
    new_cdf_left = np.arange(0, len(ordered)) / len(ordered)
    ks = float(max(np.abs(new_cdf_right - train_cdf).max(), np.abs(new_cdf_left - train_cdf).max()))
    return psi(expected, actual), ks


def categorical_drift(values: pd.Series, frequencies: dict[str, float]) -> float:
    shares = canonical_categories(values).fillna(MISSING_LEVEL).value_counts(normalize=True)
    levels = sorted(set(frequencies) | set(shares.index))
    return psi(
        [frequencies.get(level, 0.0) for level in levels],
        [float(shares.get(level, 0.0)) for level in levels],
    )


def drift_table(
    frame: pd.DataFrame,
    feature_stats: dict[str, Any],
    settings: DriftSettings,
    predicted_rate: float | None = None,
    reference_rate: float | None = None,
) -> pd.DataFrame:
    rows = []
    for column, stats in feature_stats.items():
        if column not in frame.columns:
            continue
        if stats["kind"] == "numeric":
            value_psi, ks = numeric_drift(frame[column], stats)
        else:
            value_psi, ks = categorical_drift(frame[column], stats["frequencies"]), float("nan")
        status = "ok"
        if value_psi >= settings.psi_fail:
            status = "fail"
        elif value_psi >= settings.psi_warn or (not np.isnan(ks) and ks >= settings.ks_warn):
            status = "warn"
        rows.append(
            {"feature": column, "kind": stats["kind"], "psi": value_psi, "ks": ks, "status": status}
        )
    if predicted_rate is not None and reference_rate is not None:
        ratio = (predicted_rate + EPS) / (reference_rate + EPS)
        limit = settings.rate_ratio_limit
        status = "fail" if ratio > limit or ratio < 1 / limit else "ok"
        rows.append(
            {
                "feature": "predicted_positive_rate",
                "kind": "prediction",
                "psi": float("nan"),
                "ks": float("nan"),
                "status": status,
                "new": predicted_rate,
                "reference": reference_rate,
            }
        )
    return pd.DataFrame(
        rows, columns=["feature", "kind", "psi", "ks", "status", "new", "reference"]
    )


def overall_status(table: pd.DataFrame) -> str:
    statuses = set(table["status"])
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"


def table_records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-ready rows: NaN becomes None, floats are rounded for display."""
    return [
        {
            k: (
                None
                if isinstance(v, float) and np.isnan(v)
                else (round(v, 4) if isinstance(v, float) else v)
            )
            for k, v in row.items()
        }
        for row in table.to_dict("records")
    ]


def publish_drift(table: pd.DataFrame, title: str) -> None:
    from prefect.artifacts import create_table_artifact

    create_table_artifact(
        key="drift",
        table=table_records(table),
        description=f"{title}: overall {overall_status(table)}",
    )
