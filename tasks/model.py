"""The Keras MLP and how one member of a strategy is trained.

TensorFlow's thread pools are process-wide and fixed when TensorFlow initialises, so
`configure_tensorflow` must run before the first TensorFlow op (every user calls it first).
Every random source is seeded explicitly (initialisers, dropout, tf.data shuffling and sampling),
never through Keras's global seed state, which parallel branches would share."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks import preload
from tasks.calibration import Calibration, log_likelihood, platt
from tasks.embeddings import Embeddings, expanded_width

log = logging.getLogger(__name__)
_CONFIGURED: int | None = None
_CONFIGURING = threading.Lock()


def configure_tensorflow(threads: int) -> None:
    """Give TensorFlow `threads` intra-op threads (and at least 2 inter-op threads); a no-op once
    it has started. Every user of TensorFlow calls it first (training, export, scoring the
    champion), so a run that needs none never imports it; the first of parallel branches to
    call it configures, the others wait for it."""
    global _CONFIGURED
    with _CONFIGURING:
        if _CONFIGURED is not None:
            if threads != _CONFIGURED:
                log.warning(
                    "TensorFlow already uses %d threads; %d applies to a new process",
                    _CONFIGURED,
                    threads,
                )
            return
        preload.finish("tensorflow")  # the command line's background import, if it started one
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            # at least 2: BatchStream's generator runs as a py_function on an inter-op thread
            # while the iterator's own op holds one; with a single inter-op thread they deadlock
            tf.config.threading.set_inter_op_parallelism_threads(max(threads, 2))
        except RuntimeError:  # already initialised by an earlier import in this process
            log.warning("TensorFlow was initialised before its thread pools could be set")
        _CONFIGURED = threads


@dataclass(frozen=True)
class TrainSettings:
    """Network and schedule of one training run; the schedule is the same for every strategy:
    the stop half is scored every `steps_per_check` optimizer steps, at most `max_checks` times,
    and training stops after `patience` checks without improvement once `warmup_checks` are
    done; the best-scoring weights are kept."""

    hidden: tuple[int, ...]
    dropout: float
    learning_rate: float
    batch_size: int
    steps_per_check: int
    max_checks: int
    patience: int
    warmup_checks: int = 1
    # a check resets the patience only when the criterion has gained more than this (mean per
    # stop-half row) since the last reset: see StopWatch
    patience_gain: float = 0.0
    linear_skip: bool = False  # a linear path from the inputs straight to the output logit
    weight_decay: float = 0.0  # decoupled (AdamW): each step w -= learning_rate * decay * w
    lr_schedule: str = "constant"  # "constant" | "cosine": see learning_rate_schedule
    embeddings: Embeddings | None = None  # which inputs enter through learned embeddings
    # levels of the category code columns, the last len(codes) inputs: the network's first step
    # makes them one-hot blocks (tasks.embeddings.expand_codes)
    codes: tuple[int, ...] = ()

    @property
    def total_steps(self) -> int:
        """The step budget: what a network that never stops early trains for."""
        return self.max_checks * self.steps_per_check


COSINE_FLOOR = 0.01  # the cosine schedule ends at this share of the learning rate


def learning_rate_schedule(settings: TrainSettings) -> Any:
    """The learning rate Keras's optimizer gets: a number, or its cosine decay over the step
    budget (Loshchilov & Hutter 2017, without restarts), which the stacked trainer reproduces
    step by step (tasks.stacked)."""
    if settings.lr_schedule == "constant":
        return settings.learning_rate
    import keras

    return keras.optimizers.schedules.CosineDecay(
        settings.learning_rate, decay_steps=settings.total_steps, alpha=COSINE_FLOOR
    )


def network_inputs(numeric: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Model input rows: scaled numerics, then each categorical's integer code (unseen: -1) as
    float32, exact below 2**24 levels. The network makes the codes one-hot itself
    (`TrainSettings.codes`), so a categorical takes one column here, not one per level."""
    return np.concatenate([numeric.astype(np.float32), codes.astype(np.float32)], axis=1)


def _initializers(seed: int, layer: int, output: bool = False):
    """The kernel initializer of hidden layer `layer` (or of the output layer): seeded by the
    network's seed only, so every strategy starts from identical hidden weights."""
    import keras

    return keras.initializers.GlorotUniform(seed=seed + 997 if output else seed + 10 * layer)


def dropout_seed(seed: int, layer: int) -> int:
    """The seed of hidden layer `layer`'s dropout masks, from the network's seed."""
    return seed + 10 * layer + 1


def build_mlp(n_inputs: int, settings: TrainSettings, seed: int, output_bias: float):
    """Dense ReLU layers with dropout and a sigmoid output; with `settings.linear_skip`, the
    output logit also gets a linear function of the inputs (zero at the start, no dropout): a
    logistic regression inside the network, which small data with a mostly linear signal
    needs (wide & deep, Cheng et al. 2016). Hidden initialisers depend only on
    `seed`, so every strategy starts from identical hidden weights; the output bias starts at the
    log-odds of the class mix the strategy trains on."""
    import keras

    from tasks.layers import CodeOneHot, InputEmbedding

    inputs = keras.Input(shape=(n_inputs,), name="features")
    wide = CodeOneHot(list(settings.codes), name="codes")(inputs) if settings.codes else inputs
    x = wide
    if settings.embeddings:
        e = settings.embeddings
        x = InputEmbedding(e.width, e.numeric, e.categories, seed, name="embeddings")(wide)
    for i, units in enumerate(settings.hidden):
        x = keras.layers.Dense(
            units,
            activation="relu",
            name=f"hidden_{i}",
            kernel_initializer=_initializers(seed, i),
            bias_initializer="zeros",
        )(x)
        if settings.dropout > 0:
            dropout = keras.layers.Dropout(
                settings.dropout, seed=dropout_seed(seed, i), name=f"dropout_{i}"
            )
            x = dropout(x)
    output = {
        "kernel_initializer": _initializers(seed, 0, output=True),
        "bias_initializer": keras.initializers.Constant(output_bias),
    }
    if not settings.linear_skip:
        outputs = keras.layers.Dense(1, activation="sigmoid", name="probability", **output)(x)
        return keras.Model(inputs, outputs, name="mlp")
    logit = keras.layers.Dense(1, name="logit", **output)(x)
    linear = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros", name="linear")(wide)
    summed = keras.layers.Add(name="logit_sum")([logit, linear])
    outputs = keras.layers.Activation("sigmoid", name="probability")(summed)
    return keras.Model(inputs, outputs, name="mlp")


def initial_weights(
    n_inputs: int, settings: TrainSettings, seed: int, output_bias: float
) -> list[np.ndarray]:
    """The weights build_mlp starts from (the input embeddings' tables, then kernel and bias
    per layer), without building a model."""
    wide = expanded_width(n_inputs, settings.codes)
    weights, width = [], wide
    if settings.embeddings:
        weights, width = settings.embeddings.initial(seed), settings.embeddings.out_width
    for i, units in enumerate(settings.hidden):
        weights += [_initializers(seed, i)((width, units)), np.zeros(units)]
        width = units
    weights += [_initializers(seed, 0, output=True)((width, 1)), np.full(1, output_bias)]
    if settings.linear_skip:
        weights.append(np.zeros((wide, 1)))  # the linear path starts closed
    return [np.asarray(w, dtype=np.float32) for w in weights]


@dataclass(frozen=True)
class Network:
    """One network to train: its batches, its seed (initial weights, dropout), the output bias
    it starts from and its loss."""

    stream: Any  # BatchStream | RowGroupStream
    seed: int
    output_bias: float
    loss: str  # "bce" | "focal"
    focal_alpha: float
    class_weight: dict[int, float] | None
    # the map its scores are reported through (Strategy.calibration); None: fitted after
    # training (Platt, on the stop half). Early stopping judges the probability reported.
    calibration: Calibration | None = None


class _Stream:
    """A Python generator of (inputs, labels) batches, fed to Keras through tf.data."""

    width: int

    def dataset(self):
        import tensorflow as tf

        spec = (tf.TensorSpec((None, self.width), tf.float32), tf.TensorSpec((None,), tf.float32))
        return tf.data.Dataset.from_generator(self, output_signature=spec).prefetch(2)


class BatchStream(_Stream):
    """Endless seeded training batches drawn with numpy, without copying the training arrays.

    `shuffled`: a fresh permutation of the rows every pass. `balanced`: every batch is half
    positives, half negatives, each class cycling through its own permutations (the minority
    class is revisited more often; nothing is duplicated in memory). Drawing whole batches keeps
    the cost per step, not per row: tf.data's element-wise shuffle and class-balanced sampling
    cost more per batch than the training step itself (docs/performance.md)."""

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch: int,
        seed: int,
        balanced: bool,
        rows: np.ndarray | None = None,
    ):
        self.x, self.y, self.batch, self.seed, self.balanced = x, y, batch, seed, balanced
        self.rows = np.arange(len(y)) if rows is None else rows  # the pool: may repeat rows

    @staticmethod
    def _cycle(rows: np.ndarray, rng: np.random.Generator, take: int):
        """Endless chunks of `take` rows from `rows`, reshuffled on every pass (a chunk spans
        passes at the seam, and repeats rows when `take` exceeds the rows available)."""
        order, position = rng.permutation(rows), 0
        while True:
            pieces, need = [], take
            while need:
                if position == len(order):
                    order, position = rng.permutation(rows), 0
                piece = order[position : position + need]
                pieces.append(piece)
                position, need = position + len(piece), need - len(piece)
            yield pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def positions(self):
        """Endless batches of row positions into `x` (sorted: memory order; the gradient is a
        mean, so the order within a batch is moot)."""
        rng = np.random.default_rng(self.seed)
        if self.balanced:
            half = self.batch // 2
            positive = self.y[self.rows] == 1
            positives = self._cycle(self.rows[positive], rng, half)
            negatives = self._cycle(self.rows[~positive], rng, self.batch - half)
            chunks = (np.concatenate([next(positives), next(negatives)]) for _ in iter(int, 1))
        else:
            chunks = self._cycle(self.rows, rng, self.batch)
        for rows in chunks:
            yield np.sort(rows)

    def __call__(self):
        for rows in self.positions():
            yield self.x[rows], self.y[rows].astype(np.float32)

    @property
    def width(self) -> int:
        return self.x.shape[1]


class RowGroupStream(_Stream):
    """Endless seeded training batches read from the stored training split a few row groups at
    a time, for training splits that stay out of memory (the out-of-core path).

    `store` gives the row groups' sizes and reads one as network inputs. Every pass visits the
    row groups in a new order, `window` at a time; the pool rows (`rows`, may repeat) inside a
    window are shuffled and cut into batches; the few left over are carried into the next
    window, so every pool row is used once per pass. Memory: a window of inputs plus, for
    `balanced` batches, the inputs of the positive pool rows (the rare class), which are drawn
    like BatchStream's while the negatives stream."""

    def __init__(
        self,
        store: Any,
        y: np.ndarray,
        batch: int,
        seed: int,
        balanced: bool,
        rows: np.ndarray | None = None,
        window: int = 2,
    ):
        self.store, self.y, self.batch, self.seed, self.balanced = store, y, batch, seed, balanced
        self.rows = np.arange(len(y)) if rows is None else rows
        self.window = max(1, window)
        self.starts = np.concatenate([[0], np.cumsum(store.sizes)]).astype(np.int64)

    @property
    def width(self) -> int:
        return self.store.width

    def _windows(self, pool: np.ndarray, rng: np.random.Generator, take: int):
        """Endless batches of `take` pool rows: (inputs, labels)."""
        pool = np.sort(pool)
        bounds = np.searchsorted(pool, self.starts)  # pool rows of group g: bounds[g]:bounds[g+1]
        groups = [g for g in range(len(self.store.sizes)) if bounds[g + 1] > bounds[g]]
        carry_x = np.empty((0, self.width), dtype=np.float32)
        carry_y = np.empty(0, dtype=np.float32)
        while True:
            order = rng.permutation(groups)
            for i in range(0, len(order), self.window):
                chosen = sorted(order[i : i + self.window])
                blocks, local, members, offset = [], [], [], 0
                for g in chosen:  # read in file order; the rows are shuffled below
                    inside = pool[bounds[g] : bounds[g + 1]]
                    blocks.append(self.store.inputs(g))
                    local.append(inside - self.starts[g] + offset)
                    members.append(inside)
                    offset += self.store.sizes[g]
                x = np.concatenate(blocks)
                local, members = np.concatenate(local), np.concatenate(members)
                shuffle = rng.permutation(len(local))
                xs = np.concatenate([carry_x, x[local[shuffle]]])
                ys = np.concatenate([carry_y, self.y[members[shuffle]].astype(np.float32)])
                full = len(ys) - len(ys) % take
                for start in range(0, full, take):
                    yield xs[start : start + take], ys[start : start + take]
                carry_x, carry_y = xs[full:], ys[full:]

    def __call__(self):
        rng = np.random.default_rng(self.seed)
        if not self.balanced:
            yield from self._windows(self.rows, rng, self.batch)
            return
        half = self.batch // 2
        positive = self.y[self.rows] == 1
        kept = np.unique(self.rows[positive])
        positive_x = self.store.gather(kept)  # the rare class's inputs, once
        cycle = BatchStream._cycle(np.searchsorted(kept, self.rows[positive]), rng, half)
        negatives = self._windows(self.rows[~positive], rng, self.batch - half)
        for x_neg, y_neg in negatives:
            x = np.concatenate([positive_x[next(cycle)], x_neg])
            yield x, np.concatenate([np.ones(half, dtype=np.float32), y_neg])


def stop_half_scores(
    y_stop: np.ndarray, scores: np.ndarray, calibration: Calibration | None = None
) -> dict[str, float]:
    """A network's stop half at one check: `val_log_likelihood`, early stopping's criterion, and
    `val_pr_auc`, shown and plotted. The criterion is the mean log-likelihood of the stop half's
    labels under the probability the branch will report: the scores through the network's
    `calibration` (the exact maps: a prior shift, the focal-loss inverse), or, for a branch
    calibrated after training, through the logistic map fitted on these rows (Platt,
    tasks.calibration.platt).

    Why not stop on average precision: with few positives in the stop half it jumps whenever two
    rows swap places, and the best of many noisy checks is a lucky one, not a good network
    (diabetes_top10, ~4 stop-half positives, docs/quality.md). The log-likelihood is a proper
    score that moves smoothly with every row's probability, so it rewards separating the
    classes and reporting calibrated probabilities at once."""
    from tasks.evaluate import average_precision

    if calibration is None:
        value = platt(scores, y_stop)[2]
    else:
        value = log_likelihood(y_stop, calibration.apply([scores]))
    return {"val_log_likelihood": value, "val_pr_auc": average_precision(y_stop, scores)}


STOP_CRITERION = "val_log_likelihood"  # the key of stop_half_scores that early stopping maximises


def patience_gain(stop_rows: int) -> float:
    """The gain in the stop half's mean log-likelihood that counts as progress for the patience:
    one nat over the whole stop half (a likelihood ratio of e, "barely worth mentioning" on
    Jeffreys' scale). Smaller gains still update the kept weights, but do not keep a network
    training: on small data the log-likelihood creeps up by hundredths of a nat per check for
    thousands of steps as the probabilities sharpen (docs/performance.md, session 13)."""
    return 1.0 / max(stop_rows, 1)


@dataclass
class StopWatch:
    """One network's early stopping: the best criterion and its check (the weights to keep), and
    the checks waited since the criterion last gained more than `settings.patience_gain`."""

    settings: TrainSettings
    best: float = -np.inf
    best_check: int = 0
    anchor: float = -np.inf  # the criterion at the last reset of the patience
    wait: int = 0

    def observe(self, value: float, check: int) -> tuple[bool, bool]:
        """After check number `check` (1-based) scored `value`: (keep these weights, stop)."""
        improved = value > self.best
        if improved:
            self.best, self.best_check = value, check
        if value > self.anchor + self.settings.patience_gain:
            self.anchor, self.wait = value, 0
            return improved, False
        self.wait += 1
        return improved, (
            self.wait >= self.settings.patience and check >= self.settings.warmup_checks
        )


def stop_half_stopping(
    x_stop: np.ndarray,
    y_stop: np.ndarray,
    settings: TrainSettings,
    on_check: Callable[[int, float], None] | None = None,
    calibration: Calibration | None = None,
) -> Any:
    """A Keras callback that scores the stop half (stop_half_scores) after every check interval
    (a Keras "epoch" of `steps_per_check` steps), keeps the weights that score best on
    STOP_CRITERION, stops after `patience` checks without progress once past the warm-up
    (StopWatch), and restores the best weights; `on_check` gets the stop-half PR-AUC of the
    weights kept.
    One forward pass per check, in chunks: Keras's validation pass would rebuild a tf.data
    pipeline every time."""
    import keras

    class StopHalf(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.watch, self.best_weights, self.best_pr_auc = StopWatch(settings), None, 0.0

        @property
        def best_check(self) -> int:
            return self.watch.best_check

        def on_epoch_end(self, epoch, logs=None):
            values = stop_half_scores(y_stop, probabilities(self.model, x_stop), calibration)
            if logs is not None:
                logs.update(values)
            keep, stop = self.watch.observe(values[STOP_CRITERION], epoch + 1)
            if keep:
                self.best_pr_auc = values["val_pr_auc"]
                self.best_weights = self.model.get_weights()
            if on_check is not None:
                on_check((epoch + 1) * settings.steps_per_check, self.best_pr_auc)
            if stop:
                self.model.stop_training = True

        def on_train_end(self, logs=None):
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    return StopHalf()


def fit_member(
    network: Network,
    x_stop: np.ndarray,
    y_stop: np.ndarray,
    settings: TrainSettings,
    on_check: Callable[[int, float], None] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train one network with Keras's own loop on the shared schedule of `settings` (see
    TrainSettings), keeping the weights that score best on the stop half. The reference for
    tasks.stacked, and the trainer of training splits streamed from the store. After every
    check interval `on_check(steps done, best stop-half score)`."""
    import keras

    from tasks.strategies import FOCAL_GAMMA

    stream = network.stream
    model = build_mlp(stream.width, settings, network.seed, network.output_bias)
    if network.loss == "focal":
        loss_fn = keras.losses.BinaryFocalCrossentropy(
            apply_class_balancing=True, alpha=network.focal_alpha, gamma=FOCAL_GAMMA
        )
    else:
        loss_fn = keras.losses.BinaryCrossentropy()
    model.compile(
        optimizer=keras.optimizers.Adam(
            learning_rate=learning_rate_schedule(settings),
            weight_decay=settings.weight_decay or None,
        ),
        loss=loss_fn,
        steps_per_execution=steps_per_execution(settings.steps_per_check),
    )
    stopper = stop_half_stopping(x_stop, y_stop, settings, on_check, network.calibration)
    started = time.perf_counter()
    history = model.fit(
        stream.dataset(),
        steps_per_epoch=settings.steps_per_check,
        epochs=settings.max_checks,
        class_weight=network.class_weight,
        callbacks=[stopper],
        shuffle=False,  # BatchStream shuffles with its own seed
        verbose=0,
    )
    seconds = time.perf_counter() - started
    curve = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    checks = len(curve.get("loss", []))
    return model, member_info(checks, stopper.best_check, settings, seconds, curve)


def member_info(
    checks: int,
    best_check: int,
    settings: TrainSettings,
    seconds: float,
    curve: dict[str, list[float]],
) -> dict[str, Any]:
    """What a trained member records: checks run, the best one, steps, time and its curves."""
    best = best_check or checks
    return {
        "checks_run": checks,
        "best_check": best,
        "steps": checks * settings.steps_per_check,
        "best_step": best * settings.steps_per_check,
        "train_seconds": round(seconds, 3),
        "history": curve,
    }


SCORE_CHUNK = 65536


def probabilities(model: Any, x: np.ndarray) -> np.ndarray:
    """One model's probabilities for the rows of `x`: direct calls on chunks. Keras's
    `predict` builds a tf.function per model, retraced for every new model and input size."""
    return np.concatenate(
        [
            np.asarray(model(x[i : i + SCORE_CHUNK], training=False)).reshape(-1)
            for i in range(0, max(len(x), 1), SCORE_CHUNK)
        ]
    ).astype(np.float64)


def member_scores(models: list[Any], x: np.ndarray) -> list[np.ndarray]:
    """Each member's probabilities for the rows of `x`."""
    return [probabilities(m, x) for m in models]


def predict(models: list[Any], x: np.ndarray) -> np.ndarray:
    """Average of the members' probabilities (the raw score)."""
    return np.mean(member_scores(models, x), axis=0)


AUTO_BATCH = (256, 4096)  # smallest and largest automatic batch size
AUTO_STEPS_PER_EPOCH = 128


def auto_batch_size(n_train: int) -> int:
    """The power of two nearest n_train / 128, within 256..4096: small data keeps small batches,
    large data gets fewer, larger steps (per-step overhead dominates a small MLP on a CPU)."""
    ideal = max(n_train / AUTO_STEPS_PER_EPOCH, 1.0)
    return int(min(max(2 ** round(math.log2(ideal)), AUTO_BATCH[0]), AUTO_BATCH[1]))


MAX_STEPS_PER_EXECUTION = 8


def steps_per_execution(steps: int) -> int:
    """How many training steps Keras runs per call into its compiled loop: the largest divisor
    of the epoch's `steps` up to MAX_STEPS_PER_EXECUTION. Fewer round trips through Python cut
    a small MLP's training time (docs/performance.md); a divisor keeps every
    epoch exactly `steps` long (Keras rounds an epoch up to whole executions), so the updates and
    the early-stopping checks are the same as one step at a time."""
    return next(d for d in range(min(MAX_STEPS_PER_EXECUTION, steps), 0, -1) if steps % d == 0)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Steps of one pass over the whole training split."""
    return max(1, math.ceil(n_train / batch_size))


MAX_CHECKS_PER_EPOCH = 32  # the stop half is scored at most this often per pass over the data
# scoring the stop half costs at most this share of the training between two checks; scoring a
# row (a forward pass) costs about FORWARD_COST of a training step's row (forward, backward,
# update: 0.35 measured on insurance's networks, docs/performance.md)
MAX_SCORING_SHARE = 0.1
FORWARD_COST = 1 / 3


def check_interval(n_train: int, n_minority: int, batch_size: int, stop_rows: int = 0) -> int:
    """Optimizer steps between two scorings of the stop half, the same for every strategy: one
    pass over the smallest pool a strategy trains on (the undersampled one: twice the minority
    class), at least 1/MAX_CHECKS_PER_EPOCH of a full pass, at least enough steps that scoring
    the `stop_rows` costs no more than MAX_SCORING_SHARE of them, and at least one compiled
    call (MAX_STEPS_PER_EXECUTION steps), rounded up to whole compiled calls. Checking once per
    full pass instead would let an undersampling strategy cycle its small pool hundreds of
    times between checks on rare-class data; checking every step of tiny data, or every pool
    pass of large data with a large stop half (insurance: 38k rows every 32 steps, ~19% of
    training), would spend the run scoring."""
    full = steps_per_epoch(n_train, batch_size)
    pool = steps_per_epoch(max(2 * n_minority, 1), batch_size)
    scoring = math.ceil(stop_rows * FORWARD_COST / (batch_size * MAX_SCORING_SHARE))
    steps = min(max(pool, math.ceil(full / MAX_CHECKS_PER_EPOCH), scoring), full)
    return math.ceil(steps / MAX_STEPS_PER_EXECUTION) * MAX_STEPS_PER_EXECUTION


def schedule(
    n_train: int,
    n_minority: int,
    batch_size: int,
    epochs: int,
    patience: int,
    min_steps: int = 0,
    min_patience_steps: int = 0,
    stop_rows: int = 0,
) -> dict[str, int]:
    """The shared training schedule, sized in optimizer steps: a cap of `epochs` full passes
    but at least `min_steps` steps, checked every check_interval steps; training stops after
    `patience` full passes, and at least `min_patience_steps` steps, without improvement
    (counted in checks); no strategy stops before one full pass or half the patience floor.
    On tiny data a pass is a step or two, so passes alone would give a network a few dozen
    updates (docs/quality.md)."""
    interval = check_interval(n_train, n_minority, batch_size, stop_rows)
    full = steps_per_epoch(n_train, batch_size)
    checks_per_pass = max(1, round(full / interval))
    patience_checks = max(patience * checks_per_pass, math.ceil(min_patience_steps / interval))
    return {
        "steps_per_check": interval,
        "max_checks": max(1, math.ceil(max(epochs * full, min_steps) / interval)),
        "patience": patience_checks,
        "warmup_checks": max(checks_per_pass, math.ceil(min_patience_steps / 2 / interval)),
    }
