"""The standalone model: raw columns in, probabilities out, with the whole preprocessing inside.

Inputs are one `(n, 1)` tensor per feature column: numerics as float32 (NaN where missing),
categoricals as their canonical category strings (`tasks.ingest.canonical_categories`; "" where
missing). Outputs: `probability` (the members' average, the score the threshold applies to) and
`probability_corrected` (calibrated). Inside: imputation, clipping, the normal-quantile map and
scaling (`NumericPreprocessing`), each category's code with unseen levels -1 (`CategoryCode`;
the networks make codes one-hot themselves), the member networks, their average and the
calibration (`Calibrate`).

It is written twice into the model directory:
- `model.keras`: loads with `keras.saving.load_model` where this project is installed (the custom
  layers live in `tasks/layers.py`). `flows.predict` scores with it: one scoring path.
- `saved_model/`: a TensorFlow SavedModel (`serving_default` signature), servable by TensorFlow
  Serving and loadable with `tf.saved_model.load` without this project. Its assets hold
  `model.json` (threshold, labels, calibration, the column -> input name map).

Signature input names must match `[A-Za-z0-9.][A-Za-z0-9_.-/]*`: any other character of a column
name becomes `_` (the Wisconsin column `concave points_mean` is the input `concave_points_mean`),
and a name taken twice gets `_2`, `_3`... `model.json`'s `inputs` maps each column to its name.
Wide data (more than MAX_COLUMN_INPUTS numeric columns) has one numeric input instead: `numerics`,
(n, columns) float32, its column order in `model.json`'s `numeric_matrix`."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# Wide data: past this many numeric columns, the numerics are one (n, columns) float32 input
# named `numerics`, in the order of model.json's `numeric_matrix.columns` (one input per column
# made the wide benchmark's export take a minute).
MAX_COLUMN_INPUTS = 256
NUMERIC_MATRIX = "numerics"
KERAS_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
SERVING_SIGNATURE = "serving_default"
OUTPUTS = ("probability", "probability_corrected")
SCORE_CHUNK = 65_536  # rows per call when scoring


def numeric_matrix(prep: Any) -> bool:
    """Whether the numerics come as one matrix input (wide data)."""
    return len(prep.numeric) > MAX_COLUMN_INPUTS


def column_inputs(prep: Any) -> dict[str, str]:
    """Each column that is its own input -> its input name (every feature column, except the
    numerics of wide data)."""
    if numeric_matrix(prep):
        return input_names(prep.categorical, reserved=frozenset({NUMERIC_MATRIX}))
    return input_names(prep.feature_columns)


def signature_facts(prep: Any) -> dict[str, Any]:
    """What model.json says about the model's inputs."""
    matrix = {"input": NUMERIC_MATRIX, "columns": prep.numeric} if numeric_matrix(prep) else None
    return {"inputs": column_inputs(prep), "numeric_matrix": matrix}


def input_names(columns: list[str], reserved: frozenset[str] = frozenset()) -> dict[str, str]:
    """Each column's input name in the model's signature (see the module docstring)."""
    names: dict[str, str] = {}
    taken: set[str] = {name.lower() for name in reserved}
    for column in columns:
        base = re.sub(r"[^A-Za-z0-9_.\-]", "_", column)
        if not re.match(r"[A-Za-z0-9.]", base):
            base = "c" + base
        name, n = base, 1
        while name.lower() in taken:  # signature names are compared case-insensitively too
            n += 1
            name = f"{base}_{n}"
        taken.add(name.lower())
        names[column] = name
    return names


def build(prep: Any, members: list[Any], calibration: Any) -> Any:
    """The standalone Keras model for a fitted `Preprocessing`, the members (Keras models on the
    network's input rows: numerics then category codes; or, exported before session 14, numerics
    then one-hot blocks) and their `Calibration`."""
    import keras

    from tasks.layers import (
        Calibrate,
        CategoryCode,
        CategoryOneHot,
        CodeOneHot,
        NumericPreprocessing,
    )

    names = column_inputs(prep)
    inputs = {names[c]: keras.Input((1,), name=names[c], dtype="string") for c in prep.categorical}
    blocks = []
    if numeric_matrix(prep):
        joined = keras.Input((len(prep.numeric),), name=NUMERIC_MATRIX, dtype="float32")
        inputs[NUMERIC_MATRIX] = joined
        blocks.append(NumericPreprocessing.fitted(prep)(joined))
    elif prep.numeric:
        numeric = [keras.Input((1,), name=names[c], dtype="float32") for c in prep.numeric]
        inputs |= {names[c]: tensor for c, tensor in zip(prep.numeric, numeric, strict=True)}
        joined = numeric[0] if len(numeric) == 1 else keras.layers.Concatenate(axis=1)(numeric)
        blocks.append(NumericPreprocessing.fitted(prep)(joined))
    # networks of session 14 on make codes one-hot in their first layer
    coded = any(isinstance(layer, CodeOneHot) for layer in members[0].layers)
    for j, column in enumerate(prep.categorical):
        missing_as = prep.impute_values.get(column)
        lookup = (CategoryCode if coded else CategoryOneHot)(
            prep.categories[column],
            None if missing_as is None else str(missing_as),
            name=f"{'code' if coded else 'one_hot'}_{j}",
        )
        blocks.append(lookup(inputs[names[column]]))
    features = blocks[0] if len(blocks) == 1 else keras.layers.Concatenate(axis=1)(blocks)
    scores = []
    for i, member in enumerate(members):
        member.name = f"member_{i}"  # (each was saved as "mlp")
        scores.append(member(features))
    probability = scores[0] if len(scores) == 1 else keras.layers.Average()(scores)
    probability = keras.layers.Identity(name="probability")(probability)
    corrected = Calibrate(calibration.model_dump(), name="probability_corrected")(scores)
    return keras.Model(
        inputs, {"probability": probability, "probability_corrected": corrected}, name="imbalance"
    )


def load_keras(path: Any) -> Any:
    """A Keras model this project saved (any store: Keras reads a local copy). Its custom layers
    are registered with Keras by importing tasks.layers first: a process that built no network
    (every branch reused, or only scoring) has not imported it yet."""
    import keras

    import tasks.layers  # noqa: F401 - registers the custom layers the saved model uses
    from tasks.storage import local_copy

    with local_copy(path) as local:
        return keras.saving.load_model(local, compile=False)


def load_networks(paths: list[Any]) -> list[Any]:
    """The member networks saved at `paths`."""
    return [load_keras(path) for path in paths]


def raw_inputs(frame: pd.DataFrame, prep: Any) -> dict[str, np.ndarray]:
    """A frame's feature columns as the model's inputs: float32 numerics, canonical category
    strings ("" where missing)."""
    from tasks.ingest import canonical_categories

    names = column_inputs(prep)
    if numeric_matrix(prep):
        numerics = frame[prep.numeric].to_numpy(dtype=np.float32, na_value=np.nan)
        inputs = {NUMERIC_MATRIX: numerics}
    else:
        inputs = {
            names[c]: frame[c].to_numpy(dtype=np.float32, na_value=np.nan).reshape(-1, 1)
            for c in prep.numeric
        }
    for column in prep.categorical:
        text = canonical_categories(frame[column]).astype(object).where(frame[column].notna(), "")
        inputs[names[column]] = text.to_numpy(dtype=object).astype(str).reshape(-1, 1)
    return inputs


def score(model: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's outputs for raw inputs, as float64 vectors (direct calls on chunks)."""
    n = len(next(iter(inputs.values()))) if inputs else 0
    parts: dict[str, list[np.ndarray]] = {k: [] for k in OUTPUTS}
    for start in range(0, max(n, 1), SCORE_CHUNK):
        chunk = {k: v[start : start + SCORE_CHUNK] for k, v in inputs.items()}
        out = model(chunk, training=False)
        for key in OUTPUTS:
            parts[key].append(np.asarray(out[key]).reshape(-1))
    return {k: np.concatenate(v).astype(np.float64) for k, v in parts.items()}


def write(model: Any, model_dir: Path, meta_json: str, saved_model: bool = True) -> None:
    """`model.keras` and (unless `saved_model` is off) `saved_model/`, with `model.json` (the
    text `meta_json`) among its assets, into the local directory `model_dir`."""
    import tensorflow as tf

    model.save(model_dir / KERAS_FILE)
    if not saved_model:
        return
    with tempfile.TemporaryDirectory(prefix="imbalance-export-") as scratch:
        asset = Path(scratch) / "model.json"
        asset.write_text(meta_json)
        archive = _archive(model, tf.saved_model.Asset(str(asset)))
        target = model_dir / SAVED_MODEL_DIR
        shutil.rmtree(target, ignore_errors=True)
        archive.write_out(str(target), verbose=False)


def _archive(model: Any, asset: Any) -> Any:
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    signature = {
        name: tf.TensorSpec((None, *tensor.shape[1:]), tf.as_dtype(tensor.dtype), name=name)
        for name, tensor in model.input.items()
    }
    archive.add_endpoint(
        SERVING_SIGNATURE, lambda inputs: model(inputs, training=False), [signature]
    )
    # the file, reachable from the SavedModel's root, is copied into its assets/ (Keras's
    # ExportArchive saves this object; `track` alone keeps only lookup tables)
    archive._tf_trackable.model_json = asset
    return archive
