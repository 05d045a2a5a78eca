"""Reading in batches, statistics merged batch by batch, and writing the transformed splits
batch by batch, for the out-of-core stages."""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import TrainConfig
from tasks.datasets import BUILTINS
from tasks.errors import DataInputError
from tasks.ingest import ID_COLUMN, ROW_COLUMN, TARGET_COLUMN, is_whole
from tasks.io import (
    PARQUET_SUFFIXES,
    detect_separator,
    file_kind,
    trailing_delimiter_note,
    unnamed_columns,
)
from tasks.split import HALF_COLUMN, SPLIT_COLUMN
from tasks.storage import parquet_batches

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


def reason(config: TrainConfig) -> str | None:
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
    yield from parquet_batches(raw_path, BATCH_ROWS, wanted)


class RowLookup:
    """Per-row split, validation half and removal flags, indexed by `__row` (0..n-1)."""

    def __init__(self, assignment_path: str, n_rows: int, removed_path: str | None = None):
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


def write_splits(
    raw_path: str, lookup: RowLookup, prep, directory: Path, names: tuple[str, ...], seed: int
) -> tuple[dict[str, dict[str, int]], int]:
    """Transform every kept row batch by batch into `<directory>/<split>.parquet` (and ids.parquet);
    returns rows and positives per split, and how many stored numeric values are not finite.

    The training split is written in a seeded random row order (an external shuffle: rows go to
    random buckets of about BATCH_ROWS rows, then each bucket is shuffled and
    appended), so a source sorted by time or label still streams i.i.d. batches row group by
    row group."""
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
