"""Networks trained side by side in one program (tasks.stacked) against the reference trainer,
Keras's own loop one network at a time (tasks.model.fit_member)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from tasks.calibration import platt
from tasks.embeddings import Embeddings
from tasks.model import (
    BatchStream,
    Network,
    TrainSettings,
    build_mlp,
    fit_member,
    initial_weights,
    predict,
)
from tasks.stacked import MASK_LEVELS, dropout_mask, dropout_threshold, fit_stacked


def data(seed: int = 0, n: int = 900, codes: tuple[int, ...] = ()):
    """6 numeric inputs; with `codes`, 3 numerics then one code column per entry (that many
    levels, some rows -1: unseen), the label depending on the first code."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = (x[:, 0] + 0.8 * x[:, 1] * x[:, 2] + rng.normal(size=n) > 1.6).astype(np.int64)
    if codes:
        columns = [rng.integers(-1, levels, n) for levels in codes]
        y = (x[:, 0] + 0.5 * (columns[0] % 3) + rng.normal(size=n) > 1.6).astype(np.int64)
        x = np.concatenate([x[:, :3], np.stack(columns, axis=1).astype(np.float32)], axis=1)
    return x[:600], y[:600], x[600:], y[600:]


def networks(x: np.ndarray, y: np.ndarray, batch: int) -> list[Network]:
    """One network of every kind of difference the strategies make: plain, class-weighted,
    focal, balanced batches on an undersampled pool, and rows of its own (as SMOTE makes)."""
    rng = np.random.default_rng(5)
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    undersampled = np.sort(np.concatenate([positives, rng.choice(negatives, len(positives))]))
    synthetic_x = np.concatenate([x, x[positives] + 0.05]).astype(np.float32)
    synthetic_y = np.concatenate([y, np.ones(len(positives), dtype=np.int64)])
    prior = float(y.mean())
    bias = float(np.log(prior / (1 - prior)))
    return [
        Network(BatchStream(x, y, batch, 1, False), 1, bias, "bce", 0.5, None),
        Network(BatchStream(x, y, batch, 1, False), 1, 0.0, "bce", 0.5, {0: 0.6, 1: 3.1}),
        Network(BatchStream(x, y, batch, 1, False), 1, -0.4, "focal", 1 - prior, None),
        Network(BatchStream(x, y, batch, 2, True, undersampled), 2, 0.0, "bce", 0.5, None),
        Network(BatchStream(synthetic_x, synthetic_y, batch, 3, False), 3, -0.2, "bce", 0.5, None),
    ]


def settings(**changes) -> TrainSettings:
    base = {
        "hidden": (16, 8),
        "dropout": 0.0,
        "learning_rate": 0.01,
        "batch_size": 64,
        "steps_per_check": 8,
        "max_checks": 5,
        "patience": 50,
    }
    return TrainSettings(**(base | changes))


EMBEDDED = Embeddings(width=6, numeric=3, categories=((3, 3),))  # 3 numerics, a 3-level block
# 3 numerics and two code columns, of 4 and 20 levels: one-hot inside the network (27 wide), the
# 20-level block embedded
CODES = (4, 20)
CODED = Embeddings(width=27, numeric=3, categories=((7, 20),))


@pytest.mark.parametrize(
    ("skip", "embedded", "codes"),
    [(False, None, ()), (True, None, ()), (True, EMBEDDED, ()), (True, CODED, CODES)],
)
def test_the_stack_starts_from_the_weights_build_mlp_starts_from(skip, embedded, codes):
    s = settings(linear_skip=skip, embeddings=embedded, codes=codes)
    width = 3 + len(codes) if codes else 6
    for got, want in zip(
        initial_weights(width, s, 7, -1.5), build_mlp(width, s, 7, -1.5).get_weights(), strict=True
    ):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("skip", "decay", "schedule", "embedded", "codes"),
    [
        (False, 0.0, "constant", None, ()),
        (True, 0.0, "constant", None, ()),
        (True, 0.5, "constant", None, ()),
        (True, 0.5, "cosine", None, ()),
        (True, 0.0, "constant", EMBEDDED, ()),
        (True, 0.0, "constant", CODED, CODES),
    ],
)
def test_stacked_training_matches_one_network_at_a_time(skip, decay, schedule, embedded, codes):
    """Without dropout both trainers are deterministic: after 40 steps every network's weights
    agree within 1e-5, its stop-half curve within 1e-4 and its test PR-AUC within 0.01 (with
    and without the linear path, with Keras's decoupled weight decay, its cosine decay of the
    learning rate, embeddings: periodic for 3 inputs, learned vectors for a block of 3, and
    category codes the network makes one-hot, one of them embedded)."""
    x, y, x_val, y_val = data(codes=codes)
    x_stop, y_stop, x_test, y_test = x_val[:150], y_val[:150], x_val[150:], y_val[150:]
    s = settings(
        linear_skip=skip,
        weight_decay=decay,
        lr_schedule=schedule,
        embeddings=embedded,
        codes=codes,
    )
    stacked = fit_stacked(networks(x, y, 64), x_stop, y_stop, s)
    for network, (model, info) in zip(networks(x, y, 64), stacked, strict=True):
        reference, ref_info = fit_member(network, x_stop, y_stop, s)
        for a, b in zip(reference.get_weights(), model.get_weights(), strict=True):
            np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-4)
        assert info["best_check"] == ref_info["best_check"]
        for key in ("val_pr_auc", "val_log_likelihood"):
            assert info["history"][key] == pytest.approx(ref_info["history"][key], abs=1e-4)
        assert info["history"]["loss"] == pytest.approx(ref_info["history"]["loss"], rel=1e-4)
        a = average_precision_score(y_test, predict([reference], x_test))
        b = average_precision_score(y_test, predict([model], x_test))
        assert abs(a - b) < 0.01


def test_a_network_trains_the_same_whatever_shares_its_stack():
    """Dropout masks, batches and initial weights come from the network's own seed: trained
    alone or beside four others, it ends with the same weights."""
    x, y, x_val, y_val = data(1)
    s = settings(dropout=0.2, max_checks=3, linear_skip=True)
    alone = fit_stacked(networks(x, y, 64)[3:4], x_val, y_val, s)[0][0]
    together = fit_stacked(networks(x, y, 64), x_val, y_val, s)[3][0]
    for a, b in zip(alone.get_weights(), together.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, atol=1e-6)


def test_each_network_stops_on_its_own_and_keeps_its_best_weights():
    x, y, x_val, y_val = data(2)
    s = settings(dropout=0.1, learning_rate=0.05, steps_per_check=4, max_checks=30, patience=2)
    results = fit_stacked(networks(x, y, 64), x_val, y_val, s)
    assert len({info["checks_run"] for _, info in results}) > 1  # they stopped at different checks
    for model, info in results:
        logged = info["history"]["val_log_likelihood"]
        assert len(logged) == info["checks_run"] <= 30
        assert info["best_check"] == int(np.argmax(logged)) + 1
        assert info["steps"] == 4 * info["checks_run"]
        if info["checks_run"] < 30:  # stopped: `patience` checks without improvement
            assert info["checks_run"] - info["best_check"] == 2
        scores = predict([model], x_val)
        assert platt(scores, y_val)[2] == pytest.approx(max(logged), abs=1e-6)
        kept = info["history"]["val_pr_auc"][info["best_check"] - 1]
        assert average_precision_score(y_val, scores) == pytest.approx(kept, abs=1e-6)
        assert kept > y_val.mean() + 0.2


def test_dropping_stopped_networks_from_the_program_changes_no_network(monkeypatch):
    """Networks that stop at different checks leave the program (with dropout, weight decay and
    category codes): every network ends with the weights, record and curves it gets when the
    stopped ones stay in to the end."""
    from tasks import stacked

    x, y, x_val, y_val = data(2, codes=CODES)
    s = settings(
        dropout=0.1,
        learning_rate=0.05,
        steps_per_check=4,
        max_checks=30,
        patience=2,
        weight_decay=0.1,
        codes=CODES,
        embeddings=CODED,
    )
    subsets = []
    monkeypatch.setattr(stacked._Clock, "worth_dropping", lambda self, stopped, *_: stopped > 0)
    subset = stacked._Program.subset
    monkeypatch.setattr(
        stacked._Program,
        "subset",
        lambda self, slots: subsets.append(len(slots)) or subset(self, slots),
    )
    compacted = fit_stacked(networks(x, y, 64), x_val, y_val, s)
    assert subsets and subsets == sorted(subsets, reverse=True)  # it did drop, step by step
    dropped = len(subsets)
    monkeypatch.setattr(stacked._Clock, "worth_dropping", lambda *_: False)
    whole = fit_stacked(networks(x, y, 64), x_val, y_val, s)
    assert len(subsets) == dropped  # none left the program this time
    for (a, info_a), (b, info_b) in zip(whole, compacted, strict=True):
        for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
            np.testing.assert_allclose(wb, wa, atol=1e-6)
        assert (info_a["checks_run"], info_a["best_check"]) == (
            info_b["checks_run"],
            info_b["best_check"],
        )
        assert info_a["history"]["val_log_likelihood"] == pytest.approx(
            info_b["history"]["val_log_likelihood"], abs=1e-6
        )


@pytest.mark.parametrize(
    ("seconds", "stopped", "to_go", "drop"),
    [
        ([3.0, 1.0, 1.0], 2, 24, True),  # large data: 24 checks of 1 s, two fifths saved
        ([3.0, 1.0, 1.0], 1, 24, False),  # only a fifth stopped: wait for more
        ([3.0, 1.0, 1.0], 2, 3, False),  # nearly done: 1.2 s saved for a 2 s build
        ([1.2, 0.04, 0.04], 4, 63, False),  # small data: 0.9 s saved for a 1.2 s build
        ([3.0], 2, 24, False),  # only the check that built it: no typical time yet
        ([3.0, 1.0, 1.0], 0, 24, False),  # none stopped
    ],
)
def test_stopped_networks_leave_when_what_they_would_cost_pays_for_a_new_program(
    seconds, stopped, to_go, drop
):
    from tasks.stacked import _Clock

    clock = _Clock()
    clock.seconds = seconds
    assert clock.worth_dropping(stopped, 5, to_go) is drop


def test_a_long_program_expects_to_run_on_for_half_its_checks_again_not_only_its_patience():
    """Insurance's stack of five short-lived networks and one long one: with patience at 8
    checks the remaining patience never paid for a smaller program, so the long network trained
    on beside five stopped ones. The program now expects, at least, half as many checks again
    as it has run."""
    from tasks.stacked import _checks_to_go, _Clock, _Stopping

    x, y, _, _ = data()
    s = settings(patience=8, warmup_checks=1)
    stopping = _Stopping(networks(x, y, 64)[:2], s)
    stopping.active[:] = [False, True]
    stopping.watches[1].wait = 2  # 6 checks of patience left
    assert _checks_to_go(stopping, 3) == 6  # early on: its patience
    assert _checks_to_go(stopping, 33) == 17  # after 34 checks: 17 more
    clock = _Clock()
    clock.seconds = [6.0, 1.0, 1.0]  # a 5 s build, 1 s checks
    assert not clock.worth_dropping(5, 6, stopping.least_to_go())
    assert clock.worth_dropping(5, 6, _checks_to_go(stopping, 33))


def test_a_program_that_would_shrink_before_its_last_check_finishes_it_whole(monkeypatch):
    """One check runs ahead, so a smaller program is made one check after it is decided; when
    that decision comes after the second-to-last check there is no check left to shrink for,
    and the run ends with every network trained to the budget (it used to fail on the batches
    it had not drawn)."""
    from tasks import stacked

    x, y, x_val, y_val = data()
    s = settings(max_checks=4, patience=50)
    update = stacked._Stopping.update

    def stop_one_late(self, check, *args):
        update(self, check, *args)
        if check == s.max_checks - 2:
            self.active[0] = False

    monkeypatch.setattr(stacked._Stopping, "update", stop_one_late)
    monkeypatch.setattr(stacked._Clock, "worth_dropping", lambda self, stopped, *_: stopped > 0)
    results = fit_stacked(networks(x, y, 64)[:3], x_val[:150], y_val[:150], s)
    assert [info["checks_run"] for _, info in results] == [3, 4, 4]


@hypothesis_settings(max_examples=25, deadline=None)
@given(
    rate=st.floats(0.0, 0.95),
    seeds=st.lists(st.integers(0, 10_000), min_size=1, max_size=4, unique=True),
    step=st.integers(1, 100_000),
    units=st.integers(1, 70),
)
def test_dropout_masks_drop_each_unit_at_the_rate_and_keep_the_expected_activation(
    rate, seeds, step, units
):
    """The stacked trainer's dropout masks (one random byte per element): every network drops
    a unit with probability `rate` rounded to 1/256, the same in every column (each of a
    32-bit draw's four bytes is used), and scales the kept ones so the expected activation is
    unchanged; a network's masks depend on its seed and the step only, never on the networks
    beside it."""
    import tensorflow as tf

    rows = 4096
    masks = dropout_mask(tf.constant([rows, units]), seeds, 1, tf.constant(step, tf.int64), rate)
    masks = masks.numpy()
    threshold = dropout_threshold(rate)
    used = threshold / MASK_LEVELS
    assert abs(used - rate) <= 0.5 / MASK_LEVELS
    scale = MASK_LEVELS / (MASK_LEVELS - threshold)
    assert masks.shape == (len(seeds), rows, units)
    assert set(np.unique(masks)) <= {0.0, np.float32(scale)}
    kept = masks > 0
    n = rows * units
    sigma = np.sqrt(used * (1 - used) / n)
    for network in kept:  # the drop rate, within 5 standard errors
        assert abs(1 - network.mean() - used) <= 5 * sigma + 1e-9
    per_column = kept.mean(axis=(0, 1))  # no column is favoured
    column_sigma = np.sqrt(used * (1 - used) / (rows * len(seeds)))
    assert np.all(np.abs(1 - per_column - used) <= 6 * column_sigma + 1e-9)
    alone = dropout_mask(
        tf.constant([rows, units]), seeds[-1:], 1, tf.constant(step, tf.int64), rate
    )
    np.testing.assert_array_equal(alone.numpy()[0], masks[-1])
    if threshold > 0:
        later = dropout_mask(
            tf.constant([rows, units]), seeds[:1], 1, tf.constant(step + 1, tf.int64), rate
        )
        assert not np.array_equal(later.numpy()[0], masks[0])
        other_layer = dropout_mask(
            tf.constant([rows, units]), seeds[:1], 0, tf.constant(step, tf.int64), rate
        )
        assert not np.array_equal(other_layer.numpy()[0], masks[0])
