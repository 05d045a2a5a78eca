"""Two `python -m flows.train` processes on one `--runs-dir` at once, each with the temporary
Prefect server it starts by default, on one new Prefect database (the hardest case: both servers
would migrate it at the same moment). Both complete with distinct runs; the feature store holds
one valid feature set; the registry records both runs in turn and stays valid JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import great_expectations as gx

from flows.server import SERVER_START_LOCK
from tasks.compare import COMPARISONS
from tasks.export import EXPORTS
from tasks.preflight import writable
from tasks.storage import read_pointer
from tests.conftest import SYNTHETIC

ROOT = Path(__file__).resolve().parents[2]
FLAGS = [
    *("--data", str(SYNTHETIC), "--target", "churned", "--positive", "yes"),
    *("--id", "account_id", "--categorical", "segment", "--strategies", "baseline"),
    *("--hidden", "4", "--epochs", "1", "--batch-size", "64", "--bootstrap", "1000"),
    *("--no-saved-model", "--no-data-docs"),
]


def test_two_processes_on_one_output_and_one_new_prefect_database_both_complete(tmp_path):
    output, home = tmp_path / "runs", tmp_path / "prefect-home"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env["PREFECT_SERVER_API_PORT"] = "1"  # never a server the developer left running
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "flows.train", *FLAGS, "--runs-dir", str(output), *shown],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for shown in (["--json", "--quiet"], ["--json"])
    ]
    finished = [process.communicate(timeout=600) for process in processes]
    for process, (_, stderr) in zip(processes, finished, strict=True):
        assert process.returncode == 0, stderr[-3000:]
        assert "database is locked" not in stderr
        # the server was launched before the imports (flows.server), not by Prefect's client
        assert "Starting temporary server" not in stderr
    answers = [json.loads(stdout) for stdout, _ in finished]  # --json: the answer alone
    quiet, normal = (stderr for _, stderr in finished)
    assert " INFO " not in quiet and "selected baseline" not in quiet  # --quiet: errors only
    assert "tasks.branches - selected baseline" in normal  # the project's lines by default
    run_ids = sorted(answer["run_id"] for answer in answers)
    assert len(set(run_ids)) == 2
    for run_id in run_ids:
        assert json.loads((output / run_id / "run.json").read_text())["status"] == "completed"
        # each run's gates went through a GX project of its own: one raw result each, never both
        project = gx.get_context(mode="file", context_root_dir=str(output / run_id / "gx"))
        names = [key.run_id.run_name for key in project.validation_results_store.list_keys()]
        assert names.count("raw") == 2 and names.count("predictions[baseline]") == 1, names
    assert read_pointer(output, "latest").name in run_ids
    assert (home / SERVER_START_LOCK).exists()  # the start-ups took turns

    registry = json.loads((output / "registry" / "synthetic-churned.json").read_text())
    events = [entry["event"] for entry in registry["history"]]
    assert sorted(entry["run_id"] for entry in registry["history"]) == run_ids
    assert events[0] == "promoted" and events.count("promoted") + events.count("kept_champion") == 2
    assert registry["champion"]["run_id"] in run_ids
    kept_beside = {"branches", COMPARISONS, EXPORTS}  # kept work, by its keys
    stores = [path for path in (output / "store").iterdir() if path.name not in kept_beside]
    assert len(stores) == 1 and (stores[0] / "manifest.json").is_file()  # one set, no debris
    for comparison in (output / "store" / COMPARISONS).iterdir():  # whole files only
        assert comparison.suffix == ".json" and json.loads(comparison.read_text())["n_boot"]
    # both trained the same two branches at once: one whole copy of each is kept
    kept = list((output / "store" / "branches" / stores[0].name).iterdir())
    assert len(kept) == 2 and all((path / "manifest.json").is_file() for path in kept)
    # each run exported its model (the two identities differ when the two trainings saved
    # their member files at different moments): whole kept copies only
    exports = list((output / "store" / EXPORTS).iterdir())
    assert 1 <= len(exports) <= 2 and all((p / "manifest.json").is_file() for p in exports)
    assert not list(output.glob(".*.partial"))


def test_the_write_probe_never_touches_a_name_another_process_may_hold(tmp_path):
    """Regression: both processes probed `<output>/.write-test` and one deleted the other's probe
    ("No such file or directory"). A name held by someone else must not matter."""
    (tmp_path / ".write-test").mkdir()  # as if another run held the old fixed name
    writable(str(tmp_path), "--runs-dir")
    assert [p.name for p in tmp_path.iterdir()] == [".write-test"]  # its own probe is gone
