"""Many networks of one shape trained side by side in one compiled program.

Every strategy's network has the same layers; only its batches, loss, class weights, output bias
and seed differ. Stacking the S networks' weights (kernels `[S, inputs, units]`) lets one
compiled step update all of them: each network's loss depends only on its own weights, so the
gradient of the summed loss is, slice by slice, each network's own gradient, and Adam (an
element-wise rule) updates each slice exactly as it would update that network alone. What stays
per network is what `fit_member` gives a network trained on its own:

- initial weights: `initial_weights(seed)`, the weights `build_mlp` starts from;
- batches: the same seeded `BatchStream` positions, gathered inside the program from one pool of
  training rows (the shared training arrays, plus any synthesised rows) - no per-step copies;
- dropout: masks drawn from the network's own seed and the step number, so a network's result
  does not depend on which others share its stack;
- loss: binary cross-entropy or focal loss from the logits, class weights, averaged over the
  batch (Keras's `sum_over_batch_size`), then Adam with Keras's update rule and defaults;
- schedule and early stopping: the stop half is scored (`stop_half_scores`, the same function
  as `fit_member`'s) every `steps_per_check` steps, each
  network keeps its own best weights and stops after its own `patience`. A stopped network's
  slice goes on training (its kept weights no longer change) until dropping it pays for
  building a smaller program (`_Clock`); then the program continues without the stopped
  ones (`_Program.subset`), every remaining network exactly where it was;
- overlap: the next check interval trains (TensorFlow, without Python's lock) while this
  thread scores the last one and draws the batches of the one after, so a program's core is
  not idle while Python works; the results do not depend on it.

`fit_member` (Keras's own loop, one network at a time) is the reference: tests check that the
two agree on weights and scores (tests/unit/test_stacked.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from tasks.embeddings import expand_codes, linear_from_codes
from tasks.model import (
    COSINE_FLOOR,
    STOP_CRITERION,
    BatchStream,
    Network,
    StopWatch,
    TrainSettings,
    build_mlp,
    dropout_seed,
    initial_weights,
    member_info,
    stop_half_scores,
)

ADAM = {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}  # Keras's defaults
# stopped networks' slices are dropped from a program when at least DROP_SHARE of its networks
# have stopped (so a program of S networks is rebuilt at most ~log(S)/log(1.5) times) and the
# time they would still take, at least, exceeds DROP_PAYBACK times what building a smaller
# program costs (see _Clock)
DROP_SHARE = 1 / 3
DROP_PAYBACK = 2.0


def stackable(networks: list[Network]) -> bool:
    """Whether these networks can share one program: in-memory batch streams of one width."""
    streams = [n.stream for n in networks]
    return all(isinstance(s, BatchStream) for s in streams) and (
        len({s.width for s in streams}) <= 1
    )


MASK_LEVELS = 256  # a dropout mask element is one random byte


def dropout_threshold(rate: float) -> int:
    """The byte value from which a unit is kept: `rate` x 256 rounded, at most 255 (a unit is
    kept with probability at least 1/256)."""
    return min(round(rate * MASK_LEVELS), MASK_LEVELS - 1)


def dropout_mask(shape: Any, seeds: list[int], layer: int, step: Any, rate: float) -> Any:
    """The dropout masks of hidden layer `layer` at `step`, one per network seed ([S, *shape]):
    0 for a dropped unit, 1 / (1 - the rate used) for a kept one. Each element is one random
    byte, kept when it is at least `rate` x 256 rounded (so the rate is a multiple of 1/256:
    0.2 -> 51/256), four to a 32-bit Philox draw: drawing a float per element made the masks
    ~40% of a step on insurance. A network's masks depend only on its seed and the step."""
    import tensorflow as tf

    threshold = dropout_threshold(rate)
    size = tf.reduce_prod(shape)
    keep = []
    for seed in seeds:
        bits = tf.random.stateless_uniform(
            [(size + 3) // 4],
            seed=tf.stack([tf.constant(dropout_seed(seed, layer), tf.int64), step]),
            minval=None,
            maxval=None,
            dtype=tf.uint32,
        )
        random_bytes = tf.reshape(tf.bitcast(bits, tf.uint8), [-1])[:size]
        keep.append(tf.reshape(random_bytes, shape) >= threshold)
    return tf.cast(tf.stack(keep), tf.float32) * (MASK_LEVELS / (MASK_LEVELS - threshold))


class _Pool:
    """The distinct training arrays the networks draw from, concatenated once, with each
    network's offset into them."""

    def __init__(self, streams: list[BatchStream]):
        arrays: list[BatchStream] = []
        self.offsets: list[int] = []
        starts: dict[int, int] = {}
        size = 0
        for stream in streams:
            key = id(stream.x)
            if key not in starts:
                starts[key], size = size, size + len(stream.x)
                arrays.append(stream)
            self.offsets.append(starts[key])
        self.x = arrays[0].x if len(arrays) == 1 else np.concatenate([a.x for a in arrays])
        self.y = np.concatenate([a.y for a in arrays]).astype(np.float32)


class _Program:
    """The stacked weights, Adam's moments and the two compiled functions: `check` runs one
    check interval of training steps for every network, `stop_scores` scores the stop half.
    Without `state` the networks start from their initial weights; `subset` carries some
    networks' weights, moments and step count into a smaller program."""

    def __init__(
        self,
        networks: list[Network],
        tensors: tuple[Any, Any, Any],
        settings: TrainSettings,
        state: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], int] | None = None,
    ):
        import tensorflow as tf

        self.networks, self.tensors = networks, tensors
        self.count, self.settings = len(networks), settings
        self.pool_x, self.pool_y, self.stop_x = tensors
        if state is None:
            width = int(self.pool_x.shape[1])
            starts = [initial_weights(width, settings, n.seed, n.output_bias) for n in networks]
            weights = [np.stack(layer) for layer in zip(*starts, strict=True)]
            zeros = [np.zeros_like(w) for w in weights]
            state = (weights, zeros, [z.copy() for z in zeros], 0)
        weights, moments, velocities, done = state
        self.variables = [tf.Variable(w) for w in weights]
        self.moments = [tf.Variable(m) for m in moments]
        self.velocities = [tf.Variable(v) for v in velocities]
        self.iterations = tf.Variable(done, dtype=tf.int64)
        class_weights = [n.class_weight or {0: 1.0, 1: 1.0} for n in networks]
        self.w0 = tf.constant([[w[0]] for w in class_weights], dtype=tf.float32)
        self.w1 = tf.constant([[w[1]] for w in class_weights], dtype=tf.float32)
        self.focal = tf.constant([[n.loss == "focal"] for n in networks])
        self.alpha = tf.constant([[n.focal_alpha] for n in networks], dtype=tf.float32)
        self.seeds = [n.seed for n in networks]
        shape = [settings.steps_per_check, self.count, settings.batch_size]
        self.check = tf.function(self._check, input_signature=[tf.TensorSpec(shape, tf.int32)])
        self.stop_scores = tf.function(lambda: tf.sigmoid(self._logits(self.stop_x)))

    def _logits(self, x, step=None):
        """x: [S or 1, rows, inputs] (numerics, then category codes) -> [S, rows]; dropout when
        `step` is given. build_mlp's first layer makes the codes one-hot blocks; here embedded
        columns are looked up by code and only the others made one-hot (`Embeddings.apply`,
        `linear_from_codes`: the same function, tests/unit/test_embeddings.py)."""
        import tensorflow as tf

        codes, rate, v = self.settings.codes, self.settings.dropout, self.variables
        depth = len(self.settings.hidden)
        if self.settings.embeddings:
            tables = self.settings.embeddings.tables
            h, v = self.settings.embeddings.apply(x, v[:tables], codes), v[tables:]
        else:
            h = expand_codes(x, codes)
        for i in range(depth):
            h = tf.nn.relu(tf.linalg.matmul(h, v[2 * i]) + v[2 * i + 1][:, None])
            if step is not None and rate > 0:
                h = h * dropout_mask(tf.shape(h)[1:], self.seeds, i, step, rate)
        logits = tf.linalg.matmul(h, v[2 * depth]) + v[2 * depth + 1][:, None]
        if self.settings.linear_skip:
            logits += linear_from_codes(x, v[2 * depth + 2], codes)[..., None]
        return logits[..., 0]

    def _losses(self, rows, step):
        """Each network's loss on its batch (rows: [S, B] positions in the pool)."""
        import tensorflow as tf

        from tasks.strategies import FOCAL_GAMMA

        x, y = tf.gather(self.pool_x, rows), tf.gather(self.pool_y, rows)
        z = self._logits(x, step)
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z)
        p = tf.sigmoid(z)
        p_t = y * p + (1 - y) * (1 - p)
        focal = (y * self.alpha + (1 - y) * (1 - self.alpha)) * (1 - p_t) ** FOCAL_GAMMA * bce
        per_row = tf.where(self.focal, focal, bce) * (y * self.w1 + (1 - y) * self.w0)
        return tf.reduce_sum(per_row, axis=1) / self.settings.batch_size

    def _check(self, indices):
        """`steps_per_check` Adam steps of every network; their mean losses."""
        import tensorflow as tf

        beta_1, beta_2, epsilon = ADAM["beta_1"], ADAM["beta_2"], ADAM["epsilon"]
        settings = self.settings
        steps = settings.steps_per_check
        total = tf.zeros([self.count])
        for k in tf.range(steps):
            t = self.iterations + 1
            with tf.GradientTape() as tape:
                losses = self._losses(indices[k], t)
                summed = tf.reduce_sum(losses)
            grads = tape.gradient(summed, self.variables)
            t_float = tf.cast(t, tf.float32)
            learning_rate = self._learning_rate(t_float - 1)
            decay = learning_rate * settings.weight_decay
            rate = learning_rate * tf.sqrt(1 - beta_2**t_float) / (1 - beta_1**t_float)
            for var, g, m, v in zip(
                self.variables, grads, self.moments, self.velocities, strict=True
            ):
                if settings.weight_decay:  # Keras's decoupled weight decay, before Adam's step
                    var.assign(var - var * decay)
                m.assign_add((g - m) * (1 - beta_1))
                v.assign_add((tf.square(g) - v) * (1 - beta_2))
                var.assign_sub(m * rate / (tf.sqrt(v) + epsilon))
            self.iterations.assign(t)
            total += losses
        return total / steps

    def _learning_rate(self, done):
        """The learning rate after `done` steps: Keras's CosineDecay, or constant
        (tasks.model.learning_rate_schedule)."""
        import tensorflow as tf

        base = self.settings.learning_rate
        if self.settings.lr_schedule == "constant":
            return tf.constant(base, tf.float32)
        progress = tf.minimum(done, float(self.settings.total_steps)) / self.settings.total_steps
        cosine = 0.5 * (1 + tf.cos(np.pi * progress))
        return base * ((1 - COSINE_FLOOR) * cosine + COSINE_FLOOR)

    def weights(self) -> list[np.ndarray]:
        return [v.numpy() for v in self.variables]

    def subset(self, slots: np.ndarray) -> _Program:
        """A program of the networks in `slots` only, each where it is now: its weights, Adam's
        moments and the step count. A network's updates depend on nothing but its own slice
        and seed, so it trains on exactly as it would have in the larger program."""

        def pick(variables: list[Any]) -> list[np.ndarray]:
            return [v.numpy()[slots] for v in variables]

        state = (
            pick(self.variables),
            pick(self.moments),
            pick(self.velocities),
            int(self.iterations.numpy()),
        )
        networks = [self.networks[i] for i in slots]
        return _Program(networks, self.tensors, self.settings, state)


class _Clock:
    """The times of one program's checks: the first includes building (tracing and compiling)
    it. Its cost grows with its networks (on insurance's 2,048-row batches about 5 ms + 5 ms per
    network a step; on small data the fixed part dominates), so dropping stopped ones pays when
    the checks still to come, at their share of the time, cost more than DROP_PAYBACK builds (and
    enough of them stopped: DROP_SHARE)."""

    def __init__(self):
        self.seconds: list[float] = []

    def worth_dropping(self, stopped: int, count: int, to_go: int) -> bool:
        if stopped < DROP_SHARE * count or len(self.seconds) < 2:
            return False
        typical = float(np.median(self.seconds[1:]))
        build = max(self.seconds[0] - typical, 0.0)
        return to_go * typical * stopped / count > DROP_PAYBACK * build


class _Stopping:
    """Each network's early stopping on the stop half: its best score and weights, its wait."""

    def __init__(self, networks: list[Network], settings: TrainSettings):
        count = len(networks)
        self.calibrations = [n.calibration for n in networks]
        self.watches = [StopWatch(settings) for _ in networks]
        self.best_pr_auc = np.zeros(count)  # of the weights kept: what progress shows
        self.checks = np.zeros(count, int)
        self.active = np.ones(count, bool)
        self.kept: list[list[np.ndarray] | None] = [None] * count
        self.curves: list[dict[str, list[float]]] = [{"loss": []} for _ in range(count)]

    def update(self, check: int, losses, scores, y_stop, weights: list[np.ndarray], slots) -> None:
        """Score the networks in a program's `slots` (their indices among all networks) after
        check `check`; each active one's values are its row of `losses` and `scores`, its
        weights its slice of the program's `weights` then."""
        improved, row = [], {s: j for j, s in enumerate(slots)}
        for s in np.flatnonzero(self.active):
            values = stop_half_scores(y_stop, scores[row[s]], self.calibrations[s])
            self.curves[s]["loss"].append(float(losses[row[s]]))
            for key, value in values.items():
                self.curves[s].setdefault(key, []).append(value)
            self.checks[s] = check + 1
            keep, stop = self.watches[s].observe(values[STOP_CRITERION], check + 1)
            if keep:
                self.best_pr_auc[s] = values["val_pr_auc"]
                improved.append(s)
            if stop:
                self.active[s] = False
        for s in improved:
            self.kept[s] = [layer[row[s]].copy() for layer in weights]

    def least_to_go(self) -> int:
        """Checks the program will run at least: the active network furthest from stopping
        needs its remaining patience (and the warm-up) even if it never improves again."""
        return max(
            (
                max(w.settings.patience - w.wait, w.settings.warmup_checks - int(c))
                for w, c, a in zip(self.watches, self.checks, self.active, strict=True)
                if a
            ),
            default=0,
        )

    def keep_last(self, weights: list[np.ndarray], slots) -> None:
        """A network in a program's `slots` whose criterion never scored (NaN throughout) keeps
        its slice of the program's latest `weights`, as it leaves the program."""
        for j, s in enumerate(slots):
            if self.kept[s] is None:
                self.kept[s] = [layer[j].copy() for layer in weights]


def _checks_to_go(stopping: _Stopping, check: int) -> int:
    """The checks a program still has to run after check `check` (0-based), as dropping its
    stopped networks is judged: at least what its active networks' patience needs, and half as
    many again as it has run (a network still improving after k checks trains on for a while:
    on insurance the last network ran 23 checks more after its stack's first ones stopped at
    33). Patience alone (8 checks there) never paid for a new program, so one network trained
    on beside five stopped ones for a third of the run."""
    return max(stopping.least_to_go(), (check + 1) // 2)


def _run_check(program: _Program, indices: np.ndarray) -> tuple[Any, Any, list[Any], float]:
    """One check interval of `program` on the batches `indices`: each network's mean loss, its
    stop-half scores, the weights after it and the seconds it took."""
    started = time.perf_counter()
    losses = program.check(indices).numpy()
    scores = program.stop_scores().numpy()
    return losses, scores, program.weights(), time.perf_counter() - started


def fit_stacked(
    networks: list[Network],
    x_stop: np.ndarray,
    y_stop: np.ndarray,
    settings: TrainSettings,
    on_check: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> list[tuple[Any, dict[str, Any]]]:
    """Train `networks` together; return each one's Keras model (its best weights on the stop
    half) and record, as `fit_member` would for each alone. After every check interval
    `on_check(steps done, best stop-half scores)` gets one value per network."""
    if not stackable(networks):
        raise ValueError("stacked training needs in-memory batch streams of one input width")
    import tensorflow as tf

    started = time.perf_counter()
    count, steps = len(networks), settings.steps_per_check
    pool = _Pool([n.stream for n in networks])
    tensors = (
        tf.constant(pool.x, dtype=tf.float32),
        tf.constant(pool.y),
        tf.constant(x_stop, dtype=tf.float32)[None],
    )
    program, slots = _Program(networks, tensors, settings), np.arange(count)
    stopping, clock = _Stopping(networks, settings), _Clock()
    streams = [n.stream.positions() for n in networks]

    def draw(slots: np.ndarray) -> np.ndarray:
        """The next check's batches of the networks in `slots`: positions in the pool."""
        indices = np.empty((steps, len(slots), settings.batch_size), dtype=np.int32)
        for j, s in enumerate(slots):
            for k in range(steps):
                indices[k, j] = next(streams[s]) + pool.offsets[s]
        return indices

    # One check runs ahead: while TensorFlow trains check k + 1 (without Python's lock), this
    # thread scores check k, keeps improved weights and draws the batches of check k + 2.
    # Stopped networks train on in the program anyway, so nothing depends on the overlap; a
    # program that would be made smaller after check k is made so after check k + 1.
    with ThreadPoolExecutor(1, thread_name_prefix="stacked-check") as worker:
        pending, ahead, leaving = worker.submit(_run_check, program, draw(slots)), None, None
        for check in range(settings.max_checks):
            if check + 1 < settings.max_checks:
                ahead = draw(slots) if ahead is None else ahead
            losses, scores, weights, seconds = pending.result()
            clock.seconds.append(seconds)
            scored = slots
            if leaving is not None and ahead is not None:  # decided after the last check
                program, slots, ahead = program.subset(leaving), slots[leaving], ahead[:, leaving]
                clock, leaving = _Clock(), None
            pending = None
            if check + 1 < settings.max_checks:
                pending, ahead = worker.submit(_run_check, program, ahead), None
            stopping.update(check, losses, scores, y_stop, weights, scored)
            if on_check is not None:
                on_check(stopping.checks * steps, stopping.best_pr_auc)
            if not stopping.active.any():
                break
            running = np.flatnonzero(stopping.active[slots])
            to_go = min(_checks_to_go(stopping, check), settings.max_checks - check - 1)
            if slots is scored and clock.worth_dropping(
                len(slots) - len(running), len(slots), to_go
            ):
                stopping.keep_last(weights, scored)
                leaving = running
        if pending is not None:
            pending.result()  # a check run ahead, after every network stopped: not needed
    stopping.keep_last(weights, scored)
    share = (time.perf_counter() - started) / count  # the program's time, split evenly
    results = []
    for s, network in enumerate(networks):
        model = build_mlp(pool.x.shape[1], settings, network.seed, network.output_bias)
        model.set_weights(stopping.kept[s])
        info = member_info(
            int(stopping.checks[s]),
            stopping.watches[s].best_check,
            settings,
            share,
            stopping.curves[s],
        )
        results.append((model, info))
    return results
