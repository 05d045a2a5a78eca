"""Metrics for a binary classifier at a threshold, computed with numpy.

Each is defined exactly as scikit-learn defines it (tests/unit/test_metrics.py checks them
against scikit-learn on random scores with ties), without scikit-learn's per-call input checks:
a run computes them thousands of times (every early-stopping check of every network, every
threshold of the cross-fit), where those checks cost more than the metric."""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.calibration import log_likelihood


class SortedScores:
    """Scores sorted once, so average precision of any row weighting is two running sums.

    Recall only steps at score levels that hold a positive row, so precision is needed only at
    the ends of those levels: the weighted rows up to each such end are a running sum over the
    rows in rank order (rows ranked below the last positive never count), and the weighted
    positives up to it a running sum over the positive rows alone. Running sums, then a gather
    at the ends, cost a fraction of summing each segment (`np.add.reduceat`) on wide weight
    matrices: the paired bootstrap calls this on (resamples x test rows) counts."""

    def __init__(self, y: np.ndarray, scores: np.ndarray):
        scores = np.asarray(scores)
        order = np.argsort(-scores, kind="mergesort")
        y_sorted = np.asarray(y)[order].astype(np.float64)
        sorted_scores = scores[order]
        last = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(sorted_scores) - 1]
        first = np.r_[0, last[:-1] + 1]
        with_positive = last[np.add.reduceat(y_sorted, first) > 0] if len(y_sorted) else last
        stop = int(with_positive[-1]) + 1 if len(with_positive) else 0
        positive = np.flatnonzero(y_sorted[:stop])
        self.order = order[:stop]  # rows in rank order, down to the last positive
        self.positive_rows = order[positive]  # the positive rows, in rank order
        self.ends = with_positive.astype(np.intp)  # rank of each positive level's last row
        # positives ranked at or above each end, minus one: an index into their running sum
        self.positives_to_end = np.searchsorted(positive, with_positive, side="right") - 1

    def average_precision(self, weights: np.ndarray) -> np.ndarray:
        """AP = sum over thresholds of (recall step) x precision, as scikit-learn defines it.
        weights: (B, n) row weights (counts of a bootstrap resample); one AP per row of it.
        The running sums run along each resample's row (contiguous when the counts come from
        `resample_counts`): numpy's running sum down the columns of an (n, B) matrix is ~5x
        slower."""
        if not len(self.positive_rows):  # no positive row: AP is undefined
            return np.full(len(weights), np.nan)
        rows = _running_sum(weights, self.order)[:, self.ends].astype(np.float64)
        tp = _running_sum(weights, self.positive_rows)[:, self.positives_to_end]
        tp = tp.astype(np.float64)
        positives = tp[:, -1:]
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(rows > 0, tp / rows, 0.0)
            recall = np.where(positives > 0, tp / positives, 0.0)
        steps = np.diff(recall, axis=1, prepend=0.0)
        return np.where(positives[:, 0] > 0, (steps * precision).sum(axis=1), np.nan)


def _running_sum(weights: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """The running sums of `weights`' `columns` (in that order) along each row, in place of
    the gathered copy."""
    gathered = np.take(weights, columns, axis=1)
    return np.cumsum(gathered, axis=1, out=gathered)


def average_precision(y: np.ndarray, scores: np.ndarray) -> float:
    """PR-AUC as average precision (NaN without positives, where scikit-learn warns)."""
    return float(SortedScores(y, scores).average_precision(np.ones((1, len(scores))))[0])


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """The probability that a random positive outscores a random negative (ties count half)."""
    y = np.asarray(y)
    positives = int((y == 1).sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        raise ValueError("Only one class present in y_true. ROC AUC score is not defined")
    scores = np.asarray(scores)
    order = np.argsort(scores, kind="mergesort")
    ranked = scores[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ranked)) + 1]
    ends = np.r_[starts[1:], len(ranked)]
    average_rank = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # 1-based, ties averaged
    ranks = np.empty(len(scores))
    ranks[order] = average_rank
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def confusion(y: np.ndarray, predicted: np.ndarray) -> tuple[int, int, int, int]:
    """(tn, fp, fn, tp) of 0/1 labels and 0/1 predictions."""
    y, predicted = np.asarray(y).astype(bool), np.asarray(predicted).astype(bool)
    tp = int(np.count_nonzero(y & predicted))
    fp = int(np.count_nonzero(~y & predicted))
    fn = int(np.count_nonzero(y & ~predicted))
    return len(y) - tp - fp - fn, fp, fn, tp


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def threshold_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    tn, fp, fn, tp = confusion(y, np.asarray(p) >= threshold)
    recall = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    mcc_denominator = float(np.sqrt(float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    return {
        "threshold": float(threshold),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": recall,
        "mcc": _ratio(float(tp) * tn - float(fp) * fn, mcc_denominator),
        "balanced_accuracy": float((recall + specificity) / 2),
        "g_mean": float(np.sqrt(recall * specificity)),
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def score_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Threshold-free metrics of one probability vector."""
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    return {
        "pr_auc": average_precision(y, p),
        "roc_auc": roc_auc(y, p),
        "brier": float(np.mean((p - y) ** 2)),
        "log_loss": -log_likelihood(y, p),
    }


def evaluate(
    y: np.ndarray, p: np.ndarray, threshold: float, p_corrected: np.ndarray
) -> dict[str, Any]:
    """All reported metrics: ranking and calibration of the raw scores, counts at `threshold`,
    and Brier/log loss of the calibrated probabilities (`probability_corrected`)."""
    result = score_metrics(y, p) | threshold_metrics(y, p, threshold)
    corrected = score_metrics(y, p_corrected)
    result["brier_corrected"] = corrected["brier"]
    result["log_loss_corrected"] = corrected["log_loss"]
    return result


Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float, float]:
    """The share `successes / trials` and its Wilson score interval (95% by default). Unlike
    the normal approximation it stays inside [0, 1] and keeps its coverage at 0 or all
    successes and on few trials (a rare class's handful of flagged rows). NaNs for no trials."""
    if trials <= 0:
        return float("nan"), float("nan"), float("nan")
    share = successes / trials
    spread = z * z / trials
    centre = (share + spread / 2) / (1 + spread)
    half = z * np.sqrt(share * (1 - share) / trials + spread / (4 * trials)) / (1 + spread)
    return share, max(0.0, centre - half), min(1.0, centre + half)
