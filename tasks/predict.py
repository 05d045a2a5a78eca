"""Scoring new rows with an exported model: schema gate, the stored preprocessing, the members."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from upath import UPath

from tasks import events, gates, reference
from tasks.calibration import Calibration
from tasks.config import DriftSettings
from tasks.drift import drift_table, overall_status, publish_drift
from tasks.errors import DataInputError, DriftError, GateFailed
from tasks.export import MODEL_FILE
from tasks.features import PREPROCESSING, Preprocessing
from tasks.ingest import NUMERIC_DTYPES, beyond_float32, canonical_categories
from tasks.io import io_task_options, load_source
from tasks.preflight import check_columns, header
from tasks.standalone import KERAS_FILE, build, load_keras, load_networks, raw_inputs
from tasks.standalone import score as standalone_score
from tasks.storage import is_local, local_path, location, write_parquet, write_text

log = logging.getLogger(__name__)


class LoadedModel:
    def __init__(self, model_dir: UPath):
        self.dir = location(model_dir)
        if not (self.dir / MODEL_FILE).is_file():  # written last: the directory's completion mark
            raise DataInputError(f"{self.dir} is not a complete model directory (no {MODEL_FILE})")
        self.meta: dict[str, Any] = json.loads((self.dir / MODEL_FILE).read_text())
        missing = [
            n for n in [*self.meta["members"], PREPROCESSING] if not (self.dir / n).is_file()
        ]
        if missing:
            raise DataInputError(
                f"model directory {self.dir} is incomplete: {', '.join(missing)} missing"
            )
        self.prep = Preprocessing.model_validate_json((self.dir / PREPROCESSING).read_text())
        self.calibration = calibration_of(self.meta)
        self._standalone: Any = None
        self._reference: Any = None

    @property
    def kind(self) -> str:
        """ "network" (the Keras models), or "gradient_boosting" (the reference, shipped with
        --allow-reference-champion)."""
        return str(self.meta.get("kind", "network"))

    def scores(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Raw rows -> `probability` and `probability_corrected`: the standalone network, or the
        gradient-boosting reference on the same preprocessing."""
        if self.kind == "gradient_boosting":
            if self._reference is None:
                self._reference = reference.load(self.dir / self.meta["members"][0])
            return reference.score(self._reference, self.prep, frame)
        return standalone_score(self.standalone, raw_inputs(frame, self.prep))

    @property
    def name(self) -> str:
        """The registered model name it was trained under."""
        return str(self.meta.get("model_name", "model"))

    @property
    def run_id(self) -> str | None:
        """The training run that produced it."""
        return self.meta.get("run_id")

    @property
    def standalone(self) -> Any:
        """The model that takes raw columns (`tasks/standalone.py`): its `model.keras`, or for
        a model exported before it existed, the same model built from its members."""
        if self._standalone is None:
            saved = self.dir / KERAS_FILE
            if saved.is_file():
                self._standalone = load_keras(saved)
            else:
                members = load_networks([self.dir / name for name in self.meta["members"]])
                self._standalone = build(self.prep, members, self.calibration)
        return self._standalone


def calibration_of(meta: dict[str, Any]) -> Calibration:
    """The model's calibration; models exported before calibrations were stored had only the
    prior shift (or none)."""
    if "calibration" in meta:
        return Calibration.model_validate(meta["calibration"])
    prior = meta["prior"]
    if prior.get("corrected_column"):
        return Calibration(method="prior", trained_prior=prior["trained"], true_prior=prior["true"])
    return Calibration(method="identity")


def input_gate(
    frame: pd.DataFrame, prep: Preprocessing, schema_only: bool = False
) -> dict[str, Any]:
    """The predict input suite: required columns and numeric types; unless `schema_only`, also
    known category levels and no missing values where the model has no imputation (prediction
    checks those row by row instead, see row_problems)."""
    numeric = [c for c in prep.numeric if c in frame.columns]
    categorical = [] if schema_only else [c for c in prep.categorical if c in frame.columns]
    bindings = {
        "required_columns": prep.feature_columns,
        "numeric_features": numeric,
        "numeric_dtypes": NUMERIC_DTYPES,
        "categorical_features": categorical,
        # missing values are allowed where imputation was fitted
        "categories_by_column": {
            c: [*prep.categories[c], *([None] if c in prep.impute_values else [])]
            for c in categorical
        },
        "complete_features": []
        if schema_only
        else [
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
    """Probabilities, labels and decisions for raw rows, from the standalone model (or the
    shipped gradient-boosting reference)."""
    prep = model.prep
    scores = model.scores(frame)
    probability = scores["probability"]
    is_positive = probability >= model.meta["threshold"]
    out = pd.DataFrame(index=frame.index)
    if prep.id and prep.id in frame.columns:
        out[prep.id] = frame[prep.id].to_numpy()
    out["probability"] = probability
    out["probability_corrected"] = scores["probability_corrected"]
    if not np.isfinite(probability).all():  # the input checks make this unreachable
        raise RuntimeError("the model produced a non-finite score")
    dtype = model.meta["target_dtype"]
    positive = label_value(model.meta["positive_label"], dtype)
    negative = label_value(model.meta["negative_label"], dtype)
    # a plain array is placed by position: a Series would be aligned on `frame`'s index
    out["label"] = np.array([positive if p else negative for p in is_positive], dtype=object)
    if dtype not in ("str", "object", "string"):
        out["label"] = out["label"].astype(dtype)
    out["is_positive"] = is_positive
    return out.reset_index(drop=True)


def label_value(text: str, dtype: str) -> Any:
    """A label stored by its string form, back in the target's own type: 'False' is False for a
    boolean target (a plain cast would make every non-empty string True), '1' is 1 for integers."""
    if dtype in ("bool", "boolean"):
        return text.strip().lower() == "true"
    if dtype.lower().startswith(("int", "uint")):
        return int(float(text))
    if dtype.lower().startswith("float"):
        return float(text)
    return text


def row_problems(
    frame: pd.DataFrame, prep: Preprocessing, on_unseen: str
) -> tuple[pd.Series, dict[str, int]]:
    """Why each row cannot be scored ('' when it can), checked on the raw values before any
    clipping or scaling: a missing value the model has no imputation for, a number that is not
    finite as float32 (a clip would turn inf into a confident finite score), and with
    on_unseen='refuse' a category level never seen in training. Also the count of unseen levels
    per column (scored with the unseen code when on_unseen='score')."""
    reasons = pd.Series("", index=frame.index, dtype=object)

    def add(mask: pd.Series, reason: str) -> None:
        reasons[mask] = reasons[mask] + np.where(reasons[mask] == "", "", "; ") + reason

    unseen: dict[str, int] = {}
    for column in prep.feature_columns:
        if column not in prep.impute_values:
            add(frame[column].isna(), f"{column}: missing")
    for column in prep.numeric:
        add(beyond_float32(frame[column]), f"{column}: not a finite number")
    for column in prep.categorical:
        levels = canonical_categories(frame[column])
        new = levels.notna() & ~levels.isin(prep.categories[column])
        if new.any():
            unseen[column] = int(new.sum())
            if on_unseen == "refuse":
                add(new, f"{column}: level not seen in training")
    return reasons, unseen


def summarise_problems(reasons: pd.Series, limit: int = 8) -> str:
    bad = reasons[reasons != ""]
    counts = pd.Series([r for text in bad for r in text.split("; ")]).value_counts()
    lines = [
        f"{reason} in {count} row(s), e.g. rows "
        f"{bad[bad.str.contains(reason, regex=False)].index[:5].tolist()}"
        for reason, count in counts.head(limit).items()
    ]
    return "\n  - ".join(lines)


def reference_positive_rate(meta: dict[str, Any]) -> float:
    """Share of test rows the model flagged at its threshold, when it was trained."""
    cm = meta["metrics"]["test"]["confusion_matrix"]
    return (cm["tp"] + cm["fp"]) / max(sum(cm.values()), 1)


@task(name="predict", **io_task_options())
def predict_file(
    model_dir: UPath,
    data: str,
    out: UPath,
    sep: str | None = None,
    drift: DriftSettings | None = None,
    on_bad_rows: str = "refuse",
    on_unseen: str = "score",
) -> dict[str, Any]:
    """Gate the rows against the training schema, refuse (or set aside, `on_bad_rows='skip'`)
    rows that cannot be scored, score the rest, check drift, write parquet or CSV."""
    drift = drift or DriftSettings()
    model = LoadedModel(model_dir)
    check_output(out, data)
    loaded = load_source(data, sep)
    if loaded.builtin is None:
        path = Path(loaded.source)
        check_columns(header(path, sep), path)
    frame = loaded.frame.reset_index(drop=True)
    if frame.empty:
        raise DataInputError(f"{data} has a header but no rows to score")
    try:
        input_gate(frame, model.prep, schema_only=True)
    except GateFailed as failure:
        events.gate_failed(model.name, model.run_id, failure.stage, failure.failures)
        raise
    reasons, unseen = row_problems(frame, model.prep, on_unseen)
    bad = reasons != ""
    rejects_path = None
    if bad.any() and on_bad_rows == "refuse":
        raise DataInputError(
            f"{int(bad.sum())} of {len(frame)} rows of {data} cannot be scored; nothing was "
            "written "
            f"(--on-bad-rows skip scores the others and writes the rest to a rejects file):\n  - "
            + summarise_problems(reasons)
        )
    if bad.any():
        rejects_path = out.parent / f"{out.name.split('.')[0]}.rejects.csv"
        rejected = frame[bad].assign(reject_reason=reasons[bad])
        rejected.insert(0, "row", rejected.index)
        write_text(rejects_path, rejected.to_csv(index=False))
        log.warning("%d rows cannot be scored; written to %s", int(bad.sum()), rejects_path)
    frame = frame[~bad]
    if unseen:
        log.warning(
            "category levels not seen in training (scored with the unseen code): %s", unseen
        )
    scored = score(model, frame) if len(frame) else pd.DataFrame()
    table = drift_table(
        frame,
        model.meta["schema"]["feature_stats"],
        drift,
        float(scored["is_positive"].mean()) if len(scored) else None,
        reference_positive_rate(model.meta),
    )
    publish_drift(table, f"drift of {data} against model {model.name} ({model.run_id})")
    status = overall_status(table)
    drifted = table[table.status != "ok"]
    if status != "ok":
        log.warning(
            "drift %s: %s",
            status,
            ", ".join(f"{r.feature} ({r.status})" for r in drifted.itertuples()),
        )
    if status != "ok":
        events.drift(
            status, model.name, model.run_id, data, drifted["feature"].tolist(), drift.action
        )
    if status == "fail" and drift.action == "fail":
        lines = [
            f"{r.feature}: psi {r.psi:.3f}, ks {r.ks:.3f}"
            if r.kind != "prediction"
            else f"predicted positive rate {r.new:.4f} vs {r.reference:.4f} when trained"
            for r in table[table.status == "fail"].itertuples()
        ]
        raise DriftError(
            "drift beyond the fail limits; nothing was written:\n  - " + "\n  - ".join(lines)
        )
    if out.name.lower().endswith((".csv", ".csv.gz")):
        write_text(out, scored.to_csv(index=False))
    else:
        write_parquet(out, scored)
    return {
        "rows": len(scored),
        "positives": int(scored["is_positive"].sum()) if len(scored) else 0,
        "out": str(out),
        "rejected": int(bad.sum()),
        "rejects": str(rejects_path) if rejects_path else None,
        "unseen_levels": unseen,
        "drift": status,
        "drifted_features": drifted["feature"].tolist(),
    }


OUTPUT_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")  # CSV for the first two, else parquet


def check_output(out: UPath, data: str) -> None:
    """The output must be a file path that is not the input, and its name says its format."""
    if out.is_dir():
        raise DataInputError(
            f"--out {out} is a directory; give a file path such as {out}/scored.parquet"
        )
    if not out.name.lower().endswith(OUTPUT_SUFFIXES):
        raise DataInputError(
            f"--out {out}: the file's name sets its format; end it in .csv, .csv.gz or .parquet"
        )
    if (
        is_local(out)
        and Path(data).expanduser().exists()
        and local_path(out).resolve() == Path(data).expanduser().resolve()
    ):
        raise DataInputError(f"--out {out} is the input file; scoring would overwrite the data")
