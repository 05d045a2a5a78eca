"""Every suite file is well formed, and a gate cannot pass by not finding what it checks."""

import json

import numpy as np
import pandas as pd
import pytest

from tasks import gates
from tasks.errors import GateFailed

SUITES = sorted(p.stem for p in gates.EXPECTATIONS_DIR.glob("*.json"))


@pytest.mark.parametrize("name", SUITES)
def test_every_expectation_states_its_reason(name):
    spec = json.loads((gates.EXPECTATIONS_DIR / f"{name}.json").read_text())
    assert spec["expectations"]
    for entry in spec["expectations"]:
        assert entry["notes"] and "reason" not in entry.get("meta", {}), entry  # GX's own field
    for value in spec.get("parameters", {}).values():
        assert isinstance(value, int | float)


def test_a_missing_fact_column_fails_the_gate():
    facts = pd.DataFrame([{"train_positive_rate_gap": 0.0}])  # everything else is missing
    with pytest.raises(GateFailed, match="could not be evaluated"):
        gates.validate("split", "split", {"facts": facts}, {"splits": ["train"], "group": None})


def test_limits_are_suite_parameters_overridable_by_config():
    facts = pd.DataFrame(
        [
            {
                "removed_share_positive": 0.0,
                "removed_share_negative": 0.15,
                "rows_removed_outside_train": 0,
            }
        ]
    )
    bindings = {"classes": ["positive", "negative"]}
    assert gates.validate("outliers", "outliers", {"facts": facts}, bindings).success  # default 0.2
    with pytest.raises(GateFailed, match="share of 0.15 of the 'negative' class"):
        gates.validate(
            "outliers", "outliers", {"facts": facts}, bindings, {"max_removed_share": 0.1}
        )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([0.2, np.nan, 0.4], "missing values"),
        ([0.2, 1.5, 0.4], "unexpected values"),
        ([0.3, 0.3, 0.3], "1 distinct probability values"),
    ],
    ids=["nan", "out-of-range", "constant"],
)
def test_prediction_gate(values, message):
    gates.validate("predictions", "predictions", pd.DataFrame({"probability": [0.1, 0.9]}), {})
    with pytest.raises(GateFailed, match=message):
        gates.validate("predictions", "predictions", pd.DataFrame({"probability": values}), {})


def test_a_gate_away_from_its_runs_machine_validates_in_memory(tmp_path, caplog):
    """A Dask worker on another host is handed a project path that does not exist there: the
    gate still validates, and no stray project is created."""
    from tasks import gx_run

    away = tmp_path / "elsewhere" / "work" / "gx"
    frame = pd.DataFrame({"probability": [0.1, 0.9]})
    with gx_run.recording(away):
        report = gates.validate("predictions[x]", "predictions", frame, {}, {})
    assert report.success and not (tmp_path / "elsewhere").exists()
    assert "not on this machine" in caplog.text
