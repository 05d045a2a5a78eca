"""Stage 1: load the data, resolve the target and feature columns, run the raw gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from pydantic import BaseModel

from tasks import gates
from tasks.columns import HASH_COLUMN, ID_COLUMN, ROW_COLUMN, TARGET_COLUMN
from tasks.config import TrainConfig
from tasks.errors import DataInputError
from tasks.io import io_task_options, load_source
from tasks.preflight import check_columns, header
from tasks.storage import write_parquet

MISSING_LEVEL = "<NA>"  # how a missing category is keyed in frequencies and drift tables
NUMERIC_DTYPES = [
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "UInt8",
    "UInt16",
    "UInt32",
    "UInt64",
    "float16",
    "float32",
    "float64",
    "Float32",
    "Float64",
    "bool",
    "boolean",
]


class ColumnRoles(BaseModel):
    target: str
    id: str | None
    numeric: list[str]
    categorical: list[str]

    @property
    def features(self) -> list[str]:
        return self.numeric + self.categorical


class IngestResult(BaseModel):
    raw_path: str
    source: str
    source_sha256: str
    notes: list[str]
    roles: ColumnRoles
    positive_label: str
    negative_label: str
    target_dtype: str  # labels are matched as strings; predictions cast them back to this
    n_rows: int
    class_counts: dict[str, int]
    exact_duplicate_rows: int
    conflicting_duplicate_rows: int
    gate: dict[str, Any]
    out_of_core: bool = False  # read and written in batches (`tasks.out_of_core`)


def resolve_roles(
    frame: pd.DataFrame, config: TrainConfig, default_target: str | None, default_id: str | None
) -> tuple[ColumnRoles, list[str]]:
    target = config.target or default_target
    if target is None:
        raise DataInputError("no target column given: set --target COLUMN")
    id_column = config.id if config.id is not None else default_id
    excluded = {target, id_column, config.group, config.time_column, *config.drop} - {None}
    declared = [
        c
        for c in (id_column, config.group, config.time_column, *config.drop, *config.categorical)
        if c
    ]
    features = [c for c in frame.columns if c not in excluded]
    categorical = [c for c in features if c in set(config.categorical)]
    numeric = [c for c in features if c not in set(categorical)]
    return ColumnRoles(
        target=target, id=id_column, numeric=numeric, categorical=categorical
    ), declared


def resolve_positive(target: pd.Series, positive: str | None) -> tuple[str, str, pd.Series]:
    """Pick the positive label (matched by its string form; default: the minority class) and
    return (positive, negative, 0/1 series)."""
    as_text = target.astype(str)
    counts = as_text.value_counts()
    labels = sorted(counts.index.tolist())
    if positive is not None:
        folded = [label for label in counts.index if label.lower() == positive.strip().lower()]
        if pd.api.types.is_bool_dtype(target) and positive not in counts.index and len(folded) == 1:
            positive = folded[0]  # --positive true for a True/False column
        if positive not in counts.index:
            raise DataInputError(
                f"positive label {positive!r} is not a value of the target; "
                f"values are: {', '.join(labels)}"
            )
    else:
        if counts.iloc[0] == counts.iloc[-1]:
            raise DataInputError(
                f"the classes are tied ({', '.join(f'{k}: {v}' for k, v in counts.items())}): "
                "name the positive class with --positive"
            )
        positive = str(counts.idxmin())
    negative = next(label for label in labels if label != positive)
    return positive, negative, (as_text == positive).astype("int8")


def canonical_categories(values: pd.Series) -> pd.Series:
    """Category levels as strings in one form, whatever dtype the reader chose: whole numbers print
    as integers ('1', not '1.0', which a column of codes becomes once one value is missing),
    other numbers by their shortest repr, missing stays missing."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numbers = values.astype("float64")
        # each distinct value is formatted once (a code column has a few hundred of them)
        distinct, position = np.unique(numbers.to_numpy(), return_inverse=True)
        finite = np.isfinite(distinct)
        whole = finite & (distinct == np.round(distinct)) & (np.abs(distinct) < 2**53)
        labels = np.array(
            [str(int(v)) if w else repr(float(v)) for v, w in zip(distinct, whole, strict=True)],
            dtype=object,
        )
        text = pd.Series(labels[position.ravel()], index=values.index, dtype=object)
        return text.where(numbers.notna(), None).astype("string")
    return values.astype("string")


def beyond_float32(values: pd.Series) -> pd.Series:
    """True where a present value is not finite once cast to float32, the network's input type
    (inf, and magnitudes beyond ~3.4e38 such as 1e300); missing values are not flagged."""
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
    with np.errstate(over="ignore"):
        return pd.Series(
            ~np.isnan(numbers) & ~np.isfinite(numbers.astype(np.float32)), index=values.index
        )


def check_values(
    frame: pd.DataFrame,
    roles: ColumnRoles,
    config: TrainConfig,
    first_row: int = 0,
    levels: dict[str, set] | None = None,
) -> None:
    """Values no gate should let through silently, named with their column and rows: numbers that
    are not finite as float32 (inf, 1e300: the network would see inf or NaN), missing ids, and
    categorical columns with more than --max-categories levels (their one-hot inputs would not
    fit in memory). `levels` accumulates distinct levels over batches (the out-of-core path)."""
    problems = []
    for column in roles.numeric:
        if column in frame and pd.api.types.is_numeric_dtype(frame[column]):
            bad = beyond_float32(frame[column])
            if bad.any():
                rows = (np.flatnonzero(bad.to_numpy()) + first_row)[:5].tolist()
                examples = ", ".join(map(str, frame.loc[bad, column].head(3).tolist()))
                problems.append(
                    f"column '{column}' has {int(bad.sum())} value(s) that are not finite numbers "
                    f"({examples}) in rows {rows}{' ...' if bad.sum() > 5 else ''}"
                )
    if roles.id and roles.id in frame and frame[roles.id].isna().any():
        missing = frame[roles.id].isna()
        rows = (np.flatnonzero(missing.to_numpy()) + first_row)[:5].tolist()
        problems.append(
            f"id column '{roles.id}' is empty in {int(missing.sum())} row(s) (rows {rows}); "
            "every row needs an id"
        )
    for column in roles.categorical:
        if column not in frame:
            continue
        seen = set(frame[column].dropna().unique().tolist())
        if levels is not None:
            levels.setdefault(column, set()).update(list(seen)[: config.max_categories + 1])
            seen = levels[column]
        if len(seen) > config.max_categories:
            problems.append(
                f"categorical column '{column}' has more than {config.max_categories} levels "
                f"({len(seen)}{'+' if levels is not None else ''}); its one-hot inputs would not "
                "fit "
                "in memory: drop it (--drop), bin it, or raise --max-categories"
            )
    if problems:
        raise DataInputError("bad values in the data:\n  - " + "\n  - ".join(problems))


class LeakWatch:
    """Finds feature columns that take exactly two values mapping one-to-one onto the classes of
    the training rows: a copy or a recoding of the label, which would make every strategy look
    perfect. Fed batch by batch (or once); tracks only columns still two-valued."""

    def __init__(self, columns: list[str]):
        self.pairs: dict[str, set] = {c: set() for c in columns}

    def update(self, frame: pd.DataFrame, y: np.ndarray) -> None:
        counts = distinct_counts(frame, list(self.pairs))
        for column in [c for c, n in counts.items() if n > 2]:
            del self.pairs[column]  # three values or more in this batch: no copy of the label
        for column in list(self.pairs):
            values = frame[column]
            if values.isna().any():
                del self.pairs[column]
                continue
            self.pairs[column].update(
                zip(values.astype(str).to_numpy(), np.asarray(y).tolist(), strict=True)
            )
            if len({v for v, _ in self.pairs[column]}) > 2:
                del self.pairs[column]

    def leaks(self) -> list[str]:
        found = []
        for column, pairs in self.pairs.items():
            values, labels = {v for v, _ in pairs}, {label for _, label in pairs}
            if len(values) == 2 and len(labels) == 2 and len(pairs) == 2:
                found.append(column)
        return found

    def check(self) -> None:
        leaks = self.leaks()
        if leaks:
            raise DataInputError(
                f"column(s) {', '.join(map(repr, leaks))} take two values that map one-to-one "
                "onto the classes "
                "on the training rows: they leak the label (a copy or recoding of the target?); "
                "drop them "
                "with --drop"
            )


def distinct_counts(frame: pd.DataFrame, columns: list[str]) -> dict[str, int]:
    """Distinct non-missing values per column; numeric columns counted together in one
    vectorised pass (sort each column, count the steps), others one by one."""
    dtypes = frame.dtypes
    numeric = [c for c in columns if pd.api.types.is_numeric_dtype(dtypes[c])]
    counts: dict[str, int] = {}
    if numeric:
        matrix = np.sort(frame[numeric].to_numpy(dtype="float64", na_value=np.nan), axis=0)
        present = ~np.isnan(matrix)  # NaNs sort last
        steps = (np.diff(matrix, axis=0) != 0) & present[1:]
        distinct = present[:1].astype(int) + steps.sum(axis=0) if len(matrix) else present.sum(0)
        counts.update(zip(numeric, np.asarray(distinct).reshape(-1).tolist(), strict=True))
    for column in columns:
        if column not in counts:
            counts[column] = int(frame[column].nunique(dropna=True))
    return {column: counts[column] for column in columns}


def is_whole(values: np.ndarray) -> bool:
    """Whether every (non-missing) value is a whole number: counts, flags, integer codes."""
    return bool(np.all(values == np.round(values)))


def row_hashes(frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> np.ndarray:
    """One 8-byte hash per row of its feature values in normal form (numerics as float64 with
    -0.0 as 0.0 and one NaN, categories as canonical strings), in the given column order. The same
    row gives the same hash whichever dtype a reader inferred, batch by batch or whole."""
    parts: dict[str, Any] = {}
    for column in numeric:
        values = frame[column].to_numpy(dtype="float64") + 0.0
        parts[column] = np.where(np.isnan(values), np.nan, values)
    for column in categorical:
        text = canonical_categories(frame[column])
        parts[column] = text.astype(object).where(text.notna(), "\x00" + MISSING_LEVEL).to_numpy()
    if not parts:
        return np.zeros(len(frame), dtype="uint64")
    return pd.util.hash_pandas_object(pd.DataFrame(parts), index=False).to_numpy()


def duplicates_from_hashes(keys: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """(exact duplicate rows, rows in feature-duplicate groups with conflicting labels) from one
    feature hash and one label per row."""
    pairs = pd.DataFrame({"k": keys, "y": labels})
    exact = int(pairs.duplicated().sum())
    labels_per_key = pairs.groupby("k")["y"].nunique()
    conflicting = int(pairs["k"].isin(labels_per_key.index[labels_per_key > 1]).sum())
    return exact, conflicting


def normalise(
    frame: pd.DataFrame, roles: ColumnRoles, y: np.ndarray, first_row: int, config: TrainConfig
) -> pd.DataFrame:
    """The raw copy every later stage reads: canonical string categoricals, float64 numerics,
    `__hash` (row_hashes), `__y`, `__id` (the id column, or the source row position), `__row` and
    the group/time columns."""
    normalised = frame[roles.features].copy()
    for column in roles.categorical:
        normalised[column] = canonical_categories(frame[column])
    for column in roles.numeric:
        normalised[column] = frame[column].astype("float64")
    normalised[HASH_COLUMN] = row_hashes(normalised, roles.numeric, roles.categorical)
    rows = np.arange(first_row, first_row + len(frame), dtype="int64")
    normalised[TARGET_COLUMN] = y
    normalised[ID_COLUMN] = frame[roles.id].to_numpy() if roles.id else rows
    normalised[ROW_COLUMN] = rows
    for extra in (config.group, config.time_column):
        if extra:
            normalised[f"__{extra}"] = frame[extra].to_numpy()
    return normalised


def raw_gate(
    frame: pd.DataFrame, roles: ColumnRoles, config: TrainConfig, declared: list[str], rows: bool
) -> gates.GateReport:
    """The raw gate's table-wide checks (the target is there and binary, enough of each class,
    unique ids) and, with `rows`, its per-row checks (declared columns, numeric types,
    completeness). The out-of-core path runs the per-row checks batch by batch
    (`raw_row_bindings`) and the table-wide ones here on the target and id columns only."""
    present = roles.target in frame.columns
    target = frame[roles.target] if present else pd.Series(dtype=object)
    binary = present and target.nunique() == 2 and not target.isna().any()
    facts = pd.DataFrame({"minority_count": [int(target.value_counts().min()) if binary else 0]})
    bindings = raw_row_bindings(roles, config, declared) if rows else raw_row_bindings(roles)
    bindings |= {"target_present": present, "binary_target": binary, "id": roles.id}
    return gates.validate(
        "raw",
        "raw",
        {"data": frame, "facts": facts},
        bindings,
        {"min_class_count": config.min_class_count},
    )


def raw_row_bindings(
    roles: ColumnRoles, config: TrainConfig | None = None, declared: list[str] | None = None
) -> dict[str, Any]:
    """The raw suite's per-row parameters; without a config, per-row checks are off."""
    return {
        "target": roles.target,
        "target_present": False,
        "binary_target": False,
        "declared_columns": declared or [],
        "numeric_features": roles.numeric if config else [],
        "numeric_dtypes": NUMERIC_DTYPES,
        "complete_features": roles.features if config and config.impute == "none" else [],
        "id": None,
    }


@task(name="ingest", **io_task_options())
def ingest(config: TrainConfig, work_dir: Path) -> IngestResult:
    """Load `config.data`, validate it with the raw gate and write a normalised parquet copy
    (features, `__y`, `__id`, `__row`) into `work_dir`."""
    loaded = load_source(config.data, config.sep)
    frame = loaded.frame
    builtin = loaded.builtin
    if builtin is None:  # the names as written: a reader renames duplicates ('x', 'x.1')
        path = Path(loaded.source)
        check_columns(header(path, config.sep), path, config, require_named=False)
    roles, declared = resolve_roles(
        frame, config, builtin.target if builtin else None, builtin.id if builtin else None
    )
    report = raw_gate(frame, roles, config, declared, rows=True)

    check_values(frame, roles, config)
    positive_default = (
        config.positive if config.positive is not None else (builtin.positive if builtin else None)
    )
    positive, negative, y = resolve_positive(frame[roles.target], positive_default)
    normalised = normalise(frame, roles, y.to_numpy(), 0, config)
    exact, conflicting = duplicates_from_hashes(normalised[HASH_COLUMN].to_numpy(), y.to_numpy())
    raw_path = write_parquet(work_dir / "raw.parquet", normalised)

    counts = {positive: int(y.sum()), negative: int(len(y) - y.sum())}
    return IngestResult(
        raw_path=str(raw_path),
        source=loaded.source,
        source_sha256=loaded.source_sha256,
        notes=list(loaded.notes),
        roles=roles,
        positive_label=positive,
        negative_label=negative,
        target_dtype=str(frame[roles.target].dtype),
        n_rows=len(frame),
        class_counts=counts,
        exact_duplicate_rows=exact,
        conflicting_duplicate_rows=conflicting,
        gate=report.as_dict(),
    )
