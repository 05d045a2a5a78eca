"""The batch stream the models train on, the automatic batch size and the early-stopping score."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from tasks.calibration import platt
from tasks.embeddings import CATEGORY_DIM, PERIODIC_DIM
from tasks.model import (
    BatchStream,
    Network,
    TrainSettings,
    auto_batch_size,
    build_mlp,
    fit_member,
    predict,
    steps_per_execution,
)


def rows_of(batch_x: np.ndarray) -> list[int]:
    return batch_x[:, 0].astype(int).tolist()


def stream(n: int, positives: int, batch: int, seed: int, balanced: bool):
    x = np.arange(n, dtype=np.float32).reshape(-1, 1)  # the row number is the feature
    y = np.zeros(n, dtype=np.int64)
    y[:positives] = 1
    return BatchStream(x, y, batch, seed, balanced)()


def test_shuffled_stream_visits_every_row_once_per_pass_then_reshuffles():
    batches = list(itertools.islice(stream(100, 10, 25, seed=3, balanced=False), 8))
    first_pass = sum((rows_of(x) for x, _ in batches[:4]), [])
    second_pass = sum((rows_of(x) for x, _ in batches[4:]), [])
    assert sorted(first_pass) == sorted(second_pass) == list(range(100))
    assert first_pass != second_pass  # a new permutation each pass
    x, y = batches[0]
    assert y.dtype == np.float32 and (y == (x[:, 0] < 10)).all()  # labels travel with their rows


def test_a_batch_spans_the_seam_between_passes():
    batches = list(itertools.islice(stream(10, 3, 4, seed=0, balanced=False), 5))  # 20 rows
    assert all(len(x) == 4 for x, _ in batches)
    seen = sum((rows_of(x) for x, _ in batches), [])
    assert sorted(seen) == sorted(list(range(10)) * 2)


def test_balanced_stream_is_exactly_half_positives_and_cycles_the_rare_class():
    batches = list(itertools.islice(stream(1000, 30, 64, seed=1, balanced=True), 6))
    for _, y in batches:
        assert len(y) == 64 and y.sum() == 32
    positives = sum((rows_of(x[y == 1]) for x, y in batches), [])
    counts = np.bincount(positives, minlength=30)
    assert counts.min() >= 6 and counts.max() <= 7  # 192 draws from 30 rows: whole passes


def test_balanced_stream_with_fewer_positives_than_half_a_batch_repeats_them():
    x, y = next(stream(500, 5, 64, seed=1, balanced=True))
    assert y.sum() == 32 and set(rows_of(x[y == 1])) == set(range(5))


def test_streams_are_seeded():
    def first(seed):
        return [rows_of(x) for x, _ in itertools.islice(stream(200, 20, 32, seed, True), 3)]

    assert first(7) == first(7) and first(7) != first(8)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [(10, 256), (341, 256), (60_000, 512), (227_576, 2048), (3_000_000, 4096)],
)
def test_auto_batch_size_scales_with_training_rows(rows, expected):
    assert auto_batch_size(rows) == expected


def test_early_stopping_keeps_the_weights_with_the_best_stop_half_log_likelihood():
    """The per-check scores are real and the criterion is the recalibrated log-likelihood: after
    restoring the kept weights, the model's stop-half log-likelihood (after tasks.calibration's
    `platt`) is the best logged value, and its average precision the value logged beside it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4)).astype(np.float32)
    y = (x[:, 0] + 0.8 * rng.normal(size=400) > 1.2).astype(np.int64)
    x_stop, y_stop = x[300:], y[300:]
    settings = TrainSettings(
        hidden=(8,),
        dropout=0.0,
        learning_rate=0.01,
        batch_size=64,
        steps_per_check=5,
        max_checks=8,
        patience=3,
    )
    network = Network(BatchStream(x[:300], y[:300], 64, 1, False), 1, -1.0, "bce", 0.5, None)
    model, info = fit_member(network, x_stop, y_stop, settings)
    logged = info["history"]["val_log_likelihood"]
    pr_auc = info["history"]["val_pr_auc"]
    assert len(logged) == len(pr_auc) == info["checks_run"]
    assert info["best_check"] == int(np.argmax(logged)) + 1
    assert info["steps"] == 5 * info["checks_run"] and info["best_step"] == 5 * info["best_check"]
    scores = predict([model], x_stop)
    assert platt(scores, y_stop)[2] == pytest.approx(max(logged), abs=1e-6)
    kept = pr_auc[info["best_check"] - 1]
    assert average_precision_score(y_stop, scores) == pytest.approx(kept, abs=1e-6)
    assert kept > y_stop.mean() + 0.2  # it learned something


@pytest.mark.parametrize(
    ("steps", "expected"), [(1, 1), (5, 5), (7, 7), (8, 8), (112, 8), (113, 1), (30, 6), (9, 3)]
)
def test_steps_per_execution_divides_the_epoch(steps, expected):
    assert steps_per_execution(steps) == expected


def test_several_steps_per_execution_train_exactly_like_one(monkeypatch):
    """Running 8 steps per call into Keras's compiled loop changes nothing but speed: the same
    epochs, the same logged scores, the same weights as one step per call."""
    import tasks.model as model_module

    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 5)).astype(np.float32)
    y = (x[:, 1] + rng.normal(size=600) > 1.0).astype(np.int64)
    settings = TrainSettings(
        hidden=(8, 4),
        dropout=0.1,
        learning_rate=0.01,
        batch_size=32,
        steps_per_check=16,
        max_checks=4,
        patience=10,
    )

    def train(limit: int):
        monkeypatch.setattr(model_module, "MAX_STEPS_PER_EXECUTION", limit)
        stream = BatchStream(x[:500], y[:500], 32, 3, False)
        network = Network(stream, 3, -1.0, "bce", 0.5, {0: 1.0, 1: 3.0})
        return fit_member(network, x[500:], y[500:], settings)

    one_model, one_info = train(1)
    many_model, many_info = train(8)
    assert many_model.steps_per_execution == 8 and one_model.steps_per_execution == 1
    assert many_info["history"]["val_pr_auc"] == pytest.approx(one_info["history"]["val_pr_auc"])
    for a, b in zip(one_model.get_weights(), many_model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("numeric", "category", "columns", "embedded", "blocks"),
    [
        ("periodic", "one-hot", 7, 7, ()),
        ("none", "one-hot", 7, 0, ()),
        ("none", "embedding", 7, 0, ((9, 17),)),  # the 2-level block stays one-hot
        ("periodic", "embedding", 256, 256, ((258, 17),)),
        ("periodic", "one-hot", 257, 0, ()),
    ],
)
def test_embeddings_cover_the_inputs_they_are_asked_to(
    numeric, category, columns, embedded, blocks, caplog
):
    """Every numeric input (they come first) up to the limit, and every one-hot block of at
    least 17 levels; on data too wide to embed no numerics, saying so. The network takes the
    inputs and its first layer sees the embedded width."""
    from types import SimpleNamespace

    from tasks.config import TrainConfig
    from tasks.embeddings import MAX_EMBEDDED_NUMERIC
    from tasks.model import network_inputs
    from tasks.train import Part, neural_settings

    rng = np.random.default_rng(0)
    values = rng.normal(size=(300, columns)).astype(np.float32)
    codes = np.stack([rng.integers(0, 2, 300), rng.integers(0, 17, 300)], axis=1)
    y = (rng.random(300) < 0.2).astype(np.int64)
    inputs = network_inputs(values, codes)
    assert inputs.shape[1] == columns + 2  # one input per categorical: its code
    prep = SimpleNamespace(cardinalities=[2, 17])  # the Preprocessing's one-hot block widths
    config = TrainConfig(numeric_embedding=numeric, category_embedding=category)
    settings = neural_settings(Part(values, codes, y, np.arange(300), inputs), 100, config, prep)
    e = settings.embeddings
    assert (e.numeric, e.categories) == (embedded, blocks) if e else not (embedded or blocks)
    assert (f"more than {MAX_EMBEDDED_NUMERIC}" in caplog.text) == (columns > 256)
    model = build_mlp(inputs.shape[1], settings, 3, 0.0)
    assert model(inputs[:5]).shape == (5, 1)
    width = model.get_layer("hidden_0").kernel.shape[0]
    expected = columns + 2 + 17 + embedded * (PERIODIC_DIM - 1)
    assert width == expected + sum(CATEGORY_DIM - levels for _, levels in blocks)


def test_a_level_s_vector_is_its_row_of_the_table_and_unseen_levels_get_zeros():
    """A categorical embedding is the one-hot code times its table: a level's row, and zeros
    for an unseen level (an all-zero code), as the one-hot input gave before."""
    import tensorflow as tf

    from tasks.embeddings import Embeddings

    e = Embeddings(width=20, numeric=0, categories=((2, 18),))
    tables = e.initial(4)
    x = np.zeros((3, 20), np.float32)
    x[:, :2] = [[1.5, -2.0]] * 3
    x[0, 2 + 5], x[1, 2 + 17] = 1.0, 1.0  # levels 5 and 17; row 2 unseen
    out = e.apply(tf.constant(x)[None], [tf.constant(t)[None] for t in tables])[0].numpy()
    np.testing.assert_allclose(out[0, :CATEGORY_DIM], tables[0][5])
    np.testing.assert_allclose(out[1, :CATEGORY_DIM], tables[0][17])
    np.testing.assert_array_equal(out[2, :CATEGORY_DIM], 0.0)
    np.testing.assert_array_equal(out[:, CATEGORY_DIM:], x[:, :2])  # numerics pass unchanged


def test_the_cosine_schedule_decays_to_its_floor_over_the_step_budget():
    import keras

    from tasks.model import COSINE_FLOOR, learning_rate_schedule

    s = TrainSettings(
        hidden=(4,),
        dropout=0.0,
        learning_rate=0.01,
        batch_size=32,
        steps_per_check=10,
        max_checks=20,
        patience=3,
        lr_schedule="cosine",
    )
    schedule = learning_rate_schedule(s)
    assert isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule)
    rates = [float(schedule(step)) for step in (0, 100, 200, 400)]
    assert rates[0] == pytest.approx(0.01)
    assert rates[1] == pytest.approx(0.01 * (COSINE_FLOOR + (1 - COSINE_FLOOR) / 2))
    assert rates[2] == rates[3] == pytest.approx(0.01 * COSINE_FLOOR)
    constant = TrainSettings(**{**s.__dict__, "lr_schedule": "constant"})
    assert learning_rate_schedule(constant) == 0.01


def test_numeric_embeddings_by_default_only_between_enough_and_many_training_rows():
    from tasks.config import TrainConfig
    from tasks.embeddings import PERIODIC_MAX_ROWS, PERIODIC_MIN_ROWS, periodic_wanted

    assert TrainConfig().numeric_embedding == "auto"
    assert not periodic_wanted("auto", PERIODIC_MIN_ROWS - 1)
    assert periodic_wanted("auto", PERIODIC_MIN_ROWS)
    assert periodic_wanted("auto", PERIODIC_MAX_ROWS)
    assert not periodic_wanted("auto", PERIODIC_MAX_ROWS + 1)  # large data: speed first
    assert periodic_wanted("periodic", 10) and not periodic_wanted("none", 10**6)


@pytest.mark.parametrize(
    ("rows", "given", "expected"),
    [(300, None, 5.0), (2500, None, 0.0), (300, 0.0, 0.0), (2500, 1.0, 1.0)],
)
def test_weight_decay_defaults_to_strong_on_small_data_and_a_given_value_wins(
    rows, given, expected
):
    from types import SimpleNamespace

    from tasks.config import TrainConfig
    from tasks.train import Part, neural_settings

    rng = np.random.default_rng(0)
    values = rng.normal(size=(rows, 3)).astype(np.float32)
    y = (rng.random(rows) < 0.2).astype(np.int64)
    part = Part(values, np.zeros((rows, 0), np.int32), y, np.arange(rows), values)
    prep = SimpleNamespace(cardinalities=[])
    settings = neural_settings(part, 100, TrainConfig(weight_decay=given), prep)
    assert settings.weight_decay == expected
