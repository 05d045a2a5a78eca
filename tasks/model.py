"""The Keras MLP and how one member of a strategy is trained.

TensorFlow's thread pools are process-wide and fixed when TensorFlow initialises, so
`configure_tensorflow` must run before the first TensorFlow op (the training flow calls it first).
Every random source is seeded explicitly (initialisers, dropout, tf.data shuffling and sampling),
never through Keras's global seed state, which parallel branches would share."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
_CONFIGURED: int | None = None


def configure_tensorflow(threads: int) -> None:
    """Give TensorFlow `threads` intra- and inter-op threads; a no-op once it has started."""
    global _CONFIGURED
    if _CONFIGURED is not None:
        if threads != _CONFIGURED:
            log.warning(
                "TensorFlow already uses %d threads; %d applies to a new process",
                _CONFIGURED,
                threads,
            )
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # already initialised by an earlier import in this process
        log.warning("TensorFlow was initialised before its thread pools could be set")
    _CONFIGURED = threads


@dataclass(frozen=True)
class TrainSettings:
    hidden: tuple[int, ...]
    dropout: float
    learning_rate: float
    batch_size: int
    epochs: int
    patience: int
    steps_per_epoch: int


def one_hot_inputs(numeric: np.ndarray, codes: np.ndarray, cardinalities: list[int]) -> np.ndarray:
    """Model input: scaled numerics then one-hot categoricals (unseen code -1 -> all zeros)."""
    blocks = [numeric.astype(np.float32)]
    for j, k in enumerate(cardinalities):
        blocks.append((codes[:, j : j + 1] == np.arange(k)[None, :]).astype(np.float32))
    return np.concatenate(blocks, axis=1) if blocks else numeric


def build_mlp(n_inputs: int, settings: TrainSettings, seed: int, output_bias: float):
    """Dense ReLU layers with dropout and a sigmoid output. Hidden initialisers depend only on
    `seed`, so every strategy starts from identical hidden weights; the output bias starts at the
    log-odds of the class mix the strategy trains on."""
    import keras

    inputs = keras.Input(shape=(n_inputs,), name="features")
    x = inputs
    for i, units in enumerate(settings.hidden):
        x = keras.layers.Dense(
            units, activation="relu", name=f"hidden_{i}",
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 10 * i),
            bias_initializer="zeros",
        )(x)  # fmt: skip
        if settings.dropout > 0:
            x = keras.layers.Dropout(settings.dropout, seed=seed + 10 * i + 1, name=f"dropout_{i}")(
                x
            )
    outputs = keras.layers.Dense(
        1, activation="sigmoid", name="probability",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 997),
        bias_initializer=keras.initializers.Constant(output_bias),
    )(x)  # fmt: skip
    return keras.Model(inputs, outputs, name="mlp")


def _dataset(x: np.ndarray, y: np.ndarray, batch: int, seed: int, balanced: bool):
    import tensorflow as tf

    def stream(mask: np.ndarray | None, stream_seed: int):
        xs, ys = (x, y) if mask is None else (x[mask], y[mask])
        ds = tf.data.Dataset.from_tensor_slices((xs, ys.astype(np.float32)))
        return ds.shuffle(len(xs), seed=stream_seed, reshuffle_each_iteration=True).repeat()

    if balanced:  # ~50/50 batches drawn from two streams; nothing is copied
        ds = tf.data.Dataset.sample_from_datasets(
            [stream(y == 0, seed), stream(y == 1, seed + 1)], weights=[0.5, 0.5], seed=seed + 2
        )
    else:
        ds = stream(None, seed)
    return ds.batch(batch).prefetch(2)


def fit_member(x: np.ndarray, y: np.ndarray, x_stop: np.ndarray, y_stop: np.ndarray,
               settings: TrainSettings, *, seed: int, output_bias: float, loss: str,
               focal_alpha: float, class_weight: dict[int, float] | None, balanced_batches: bool,
               ) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """Train one model for `settings.epochs` epochs of `settings.steps_per_epoch` steps, stopping
    early on the stop half's PR-AUC and restoring the best weights."""
    import keras

    model = build_mlp(x.shape[1], settings, seed, output_bias)
    if loss == "focal":
        loss_fn = keras.losses.BinaryFocalCrossentropy(
            apply_class_balancing=True, alpha=focal_alpha, gamma=2.0
        )
    else:
        loss_fn = keras.losses.BinaryCrossentropy()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=settings.learning_rate),
        loss=loss_fn,
        metrics=[keras.metrics.AUC(curve="PR", name="pr_auc", num_thresholds=500)],
    )
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_pr_auc", mode="max", patience=settings.patience, restore_best_weights=True
    )
    history = model.fit(
        _dataset(x, y, settings.batch_size, seed, balanced_batches),
        steps_per_epoch=settings.steps_per_epoch,
        epochs=settings.epochs,
        validation_data=(x_stop, y_stop.astype(np.float32)),
        validation_batch_size=4096,
        class_weight=class_weight,
        callbacks=[stopper],
        shuffle=False,  # tf.data shuffles with its own seed
        verbose=0,
    )
    curve = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    val_pr = curve.get("val_pr_auc", [])
    best_epoch = int(np.argmax(val_pr)) + 1 if val_pr else len(curve.get("loss", []))
    return model, {
        "epochs_run": len(curve.get("loss", [])),
        "best_epoch": best_epoch,
        "history": curve,
    }


def predict(models: list[Any], x: np.ndarray) -> np.ndarray:
    """Average of the members' probabilities."""
    return np.mean(
        [m.predict(x, batch_size=4096, verbose=0).reshape(-1) for m in models], axis=0
    ).astype(np.float64)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Equal budgets: every strategy gets ceil(n_train / batch) steps per epoch."""
    return max(1, math.ceil(n_train / batch_size))
