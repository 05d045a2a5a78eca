"""The record shapes in tasks/records.py: a missing or mistyped key fails where the record is
written, naming the field; the public leaderboard shape stays as documented."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from tasks.records import LEADERBOARD_COLUMNS, Comparison, RunMetrics, check_branch


def trained(**changes):
    record = {
        "strategy": "smote",
        "status": "ok",
        "eligible": True,
        "threshold": 0.4,
        "threshold_objective": "f1",
        "validation": {"pr_auc": 0.5},
        "calibration": {"method": "platt"},
        "at_0_5": {"f1": 0.3},
        "steps": np.int64(120),  # numpy scalars, as the training code produces them
        "train_seconds": 1.5,
        "confusion_matrix": {"tn": np.int64(90), "fp": 3, "fn": 2, "tp": 5},
        "schedule": {"batch_size": 64},  # extra keys are kept as they are
    }
    metrics = ("pr_auc", "roc_auc", "f1", "precision", "recall", "mcc", "balanced_accuracy")
    metrics += ("g_mean", "brier", "log_loss", "brier_corrected", "log_loss_corrected")
    record |= {key: np.float32(0.5) for key in metrics}
    return record | changes


def test_a_complete_branch_record_passes_unchanged():
    record = trained()
    assert check_branch(record) is record and record["schedule"] == {"batch_size": 64}


@pytest.mark.parametrize("key", ["pr_auc", "threshold", "confusion_matrix", "brier_corrected"])
def test_a_branch_record_without_a_metric_is_refused_by_name(key):
    record = trained()
    del record[key]
    with pytest.raises(ValidationError, match=key):
        check_branch(record)


def test_failed_and_skipped_branches_need_no_metrics_but_a_known_status():
    check_branch({"strategy": "smote", "status": "skipped", "eligible": True, "error": "budget"})
    with pytest.raises(ValidationError, match="status"):
        check_branch({"strategy": "smote", "status": "crashed", "eligible": True})


def test_a_mistyped_value_is_refused():
    with pytest.raises(ValidationError, match="steps"):
        check_branch(trained(steps="many"))


def test_metrics_and_comparisons_are_checked():
    with pytest.raises(ValidationError, match="selected"):
        RunMetrics.check({"run_id": "r", "flow_run_id": None, "config": {}, "rank_by": "pr_auc"})
    with pytest.raises(ValidationError, match="pr_auc_interval"):
        Comparison.check(
            {
                "objective": "f1",
                "objective_difference": 0.1,
                "objective_interval": {"low": 0.0, "high": 0.2},
                "pr_auc_difference": 0.1,
                "n_boot": 2000,
                "n_rows": 100,
            }
        )


def test_the_leaderboard_keeps_its_public_columns():
    public = (
        *("rank", "strategy", "status", "eligible", "threshold", "validation_rank_metric"),
        *("pr_auc", "roc_auc", "f1", "precision", "recall", "mcc", "balanced_accuracy"),
        *("g_mean", "brier", "log_loss", "brier_corrected", "log_loss_corrected"),
        *("f1_at_0_5", "recall_at_0_5", "precision_at_0_5"),
        *("steps", "train_seconds", "calibration_method", "error"),
    )
    assert public == LEADERBOARD_COLUMNS
