"""The network's input embeddings, as one computation for both trainers: `Embeddings.apply` runs
on S stacked networks in `tasks.stacked` and on one network in the Keras layer
`tasks.layers.InputEmbedding` (a leading axis of 1), so both start from, and compute, the same.

Numerics, "PLR" of Gorishniy et al. (2022), "On Embeddings for Numerical Features in Tabular Deep
Learning": each numeric input x_j -> ReLU(W_j [cos(2 pi c_j x_j), sin(2 pi c_j x_j)] + b_j), with
K learned frequencies c_j and a d-wide linear map per column. The inputs are already normal
scores (tasks.features), so frequencies start small: a smooth, nearly linear start.
Categoricals with many levels: the column's one-hot block times a (levels, d) matrix, i.e. a
learned d-wide vector per level (Guo & Berkhahn 2016), instead of one input per level.

A network's input row carries each categorical as one integer code (`tasks.model.network_inputs`:
numerics, then codes as float32, -1 for a level training never saw); `expand_codes`, the first
layer of a Keras network, turns the codes into one-hot blocks batch by batch. So the training
arrays, synthesised rows and stacked pools hold one column per categorical, not one per level,
while the embeddings below are defined on the one-hot layout. The stacked trainer computes the
same from the codes themselves (`Embeddings.apply` with `codes`, `linear_from_codes`): an
embedded column's vector is looked up, and only the small blocks are ever made one-hot.

The size rules of the defaults live here too: which training sizes get numeric embeddings, and
the strong weight decay of the small-data network that goes without them (docs/quality.md)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PERIODIC_FREQUENCIES = 16
PERIODIC_DIM = 8
PERIODIC_SIGMA = 0.1
CATEGORY_DIM = 8
CATEGORY_MIN_LEVELS = 2 * CATEGORY_DIM + 1  # fewer levels: the one-hot code is small enough
MAX_EMBEDDED_NUMERIC = 256  # wider data: an embedding per column would dwarf the network
# `auto` embeds numerics from PERIODIC_MIN_ROWS training rows: below it they cost small sets up
# to 0.11 of the PR-AUC ratio, above it they gained up to 0.09 (docs/quality.md). Up to
# PERIODIC_MAX_ROWS: beyond it batches grow (tasks.model.auto_batch_size), the step's arithmetic
# sets the training time and the embeddings' sines and cosines made a step 3.8x as long (6
# networks, 2,048-row batches: 20 -> 76 ms; docs/performance.md).
PERIODIC_MIN_ROWS = 2000
PERIODIC_MAX_ROWS = 50_000


SMALL_DATA_WEIGHT_DECAY = 5.0  # below PERIODIC_MIN_ROWS, unless --weight-decay says otherwise


def default_weight_decay(rows: int) -> float:
    """The weight decay of a network on `rows` training rows when none is given: strong below
    PERIODIC_MIN_ROWS (the network without embeddings: +0.028 and +0.013 on the two small sets
    it changed), none above (5 cost the embedded networks 0.02-0.06; docs/quality.md)."""
    return SMALL_DATA_WEIGHT_DECAY if rows < PERIODIC_MIN_ROWS else 0.0


def periodic_wanted(choice: str, rows: int) -> bool:
    """Whether the numeric embedding setting (auto, none, periodic) embeds on `rows` rows."""
    automatic = PERIODIC_MIN_ROWS <= rows <= PERIODIC_MAX_ROWS
    return choice == "periodic" or (choice == "auto" and automatic)


def expanded_width(width: int, codes: tuple[int, ...]) -> int:
    """The width of `width` inputs once their last len(codes) code columns are one-hot blocks of
    `codes` levels each."""
    return width - len(codes) + sum(codes)


def code_columns(x: Any, count: int) -> Any:
    """The last `count` inputs of `x` (category codes stored as float32, exact below 2**24
    levels) as int32 codes."""
    import tensorflow as tf

    return tf.cast(tf.round(x[..., x.shape[-1] - count :]), tf.int32)


def expand_codes(x: Any, codes: tuple[int, ...]) -> Any:
    """(..., numerics + codes) -> (..., numerics + one one-hot block per code column): the code
    columns are the last len(codes) inputs, column j of `codes[j]` levels; a code outside
    0..levels-1 (an unseen level, -1) becomes all zeros."""
    if not codes:
        return x
    import tensorflow as tf

    n, index = x.shape[-1] - len(codes), code_columns(x, len(codes))
    pieces = [x[..., :n]]
    for j, levels in enumerate(codes):
        pieces.append(tf.one_hot(index[..., j], levels, dtype=x.dtype))
    return tf.concat(pieces, axis=-1)


def choose(
    width: int, numeric: int, cardinalities: list[int], periodic: bool, categorical: bool
) -> Embeddings | None:
    """The embeddings of inputs laid out as `expand_codes` lays them out (`numeric` columns,
    then one one-hot block per categorical column; `width` counts them all): every numeric column
    when `periodic` (none beyond MAX_EMBEDDED_NUMERIC columns), and when `categorical` every
    column of at least CATEGORY_MIN_LEVELS levels."""
    blocks, start = [], numeric
    for levels in cardinalities:
        if categorical and levels >= CATEGORY_MIN_LEVELS:
            blocks.append((start, levels))
        start += levels
    embedded = numeric if periodic and numeric <= MAX_EMBEDDED_NUMERIC else 0
    if periodic and numeric > MAX_EMBEDDED_NUMERIC:
        log.warning(
            "%d numeric columns: more than %d, so no numeric embeddings",
            numeric,
            MAX_EMBEDDED_NUMERIC,
        )
    chosen = Embeddings(width, embedded, tuple(blocks))
    return chosen if chosen else None


@dataclass(frozen=True)
class Embeddings:
    """Which network inputs are embedded: the first `numeric` inputs (periodic; 0: none) and
    the one-hot blocks at `categories` ((first input, levels) each). `width` is all inputs."""

    width: int
    numeric: int = 0
    categories: tuple[tuple[int, int], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.numeric or self.categories)

    @property
    def tables(self) -> int:
        """How many weight arrays the embeddings have (the first of a network's weights)."""
        return 3 * bool(self.numeric) + len(self.categories)

    @property
    def passed(self) -> list[int]:
        """The inputs that pass unchanged (after the embedded ones, in input order)."""
        taken = set(range(self.numeric))
        for start, levels in self.categories:
            taken.update(range(start, start + levels))
        return [i for i in range(self.width) if i not in taken]

    @property
    def out_width(self) -> int:
        embedded = self.numeric * PERIODIC_DIM + len(self.categories) * CATEGORY_DIM
        return embedded + len(self.passed)

    def initial(self, seed: int) -> list[np.ndarray]:
        """The starting weights, from the network's seed only: periodic frequencies (F, K)
        from a normal(0, sigma) cut at 3 sigma, its linear maps (F, 2K, d) and biases (F, d)
        uniform within 1/sqrt(2K) (PyTorch's Linear default, as the paper's code); each level's
        vector from a normal of standard deviation 1/sqrt(d), so it has about the length of a
        one-hot code."""
        rng = np.random.default_rng([seed, 7919])
        weights = []
        if self.numeric:
            k, d, sigma = PERIODIC_FREQUENCIES, PERIODIC_DIM, PERIODIC_SIGMA
            frequencies = np.clip(rng.normal(0.0, sigma, (self.numeric, k)), -3 * sigma, 3 * sigma)
            bound = 1 / np.sqrt(2 * k)
            kernel = rng.uniform(-bound, bound, (self.numeric, 2 * k, d))
            weights += [frequencies, kernel, rng.uniform(-bound, bound, (self.numeric, d))]
        for _, levels in self.categories:
            weights.append(rng.normal(0.0, 1 / np.sqrt(CATEGORY_DIM), (levels, CATEGORY_DIM)))
        return [w.astype(np.float32) for w in weights]

    def apply(self, x: Any, weights: list[Any], codes: tuple[int, ...] | None = None) -> Any:
        """Stacked networks: x (S or 1, rows, inputs), weights with a leading S -> (S, rows,
        out_width): periodic numerics, embedded categoricals, then the inputs passed on.

        `x` holds the expanded inputs (one one-hot block per categorical, `expand_codes`), as
        the Keras layer sees them; or, given `codes` (the levels of each code column, when
        there are any), the numerics then one code per categorical, as the stacked trainer
        keeps them: the same result, but an embedded column's vector is looked up by its code
        instead of built as a one-hot block and multiplied (on insurance, building, slicing
        and multiplying those blocks took ~40% of a training step's op time;
        docs/performance.md)."""
        import tensorflow as tf

        stacks, rows = tf.shape(weights[0])[0], tf.shape(x)[1]
        pieces, w = [], list(weights)
        if self.numeric:
            pieces.append(_periodic(x[..., : self.numeric], w[:3], stacks, rows))
            w = w[3:]
        if not codes:  # no code columns: the inputs are the expanded layout already
            for (start, levels), table in zip(self.categories, w, strict=True):
                pieces.append(tf.linalg.matmul(x[..., start : start + levels], table))
            passed = [tf.gather(x, self.passed, axis=-1)] if self.passed else []
        else:
            embedded, passed = self._from_codes(x, w, codes, stacks, rows)
            pieces += embedded
        pieces += passed
        pieces = [tf.broadcast_to(p, tf.stack([stacks, rows, tf.shape(p)[2]])) for p in pieces]
        return tf.concat(pieces, axis=-1)

    def _from_codes(
        self, x: Any, tables: list[Any], codes: tuple[int, ...], stacks: Any, rows: Any
    ) -> tuple[list[Any], list[Any]]:
        """The embedded categoricals' vectors and the passed inputs (the numerics unless they
        are embedded, then the other categoricals' one-hot blocks), from coded inputs."""
        import tensorflow as tf

        numeric = x.shape[-1] - len(codes)
        embedded_at = {start for start, _ in self.categories}
        lookups: list[Any] = []
        passed = [x[..., :numeric]] if numeric and not self.numeric else []
        tables, coded = iter(tables), code_columns(x, len(codes))
        for j, (start, levels) in enumerate(code_blocks(numeric, codes)):
            code = coded[..., j]
            if start in embedded_at:
                code = tf.broadcast_to(code, tf.stack([stacks, rows]))
                lookups.append(_lookup(next(tables), code, levels))
            else:
                passed.append(tf.one_hot(code, levels, dtype=x.dtype))
        return lookups, passed


def code_blocks(numeric: int, codes: tuple[int, ...]) -> list[tuple[int, int]]:
    """(first expanded input, levels) of each code column's one-hot block (`expand_codes`)."""
    starts = numeric + np.cumsum((0, *codes), dtype=np.int64)
    return [(int(start), int(levels)) for start, levels in zip(starts, codes, strict=False)]


def _lookup(table: Any, code: Any, levels: int) -> Any:
    """table (S, levels, d), code (S, rows) -> (S, rows, d): each row's level vector, zeros for
    a code outside 0..levels-1 (an unseen level), as the one-hot product gives."""
    import tensorflow as tf

    valid = (code >= 0) & (code < levels)
    found = tf.gather(table, tf.where(valid, code, 0), batch_dims=1)
    return found * tf.cast(valid, table.dtype)[..., None]


def _periodic(x: Any, weights: list[Any], stacks: Any, rows: Any) -> Any:
    """x (S or 1, rows, F) numerics, weights (frequencies, kernel, bias) with a leading S ->
    (S, rows, F * d): each column's periodic embedding, side by side."""
    import tensorflow as tf

    frequencies, kernel, bias = weights
    angles = (2 * np.pi) * x[..., None] * frequencies[:, None]
    periodic = tf.concat([tf.cos(angles), tf.sin(angles)], axis=-1)  # (S, rows, F, 2K)
    embedded = tf.nn.relu(tf.einsum("sbfk,sfkd->sbfd", periodic, kernel) + bias[:, None])
    return tf.reshape(embedded, tf.stack([stacks, rows, -1]))


def linear_from_codes(x: Any, kernel: Any, codes: tuple[int, ...]) -> Any:
    """x (S or 1, rows, numerics + codes), kernel (S, expanded width, 1) -> (S, rows): the
    product of the expanded inputs (`expand_codes`) with `kernel` (the linear skip path),
    without building them: the numerics' product plus each code's kernel row (none for an
    unseen level). A one-output product over ~200 one-hot columns was the single most
    expensive op of insurance's training step (docs/performance.md)."""
    import tensorflow as tf

    numeric = x.shape[-1] - len(codes)
    out = tf.linalg.matmul(x[..., :numeric], kernel[:, :numeric])[..., 0]
    if not codes:
        return out
    stacks, rows = tf.shape(kernel)[0], tf.shape(x)[1]
    starts = np.asarray([start for start, _ in code_blocks(numeric, codes)], np.int32)
    levels = np.asarray(codes, np.int32)
    code = tf.broadcast_to(code_columns(x, len(codes)), tf.stack([stacks, rows, len(codes)]))
    valid = (code >= 0) & (code < levels)
    at = tf.reshape(tf.where(valid, code, 0) + starts, tf.stack([stacks, -1]))
    rows_of = tf.reshape(tf.gather(kernel[..., 0], at, batch_dims=1), tf.shape(code))
    return out + tf.reduce_sum(rows_of * tf.cast(valid, kernel.dtype), axis=-1)
