"""End to end: a real Prefect server on a free loopback port, the deployments served by
`deployments/serve.py` in its own process, a training run triggered through the API.

Also proves the cron deployment gets scheduled runs from the server's scheduler (which
sqlalchemy 2.1 silently breaks; hence the pin)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import FAST, SYNTHETIC_SETTINGS

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    check, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None
):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"{what}: process exited ({proc.returncode}):\n"
                f"{log.read_text()[-3000:] if log else ''}"
            )
        result = check()
        if result:
            return result
        time.sleep(1)
    raise AssertionError(
        f"timed out waiting for {what}" + (f":\n{log.read_text()[-3000:]}" if log else "")
    )


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def server(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = os.environ | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
    }
    env.pop("PREFECT_API_URL", None)
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
        proc = subprocess.Popen(
            [*command, "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: healthy(url), 120, "the Prefect server", proc, log)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_served_training_deployment_runs_through_the_api(server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    output = tmp_path / "runs"
    strategies = ["baseline", "class_weight"]
    config = {**SYNTHETIC_SETTINGS, "runs_dir": str(output), "strategies": strategies, **FAST}
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = os.environ | {
        "PREFECT_API_URL": server,
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        command = [sys.executable, "deployments/serve.py", "--model-name", "synthetic-churned"]
        served = subprocess.Popen(
            [*command, "--config", str(config_file)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with temporary_settings({PREFECT_API_URL: server}):

            async def deployment():
                async with get_client() as client:
                    try:
                        return await client.read_deployment_by_name(
                            "imbalance-train/weekly-retrain"
                        )
                    except Exception:
                        return None

            import asyncio

            found = wait_for(
                lambda: asyncio.run(deployment()), 120, "the served deployment", served, log
            )
            assert found.schedules and found.schedules[0].schedule.cron == "0 3 * * 1"
            assert found.parameters["config"]["strategies"] == ["baseline", "class_weight"]

            async def scheduled_runs():
                async with get_client() as client:
                    return await client.read_flow_runs(
                        deployment_filter=DeploymentFilter(
                            name=DeploymentFilterName(any_=["weekly-retrain"])
                        ),
                        flow_run_filter=FlowRunFilter(
                            state=FlowRunFilterState(
                                type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])
                            )
                        ),
                    )

            runs = wait_for(
                lambda: asyncio.run(scheduled_runs()), 60, "scheduled runs of the cron deployment"
            )
            assert all(
                r.expected_start_time.weekday() == 0 and r.expected_start_time.hour == 3
                for r in runs
            )

            from prefect.deployments import run_deployment

            flow_run = run_deployment(
                "imbalance-train/weekly-retrain", timeout=300, poll_interval=2
            )
            assert flow_run.state.is_completed(), (flow_run.state, log.read_text()[-3000:])

            async def artifacts():
                async with get_client() as client:
                    return await client.read_artifacts(
                        artifact_filter=ArtifactFilter(
                            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])
                        )
                    )

            keys = {a.key for a in asyncio.run(artifacts())}
            assert {"leaderboard", "verdict", "report"} <= keys
        latest = output / "latest"
        metrics = json.loads((latest / "metrics.json").read_text())
        assert metrics["flow_run_id"] == str(flow_run.id)
        assert {r["strategy"] for r in metrics["strategies"]} == {
            "baseline",
            "class_weight",
            "reference",
        }
    finally:
        served.terminate()
        served.wait(timeout=30)
