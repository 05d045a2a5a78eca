"""Real training runs whose output, store and registry are fsspec URLs: `memory://` (a store
with no rename and no symlinks, as on S3; private to this process, so threads only) and
`file://`."""

import json
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.champion import main as champion_main
from flows.predict import predict_flow
from flows.train import train_flow
from tasks.gx_run import DOCS_INDEX
from tasks.storage import location, read_parquet, read_pointer, remove_tree
from tests.conftest import RUN_FILES, SYNTHETIC, argv, fast_config

STRATEGIES = ["baseline", "undersample"]


@pytest.fixture(scope="module")
def memory_runs():
    """Two runs on the same data into memory://: the second reuses the stored feature set."""
    output = f"memory://runs-{uuid.uuid4().hex[:8]}/team"
    config = fast_config(output, strategies=STRATEGIES, saved_model=True)
    first = train_flow(config)
    second = train_flow(config)
    yield config, first, second
    remove_tree(location(output))


def test_runs_land_on_a_store_without_rename(memory_runs):
    config, first, second = memory_runs
    output = location(config.runs_dir)
    assert first.run_dir == f"{config.runs_dir}/{first.run_id}"
    names = sorted(p.name for p in output.iterdir())
    assert names == sorted([first.run_id, second.run_id, "latest.json", "registry", "store"])
    for result in (first, second):
        run_dir = location(result.run_dir)
        run = json.loads((run_dir / "run.json").read_text())
        assert run["status"] == "completed"
        assert sorted(p.name for p in run_dir.iterdir()) == RUN_FILES
        assert "work" not in [p.name for p in run_dir.iterdir()]  # intermediates stayed local
    assert read_pointer(output, "latest").name == second.run_id  # a pointer file, not a symlink
    members = sorted(p.name for p in (location(second.model_dir)).iterdir())
    assert members == [
        "MODEL_CARD.md",
        "evaluation.parquet",
        "member_0.keras",
        "model.json",
        "model.keras",
        "preprocessing.json",
        "saved_model",
    ]
    # the standalone model's files were written locally, then uploaded: the SavedModel is whole
    saved = location(second.model_dir) / "saved_model"
    assert (saved / "saved_model.pb").is_file() and (saved / "assets" / "model.json").is_file()
    assert (saved / "variables" / "variables.index").is_file()
    metrics = json.loads(location(second.metrics_path).read_text())
    assert {r["strategy"] for r in metrics["strategies"]} == {*STRATEGIES, "reference"}
    assert all(r["status"] == "ok" for r in metrics["strategies"])


def test_feature_set_is_stored_marker_last_and_reused(memory_runs):
    config, first, second = memory_runs
    assert not first.feature_set.reused and second.feature_set.reused
    assert first.feature_set.path == second.feature_set.path
    assert first.feature_set.path.startswith(f"{config.runs_dir}/store/")
    stored = location(first.feature_set.path)
    manifest = json.loads((stored / "manifest.json").read_text())
    assert set(manifest["files"]) == {p.name for p in stored.iterdir()} - {"manifest.json"}
    train = read_parquet(stored / "train.parquet")
    assert len(train) == manifest["splits"]["train"]["rows"]


def test_registry_and_predict_work_from_urls(memory_runs, tmp_path):
    config, first, second = memory_runs
    registry = json.loads(
        (location(config.runs_dir) / "registry" / "synthetic-churned.json").read_text()
    )
    assert registry["champion"]["model_dir"] == f"{first.run_dir}/model"
    assert [e["run_id"] for e in registry["history"]] == [first.run_id, second.run_id]
    assert not list((location(config.runs_dir) / "registry").glob("*.lock"))  # lock released

    raw = pd.read_csv(SYNTHETIC)
    data = tmp_path / "rows.csv"
    raw.drop(columns="churned").head(60).to_csv(data, index=False)
    scored_url = f"{config.runs_dir}/scored/latest.parquet"
    by_latest = predict_flow(
        model=f"{config.runs_dir}/latest/model",
        data=str(data),
        out=scored_url,
        runs_dir=config.runs_dir,
    )
    assert by_latest["model"] == second.model_dir  # <output>/latest followed through its pointer
    by_name = predict_flow(
        model="synthetic-churned",
        data=str(data),
        out=str(tmp_path / "s.parquet"),
        runs_dir=config.runs_dir,
    )
    assert by_name["model"] == f"{first.run_dir}/model"  # the champion
    scored = read_parquet(scored_url)
    assert len(scored) == 60 and scored["probability"].between(0, 1).all()
    meta = json.loads((location(second.model_dir) / "model.json").read_text())
    assert (scored["is_positive"] == (scored["probability"] >= meta["threshold"])).all()


def test_champion_cli_on_a_url_registry(memory_runs, capsys):
    config, first, second = memory_runs
    assert champion_main(["--runs-dir", config.runs_dir, "list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [
        {
            "name": "synthetic-churned",
            "champion": first.run_id,
            "strategy": listed[0]["strategy"],
            "pr_auc": listed[0]["pr_auc"],
            "events": 2,
        }
    ]
    assert (
        champion_main(
            argv(
                "--runs-dir {a0} set-threshold synthetic-churned --objective recall@precision:0.5",
                a0=config.runs_dir,
            )
        )
        == 0
    )
    changed = json.loads(capsys.readouterr().out)
    assert changed["model_dir"] == f"{first.run_dir}/model-v2"
    meta = json.loads((location(changed["model_dir"]) / "model.json").read_text())
    assert meta["threshold_objective"] == "recall@precision:0.5"


def test_failed_run_on_a_store_without_rename_leaves_only_its_record(tmp_path):
    """A run stopped by a gate leaves its record and its gates' GX project, Data Docs included,
    uploaded to the store; nothing else."""
    output = f"memory://failed-{uuid.uuid4().hex[:8]}/runs"
    config = fast_config(output, strategies=["baseline"], min_class_count=10_000, data_docs=True)
    try:
        with pytest.raises(Exception, match="raw gate failed"):
            train_flow(config)
        (run_dir,) = [p for p in location(output).iterdir() if p.name != "store"]
        assert sorted(p.name for p in run_dir.iterdir()) == ["gx", "run.json"]
        run = json.loads((run_dir / "run.json").read_text())
        assert run["status"] == "failed" and run["failed_gate"] == "raw"
        assert run["data_docs"] == DOCS_INDEX and (run_dir / DOCS_INDEX).is_file()
        assert read_pointer(location(output), "latest") is None
    finally:
        remove_tree(location(output))


def test_file_url_output_behaves_like_a_local_path(tmp_path):
    output = tmp_path / "runs"
    config = fast_config(output.as_uri(), strategies=["baseline"])
    result = train_flow(config)
    assert (output / "latest").is_symlink() and (output / "latest").resolve().name == result.run_id
    assert json.loads((output / "latest.json").read_text()) == {"target": result.run_id}
    assert not list(output.glob(".*partial"))
    predictions = pd.read_parquet(
        output / result.run_id / "branches" / "baseline" / "predictions.parquet"
    )
    assert set(predictions["part"]) == {"stop", "tune", "test"}
    assert np.isfinite(predictions["probability"]).all()
    registry = json.loads((output / "registry" / "synthetic-churned.json").read_text())
    assert Path(registry["champion"]["model_dir"]) == (output / result.run_id / "model")
