"""The exported model (`<run>/model/`), its model card, and the model registry."""

from __future__ import annotations

import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import task
from upath import UPath

from tasks import standalone
from tasks.calibration import Calibration
from tasks.config import TrainConfig
from tasks.features import PREPROCESSING, FeatureSet
from tasks.io import io_task_options
from tasks.records import TEST_METRICS
from tasks.reference import REFERENCE_FILE
from tasks.storage import (
    copy_file,
    copy_tree,
    is_local,
    local_path,
    write_json,
    write_text,
)
from tasks.strategies import REFERENCE

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
    """Copy the selected branch's Keras members (or, for the gradient-boosting reference shipped
    with --allow-reference-champion, its scikit-learn model) and write everything needed to
    score new rows."""
    manifest = feature_set.manifest
    network = selected["strategy"] != REFERENCE
    members = sorted(
        (branches_dir / selected["strategy"] / "model").glob(
            "member_*.keras" if network else REFERENCE_FILE
        ),
        key=lambda member: member.name,
    )
    for member in members:
        copy_file(member, model_dir / member.name)
    prep = feature_set.preprocessing()
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
        "kind": "network" if network else "gradient_boosting",
        "members": [m.name for m in members],
        "standalone": {
            "keras": standalone.KERAS_FILE,
            "saved_model": standalone.SAVED_MODEL_DIR if config.saved_model else None,
            "signature": standalone.SERVING_SIGNATURE,
            "outputs": list(standalone.OUTPUTS),
        }
        if network
        else None,
        **standalone.signature_facts(prep),  # column -> signature input name
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
            "test": {k: selected[k] for k in TEST_METRICS},
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
    calibration = Calibration.model_validate(selected["calibration"])
    if network:
        export_standalone(model_dir, prep, members, calibration, metadata, config.saved_model)
    write_model_files(model_dir, metadata)
    return model_dir


def export_standalone(
    model_dir: UPath,
    prep: Any,
    members: list[UPath],
    calibration: Calibration,
    meta: dict,
    saved_model: bool = True,
) -> None:
    """The one model that takes raw columns (`tasks/standalone.py`): `model.keras` and the
    SavedModel, written locally and copied to the model's store when it is remote."""
    model = standalone.build(prep, standalone.load_networks(members), calibration)
    if is_local(model_dir):
        standalone.write(model, local_path(model_dir), meta, saved_model)
        return
    with tempfile.TemporaryDirectory(prefix="imbalance-model-") as scratch:
        standalone.write(model, Path(scratch), meta, saved_model)
        copy_tree(scratch, model_dir)


def write_model_files(model_dir: UPath, metadata: dict[str, Any]) -> None:
    """model.json and the model card, which travels inside the model directory (a copy stays
    beside it, in the run directory); the SavedModel's copy of model.json is kept equal."""
    card = model_card(metadata)
    asset = model_dir / standalone.SAVED_MODEL_DIR / "assets" / MODEL_FILE
    if asset.is_file():
        write_json(asset, metadata)
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
        *(
            [
                "",
                "The gradient-boosting reference (scikit-learn HistGradientBoostingClassifier, "
                f"`{REFERENCE_FILE}`), shipped because it ranked first on the validation tuning "
                "half and `--allow-reference-champion` was set. It has no Keras or SavedModel "
                "form: score it with `python -m flows.predict` (or the MLflow pyfunc).",
            ]
            if meta.get("kind") == "gradient_boosting"
            else []
        ),
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
