"""From a network's scores to calibrated probabilities of the positive class.

Each balancing strategy distorts the score in its own known way, so each gets its own map; the
same `Calibration` is fitted when a branch trains, stored in the exported model, and applied by
`flows.predict`, so training and prediction compute `probability_corrected` with one function.

- `prior` (exact): a network trained under a positive prior pi' (resampled rows, class weights,
  balanced batches) estimates the posterior under pi'; Bayes' rule shifts its logit by
  logit(pi) - logit(pi') back to the true prior pi. Applied to each member, then averaged (an
  ensemble of balanced members is corrected member by member, not after averaging).
- `focal` (exact): the minimiser of the expected focal loss FL = -alpha (1-p)^g log p (positives)
  - (1-alpha) p^g log(1-p) (negatives) is a known monotone function of the posterior q; it is
  inverted in closed form: q = (1-alpha) D0(p) / ((1-alpha) D0(p) - alpha D1(p)), D1 and D0 the
  derivatives of the two terms. A logit shift cannot undo the squeeze toward 0.5.
- `platt`: a two-parameter logistic map of the score's logit, fitted on the validation stop
  half, for distortions with no closed form (SMOTE's synthetic rows change the class-conditional
  densities, not just the prior).
- `identity`: the score is already a probability under the true prior.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

EPS = 1e-7


# Each function takes the array module it computes with: numpy (the default) for the training
# and evaluation code, `keras.ops` inside the standalone model's `Calibrate` layer. One
# implementation, two kinds of arrays.


def logit(p: Any, xp: Any = np) -> Any:
    if xp is np:
        p = np.asarray(p, dtype=np.float64)
    p = xp.clip(p, EPS, 1 - EPS)
    return xp.log(p / (1 - p))


def sigmoid(z: Any, xp: Any = np) -> Any:
    if xp is np:
        z = np.asarray(z, dtype=np.float64)
    return 1.0 / (1.0 + xp.exp(-z))


def prior_shift(p: Any, trained_prior: float, true_prior: float, xp: Any = np) -> Any:
    """Probabilities learned under `trained_prior`, moved to `true_prior` (a logit shift)."""
    if abs(trained_prior - true_prior) < 1e-12:
        return np.asarray(p, dtype=np.float64) if xp is np else p
    return sigmoid(logit(p, xp) - float(logit(trained_prior)) + float(logit(true_prior)), xp)


def focal_posterior(p: Any, alpha: float, gamma: float, xp: Any = np) -> Any:
    """The posterior q whose expected focal loss is minimised by the score p."""
    if xp is np:
        p = np.asarray(p, dtype=np.float64)
    p = xp.clip(p, EPS, 1 - EPS)
    d1 = gamma * (1 - p) ** (gamma - 1) * xp.log(p) - (1 - p) ** gamma / p  # < 0
    d0 = -gamma * p ** (gamma - 1) * xp.log(1 - p) + p**gamma / (1 - p)  # > 0
    return (1 - alpha) * d0 / ((1 - alpha) * d0 - alpha * d1)


def calibrated(calibration: Calibration, member_scores: list[Any], xp: Any = np) -> Any:
    """Calibrated probabilities from each member's scores for the same rows."""

    def mean(arrays: list[Any]) -> Any:
        return xp.mean(xp.stack(arrays), axis=0)

    if calibration.method == "prior":
        return mean(
            [
                prior_shift(s, calibration.trained_prior, calibration.true_prior, xp)
                for s in member_scores
            ]
        )
    if calibration.method == "focal":
        return mean(
            [focal_posterior(s, calibration.alpha, calibration.gamma, xp) for s in member_scores]
        )
    score = mean(member_scores)
    if calibration.method == "platt":
        return sigmoid(calibration.slope * logit(score, xp) + calibration.intercept, xp)
    return score


class Calibration(BaseModel):
    """How a model's member scores become `probability_corrected` (see the module docstring)."""

    method: Literal["identity", "prior", "focal", "platt"]
    trained_prior: float | None = None  # prior
    true_prior: float | None = None  # prior
    alpha: float | None = None  # focal
    gamma: float | None = None  # focal
    slope: float | None = None  # platt: sigmoid(slope * logit(score) + intercept)
    intercept: float | None = None  # platt
    fitted_on: str | None = None

    def apply(self, member_scores: list[np.ndarray]) -> np.ndarray:
        """Calibrated probabilities from each member's scores for the same rows."""
        return calibrated(self, [np.asarray(s, dtype=np.float64) for s in member_scores])

    @property
    def summary(self) -> str:
        if self.method == "prior":
            return f"prior shift {self.trained_prior:.4g} -> {self.true_prior:.4g} (exact)"
        if self.method == "focal":
            return f"focal-loss inverse, alpha {self.alpha:.4g}, gamma {self.gamma:g} (exact)"
        if self.method == "platt":
            return f"Platt scaling fitted on the {self.fitted_on}"
        return "none needed (trained under the true prior)"


def fit_platt(scores: np.ndarray, y: np.ndarray, fitted_on: str) -> Calibration:
    """Logistic regression of the label on the score's logit (almost unregularised)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1e4).fit(logit(scores).reshape(-1, 1), np.asarray(y))
    return Calibration(
        method="platt",
        slope=float(model.coef_[0, 0]),
        intercept=float(model.intercept_[0]),
        fitted_on=fitted_on,
    )
