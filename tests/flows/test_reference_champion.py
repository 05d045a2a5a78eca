"""--allow-reference-champion: when the gradient-boosting reference ranks first on the validation
tuning half it is shipped under the same rules as a network (threshold tuned on the tuning half,
export, card, registry, batch prediction); without the flag it is never selected, and the
report says by how much it beats the networks."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.predict import predict_flow
from flows.train import train_flow
from tasks.export import EVALUATION_FILE
from tasks.reference import REFERENCE_FILE
from tests.conftest import fast_config


@pytest.fixture(scope="module")
def box_data(tmp_path_factory) -> Path:
    """Positives in one axis-aligned corner of four uniform features: trees find the box at
    once; a small network after a few epochs does not."""
    rng = np.random.default_rng(11)
    x = rng.random((3000, 4))
    y = (x[:, 0] > 0.7) & (x[:, 1] > 0.7)
    y ^= rng.random(3000) < 0.01
    frame = pd.DataFrame(np.round(x, 5), columns=["a", "b", "c", "d"])
    frame["row"] = np.arange(3000)
    frame["flag"] = np.where(y, "yes", "no")
    path = tmp_path_factory.mktemp("box") / "box.csv"
    frame.to_csv(path, index=False)
    return path


def settings(data: Path, runs: Path, **overrides):
    return fast_config(
        runs,
        data=str(data),
        target="flag",
        positive="yes",
        id="row",
        categorical=[],
        strategies=["baseline"],
        epochs=2,
        **overrides,
    )


def test_the_reference_is_shipped_only_when_allowed_and_it_ranks_first(box_data, tmp_path):
    allowed = train_flow(settings(box_data, tmp_path / "allowed", allow_reference_champion=True))
    metrics = json.loads(Path(allowed.metrics_path).read_text())
    tune = {r["strategy"]: r["validation"]["pr_auc"] for r in metrics["strategies"]}
    assert allowed.selected == "reference", tune
    assert tune["reference"] == max(tune.values())

    model_dir = Path(allowed.model_dir)
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["kind"] == "gradient_boosting" and meta["members"] == [REFERENCE_FILE]
    assert meta["standalone"] is None and not (model_dir / "model.keras").exists()
    assert meta["threshold"] == next(
        r["threshold"] for r in metrics["strategies"] if r["strategy"] == "reference"
    )
    assert "--allow-reference-champion" in (model_dir / "MODEL_CARD.md").read_text()
    assert "The gradient-boosting reference is shipped" in allowed.verdict
    assert "this run allowed it" in Path(allowed.report_path).read_text()
    registry = json.loads((tmp_path / "allowed" / "registry" / "box-flag.json").read_text())
    assert registry["champion"]["run_id"] == allowed.run_id

    # batch prediction scores raw rows exactly as the run scored its test rows
    raw = pd.read_csv(box_data)
    evaluation = pd.read_parquet(model_dir / EVALUATION_FILE).query("part == 'test'")
    expected = evaluation.set_index("__id")["probability"]
    rows = raw[raw.row.isin(expected.index)].drop(columns="flag")
    data, out = tmp_path / "rows.csv", tmp_path / "scored.parquet"
    rows.to_csv(data, index=False)
    predict_flow(model=str(model_dir), data=str(data), out=str(out))
    scored = pd.read_parquet(out).set_index("row")
    np.testing.assert_allclose(
        scored.loc[expected.index, "probability"], expected, atol=1e-9, rtol=0
    )
    assert (scored.is_positive == (scored.probability >= meta["threshold"])).all()

    kept = train_flow(settings(box_data, tmp_path / "default"))
    assert kept.selected == "baseline"  # never the reference without the flag
    assert "**beats every network**" in kept.verdict
