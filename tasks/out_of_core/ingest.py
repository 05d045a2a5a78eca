"""Ingest in batches: `tasks.ingest.ingest` for data larger than the memory budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from tasks import gates
from tasks.config import TrainConfig
from tasks.errors import DataInputError
from tasks.ingest import (
    HASH_COLUMN,
    IngestResult,
    check_values,
    duplicates_from_hashes,
    normalise,
    raw_gate,
    raw_row_bindings,
    resolve_positive,
    resolve_roles,
)
from tasks.io import existing_file, io_task_options
from tasks.out_of_core import batches
from tasks.out_of_core.batches import BatchSource, reason
from tasks.preflight import check_columns, header
from tasks.storage import atomic_path, sha256_of


@task(name="ingest", **io_task_options())
def ingest(config: TrainConfig, work_dir: Path) -> IngestResult:
    """`tasks.ingest.ingest` in batches (see the package docstring)."""
    why = reason(config) or "out of core by request"
    path = existing_file(config.data)
    check_columns(header(path, config.sep), path, config, require_named=False)
    source = BatchSource(path, config.sep)
    source.drop_empty_trailing_columns()
    roles, declared = resolve_roles(pd.DataFrame(columns=source.columns), config, None, None)
    row_bindings = raw_row_bindings(roles, config, declared)

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
    table_report = raw_gate(keys, roles, config, declared, rows=False)
    target = keys[roles.target]
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
        notes=[*source.notes, f"out of core, in batches of {batches.BATCH_ROWS:,} rows: {why}"],
        roles=roles,
        positive_label=positive,
        negative_label=negative,
        target_dtype=target_dtype,
        n_rows=start,
        class_counts={positive: int(y.sum()), negative: int(len(y) - y.sum())},
        exact_duplicate_rows=exact,
        conflicting_duplicate_rows=conflicting,
        gate=report.as_dict(),
        out_of_core=True,
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
