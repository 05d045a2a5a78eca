"""Trained branches reused by a later run on the same feature set, settings and code
(tasks.reuse): the same records and predictions without training, and training again whenever
anything that shapes training changed, the kept files do not match, or --retrain says so."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.train import train_flow
from tasks import reuse
from tasks.config import TrainConfig
from tasks.storage import location
from tests.conftest import fast_config

ROOT = Path(__file__).resolve().parents[2]
STRATEGIES = ["baseline", "class_weight"]
SAME = ("pr_auc", "threshold", "f1", "validation", "calibration", "steps", "confusion_matrix")


def records(result) -> dict[str, dict]:
    metrics = json.loads(Path(result.metrics_path).read_text())
    return {r["strategy"]: r for r in metrics["strategies"]}


def predictions(result, name: str) -> pd.DataFrame:
    return pd.read_parquet(Path(result.run_dir) / "branches" / name / "predictions.parquet")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs of one configuration in one store, then one with --retrain and one with a
    different dropout."""
    config = fast_config(tmp_path_factory.mktemp("reuse") / "runs", strategies=STRATEGIES)
    first = train_flow(config)
    second = train_flow(config)
    retrained = train_flow(config.model_copy(update={"retrain": True}))
    changed = train_flow(config.model_copy(update={"dropout": config.dropout + 0.15}))
    return config, first, second, retrained, changed


def test_a_second_identical_run_reuses_every_branch_with_the_same_results(runs):
    config, first, second, _, _ = runs
    before, after = records(first), records(second)
    assert set(before) == set(after) == {*STRATEGIES, "reference"}
    for name, record in after.items():
        assert "reused_from" not in before[name]
        assert record["reused_from"] == f"run {first.run_id}"
        assert {k: record[k] for k in SAME} == {k: before[name][k] for k in SAME}
        pd.testing.assert_frame_equal(predictions(first, name), predictions(second, name))
    # the members were copied into the second run, and its exported model is the first's
    for name in STRATEGIES:
        members = sorted((Path(second.run_dir) / "branches" / name / "model").glob("*.keras"))
        assert members, name
    exported = pd.read_parquet(Path(second.run_dir) / "model" / "evaluation.parquet")
    pd.testing.assert_frame_equal(
        exported, pd.read_parquet(Path(first.run_dir) / "model" / "evaluation.parquet")
    )
    report = (Path(second.run_dir) / "report.html").read_text()
    assert f"run {first.run_id}" in report  # the leaderboard says who trained it


def model_files(model_dir: str) -> dict[str, bytes]:
    """The standalone model's files (model.keras and the SavedModel), but the SavedModel's copy
    of model.json, which is each run's own."""
    root = Path(model_dir)
    files = [root / "model.keras", *(root / "saved_model").rglob("*")]
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in files
        if p.is_file() and p.name != "model.json"
    }


def test_a_second_run_copies_the_kept_standalone_model_and_skips_scoring_its_own_champion(runs):
    """The second run's model is the first's: the same identity, the standalone model copied
    from the store instead of built again, and the champion (the first run's model) not loaded
    and scored: its scores are the challenger's own (the export path and the training path
    agree: test_report_and_predict::test_predict_on_raw_test_rows_reproduces_the_runs_...)."""
    config, first, second, _, changed = runs
    identity = {
        r.run_id: json.loads((Path(r.model_dir) / "model.json").read_text())["identity"]
        for r in runs[1:]
    }
    assert identity[first.run_id] == identity[second.run_id] != identity[changed.run_id]
    assert not config.saved_model  # fast_config: model.keras only, so the kept one is named so
    kept_export = config.store_dir / "exports" / f"{identity[first.run_id]}-keras"
    assert (kept_export / "manifest.json").is_file()
    assert model_files(second.model_dir) == model_files(first.model_dir)
    assert model_files(second.model_dir) == model_files(str(kept_export / "standalone"))
    decision = json.loads((Path(second.run_dir) / "run.json").read_text())["champion_decision"]
    assert decision["champion_run_id"] == first.run_id and decision["action"] == "keep"
    assert "the champion is this run's model" in decision["note"]
    assert decision["comparison"]["pr_auc_interval"] == {"low": 0.0, "high": 0.0}
    changed_decision = json.loads((Path(changed.run_dir) / "run.json").read_text())
    assert "this run's model" not in (changed_decision["champion_decision"].get("note") or "")


def test_retrain_trains_again_and_gets_the_same_results(runs):
    _, first, _, retrained, _ = runs
    before, again = records(first), records(retrained)
    for name, record in again.items():
        assert "reused_from" not in record
        assert {k: record[k] for k in SAME} == {k: before[name][k] for k in SAME}


def test_a_changed_training_setting_trains_again(runs):
    _, first, _, _, changed = runs
    after = records(changed)
    assert not any("reused_from" in r for r in after.values())
    assert after["baseline"]["pr_auc"] != records(first)["baseline"]["pr_auc"]


def test_kept_files_that_do_not_match_are_never_used(runs, tmp_path):
    config, first, _, _, _ = runs
    key = reuse.branch_key("baseline", 0, config)
    kept = first.feature_set.location.parent / reuse.BRANCHES / first.feature_set.fingerprint
    assert (kept / key / reuse.MANIFEST).is_file()
    branch_dir = location(tmp_path / "branch")
    restored = reuse.restore(first.feature_set, "baseline", 0, config, branch_dir)
    assert restored is not None and (branch_dir / "model" / "member_0.keras").is_file()
    copy = tmp_path / "store-copy"
    shutil.copytree(kept / key, copy)
    try:
        scores = kept / key / reuse.SCORES
        scores.write_bytes(scores.read_bytes()[:-8] + b"\0" * 8)  # damaged in place
        assert reuse.restore(first.feature_set, "baseline", 0, config, branch_dir) is None
        (kept / key / reuse.SCORES).unlink()
        assert reuse.restore(first.feature_set, "baseline", 0, config, branch_dir) is None
    finally:
        shutil.rmtree(kept / key)
        shutil.copytree(copy, kept / key)


def test_every_setting_but_the_listed_ones_is_in_the_key():
    """A new TrainConfig field changes the key unless it is added to NOT_TRAINING: a setting
    can never be forgotten into silently reusing branches it would have trained differently."""
    base = fast_config(Path("/tmp/unused"))
    assert set(TrainConfig.model_fields) >= reuse.NOT_TRAINING
    key = reuse.branch_key("baseline", 0, base)
    assert reuse.branch_key("smote", 0, base) != key
    assert reuse.branch_key("baseline", 1, base) != key
    for field in TrainConfig.model_fields:
        changed = base.model_copy(update={field: f"changed {field}"})  # not validated
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydantic warns about the unexpected type
            moved = reuse.branch_key("baseline", 0, changed) != key
        assert moved == (field not in reuse.NOT_TRAINING), field


def test_the_code_hash_covers_every_module(tmp_path):
    package = tmp_path / "tasks"
    shutil.copytree(ROOT / "tasks", package, ignore=shutil.ignore_patterns("__pycache__"))
    before = reuse.source_hash(package)
    assert reuse.source_hash(package) == before
    (package / "strategies.py").write_text((package / "strategies.py").read_text() + "\n# x\n")
    assert reuse.source_hash(package) != before


def test_members_load_in_a_process_that_trained_nothing(runs):
    """Regression: with every branch reused, nothing imported tasks.layers before the export
    loaded the members, and Keras could not locate `CodeOneHot` (the second insurance run
    failed in export-model)."""
    _, first, _, _, _ = runs
    member = next((Path(first.run_dir) / "branches" / "baseline" / "model").glob("*.keras"))
    code = (
        "import sys; from tasks.standalone import load_networks; "
        "print(len(load_networks([sys.argv[1]])[0].layers))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(member)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip().splitlines()[-1]) > 2
    assert np.isfinite(records(first)["baseline"]["pr_auc"])


GUESS_AND_RUN = """
import json, sys
from flows.train import preload_heavy_modules, train_flow
from tasks.config import TrainConfig
from tasks.lookahead import trains_nothing

config = TrainConfig.model_validate_json(sys.argv[1])
guess = trains_nothing(config, out_of_core=False)
preload_heavy_modules(tensorflow=not guess)  # as the command line does
result = train_flow(config)
print(json.dumps({"guess": guess, "tensorflow": "tensorflow" in sys.modules,
                  "selected": result.selected, "threshold": result.threshold}))
"""


def test_a_run_on_unchanged_data_is_guessed_to_train_nothing_and_never_imports_tensorflow(runs):
    """tasks.lookahead: with every branch kept and the champion the model the run will export,
    the command line skips preloading TensorFlow, and a fresh process running the flow then
    never imports it: nothing is trained, the standalone model is copied, the champion is
    not scored. Any change that makes the run need TensorFlow makes the guess False."""
    from prefect.settings import PREFECT_API_URL

    from tasks.lookahead import trains_nothing

    config, first, _, _, _ = runs
    registry = json.loads((config.registry_dir / "synthetic-churned.json").read_text())
    assert registry["champion"]["run_id"] == first.run_id  # the reruns were not better
    assert trains_nothing(config, out_of_core=False)
    assert not trains_nothing(config, out_of_core=True)  # another feature set
    assert trains_nothing(config.model_copy(update={"model_name": "no-champion-yet"}), False)
    for change in (
        {"retrain": True},
        {"repeats": 2},
        {"strategies": ["baseline", "smote"]},  # smote was never trained
        {"dropout": config.dropout + 0.15},  # kept (the `changed` run), not the champion
        {"seed": config.seed + 1},  # another split: another feature set
        {"data": "breast_cancer"},  # built-in data is not looked at
    ):
        assert not trains_nothing(config.model_copy(update=change), False), change
    done = subprocess.run(
        [sys.executable, "-c", GUESS_AND_RUN, config.model_dump_json()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=os.environ | {"PREFECT_API_URL": str(PREFECT_API_URL.value())},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["guess"] and not answer["tensorflow"]
    assert (answer["selected"], answer["threshold"]) == (first.selected, first.threshold)


@pytest.mark.parametrize(
    ("branch_dir", "named"),
    [
        (
            "/runs/.20261201T000000Z-ab12cd34.partial/branches/baseline",
            "run 20261201T000000Z-ab12cd34",
        ),
        (
            "/runs/20261201T000000Z-ab12cd34/branches/repeat-2/smote",
            "run 20261201T000000Z-ab12cd34",
        ),
        (
            "memory://runs/20261201T000000Z-ab12cd34/branches/reference",
            "run 20261201T000000Z-ab12cd34",
        ),
        ("/somewhere/else", "/somewhere/else"),
    ],
)
def test_a_kept_branch_names_the_run_that_trained_it(branch_dir, named):
    assert reuse.trained_in(location(branch_dir)) == named


def test_only_the_newest_versions_of_a_branch_are_kept(tmp_path):
    """Every change of settings or code keeps a new version; the oldest beyond KEPT_PER_BRANCH
    of one strategy and repeat go, other strategies' and repeats' stay; a kept version restores
    what was kept."""
    from tasks.calibration import Calibration
    from tasks.features import FeatureSet

    feature_set = FeatureSet(fingerprint="f" * 20, path=str(tmp_path / "store" / "f"), reused=False)
    scores = reuse.Scores(
        probabilities={p: np.linspace(0, 1, 5) for p in reuse.PARTS},
        corrected={p: np.linspace(0.1, 0.9, 5) for p in reuse.PARTS},
        calibration=Calibration(method="identity"),
        trained_prior=0.2,
        train_class_counts={"yes": 1, "no": 4},
        info={"steps": 3, "train_seconds": 0.1},
    )
    configs = [fast_config(tmp_path, dropout=0.05 * i) for i in range(6)]
    branch_dir = location(tmp_path / "runs" / ".run-1.partial" / "branches" / "baseline")
    for config in configs:
        reuse.keep(feature_set, "baseline", 0, config, scores, branch_dir)
    reuse.keep(feature_set, "baseline", 1, configs[0], scores, branch_dir)
    reuse.keep(feature_set, "smote", 0, configs[0], scores, branch_dir)
    restored = [
        reuse.restore(feature_set, "baseline", 0, config, location(tmp_path / "b")) is not None
        for config in configs
    ]
    assert restored == [False] * (6 - reuse.KEPT_PER_BRANCH) + [True] * reuse.KEPT_PER_BRANCH
    again = reuse.restore(feature_set, "baseline", 1, configs[0], location(tmp_path / "b"))
    assert again is not None and again.info["reused_from"] == "run run-1"
    np.testing.assert_array_equal(again.corrected["test"], scores.corrected["test"])
    assert reuse.restore(feature_set, "smote", 0, configs[0], location(tmp_path / "b"))
    assert not list((tmp_path / "store").glob(".*.tmp-*"))  # no staging left behind


def test_the_closing_summary_marks_what_was_not_trained_again(runs):
    from io import StringIO

    from rich.console import Console

    from flows.console import summary_table

    _, first, second, retrained, _ = runs
    assert all(line.reused_from == f"run {first.run_id}" for line in second.leaderboard)
    assert not any(line.reused_from for line in retrained.leaderboard)
    for result, marked in ((second, True), (retrained, False)):
        out = StringIO()
        Console(file=out, width=200).print(summary_table(result.leaderboard, "pr_auc"))
        text = out.getvalue()
        rows = [line.split() for line in text.splitlines() if line.strip()[:1].isdigit()]
        assert len(rows) == 3 and all((row[-7] == "+") == marked for row in rows), text
        assert (f"reused what run {first.run_id} trained" in text) == marked
