"""The exported model (`<run>/model/`), its model card, and the model registry."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from prefect import task
from upath import UPath

from tasks import kept, standalone
from tasks.calibration import Calibration
from tasks.config import TrainConfig
from tasks.features import PREPROCESSING, FeatureSet
from tasks.io import io_task_options
from tasks.model import configure_tensorflow
from tasks.records import TEST_METRICS
from tasks.reference import REFERENCE_FILE
from tasks.storage import (
    copy_file,
    copy_tree,
    json_text,
    sha256_of,
    write_text,
)
from tasks.strategies import REFERENCE

log = logging.getLogger(__name__)

MODEL_FILE = "model.json"
EVALUATION_FILE = "evaluation.parquet"  # stop, tune and test rows: id, y, probability
CARD_FILE = "MODEL_CARD.md"
EXPORTS = "exports"  # in the store: standalone models built before, by identity (tasks.kept)
KEPT_EXPORTS = 20  # the newest are kept; insurance's is ~0.5 MB
STANDALONE = "standalone"  # in a kept export: model.keras and saved_model/


@task(name="export-model", **io_task_options())
def export_model(
    selected: dict[str, Any],
    feature_set: FeatureSet,
    config: TrainConfig,
    branches_dir: UPath,
    model_dir: UPath,
    run_id: str,
) -> str:
    """Copy the selected branch's Keras members (or, for the gradient-boosting reference shipped
    with --allow-reference-champion, its scikit-learn model) and write everything needed to
    score new rows. Returns the model's identity (`model_identity`)."""
    manifest = feature_set.manifest
    network = selected["strategy"] != REFERENCE
    members = model_members(branches_dir / selected["strategy"] / "model", network)
    for member in members:
        copy_file(member, model_dir / member.name)
    prep, calibration = (
        feature_set.preprocessing(),
        Calibration.model_validate(selected["calibration"]),
    )
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
        "identity": model_identity(feature_set.location / PREPROCESSING, members, calibration),
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
    text = json_text(metadata)  # encoded once: the SavedModel's asset and model.json
    if network:
        kept_as = f"{metadata['identity']}{'' if config.saved_model else '-keras'}"
        export_standalone(
            model_dir,
            prep,
            members,
            calibration,
            text,
            config.saved_model,
            config.store_dir / EXPORTS / kept_as,
            config.tf_threads,
        )
    write_model_files(model_dir, metadata, text)
    return str(metadata["identity"])


def model_members(model_dir: UPath, network: bool = True) -> list[UPath]:
    """A branch's (or model's) member files in their order: the Keras networks, or the
    gradient-boosting reference's one file."""
    pattern = "member_*.keras" if network else REFERENCE_FILE
    return sorted(model_dir.glob(pattern), key=lambda member: member.name)


def model_identity(preprocessing: UPath, members: list[UPath], calibration: Calibration) -> str:
    """What a model's scores depend on, as one hash: its preprocessing and member files, its
    calibration, and the code that builds and applies them with the libraries' versions
    (tasks.reuse.code_version). Two models with one identity score every row alike; a kept
    trained branch gives every run that reuses it the same identity."""
    from tasks.reuse import code_version

    digest = hashlib.sha256(code_version().encode())
    for path in [preprocessing, *members]:
        digest.update(f"{path.name}:{sha256_of(path)};".encode())
    digest.update(json.dumps(calibration.model_dump(mode="json"), sort_keys=True).encode())
    return digest.hexdigest()[:32]


def export_standalone(
    model_dir: UPath,
    prep: Any,
    members: list[UPath],
    calibration: Calibration,
    meta_json: str,
    saved_model: bool = True,
    kept_as: UPath | None = None,
    tf_threads: int = 1,
) -> None:
    """The one model that takes raw columns (`tasks/standalone.py`): `model.keras` and the
    SavedModel, built and written in a local scratch directory, then copied into `model_dir`.
    With `kept_as` (`<store>/exports/<the model's identity>`), a standalone model kept there
    by an earlier run is copied instead (building and writing it takes TensorFlow and ~2 s),
    and one built here is kept there (tasks.kept)."""
    if kept_as is not None and kept.valid_manifest(kept_as, "standalone model") is not None:
        copy_tree(kept_as / STANDALONE, model_dir)
        return
    configure_tensorflow(tf_threads)
    model = standalone.build(prep, standalone.load_networks(members), calibration)
    with tempfile.TemporaryDirectory(prefix="imbalance-model-") as scratch:
        standalone.write(model, Path(scratch), meta_json, saved_model)
        copy_tree(scratch, model_dir)
        fill = partial(_kept_standalone, scratch)
        if kept_as is not None and kept.keep(
            kept_as.parent.parent, kept_as, fill, "standalone model"
        ):
            kept.prune(kept_as.parent, KEPT_EXPORTS)


def _kept_standalone(built: str, staging: Path) -> dict[str, Any]:
    copy_tree(built, staging / STANDALONE)
    return {"kind": "standalone model"}


def write_model_files(model_dir: UPath, metadata: dict[str, Any], text: str | None = None) -> None:
    """model.json and the model card, which travels inside the model directory (a copy stays
    beside it, in the run directory); the SavedModel's copy of model.json is kept equal.
    `text`: the metadata as JSON, when the caller encoded it already."""
    card, text = model_card(metadata), json_text(metadata) if text is None else text
    asset = model_dir / standalone.SAVED_MODEL_DIR / "assets" / MODEL_FILE
    if asset.is_file():
        write_text(asset, text)
    write_text(model_dir / CARD_FILE, card)
    write_text(model_dir.parent / CARD_FILE, card)
    write_text(model_dir / MODEL_FILE, text)  # last: a model directory is complete with it


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
