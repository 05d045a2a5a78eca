"""Checks that need only the settings, the file's header and its first 64 KB, run by the command
lines before Prefect's server starts: a bad file or a misspelt column is answered in about a
second, not after the ~20 s of server start-up, and nothing is written. The flow's own gates
check the rest (every row) once it runs."""

from __future__ import annotations

import csv
import gzip
import io
import tempfile
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.columns import RESERVED_COLUMNS
from tasks.config import TrainConfig
from tasks.datasets import BUILTINS
from tasks.errors import ConfigError, DataInputError
from tasks.io import SNIFF_BYTES, detect_separator, existing_file, file_kind
from tasks.storage import is_local, local_path, location

READ_ERRORS = (OSError, EOFError, zlib.error, UnicodeDecodeError, pa.ArrowInvalid)


def header(path: Path, sep: str | None) -> list[str]:
    """The column names as written in the file's first line (or the parquet schema), before
    any reader renames duplicates; the first 64 KB of a compressed file are decompressed to
    catch a corrupt archive early."""
    try:
        if file_kind(path) == "parquet":
            return list(pq.read_schema(path).names)
        separator = sep or detect_separator(path)
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataInputError(f"{path} is not UTF-8 text ({exc}); save it as UTF-8") from exc
    except READ_ERRORS as exc:
        raise DataInputError(f"could not read {path}: {exc}") from exc
    first = text.splitlines()[0] if text.strip() else ""
    if not first.strip():
        raise DataInputError(f"data file {path} has no header line")
    return next(csv.reader(io.StringIO(first), delimiter=separator))


def check_columns(
    names: list[str], path: Path, config: TrainConfig | None = None, require_named: bool = True
) -> None:
    """Duplicate and reserved column names; with a config (and `require_named`), every column it
    names exists (inside the flow the raw gate says that, as one of its expectations)."""
    seen, duplicates = set(), []
    for name in names:
        if name and name in seen and name not in duplicates:
            duplicates.append(name)
        seen.add(name)
    if duplicates:
        raise DataInputError(
            f"{path} has duplicate column names: {', '.join(map(repr, duplicates))}; every column "
            "needs its own name (a repeated target column would become a feature equal to the "
            "label)"
        )
    reserved = [n for n in names if n in RESERVED_COLUMNS]
    if config is not None:
        reserved += [
            n for n in names if n in {f"__{c}" for c in (config.group, config.time_column) if c}
        ]
    if reserved:
        raise DataInputError(
            f"{path}: column name(s) {', '.join(map(repr, reserved))} are reserved for internal "
            "use; "
            "rename them"
        )
    if config is None or not require_named:
        return
    named = {
        "--target": [config.target],
        "--id": [config.id],
        "--group": [config.group],
        "--split-by": [config.time_column],
        "--drop": config.drop,
        "--categorical": config.categorical,
    }
    for flag, columns in named.items():
        missing = [c for c in columns if c and c not in seen]
        if missing:
            raise DataInputError(
                f"{flag}: column(s) {', '.join(map(repr, missing))} not found in {path}; columns "
                "are: "
                f"{', '.join(names[:30])}{', ...' if len(names) > 30 else ''}"
            )


def writable(url: str, flag: str) -> None:
    """A local output location must be creatable and writable (object stores are checked when
    written to)."""
    target = location(url)
    if not is_local(target):
        return
    path = local_path(target)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"{flag} {url!r}: {existing} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        # a probe of its own: two runs starting on one output must not delete each other's
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {url!r} is not writable: {exc}") from exc


def preflight_training(config: TrainConfig) -> None:
    """Everything about a training run that can be known in about a second."""
    writable(config.runs_dir, "--runs-dir")
    if config.store:
        writable(config.store, "--store")
    if config.data in BUILTINS:
        return
    path = existing_file(config.data)
    if config.target is None:
        raise ConfigError("no target column given: set --target COLUMN")
    check_columns(header(path, config.sep), path, config)
