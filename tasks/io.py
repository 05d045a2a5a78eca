"""Reading user data (CSV, gzipped CSV, parquet, built-in datasets); the I/O retry policy.
Writing, and every path a run writes to, is `tasks.storage`."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.datasets import BUILTINS, BuiltinDataset
from tasks.errors import DataInputError
from tasks.storage import sha256_of

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz")
SNIFF_BYTES = 64 * 1024


@dataclass(frozen=True)
class LoadedData:
    frame: pd.DataFrame
    source: str
    source_sha256: str
    builtin: BuiltinDataset | None
    notes: tuple[str, ...]


def sha256_frame(frame: pd.DataFrame) -> str:
    """Content hash of a frame: column names, dtypes and row values, order-sensitive."""
    digest = hashlib.sha256()
    digest.update(json.dumps([[str(c), str(t)] for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def detect_separator(path: Path) -> str:
    """Guess the delimiter from the first lines (comma, semicolon, tab or pipe)."""
    try:
        with _open_text(path) as handle:
            sample = handle.read(SNIFF_BYTES)
    except UnicodeDecodeError as exc:
        raise DataInputError(f"{path} is not UTF-8 text ({exc}); save it as UTF-8") from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise DataInputError(f"could not read {path}: {exc}") from exc
    if not sample.strip():
        raise DataInputError(f"data file {path} is empty")
    header = sample.splitlines()[0]
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        # One-column files or ragged samples: take the most frequent candidate in the header.
        counts = {sep: header.count(sep) for sep in ",;\t|"}
        best = max(counts, key=counts.get)
        return best if counts[best] else ","


def unnamed_columns(columns: Iterable[Any]) -> list[Any]:
    """Columns pandas named 'Unnamed: N' for an empty header field. A header ending in a
    delimiter (the Kaggle breast cancer file) yields one, empty in every row; only such columns
    are dropped, and any other empty column is the gate's business."""
    return [c for c in columns if str(c).startswith("Unnamed: ")]


def trailing_delimiter_note(dropped: list[Any]) -> str:
    return f"dropped all-empty column(s) from a trailing delimiter: {', '.join(map(str, dropped))}"


def _drop_trailing_empty_columns(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    empty = [c for c in unnamed_columns(frame.columns) if frame[c].isna().all()]
    return frame.drop(columns=empty), empty


def read_csv(path: Path, sep: str | None) -> tuple[pd.DataFrame, list[str]]:
    separator = sep or detect_separator(path)
    try:
        frame = pd.read_csv(path, sep=separator, compression="infer")
    except pd.errors.EmptyDataError as exc:
        raise DataInputError(f"data file {path} is empty") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError, zlib.error) as exc:
        problem = (
            "is not UTF-8 text"
            if isinstance(exc, UnicodeDecodeError)
            else "could not be parsed as CSV"
        )
        raise DataInputError(f"{path} {problem} (delimiter {separator!r}): {exc}") from exc
    frame, dropped = _drop_trailing_empty_columns(frame)
    notes = [f"delimiter {separator!r}"]
    if dropped:
        notes.append(trailing_delimiter_note(dropped))
    return frame, notes


def read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pq.read_table(path).to_pandas()
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        raise DataInputError(f"could not read parquet file {path}: {exc}") from exc


def file_kind(path: Path) -> str:
    """'parquet' or 'csv' (also gzipped, and names without a suffix), from the file name."""
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES) or "." not in name:
        return "csv"
    raise DataInputError(
        f"unsupported data file type: {path.name} (expected .csv, .csv.gz or .parquet)"
    )


def existing_file(data: str, what: str = "data file") -> Path:
    """The path, when it names a non-empty readable file; a DataInputError naming it otherwise."""
    path = Path(data).expanduser()
    if not path.exists():
        names = ", ".join(sorted(BUILTINS))
        raise DataInputError(f"{what} not found: {path} (built-in datasets: {names})")
    if not path.is_file():
        raise DataInputError(f"{what} is not a file: {path}")
    if path.stat().st_size == 0:
        raise DataInputError(f"{what} {path} is empty")
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise DataInputError(f"{what} {path} cannot be read: {exc}") from exc
    return path


def load_source(data: str, sep: str | None = None) -> LoadedData:
    """Load a built-in dataset by name, or a CSV (optionally gzipped) or parquet file."""
    if data in BUILTINS:
        builtin = BUILTINS[data]
        frame = builtin.load()
        return LoadedData(
            frame, f"builtin:{data}", sha256_frame(frame), builtin, (builtin.description,)
        )
    path = existing_file(data)
    if file_kind(path) == "parquet":
        frame, notes = read_parquet(path), []
    else:
        frame, notes = read_csv(path, sep)
    if frame.columns.empty:
        raise DataInputError(f"data file {path} has no columns")
    return LoadedData(frame, str(path), sha256_of(path), None, tuple(notes))


def retry_on_io_errors(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition for I/O tasks: retry OSError and timeouts (a flaky mount, a busy store),
    never a failed gate or bad input, which would fail the same way again."""
    try:
        state.result()
    except (TimeoutError, ConnectionError):
        return True
    except OSError as exc:
        return not isinstance(
            exc, FileNotFoundError | IsADirectoryError | NotADirectoryError | PermissionError
        )
    except BaseException:
        return False
    return False


def io_task_options() -> dict[str, Any]:
    """The one retry policy of tasks that read or write files: two retries with growing delays,
    only for transient I/O errors (see `retry_on_io_errors`), no result caching."""
    from prefect.cache_policies import NO_CACHE

    return {
        "cache_policy": NO_CACHE,
        "retries": 2,
        "retry_delay_seconds": [2, 10],
        "retry_condition_fn": retry_on_io_errors,
    }
