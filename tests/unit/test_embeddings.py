"""The stacked trainer's input path from category codes (`Embeddings.apply` with `codes`,
`linear_from_codes`) against the Keras network's path (`expand_codes`, then the embeddings on the
one-hot layout, the linear path's product): the same function on any layout of numerics and
code columns, embedded or not, with unseen levels, for one network or a stack."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks import embeddings
from tasks.embeddings import expand_codes, expanded_width, linear_from_codes


@st.composite
def layouts(draw):
    """Numerics, code columns' levels, whether numerics and categoricals are embedded, how many
    stacked networks, and whether the rows are shared by the stack (a leading axis of 1, as the
    stop half) or each network's own (as its batches)."""
    numeric = draw(st.integers(0, 4))
    codes = tuple(draw(st.lists(st.integers(1, 40), min_size=0 if numeric else 1, max_size=4)))
    return {
        "numeric": numeric,
        "codes": codes,
        "periodic": draw(st.booleans()) and numeric > 0,
        "categorical": draw(st.booleans()),
        "stacks": draw(st.integers(1, 3)),
        "shared": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


def coded_rows(layout, rows: int = 37) -> np.ndarray:
    """(1 or S, rows, numerics + codes): normal numerics, codes from -1 (unseen) to levels - 1."""
    rng = np.random.default_rng(layout["seed"])
    lead = 1 if layout["shared"] else layout["stacks"]
    numerics = rng.normal(size=(lead, rows, layout["numeric"]))
    codes = [rng.integers(-1, levels, (lead, rows, 1)) for levels in layout["codes"]]
    return np.concatenate([numerics, *codes], axis=-1).astype(np.float32)


def stacked(weights: list[list[np.ndarray]]) -> list[tf.Tensor]:
    return [tf.constant(np.stack(layer)) for layer in zip(*weights, strict=True)]


@settings(max_examples=60, deadline=None)
@given(layouts())
def test_embedding_from_codes_equals_embedding_of_the_one_hot_inputs(layout):
    codes, numeric = layout["codes"], layout["numeric"]
    chosen = embeddings.choose(
        expanded_width(numeric + len(codes), codes),
        numeric,
        list(codes),
        layout["periodic"],
        layout["categorical"],
    )
    if chosen is None:  # nothing embedded: the network sees the one-hot inputs as they are
        return
    x = coded_rows(layout)
    weights = stacked([chosen.initial(layout["seed"] + s) for s in range(layout["stacks"])])
    want = chosen.apply(expand_codes(tf.constant(x), codes), weights)
    got = chosen.apply(tf.constant(x), weights, codes)
    assert got.shape == (layout["stacks"], x.shape[1], chosen.out_width)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(layouts())
def test_the_linear_path_from_codes_equals_the_product_with_the_one_hot_inputs(layout):
    codes = layout["codes"]
    x = coded_rows(layout)
    width = expanded_width(x.shape[-1], codes)
    rng = np.random.default_rng(layout["seed"] + 1)
    kernel = tf.constant(rng.normal(size=(layout["stacks"], width, 1)).astype(np.float32))
    want = tf.linalg.matmul(expand_codes(tf.constant(x), codes), kernel)[..., 0]
    got = linear_from_codes(tf.constant(x), kernel, codes)
    assert got.shape == (layout["stacks"], x.shape[1])
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def test_an_unseen_level_gets_no_vector_and_no_linear_weight():
    """A code of -1 (a level training never saw) contributes nothing, as its all-zero one-hot
    block does; a seen level contributes exactly its table row and its kernel row."""
    chosen = embeddings.Embeddings(width=20, numeric=0, categories=((0, 20),))
    table = np.arange(20 * 8, dtype=np.float32).reshape(1, 20, 8)
    x = tf.constant([[[-1.0], [3.0]]])
    got = chosen.apply(x, [tf.constant(table)], (20,)).numpy()
    np.testing.assert_array_equal(got[0, 0], np.zeros(8))
    np.testing.assert_array_equal(got[0, 1], table[0, 3])
    kernel = tf.constant(np.arange(20, dtype=np.float32).reshape(1, 20, 1) + 1)
    np.testing.assert_array_equal(linear_from_codes(x, kernel, (20,)).numpy(), [[0.0, 4.0]])
