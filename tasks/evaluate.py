"""Metrics for a binary classifier at a threshold."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics

from tasks.calibration import EPS


def threshold_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    y = np.asarray(y, dtype=np.int64)
    predicted = (np.asarray(p) >= threshold).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in metrics.confusion_matrix(y, predicted, labels=[0, 1]).ravel())
    recall = tp / (tp + fn) if tp + fn else 0.0
    specificity = tn / (tn + fp) if tn + fp else 0.0
    return {
        "threshold": float(threshold),
        "f1": float(metrics.f1_score(y, predicted, zero_division=0)),
        "precision": float(metrics.precision_score(y, predicted, zero_division=0)),
        "recall": float(recall),
        "mcc": float(metrics.matthews_corrcoef(y, predicted)),
        "balanced_accuracy": float((recall + specificity) / 2),
        "g_mean": float(np.sqrt(recall * specificity)),
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def score_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Threshold-free metrics of one probability vector."""
    y = np.asarray(y, dtype=np.int64)
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    return {
        "pr_auc": float(metrics.average_precision_score(y, p)),
        "roc_auc": float(metrics.roc_auc_score(y, p)),
        "brier": float(metrics.brier_score_loss(y, p)),
        "log_loss": float(metrics.log_loss(y, np.clip(p, EPS, 1 - EPS), labels=[0, 1])),
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
