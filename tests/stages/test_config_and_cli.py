import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from flows.cli import config_from_args, train_parser
from flows.train import main
from tasks.config import TrainConfig
from tasks.errors import ConfigError
from tasks.strategies import STRATEGIES
from tests.conftest import argv


def test_cli_flags_build_the_config():
    config = config_from_args(
        argv(
            "--data x.csv --target Response --positive 1 --categorical Gender,Vehicle_Age --split "
            "0.7,0.15,0.15 --seed 7 --outlier iqr --strategies baseline,smote --hidden 16,8"
        )
    )
    assert config.categorical == ["Gender", "Vehicle_Age"]
    assert config.split == (0.7, 0.15, 0.15)
    assert config.seed == 7 and config.outlier == "iqr"
    assert config.strategies == ["baseline", "smote"] and config.hidden == [16, 8]
    assert config.store_dir.as_posix() == "runs/store"


def test_config_file_is_loaded_and_flags_override_it(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: a.csv\ntarget: y\nseed: 3\nepochs: 9\n")
    config = config_from_args(["--config", str(path), "--seed", "11"])
    assert (config.data, config.target, config.seed, config.epochs) == ("a.csv", "y", 11, 9)
    json_path = tmp_path / "run.json"
    json_path.write_text(json.dumps({"data": "b.csv", "drop": ["x", "z"]}))
    assert config_from_args(["--config", str(json_path)]).drop == ["x", "z"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "0.5,0.2,0.2"}, "sum to 1"),
        ({"split_by": "date"}, "time:COLUMN"),
        ({"outlier": "mad"}, "zscore"),
        ({"objective": "accuracy"}, "unknown objective"),
        ({"split_by": "time:t", "group": "g"}, "cannot be combined"),
        ({"strategies": "baseline,magic"}, "unknown strategy: magic; valid names are: baseline"),
        ({"memory_budget": "lots"}, "positive size like 2GB"),
        ({"memory_budget": "2 parsecs"}, "positive size like 2GB"),
        ({"memory_budget": "0GB"}, "positive size like 2GB"),
    ],
    ids=[
        "split-sum",
        "split-by-form",
        "outlier-method",
        "objective",
        "exclusive",
        "strategy",
        "size-word",
        "size-unit",
        "size-zero",
    ],
)
def test_bad_settings_are_rejected_with_the_reason(kwargs, message):
    with pytest.raises((ValidationError, ConfigError), match=message):
        TrainConfig(**kwargs)


def test_unknown_strategy_lists_every_valid_name():
    with pytest.raises(ValidationError) as info:
        TrainConfig(strategies=["nope"])
    for name in STRATEGIES:
        assert name in str(info.value)


def test_feature_settings_exclude_training_and_paths():
    a = TrainConfig(epochs=5, runs_dir="x", strategies=["baseline"]).feature_settings()
    b = TrainConfig(epochs=50, runs_dir="y").feature_settings()
    assert a == b
    assert TrainConfig(seed=1).feature_settings() != TrainConfig(seed=2).feature_settings()


def test_help_shows_examples_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as info:
        train_parser().parse_args(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--categorical" in out and "exit codes" in out


def test_help_groups_every_flag_and_shows_the_choices_of_enumerated_ones(capsys):
    """Issue 13 item 5: every setting is in a named group; enumerated settings list their values
    (strategies from the registry); numbers are typed (a bad one is refused by argparse)."""
    from flows.cli import FLAG_GROUPS
    from tasks.strategies import STRATEGIES

    parser = train_parser()
    titles = [group.title for group in parser._action_groups]
    for title in ("data", "split", "model", "thresholds and selection", "gates", "runtime"):
        assert title in titles
    assert sorted(n for names in FLAG_GROUPS.values() for n in names) == sorted(
        TrainConfig.model_fields
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{zscore,iqr,clip,none}" in text and "{threads,dask}" in text
    assert "{pr_auc,roc_auc,f1,mcc,balanced_accuracy,g_mean,objective}" in text
    assert "{auto,stacked,separate}" in text and "--linear-skip, --no-linear-skip" in text
    assert ", ".join(STRATEGIES) in text
    assert "f1 | fbeta:B | cost:FP=a,FN=b | recall@precision:P" in text
    for bad in (["--epochs", "many"], ["--outlier", "mad"], ["--dropout", "x"], ["--out", "r"]):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(bad)  # --out is not an abbreviation of anything: no prefixes
        assert info.value.code == 2
    assert parser.parse_args(["--epochs", "3", "--no-linear-skip"]).epochs == 3


def test_the_old_output_name_still_works_with_a_deprecation_warning(capsys, caplog):
    """Issue 13 item 5: `--output` (train, predict, champion) and the setting `output`
    (prefect.yaml, users' configs) are deprecated aliases of `--runs-dir` / `runs_dir`."""
    from flows.champion import main as champion_main

    assert config_from_args(["--output", "elsewhere"]).runs_dir == "elsewhere"
    assert "--output is deprecated; use --runs-dir" in capsys.readouterr().err
    with caplog.at_level("WARNING", logger="tasks.config"):
        assert TrainConfig(output="there").runs_dir == "there"
    assert "`output` is deprecated" in caplog.text
    assert TrainConfig.model_validate({"output": "x"}).model_dump()["runs_dir"] == "x"
    assert champion_main(["--output", "/nonexistent-runs", "list"]) == 0
    assert "--output is deprecated" in capsys.readouterr().err


def test_cli_exits_2_on_bad_flags(capsys, tmp_path):
    assert main(["--split", "0.9,0.9,0.9", "--runs-dir", str(tmp_path)]) == 2
    assert "--split" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    ("text", "size"),
    [("2GB", 2 * 10**9), ("512 MiB", 512 * 2**20), ("1.5gb", 1_500_000_000), ("1000", 1000)],
)
def test_memory_budget_sizes(text, size):
    assert TrainConfig(memory_budget=text).memory_budget_bytes == size


def test_a_misspelt_target_is_refused_before_prefect_tensorflow_or_sklearn_load(tmp_path):
    """Issue 12 item 12: `python -m flows.train` answers header problems before its heavy imports
    (the time it takes is a figure in `make bench`, section refuse)."""
    bad = tmp_path / "bad.csv"
    bad.write_text("age,churned\n1,no\n2,yes\n")
    command = [sys.executable, "-X", "importtime", "-m", "flows.train", "--data", str(bad)]
    command += ["--target", "churn", "--runs-dir", str(tmp_path / "runs")]
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert any("churn" in line for line in errors), errors
    timings = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    loaded = {line.split("|")[-1].strip() for line in timings}
    assert not loaded & {"prefect", "tensorflow", "sklearn", "great_expectations"}
    assert "tasks.preflight" in loaded  # the checks did run
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_flow_starts_only_after_the_background_imports_end(tmp_path, monkeypatch):
    """Regression: a run with a Prefect server already running started its flow while the
    background thread still imported Great Expectations; the ingest step's scikit-learn import
    and altair's import of narwhals then deadlocked Python's import locks (`_DeadlockError` on
    `narwhals.stable.v1`, exit 1). The command line now waits for the background imports the
    steps share before the flow: here a slow module stands in for them."""
    import flows.train as train_module
    from tasks import preload

    (tmp_path / "slow_import_probe.py").write_text("import time\ntime.sleep(1.5)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(preload, "_LOADING", {})
    monkeypatch.setattr(train_module, "SHARED_IMPORTS", ("slow_import_probe",))
    monkeypatch.setattr(train_module, "start_temporary_server", lambda: None)
    seen = []

    def flow(config):
        seen.append(("slow_import_probe" in sys.modules, preload._LOADING["slow_import_probe"]))
        raise RuntimeError("the flow would start here")

    monkeypatch.setattr(train_module, "train_flow", flow)
    try:
        assert main(argv("--runs-dir {runs}", runs=tmp_path / "runs")) != 0
    finally:
        sys.modules.pop("slow_import_probe", None)
    ((imported, event),) = seen
    assert imported and event.is_set()
