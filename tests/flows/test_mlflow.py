"""Issue 16, part 2: MLflow tracking and registry, against a real local tracking store (SQLite,
MLflow 3's default backend) in a temporary directory. Skipped when the `mlflow` extra is not
installed (`make test` installs it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

mlflow = pytest.importorskip("mlflow")

from flows.champion import main as champion_main  # noqa: E402
from flows.train import train_flow  # noqa: E402
from tests.conftest import SYNTHETIC, fast_config  # noqa: E402

NAME = "synthetic-churned"


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """Two runs of one model name: promoted (the first), kept (margin 1). One seed for both:
    the split is the same, so the test rows are rows neither model trained on."""
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    runs = tmp / "runs"

    def run(margin: float):
        return train_flow(
            fast_config(
                runs,
                strategies=["baseline"],
                tracking_uri=uri,
                promote_margin=margin,
                bootstrap=1000,
            )
        )

    results = [run(0.0), run(1.0)]
    return uri, runs, results


def client(uri: str):
    return mlflow.MlflowClient(tracking_uri=uri)


def test_each_run_is_tracked_with_its_config_strategies_artifacts_and_tags(tracked):
    uri, _, results = tracked
    first = results[0]
    experiment = client(uri).get_experiment_by_name(f"imbalance/{NAME}")
    runs = client(uri).search_runs(
        [experiment.experiment_id], filter_string=f"tags.`imbalance.run_id` = '{first.run_id}'"
    )
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {
        r.info.run_name: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert set(children) == {"baseline", "reference"}
    assert parent.data.params["epochs"] == "4" and parent.data.params["seed"] == "42"
    assert json.loads(parent.data.params["strategies"]) == ["baseline"]
    assert parent.data.tags["imbalance.data_fingerprint"] == first.feature_set.fingerprint
    assert parent.data.tags["imbalance.selected"] == first.selected
    board = pd.read_csv(Path(first.run_dir) / "leaderboard.csv").set_index("strategy")
    for strategy, child in children.items():
        assert child.data.metrics["test_pr_auc"] == pytest.approx(board.loc[strategy, "pr_auc"])
    assert parent.data.metrics["test_pr_auc"] == pytest.approx(board.loc[first.selected, "pr_auc"])
    artifacts = {a.path for a in client(uri).list_artifacts(parent.info.run_id)}
    assert {"report.html", "leaderboard.csv", "run.json", "MODEL_CARD.md"} <= artifacts
    # artifacts beside the database, never in the directory the process runs from
    assert experiment.artifact_location.startswith(Path(uri[len("sqlite:///") :]).parent.as_uri())
    assert not (Path.cwd() / "mlruns").exists()


def test_models_are_registered_and_the_decisions_set_the_aliases(tracked):
    uri, _, results = tracked
    decisions = [r.registry["decision"] for r in results]
    assert decisions == ["promoted", "kept_champion"], [r.registry["reason"] for r in results]
    assert [r.registry["mlflow"]["version"] for r in results] == ["1", "2"]
    champion = client(uri).get_model_version_by_alias(NAME, "champion")
    challenger = client(uri).get_model_version_by_alias(NAME, "challenger")
    assert champion.tags["imbalance.run_id"] == results[0].run_id
    assert challenger.tags["imbalance.run_id"] == results[1].run_id


def test_the_registered_pyfunc_scores_raw_rows_like_flows_predict(tracked):
    uri, _, results = tracked
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    stored = pd.read_parquet(Path(results[0].model_dir) / "evaluation.parquet")
    stored = stored[stored.part == "test"]
    raw = pd.read_csv(SYNTHETIC).set_index("account_id", drop=False).loc[stored["__id"]]
    scored = model.predict(raw.drop(columns="churned").reset_index(drop=True))
    assert np.abs(scored["probability"].to_numpy() - stored["probability"].to_numpy()).max() < 1e-5
    assert (
        scored["is_positive"].tolist() == (stored["probability"] >= results[1].threshold).tolist()
    )


def test_champion_commands_move_the_mlflow_aliases(tracked, capsys):
    uri, runs, results = tracked
    base = ["--runs-dir", str(runs), "--tracking-uri", uri]

    def champion_after(*command: str) -> tuple[dict, object]:
        assert champion_main([*base, *command]) == 0
        answer = json.loads(capsys.readouterr().out)
        return answer, client(uri).get_model_version_by_alias(NAME, "champion")

    answer, champion = champion_after("promote", NAME, results[1].run_id)
    assert answer["mlflow_version"] == "2" and str(champion.version) == "2"
    answer, champion = champion_after("rollback", NAME)
    assert answer["mlflow_version"] == "1"
    assert champion.tags["imbalance.run_id"] == results[0].run_id
    # a new threshold is a new model version: registered, then champion
    answer, champion = champion_after("set-threshold", NAME, "--objective", "recall@precision:0.5")
    assert answer["mlflow_version"] == "3" and str(champion.version) == "3"
    assert champion.tags["imbalance.model_dir"].endswith("model-v2")


def test_mlflow_tracking_without_mlflow_is_refused_before_any_work(monkeypatch):
    import importlib.util

    from tasks.config import TrainConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    with pytest.raises(ValueError, match=r"needs MLflow: pip install -e '\.\[mlflow\]'"):
        TrainConfig(tracking_uri="sqlite:///x.db")
