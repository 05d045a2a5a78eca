"""Scoring new rows with an exported model: schema gate, the stored preprocessing, the members."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from upath import UPath

from tasks import gates
from tasks.calibration import Calibration
from tasks.drift import DriftSettings, drift_table, overall_status, publish_drift
from tasks.errors import DriftError
from tasks.export import MODEL_FILE
from tasks.features import PREPROCESSING, Preprocessing, code_matrix
from tasks.ingest import NUMERIC_DTYPES, canonical_categories
from tasks.io import io_task_options, load_source
from tasks.storage import local_copy, location, write_parquet

log = logging.getLogger(__name__)


class LoadedModel:
    def __init__(self, model_dir: UPath):
        self.dir = location(model_dir)
        self.meta: dict[str, Any] = json.loads((self.dir / MODEL_FILE).read_text())
        self.prep = Preprocessing.model_validate_json((self.dir / PREPROCESSING).read_text())
        self.calibration = calibration_of(self.meta)
        self._members: list[Any] | None = None

    @property
    def members(self) -> list[Any]:
        if self._members is None:
            import keras

            members = []
            for name in self.meta["members"]:
                with local_copy(self.dir / name) as member:  # Keras reads local files only
                    members.append(keras.models.load_model(member, compile=False))
            self._members = members  # all or none, if a member cannot be read
        return self._members


def calibration_of(meta: dict[str, Any]) -> Calibration:
    """The model's calibration; models exported before calibrations were stored had only the
    prior shift (or none)."""
    if "calibration" in meta:
        return Calibration.model_validate(meta["calibration"])
    prior = meta["prior"]
    if prior.get("corrected_column"):
        return Calibration(method="prior", trained_prior=prior["trained"], true_prior=prior["true"])
    return Calibration(method="identity")


def input_gate(frame: pd.DataFrame, prep: Preprocessing) -> dict[str, Any]:
    numeric = [c for c in prep.numeric if c in frame.columns]
    categorical = [c for c in prep.categorical if c in frame.columns]
    bindings = {
        "required_columns": prep.feature_columns,
        "numeric_features": numeric,
        "numeric_dtypes": NUMERIC_DTYPES,
        "categorical_features": categorical,
        # missing values are allowed where imputation was fitted
        "categories_by_column": {
            c: [*prep.categories[c], *([None] if c in prep.impute_values else [])]
            for c in categorical
        },  # fmt: skip
        "complete_features": [
            c for c in prep.feature_columns if c in frame.columns and c not in prep.impute_values
        ],
    }
    normalised = frame.copy()
    for column in categorical:  # categories are matched by their string form, as in training
        normalised[column] = (
            canonical_categories(frame[column]).astype(object).where(frame[column].notna(), None)
        )
    return gates.validate("predict input", "predict_input", normalised, bindings).as_dict()


def score(model: LoadedModel, frame: pd.DataFrame) -> pd.DataFrame:
    from tasks.model import member_scores, one_hot_inputs

    prep = model.prep
    features = prep.transform(frame)
    codes = code_matrix(features, prep.categorical)
    x = one_hot_inputs(
        features[prep.numeric].to_numpy(np.float32),
        codes,
        [len(prep.categories[c]) for c in prep.categorical],
    )
    members = member_scores(model.members, x)
    probability = np.mean(members, axis=0)
    is_positive = probability >= model.meta["threshold"]
    out = pd.DataFrame(index=frame.index)
    if prep.id and prep.id in frame.columns:
        out[prep.id] = frame[prep.id].to_numpy()
    out["probability"] = probability
    out["probability_corrected"] = model.calibration.apply(members)
    labels = pd.Series(
        np.where(is_positive, model.meta["positive_label"], model.meta["negative_label"])
    )
    dtype = model.meta["target_dtype"]
    out["label"] = (
        labels.to_numpy()
        if dtype in ("str", "object", "string")
        else labels.astype(dtype).to_numpy()
    )
    out["is_positive"] = is_positive
    return out.reset_index(drop=True)


def reference_positive_rate(meta: dict[str, Any]) -> float:
    """Share of test rows the model flagged at its threshold, when it was trained."""
    cm = meta["metrics"]["test"]["confusion_matrix"]
    return (cm["tp"] + cm["fp"]) / max(sum(cm.values()), 1)


@task(name="predict", **io_task_options())
def predict_file(model_dir: UPath, data: str, out: UPath, sep: str | None = None,
                 drift: DriftSettings | None = None) -> dict[str, Any]:  # fmt: skip
    """Gate the rows against the training schema, score them, check drift, write parquet."""
    drift = drift or DriftSettings()
    model = LoadedModel(model_dir)
    frame = load_source(data, sep).frame
    gate = input_gate(frame, model.prep)
    scored = score(model, frame)
    table = drift_table(frame, model.meta["schema"]["feature_stats"], drift,
                        float(scored["is_positive"].mean()), reference_positive_rate(model.meta))  # fmt: skip
    publish_drift(
        table, f"drift of {data} against model {model.meta['model_name']} ({model.meta['run_id']})"
    )
    status = overall_status(table)
    drifted = table[table.status != "ok"]
    if status != "ok":
        log.warning(
            "drift %s: %s",
            status,
            ", ".join(f"{r.feature} ({r.status})" for r in drifted.itertuples()),
        )
    if status == "fail" and drift.action == "fail":
        lines = [f"{r.feature}: psi {r.psi:.3f}, ks {r.ks:.3f}" if r.kind != "prediction"
                 else f"predicted positive rate {r.new:.4f} vs {r.reference:.4f} when trained"
                 for r in table[table.status == "fail"].itertuples()]  # fmt: skip
        raise DriftError(
            "drift beyond the fail limits; nothing was written:\n  - " + "\n  - ".join(lines)
        )
    write_parquet(out, scored)
    return {"rows": len(scored), "positives": int(scored["is_positive"].sum()), "out": str(out),
            "gate": gate["success"], "drift": status,
            "drifted_features": drifted["feature"].tolist()}  # fmt: skip
