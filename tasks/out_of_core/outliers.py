"""Outlier handling in batches: `tasks.outliers.handle_outliers` for the out-of-core path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import TrainConfig
from tasks.ingest import ROW_COLUMN, TARGET_COLUMN, IngestResult
from tasks.out_of_core.batches import (
    RowLookup,
    raw_batches,
    sample_rows,
    train_moments,
    training_sample,
)
from tasks.outliers import OutlierResult, finish_outliers, fit_bounds, outside_bounds, zscore_bounds
from tasks.split import SplitResult


@task(name="outliers", cache_policy=NO_CACHE)
def handle_outliers(
    config: TrainConfig, ingest: IngestResult, split: SplitResult, work_dir: Path
) -> OutlierResult:
    """`tasks.outliers.handle_outliers` over batches: mean/std bounds from merged moments, IQR
    bounds from the training sample's quartiles; training rows of either class outside the
    bounds are removed (zscore, iqr) or their values counted as clipped (clip)."""
    raw, numeric, method = ingest.raw_path, ingest.roles.numeric, config.outlier
    positive, negative = ingest.positive_label, ingest.negative_label
    lookup = RowLookup(split.assignment_path, ingest.n_rows)
    moments = train_moments(raw, lookup, numeric)
    columns = [c for c in numeric if len(moments.distinct[c]) > 2]
    if method == "none":
        bounds = {}
    elif method == "iqr":
        sample = training_sample(raw, sample_rows(lookup.train_rows(), config.seed), columns)
        bounds = fit_bounds(sample, columns, "iqr", config.outlier_z, config.outlier_iqr_k)
    else:  # zscore, clip: from the merged training moments
        where = {c: i for i, c in enumerate(numeric)}
        bounds = {
            c: zscore_bounds(
                moments.stored.mean[where[c]], moments.stored.std[where[c]], config.outlier_z
            )
            for c in columns
        }
    train_counts = split.counts["train"]
    name = {1: positive, 0: negative}
    removed, clipped, removed_rows = {positive: 0, negative: 0}, {positive: 0, negative: 0}, []
    for frame in raw_batches(raw, [*columns, TARGET_COLUMN]):
        is_train = lookup.kept_train(frame[ROW_COLUMN].to_numpy())  # nothing removed yet
        y = frame[TARGET_COLUMN].to_numpy()
        if method in ("zscore", "iqr"):
            drop = is_train & outside_bounds(frame, bounds).to_numpy()
            removed_rows.append(frame.loc[drop, ROW_COLUMN].to_numpy())
            for label in (0, 1):
                removed[name[label]] += int((drop & (y == label)).sum())
        elif method == "clip":
            for column, (low, high) in bounds.items():
                hit = is_train & ((frame[column] < low) | (frame[column] > high)).to_numpy()
                for label in (0, 1):
                    clipped[name[label]] += int((hit & (y == label)).sum())
    totals = {
        positive: train_counts["positives"],
        negative: train_counts["rows"] - train_counts["positives"],
    }
    rows = np.concatenate(removed_rows) if removed_rows else np.zeros(0, dtype="int64")
    seed_rule: dict = {}  # the seed article's rule needs every row at once: not computed here
    counts = (removed, clipped, totals, 0)
    return finish_outliers(
        config, ingest, (method, columns, bounds), counts, rows, seed_rule, work_dir
    )
