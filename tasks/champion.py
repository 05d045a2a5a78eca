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
from tasks.features import FeatureSet, Preprocessing
from tasks.ingest import (
    HASH_COLUMN,
    ID_COLUMN,
    TARGET_COLUMN,
    IngestResult,
    beyond_float32,
    row_hashes,
)
from tasks.model import configure_tensorflow
from tasks.predict import LoadedModel, reference_positive_rate, score
from tasks.registry import read_registry
from tasks.storage import location, parquet_batches, read_parquet, write_parquet
from tasks.thresholds import parse_objective

log = logging.getLogger(__name__)
PROMOTION_BOOTSTRAP = 2000  # a promotion decision never rests on fewer resamples
SAME_MODEL = "the champion is this run's model (the same identity), so both score alike"


def _decision(
    action: str, reason: str, champion: dict[str, Any] | None, **extra: Any
) -> dict[str, Any]:
    return {
        "action": action,
        "reason": reason,
        "champion_run_id": champion["run_id"] if champion else None,
        **extra,
    }


SEEN_ROWS_BATCH = 250_000  # raw rows hashed at a time: 5M rows at once held ~3 GB


def seen_rows(raw_path: str, feature_set: FeatureSet, path: UPath) -> UPath:
    """Write the id and feature-row hash (over the model's own feature columns, schema order) of
    every row the model trained or tuned on: every row outside the test split. The raw rows
    are read and hashed SEEN_ROWS_BATCH at a time (a row's hash does not depend on its batch)."""
    prep = feature_set.preprocessing()
    ids = read_parquet(feature_set.location / "ids.parquet", columns=[ID_COLUMN, "split"])
    seen = pd.Index(ids.loc[ids.split != "test", ID_COLUMN])  # ids are unique: the raw gate
    parts = []
    for raw in parquet_batches(raw_path, SEEN_ROWS_BATCH, [ID_COLUMN, *prep.feature_columns]):
        raw = raw[seen.get_indexer(raw[ID_COLUMN]) >= 0]
        hashes = row_hashes(raw, prep.numeric, prep.categorical)
        parts.append(pd.DataFrame({ID_COLUMN: raw[ID_COLUMN].to_numpy(), HASH_COLUMN: hashes}))
    if not parts:  # a file without rows yields no batch
        parts = [pd.DataFrame({ID_COLUMN: ids[ID_COLUMN].iloc[:0], HASH_COLUMN: np.zeros(0, "u8")})]
    return write_parquet(path, pd.concat(parts, ignore_index=True))


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


def unseen_scorable_rows(
    rows: pd.DataFrame,
    seen: pd.DataFrame,
    prep: Preprocessing,
    by_id: bool,
    id_column: str | None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The test rows the champion never trained or tuned on (matched by id, else by the hash of
    the normalised feature row) and can score, with the counts of what was left out."""
    if by_id:
        excluded = rows[ID_COLUMN].isin(set(seen[ID_COLUMN])).to_numpy()
        matched_by = f"id column {id_column}"
    else:
        hashes = row_hashes(rows, prep.numeric, prep.categorical)
        excluded = np.isin(hashes, seen[HASH_COLUMN].to_numpy())
        matched_by = "feature-row hash"
    rows = rows[~excluded]
    cannot = unscorable(rows, prep).to_numpy()
    rows = rows[~cannot]
    counts = {
        "test_rows_excluded_as_seen_by_champion": int(excluded.sum()),
        "matched_by": matched_by,
        "rows_the_champion_cannot_score": int(cannot.sum()),
        "rows": len(rows),
    }
    return rows, counts


def _compared_metric(
    config: TrainConfig, model: LoadedModel, same_model: bool = False
) -> tuple[str, str | None]:
    """`--promote-metric`, except that an objective is only compared when both thresholds were
    tuned for it (else PR-AUC decides, with a note saying why); and the note says when the
    champion is this very model."""
    objective = parse_objective(config.objective)
    notes = [SAME_MODEL] if same_model else []
    key = "objective"
    if config.promote_metric == "pr_auc":
        key = "pr_auc"
    elif model.meta["threshold_objective"] != objective.label:
        key = "pr_auc"
        notes.append(
            f"the champion's threshold was tuned for {model.meta['threshold_objective']}, not "
            f"{objective.label}: compared on PR-AUC"
        )
    return key, "; ".join(notes) or None


def _scores(
    champion: LoadedModel, rows: pd.DataFrame, branch_dir: UPath, same_model: bool, threads: int
) -> tuple[np.ndarray, np.ndarray]:
    """The challenger's stored test scores on `rows`, and the champion's: computed by the
    exported model, or, when the champion is this very model, the same scores (the exported
    model reproduces the stored ones: test_predict_on_raw_test_rows_reproduces_the_runs_...)."""
    predictions = read_parquet(branch_dir / "predictions.parquet")
    test = predictions[predictions.part == "test"].set_index(ID_COLUMN)
    challenger = test.loc[rows[ID_COLUMN], "probability"].to_numpy()
    if same_model or not len(rows):
        return challenger, challenger
    if champion.kind == "network":
        configure_tensorflow(threads)
    return challenger, score(champion, rows)["probability"].to_numpy()


@task(name="champion-challenger", cache_policy=NO_CACHE)
def challenge(
    config: TrainConfig,
    model_name: str,
    feature_set: FeatureSet,
    ingested: IngestResult,
    branches_dir: UPath,
    selected: dict[str, Any],
    identity: str | None = None,
) -> dict[str, Any]:
    """Compare the selected model with the registry's champion on rows neither trained or tuned
    on; the decision says promote or keep, and why. `identity`: the selected model's
    (tasks.export.model_identity); a champion with the same one is this very model (a
    scheduled run on unchanged data reuses every branch), so nothing is loaded or scored."""
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
    rows, counts = unseen_scorable_rows(rows, seen, prep, by_id, id_column)
    same = identity is not None and model.meta.get("identity") == identity
    branch = branches_dir / selected["strategy"]
    challenger, champion_scores = _scores(model, rows, branch, same, config.tf_threads)
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

    key, note = _compared_metric(config, model, same)
    comparison = paired_bootstrap(
        rows[TARGET_COLUMN].to_numpy(),
        challenger,
        champion_scores,
        selected["threshold"],
        model.meta["threshold"],
        parse_objective(config.objective),
        max(config.bootstrap, PROMOTION_BOOTSTRAP),
        config.seed,
        row_groups(raw_path, config.group, rows[ID_COLUMN].to_numpy()),
    )
    low = comparison[f"{key}_interval"]["low"]
    metric = "pr_auc" if key == "pr_auc" else parse_objective(config.objective).label
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
