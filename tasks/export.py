"""The exported model (`<run>/model/`), its model card, and the model registry."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from prefect import task
from upath import UPath

from tasks.config import SAFE_NAME, TrainConfig
from tasks.errors import StorageError
from tasks.features import PREPROCESSING, FeatureSet
from tasks.io import io_task_options
from tasks.storage import copy_file, location, read_pointer, write_json, write_text

log = logging.getLogger(__name__)

MODEL_FILE = "model.json"
EVALUATION_FILE = "evaluation.parquet"  # stop, tune and test rows: id, y, probability
CARD_FILE = "MODEL_CARD.md"


@task(name="export-model", **io_task_options())
def export_model(
    selected: dict[str, Any],
    feature_set: FeatureSet,
    config: TrainConfig,
    branches_dir: UPath,
    model_dir: UPath,
    run_id: str,
) -> UPath:
    """Copy the selected branch's Keras members and write everything needed to score new rows."""
    manifest = feature_set.manifest
    members = sorted(
        (branches_dir / selected["strategy"] / "model").glob("member_*.keras"),
        key=lambda member: member.name,
    )
    for member in members:
        copy_file(member, model_dir / member.name)
    copy_file(feature_set.location / PREPROCESSING, model_dir / PREPROCESSING)
    # the validation and test predictions travel with the model: re-tuning its threshold later
    # recomputes everything the threshold touches from them
    copy_file(
        branches_dir / selected["strategy"] / "predictions.parquet", model_dir / EVALUATION_FILE
    )
    metadata = {
        "model_name": config.resolved_model_name(manifest["target"]),
        "run_id": run_id,
        "created_at": datetime.now(UTC).isoformat(),
        "strategy": selected["strategy"],
        "members": [m.name for m in members],
        "threshold": selected["threshold"],
        "threshold_objective": selected["threshold_objective"],
        "rule": "positive iff probability >= threshold",
        "positive_label": manifest["positive_label"],
        "negative_label": manifest["negative_label"],
        "target_dtype": manifest["target_dtype"],
        "target": manifest["target"],
        "id_column": manifest["id_column"],
        "probability_is_calibrated": False,  # `probability_corrected` is
        "calibration": selected["calibration"],
        "prior": {"trained": selected["trained_prior"], "true": selected["true_prior"]},
        "metrics": {
            "test": {
                k: selected[k]
                for k in (
                    "pr_auc",
                    "roc_auc",
                    "f1",
                    "precision",
                    "recall",
                    "mcc",
                    "balanced_accuracy",
                    "g_mean",
                    "brier",
                    "log_loss",
                    "brier_corrected",
                    "log_loss_corrected",
                    "confusion_matrix",
                )
            },
            "test_at_0_5": selected["at_0_5"],
            "validation_tuning_half": selected["validation"],
        },
        "data_fingerprint": feature_set.fingerprint,
        "feature_set": feature_set.path,
        "config": config.model_dump(mode="json"),
        "schema": {
            "numeric": manifest["features"]["numeric"],
            "categorical": manifest["features"]["categorical"],
            "dropped_constant": manifest["features"]["dropped_constant"],
            "feature_stats": manifest["feature_stats"],
        },
        "training": {
            "splits": manifest["splits"],
            "validation_halves": manifest["validation_halves"],
            "source": manifest["source"],
            "source_sha256": manifest["source_sha256"],
            "outliers": {
                k: manifest["outliers"][k] for k in ("method", "removed", "clipped_values")
            },
            "ids_file": str(feature_set.location / "ids.parquet"),
            "class_counts": manifest["ingest"]["class_counts"],
        },
        "versions": manifest["versions"],
    }
    write_model_files(model_dir, metadata)
    return model_dir


def write_model_files(model_dir: UPath, metadata: dict[str, Any]) -> None:
    """model.json and the model card, which travels inside the model directory (a copy stays
    beside it, in the run directory)."""
    card = model_card(metadata)
    write_text(model_dir / CARD_FILE, card)
    write_text(model_dir.parent / CARD_FILE, card)
    write_json(model_dir / MODEL_FILE, metadata)  # last: a model directory is complete with it


def model_card(meta: dict[str, Any]) -> str:
    test, tune = meta["metrics"]["test"], meta["metrics"]["validation_tuning_half"]
    training = meta["training"]
    splits = training["splits"]
    cm = test["confusion_matrix"]
    removed = meta["training"]["outliers"]["removed"]
    small = [
        n
        for n, s in {**splits, **meta["training"]["validation_halves"]}.items()
        if s["positives"] < 30
    ]
    lines = [
        f"# Model card: {meta['model_name']}",
        "",
        f"Run `{meta['run_id']}`, strategy **{meta['strategy']}**, created {meta['created_at']}.",
        "",
        "## Intended use",
        f"Binary scoring of `{meta['target']}`: the positive class is `{meta['positive_label']}`. "
        "Rows with "
        f"`probability >= {meta['threshold']:.6g}` are flagged positive. Score rows that look "
        "like the "
        "training data (same columns, types and categories); `python -m flows.predict` enforces "
        "that.",
        "",
        "## Data",
        f"- Source: `{training['source']}` (sha256 `{training['source_sha256'][:16]}…`), "
        "fingerprint "
        f"`{meta['data_fingerprint']}`.",
        *(
            f"- {name}: {s['rows']} rows, {s['positives']} positive "
            f"({s['positives'] / max(s['rows'], 1):.1%})"
            for name, s in splits.items()
        ),
        f"- Outlier handling `{meta['training']['outliers']['method']}` removed training rows per "
        f"class: {removed}.",
        f"- Features: {len(meta['schema']['numeric'])} numeric, "
        f"{len(meta['schema']['categorical'])} categorical.",
        "",
        "## Metrics",
        "| metric | test (tuned threshold) | test (0.5) | validation tuning half |",
        "|---|---|---|---|",
        *(
            f"| {k} | {test[k]:.4f} | {meta['metrics']['test_at_0_5'][k]:.4f} | {tune[k]:.4f} |"
            for k in ("pr_auc", "roc_auc", "f1", "precision", "recall", "mcc", "balanced_accuracy")
        ),
        "",
        f"Test confusion matrix at the tuned threshold: TN {cm['tn']}, FP {cm['fp']}, FN "
        f"{cm['fn']}, TP {cm['tp']}.",
        "The threshold and the strategy were chosen on the validation tuning half; test rows were "
        "used only "
        "for these figures.",
        "",
        "## Threshold and calibration",
        f"- Threshold {meta['threshold']:.6g}, tuned for `{meta['threshold_objective']}` on the "
        "validation tuning half.",
        f"- `probability` is the model's raw score; the strategy trained under a positive prior of "
        f"{meta['prior']['trained']:.3f} against a true prior of {meta['prior']['true']:.3f}. "
        f"`probability_corrected` is the calibrated probability ({meta['calibration']['summary']}; "
        f"test Brier {test['brier']:.4f} raw vs {test['brier_corrected']:.4f} calibrated).",
        "",
        "## Known limits",
        f"- Class balance: {training['class_counts']}.",
        *(
            [
                f"- Small evaluation sets: {', '.join(small)} hold fewer than 30 positives; "
                "metrics are noisy."
            ]
            if small
            else []
        ),
        "- Trained on one data snapshot; check drift before trusting scores on new data.",
        "",
    ]
    return "\n".join(lines)


# --- registry -----------------------------------------------------------------------------------


def read_registry(registry_dir: UPath, name: str) -> dict[str, Any] | None:
    """A model name's registry; one found empty or corrupt (a crash mid-write on a disk that
    lost the rename's data) is restored from the previous version kept beside it."""
    path = registry_dir / f"{name}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        previous = registry_dir / f"{name}.json.previous"
        if not previous.is_file():
            raise StorageError(
                f"registry {path} is corrupt ({exc}) and has no previous version"
            ) from exc
        log.warning("registry %s is corrupt (%s); restoring its previous version", path, exc)
        registry = json.loads(previous.read_text())
        write_json(path, registry)
        return registry


def write_registry(registry_dir: UPath, name: str, registry: dict[str, Any]) -> None:
    """Write a registry, keeping the version it replaces as `<name>.json.previous`. Callers
    hold the registry lock."""
    path = registry_dir / f"{name}.json"
    if path.is_file():
        try:
            json.loads(path.read_text())
            copy_file(path, registry_dir / f"{name}.json.previous")
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass  # never keep a corrupt file as the fallback
    write_json(path, registry)


def registered_names(registry_dir: UPath) -> list[str]:
    return sorted(p.stem for p in registry_dir.glob("*.json")) if registry_dir.is_dir() else []


def resolve_model(model: str, registry_dir: UPath) -> UPath:
    """A model directory, a run directory (`<output>/latest` included, also on stores that
    have its pointer file instead of a symlink), or a registry name resolved to its champion."""
    path = location(model)
    if path.name == "model" and path.parent.name == "latest":
        path = path.parent
    if path.name == "latest" and not path.is_dir():
        path = read_pointer(path.parent, "latest") or path
    if (path / MODEL_FILE).is_file():
        return path
    if (path / "model" / MODEL_FILE).is_file():  # a run directory
        return path / "model"
    registry = (
        read_registry(registry_dir, model)
        if SAFE_NAME.fullmatch(model) and ".." not in model
        else None
    )
    if registry and registry.get("champion"):
        return location(registry["champion"]["model_dir"])
    from tasks.errors import DataInputError

    raise DataInputError(
        f"no model at {model!r}: not a model directory and not a registered name "
        f"(registered in {registry_dir}: {', '.join(registered_names(registry_dir)) or 'none'})"
    )
