"""Each run's gates as a Great Expectations project, as GX users know it: real suites GX itself
loads (reasons in `notes`, run-specific limits as suite parameters), one Checkpoint per suite,
every gate's validation result kept, and Data Docs built for passing and failing runs, linked
from run.json, the report and a Prefect link artifact."""

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.gates import load_suite_file
from tasks.gx_run import DOCS_INDEX, LOCK_FILE
from tests.conftest import SYNTHETIC, flow_run_artifacts, run_with_a_third_label

TEMPLATES = ("raw", "split", "outliers", "features", "predictions")


def project(run_dir: Path):
    import great_expectations as gx

    return gx.get_context(mode="file", context_root_dir=str(run_dir / "gx"))


def results_by_gate(context) -> dict[str, list]:
    """Every stored validation result, by the gate (run name) that produced it."""
    store = context.validation_results_store
    found = defaultdict(list)
    for key in store.list_keys():
        found[key.run_id.run_name].append(store.get(key))
    return found


def test_every_gate_of_a_run_is_a_gx_validation_with_data_docs(full_run):
    _, result, metrics = full_run
    run_dir = Path(result.run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    assert run["data_docs"] == DOCS_INDEX and (run_dir / DOCS_INDEX).is_file()
    context = project(run_dir)

    suites = {suite.name: suite for suite in context.suites.all()}
    assert {"raw.data", "raw.facts", "split.facts", "outliers.facts", "features.facts"} <= set(
        suites
    )
    notes = {e["notes"] for name in TEMPLATES for e in load_suite_file(name)["expectations"]}
    assert all(e.notes in notes for s in suites.values() for e in s.expectations)
    # run-specific limits stay suite parameters; the stored result shows the value used
    (positives,) = [e for e in suites["raw.facts"].expectations if e.column == "minority_count"]
    assert positives.min_value == {"$PARAMETER": "min_class_count"}
    for name in suites:  # one checkpoint per suite, validating that suite
        (definition,) = context.checkpoints.get(name).validation_definitions
        assert definition.suite.name == name

    results = results_by_gate(context)
    ran = [r["strategy"] for r in metrics["strategies"] if r["status"] == "ok"]
    assert set(results) == {"raw", "split", "outliers", "features"} | {
        f"predictions[{name}]" for name in ran
    }
    assert all(r.success for rs in results.values() for r in rs)
    (facts,) = [r for r in results["raw"] if r.suite_name == "raw.facts"]
    (used,) = [
        r for r in facts.results if r.expectation_config.kwargs["column"] == "minority_count"
    ]
    assert used.expectation_config.kwargs["min_value"] == run["config"]["min_class_count"]

    assert not (run_dir / "gx" / LOCK_FILE).exists()
    pages = list((run_dir / DOCS_INDEX).parent.glob("validations/**/*.html"))
    assert len(pages) == sum(len(r) for r in results.values())
    report = Path(result.report_path).read_text()
    assert f'href="{DOCS_INDEX}"' in report


def test_data_docs_are_linked_from_the_flow_run(full_run):
    _, result, metrics = full_run
    index = (Path(result.run_dir) / DOCS_INDEX).resolve().as_uri()
    assert index in flow_run_artifacts(metrics["flow_run_id"])["data-docs"].data


def test_a_gx_user_reruns_a_runs_checkpoint_without_this_project(full_run):
    """The stored checkpoint is GX's own: run with GX alone, it passes the data the run took
    and fails a copy with a missing label, naming the expectation."""
    _, result, _ = full_run
    checkpoint = project(Path(result.run_dir)).checkpoints.get("raw.data")
    frame = pd.read_csv(SYNTHETIC)
    params = {"min_rows": 20}
    passed = checkpoint.run(batch_parameters={"dataframe": frame}, expectation_parameters=params)
    assert passed.success
    broken = frame.assign(churned=frame.churned.where(np.arange(len(frame)) != 7))
    failed = checkpoint.run(batch_parameters={"dataframe": broken}, expectation_parameters=params)
    (outcome,) = failed.run_results.values()
    assert not outcome.success
    (miss,) = [r for r in outcome.results if not r.success]
    assert miss.expectation_config.type == "expect_column_values_to_not_be_null"
    assert miss.expectation_config.kwargs["column"] == "churned"


@pytest.mark.parametrize("docs", [True, False])
def test_a_failed_run_keeps_its_gates_and_data_docs(tmp_path, synthetic_frame, capsys, docs):
    flag = "--data-docs" if docs else "--no-data-docs"
    code, output = run_with_a_third_label(tmp_path, synthetic_frame, flag)
    assert code == 2 and "raw gate failed" in capsys.readouterr().err
    (run_dir,) = list(output.iterdir())
    assert sorted(p.name for p in run_dir.iterdir()) == ["gx", "run.json"]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["data_docs"] == (DOCS_INDEX if docs else None)
    assert (run_dir / DOCS_INDEX).is_file() == docs
    (raw,) = [r for r in results_by_gate(project(run_dir))["raw"] if r.suite_name == "raw.data"]
    (failed,) = [r for r in raw.results if not r.success]
    assert failed.expectation_config.type == "expect_column_unique_value_count_to_be_between"
    assert failed.result["observed_value"] == 3
