"""Shared fixtures: one Prefect test harness per session, the in-repo synthetic data, and a
factory for fast training configs (tiny MLP, few epochs) writing under tmp_path."""

from __future__ import annotations

import os

# Before Prefect or TensorFlow are imported anywhere.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Log lines stay on the console: shipping every line of ~40 runs to the one SQLite-backed test
# server slows its API down as the session goes on. (No test reads logs through the API.)
os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
# Progress artifacts likewise (tests/flows/test_run_talks.py turns them on for its own run).
os.environ.setdefault("IMBALANCE_PROGRESS_ARTIFACTS", "false")
# The test server need not store every event (nothing here reads them) nor evaluate automations:
# both write to its one SQLite file and slowed its API down as the session went on.
os.environ.setdefault("PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED", "false")

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from tasks.config import TrainConfig  # noqa: E402

DATA_DIR = Path(__file__).parent / "data"
SYNTHETIC = DATA_DIR / "synthetic.csv"


# the synthetic fixture's columns, as settings
SYNTHETIC_SETTINGS = {
    "data": str(SYNTHETIC),
    "target": "churned",
    "positive": "yes",
    "id": "account_id",
    "categorical": ["segment"],
}


def predict_cli(model: object, data: object, out: object, flags: str = "") -> int:
    """`python -m flows.predict --model M --data D --out O [flags]` in this process."""
    from flows.predict import main

    template = "--model {model} --data {data} --out {out} " + flags
    return main(argv(template, model=model, data=data, out=out))


# what a completed run directory holds, on every store
RUN_FILES = [
    "MODEL_CARD.md",
    "branches",
    "gx",
    "leaderboard.csv",
    "metrics.json",
    "model",
    "report.html",
    "run.json",
    "run.log",
    "seen_rows.parquet",
]


def argv(template: str, *extra: str, **values: object) -> list[str]:
    """Command-line arguments from one line: `argv("--data {data} --epochs 2", data=path)`.
    The template is split on whitespace before the values go in, so a path with spaces stays
    one argument; `extra` lists are appended."""
    return [token.format(**values) for token in template.split()] + list(extra)


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

FAST = {
    "saved_model": False,  # ~2 s a run; the SavedModel has its own tests (test_standalone_model)
    "data_docs": False,  # ~0.5 s a run; Data Docs have their own tests (test_gx_project)
    "hidden": [8],
    "dropout": 0.1,
    "epochs": 4,
    "patience": 2,
    "batch_size": 64,
    "ensemble_k": 2,
    "learning_rate": 0.01,
}


@pytest.fixture(scope="session", autouse=True)
def prefect_harness():
    """One temporary Prefect server (SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    from tasks.model import configure_tensorflow

    configure_tensorflow(1)  # before any test touches TensorFlow
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def prefect_events(monkeypatch):
    """The events the code hands to Prefect, kept by Prefect's own asserting events client
    (`worker._client.events`) instead of being sent to the test server."""
    from prefect.events.clients import AssertingEventsClient
    from prefect.events.worker import EventsWorker

    worker = EventsWorker.instance(AssertingEventsClient)
    monkeypatch.setattr(EventsWorker, "instance", lambda *_: worker)
    yield worker
    worker.drain()


@pytest.fixture
def synthetic_frame() -> pd.DataFrame:
    return pd.read_csv(SYNTHETIC)


def fast_config(output: Path, **overrides) -> TrainConfig:
    """TrainConfig for the synthetic data with fast training; keyword arguments override."""
    settings = {**SYNTHETIC_SETTINGS, "runs_dir": str(output), **FAST}
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture
def make_config(tmp_path):
    def factory(**overrides) -> TrainConfig:
        return fast_config(tmp_path / "runs", **overrides)

    return factory


@pytest.fixture
def write_csv(tmp_path):
    """Write a frame (or raw text) to a CSV under tmp_path and return its path."""

    def factory(content, name: str = "data.csv") -> Path:
        path = tmp_path / name
        if isinstance(content, str):
            path.write_text(content)
        else:
            content.to_csv(path, index=False)
        return path

    return factory


def needs_shared(relative: str) -> Path:
    """Path into ../shared/data, skipping the test cleanly when it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


@pytest.fixture
def stages(tmp_path):
    """Run the data stages' task functions directly (no flow), returning every result."""
    from tasks.features import build_features
    from tasks.ingest import ingest
    from tasks.outliers import handle_outliers
    from tasks.split import split

    def run(config: TrainConfig, upto: str = "features") -> dict:
        work = tmp_path / f"work-{len(list(tmp_path.glob('work-*')))}"
        work.mkdir()
        out = {"ingest": ingest.fn(config, work)}
        if upto == "ingest":
            return out
        out["split"] = split.fn(config, out["ingest"], work)
        if upto == "split":
            return out
        out["outliers"] = handle_outliers.fn(config, out["ingest"], out["split"], work)
        if upto == "outliers":
            return out
        out["features"] = build_features.fn(config, out["ingest"], out["split"], out["outliers"])
        return out

    return run


@pytest.fixture(scope="session")
def full_run(tmp_path_factory):
    """One real training run with every strategy on the synthetic data, shared by flow tests."""
    import json

    from flows.train import train_flow

    config = fast_config(tmp_path_factory.mktemp("full") / "runs", data_docs=True)
    result = train_flow(config)
    metrics = json.loads(Path(result.metrics_path).read_text())
    return config, result, metrics


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """One small trained model (baseline only) for the prediction tests that only need some
    model: the bad-input corpus and the fuzzed files."""
    from flows.train import main as train_main

    output = tmp_path_factory.mktemp("tiny-model") / "runs"
    assert (
        train_main(
            argv(
                "--data {a0} --target churned --positive yes --id account_id --categorical segment "
                "--runs-dir {output} --hidden 4 --epochs 1 --batch-size 64 --strategies baseline",
                a0=SYNTHETIC,
                output=output,
            )
        )
        == 0
    )
    return output / "latest" / "model"


def run_with_a_third_label(tmp_path: Path, frame: pd.DataFrame, *extra: str) -> tuple[int, Path]:
    """`python -m flows.train` (baseline only) on the synthetic rows with every third label "x":
    the raw gate refuses it. Returns the exit code and the --runs-dir."""
    from flows.train import main

    bad = frame.assign(churned=np.where(np.arange(len(frame)) % 3 == 0, "x", frame.churned))
    data, output = tmp_path / "bad.csv", tmp_path / "runs"
    bad.to_csv(data, index=False)
    template = "--data {data} --target churned --categorical segment --runs-dir {output}"
    code = main(argv(template + " --strategies baseline", *extra, data=data, output=output))
    return code, output


def flow_run_artifacts(flow_run_id: str) -> dict[str, Any]:
    """The Prefect artifacts of a flow run, by key."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
                )
            )

    return {artifact.key: artifact for artifact in asyncio.run(read())}
