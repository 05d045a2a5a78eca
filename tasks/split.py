"""Stage 2: train / validation / test split, before anything is fitted.

Rows are split as connected components: rows with the same feature values (the normalised row
hash, `__hash`; exact duplicates and rows with conflicting labels alike) are linked, and with
`--group COL` so are rows sharing a group value; a component never spans two parts. Components
are assigned largest first to the part whose quota of positives and negatives is furthest from
met, then single rows fill the remaining quotas exactly, so the achieved shares and positives per
part come as close to the requested ones as the components allow. When proportional shares
would leave a part below its minimum of positives (`--min-positives-per-split`, and
`--min-positives-per-half` for the two validation halves), positives are moved there from the
largest part first. Validation is cut into `stop` (early stopping) and `tune` (threshold tuning
and selection) in the same assignment. `--split-by time:COL` cuts on time instead (rows with the
same timestamp stay together); feature duplicates across the time splits are reported, not
refused. Both data paths (in memory and out of core) run this code on (row, id, label, hash)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from tasks import gates
from tasks.columns import HALF_COLUMN, SPLIT_COLUMN
from tasks.config import TrainConfig
from tasks.errors import DataInputError
from tasks.ingest import HASH_COLUMN, ID_COLUMN, ROW_COLUMN, TARGET_COLUMN, IngestResult
from tasks.storage import write_parquet

SPLITS = ("train", "validation", "test")
PARTS = ("train", "stop", "tune", "test")  # validation = stop + tune


class SplitResult(BaseModel):
    assignment_path: str  # parquet: __row, __id, __y, __split, __half
    counts: dict[str, dict[str, int]]  # split -> {"rows", "positives"}
    halves: dict[str, dict[str, int]]
    shares: dict[str, float]  # achieved share of rows per split
    method: str
    duplicates_across_splits: int  # feature-row groups spanning two splits (0 unless time split)
    gate: dict[str, Any]


def components(hashes: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """A component id per row: rows sharing a feature-row hash, or a group value (missing group
    values link nothing), are connected, transitively."""
    hash_codes = pd.factorize(hashes)[0]
    if groups is None:
        return hash_codes
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    group_codes = pd.factorize(groups)[0]
    linked = group_codes >= 0
    n_hash, n_group = hash_codes.max() + 1, max(group_codes.max() + 1, 0)
    size = n_hash + n_group
    edges = coo_matrix(
        (np.ones(int(linked.sum())), (hash_codes[linked], n_hash + group_codes[linked])),
        shape=(size, size),
    )
    _, labels = connected_components(edges, directed=False)
    return pd.factorize(labels[hash_codes])[0]


def _round_to_total(wanted: np.ndarray, total: int) -> np.ndarray:
    """Whole counts close to `wanted` (non-negative) that sum to `total` (largest remainder)."""
    wanted = np.clip(np.asarray(wanted, dtype=np.float64), 0, None)
    if wanted.sum() <= 0:
        wanted = np.ones_like(wanted)
    scaled = wanted * total / wanted.sum()
    counts = np.floor(scaled).astype(np.int64)
    for i in np.argsort(-(scaled - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return counts


def positive_quotas(
    positives: int, shares: tuple[float, ...], minimums: tuple[int, ...]
) -> np.ndarray:
    """Positives per part: proportional to the shares, then topped up to each part's minimum
    from the parts with the most to spare (never taking one below its own minimum)."""
    quota = _round_to_total(np.asarray(shares) * positives, positives)
    for part in np.argsort(shares):  # the smallest parts first
        while quota[part] < minimums[part]:
            spare = quota - np.asarray(minimums)
            spare[part] = -1
            donor = int(np.argmax(spare))
            if spare[donor] <= 0:
                return quota  # not enough positives for every minimum: the gate says so
            quota[donor] -= 1
            quota[part] += 1
    return quota


def assign_components(
    component: np.ndarray,
    y: np.ndarray,
    shares: tuple[float, ...],
    minimums: tuple[int, ...],
    seed: int,
) -> np.ndarray:
    """Part index per row. Multi-row components go largest first (seeded order among equals) to
    the part whose positive and negative quotas are furthest from met, weighted by the
    component's own mix; single rows then fill what each quota still lacks, class by class."""
    rng = np.random.default_rng(seed)
    rows = np.bincount(component)
    positives = np.bincount(component, weights=y).astype(np.int64)
    n_pos = int(positives.sum())
    n_neg = int(rows.sum()) - n_pos
    quota = np.stack(
        [
            _round_to_total(np.asarray(shares) * n_neg, n_neg),
            positive_quotas(n_pos, shares, minimums),
        ]
    ).astype(np.float64)  # [negatives, positives] x parts
    have = np.zeros_like(quota)
    part = np.full(len(rows), -1, dtype=np.int64)
    tiebreak = rng.permutation(len(rows))
    multi = np.flatnonzero(rows > 1)
    order = multi[np.lexsort((tiebreak[multi], -rows[multi]))]
    scale = 1.0 / np.maximum([n_neg, n_pos], 1)
    for c in order.tolist():
        mix = np.array([rows[c] - positives[c], positives[c]], dtype=np.float64) * scale
        best = int(np.argmax(mix @ (quota - have)))
        part[c] = best
        have[:, best] += [rows[c] - positives[c], positives[c]]
    for label in (0, 1):
        singles = rng.permutation(np.flatnonzero((rows == 1) & (positives == label)))
        counts = _round_to_total(quota[label] - have[label], len(singles))
        part[singles] = np.repeat(np.arange(len(shares)), counts)
    return part[component]


def _time_split(times: pd.Series, shares: tuple[float, float, float]) -> np.ndarray:
    """Earliest rows to train, latest to test; equal timestamps never straddle a boundary."""
    order = pd.to_datetime(times) if not pd.api.types.is_numeric_dtype(times) else times
    per_time = order.value_counts().sort_index()
    cumulative = (per_time.cumsum() / per_time.sum()).to_numpy()
    bounds = np.cumsum(shares)[:-1]
    labels = np.where(
        cumulative <= bounds[0] + 1e-12,
        "train",
        np.where(cumulative <= bounds[1] + 1e-12, "validation", "test"),
    )
    return order.map(dict(zip(per_time.index, labels, strict=True))).to_numpy()


def assign_splits(frame: pd.DataFrame, config: TrainConfig) -> pd.DataFrame:
    """The split and validation half of every row of `frame` (__row, __id, __y, __hash and the
    group/time column)."""
    y = frame[TARGET_COLUMN].to_numpy().astype(np.int64)
    groups = frame[f"__{config.group}"].to_numpy() if config.group else None
    component = components(frame[HASH_COLUMN].to_numpy(), groups)
    per_split, per_half = config.min_positives_per_split, config.min_positives_per_half
    half = np.full(len(frame), "", dtype=object)
    if config.time_column:
        split = _time_split(frame[f"__{config.time_column}"], config.split)
        inside = split == "validation"
        if inside.any():
            halves = assign_components(
                pd.factorize(component[inside])[0],
                y[inside],
                (0.5, 0.5),
                (per_half, per_half),
                config.seed + 1,
            )
            half[inside] = np.array(["stop", "tune"], dtype=object)[halves]
    else:
        train, validation, test = config.split
        shares = (train, validation / 2, validation / 2, test)
        parts = assign_components(
            component, y, shares, (per_split, per_half, per_half, per_split), config.seed
        )
        names = np.array(PARTS, dtype=object)[parts]
        split = np.where(np.isin(names, ("stop", "tune")), "validation", names)
        half = np.where(split == "validation", names, "")
    return pd.DataFrame(
        {
            ROW_COLUMN: frame[ROW_COLUMN].to_numpy(),
            ID_COLUMN: frame[ID_COLUMN].to_numpy(),
            TARGET_COLUMN: y,
            SPLIT_COLUMN: split.astype(str),
            HALF_COLUMN: half.astype(str),
            HASH_COLUMN: frame[HASH_COLUMN].to_numpy(),
        }
    )


def spanning(keys: pd.Series | np.ndarray, labels: pd.Series | np.ndarray) -> int:
    """How many distinct keys occur with more than one label (e.g. in two splits)."""
    pairs = pd.DataFrame({"key": np.asarray(keys), "label": np.asarray(labels)})
    return int((pairs.groupby("key")["label"].nunique() > 1).sum())


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
    for name in ("stop", "tune"):
        facts[f"{name}_positives"] = int(y[assignment[HALF_COLUMN] == name].sum())
    facts["rows_in_two_splits"] = spanning(assignment[ID_COLUMN], assignment[SPLIT_COLUMN])
    facts["duplicate_groups_in_two_splits"] = spanning(
        assignment[HASH_COLUMN], assignment[SPLIT_COLUMN]
    )
    if group_values is not None:
        facts["groups_in_two_splits"] = spanning(group_values.to_numpy(), assignment[SPLIT_COLUMN])
    return pd.DataFrame([facts])


def _method(config: TrainConfig) -> str:
    if config.time_column:
        return f"time:{config.time_column}"
    linked = (
        f"rows sharing feature values or a value of {config.group}"
        if config.group
        else ("rows sharing feature values")
    )
    return f"stratified; {linked} kept in one split (largest groups first)"


def _tallies(
    assignment: pd.DataFrame, column: str, names: tuple[str, ...]
) -> dict[str, dict[str, int]]:
    y = assignment[TARGET_COLUMN]
    return {
        name: {
            "rows": int((assignment[column] == name).sum()),
            "positives": int(y[assignment[column] == name].sum()),
        }
        for name in names
    }


@task(name="split", cache_policy=NO_CACHE)
def split(config: TrainConfig, ingest: IngestResult, work_dir: Path) -> SplitResult:
    """Both data paths read only the row keys: row, id, label, feature-row hash, group/time."""
    extras = [f"__{c}" for c in (config.group, config.time_column) if c]
    columns = [ROW_COLUMN, ID_COLUMN, TARGET_COLUMN, HASH_COLUMN, *extras]
    frame = pd.read_parquet(ingest.raw_path, columns=columns)
    if config.time_column:
        missing = frame[f"__{config.time_column}"].isna()
        if missing.any():
            raise DataInputError(
                f"--split-by {config.split_by}: {int(missing.sum())} rows have no time value "
                f"(rows {', '.join(map(str, frame.loc[missing, ROW_COLUMN].head(5)))}"
                f"{', ...' if missing.sum() > 5 else ''}); fill or drop them"
            )
    if config.time_column and not pd.api.types.is_numeric_dtype(frame[f"__{config.time_column}"]):
        try:
            frame[f"__{config.time_column}"] = pd.to_datetime(
                frame[f"__{config.time_column}"], format="mixed"
            )
        except (ValueError, TypeError, OverflowError) as exc:
            raise DataInputError(
                f"--split-by {config.split_by}: the column has values that are not dates or times "
                f"({exc})"
            ) from exc
    assignment = assign_splits(frame, config)
    group_values = frame[f"__{config.group}"] if config.group else None
    facts = split_facts(assignment, config, group_values)
    report = gates.validate(
        "split",
        "split",
        {"facts": facts},
        {
            "splits": list(SPLITS),
            "halves": ["stop", "tune"],
            "group": config.group,
            "random_split": not config.time_column,
        },
        {
            "split_ratio_tolerance": config.split_ratio_tolerance,
            "min_positives_per_split": config.min_positives_per_split,
            "min_positives_per_half": config.min_positives_per_half,
        },
    )
    counts = _tallies(assignment, SPLIT_COLUMN, SPLITS)
    path = write_parquet(work_dir / "split.parquet", assignment.drop(columns=HASH_COLUMN))
    return SplitResult(
        assignment_path=str(path),
        counts=counts,
        halves=_tallies(assignment, HALF_COLUMN, ("stop", "tune")),
        shares={name: c["rows"] / len(assignment) for name, c in counts.items()},
        method=_method(config),
        duplicates_across_splits=int(facts["duplicate_groups_in_two_splits"].iloc[0]),
        gate=report.as_dict(),
    )
