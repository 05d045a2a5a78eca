"""Champion / challenger: should this run's model replace the registered champion?

The challenger (this run's selected model) and the champion are scored on rows neither trained
or tuned on: this run's test rows minus every row the champion saw (its training split and both
validation halves). Those rows are kept with the champion's registry entry (`seen_rows`: ids,
and the hash of each row's normalised feature values), so they match however the new file is
sorted or typed; when the data has no id column the hash decides. When the champion's rows are
unknown, or the champion cannot be read, it is kept, never replaced on a possibly leaked
comparison. Each model uses its own preprocessing and threshold; rows the champion cannot score
(a missing value it has no imputation for) are dropped from both sides and counted; category
levels it never saw get its unseen code. The challenger is promoted only when the lower bound of
the 95% paired-bootstrap interval of the metric difference exceeds `promote_margin` (at least
PROMOTION_BOOTSTRAP resamples; with --group, groups are resampled). Only a real schema break (a
column the champion needs is missing, or a numeric column is no longer numeric) promotes without
a comparison, with reason `schema_changed`. Callers hold the registry lock
(`tasks.storage.locked`) from the comparison to the registry write, so concurrent runs of one
model name decide in turn."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from upath import UPath

from tasks.compare import paired_bootstrap, row_groups
from tasks.config import TrainConfig
from tasks.drift import drift_table, overall_status, table_records
from tasks.errors import DriftError
from tasks.export import read_registry, write_registry
from tasks.features import FeatureSet, Preprocessing
from tasks.ingest import (
    HASH_COLUMN,
    ID_COLUMN,
    TARGET_COLUMN,
    IngestResult,
    beyond_float32,
    row_hashes,
)
from tasks.io import io_task_options
from tasks.predict import LoadedModel, reference_positive_rate, score
from tasks.storage import address, copy_file, location, read_parquet, write_parquet
from tasks.thresholds import parse_objective

log = logging.getLogger(__name__)
PROMOTION_BOOTSTRAP = 2000  # a promotion decision never rests on fewer resamples
SEEN_ROWS_FILE = "seen_rows.parquet"  # in the run directory
REGISTRY_METRICS = ("pr_auc", "roc_auc", "f1", "precision", "recall")  # kept per entry


def _decision(
    action: str, reason: str, champion: dict[str, Any] | None, **extra: Any
) -> dict[str, Any]:
    return {
        "action": action,
        "reason": reason,
        "champion_run_id": champion["run_id"] if champion else None,
        **extra,
    }


def seen_rows(raw_path: str, feature_set: FeatureSet, path: UPath) -> UPath:
    """Write the id and feature-row hash (over the model's own feature columns, schema order) of
    every row the model trained or tuned on: every row outside the test split."""
    prep = feature_set.preprocessing()
    ids = read_parquet(feature_set.location / "ids.parquet", columns=[ID_COLUMN, "split"])
    seen_ids = ids.loc[ids.split != "test", ID_COLUMN]
    raw = pd.read_parquet(raw_path, columns=[ID_COLUMN, *prep.feature_columns])
    raw = raw[raw[ID_COLUMN].isin(seen_ids)]
    hashes = row_hashes(raw, prep.numeric, prep.categorical)
    return write_parquet(
        path, pd.DataFrame({ID_COLUMN: raw[ID_COLUMN].to_numpy(), HASH_COLUMN: hashes})
    )


def schema_breaks(frame: pd.DataFrame, prep: Preprocessing) -> list[str]:
    """What stops the champion from scoring these rows at all: a column it needs is missing, or
    one it reads as a number is not numeric any more."""
    problems = [f"column '{c}' is missing" for c in prep.feature_columns if c not in frame.columns]
    problems += [
        f"column '{c}' is no longer numeric ({frame[c].dtype})"
        for c in prep.numeric
        if c in frame.columns and not pd.api.types.is_numeric_dtype(frame[c])
    ]
    return problems


def unscorable(frame: pd.DataFrame, prep: Preprocessing) -> pd.Series:
    """Rows the champion cannot score: a missing value where it fitted no imputation, or a
    numeric value that is not finite as the network's float32."""
    bad = pd.Series(False, index=frame.index)
    for column in prep.feature_columns:
        if column not in prep.impute_values:
            bad |= frame[column].isna()
    for column in prep.numeric:
        bad |= beyond_float32(frame[column])
    return bad


def _champion_rows(entry: dict[str, Any], model: LoadedModel, by_id: bool) -> pd.DataFrame | None:
    """The rows the champion saw: from its registry entry; for a champion registered before
    entries kept them, its feature set's ids (when ids decide and the store still has them)."""
    path = entry.get("seen_rows")
    if path and location(path).is_file():
        return read_parquet(location(path))
    ids_file = location(model.meta["training"]["ids_file"])
    if by_id and ids_file.is_file():
        ids = read_parquet(ids_file, columns=[ID_COLUMN, "split"])
        return ids.loc[ids.split != "test", [ID_COLUMN]]
    return None


def check_drift(
    train_rows: pd.DataFrame,
    champion: LoadedModel,
    config: TrainConfig,
    predicted_rate: float | None = None,
) -> dict[str, Any]:
    """This run's training rows against the champion's training statistics (and, once the
    champion has scored the new rows, its predicted-positive rate). Raises DriftError when a
    fail limit is crossed and `drift_action` is `fail`."""
    settings = config.drift_settings()
    reference = reference_positive_rate(champion.meta) if predicted_rate is not None else None
    table = drift_table(
        train_rows, champion.meta["schema"]["feature_stats"], settings, predicted_rate, reference
    )
    status = overall_status(table)
    if status == "fail" and settings.action == "fail":
        failed = table[table.status == "fail"]
        raise DriftError(
            "the new data drifted from the champion's training data beyond the fail limits: "
            + ", ".join(
                f"{r.feature} (psi {r.psi:.3f})"
                if r.kind != "prediction"
                else f"predicted positive rate {r.new:.4f} vs {r.reference:.4f}"
                for r in failed.itertuples()
            )
        )
    if status != "ok":
        log.warning("drift against the champion's training data: %s", status)
    return {"status": status, "table": table_records(table)}


@task(name="champion-challenger", cache_policy=NO_CACHE)
def challenge(
    config: TrainConfig,
    model_name: str,
    feature_set: FeatureSet,
    ingested: IngestResult,
    branches_dir: UPath,
    selected: dict[str, Any],
) -> dict[str, Any]:
    """Compare the selected model with the registry's champion on rows neither trained or tuned
    on; the decision says promote or keep, and why."""
    raw_path, id_column = ingested.raw_path, ingested.roles.id
    registry = read_registry(config.registry_dir, model_name)
    champion = (registry or {}).get("champion")
    if champion is None:
        return _decision("promote", "first model of this name", None)
    try:
        model = LoadedModel(location(champion["model_dir"]))
    except Exception as exc:  # a missing or unreadable champion is never replaced blindly
        log.warning("champion %s cannot be read (%s); keeping it", champion["run_id"], exc)
        return _decision(
            "keep", "champion_unreadable", champion, details=[f"{type(exc).__name__}: {exc}"]
        )
    prep = model.prep

    raw = pd.read_parquet(raw_path)
    ids = read_parquet(feature_set.location / "ids.parquet", columns=[ID_COLUMN, "split"])
    rows = raw[raw[ID_COLUMN].isin(set(ids.loc[ids.split == "test", ID_COLUMN]))]
    train_rows = raw[raw[ID_COLUMN].isin(set(ids.loc[ids.split == "train", ID_COLUMN]))]
    problems = schema_breaks(raw, prep)
    if problems:
        return _decision(
            "promote",
            "schema_changed",
            champion,
            details=problems,
            drift=check_drift(train_rows, model, config),
        )

    by_id = prep.id is not None and prep.id == id_column
    seen = _champion_rows(champion, model, by_id)
    if seen is None:
        return _decision(
            "keep",
            "champion_rows_unknown",
            champion,
            drift=check_drift(train_rows, model, config),
            details=[
                "the rows the champion trained and tuned on are not recorded with its registry "
                "entry, so a comparison could score it on its own training rows"
            ],
        )
    if by_id:
        excluded = rows[ID_COLUMN].isin(set(seen[ID_COLUMN]))
        matched_by = f"id column {id_column}"
    else:
        excluded = pd.Series(
            np.isin(row_hashes(rows, prep.numeric, prep.categorical), seen[HASH_COLUMN].to_numpy()),
            index=rows.index,
        )
        matched_by = "feature-row hash"
    rows = rows[~excluded.to_numpy()]
    cannot = unscorable(rows, prep)
    rows = rows[~cannot.to_numpy()]
    counts = {
        "test_rows_excluded_as_seen_by_champion": int(excluded.sum()),
        "matched_by": matched_by,
        "rows_the_champion_cannot_score": int(cannot.sum()),
        "rows": len(rows),
    }
    champion_scores = score(model, rows)["probability"].to_numpy() if len(rows) else np.zeros(0)
    rate = float(np.mean(champion_scores >= model.meta["threshold"])) if len(rows) else None
    drift_summary = check_drift(train_rows, model, config, rate)
    if rows[TARGET_COLUMN].nunique() < 2:
        return _decision(
            "keep",
            "fewer than two classes among rows neither model trained on",
            champion,
            drift=drift_summary,
            **counts,
        )

    predictions = read_parquet(branches_dir / selected["strategy"] / "predictions.parquet")
    challenger = (
        predictions[predictions.part == "test"]
        .set_index(ID_COLUMN)
        .loc[rows[ID_COLUMN], "probability"]
    )
    objective = parse_objective(config.objective)
    key, note = ("pr_auc" if config.promote_metric == "pr_auc" else "objective"), None
    if key == "objective" and model.meta["threshold_objective"] != objective.label:
        key = "pr_auc"
        note = (
            f"the champion's threshold was tuned for {model.meta['threshold_objective']}, not "
            f"{objective.label}: compared on PR-AUC"
        )
    groups = row_groups(raw_path, config.group, rows[ID_COLUMN].to_numpy())
    n_boot = max(config.bootstrap, PROMOTION_BOOTSTRAP)
    comparison = paired_bootstrap(
        rows[TARGET_COLUMN].to_numpy(),
        challenger.to_numpy(),
        champion_scores,
        selected["threshold"],
        model.meta["threshold"],
        objective,
        n_boot,
        config.seed,
        groups,
    )
    low = comparison[f"{key}_interval"]["low"]
    metric = "pr_auc" if key == "pr_auc" else objective.label
    better = low > config.promote_margin
    action = "promote" if better else "keep"
    reason = (
        f"{metric} {'better' if better else 'not reliably better'}: 95% interval lower bound "
        f"{low:+.4f} {'>' if better else '<='} margin {config.promote_margin:g}"
    )
    return _decision(
        action,
        reason,
        champion,
        metric=metric,
        comparison=comparison,
        note=note,
        drift=drift_summary,
        **counts,
    )


@task(name="record-decision", **io_task_options())
def record_decision(
    registry_dir: UPath,
    model_name: str,
    run_dir: UPath,
    chosen: dict[str, Any],
    decision: dict[str, Any],
) -> dict[str, Any]:
    """Append the completed run in `run_dir` to the registry's history; make it champion when
    promoted. The caller holds the registry lock."""
    run_id, model_dir, seen_rows_file = run_dir.name, run_dir / "model", run_dir / SEEN_ROWS_FILE
    path = registry_dir / f"{model_name}.json"
    registry = read_registry(registry_dir, model_name) or {
        "name": model_name,
        "champion": None,
        "candidates": [],
        "history": [],
    }
    seen_copy = registry_dir / model_name / "seen" / f"{run_id}.parquet"
    copy_file(seen_rows_file, seen_copy)  # kept with the registry: stores and runs may be cleaned
    entry = {
        "run_id": run_id,
        "model_dir": address(model_dir),
        "strategy": chosen["strategy"],
        "metrics": {k: chosen[k] for k in REGISTRY_METRICS},
        "seen_rows": address(seen_copy),
        "recorded_at": datetime.now(UTC).isoformat(),
    }
    event = {
        **entry,
        "event": "promoted" if decision["action"] == "promote" else "kept_champion",
        "reason": decision["reason"],
        "champion_before": decision.get("champion_run_id"),
        "interval": (decision.get("comparison") or {}).get(
            "pr_auc_interval" if decision.get("metric") == "pr_auc" else "objective_interval"
        ),
    }
    if decision["action"] == "promote":
        registry["champion"] = entry
    else:
        registry["candidates"].append(entry)
    registry["history"].append(event)
    write_registry(registry_dir, model_name, registry)
    return {
        "decision": event["event"],
        "reason": decision["reason"],
        "registry": str(path),
        "champion": registry["champion"]["run_id"],
    }
