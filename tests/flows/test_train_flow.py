"""Real Prefect runs of the training flow (test harness, SQLite) on the synthetic fixture."""

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path

import great_expectations as gx
import numpy as np
import pandas as pd
import pytest

from flows.train import main, train_flow
from tasks.calibration import Calibration
from tasks.evaluate import evaluate
from tasks.storage import location, read_parquet
from tasks.strategies import STRATEGIES
from tasks.thresholds import parse_objective, tune_threshold
from tests.conftest import RUN_FILES, argv, fast_config, run_with_a_third_label

RECORD_KEYS = {
    "strategy",
    "status",
    "error",
    "threshold",
    "threshold_objective",
    "started_at",
    "finished_at",
    "steps",
    "train_seconds",
    "calibration",
    "train_class_counts",
    "pr_auc",
    "roc_auc",
    "f1",
    "precision",
    "recall",
    "mcc",
    "balanced_accuracy",
    "g_mean",
    "brier",
    "log_loss",
    "confusion_matrix",
    "at_0_5",
    "validation",
}


def branch_predictions(result, strategy) -> pd.DataFrame:
    return read_parquet(location(result.run_dir) / "branches" / strategy / "predictions.parquet")


def test_run_layout_and_output_contract(full_run):
    config, result, metrics = full_run
    run_dir = Path(result.run_dir)
    output = Path(config.runs_dir)
    completed = sorted(
        p.name
        for p in output.iterdir()
        if not p.is_symlink()
        and (p / "run.json").is_file()
        and json.loads((p / "run.json").read_text())["status"] == "completed"
    )
    assert result.run_id in completed
    assert (output / "latest").is_symlink() and (output / "latest").resolve().name == completed[-1]
    assert sorted(p.name for p in run_dir.iterdir()) == RUN_FILES
    assert not list(output.glob(".*partial"))
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "completed" and run["config"]["seed"] == config.seed
    assert [s["stage"] for s in run["stages"]][:2] == ["ingest", "feature-store"]
    reference = run["reference_comparison"]  # selected vs the gradient-boosting reference
    assert reference["n_rows"] == 80
    assert reference["pr_auc_interval"]["low"] <= reference["pr_auc_difference"]
    assert reference["pr_auc_difference"] <= reference["pr_auc_interval"]["high"]
    assert "gradient-boosting reference" in run["verdict"]

    assert (
        metrics["run_id"] == result.run_id
        and metrics["data_fingerprint"] == result.feature_set.fingerprint
    )
    assert metrics["flow_run_id"] and metrics["config"]["strategies"] is None
    names = [r["strategy"] for r in metrics["strategies"]]
    assert sorted(names) == sorted([*STRATEGIES, "reference"])
    for record in metrics["strategies"]:
        assert record["status"] == "ok", record
        assert set(record) >= RECORD_KEYS
        assert datetime.fromisoformat(record["started_at"]) <= datetime.fromisoformat(
            record["finished_at"]
        )
        assert set(record["confusion_matrix"]) == {"tn", "fp", "fn", "tp"}
        assert sum(record["confusion_matrix"].values()) == 80  # every test row, once
        assert 0 < record["threshold"] < 1 and 0 <= record["pr_auc"] <= 1
    selected = next(r for r in metrics["strategies"] if r["strategy"] == metrics["selected"])
    assert selected["eligible"] and metrics["selected"] != "reference"
    best_eligible = max(
        (r for r in metrics["strategies"] if r["eligible"]), key=lambda r: r["validation"]["pr_auc"]
    )
    evidence = metrics["selection"]  # the leader is selected only when reliably better
    if best_eligible["strategy"] == "baseline":
        assert evidence is None and metrics["selected"] == "baseline"
    else:
        by_name = {r["strategy"]: r for r in metrics["strategies"]}
        assert evidence["leader"] == best_eligible["strategy"]
        reliable = evidence["pr_auc_interval"]["low"] > 0
        assert metrics["selected"] == (evidence["leader"] if reliable else "baseline")
        assert evidence["pr_auc_difference"] == pytest.approx(
            best_eligible["validation"]["pr_auc"] - by_name["baseline"]["validation"]["pr_auc"]
        )
        predictions = pd.read_parquet(run_dir / "branches" / "baseline" / "predictions.parquet")
        assert evidence["n_rows"] == (predictions.part == "tune").sum() > 0
        assert f"{evidence['leader']} ranked first" in run["verdict"]

    board = pd.read_csv(run_dir / "leaderboard.csv")
    assert len(board) == len(STRATEGIES) + 1 and board["rank"].tolist() == list(range(1, 10))
    assert board["validation_rank_metric"].is_monotonic_decreasing


def test_resampling_touched_only_training_rows(full_run):
    _, result, metrics = full_run
    halves = result.feature_set.manifest["validation_halves"]
    train = result.feature_set.manifest["splits"]["train"]
    for record in metrics["strategies"]:
        predictions = branch_predictions(result, record["strategy"])
        sizes = predictions.groupby("part").size().to_dict()
        assert sizes == {"stop": halves["stop"]["rows"], "tune": halves["tune"]["rows"], "test": 80}
        assert predictions.groupby("part")["y"].sum().to_dict() == {
            "stop": halves["stop"]["positives"],
            "tune": halves["tune"]["positives"],
            "test": 12,
        }
    counts = {r["strategy"]: r["train_class_counts"] for r in metrics["strategies"]}
    pos, neg = train["positives"], train["negatives"]
    assert (
        counts["baseline"]
        == counts["class_weight"]
        == counts["reference"]
        == {"yes": pos, "no": neg}
    )
    assert counts["undersample"] == counts["ensemble"] == {"yes": pos, "no": pos}
    assert counts["oversample"] == counts["smote"] == {"yes": neg, "no": neg}


def test_thresholds_come_from_the_tuning_half_and_metrics_from_test(full_run):
    config, result, metrics = full_run
    for record in metrics["strategies"]:
        predictions = branch_predictions(result, record["strategy"])
        tune = predictions[predictions.part == "tune"]
        test = predictions[predictions.part == "test"]
        threshold, value = tune_threshold(
            tune.y.to_numpy(), tune.probability.to_numpy(), parse_objective("f1")
        )
        assert record["threshold"] == pytest.approx(threshold)
        assert record["validation"]["f1"] == pytest.approx(value)
        recomputed = evaluate(
            test.y.to_numpy(),
            test.probability.to_numpy(),
            threshold,
            test.probability_corrected.to_numpy(),
        )
        assert record["pr_auc"] == pytest.approx(recomputed["pr_auc"])
        assert record["confusion_matrix"] == recomputed["confusion_matrix"]
        assert record["at_0_5"]["threshold"] == 0.5


CALIBRATION_METHODS = {
    "baseline": "identity",
    "reference": "identity",
    "class_weight": "prior",
    "undersample": "prior",
    "oversample": "prior",
    "balanced_batches": "prior",
    "ensemble": "prior",
    "focal_loss": "focal",
    "smote": "platt",
}


def test_calibrated_probabilities_follow_each_strategys_map(full_run):
    _, result, metrics = full_run
    for record in metrics["strategies"]:
        calibration = Calibration.model_validate(record["calibration"])
        assert calibration.method == CALIBRATION_METHODS[record["strategy"]]
        if record["strategy"] == "ensemble":
            continue  # corrected member by member: covered by the unit and calibration tests
        predictions = branch_predictions(result, record["strategy"])
        expected = calibration.apply([predictions.probability.to_numpy()])
        assert np.allclose(predictions.probability_corrected, expected)
        if calibration.method == "prior":
            assert record["trained_prior"] == pytest.approx(0.5)
            assert calibration.true_prior == pytest.approx(record["true_prior"])


def test_training_task_runs_follow_the_work(full_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    _, result, metrics = full_run
    flow_run_id = metrics["flow_run_id"]

    async def task_runs():
        async with get_client() as client:
            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )

    # task runs reach the server as events, which its recorder writes in the background: under
    # load the last ones arrive a little after the flow returns
    deadline = time.monotonic() + 60
    while True:
        runs = asyncio.run(task_runs())
        names = {run.name for run in runs}
        if {"train-stack", "train-reference"} <= names or time.monotonic() > deadline:
            break
        time.sleep(1)
    # the networks train side by side in one task; the reference (scikit-learn) in its own
    assert {"train-stack", "train-reference"} <= names
    assert not {f"train-{name}" for name in STRATEGIES} & names
    assert {"ingest", "split", "outliers", "features"} <= {
        run.task_key.split("-")[0] for run in runs
    } | {n.rsplit("-", 1)[0] for n in names}
    # whether branches overlap in time depends on the machine's load: not asserted here
    # (test_identical_results_threaded_or_sequential shows parallel branches change nothing)


def test_second_run_reuses_the_feature_set(full_run):
    config, result, _ = full_run
    again = train_flow(config.model_copy(update={"strategies": ["baseline"]}))
    assert (
        again.feature_set.reused and again.feature_set.fingerprint == result.feature_set.fingerprint
    )
    run = json.loads((Path(again.run_dir) / "run.json").read_text())
    assert run["feature_set_reused"] is True
    assert "split" not in [s["stage"] for s in run["stages"]]
    assert (Path(config.runs_dir) / "latest").resolve() == Path(again.run_dir).resolve()


def test_identical_results_threaded_or_sequential(tmp_path):
    strategies = [
        "balanced_batches",
        "smote",
        "ensemble",
    ]  # tf.data sampling, sampler and member seeds
    threaded = train_flow(
        fast_config(tmp_path / "a", strategies=strategies, max_parallel=2, epochs=2)
    )
    sequential = train_flow(
        fast_config(tmp_path / "b", strategies=strategies, max_parallel=1, epochs=2)
    )
    for name in [*strategies, "reference"]:
        a = branch_predictions(threaded, name)
        b = branch_predictions(sequential, name)
        np.testing.assert_array_equal(
            a.probability.to_numpy(), b.probability.to_numpy(), err_msg=name
        )
    ma = {
        r["strategy"]: r for r in json.loads(Path(threaded.metrics_path).read_text())["strategies"]
    }
    mb = {
        r["strategy"]: r
        for r in json.loads(Path(sequential.metrics_path).read_text())["strategies"]
    }
    for name in ma:
        assert (
            ma[name]["threshold"] == mb[name]["threshold"]
            and ma[name]["pr_auc"] == mb[name]["pr_auc"]
        )


def test_a_failing_branch_does_not_sink_the_run(tmp_path, synthetic_frame):
    # 10 positives overall: 5 in training, too few for SMOTE's 5 neighbours.
    frame = pd.concat(
        [
            synthetic_frame[synthetic_frame.churned == "no"],
            synthetic_frame[synthetic_frame.churned == "yes"].iloc[:10],
        ]
    )
    data = tmp_path / "few.csv"
    frame.to_csv(data, index=False)
    config = fast_config(
        tmp_path / "runs",
        data=str(data),
        strategies=["baseline", "smote"],
        split=(0.5, 0.25, 0.25),
        min_positives_per_split=1,
        min_positives_per_half=1,
        min_class_count=5,
        split_ratio_tolerance=0.1,
    )
    result = train_flow(config)
    records = {
        r["strategy"]: r for r in json.loads(Path(result.metrics_path).read_text())["strategies"]
    }
    assert records["smote"]["status"] == "failed" and "n_neighbors" in records["smote"]["error"]
    assert records["smote"]["rank"] is None
    assert records["baseline"]["status"] == "ok" and result.selected == "baseline"
    board = pd.read_csv(Path(result.run_dir) / "leaderboard.csv")
    assert board.set_index("strategy").loc["smote", "status"] == "failed"


def test_memory_budget_skips_only_the_copying_strategy_with_its_reason(tmp_path, monkeypatch):
    """SMOTE must copy the training split; undersampling picks rows and never needs the budget.
    (The data path is held in memory here: on data this small, a budget below SMOTE's copy also
    sends the data out of core, tested in test_out_of_core.)"""
    import flows.train as train_module

    monkeypatch.setattr(train_module, "data_path", lambda config: train_module.IN_MEMORY)
    config = fast_config(
        tmp_path / "runs", strategies=["undersample", "smote"], memory_budget="10KB"
    )
    result = train_flow(config)
    assert result.feature_set.manifest["out_of_core"] is False
    metrics = json.loads(Path(result.metrics_path).read_text())
    records = {r["strategy"]: r for r in metrics["strategies"]}
    assert records["smote"]["status"] == "skipped" and records["smote"]["rank"] is None
    assert "GiB, over --memory-budget 10KB" in records["smote"]["error"]
    assert records["undersample"]["status"] == "ok" and result.selected == "undersample"
    board = pd.read_csv(Path(result.run_dir) / "leaderboard.csv").set_index("strategy")
    assert board.loc["smote", "status"] == "skipped"
    assert "skipped: its resampled copy" in Path(result.report_path).read_text()


def test_failed_gate_exits_2_and_leaves_only_its_record(tmp_path, synthetic_frame, capsys):
    code, output = run_with_a_third_label(tmp_path, synthetic_frame)
    assert code == 2
    assert "raw gate failed" in capsys.readouterr().err
    (run_dir,) = [p for p in output.iterdir()]
    assert sorted(p.name for p in run_dir.iterdir()) == ["gx", "run.json"]  # and its gates
    run = json.loads((run_dir / "run.json").read_text())
    assert (
        run["status"] == "failed"
        and run["failed_stage"] == "ingest"
        and run["failed_gate"] == "raw"
    )
    assert run["messages"] == [
        "raw gate: column 'churned' has 3 distinct values ('no', 'x', 'yes'); expected 2"
    ]
    assert run["config"]["data"] == str(tmp_path / "bad.csv")


def test_internal_error_exits_1_with_the_failed_stage(tmp_path, monkeypatch):
    import flows.train as train_module

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(train_module, "select_strategy", broken)
    output = tmp_path / "runs"
    code = main(
        argv(
            "--data {a0} --target churned --categorical segment --runs-dir {output} --strategies "
            "baseline --epochs 1 --hidden 4",
            a0=fast_config(output).data,
            output=output,
        )
    )
    assert code == 1
    (run_dir,) = [p for p in output.iterdir() if p.name != "store"]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["failed_stage"] == "select" and run["messages"] == ["disk on fire"]
    assert not (output / "latest").exists()


def ui_url() -> str:
    from prefect.settings import PREFECT_UI_URL

    return PREFECT_UI_URL.value()


def test_cli_run_succeeds_and_prints_the_run(tmp_path, capsys):
    output = tmp_path / "runs"
    code = main(
        argv(
            "--data {a0} --target churned --categorical segment --id account_id "
            "--runs-dir {output} "
            "--strategies class_weight --epochs 2 --hidden 4",
            a0=fast_config(output).data,
            output=output,
        )
    )
    assert code == 0
    captured = capsys.readouterr()
    # the answer on stdout: the leaderboard (the reference marked), what to ship, where it is
    out = [line.strip() for line in captured.out.splitlines()]
    latest = (output / "latest").resolve()
    board = {row[1]: row for row in (line.split() for line in out if line[:1].isdigit())}
    assert sorted(board) == ["class_weight", "reference"]
    assert board["reference"][2] == "*" and any(line.startswith("* a reference") for line in out)
    assert all(0 <= float(figure) <= 1 for row in board.values() for figure in row[-6:])
    assert [line for line in out if line.startswith("Ship ")] == [
        f"Ship class_weight at threshold {board['class_weight'][-1]} (selected on the "
        "validation tuning half by pr_auc)."
    ]
    assert any(line.startswith("Selected class_weight") for line in out)  # the verdict
    assert "Champion: promoted (first model of this name)." in out
    assert f"Report: {latest / 'report.html'}" in out and f"Model:  {latest / 'model'}" in out
    # the session's test server is a configured API (as a lasting server would be): its link
    run = json.loads((latest / "run.json").read_text())
    assert [line for line in out if line.startswith("In the Prefect UI: ")] == [
        f"In the Prefect UI: {ui_url()}/runs/flow-run/{run['flow_run_id']}"
    ]
    assert "{" not in captured.out  # no JSON unless asked (--json)
    # the project's own lines in the run's run.log, with Prefect's (on the console of a real
    # process: test_two_processes)
    run_log = (latest / "run.log").read_text()
    assert "INFO tasks.branches: selected class_weight" in run_log
    assert "task run train-stack: Finished in state Completed()" in run_log
    assert "ephemeral docs site" not in run_log  # GX's noise is off
    # the flow run carries the command line's tags, its task runs none: a tagged task run asks
    # the server for a concurrency slot per tag set, which took seconds (docs/performance.md)
    flow_tags, task_tags = run_tags(run["flow_run_id"], {"ingest", "train-stack", "report"})
    assert {"imbalance", "data:synthetic"} <= set(flow_tags)
    assert task_tags and all(tags == [] for tags in task_tags.values()), task_tags


def run_tags(flow_run_id: str, expected: set[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The flow run's tags and each task run's (by name), once `expected` task runs are there:
    task runs reach the server as events, recorded in the background."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            flow_run = await client.read_flow_run(flow_run_id)
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            return flow_run.tags, {r.name.rsplit("-", 1)[0]: r.tags for r in runs}

    deadline = time.monotonic() + 60
    while True:
        flow_tags, task_tags = asyncio.run(read())
        if expected <= set(task_tags) or time.monotonic() > deadline:
            return flow_tags, task_tags
        time.sleep(1)


def test_infeasible_objective_fails_every_branch_and_the_run(tmp_path, capsys):
    output = tmp_path / "runs"
    code = main(
        argv(
            "--data {a0} --target churned --categorical segment --runs-dir {output} --strategies "
            "baseline --epochs 1 --hidden 4 --objective recall@precision:1.0",
            a0=fast_config(output).data,
            output=output,
        )
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "every strategy failed: baseline: StrategyError: no threshold reaches precision 1" in err
    (run_dir,) = [p for p in output.iterdir() if p.name != "store"]
    assert json.loads((run_dir / "run.json").read_text())["failed_stage"] == "select"


def test_numeric_target_labels_keep_their_type(tmp_path, synthetic_frame):
    from flows.predict import predict_flow

    frame = synthetic_frame.assign(churned=(synthetic_frame.churned == "yes").astype(int))
    data = tmp_path / "numeric_target.csv"
    frame.to_csv(data, index=False)
    result = train_flow(
        fast_config(tmp_path / "runs", data=str(data), positive="1", strategies=["baseline"])
    )
    out = tmp_path / "scored.parquet"
    predict_flow(model=result.model_dir, data=str(data), out=str(out))
    scored = pd.read_parquet(out)
    assert scored["label"].dtype == np.int64 and set(scored["label"]) <= {0, 1}
    assert (scored["label"] == scored["is_positive"].astype(int)).all()


def test_transient_io_error_in_ingest_is_retried(tmp_path, monkeypatch):
    import tasks.ingest as ingest_module

    real = ingest_module.load_source
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError("stale file handle")
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest_module, "load_source", flaky)
    result = train_flow(
        fast_config(tmp_path / "runs", strategies=["baseline"], epochs=1, hidden=[4])
    )
    assert len(calls) == 2 and Path(result.run_dir).is_dir()


def test_a_failed_gate_is_not_retried(tmp_path, monkeypatch, synthetic_frame):
    import tasks.ingest as ingest_module

    real = ingest_module.load_source
    calls = []
    monkeypatch.setattr(
        ingest_module, "load_source", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    data = tmp_path / "one_class.csv"
    synthetic_frame.assign(churned="no").to_csv(data, index=False)
    with pytest.raises(Exception, match="raw gate failed"):
        train_flow(fast_config(tmp_path / "runs", data=str(data), strategies=["baseline"]))
    assert len(calls) == 1


def test_dask_runner_gives_the_same_results_as_threads(full_run, tmp_path):
    """Branches on a local Dask cluster (prefect-dask, worker processes) reproduce the thread
    runner's results: the shared full run used the same settings and data. The output is a
    `file://` URL, which the worker processes write their branches to."""
    _, threads, _ = full_run
    strategies = ["baseline", "undersample"]
    output = (tmp_path / "dask").as_uri()
    dask = train_flow(fast_config(output, strategies=strategies, runner="dask", max_parallel=2))
    assert dask.run_dir.startswith(output)
    assert dask.feature_set.fingerprint == threads.feature_set.fingerprint
    for name in [*strategies, "reference"]:
        a = branch_predictions(threads, name).probability.to_numpy()
        b = branch_predictions(dask, name).probability.to_numpy()
        np.testing.assert_array_equal(a, b, err_msg=name)
    records = json.loads(location(dask.metrics_path).read_text())["strategies"]
    assert all(r["status"] == "ok" for r in records)
    # the workers' predictions gates went through the run's GX project, like the threads'
    gx_project = gx.get_context(mode="file", context_root_dir=location(dask.run_dir).path + "/gx")
    gates = {key.run_id.run_name for key in gx_project.validation_results_store.list_keys()}
    assert {f"predictions[{name}]" for name in [*strategies, "reference"]} <= gates


def test_branch_failures_survive_pickling():
    import pickle

    from tasks.train import BranchFailed

    record = {"strategy": "smote", "status": "failed", "error": "ValueError: too few rows"}
    again = pickle.loads(pickle.dumps(BranchFailed(record)))
    assert again.record == record and "too few rows" in str(again)


def test_every_strategy_trains_on_one_schedule_and_shows_its_cost(full_run):
    """Same check interval and step cap for all; the leaderboard shows the steps each used and
    its training time, the ensemble's k members included."""
    _, result, metrics = full_run
    networks = [r for r in metrics["strategies"] if r["strategy"] != "reference"]
    assert len({json.dumps(r["schedule"], sort_keys=True) for r in networks}) == 1
    schedule = networks[0]["schedule"]
    for r in networks:
        for member in r["members"]:
            assert member["steps"] % schedule["steps_per_check"] == 0
            assert member["steps"] <= schedule["max_steps"]
        assert r["steps"] == sum(m["steps"] for m in r["members"])
        assert r["train_seconds"] == pytest.approx(
            sum(m["train_seconds"] for m in r["members"]), abs=0.01
        )
    ensemble = next(r for r in networks if r["strategy"] == "ensemble")
    assert len(ensemble["members"]) == 2
    board = pd.read_csv(Path(result.run_dir) / "leaderboard.csv")
    assert {"steps", "train_seconds", "calibration_method"} <= set(board.columns)
    assert board.set_index("strategy").loc["ensemble", "steps"] == ensemble["steps"]


def test_stacked_training_reproduces_the_one_at_a_time_reference(stages, tmp_path):
    """The trainer the runs use (every strategy's network side by side in one compiled program)
    against the reference (one task per strategy, Keras's own loop), on a fixed small case
    without dropout, where both are deterministic: every strategy's test PR-AUC agrees within
    0.005, and the same strategy is selected. Ensemble member 0 is the undersample network,
    trained once: 7 single networks + 2 ensemble members - 1 = 8 networks."""
    from tasks.train import select, train_branch, train_stack

    config = fast_config(tmp_path / "runs", dropout=0.0, epochs=3)
    feature_set = stages(config)["features"]
    names = list(STRATEGIES)
    stacked = train_stack.fn(names, feature_set, config, str(tmp_path / "stacked"))
    separate = [train_branch.fn(n, feature_set, config, str(tmp_path / "separate")) for n in names]
    for a, b in zip(stacked, separate, strict=True):
        assert a["strategy"] == b["strategy"] and a["status"] == b["status"] == "ok"
        assert abs(a["pr_auc"] - b["pr_auc"]) < 0.005, a["strategy"]
        assert a["trainer"] == "stacked: 8 networks in one program"
    assert select(stacked, config.rank_by)[1] == select(separate, config.rank_by)[1]
    by_name = {r["strategy"]: r for r in stacked}
    assert by_name["ensemble"]["members"][0] | {"train_seconds": 0} == by_name["undersample"][
        "members"
    ][0] | {"train_seconds": 0}
