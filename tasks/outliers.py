"""Stage 3: outlier handling, fitted on training rows only and blind to the label.

- `clip` (default): winsorise every split to the training mean +- z*std bounds; nothing is
  dropped. The bounds are part of the fitted preprocessing and apply at prediction time too.
- `zscore`: a training row of either class is dropped when any continuous column is more than
  `outlier_z` training standard deviations from the training mean (one joint pass).
- `iqr`: the same with bounds Q1 - k*IQR, Q3 + k*IQR.
- `none`: nothing.
Validation and test rows are never dropped. The rule never looks at the label: dropping only
majority-class extremes would teach the model that an extreme value means the rare class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from tasks import gates
from tasks.config import TrainConfig
from tasks.ingest import ROW_COLUMN, TARGET_COLUMN, IngestResult, distinct_counts
from tasks.split import SPLIT_COLUMN, SplitResult
from tasks.storage import write_parquet


class OutlierResult(BaseModel):
    method: str
    columns: list[str]  # continuous columns the bounds apply to
    bounds: dict[str, tuple[float, float]]  # column -> (low, high), from training rows
    removed_path: str  # parquet: __row of every dropped training row
    removed: dict[str, int]  # label -> training rows dropped
    clipped_values: dict[str, int]  # label -> training values clipped (clip only)
    seed_rule_removed: dict[str, Any]  # what the seed article's rule would have removed
    gate: dict[str, Any]


def continuous_columns(train: pd.DataFrame, numeric: list[str]) -> list[str]:
    """Numeric columns with more than two distinct training values (0/1 flags are not
    'outliers')."""
    return [c for c, n in distinct_counts(train, numeric).items() if n > 2]


def fit_bounds(
    train: pd.DataFrame, columns: list[str], method: str, z: float, k: float
) -> dict[str, tuple[float, float]]:
    """Per-column (low, high) bounds from the training rows only."""
    bounds: dict[str, tuple[float, float]] = {}
    for column in columns:
        values = train[column].dropna()
        if method == "iqr":
            q1, q3 = values.quantile(0.25), values.quantile(0.75)
            low, high = q1 - k * (q3 - q1), q3 + k * (q3 - q1)
        else:
            low, high = zscore_bounds(values.mean(), values.std(ddof=0), z)
        bounds[column] = (float(low), float(high))
    return bounds


def zscore_bounds(mean: float, std: float, z: float) -> tuple[float, float]:
    """zscore and clip share the mean +- z*std bounds (population std, like scipy's zscore)."""
    return float(mean - z * std), float(mean + z * std)


def outside_bounds(frame: pd.DataFrame, bounds: dict[str, tuple[float, float]]) -> pd.Series:
    """True for rows with any column outside its bounds (one joint pass)."""
    return pd.Series(_outside(frame, bounds).any(axis=1), index=frame.index)


def _outside(frame: pd.DataFrame, bounds: dict[str, tuple[float, float]]) -> np.ndarray:
    """(rows, columns of `bounds`): whether each value lies outside its column's bounds."""
    columns = list(bounds)
    values = frame[columns].to_numpy(dtype="float64", na_value=np.nan)
    low = np.array([bounds[c][0] for c in columns], dtype="float64")
    high = np.array([bounds[c][1] for c in columns], dtype="float64")
    return (values < low) | (values > high)


def seed_article_rule(
    frame: pd.DataFrame, columns: list[str], labels: pd.Series, z: float = 3.0
) -> dict[str, Any]:
    """What the seed article's filter would remove: |z| < 3 kept column after column (z recomputed
    on what is left), on every row of every class, before any split."""
    matrix = frame[columns].to_numpy(dtype="float64", na_value=np.nan)
    keep = np.ones(len(frame), dtype=bool)
    for j in range(len(columns)):
        values = matrix[keep, j]
        present = values[~np.isnan(values)]
        std = present.std() if len(present) else np.nan
        if std == 0 or np.isnan(std):
            continue
        with np.errstate(invalid="ignore"):
            inside = np.abs((values - present.mean()) / std) < z  # a NaN is not kept
        keep[np.flatnonzero(keep)[~inside]] = False
    removed = labels[~keep]
    totals = labels.value_counts()
    return {
        str(label): {
            "removed": int((removed == label).sum()),
            "of": int(totals[label]),
            "share": float((removed == label).sum() / totals[label]),
        }
        for label in totals.index
    }


@task(name="outliers", cache_policy=NO_CACHE)
def handle_outliers(
    config: TrainConfig, ingest: IngestResult, split: SplitResult, work_dir: Path
) -> OutlierResult:
    raw = pd.read_parquet(ingest.raw_path)
    assignment = pd.read_parquet(split.assignment_path, columns=[ROW_COLUMN, SPLIT_COLUMN])
    raw = raw.merge(assignment, on=ROW_COLUMN, how="left", validate="one_to_one")
    train = raw[raw[SPLIT_COLUMN] == "train"]
    labels = raw[TARGET_COLUMN].map({1: ingest.positive_label, 0: ingest.negative_label})

    columns = continuous_columns(train, ingest.roles.numeric)
    method = config.outlier
    bounds = (
        {}
        if method == "none"
        else fit_bounds(train, columns, method, config.outlier_z, config.outlier_iqr_k)
    )

    removed_mask = pd.Series(False, index=raw.index)
    clipped = {ingest.positive_label: 0, ingest.negative_label: 0}
    if method in ("zscore", "iqr"):
        removed_mask = (raw[SPLIT_COLUMN] == "train") & outside_bounds(raw, bounds)
    elif method == "clip":  # values clipped per class: every training value out of bounds
        hits_per_row = _outside(train, bounds).sum(axis=1)
        train_labels = labels[train.index].to_numpy()
        for label in clipped:
            clipped[label] += int(hits_per_row[train_labels == label].sum())

    train_labels = labels[raw[SPLIT_COLUMN] == "train"]
    removed_labels = labels[removed_mask]
    removed = {
        label: int((removed_labels == label).sum())
        for label in (ingest.positive_label, ingest.negative_label)
    }
    train_totals = {label: int((train_labels == label).sum()) for label in removed}
    outside_train = int((removed_mask & (raw[SPLIT_COLUMN] != "train")).sum())
    seed_rule = seed_article_rule(raw, columns or ingest.roles.numeric, labels, config.outlier_z)
    return finish_outliers(
        config,
        ingest,
        (method, columns, bounds),
        (removed, clipped, train_totals, outside_train),
        raw.loc[removed_mask, ROW_COLUMN].to_numpy(),
        seed_rule,
        work_dir,
    )


def finish_outliers(
    config: TrainConfig,
    ingest: IngestResult,
    fitted: tuple[str, list[str], dict[str, tuple[float, float]]],
    counts: tuple[dict[str, int], dict[str, int], dict[str, int], int],
    removed_rows: np.ndarray,
    seed_rule: dict[str, Any],
    work_dir: Path,
) -> OutlierResult:
    """What both data paths end with: the outlier gate on the counts (removed, clipped, training
    totals per class, removed outside training) and the removed rows' `__row` values stored for
    the feature stage. `fitted` is (method, columns, bounds)."""
    method, columns, bounds = fitted
    removed, clipped, train_totals, removed_outside_train = counts
    gate = outlier_gate(config, ingest, removed, train_totals, removed_outside_train)
    frame = pd.DataFrame({ROW_COLUMN: np.asarray(removed_rows, dtype="int64")})
    removed_path = write_parquet(work_dir / "removed.parquet", frame)
    return OutlierResult(
        method=method,
        columns=columns,
        bounds=bounds,
        removed_path=str(removed_path),
        removed=removed,
        clipped_values=clipped,
        seed_rule_removed=seed_rule,
        gate=gate,
    )


def outlier_gate(
    config: TrainConfig,
    ingest: IngestResult,
    removed: dict[str, int],
    train_totals: dict[str, int],
    removed_outside_train: int,
) -> dict[str, Any]:
    """Removal share of each class's training rows within --max-removed-share; nothing removed
    outside training."""
    positive, negative = ingest.positive_label, ingest.negative_label
    facts = pd.DataFrame(
        [
            {
                "removed_share_positive": removed[positive] / max(train_totals[positive], 1),
                "removed_share_negative": removed[negative] / max(train_totals[negative], 1),
                "rows_removed_outside_train": removed_outside_train,
            }
        ]
    )
    report = gates.validate(
        "outliers",
        "outliers",
        {"facts": facts},
        {"classes": ["positive", "negative"]},
        {"max_removed_share": config.max_removed_share},
    )
    return report.as_dict()
