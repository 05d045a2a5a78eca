"""Features in batches: `tasks.features.build_features` for the out-of-core path.

Exact: means and scales (merged moments of the imputed, clipped and quantile-transformed
training values), categories and their frequencies, missing shares, histogram shares. From the
training sample: imputation medians and modes of numerics, the quantile transform's knots,
percentiles and histogram edges. The feature gate checks the
transformed sample (its mean and std tolerance widened to 6 standard errors) and every stored
value's finiteness."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from prefect import task

from tasks.config import TrainConfig
from tasks.features import (
    PREPROCESSING,
    FeatureSet,
    Preprocessing,
    build_manifest,
    commit_feature_set,
    features_gate,
    fit_quantiles,
    histogram_bins,
    impute_and_clip,
    normal_scores,
)
from tasks.ingest import (
    MISSING_LEVEL,
    ROW_COLUMN,
    TARGET_COLUMN,
    IngestResult,
    LeakWatch,
)
from tasks.io import io_task_options
from tasks.out_of_core.batches import (
    RowLookup,
    TrainingPass,
    category_counts,
    histogram_shares,
    raw_batches,
    sample_rows,
    train_moments,
    training_sample,
    write_splits,
)
from tasks.outliers import OutlierResult
from tasks.split import SPLITS, SplitResult

log = logging.getLogger(__name__)


@task(name="features", **io_task_options())
def build_features(
    config: TrainConfig, ingest: IngestResult, split: SplitResult, outliers: OutlierResult
) -> FeatureSet:
    """Fit the preprocessing on training rows, describe the raw training values for drift, and
    store the transformed splits batch by batch."""
    raw = ingest.raw_path
    lookup = RowLookup(split.assignment_path, ingest.n_rows, outliers.removed_path)
    fitted = fit_preprocessing(config, ingest, outliers, lookup)
    stats = drift_reference(config, ingest, split, fitted)
    prep, sample = fitted.prep, fitted.sample
    tolerance = max(config.scale_tolerance, 6 / np.sqrt(max(len(sample), 1)))

    def write(staging: Path, fp: str) -> dict[str, Any]:
        split_counts, nonfinite = write_splits(raw, lookup, prep, staging, SPLITS, config.seed)
        schemas = [pq.ParquetFile(staging / f"{name}.parquet").schema_arrow for name in SPLITS]
        gate = features_gate(
            prep.transform(sample).reset_index(drop=True),
            nonfinite,
            all(s.equals(schemas[0]) for s in schemas),
            prep,
            tolerance,
        )
        (staging / PREPROCESSING).write_text(prep.model_dump_json(indent=2))
        layout = {
            "columns": list(schemas[0].names),
            "dtypes": {f.name: str(f.type) for f in schemas[0]},
            "splits": {
                name: c | {"negatives": c["rows"] - c["positives"]}
                for name, c in split_counts.items()
            },
        }
        return build_manifest(
            config, ingest, split, outliers, prep, layout, stats, staging, fp, gate
        )

    feature_set = commit_feature_set(config, ingest, write)
    log.info(
        "stored feature set %s out of core (%s training rows)",
        feature_set.fingerprint,
        fitted.moments.rows,
    )
    return feature_set


@dataclass
class Fitted:
    """The preprocessing fitted on the kept training rows, and what it was fitted from."""

    prep: Preprocessing
    lookup: RowLookup
    moments: TrainingPass  # of the values as stored and after imputing and clipping
    sample: pd.DataFrame  # the seeded training sample behind the approximate quantiles
    counts: dict[str, Counter]  # exact category counts over the kept training rows


def fit_preprocessing(
    config: TrainConfig, ingest: IngestResult, outliers: OutlierResult, lookup: RowLookup
) -> Fitted:
    raw, roles = ingest.raw_path, ingest.roles
    numeric, categorical = list(roles.numeric), list(roles.categorical)
    sample = training_sample(
        raw, sample_rows(lookup.train_rows(), config.seed), numeric + categorical
    )
    counts = category_counts(raw, lookup, categorical)
    impute_values = _impute_values(config, sample, counts, numeric, categorical)
    clip_bounds = outliers.bounds if outliers.method == "clip" else {}

    def clipped(values: pd.DataFrame) -> pd.DataFrame:
        return impute_and_clip(values, list(values.columns), impute_values, clip_bounds)

    # from the training sample: approximate quantiles, like the medians
    quantiles = fit_quantiles(clipped(sample[numeric].astype("float64")), config.numeric_transform)

    def prepare(values: pd.DataFrame) -> pd.DataFrame:
        frame = clipped(values)
        frame[:] = normal_scores(frame.to_numpy(), list(frame.columns), quantiles)
        return frame

    fit = train_moments(raw, lookup, numeric, prepare)
    _refuse_label_copies(raw, lookup, fit, counts, numeric, categorical)
    stds = dict(zip(numeric, fit.prepared.std, strict=True))
    constant = [c for c in numeric if not stds[c] > 0]
    kept = [c for c in numeric if c not in constant]
    levels = {c: {k for k in counts[c] if k is not None} for c in categorical}
    categories = {
        c: sorted(levels[c] | ({impute_values[c]} if c in impute_values else set()))
        for c in categorical
    }
    means = dict(zip(numeric, fit.prepared.mean, strict=True))
    prep = Preprocessing(
        numeric=kept,
        categorical=categorical,
        impute=config.impute,
        impute_values={k: v for k, v in impute_values.items() if k not in constant},
        clip_bounds={k: v for k, v in clip_bounds.items() if k in kept},
        means={c: float(means[c]) for c in kept},
        scales={c: float(stds[c]) for c in kept},
        quantiles={c: q for c, q in quantiles.items() if c in kept},
        categories=categories,
        dropped_constant=constant,
        integer_valued=[c for c in kept if fit.whole[c]],
        positive_label=ingest.positive_label,
        negative_label=ingest.negative_label,
        target=roles.target,
        id=roles.id,
    )
    return Fitted(prep, lookup, fit, sample, counts)


def _impute_values(
    config: TrainConfig,
    sample: pd.DataFrame,
    counts: dict[str, Counter],
    numeric: list[str],
    categorical: list[str],
) -> dict[str, Any]:
    """Medians or modes of numerics from the sample; the most frequent level from exact counts."""
    if config.impute == "none":
        return {}
    values: dict[str, Any] = {}
    for column in numeric:
        column_values = sample[column]
        values[column] = float(
            column_values.median() if config.impute == "median" else column_values.mode().iloc[0]
        )
    for column in categorical:
        present = {k: v for k, v in counts[column].items() if k is not None}
        values[column] = max(sorted(present), key=present.get)
    return values


def _refuse_label_copies(
    raw: str,
    lookup: RowLookup,
    fit: TrainingPass,
    counts: dict[str, Counter],
    numeric: list[str],
    categorical: list[str],
) -> None:
    """A two-valued feature that maps one-to-one onto the classes on training rows is refused."""
    two_valued = [c for c in numeric if len(fit.distinct[c]) == 2]
    two_valued += [c for c in categorical if None not in counts[c] and len(counts[c]) == 2]
    if not two_valued:
        return
    watch = LeakWatch(two_valued)
    for frame in raw_batches(raw, [*two_valued, TARGET_COLUMN]):
        train = frame[lookup.kept_train(frame[ROW_COLUMN].to_numpy())]
        watch.update(train, train[TARGET_COLUMN].to_numpy())
    watch.check()


def drift_reference(
    config: TrainConfig, ingest: IngestResult, split: SplitResult, fitted: Fitted
) -> dict[str, Any]:
    """Per-feature statistics of the raw training values, before any row is filtered: what
    drift checks compare new data with."""
    raw, kept, categorical = ingest.raw_path, fitted.prep.numeric, fitted.prep.categorical
    if fitted.lookup.removed.any():
        every = RowLookup(split.assignment_path, ingest.n_rows)
        reference = train_moments(raw, every, kept)
        reference_sample = training_sample(raw, sample_rows(every.train_rows(), config.seed), kept)
        reference_counts = category_counts(raw, every, categorical)
        where = {c: i for i, c in enumerate(kept)}
    else:
        every, reference = fitted.lookup, fitted.moments
        reference_sample, reference_counts = fitted.sample, fitted.counts
        where = {c: i for i, c in enumerate(ingest.roles.numeric)}
    bins = {c: histogram_bins(reference_sample[c]) for c in kept}
    shares = histogram_shares(raw, every, {c: b["edges"] for c, b in bins.items()})
    stats: dict[str, Any] = {}
    for c in kept:
        i = where[c]
        values = reference_sample[c].astype("float64")
        percentiles = values.quantile([q / 100 for q in range(101)]).tolist()
        stats[c] = {
            "kind": "numeric",
            "dtype": "float64",
            "mean": float(reference.stored.mean[i]),
            "std": float(reference.stored.std[i]),
            "percentiles": [float(q) for q in percentiles],
            "bins": {"edges": bins[c]["edges"], "shares": shares[c]},
            "missing_share": float(1 - reference.stored.n[i] / max(reference.rows, 1)),
            "approximate": reference.rows > len(reference_sample),
        }
    for c in categorical:
        total = max(sum(reference_counts[c].values()), 1)
        stats[c] = {
            "kind": "categorical",
            "dtype": "string",
            "frequencies": {
                MISSING_LEVEL if k is None else str(k): v / total
                for k, v in reference_counts[c].most_common()
            },
            "missing_share": reference_counts[c].get(None, 0) / total,
        }
    return stats
