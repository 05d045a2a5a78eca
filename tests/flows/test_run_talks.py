"""Issue 13: a command-line run against a Prefect server that is already running (as after
`make server`) uses it, and everything the run says reaches that server: its log lines, its
per-strategy progress and "strategies k/n done", under a unique flow-run name.

The session's test server stands in for `make server`: the command line finds it the way it
finds `prefect server start`, through Prefect's own host and port settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.conftest import SYNTHETIC

ROOT = Path(__file__).resolve().parents[2]
FLAGS = [
    *("--data", str(SYNTHETIC), "--target", "churned", "--positive", "yes"),
    *("--id", "account_id", "--categorical", "segment", "--strategies", "baseline,ensemble"),
    *("--hidden", "4", "--epochs", "1", "--batch-size", "64", "--ensemble-k", "2"),
    *("--bootstrap", "1000", "--json", "--no-saved-model", "--no-data-docs"),
]


def session_server_port() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(urlparse(PREFECT_API_URL.value()).port)


def command_line_env(home: Path, port: str) -> dict[str, str]:
    """A user's environment: no PREFECT_API_URL, logs shipped to the API (Prefect's default),
    Prefect's server address pointing at the running server."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    return env | {
        "IMBALANCE_PROGRESS_ARTIFACTS": "true",
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": port,
    }


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One `python -m flows.train` process, as a user runs it beside a running server."""
    tmp = tmp_path_factory.mktemp("talks")
    done = subprocess.run(
        [sys.executable, "-m", "flows.train", *FLAGS, "--runs-dir", str(tmp / "runs")],
        cwd=ROOT,
        env=command_line_env(tmp / "prefect-home", session_server_port()),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout), done.stderr


def test_a_running_server_is_used_and_shows_the_run(cli_run):
    from prefect.client.orchestration import get_client

    answer, stderr = cli_run
    assert f"Using the Prefect server at http://127.0.0.1:{session_server_port()}" in stderr
    assert "temporary server" not in stderr  # no start-up of its own
    flow_run_id = answer["flow_run_url"].rsplit("/", 1)[1]
    assert answer["run_id"].endswith(flow_run_id.replace("-", "")[:8])
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
    assert flow_run.state.is_completed()
    # unique names: the start time to the second and the run's id
    assert flow_run.name.startswith("train-synthetic-2") and flow_run.name.endswith(
        flow_run_id.replace("-", "")[:8]
    )


def test_the_project_lines_reach_the_flow_runs_logs(cli_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    answer, _ = cli_run
    flow_run_id = answer["flow_run_url"].rsplit("/", 1)[1]
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
        )
    by_logger = {(log.name, log.message.split(" (")[0]) for log in logs}
    assert ("tasks.branches", "selected baseline") in by_logger or (
        "tasks.branches",
        "selected ensemble",
    ) in by_logger
    assert any(log.name == "tasks.gates" and "raw gate" in log.message for log in logs)
    assert any(log.name == "tasks.train" and log.task_run_id for log in logs)  # in its task


def test_progress_artifacts_show_each_strategy_and_the_count(cli_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
    )

    answer, _ = cli_run
    flow_run_id = answer["flow_run_url"].rsplit("/", 1)[1]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                type=ArtifactFilterType(any_=["progress"]),
            )
        )
    described = {a.description.split(":")[0]: a for a in artifacts}
    assert described["strategies 3/3 done"].data == 100.0
    assert described["strategies 3/3 done"].task_run_id is None  # on the flow run itself
    for strategy in ("baseline", "ensemble", "reference"):
        assert described[strategy].data == 100.0 and described[strategy].task_run_id
        assert described[strategy].description.startswith(f"{strategy}: ok")
    assert "2 members" not in described["ensemble"].description  # finished: its steps, best
    assert "best 0." in described["ensemble"].description or "best 1." in (
        described["ensemble"].description
    )


def test_make_server_waits_for_the_server_and_names_its_ui(tmp_path, monkeypatch):
    """`make server` runs `python -m flows.server` after starting Prefect's server: it waits
    until the server answers and prints the UI's address (and fails when nothing answers)."""
    port = session_server_port()
    env = command_line_env(tmp_path, port)
    done = subprocess.run(
        [sys.executable, "-m", "flows.server"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0 and f"Prefect UI: http://127.0.0.1:{port}" in done.stdout
    from flows.server import wait_for_local_server

    monkeypatch.setenv("PREFECT_SERVER_API_PORT", "1")  # nothing listens there
    assert wait_for_local_server(timeout=0.5) == 1
