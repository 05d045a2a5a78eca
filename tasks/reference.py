"""The gradient-boosting reference as a model: the matrix it reads, and saving, loading and
scoring it. Training (`tasks.train.fit_reference`) and prediction (`tasks.predict`) build its
input with the same `matrix`, from the same preprocessing the networks use: scaled numerics and
category codes (unseen -1), the codes as native categoricals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from upath import UPath

from tasks.storage import atomic_path, local_copy

REFERENCE_FILE = "reference.joblib"  # in the branch's and the exported model's directory


def matrix(numeric: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Numerics then codes, as float64 (the categoricals are the last columns)."""
    return np.hstack([np.asarray(numeric, np.float64), np.asarray(codes, np.float64)])


def save(model: Any, model_dir: UPath | Path) -> UPath | Path:
    """The fitted model as `<model_dir>/reference.joblib`, written atomically on any store."""
    import joblib

    with atomic_path(model_dir / REFERENCE_FILE) as tmp:
        joblib.dump(model, tmp)
    return model_dir / REFERENCE_FILE


def load(path: UPath | Path) -> Any:
    import joblib

    with local_copy(path) as local:
        return joblib.load(local)


def score(model: Any, prep: Any, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Raw rows -> the reference's probability (its calibration is the identity: it is fitted
    unweighted, under the true prior, so both outputs are the same)."""
    features = prep.transform(frame)
    x = matrix(features[prep.numeric].to_numpy(), features[prep.categorical].to_numpy())
    probability = model.predict_proba(x)[:, 1].astype(np.float64)
    return {"probability": probability, "probability_corrected": probability.copy()}
