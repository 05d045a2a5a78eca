"""End to end: a real Prefect server on a free loopback port (every service on, as
`prefect server start` runs it), the deployments served by `deployments/serve.py` in its own
process, training runs triggered through the API.

Also proves the cron deployment gets scheduled runs from the server's scheduler (which
sqlalchemy 2.1 silently breaks; hence the pin), that a promotion's event makes the server run
batch prediction with the new champion, and that a failed gate's event arrives and the shipped
alert automation notifies through a (local) webhook."""

import asyncio
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import FAST, SYNTHETIC, SYNTHETIC_SETTINGS

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


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def server(workdir):
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = os.environ | {
        "PREFECT_HOME": str(workdir / "prefect-home"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{workdir / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        # as `prefect server start` runs by default (the session's test server turns them off)
        "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "true",
        "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "true",
    }
    env.pop("PREFECT_API_URL", None)
    log = workdir / "server.log"
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


@pytest.fixture(scope="module")
def api(server):
    """This process talks to the e2e server (not the session's test server)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server}):
        yield server
        # Send whatever this process emitted to this server while it still runs: an events
        # worker left for a stopped server kept the session's last teardown waiting.
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=30)


class Webhook(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        length = int(self.headers.get("Content-Length", 0))
        Webhook.received.append(json.loads(self.rfile.read(length) or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def alerts(api):
    """A local webhook as the notification block, and the shipped alert automation on it."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from deployments.automations import main as create_automations

    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    CustomWebhookNotificationBlock(
        name="alerts",
        url=f"http://127.0.0.1:{receiver.server_address[1]}/hook",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
    ).save("e2e-alerts", overwrite=True)
    assert create_automations(["--notify-block", "custom-webhook/e2e-alerts"]) == 0
    assert create_automations(["--notify-block", "custom-webhook/e2e-alerts"]) == 0  # replaces
    yield Webhook.received
    receiver.shutdown()


@pytest.fixture(scope="module")
def served(server, workdir):
    output = workdir / "runs"
    strategies = ["baseline", "class_weight"]
    config = {**SYNTHETIC_SETTINGS, "runs_dir": str(output), "strategies": strategies, **FAST}
    config_file = workdir / "run.yaml"
    config_file.write_text(yaml.safe_dump(config))
    new_rows = workdir / "new_rows.csv"
    pd.read_csv(SYNTHETIC).drop(columns="churned").head(50).to_csv(new_rows, index=False)
    env = os.environ | {
        "PREFECT_API_URL": server,
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    log = workdir / "serve.log"
    with open(log, "w") as out:
        command = [sys.executable, "deployments/serve.py", "--config", str(config_file)]
        served = subprocess.Popen(
            [*command, "--predict-data", str(new_rows), "--predict-out", str(workdir / "scored")],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield output, log, served
    finally:
        served.terminate()
        served.wait(timeout=30)


def read(call):
    """Run one async client call against the e2e server; None when it raises."""
    from prefect.client.orchestration import get_client

    async def go():
        async with get_client() as client:
            try:
                return await call(client)
            except Exception:
                return None

    return asyncio.run(go())


def events_named(name: str) -> list:
    from prefect.events.filters import EventFilter, EventNameFilter

    page = read(  # (the client asks for 100 by default; the server allows 50)
        lambda c: c.read_events(EventFilter(event=EventNameFilter(name=[name])), limit=50)
    )
    return page.events if page else []


def test_served_training_deployment_runs_through_the_api(api, served):
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

    output, log, process = served
    found = wait_for(
        lambda: read(lambda c: c.read_deployment_by_name("imbalance-train/weekly-retrain")),
        120,
        "the served deployment",
        process,
        log,
    )
    assert found.schedules and found.schedules[0].schedule.cron == "0 3 * * 1"
    assert found.parameters["config"]["strategies"] == ["baseline", "class_weight"]
    assert "seed" not in found.parameters["config"]  # only what the file set

    def scheduled_runs(client):
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["weekly-retrain"])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
            ),
        )

    runs = wait_for(lambda: read(scheduled_runs), 60, "scheduled runs of the cron deployment")
    assert all(
        r.expected_start_time.weekday() == 0 and r.expected_start_time.hour == 3 for r in runs
    )

    from prefect.deployments import run_deployment

    flow_run = run_deployment("imbalance-train/weekly-retrain", timeout=300, poll_interval=2)
    assert flow_run.state.is_completed(), (flow_run.state, log.read_text()[-3000:])

    artifacts = read(
        lambda c: c.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
        )
    )
    assert {"leaderboard", "verdict", "report"} <= {a.key for a in artifacts}
    latest = output / "latest"
    metrics = json.loads((latest / "metrics.json").read_text())
    assert metrics["flow_run_id"] == str(flow_run.id)
    assert {r["strategy"] for r in metrics["strategies"]} == {
        "baseline",
        "class_weight",
        "reference",
    }


def test_a_promotion_makes_the_server_score_new_data_with_the_new_champion(api, served, workdir):
    """The first model of its name is promoted: the run emits `imbalance.model.promoted`, the
    batch-predict deployment's trigger starts a run, and the served process scores the new rows
    with the champion."""
    output, log, _ = served
    run_id = json.loads((output / "latest" / "run.json").read_text())["run_id"]
    (promoted,) = wait_for(
        lambda: events_named("imbalance.model.promoted"), 60, "the promotion event"
    )
    assert promoted.resource.id == "imbalance.model.synthetic-churned"
    assert promoted.payload["model"] == "synthetic-churned"
    assert promoted.payload["run_id"] == run_id
    assert promoted.payload["reason"] == "first model of this name"
    related = {r.role: r.name for r in promoted.related}
    assert related["flow"] == "imbalance-train" and related["deployment"] == "weekly-retrain"

    scored = workdir / "scored" / f"synthetic-churned-{run_id}.parquet"
    wait_for(scored.exists, 180, f"{scored.name}, scored by the triggered run", log=log)
    frame = pd.read_parquet(scored)
    assert len(frame) == 50 and {"probability", "label", "is_positive"} <= set(frame.columns)
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    (predict_run,) = read(
        lambda c: c.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["batch-predict"]))
        )
    )
    assert predict_run.parameters["model"] == "synthetic-churned"


def test_a_failed_gate_is_an_event_and_the_alert_automation_notifies(
    api, served, alerts, workdir, synthetic_frame
):
    from prefect.deployments import run_deployment

    output, log, _ = served
    bad = synthetic_frame.assign(
        churned=synthetic_frame.churned.where(synthetic_frame.index % 3 > 0, "x")
    )
    bad_file = workdir / "bad.csv"
    bad.to_csv(bad_file, index=False)
    config = {**SYNTHETIC_SETTINGS, "data": str(bad_file), "runs_dir": str(output), **FAST}
    flow_run = run_deployment(
        "imbalance-train/weekly-retrain",
        parameters={"config": config},
        timeout=300,
        poll_interval=2,
    )
    assert flow_run.state.is_failed(), flow_run.state
    (failed,) = wait_for(lambda: events_named("imbalance.gate.failed"), 60, "the gate event")
    assert failed.resource.id == "imbalance.model.bad-churned"
    assert failed.payload["gate"] == "raw"
    assert "column 'churned' has 3 distinct values" in failed.payload["reason"]
    assert any(r.role == "flow-run" and r.id.endswith(str(flow_run.id)) for r in failed.related)
    (alert,) = wait_for(lambda: list(alerts), 60, "the webhook notification", log=log)
    assert alert["subject"] == f"Training run {flow_run.name} Failed"
    assert "column 'churned' has 3 distinct values" in alert["body"]


def test_moving_the_champion_by_hand_is_announced_too(api, served, server):
    """`flows.champion set-threshold` registers a new version as champion: the same event as a
    run's promotion, so the same automations react."""
    output, _, _ = served
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "flows.champion", "--runs-dir", str(output), "set-threshold"]
        + ["synthetic-churned", "--objective", "recall@precision:0.5"],
        cwd=ROOT,
        env=env | {"PREFECT_API_URL": server},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    version = json.loads(done.stdout)["version"]
    moved = wait_for(
        lambda: [e for e in events_named("imbalance.model.promoted") if e.payload["by"] != "run"],
        60,
        "the set-threshold event",
    )
    assert [e.payload["by"] for e in moved] == ["set-threshold"]
    assert moved[0].payload["reason"].endswith(f"version {version}")
    assert moved[0].payload["model_dir"].endswith(f"model-v{version}")


def test_prefect_yaml_deploys_with_a_pull_step_each_worker_resolves_itself(
    api, server, tmp_path, monkeypatch
):
    """`prefect deploy` keeps the pull step's placeholder (no deployer's absolute path), creates
    the promotion trigger as an automation, and the step puts a worker in its own checkout."""
    from prefect.deployments.steps.core import run_steps

    env = os.environ | {"PREFECT_API_URL": server}
    env.pop("IMBALANCE_PROJECT_DIR", None)
    for command in (
        ["work-pool", "create", "imbalance-pool", "--type", "process"],
        ["--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "prefect", *command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    deployment = read(lambda c: c.read_deployment_by_name("imbalance-predict/batch-predict"))
    assert deployment.pull_steps == [
        {
            "prefect.deployments.steps.set_working_directory": {
                "directory": "{{ $IMBALANCE_PROJECT_DIR }}"
            }
        }
    ]
    automations = read(
        lambda c: c.read_automations_by_name("imbalance: batch predict on promotion")
    )
    assert any(a.actions[0].deployment_id == deployment.id for a in automations), (
        "the prefect.yaml trigger did not become an automation of the deployment"
    )

    checkout = tmp_path / "worker-checkout"
    checkout.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMBALANCE_PROJECT_DIR", str(checkout))
    asyncio.run(run_steps(deployment.pull_steps))  # what a worker does as a run starts
    assert Path.cwd() == checkout
