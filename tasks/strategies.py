"""Balancing strategies: one registry entry each. Adding a strategy is one entry plus its test.

A strategy is data: how it resamples the training split (never validation or test), whether it
weights classes, which loss it uses, how it draws batches and how many members it averages. The
training code reads these fields; it has no per-strategy branches of its own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tasks.calibration import Calibration
from tasks.errors import ConfigError

REFERENCE = "reference"  # HistGradientBoosting on the same splits (tasks/reference.py); ranked;
# champion only with --allow-reference-champion
FOCAL_GAMMA = 2.0


def _undersampler(seed: int, categorical: list[int], n_columns: int):
    from imblearn.under_sampling import RandomUnderSampler

    return RandomUnderSampler(random_state=seed)


def _oversampler(seed: int, categorical: list[int], n_columns: int):
    from imblearn.over_sampling import RandomOverSampler

    return RandomOverSampler(random_state=seed)


def _smote(seed: int, categorical: list[int], n_columns: int):
    # SMOTE-NC resamples the stored integer codes: a synthetic row takes one real level per
    # categorical (the most frequent among its neighbours), never an interpolated dummy; it is
    # imbalanced-learn's SMOTENC computed on the codes (tasks.smotenc). With nothing but
    # categoricals SMOTE-NC has no distance to interpolate on: SMOTEN is its form for that
    # case. Whole-number numerics are snapped back to whole numbers by the caller.
    from imblearn.over_sampling import SMOTE, SMOTEN

    from tasks.smotenc import CodedSMOTENC

    if categorical and len(categorical) == n_columns:
        return SMOTEN(random_state=seed)
    if categorical:
        return CodedSMOTENC(categorical_features=categorical, random_state=seed)
    return SMOTE(random_state=seed)


@dataclass(frozen=True)
class Strategy:
    name: str
    summary: str
    sampler: Callable[[int, list[int], int], object] | None = None  # (seed, categorical, width)
    synthetic: bool = False  # the sampler creates new rows (a copy), rather than picking rows
    class_weighted: bool = False
    loss: Literal["bce", "focal"] = "bce"
    batches: Literal["shuffled", "balanced"] = "shuffled"
    ensemble: bool = False  # average config.ensemble_k members, member i sampled with seed + i

    def members(self, ensemble_k: int) -> int:
        """How many networks this strategy trains, given `--ensemble-k`."""
        return ensemble_k if self.ensemble else 1

    def trains_like(self, seed: int) -> tuple:
        """What a member's training depends on besides the data: members of two strategies
        with equal keys are the same network (ensemble member 0 is `undersample`)."""
        fields = (self.sampler, self.synthetic, self.class_weighted, self.loss, self.batches)
        return (*fields, seed)

    def class_weights(self, y: np.ndarray) -> dict[int, float] | None:
        """Balanced weights n / (2 * n_class) (scikit-learn's compute_class_weight)."""
        if not self.class_weighted:
            return None
        from sklearn.utils.class_weight import compute_class_weight

        weights = compute_class_weight("balanced", classes=np.array([0, 1]), y=y)
        return {0: float(weights[0]), 1: float(weights[1])}

    def focal_alpha(self, y: np.ndarray) -> float:
        """Weight of the positive class in the focal loss: the share of negatives in training
        (Keras's default 0.25 would down-weight a rare positive class)."""
        return float(1.0 - np.mean(y))

    def calibration(self, y: np.ndarray, true_prior: float) -> Calibration | None:
        """The exact map from this strategy's scores to calibrated probabilities, given the
        labels its loss saw; None when there is none in closed form (a calibrator is fitted on
        the stop half instead)."""
        if self.synthetic:
            return None
        if self.loss == "focal":
            return Calibration(method="focal", alpha=self.focal_alpha(y), gamma=FOCAL_GAMMA)
        prior = self.effective_prior(y)
        if abs(prior - true_prior) < 1e-12:
            return Calibration(method="identity")
        return Calibration(method="prior", trained_prior=prior, true_prior=true_prior)

    def effective_prior(self, y: np.ndarray) -> float:
        """The positive share the loss actually sees (after resampling, weights, batching)."""
        positive = float(np.mean(y))
        if self.batches == "balanced":
            return 0.5
        weights = self.class_weights(y)
        if weights is not None:
            w1, w0 = positive * weights[1], (1 - positive) * weights[0]
            return w1 / (w1 + w0)
        if self.loss == "focal":
            alpha = self.focal_alpha(y)
            return positive * alpha / (positive * alpha + (1 - positive) * (1 - alpha))
        return positive


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("baseline", "plain binary cross-entropy"),
        Strategy("class_weight", "balanced class weights n/(2*n_class)", class_weighted=True),
        Strategy(
            "undersample", "random undersampling of the majority class", sampler=_undersampler
        ),
        Strategy("oversample", "random oversampling of the minority class", sampler=_oversampler),
        Strategy("smote", "SMOTE (SMOTENC on categorical codes)", sampler=_smote, synthetic=True),
        Strategy(
            "balanced_batches", "each batch drawn ~50/50 from the two classes", batches="balanced"
        ),
        Strategy("focal_loss", "focal loss, gamma 2, alpha = share of negatives", loss="focal"),
        Strategy(
            "ensemble",
            "average of k models, each on a different balanced undersample",
            sampler=_undersampler,
            ensemble=True,
        ),
    )
}


def resolve_strategies(names: list[str] | None) -> list[str]:
    """The strategies to run, in registry order; unknown names fail before any work."""
    if names is None:
        return list(STRATEGIES)
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise ConfigError(
            f"unknown strateg{'y' if len(unknown) == 1 else 'ies'}: {', '.join(unknown)}; "
            f"valid names are: {', '.join(STRATEGIES)}"
        )
    if not names:
        raise ConfigError(f"--strategies is empty; valid names are: {', '.join(STRATEGIES)}")
    return list(dict.fromkeys(names))
