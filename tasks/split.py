"""Stage 2: train / validation / test split, before anything is fitted.

Rows are split as groups: identical feature rows (exact duplicates, also those with conflicting
labels) form one group, or the `--group` column's values do, so no group spans two splits. The
split is stratified on each group's label. `--split-by time:COL` cuts on time instead (rows with
the same timestamp stay together). The validation split is halved, stratified, into `stop` (early
stopping) and `tune` (threshold tuning and strategy selection)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel
from sklearn.model_selection import train_test_split

from tasks import gates
from tasks.config import TrainConfig
from tasks.errors import DataInputError
from tasks.ingest import ID_COLUMN, ROW_COLUMN, TARGET_COLUMN, IngestResult
from tasks.storage import write_parquet

SPLITS = ("train", "validation", "test")
SPLIT_COLUMN = "__split"
HALF_COLUMN = "__half"  # "stop" or "tune" on validation rows, "" elsewhere


class SplitResult(BaseModel):
    assignment_path: str  # parquet: __row, __id, __y, __split, __half
    counts: dict[str, dict[str, int]]  # split -> {"rows", "positives"}
    halves: dict[str, dict[str, int]]
    method: str
    gate: dict[str, Any]


def group_keys(frame: pd.DataFrame, features: list[str], group: str | None) -> np.ndarray:
    """One key per row: rows sharing a key must land in the same split. With no features (the
    out-of-core path reads only id and target), rows sharing an id stay together."""
    if group is not None:
        return pd.util.hash_pandas_object(frame[f"__{group}"], index=False).to_numpy()
    return pd.util.hash_pandas_object(frame[features or [ID_COLUMN]], index=False).to_numpy()


def _stratified_group_split(keys: np.ndarray, y: np.ndarray, shares: tuple[float, ...], seed: int,
                            names: tuple[str, ...]) -> np.ndarray:  # fmt: skip
    """Assign each row a name from `names` with the given shares, splitting whole groups and
    stratifying on each group's label (positive if any of its rows is)."""
    groups = pd.DataFrame({"key": keys, "y": y}).groupby("key", sort=True)["y"].max()
    group_ids, group_y = groups.index.to_numpy(), groups.to_numpy()
    remaining_ids, remaining_y, remaining_share = group_ids, group_y, 1.0
    assigned: dict[Any, str] = {}
    for name, share in zip(names[:-1], shares[:-1], strict=True):
        fraction = share / remaining_share
        try:
            taken, rest, _, rest_y = train_test_split(
                remaining_ids,
                remaining_y,
                train_size=fraction,
                stratify=remaining_y,
                random_state=seed,
            )
        except ValueError as exc:
            counts = np.bincount(group_y.astype(int), minlength=2)
            raise DataInputError(
                f"the data is too small for a stratified split with shares {shares}: "
                f"{counts[1]} positive and {counts[0]} negative groups of rows ({exc})"
            ) from exc
        assigned.update(dict.fromkeys(taken, name))
        remaining_ids, remaining_y, remaining_share = rest, rest_y, remaining_share - share
    assigned.update(dict.fromkeys(remaining_ids, names[-1]))
    return pd.Series(keys).map(assigned).to_numpy()


def _time_split(times: pd.Series, shares: tuple[float, float, float]) -> np.ndarray:
    """Earliest rows to train, latest to test; equal timestamps never straddle a boundary."""
    order = pd.to_datetime(times) if not pd.api.types.is_numeric_dtype(times) else times
    per_time = order.value_counts().sort_index()
    cumulative = per_time.cumsum() / per_time.sum()
    bounds = np.cumsum(shares)[:-1]
    labels = np.where(cumulative.to_numpy() <= bounds[0] + 1e-12, "train",
                      np.where(cumulative.to_numpy() <= bounds[1] + 1e-12, "validation", "test"))  # fmt: skip
    return order.map(dict(zip(per_time.index, labels, strict=True))).to_numpy()


def assign_splits(frame: pd.DataFrame, features: list[str], config: TrainConfig) -> pd.DataFrame:
    y = frame[TARGET_COLUMN].to_numpy()
    keys = group_keys(frame, features, config.group)
    if config.time_column:
        split = _time_split(frame[f"__{config.time_column}"], config.split)
    else:
        split = _stratified_group_split(keys, y, config.split, config.seed, SPLITS)
    half = np.full(len(frame), "", dtype=object)
    in_validation = split == "validation"
    if in_validation.any():
        half[in_validation] = _stratified_group_split(
            keys[in_validation], y[in_validation], (0.5, 0.5), config.seed + 1, ("stop", "tune")
        )
    return pd.DataFrame(
        {
            ROW_COLUMN: frame[ROW_COLUMN].to_numpy(),
            ID_COLUMN: frame[ID_COLUMN].to_numpy(),
            TARGET_COLUMN: y,
            SPLIT_COLUMN: split.astype(str),
            HALF_COLUMN: half.astype(str),
            "__key": keys,
        }
    )


def split_facts(
    assignment: pd.DataFrame, config: TrainConfig, group_values: pd.Series | None
) -> pd.DataFrame:
    """One row of cross-split facts for the split gate."""
    y = assignment[TARGET_COLUMN]
    overall = y.mean()
    facts: dict[str, float] = {}
    for name, share in zip(SPLITS, config.split, strict=True):
        part = assignment[assignment[SPLIT_COLUMN] == name]
        rate = part[TARGET_COLUMN].mean() if len(part) else 0.0
        facts[f"{name}_positive_rate_gap"] = abs(rate - overall)
        facts[f"{name}_share_gap"] = abs(len(part) / len(assignment) - share)
        facts[f"{name}_positives"] = int(part[TARGET_COLUMN].sum())
    facts["rows_in_two_splits"] = int(
        (assignment.groupby(ID_COLUMN)[SPLIT_COLUMN].nunique() > 1).sum()
    )
    facts["duplicate_groups_in_two_splits"] = int(
        (assignment.groupby("__key")[SPLIT_COLUMN].nunique() > 1).sum()
    )
    if group_values is not None:
        by_group = (
            pd.Series(assignment[SPLIT_COLUMN].to_numpy())
            .groupby(group_values.to_numpy())
            .nunique()
        )
        facts["groups_in_two_splits"] = int((by_group > 1).sum())
    return pd.DataFrame([facts])


@task(name="split", cache_policy=NO_CACHE)
def split(config: TrainConfig, ingest: IngestResult, work_dir: Path) -> SplitResult:
    extras = [f"__{c}" for c in (config.group, config.time_column) if c]
    # out of core: split on (id, target) only, never loading the features
    columns = [ROW_COLUMN, ID_COLUMN, TARGET_COLUMN, *extras] if ingest.streaming else None
    frame = pd.read_parquet(ingest.raw_path, columns=columns)
    assignment = assign_splits(frame, [] if ingest.streaming else ingest.roles.features, config)
    group_values = frame[f"__{config.group}"] if config.group else None
    facts = split_facts(assignment, config, group_values)
    report = gates.validate(
        "split", "split", {"facts": facts},
        {"splits": list(SPLITS), "group": config.group},
        {"split_ratio_tolerance": config.split_ratio_tolerance,
         "min_positives_per_split": config.min_positives_per_split},
    )  # fmt: skip
    counts = {
        name: {"rows": int((part := assignment[assignment[SPLIT_COLUMN] == name]).shape[0]),
               "positives": int(part[TARGET_COLUMN].sum())}
        for name in SPLITS
    }  # fmt: skip
    halves = {
        name: {"rows": int((part := assignment[assignment[HALF_COLUMN] == name]).shape[0]),
               "positives": int(part[TARGET_COLUMN].sum())}
        for name in ("stop", "tune")
    }  # fmt: skip
    path = write_parquet(work_dir / "split.parquet", assignment.drop(columns="__key"))
    method = (
        f"time:{config.time_column}"
        if config.time_column
        else (
            f"stratified by group {config.group}"
            if config.group
            else "stratified, rows sharing an id kept together"
            if ingest.streaming
            else "stratified, duplicates kept together"
        )
    )
    return SplitResult(assignment_path=str(path), counts=counts, halves=halves, method=method,
                       gate=report.as_dict())  # fmt: skip
