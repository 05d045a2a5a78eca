"""The standalone model's layers compute what the training path computes: property tests on
random fitted preprocessing (knots of every count, columns with and without knots, imputed and
clipped values, values beyond the training range) and every calibration method."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.calibration import Calibration
from tasks.features import Preprocessing, fit_quantiles


def preprocessing(numeric: dict[str, np.ndarray], rng: np.random.Generator, knots: list[bool]):
    frame = pd.DataFrame(numeric)
    columns = list(frame.columns)
    shaped = frame[[c for c, k in zip(columns, knots, strict=True) if k]]
    return Preprocessing(
        numeric=columns,
        categorical=[],
        impute="median",
        impute_values={c: float(frame[c].median()) for c in columns[::2]},
        clip_bounds={
            c: (float(frame[c].quantile(0.05)), float(frame[c].quantile(0.95)))
            for c in columns[1::2]
        },
        means={c: float(rng.normal()) for c in columns},
        scales={c: float(rng.uniform(0.5, 2)) for c in columns},
        categories={},
        quantiles=fit_quantiles(shaped),
        dropped_constant=[],
        positive_label="1",
        negative_label="0",
        target="y",
        id=None,
    )


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    rows=st.integers(1, 300),
    columns=st.integers(1, 6),
)
def test_numeric_preprocessing_matches_the_training_transform(seed, rows, columns):
    from tasks.layers import NumericPreprocessing

    rng = np.random.default_rng(seed)
    train = {
        f"c{j}": rng.choice([rng.lognormal(size=rows), rng.integers(0, 4, rows).astype(float)])
        for j in range(columns)
    }
    knots = [bool(k) for k in rng.integers(0, 2, columns)]
    prep = preprocessing(train, rng, knots)
    new = pd.DataFrame(
        {
            c: np.concatenate([v * rng.uniform(0.5, 3), [-1e6, 1e6, np.nan]])
            for c, v in train.items()
        }
    )
    imputed = [c for c in prep.numeric if c in prep.impute_values]
    new.loc[new.index[-1], [c for c in prep.numeric if c not in imputed]] = (
        0.0  # NaN only where imputed
    )
    expected = prep.transform(new)[prep.numeric].to_numpy()
    layer = NumericPreprocessing.fitted(prep)
    got = np.asarray(layer(new[prep.numeric].to_numpy(np.float64)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_category_code_is_the_level_s_position_unseen_is_minus_one_and_missing_imputed():
    from tasks.layers import CategoryCode

    x = np.array([["a"], ["c"], ["zz"], [""], ["b"]])
    plain = np.asarray(CategoryCode(["a", "b", "c"])(x))
    np.testing.assert_array_equal(plain, [[0], [2], [-1], [-1], [1]])
    imputed = np.asarray(CategoryCode(["a", "b", "c"], missing_as="b")(x))
    np.testing.assert_array_equal(imputed[:, 0], [0, 2, -1, 1, 1])


def test_code_one_hot_makes_the_code_columns_one_hot_blocks_as_the_old_inputs_were():
    """The network's first layer turns (numerics, codes) into the one-hot layout networks took
    before session 14: the same matrix the inputs were then built as, unseen levels all zero."""
    from tasks.layers import CodeOneHot

    rng = np.random.default_rng(3)
    numeric = rng.normal(size=(50, 2)).astype(np.float32)
    codes = np.stack([rng.integers(-1, 3, 50), rng.integers(-1, 20, 50)], axis=1)
    old = np.concatenate(
        [numeric]
        + [(codes[:, j : j + 1] == np.arange(k)).astype(np.float32) for j, k in enumerate((3, 20))],
        axis=1,
    )
    x = np.concatenate([numeric, codes.astype(np.float32)], axis=1)
    np.testing.assert_array_equal(np.asarray(CodeOneHot([3, 20])(x)), old)


def test_category_one_hot_unseen_is_zeros_and_missing_takes_the_imputed_level():
    from tasks.layers import CategoryOneHot

    x = np.array([["a"], ["c"], ["zz"], [""]])
    plain = np.asarray(CategoryOneHot(["a", "b", "c"])(x))
    np.testing.assert_array_equal(plain, [[1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]])
    imputed = np.asarray(CategoryOneHot(["a", "b", "c"], missing_as="b")(x))
    np.testing.assert_array_equal(imputed[3], [0, 1, 0])


@pytest.mark.parametrize(
    "calibration",
    [
        Calibration(method="identity"),
        Calibration(method="prior", trained_prior=0.5, true_prior=0.03),
        Calibration(method="focal", alpha=0.25, gamma=2.0),
        Calibration(method="platt", slope=0.8, intercept=-1.2, fitted_on="stop half"),
    ],
    ids=lambda c: c.method,
)
def test_calibrate_matches_the_numpy_calibration(calibration):
    from tasks.layers import Calibrate

    rng = np.random.default_rng(0)
    members = [
        np.concatenate([rng.uniform(size=200), [0.0, 1.0, 1e-9]]).astype(np.float32)
        for _ in range(3)
    ]
    expected = calibration.apply([m.astype(np.float64) for m in members])
    got = np.asarray(Calibrate(calibration.model_dump())([m.reshape(-1, 1) for m in members]))
    np.testing.assert_allclose(got.ravel(), expected, rtol=1e-5, atol=1e-6)


def test_input_names_are_valid_signature_names_and_unique():
    import re

    from tasks.standalone import input_names

    columns = ["concave points_mean", "concave_points_mean", "_x", "a/b", "Ünïcode", "A", "a"]
    names = input_names(columns)
    assert names["concave points_mean"] == "concave_points_mean"
    assert len({n.lower() for n in names.values()}) == len(columns)
    assert all(re.fullmatch(r"[A-Za-z0-9.][A-Za-z0-9_.\-/]*", n) for n in names.values())


def test_wide_data_gets_one_numeric_matrix_input_and_the_same_scores():
    """Past MAX_COLUMN_INPUTS numerics, one (n, columns) input replaces a input per column (a
    5,000-column model took a minute to export); the scores are the training path's."""
    import keras

    from tasks import standalone

    rng = np.random.default_rng(1)
    columns = standalone.MAX_COLUMN_INPUTS + 44
    train = {f"c{j}": rng.lognormal(size=120) for j in range(columns)}
    prep = preprocessing(train, rng, [True] * columns)
    inputs = keras.Input((columns,))
    member = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(inputs))
    model = standalone.build(prep, [member], Calibration(method="identity"))
    assert list(model.input) == ["numerics"]
    frame = pd.DataFrame(train) * 1.5
    got = standalone.score(model, standalone.raw_inputs(frame, prep))["probability"]
    expected = np.asarray(member(prep.transform(frame)[prep.numeric].to_numpy(np.float32)))
    np.testing.assert_allclose(got, expected.ravel(), rtol=1e-5, atol=1e-6)
    facts = standalone.signature_facts(prep)
    assert facts["inputs"] == {} and facts["numeric_matrix"]["columns"] == prep.numeric


def test_networks_exported_on_one_hot_inputs_still_build_and_score_as_coded_ones():
    """Networks saved before session 14 took one-hot blocks; a model directory holding only
    such members (no model.keras) is rebuilt around them with one-hot lookups, and scores
    exactly as the same weights behind the code layout now trained."""
    from tasks import standalone
    from tasks.model import TrainSettings, build_mlp

    rng = np.random.default_rng(2)
    train = {"a": rng.normal(size=200), "b": rng.lognormal(size=200)}
    prep = preprocessing(train, rng, [True, False]).model_copy(
        update={
            "categorical": ["colour"],
            "categories": {"colour": ["blue", "green", "red"]},
            "impute_values": {"colour": "green"},
        }
    )
    s = TrainSettings((8,), 0.0, 0.01, 32, 4, 2, 1, linear_skip=True)
    old = build_mlp(2 + 3, s, 5, -1.0)  # 2 numerics + a 3-level one-hot block
    new = build_mlp(2 + 1, dataclasses.replace(s, codes=(3,)), 5, -1.0)  # 2 numerics + a code
    for a, b in zip(old.get_weights(), new.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # the same starting weights, whatever the layout
    trained = [w + rng.normal(0, 0.3, w.shape).astype(np.float32) for w in old.get_weights()]
    old.set_weights(trained)
    new.set_weights(trained)
    colour = rng.choice(np.array(["blue", "green", "red", "purple", None], dtype=object), 200)
    inputs = standalone.raw_inputs(pd.DataFrame({**train, "colour": colour}), prep)
    scores = [
        standalone.score(standalone.build(prep, [m], Calibration(method="identity")), inputs)
        for m in (old, new)
    ]
    np.testing.assert_allclose(scores[0]["probability"], scores[1]["probability"], rtol=1e-6)
    assert np.ptp(scores[1]["probability"]) > 0.05  # the weights matter
