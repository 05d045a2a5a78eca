"""What crashes and kills leave behind: stale staging directories are cleaned at the next start
(never a live run's), a completed run stays completed when the 'latest' pointer cannot move, a
corrupt registry is restored from its previous version, an incomplete model is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks import runs, storage
from tasks.errors import DataInputError, StorageError
from tasks.registry import read_registry, write_registry
from tasks.runs import OWNER_FILE, RunRecord, clean_stale, write_owner
from tests.conftest import fast_config


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_staging_is_cleaned_but_a_live_runs_is_kept(tmp_path):
    killed = tmp_path / ".20260101T000000Z-dead.partial"
    killed.mkdir()
    (killed / "raw.parquet").write_bytes(b"half")
    (killed / OWNER_FILE).write_text(json.dumps({"host": os.uname().nodename, "pid": dead_pid()}))
    live = tmp_path / ".20260101T000000Z-live.partial"
    live.mkdir()
    write_owner(live)  # this process: alive
    build = tmp_path / ".abc123.tmp-xyz"
    build.mkdir()
    (build / OWNER_FILE).write_text(json.dumps({"host": os.uname().nodename, "pid": dead_pid()}))
    finished = tmp_path / "20260101T000000Z-done"
    finished.mkdir()
    assert sorted(clean_stale(tmp_path)) == sorted([killed.name, build.name])
    assert live.exists() and finished.exists() and not killed.exists() and not build.exists()


def test_a_new_run_cleans_what_a_killed_one_left(tmp_path):
    config = fast_config(tmp_path / "runs")
    output = Path(config.runs_dir)
    killed = output / ".20260101T000000Z-dead.partial"
    (killed / "work").mkdir(parents=True)
    (killed / OWNER_FILE).write_text(json.dumps({"host": os.uname().nodename, "pid": dead_pid()}))
    run = RunRecord(config=config, flow_run_id=None)
    assert not killed.exists() and Path(run.staging).is_dir()


def test_a_completed_run_stays_completed_when_the_latest_pointer_fails(tmp_path, monkeypatch):
    config = fast_config(tmp_path / "runs")
    run = RunRecord(config=config, flow_run_id=None)

    def broken(*args, **kwargs):
        raise OSError("symlinks not allowed here")

    monkeypatch.setattr(runs, "set_pointer", broken)
    run_dir = run.succeed()
    assert run.completed
    record = json.loads((Path(run_dir) / "run.json").read_text())
    assert record["status"] == "completed"


def test_a_corrupt_registry_is_restored_from_its_previous_version(tmp_path):
    registry_dir = storage.location(tmp_path / "registry")
    write_registry(
        registry_dir, "model", {"name": "model", "champion": {"run_id": "a"}, "history": []}
    )
    write_registry(
        registry_dir, "model", {"name": "model", "champion": {"run_id": "b"}, "history": []}
    )
    (tmp_path / "registry" / "model.json").write_text("")  # a crash that lost the data
    assert read_registry(registry_dir, "model")["champion"]["run_id"] == "a"
    assert (
        json.loads((tmp_path / "registry" / "model.json").read_text())["champion"]["run_id"] == "a"
    )
    (tmp_path / "registry" / "model.json").write_text("{not json")
    (tmp_path / "registry" / "model.json.previous").unlink()
    with pytest.raises(StorageError, match="is corrupt .* and has no previous version"):
        read_registry(registry_dir, "model")


def test_an_incomplete_model_directory_is_refused(tmp_path):
    from tasks.predict import LoadedModel

    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(DataInputError, match="not a complete model directory"):
        LoadedModel(model)
    (model / "model.json").write_text(
        json.dumps({"members": ["member_0.keras"], "prior": {"trained": 0.5, "true": 0.5}})
    )
    with pytest.raises(
        DataInputError, match="incomplete: member_0.keras, preprocessing.json missing"
    ):
        LoadedModel(model)


def test_a_champion_registered_before_rows_were_kept_falls_back_to_its_stored_ids(tmp_path):
    """Its feature set's ids (when ids decide and the store still has them); else unknown."""
    from types import SimpleNamespace

    import pandas as pd

    from tasks.champion import _champion_rows

    pd.DataFrame({"__id": [1, 2, 3], "split": ["train", "test", "validation"]}).to_parquet(
        tmp_path / "ids.parquet"
    )
    model = SimpleNamespace(meta={"training": {"ids_file": str(tmp_path / "ids.parquet")}})
    assert sorted(_champion_rows({}, model, by_id=True)["__id"]) == [1, 3]
    assert _champion_rows({}, model, by_id=False) is None
    (tmp_path / "ids.parquet").unlink()
    assert _champion_rows({}, model, by_id=True) is None


def test_a_build_killed_before_its_owner_file_was_whole_is_cleaned_after_a_minute(tmp_path):
    """Regression: a process killed while writing `.owner.json` left it empty; such a leftover
    was kept for 24 hours (the kill test saw it after the next run). The owner file is now
    renamed into place (absent or whole), and a leftover without a readable one is stale once
    OWNERLESS_SECONDS old; a younger one may belong to a process that is creating it."""
    from tasks.runs import OWNERLESS_SECONDS

    old, young, half = (tmp_path / f".abc.tmp-{n}" for n in ("old", "young", "half"))
    for path in (old, young, half):
        path.mkdir()
    (half / OWNER_FILE).write_text("")  # as the killed writer left it
    hour_ago = time.time() - 3600
    for path in (old, half):
        os.utime(path, (hour_ago, hour_ago))
    assert OWNERLESS_SECONDS <= 60
    assert sorted(clean_stale(tmp_path)) == sorted([old.name, half.name])
    assert young.exists()
    write_owner(young)
    assert json.loads((young / OWNER_FILE).read_text())["pid"] == os.getpid()
    assert not list(young.glob("*.tmp"))  # the owner file's temporary name is gone
