"""A real training process killed with SIGKILL part-way (the stage is read from the run's own
files, not guessed from timing): the next run cleans what it left, completes, and a prediction
with the result succeeds; nothing half-written is ever read as complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tasks.runs import OWNER_FILE
from tasks.storage import read_pointer
from tests.conftest import SYNTHETIC, argv, predict_cli

ROOT = Path(__file__).resolve().parents[2]
FLAGS = argv(
    "--data {a0} --target churned --positive yes --id account_id --categorical segment --hidden 4 "
    "--epochs 2 --batch-size 64 --strategies ensemble --ensemble-k 2 --no-saved-model "
    "--no-data-docs",
    a0=SYNTHETIC,
)

# stage -> a file that exists only once the run has reached it
STAGES = {
    "ingest": lambda partial, store: (partial / "work" / "raw.parquet").exists(),
    "features": lambda partial, store: (
        any((p / OWNER_FILE).exists() for p in store.glob(".*.tmp-*"))
        or any(store.glob("*/manifest.json"))
    ),
    "train": lambda partial, store: any((partial / "branches").glob("*/model/member_*.keras")),
}


def api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def start(output: Path) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_API_URL": api_url(), "PREFECT_LOGGING_TO_API_ENABLED": "false"}
    return subprocess.Popen(
        [sys.executable, "-m", "flows.train", *FLAGS, "--runs-dir", str(output)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def owned_by(staging: Path, pid: int) -> bool:
    try:
        return json.loads((staging / OWNER_FILE).read_text())["pid"] == pid
    except (OSError, ValueError):  # not written yet, or half written
        return False


def run_until_killed(output: Path, stage: str) -> None:
    """Start a training process and SIGKILL it once its own files show it reached `stage`."""
    process = start(output)
    reached = STAGES[stage]
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            mine = [p for p in output.glob(".*.partial") if owned_by(p, process.pid)]
            if mine and reached(mine[0], output / "store"):
                break
            time.sleep(0.05)
        assert process.poll() is None, f"the run finished before reaching {stage}"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()


def test_runs_killed_at_each_stage_leave_nothing_that_is_read_and_the_next_run_succeeds(
    tmp_path, capsys
):
    """One process killed at each stage in turn (each next process starts by cleaning what the
    previous one left); then a run in this process completes and its model predicts."""
    output = tmp_path / "runs"
    for stage in STAGES:
        run_until_killed(output, stage)
        assert list(output.glob(".*.partial")), f"the run killed at {stage} left its staging"
        assert read_pointer(output, "latest") is None, stage  # nothing published

    from flows.train import main as train_main

    assert (
        train_main([*FLAGS, "--runs-dir", str(output)]) == 0
    )  # in this process: no second start-up
    capsys.readouterr()
    assert not list(output.glob(".*.partial")) and not list((output / "store").glob(".*.tmp-*"))
    latest = read_pointer(output, "latest")
    assert json.loads((Path(latest) / "run.json").read_text())["status"] == "completed"
    out = tmp_path / "scored.parquet"
    assert predict_cli(latest / "model", SYNTHETIC, out) == 0
    capsys.readouterr()
