"""The out-of-core data path, taken when the data would not fit `--memory-budget` in memory.

The same stages, gates and feature-store layout as the in-memory path, computed over batches of
at most BATCH_ROWS rows, so memory is bounded by a batch plus per-row arrays of a few bytes:

- ingest: the source is read twice in batches (CSV chunks or parquet row groups). The first pass
  reads only the target and id columns for the table-wide checks (two classes, unique ids, class
  counts, the positive label); the second gates every batch for the per-row expectations and
  writes the normalised raw parquet batch by batch.
- split: reads only (row, id, target); rows sharing an id stay together (the in-memory path
  groups identical feature rows, which would need every feature in memory).
- outliers and features: fitted on training rows incrementally (counts, means and variances
  merged batch by batch); medians, quartiles and percentiles come from a seeded uniform sample of
  SAMPLE_ROWS training rows (approximate quantiles). The seed article's sequential filter needs
  every row at once and is not computed.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from tasks import gates
from tasks.config import TrainConfig
from tasks.datasets import BUILTINS
from tasks.errors import DataInputError
from tasks.ingest import (
    HASH_COLUMN,
    ID_COLUMN,
    MISSING_LEVEL,
    NUMERIC_DTYPES,
    ROW_COLUMN,
    TARGET_COLUMN,
    IngestResult,
    LeakWatch,
    check_values,
    duplicates_from_hashes,
    is_whole,
    normalise,
    resolve_positive,
    resolve_roles,
)
from tasks.io import (
    PARQUET_SUFFIXES,
    detect_separator,
    existing_file,
    file_kind,
    io_task_options,
    trailing_delimiter_note,
    unnamed_columns,
)
from tasks.preflight import check_columns, header
from tasks.storage import atomic_path, sha256_of

log = logging.getLogger(__name__)
BATCH_ROWS = 250_000
SAMPLE_ROWS = 200_000  # training rows behind the approximate quantiles
WORKING_COPIES = 5  # the in-memory path holds about this many copies of the raw table at its peak
READ_ERRORS = (
    pa.ArrowInvalid,
    OSError,
    pd.errors.ParserError,
    UnicodeDecodeError,
    EOFError,
    zlib.error,
)


# --- deciding ---------------------------------------------------------------------------------


def uncompressed_size(path: Path) -> int:
    """Bytes of the data as a table: parquet's rows x columns x 8 (its own page sizes are after
    dictionary encoding, far below what pandas holds); a CSV's text (for .gz the size recorded in
    the gzip trailer, modulo 4 GiB as the format stores it)."""
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        meta = pq.ParquetFile(path).metadata
        return meta.num_rows * meta.num_columns * 8
    if name.endswith(".gz"):
        with open(path, "rb") as handle:
            handle.seek(-4, 2)
            return max(int.from_bytes(handle.read(4), "little"), path.stat().st_size)
    return path.stat().st_size


def streaming_reason(config: TrainConfig) -> str | None:
    """Why this run takes the out-of-core path, or None: only a file whose in-memory estimate
    (WORKING_COPIES x its uncompressed size) exceeds the budget streams."""
    budget = config.memory_budget_bytes
    path = Path(config.data).expanduser()
    if budget is None or config.data in BUILTINS or not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        estimate = WORKING_COPIES * uncompressed_size(path)
    except (OSError, pa.ArrowInvalid):
        return None  # unreadable: the in-memory reader reports it properly
    if estimate <= budget:
        return None
    return (
        f"the data needs ~{estimate / 2**30:.2f} GiB in memory ({WORKING_COPIES} x "
        f"{estimate / WORKING_COPIES / 2**20:.0f} MiB uncompressed), over --memory-budget "
        f"{config.memory_budget}"
    )


# --- reading in batches -----------------------------------------------------------------------


class BatchSource:
    """A CSV (optionally gzipped) or parquet file read in batches of at most BATCH_ROWS rows."""

    def __init__(self, path: Path, sep: str | None):
        self.path = path
        self.parquet = file_kind(path) == "parquet"
        self.notes: list[str] = []
        try:
            if self.parquet:
                self.columns = list(pq.ParquetFile(path).schema_arrow.names)
            else:
                self.sep = sep or detect_separator(path)
                self.columns = list(pd.read_csv(path, sep=self.sep, nrows=0).columns)
                self.notes.append(f"delimiter {self.sep!r}")
        except READ_ERRORS as exc:
            raise DataInputError(f"could not read {path}: {exc}") from exc
        except pd.errors.EmptyDataError as exc:
            raise DataInputError(f"data file {path} is empty") from exc
        if not self.columns:
            raise DataInputError(f"data file {path} has no columns")
        self.dropped: list[str] = []

    def batches(self, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
        wanted = [c for c in (columns or self.columns) if c not in self.dropped]
        try:
            if self.parquet:
                for batch in pq.ParquetFile(self.path).iter_batches(BATCH_ROWS, columns=wanted):
                    yield batch.to_pandas()
                return
            reader = pd.read_csv(self.path, sep=self.sep, usecols=wanted, chunksize=BATCH_ROWS)
            with reader:
                for frame in reader:
                    yield frame[wanted]
        except READ_ERRORS as exc:
            raise DataInputError(f"could not read {self.path}: {exc}") from exc

    def drop_empty_trailing_columns(self) -> None:
        """Drop 'Unnamed: N' columns empty in every row (a header ending in a delimiter)."""
        candidates = unnamed_columns(self.columns)
        if not candidates or self.parquet:
            return
        filled = {c: False for c in candidates}
        for frame in self.batches(candidates):
            for c in candidates:
                filled[c] |= bool(frame[c].notna().any())
        self.dropped = [c for c, any_value in filled.items() if not any_value]
        self.columns = [c for c in self.columns if c not in self.dropped]
        if self.dropped:
            self.notes.append(trailing_delimiter_note(self.dropped))


# --- incremental statistics -------------------------------------------------------------------


class RunningMoments:
    """Count, mean and sum of squared deviations per column, merged batch by batch (Chan et al.'s
    parallel update, stable for large means); NaNs are skipped."""

    def __init__(self, width: int):
        self.n, self.mean, self.m2 = np.zeros(width), np.zeros(width), np.zeros(width)

    def update(self, values: np.ndarray) -> None:
        present = ~np.isnan(values)
        n_b = present.sum(axis=0)
        if not n_b.any():
            return
        mean_b = np.where(present, values, 0.0).sum(axis=0) / np.maximum(n_b, 1)
        m2_b = (np.where(present, values - mean_b, 0.0) ** 2).sum(axis=0)
        n = self.n + n_b
        delta = mean_b - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            self.mean = np.where(n > 0, self.mean + delta * n_b / np.maximum(n, 1), 0.0)
            self.m2 = self.m2 + m2_b + delta**2 * self.n * n_b / np.maximum(n, 1)
        self.n = n

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (ddof 0), as the in-memory path uses."""
        return np.sqrt(self.m2 / np.maximum(self.n, 1))


def sample_rows(rows: np.ndarray, seed: int) -> np.ndarray:
    """A seeded uniform sample (sorted) of at most SAMPLE_ROWS of `rows`."""
    if len(rows) <= SAMPLE_ROWS:
        return np.sort(rows)
    return np.sort(np.random.default_rng(seed).choice(rows, SAMPLE_ROWS, replace=False))


def raw_batches(raw_path: str, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """The normalised raw parquet, batch by batch (it always carries `__row`)."""
    wanted = None if columns is None else list(dict.fromkeys([ROW_COLUMN, *columns]))
    for batch in pq.ParquetFile(raw_path).iter_batches(BATCH_ROWS, columns=wanted):
        yield batch.to_pandas()


# --- stage 1: ingest --------------------------------------------------------------------------


@task(name="ingest", **io_task_options())
def ingest_streaming(config: TrainConfig, work_dir: Path, reason: str) -> IngestResult:
    """`tasks.ingest.ingest` for data larger than the memory budget (see the module docstring)."""
    path = existing_file(config.data)
    check_columns(header(path, config.sep), path, config, require_named=False)
    source = BatchSource(path, config.sep)
    source.drop_empty_trailing_columns()
    roles, declared = resolve_roles(pd.DataFrame(columns=source.columns), config, None, None)
    row_bindings = {
        "target": roles.target,
        "target_present": False,
        "binary_target": False,
        "declared_columns": declared,
        "numeric_features": roles.numeric,
        "numeric_dtypes": NUMERIC_DTYPES,
        "id": None,
        "complete_features": roles.features if config.impute == "none" else [],
    }

    def gate_rows(frame: pd.DataFrame, first_row: int) -> gates.GateReport:
        stage = f"raw (rows {first_row}-{first_row + len(frame) - 1})"
        return gates.validate(stage, "raw", frame, row_bindings, {"min_rows": 1})

    # missing columns and wrong types fail on the first batch, before any full pass
    first = next(source.batches(), None)
    if first is None or first.empty:
        raise DataInputError(f"data file {path} has a header but no rows")
    first_report = gate_rows(first, 0)
    del first

    key_columns = list(dict.fromkeys([roles.target, *([roles.id] if roles.id else [])]))
    keys = pd.concat(list(source.batches(key_columns)), ignore_index=True)
    target = keys[roles.target]
    binary = target.nunique() == 2 and not target.isna().any()
    facts = pd.DataFrame({"minority_count": [int(target.value_counts().min()) if binary else 0]})
    table_bindings = {
        "target": roles.target,
        "target_present": True,
        "binary_target": binary,
        "declared_columns": [],
        "numeric_features": [],
        "numeric_dtypes": NUMERIC_DTYPES,
        "complete_features": [],
        "id": roles.id,
    }
    table_report = gates.validate(
        "raw",
        "raw",
        {"data": keys, "facts": facts},
        table_bindings,
        {"min_class_count": config.min_class_count},
    )
    positive, negative, y = resolve_positive(target, config.positive)
    target_dtype = str(target.dtype)
    del keys, target

    hashes, schema, start, levels = [], None, 0, {}
    with atomic_path(work_dir / "raw.parquet") as tmp:
        writer = None
        try:
            for frame in source.batches():
                if start:
                    gate_rows(frame, start)
                check_values(frame, roles, config, start, levels)
                rows = normalise(
                    frame, roles, y.iloc[start : start + len(frame)].to_numpy(), start, config
                )
                hashes.append(rows[HASH_COLUMN].to_numpy())
                table = pa.Table.from_pandas(rows, preserve_index=False)
                if writer is None:
                    schema = table.schema
                    writer = pq.ParquetWriter(tmp, schema)
                writer.write_table(_conform(table, schema, start))
                start += len(frame)
        finally:
            if writer is not None:
                writer.close()
    exact, conflicting = duplicates_from_hashes(np.concatenate(hashes), y.to_numpy())
    checked = table_report.checked + first_report.checked
    report = gates.GateReport(stage="raw", success=True, checked=checked)
    return IngestResult(
        raw_path=str(work_dir / "raw.parquet"),
        source=str(path),
        source_sha256=sha256_of(path),
        notes=[*source.notes, f"out of core, in batches of {BATCH_ROWS:,} rows: {reason}"],
        roles=roles,
        positive_label=positive,
        negative_label=negative,
        target_dtype=target_dtype,
        n_rows=start,
        class_counts={positive: int(y.sum()), negative: int(len(y) - y.sum())},
        exact_duplicate_rows=exact,
        conflicting_duplicate_rows=conflicting,
        gate=report.as_dict(),
        streaming=True,
    )


def _conform(table: pa.Table, schema: pa.Schema, first_row: int) -> pa.Table:
    """Cast a batch to the first batch's schema (an all-missing column can arrive as another
    type); a value that does not fit is bad input."""
    if table.schema.equals(schema):
        return table
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataInputError(
            f"rows from {first_row} on do not have the types of the first rows: {exc}"
        ) from exc


# --- stages 3 and 4: outliers and features ----------------------------------------------------


class RowLookup:
    """Per-row split, validation half and removal flags, indexed by `__row` (0..n-1)."""

    def __init__(self, assignment_path: str, n_rows: int, removed_path: str | None = None):
        from tasks.split import HALF_COLUMN, SPLIT_COLUMN

        frame = pd.read_parquet(assignment_path, columns=[ROW_COLUMN, SPLIT_COLUMN, HALF_COLUMN])
        rows = frame[ROW_COLUMN].to_numpy()
        self.split = np.empty(n_rows, dtype=object)
        self.split[rows] = frame[SPLIT_COLUMN].to_numpy()
        self.half = np.full(n_rows, "", dtype=object)
        self.half[rows] = frame[HALF_COLUMN].to_numpy()
        self.removed = np.zeros(n_rows, dtype=bool)
        if removed_path is not None:
            self.removed[pd.read_parquet(removed_path)[ROW_COLUMN].to_numpy()] = True

    def kept_train(self, rows: np.ndarray) -> np.ndarray:
        """Which of these `__row` values are training rows not removed as outliers."""
        return (self.split[rows] == "train") & ~self.removed[rows]

    def train_rows(self) -> np.ndarray:
        return np.flatnonzero(self.kept_train(np.arange(len(self.split))))


def training_sample(raw_path: str, rows: np.ndarray, columns: list[str]) -> pd.DataFrame:
    """The raw values of the sampled rows (sorted `__row` values), read batch by batch."""
    wanted = pd.Index(rows)
    parts = [
        frame[frame[ROW_COLUMN].isin(wanted)]
        for frame in raw_batches(raw_path, [*columns, TARGET_COLUMN])
    ]
    return pd.concat(parts, ignore_index=True)


@dataclass
class TrainingPass:
    """What one pass over the training rows learns (train_moments)."""

    stored: RunningMoments  # moments of the values as stored
    prepared: RunningMoments | None  # moments after `prepare` (imputed, clipped), when given
    distinct: dict[str, set]  # up to 3 distinct stored values (0/1 flags are not continuous)
    whole: dict[str, bool]  # every stored value is a whole number
    rows: int


def train_moments(
    raw_path: str, lookup: RowLookup, columns: list[str], prepare=None
) -> TrainingPass:
    """One pass over the training rows `lookup` keeps (see TrainingPass)."""
    result = TrainingPass(
        RunningMoments(len(columns)),
        RunningMoments(len(columns)) if prepare else None,
        {c: set() for c in columns},
        dict.fromkeys(columns, True),
        0,
    )
    for frame in raw_batches(raw_path, columns):
        mask = lookup.kept_train(frame[ROW_COLUMN].to_numpy())
        train = frame.loc[mask, columns].astype("float64")
        result.stored.update(train.to_numpy())
        if result.prepared is not None:
            result.prepared.update(prepare(train).to_numpy())
        for c in columns:
            values = train[c].dropna().to_numpy()
            result.whole[c] = result.whole[c] and is_whole(values)
            if len(result.distinct[c]) <= 2:
                result.distinct[c].update(np.unique(values)[:3].tolist())
        result.rows += int(mask.sum())
    return result


def category_counts(raw_path: str, lookup: RowLookup, columns: list[str]) -> dict[str, Counter]:
    """Exact value counts (missing as None) of categorical columns over training rows."""
    counts = {c: Counter() for c in columns}
    if not columns:
        return counts
    for frame in raw_batches(raw_path, columns):
        train = frame.loc[lookup.kept_train(frame[ROW_COLUMN].to_numpy()), columns]
        for c in columns:
            for value, count in train[c].value_counts(dropna=False).items():
                counts[c][None if pd.isna(value) else str(value)] += int(count)
    return counts


def write_splits(
    raw_path: str, lookup: RowLookup, prep, directory: Path, names: tuple[str, ...], seed: int
) -> tuple[dict[str, dict[str, int]], int]:
    """Transform every kept row batch by batch into `<directory>/<split>.parquet` (and ids.parquet);
    returns rows and positives per split, and how many stored numeric values are not finite.

    The training split is written in a seeded random row order (an external shuffle: rows go to
    random buckets of about BATCH_ROWS rows, then each bucket is shuffled and appended), so a
    source sorted by time or label still streams i.i.d. batches row group by row group."""
    writers: dict[str, pq.ParquetWriter] = {}
    counts = {name: {"rows": 0, "positives": 0} for name in names}
    nonfinite = 0
    rng = np.random.default_rng(seed)
    n_buckets = max(1, -(-len(lookup.train_rows()) // BATCH_ROWS))
    buckets = directory / ".train-buckets"
    buckets.mkdir()

    def append(name: str, out: pd.DataFrame, path: Path) -> None:
        table = pa.Table.from_pandas(out, preserve_index=False)
        if name not in writers:
            writers[name] = pq.ParquetWriter(path, table.schema)
        writers[name].write_table(table.cast(writers[name].schema))

    try:
        for frame in raw_batches(raw_path):
            rows = frame[ROW_COLUMN].to_numpy()
            keep = ~lookup.removed[rows]
            frame, rows = frame[keep], rows[keep]
            split = lookup.split[rows]
            ids = pd.DataFrame(
                {
                    ID_COLUMN: frame[ID_COLUMN].to_numpy(),
                    "split": split.astype(str),
                    "half": lookup.half[rows].astype(str),
                    "y": frame[TARGET_COLUMN].to_numpy(),
                }
            )
            append("ids", ids, directory / "ids.parquet")
            for name in names:
                part = frame[split == name]
                if part.empty:  # an empty batch part carries no reliable types
                    continue
                out = prep.transform(part)
                nonfinite += int((~np.isfinite(out[prep.numeric].to_numpy(dtype="float64"))).sum())
                out[TARGET_COLUMN] = part[TARGET_COLUMN].to_numpy(dtype="int8")
                out[ID_COLUMN] = part[ID_COLUMN].to_numpy()
                out = out.reset_index(drop=True)
                counts[name]["rows"] += len(part)
                counts[name]["positives"] += int(part[TARGET_COLUMN].sum())
                if name != "train":
                    append(name, out, directory / f"{name}.parquet")
                    continue
                bucket = rng.integers(n_buckets, size=len(out))
                for b in np.unique(bucket):
                    append(f"bucket-{b}", out[bucket == b], buckets / f"{b}.parquet")
        for b in range(n_buckets):
            writer = writers.pop(f"bucket-{b}", None)
            if writer is None:
                continue
            writer.close()
            rows = pq.read_table(buckets / f"{b}.parquet")
            append(
                "train",
                rows.take(rng.permutation(rows.num_rows)).to_pandas(),
                directory / "train.parquet",
            )
    finally:
        for writer in writers.values():
            writer.close()
        for path in buckets.glob("*"):
            path.unlink()
        buckets.rmdir()
    missing = [name for name in ("ids", *names) if name not in writers]
    if missing:  # the split gate guarantees rows in every split; this is a bug, not bad input
        raise RuntimeError(f"no rows were written for {', '.join(missing)}")
    return counts, nonfinite


def histogram_shares(
    raw_path: str, lookup: RowLookup, edges: dict[str, list[float]]
) -> dict[str, list[float]]:
    """Exact training shares per bin for the given edges (a value v falls in bin
    searchsorted(edges, v, side='right')), missing values excluded."""
    counts = {c: np.zeros(len(e) + 1) for c, e in edges.items()}
    for frame in raw_batches(raw_path, list(edges)):
        train = frame.loc[lookup.kept_train(frame[ROW_COLUMN].to_numpy())]
        for c, e in edges.items():
            values = train[c].dropna().to_numpy(dtype="float64")
            counts[c] += np.bincount(np.searchsorted(e, values, side="right"), minlength=len(e) + 1)
    return {c: (k / max(k.sum(), 1)).tolist() for c, k in counts.items()}


def outliers_streaming(config: TrainConfig, ingest: IngestResult, split, work_dir: Path):
    """`tasks.outliers.handle_outliers` over batches: mean/std bounds from merged moments, IQR
    bounds from the training sample's quartiles; training rows of either class outside the
    bounds are removed (zscore, iqr) or their values counted as clipped (clip)."""
    from tasks.outliers import (
        OutlierResult,
        fit_bounds,
        outlier_gate,
        outside_bounds,
        zscore_bounds,
    )

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
    report = outlier_gate(config, ingest, removed, totals, 0)
    rows = np.concatenate(removed_rows) if removed_rows else np.zeros(0, dtype="int64")
    removed_path = work_dir / "removed.parquet"
    with atomic_path(removed_path) as tmp:
        pd.DataFrame({ROW_COLUMN: rows.astype("int64")}).to_parquet(tmp, index=False)
    return OutlierResult(
        method=method,
        columns=columns,
        bounds=bounds,
        removed_path=str(removed_path),
        removed=removed,
        clipped_values=clipped,
        gate=report,
        seed_rule_removed={},  # needs every row at once; not computed out of core
    )


def features_streaming(config: TrainConfig, ingest: IngestResult, split, outliers):
    """`tasks.features.build_features` over batches. Exact: means and scales (merged moments of
    the imputed, clipped training values), categories and their frequencies, missing shares,
    histogram shares. From the training sample: imputation medians and modes of numerics,
    percentiles and histogram edges. The feature gate checks the transformed sample (its mean and
    std tolerance widened to 6 standard errors) and every stored value's finiteness."""
    from tasks.features import (
        PREPROCESSING,
        Preprocessing,
        build_manifest,
        commit_feature_set,
        features_gate,
        histogram_bins,
        impute_and_clip,
    )
    from tasks.split import SPLITS

    raw, roles = ingest.raw_path, ingest.roles
    numeric, categorical = list(roles.numeric), list(roles.categorical)
    lookup = RowLookup(split.assignment_path, ingest.n_rows, outliers.removed_path)
    sample = training_sample(
        raw, sample_rows(lookup.train_rows(), config.seed), numeric + categorical
    )
    counts = category_counts(raw, lookup, categorical)

    impute_values: dict[str, Any] = {}
    if config.impute != "none":
        for column in numeric:
            values = sample[column]
            impute_values[column] = float(
                values.median() if config.impute == "median" else values.mode().iloc[0]
            )
        for column in categorical:
            present = {k: v for k, v in counts[column].items() if k is not None}
            impute_values[column] = max(sorted(present), key=present.get)
    clip_bounds = outliers.bounds if outliers.method == "clip" else {}

    def prepare(values: pd.DataFrame) -> pd.DataFrame:
        return values.apply(impute_and_clip, args=(impute_values, clip_bounds))

    fit = train_moments(raw, lookup, numeric, prepare)
    two_valued = [c for c in numeric if len(fit.distinct[c]) == 2] + [
        c for c in categorical if None not in counts[c] and len(counts[c]) == 2
    ]
    if two_valued:
        watch = LeakWatch(two_valued)
        for frame in raw_batches(raw, [*two_valued, TARGET_COLUMN]):
            train = frame[lookup.kept_train(frame[ROW_COLUMN].to_numpy())]
            watch.update(train, train[TARGET_COLUMN].to_numpy())
        watch.check()
    stds = dict(zip(numeric, fit.prepared.std, strict=True))
    constant = [c for c in numeric if not stds[c] > 0]
    kept = [c for c in numeric if c not in constant]
    categories = {
        c: sorted(
            {k for k in counts[c] if k is not None}
            | ({impute_values[c]} if c in impute_values else set())
        )
        for c in categorical
    }
    prep = Preprocessing(
        numeric=kept,
        categorical=categorical,
        impute=config.impute,
        impute_values={k: v for k, v in impute_values.items() if k not in constant},
        clip_bounds={k: v for k, v in clip_bounds.items() if k in kept},
        means={c: float(m) for c, m in zip(numeric, fit.prepared.mean, strict=True) if c in kept},
        scales={c: float(stds[c]) for c in kept},
        categories=categories,
        dropped_constant=constant,
        integer_valued=[c for c in kept if fit.whole[c]],
        positive_label=ingest.positive_label,
        negative_label=ingest.negative_label,
        target=roles.target,
        id=roles.id,
    )

    # the drift reference describes the raw training values, before any row is filtered
    if lookup.removed.any():
        every = RowLookup(split.assignment_path, ingest.n_rows)
        reference = train_moments(raw, every, kept)
        reference_sample = training_sample(raw, sample_rows(every.train_rows(), config.seed), kept)
        reference_counts = category_counts(raw, every, categorical)
    else:
        every, reference, reference_sample, reference_counts = lookup, fit, sample, counts
    bins = {c: histogram_bins(reference_sample[c]) for c in kept}
    shares = histogram_shares(raw, every, {c: b["edges"] for c, b in bins.items()})
    where = {c: i for i, c in enumerate(numeric if reference is fit else kept)}
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
        "stored feature set %s out of core (%s training rows)", feature_set.fingerprint, fit.rows
    )
    return feature_set
