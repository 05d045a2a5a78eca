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


def log_likelihood(y: np.ndarray, p: np.ndarray) -> float:
    """Mean log-likelihood per row of labels `y` under probabilities `p` (clipped to EPS)."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(y, dtype=np.float64)
    return float(np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


PLATT_C = 1e4  # inverse strength of the L2 penalty on the slope (scikit-learn's C)


def _platt_loss(w: np.ndarray, z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """The penalised log loss (summed over rows) of sigmoid(w[0] z + w[1]), and those
    probabilities, from one exponential per row."""
    t = w[0] * z + w[1]
    e = np.exp(-np.abs(t))
    loss = np.sum(np.maximum(t, 0.0) + np.log1p(e) - y * t) + w[0] ** 2 / (2 * PLATT_C)
    return float(loss), np.where(t >= 0, 1.0, e) / (1.0 + e)


def platt(scores: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(slope, intercept, mean log-likelihood per row) of the logistic regression of the label on
    the score's logit: scikit-learn's `LogisticRegression(C=PLATT_C)` objective (almost
    unregularised; the penalty only keeps the slope finite when the rows are separable), solved
    by Newton's method with step halving from the identity map. Two parameters, a few passes
    over the rows: cheap enough for every early-stopping check."""
    z = logit(scores)
    y = np.asarray(y, dtype=np.float64)
    w = np.array([1.0, 0.0])
    loss, q = _platt_loss(w, z, y)
    for _ in range(100):
        r, h = q - y, q * (1 - q)
        hz = h @ z
        gradient = np.array([z @ r + w[0] / PLATT_C, r.sum()])
        hessian = np.array([[(h * z) @ z + 1 / PLATT_C, hz], [hz, h.sum() + 1e-12]])
        step, shrink = np.linalg.solve(hessian, gradient), 1.0
        while True:
            candidate = w - shrink * step
            new_loss, new_q = _platt_loss(candidate, z, y)
            if new_loss <= loss or shrink < 1e-8:
                break
            shrink /= 2
        if new_loss > loss:
            break
        gain = loss - new_loss
        w, loss, q = candidate, new_loss, new_q
        if gain <= 1e-12 * max(1.0, loss):
            break
    log_likelihood = -(loss - w[0] ** 2 / (2 * PLATT_C)) / max(len(z), 1)
    return float(w[0]), float(w[1]), float(log_likelihood)


def fit_platt(scores: np.ndarray, y: np.ndarray, fitted_on: str) -> Calibration:
    """Logistic regression of the label on the score's logit (`platt`)."""
    slope, intercept, _ = platt(scores, y)
    return Calibration(method="platt", slope=slope, intercept=intercept, fitted_on=fitted_on)
