"""Issue 16, part 1: the exported model stands alone. Its SavedModel, loaded with
`tf.saved_model.load` in an isolated interpreter (`python -I`, another directory) that never
imports this project, gives the probabilities the run stored for its own test rows (to 1e-5),
from raw columns. `model.keras` loads with Keras where the project is installed.

Three real runs: the built-in Wisconsin data (an ensemble: member average and prior-shift
calibration; column names TensorFlow must sanitise), the synthetic fixture (a categorical with
focal loss: one-hot lookup and the focal inverse; numerics through periodic embeddings) and,
when ../shared/data is there, a sample of the insurance cross-sell data (real categoricals, a
53-level one embedded)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.train import train_flow
from tasks.datasets import BUILTINS
from tasks.standalone import raw_inputs
from tests.conftest import SHARED_DATA, SYNTHETIC, fast_config

ISOLATED = r"""
import json, sys
import numpy as np
import tensorflow as tf

answers = []
for model_dir, inputs_file in zip(sys.argv[1::2], sys.argv[2::2]):
    loaded = tf.saved_model.load(model_dir + "/saved_model")
    serve = loaded.signatures["serving_default"]
    data = np.load(inputs_file, allow_pickle=False)
    out = serve(**{name: tf.constant(data[name]) for name in data.files})
    with open(loaded.model_json.asset_path.numpy().decode()) as handle:
        meta = json.load(handle)
    answers.append({
        "probability": out["probability"].numpy().ravel().tolist(),
        "probability_corrected": out["probability_corrected"].numpy().ravel().tolist(),
        "threshold": meta["threshold"],
        "inputs": meta["inputs"],
    })
project = sorted({m.split(".")[0] for m in sys.modules} & {"tasks", "flows", "deployments"})
print(json.dumps({"answers": answers, "project_modules": project}))
"""


def insurance_sample(tmp_path: Path) -> Path | None:
    source = SHARED_DATA / "insurance_cross_sell" / "train.csv.gz"
    if not source.exists():
        return None
    frame = pd.read_csv(source).sample(6_000, random_state=3)
    path = tmp_path / "insurance_sample.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(name, run result, raw frame the run read) for each case."""
    tmp = tmp_path_factory.mktemp("standalone")
    cases = [
        (
            "wdbc",
            fast_config(
                tmp / "runs",
                **{k: None for k in ("target", "positive", "id")},
                data="breast_cancer",
                categorical=[],
                strategies=["ensemble"],
                saved_model=True,
            ),
            BUILTINS["breast_cancer"].load(),
        ),
        (
            "synthetic",
            fast_config(
                tmp / "runs",
                strategies=["focal_loss"],
                saved_model=True,
                numeric_embedding="periodic",  # the embedding layer exports too
                lr_schedule="cosine",
            ),
            pd.read_csv(SYNTHETIC),
        ),
    ]
    sample = insurance_sample(tmp)
    if sample is not None:
        settings = {
            "data": str(sample),
            "target": "Response",
            "positive": "1",
            "id": "id",
            "categorical": ["Gender", "Vehicle_Age", "Vehicle_Damage", "Region_Code"],
            "category_embedding": "embedding",  # Region_Code's 53 levels: learned vectors
            "strategies": ["class_weight"],
            "saved_model": True,
        }
        cases.append(("insurance", fast_config(tmp / "runs", **settings), pd.read_csv(sample)))
    # the Wisconsin run again: its branch is reused and its standalone model copied from the
    # store (tasks.export's kept exports), which must serve exactly as one built afresh
    cases.append(("wdbc, kept export", cases[0][1], cases[0][2]))
    return [(name, train_flow(config), frame) for name, config, frame in cases]


def stored_test_rows(result, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The run's stored test predictions and the raw rows they were made for, in one order."""
    stored = pd.read_parquet(Path(result.model_dir) / "evaluation.parquet")
    stored = stored[stored.part == "test"]
    id_column = result.feature_set.manifest["id_column"]
    if id_column:
        raw = frame.set_index(id_column, drop=False).loc[stored["__id"].to_numpy()]
    else:  # row positions
        raw = frame.iloc[stored["__id"].to_numpy()]
    return raw.reset_index(drop=True), stored.reset_index(drop=True)


def test_the_saved_model_scores_raw_rows_in_an_isolated_interpreter(runs, tmp_path):
    from tasks.predict import LoadedModel

    args, expected = [], []
    for name, result, frame in runs:
        raw, stored = stored_test_rows(result, frame)
        inputs_file = tmp_path / f"{name}.npz"
        inputs = raw_inputs(raw, LoadedModel(Path(result.model_dir)).prep)
        np.savez(
            inputs_file, **{k: v.astype(str) if v.dtype == object else v for k, v in inputs.items()}
        )
        args += [result.model_dir, str(inputs_file)]
        expected.append((name, result, stored))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, "-I", "-c", ISOLATED, *args],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["project_modules"] == []
    for (name, result, stored), got in zip(expected, answer["answers"], strict=True):
        for column in ("probability", "probability_corrected"):
            difference = np.abs(np.asarray(got[column]) - stored[column].to_numpy())
            assert difference.max() < 1e-5, (name, column, difference.max())
        assert got["threshold"] == pytest.approx(result.threshold)
    wdbc_inputs = answer["answers"][0]["inputs"]
    assert wdbc_inputs["concave points_mean"] == "concave_points_mean"
    assert all(" " not in name for name in wdbc_inputs.values())


def test_the_keras_file_loads_where_the_project_is_installed(runs):
    """`model.keras` needs only `tasks.layers` beside Keras; its outputs are the run's, the
    learned embeddings included."""
    import keras

    import tasks.layers  # noqa: F401 (registers the custom layers)
    from tasks.predict import LoadedModel
    from tasks.standalone import score

    for name, result, frame in runs:
        if name not in ("synthetic", "insurance"):  # categorical, focal, periodic numerics
            continue
        raw, stored = stored_test_rows(result, frame)
        model = keras.saving.load_model(Path(result.model_dir) / "model.keras")
        embedded = model.get_layer("member_0").get_layer("embeddings").embeddings
        # insurance: 3,600 training rows, so periodic numerics by default, and Region_Code
        assert (embedded.numeric > 0, len(embedded.categories)) == (
            (True, 0) if name == "synthetic" else (True, 1)
        )
        out = score(model, raw_inputs(raw, LoadedModel(Path(result.model_dir)).prep))
        for column in ("probability", "probability_corrected"):
            assert np.abs(out[column] - stored[column].to_numpy()).max() < 1e-5, name


def test_the_model_directory_holds_everything_a_server_needs(runs):
    built, copied = (result for name, result, _ in runs if name.startswith("wdbc"))
    assert "reused_from" in json.loads(Path(copied.metrics_path).read_text())["strategies"][0]
    for result in (copied, built):  # the SavedModel's copy of model.json is each run's own
        model_dir = Path(result.model_dir)
        meta = json.loads((model_dir / "model.json").read_text())
        assert (model_dir / "saved_model" / "saved_model.pb").is_file()
        saved = json.loads((model_dir / "saved_model" / "assets" / "model.json").read_text())
        assert saved == meta and meta["run_id"] == result.run_id
    assert (model_dir / "MODEL_CARD.md").is_file()  # the card travels with the model
    assert meta["standalone"] == {
        "keras": "model.keras",
        "saved_model": "saved_model",
        "signature": "serving_default",
        "outputs": ["probability", "probability_corrected"],
    }
    assert set(meta["inputs"]) == set(meta["schema"]["numeric"] + meta["schema"]["categorical"])
