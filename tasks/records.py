"""The records a run hands from stage to stage and writes for its users, and the one place their
keys live: the metrics of a branch, the leaderboard's columns, what the registry keeps.

Records stay plain JSON-able dictionaries on the way (Prefect task results, `metrics.json`,
`run.json`, the registry file); these models check their shape where they are written, so a key
that goes missing or changes type fails there, naming the field, not in a later reader.
`metrics.json` and `leaderboard.csv` keep their public shape (`SCHEMA_VERSION`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION = 1  # of metrics.json and leaderboard.csv; bump when a key changes meaning

# test metrics of a branch at its tuned threshold, in the record and the exported model
RANKING_METRICS = ("pr_auc", "roc_auc")
COUNT_METRICS = ("f1", "precision", "recall", "mcc", "balanced_accuracy", "g_mean")
CALIBRATION_METRICS = ("brier", "log_loss")
CORRECTED_METRICS = ("brier_corrected", "log_loss_corrected")  # of the calibrated probability
METRIC_KEYS = (*RANKING_METRICS, *COUNT_METRICS, *CALIBRATION_METRICS, "confusion_matrix")
SCALAR_METRICS = tuple(key for key in METRIC_KEYS if key != "confusion_matrix")
TEST_METRICS = (*METRIC_KEYS, *CORRECTED_METRICS)
# metrics that depend on a threshold: ranked by cross-fitting over the validation halves
THRESHOLD_METRICS = ("f1", "mcc", "balanced_accuracy", "g_mean", "objective")
AT_HALF = ("f1", "recall", "precision")  # also reported at threshold 0.5
# what the registry keeps of each model, and what artifacts and summaries show
HEADLINE_METRICS = ("pr_auc", "roc_auc", "f1", "precision", "recall")
# the report's leaderboard: the headline plus the balanced and calibration metrics
BOARD_METRICS = (*HEADLINE_METRICS, "mcc", "g_mean", "brier_corrected")

LEADERBOARD_COLUMNS = (
    *("rank", "strategy", "status", "eligible", "threshold", "validation_rank_metric"),
    *SCALAR_METRICS,
    *CORRECTED_METRICS,
    *(f"{key}_at_0_5" for key in AT_HALF),
    *("steps", "train_seconds", "calibration_method", "error"),
)

Status = Literal["ok", "failed", "skipped"]


class Record(BaseModel):
    """Checks the keys a record must have; keeps every other key as it is."""

    model_config = ConfigDict(extra="allow")

    @classmethod
    def check(cls, record: dict[str, Any]) -> dict[str, Any]:
        """The record itself, once its shape is checked."""
        cls.model_validate(record)
        return record


class BranchRecord(Record):
    """One strategy's branch: its status and, when ok, its metrics (see `tasks.train`)."""

    strategy: str
    status: Status
    eligible: bool
    error: str | None = None


class TrainedBranch(BranchRecord):
    """An ok branch: the threshold tuned on validation and the test metrics at it."""

    threshold: float
    threshold_objective: str
    validation: dict[str, Any]
    calibration: dict[str, Any]
    at_0_5: dict[str, Any]
    steps: int
    train_seconds: float
    pr_auc: float
    roc_auc: float
    f1: float
    precision: float
    recall: float
    mcc: float
    balanced_accuracy: float
    g_mean: float
    brier: float
    log_loss: float
    brier_corrected: float
    log_loss_corrected: float
    confusion_matrix: dict[str, int]


def check_branch(record: dict[str, Any]) -> dict[str, Any]:
    model = TrainedBranch if record.get("status") == "ok" else BranchRecord
    return model.check(record)


class RunMetrics(Record):
    """`metrics.json`: the ranked branch records and the selected strategy."""

    schema_version: int = SCHEMA_VERSION
    run_id: str
    flow_run_id: str | None
    config: dict[str, Any]
    data_fingerprint: str
    rank_by: str
    selected: str
    selection: dict[str, Any] | None = None  # the leader vs baseline evidence (settle_selection)
    strategies: list[dict[str, Any]]
    repeats: dict[str, Any] | None


class BoardLine(BaseModel):
    """One strategy on the closing summary's leaderboard (the reference included): its
    validation rank metric, and its test metrics at its tuned threshold."""

    rank: int | None
    strategy: str
    status: Status
    eligible: bool
    validation: float | None = None
    test_pr_auc: float | None = None
    f1: float | None = None
    precision: float | None = None
    recall: float | None = None
    threshold: float | None = None
    error: str | None = None
    reused_from: str | None = None  # the run that trained it, when it was reused (tasks.reuse)


class Interval(BaseModel):
    low: float
    high: float


class Comparison(Record):
    """A paired bootstrap of model A minus model B on the same rows (see `tasks.compare`)."""

    objective: str
    objective_difference: float
    objective_interval: Interval
    pr_auc_difference: float
    pr_auc_interval: Interval
    n_boot: int
    n_rows: int


class SelectionEvidence(Record):
    """Why the strategy ranked first was or was not selected: its tuning-half PR-AUC minus
    baseline's, with the paired-bootstrap interval (see `tasks.compare.settle_selection`)."""

    rule: Literal["reliable"]
    leader: str
    selected: str
    pr_auc_difference: float
    pr_auc_interval: Interval
    n_boot: int
    n_rows: int


class Decision(Record):
    """Champion/challenger: promote or keep, and why (see `tasks.champion`)."""

    action: Literal["promote", "keep"]
    reason: str
    champion_run_id: str | None = None


class RegistryEntry(Record):
    """A model in the registry: the champion, a candidate, or (with `event`) a history line."""

    run_id: str
    model_dir: str
    strategy: str
    metrics: dict[str, float]
    recorded_at: str
    seen_rows: str | None = None
