"""`--search N`: a few configurations per strategy, chosen on the validation stop half only.

Every candidate keeps the network's shape (so the strategies still train side by side in one
program, and the exported model is built the same way) and varies what the literature finds
matters most per dataset for small tabular MLPs: the learning rate, decoupled weight decay and
dropout (Kadra et al. 2021; docs/quality.md measured weight decay helping three sets and hurting
one). The defaults are always candidate 0; N others are drawn without replacement from the grid
with the run's seed. Each strategy keeps the candidate whose members' best early-stopping score
(the stop half's log-likelihood of the reported probability, tasks.model.stop_half_scores) is
highest on average, ties going to the earlier candidate: the tuning half and the test rows never
take part, so threshold tuning, ranking and the reported metrics stay as honest as without a
search."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import numpy as np

from tasks.model import STOP_CRITERION, TrainSettings

SEARCH_SPACE: dict[str, tuple[float, ...]] = {
    "learning_rate": (0.3, 1.0, 3.0),  # multiples of --learning-rate
    "weight_decay": (0.0, 0.1, 1.0, 5.0),
    "dropout": (0.0, 0.1, 0.3),
}
SEARCHED = tuple(SEARCH_SPACE)


def alternatives(settings: TrainSettings) -> list[TrainSettings]:
    """Every configuration of the grid other than `settings` (35 or 36 of them)."""
    grid = [
        replace(settings, learning_rate=settings.learning_rate * rate, weight_decay=wd, dropout=d)
        for rate, wd, d in itertools.product(*SEARCH_SPACE.values())
    ]
    return [c for c in grid if c != settings]


def candidates(settings: TrainSettings, n: int, seed: int) -> list[TrainSettings]:
    """The defaults, then `n` other distinct configurations drawn from SEARCH_SPACE (all of
    them when `n` is larger)."""
    others = alternatives(settings)
    picks = np.random.default_rng(seed).choice(len(others), size=min(n, len(others)), replace=False)
    return [settings, *(others[i] for i in sorted(picks))]


def describe(settings: TrainSettings) -> dict[str, float]:
    return {name: float(getattr(settings, name)) for name in SEARCHED}


def stop_score(results: list[Any]) -> float:
    """A strategy's members' mean best early-stopping score (-inf when any member failed)."""
    if any(isinstance(r, BaseException) for r in results):
        return -np.inf
    return float(np.mean([max(info["history"][STOP_CRITERION]) for _, info in results]))


def choose(per_candidate: list[list[Any]]) -> tuple[int, list[float]]:
    """The candidate to keep (the first of the best) and every candidate's stop-half score."""
    scores = [stop_score(results) for results in per_candidate]
    return int(np.argmax(scores)), scores


def record(options: list[TrainSettings], chosen: int, scores: list[float]) -> dict[str, Any]:
    """What a branch record says about its search."""
    return {
        "candidates": [describe(c) for c in options],
        "stop_log_likelihood": [round(s, 6) if np.isfinite(s) else None for s in scores],
        "chosen": chosen,
        "chosen_settings": describe(options[chosen]),
    }
