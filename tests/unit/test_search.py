"""--search: the candidates, and the choice, which sees only the stop half's early-stopping
scores (tasks/search.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks import search
from tasks.model import TrainSettings

BASE = TrainSettings(
    hidden=(64, 32),
    dropout=0.2,
    learning_rate=1e-3,
    batch_size=256,
    steps_per_check=50,
    max_checks=40,
    patience=10,
)


@given(st.integers(0, 40), st.integers(0, 2**32 - 1))
@settings(max_examples=50, deadline=None)
def test_candidates_are_the_defaults_then_distinct_draws_that_keep_the_shape(n, seed):
    options = search.candidates(BASE, n, seed)
    assert options[0] == BASE and len(options) == 1 + min(n, len(search.alternatives(BASE)))
    assert len(set(options)) == len(options)
    for option in options[1:]:
        assert replace(
            option, learning_rate=BASE.learning_rate, weight_decay=0.0, dropout=0.2
        ) == replace(BASE, weight_decay=0.0)  # only the searched settings differ
        assert option.learning_rate / BASE.learning_rate in search.SEARCH_SPACE["learning_rate"]
        assert option.weight_decay in search.SEARCH_SPACE["weight_decay"]
        assert option.dropout in search.SEARCH_SPACE["dropout"]
    assert options == search.candidates(BASE, n, seed)  # the seed decides


def member(curve: list[float]) -> tuple[None, dict]:
    return None, {"history": {"val_log_likelihood": curve, "loss": [0.0] * len(curve)}}


@given(
    st.lists(
        st.lists(st.lists(st.floats(-5, 0), min_size=1, max_size=6), min_size=1, max_size=3),
        min_size=1,
        max_size=5,
    ).filter(lambda runs: len({len(r) for r in runs}) == 1)
)
def test_the_choice_is_the_first_best_mean_stop_half_score(runs):
    per_candidate = [[member(curve) for curve in members] for members in runs]
    chosen, scores = search.choose(per_candidate)
    expected = [float(np.mean([max(curve) for curve in members])) for members in runs]
    np.testing.assert_allclose(scores, expected)
    assert chosen == int(np.argmax(expected))  # ties: the earlier candidate (the defaults first)


def test_a_candidate_with_a_failed_member_is_never_chosen():
    failed = [member([0.9]), RuntimeError("diverged")]
    chosen, scores = search.choose([[member([0.2]), member([0.3])], failed])
    assert chosen == 0 and scores[1] == -np.inf
