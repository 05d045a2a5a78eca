"""Selection under noise: the strategy ranked first on the small tuning half is selected only when
its PR-AUC there is reliably higher than baseline's (tasks.compare.settle_selection). Checked on
synthetic tuning halves whose truth is known: a leader no better than baseline is rarely
selected, a truly better one always is."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.compare import selection_text, settle_selection, verdict_text
from tasks.config import TrainConfig
from tasks.evaluate import average_precision
from tasks.ingest import ID_COLUMN

N_ROWS = 800


def tuning_half(tmp_path, seed: int, leader_noise: float, baseline_noise: float):
    """Tuning-half predictions of two branches scoring one latent signal, each with its own
    noise: the less noisy one ranks rows better (a higher expected PR-AUC)."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=N_ROWS)
    y = (signal + rng.normal(size=N_ROWS) > 1.6).astype(int)  # ~10% positives
    branches = tmp_path / f"branches-{seed}"
    records = []
    for name, noise in (("smote", leader_noise), ("baseline", baseline_noise)):
        score = 1 / (1 + np.exp(-(signal + rng.normal(scale=noise, size=N_ROWS))))
        (branches / name).mkdir(parents=True)
        pd.DataFrame(
            {"part": "tune", ID_COLUMN: np.arange(N_ROWS), "y": y, "probability": score}
        ).to_parquet(branches / name / "predictions.parquet")
        records.append(
            {
                "strategy": name,
                "status": "ok",
                "eligible": True,
                "threshold": 0.5,
                "validation": {"pr_auc": average_precision(y, score)},
            }
        )
    return branches, records


def settle(tmp_path, seed: int, leader_noise: float, baseline_noise: float, **changes):
    branches, records = tuning_half(tmp_path, seed, leader_noise, baseline_noise)
    config = TrainConfig(bootstrap=1000, seed=seed, **changes)
    return settle_selection("smote", records, config, branches, raw_path=""), records


def test_a_leader_no_better_than_baseline_is_rarely_selected(tmp_path):
    """Equal noise: the leader's PR-AUC differs from baseline's by chance alone, so its 95%
    interval's lower bound lies above zero in about 2.5% of tuning halves."""
    picks = [settle(tmp_path, seed, 1.0, 1.0)[0][0] for seed in range(40)]
    assert picks.count("smote") <= 4  # P(more than 4 of 40 | p = 0.025) < 0.01


def test_a_truly_better_leader_is_always_selected(tmp_path):
    for seed in range(10):
        (selected, evidence), records = settle(tmp_path, seed, 0.2, 2.0)
        assert selected == "smote" and evidence["selected"] == "smote"
        assert evidence["pr_auc_interval"]["low"] > 0
        difference = records[0]["validation"]["pr_auc"] - records[1]["validation"]["pr_auc"]
        assert evidence["pr_auc_difference"] == pytest.approx(difference, abs=1e-12)
        assert "reliably better than baseline" in selection_text(evidence)


def test_baseline_kept_says_why_in_the_verdict(tmp_path):
    seed = next(s for s in range(40) if settle(tmp_path / str(s), s, 1.0, 1.0)[0][0] == "baseline")
    (selected, evidence), _ = settle(tmp_path / "again", seed, 1.0, 1.0)
    assert selected == "baseline" and evidence["leader"] == "smote"
    low, high = evidence["pr_auc_interval"]["low"], evidence["pr_auc_interval"]["high"]
    assert low <= 0 and low < evidence["pr_auc_difference"] < high
    verdict = verdict_text("baseline", None, "pr_auc", evidence)
    assert verdict.startswith("Selected **baseline**: smote ranked first")
    assert "not reliably better" in verdict


@pytest.mark.parametrize(
    "changes", [{"selection": "top"}, {"rank_by": "f1"}], ids=["selection top", "rank by f1"]
)
def test_the_leader_is_selected_without_the_rule(tmp_path, changes):
    (selected, evidence), _ = settle(tmp_path, 0, 1.0, 1.0, **changes)
    assert selected == "smote" and evidence is None


def test_the_leader_is_selected_when_baseline_did_not_run_or_is_not_eligible(tmp_path):
    branches, records = tuning_half(tmp_path, 0, 1.0, 1.0)
    config = TrainConfig(bootstrap=1000)
    assert settle_selection("smote", records[:1], config, branches, "") == ("smote", None)
    records[1]["eligible"] = False
    assert settle_selection("smote", records, config, branches, "") == ("smote", None)
    records[1]["eligible"], records[1]["status"] = True, "failed"
    assert settle_selection("smote", records, config, branches, "") == ("smote", None)


def test_a_leader_tied_with_baseline_is_not_selected(tmp_path):
    """Ranking order among equal scores is arbitrary: a tie (both perfect on a small tuning
    half, as on WDBC) keeps baseline, and the verdict calls it a tie."""
    branches, records = tuning_half(tmp_path, 0, 1.0, 1.0)
    tied = pd.read_parquet(branches / "baseline" / "predictions.parquet")
    tied.to_parquet(branches / "smote" / "predictions.parquet")
    records[0]["validation"] = records[1]["validation"]
    selected, evidence = settle_selection(
        "smote", records, TrainConfig(bootstrap=1000), branches, ""
    )
    assert selected == "baseline" and evidence["pr_auc_difference"] == 0
    assert verdict_text("baseline", None, "pr_auc", evidence) == (
        "Selected **baseline**: smote ties baseline on the validation tuning half (equal "
        "PR-AUC): baseline is selected."
    )


def test_a_selected_baseline_is_never_said_not_to_have_run():
    """Regression: selecting baseline leaves no selected-vs-baseline comparison, and the verdict
    said "No baseline branch ran, so there is no margin to report" about the baseline it had
    just selected (every run where baseline ranked first, and every baseline-only run)."""
    for balancing_ran in (True, False):
        text = verdict_text("baseline", None, "pr_auc", None, balancing_ran)
        assert "No baseline branch ran" not in text and text.startswith("Selected **baseline**")
    assert "no balancing strategy beat" in verdict_text("baseline", None, "pr_auc", None, True)
    assert "only strategy trained" in verdict_text("baseline", None, "pr_auc", None, False)
    assert "No baseline branch ran" in verdict_text("smote", None, "pr_auc")
