"""Champion / challenger: should this run's model replace the registered champion?

The challenger (this run's selected model) and the champion are scored on rows neither trained
on: this run's test rows minus the ids in the champion's training split. Each uses its own
preprocessing and threshold. The challenger is promoted only when the lower bound of the 95%
paired-bootstrap interval of the metric difference exceeds `promote_margin`. When the champion
cannot score the new data (columns, types or categories changed) it is promoted with reason
`schema_changed`. Callers hold the registry lock (`tasks.export.locked`) from the comparison to
the registry write, so concurrent runs of one model name decide in turn."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from upath import UPath

from tasks.compare import paired_bootstrap
from tasks.config import TrainConfig
from tasks.drift import drift_table, overall_status, table_records
from tasks.errors import DriftError, GateFailed
from tasks.export import MODEL_FILE, read_registry
from tasks.features import FeatureSet
from tasks.ingest import ID_COLUMN, TARGET_COLUMN
from tasks.io import io_task_options
from tasks.predict import LoadedModel, input_gate, reference_positive_rate, score
from tasks.storage import address, location, read_parquet, write_json
from tasks.thresholds import parse_objective

log = logging.getLogger(__name__)


def _decision(
    action: str, reason: str, champion: dict[str, Any] | None, **extra: Any
) -> dict[str, Any]:
    return {"action": action, "reason": reason,
            "champion_run_id": champion["run_id"] if champion else None, **extra}  # fmt: skip


def check_drift(train_rows: pd.DataFrame, champion: LoadedModel, config: TrainConfig,
                predicted_rate: float | None = None) -> dict[str, Any]:  # fmt: skip
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
            + ", ".join(f"{r.feature} (psi {r.psi:.3f})" if r.kind != "prediction" else
                        f"predicted positive rate {r.new:.4f} vs {r.reference:.4f}" for r in failed.itertuples())
        )  # fmt: skip
    if status != "ok":
        log.warning("drift against the champion's training data: %s", status)
    return {"status": status, "table": table_records(table)}


@task(name="champion-challenger", cache_policy=NO_CACHE)
def challenge(config: TrainConfig, model_name: str, feature_set: FeatureSet, raw_path: str,
              branches_dir: UPath, selected: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    registry = read_registry(config.registry_dir, model_name)
    champion = (registry or {}).get("champion")
    if champion is None:
        return _decision("promote", "first model of this name", None)
    champion_dir = location(champion["model_dir"])
    if not (champion_dir / MODEL_FILE).is_file():
        return _decision("promote", f"champion model missing at {champion_dir}", champion)
    model = LoadedModel(champion_dir)

    raw = pd.read_parquet(raw_path)
    ids = read_parquet(feature_set.location / "ids.parquet", columns=[ID_COLUMN, "split"])
    test_ids = set(ids.loc[ids.split == "test", ID_COLUMN])
    excluded, note = set(), None
    champion_ids_file = location(model.meta["training"]["ids_file"])
    if champion_ids_file.is_file():
        champion_ids = read_parquet(champion_ids_file, columns=[ID_COLUMN, "split"])
        excluded = set(champion_ids.loc[champion_ids.split == "train", ID_COLUMN])
    else:
        note = (
            f"champion's training ids unavailable ({champion_ids_file}); compared on all test rows"
        )
    rows = raw[raw[ID_COLUMN].isin(test_ids - excluded)]
    train_rows = raw[raw[ID_COLUMN].isin(set(ids.loc[ids.split == "train", ID_COLUMN]))]
    try:
        input_gate(rows, model.prep)
        schema_problems = None
    except GateFailed as exc:
        schema_problems = exc.failures
    champion_scores = (
        score(model, rows)["probability"].to_numpy()
        if schema_problems is None and len(rows)
        else None
    )
    # the champion's predicted-positive rate on new rows (when it can score them), against its
    # rate when it was trained; computed once, with the feature drift
    rate = (
        None
        if champion_scores is None
        else float(np.mean(champion_scores >= model.meta["threshold"]))
    )
    drift_summary = check_drift(train_rows, model, config, rate)
    if rows[TARGET_COLUMN].nunique() < 2:
        return _decision("keep", "fewer than two classes among rows neither model trained on", champion,
                         rows=len(rows), drift=drift_summary)  # fmt: skip
    if schema_problems is not None:
        return _decision(
            "promote", "schema_changed", champion, details=schema_problems, drift=drift_summary
        )

    predictions = read_parquet(branches_dir / selected["strategy"] / "predictions.parquet")
    challenger = (
        predictions[predictions.part == "test"]
        .set_index(ID_COLUMN)
        .loc[rows[ID_COLUMN], "probability"]
    )
    objective = parse_objective(config.objective)
    comparison = paired_bootstrap(
        rows[TARGET_COLUMN].to_numpy(), challenger.to_numpy(), champion_scores, selected["threshold"],
        model.meta["threshold"], objective, config.bootstrap, config.seed,
    )  # fmt: skip
    key = "pr_auc" if config.promote_metric == "pr_auc" else "objective"
    low = comparison[f"{key}_interval"]["low"]
    metric = "pr_auc" if key == "pr_auc" else objective.label
    if low > config.promote_margin:
        action, reason = (
            "promote",
            f"{metric} better: 95% interval lower bound {low:+.4f} > margin {config.promote_margin:g}",
        )
    else:
        action, reason = (
            "keep",
            f"{metric} not reliably better: 95% interval lower bound {low:+.4f} <= margin {config.promote_margin:g}",
        )
    return _decision(action, reason, champion, metric=metric, comparison=comparison, rows=len(rows),
                     note=note, drift=drift_summary)  # fmt: skip


@task(name="record-decision", **io_task_options())
def record_decision(registry_dir: UPath, model_name: str, run_id: str, model_dir: UPath, strategy: str,
                    metrics: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Append this run to the registry's history; make it champion when promoted. The caller
    holds the registry lock."""
    path = registry_dir / f"{model_name}.json"
    registry = read_registry(registry_dir, model_name) or {
        "name": model_name,
        "champion": None,
        "candidates": [],
        "history": [],
    }
    entry = {"run_id": run_id, "model_dir": address(model_dir), "strategy": strategy, "metrics": metrics,
             "recorded_at": datetime.now(UTC).isoformat()}  # fmt: skip
    event = {**entry, "event": "promoted" if decision["action"] == "promote" else "kept_champion",
             "reason": decision["reason"], "champion_before": decision.get("champion_run_id"),
             "interval": (decision.get("comparison") or {}).get(
                 "pr_auc_interval" if decision.get("metric") == "pr_auc" else "objective_interval")}  # fmt: skip
    if decision["action"] == "promote":
        registry["champion"] = entry
    else:
        registry["candidates"].append(entry)
    registry["history"].append(event)
    write_json(path, registry)
    return {"decision": event["event"], "reason": decision["reason"], "registry": str(path),
            "champion": registry["champion"]["run_id"]}  # fmt: skip
