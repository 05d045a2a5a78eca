"""The custom Keras layers of the standalone model (`tasks/standalone.py`), registered under the
package name `imbalance` so that `keras.saving.load_model("model.keras")` finds them once this
module is imported. The SavedModel export needs none of them: it is plain TensorFlow.

- `NumericPreprocessing`: a missing value takes its imputed value, then clipping to the training
  bounds, the normal-quantile map (piecewise linear through the training knots, flat beyond
  them) and standardisation. Computed in float64, as the training path computes it.
- `CategoryCode`: a category string to its code, its position among the training levels (float32,
  as the network's input row carries it); an unseen level is -1, an empty string (missing) takes
  the imputed level when one was fitted. `CategoryOneHot` is the same lookup as a one-hot block:
  what networks exported before session 14 took (their inputs were one-hot blocks), kept so
  that such models still load and are rebuilt.
- `Calibrate`: the members' scores to the calibrated probability (`tasks.calibration`'s code,
  run on tensors).
- `CodeOneHot`: part of the network itself, its first step: the code columns to one-hot blocks
  (`tasks.embeddings.expand_codes`, as the stacked trainer computes it).
- `InputEmbedding`: part of the network itself (`tasks.model.build_mlp`), not of the
  preprocessing: numeric inputs through learned periodic embeddings, many-level categoricals
  through learned vectors. Its arithmetic is `Embeddings.apply`, which the stacked trainer
  (`tasks.stacked`) runs on S networks at once."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from tasks.calibration import Calibration, calibrated
from tasks.embeddings import Embeddings, expand_codes

PACKAGE = "imbalance"


@keras.saving.register_keras_serializable(package=PACKAGE)
class NumericPreprocessing(keras.layers.Layer):
    """(n, columns) raw numerics -> (n, columns) float32 model inputs. Its arrays are weights
    (fixed, float64), so the saved config holds only the shapes."""

    def __init__(self, columns: int, segments: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.columns, self.segments = columns, segments

    def build(self, input_shape: Any) -> None:
        def fixed(name: str, *shape: int) -> Any:
            return self.add_weight(
                name=name, shape=shape, dtype="float64", initializer="zeros", trainable=False
            )

        self.fill, self.low, self.high = (
            fixed("fill", self.columns),
            *(fixed(n, self.columns) for n in ("low", "high")),
        )
        self.shaped = fixed("shaped", self.columns)  # 1 where a column has knots
        # per column and segment: its knots, the map's value at its left knot, its slope
        self.knot_low, self.knot_high, self.base, self.slope = (
            fixed(n, self.columns, self.segments)
            for n in ("knot_low", "knot_high", "base", "slope")
        )
        self.mean, self.scale = fixed("mean", self.columns), fixed("scale", self.columns)

    def call(self, x: Any) -> Any:
        x = ops.cast(x, "float64")
        x = ops.where(ops.isnan(x), self.fill, x)
        x = ops.minimum(ops.maximum(x, self.low), self.high)
        x = ops.where(self.shaped > 0, self._through_knots(x), x)
        return ops.cast((x - self.mean) / self.scale, "float32")

    def _through_knots(self, x: Any) -> Any:
        """Each column through its piecewise-linear map: the segment each value falls in (a
        binary search per column, so memory stays (rows, columns)), then its line, flat beyond
        the first and last knots."""
        import tensorflow as tf

        values = tf.transpose(x)  # (columns, rows): one sorted knot row per column
        segment = tf.searchsorted(tf.convert_to_tensor(self.knot_low), values, side="right") - 1
        segment = tf.clip_by_value(segment, 0, self.segments - 1)

        def at(weights: Any) -> Any:
            return tf.gather(tf.convert_to_tensor(weights), segment, batch_dims=1)

        low, high = at(self.knot_low), at(self.knot_high)
        mapped = at(self.base) + at(self.slope) * (tf.minimum(tf.maximum(values, low), high) - low)
        return tf.transpose(mapped)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"columns": self.columns, "segments": self.segments}

    @classmethod
    def fitted(cls, prep: Any, name: str = "numeric_preprocessing") -> NumericPreprocessing:
        """The layer for a fitted `tasks.features.Preprocessing`, its weights set."""
        columns = prep.numeric
        knots = [prep.quantiles.get(c) for c in columns]
        segments = max([len(k[0]) - 1 for k in knots if k] + [1])
        low, high, base, slope = (np.zeros((len(columns), segments)) for _ in range(4))
        shaped = np.zeros(len(columns))
        for j, pair in enumerate(knots):
            if not pair:
                continue
            k, s = (np.asarray(v, dtype=np.float64) for v in pair)
            k = np.concatenate([k, np.full(segments + 1 - len(k), k[-1])])  # flat padding
            s = np.concatenate([s, np.full(segments + 1 - len(s), s[-1])])
            width = np.diff(k)
            low[j], high[j], base[j], shaped[j] = k[:-1], k[1:], s[:-1], 1.0
            slope[j] = np.divide(np.diff(s), width, out=np.zeros(segments), where=width > 0)
        bounds = [prep.clip_bounds.get(c, (-np.inf, np.inf)) for c in columns]
        layer = cls(len(columns), segments, name=name)
        layer.build((None, len(columns)))
        layer.set_weights(
            [
                np.array([prep.impute_values.get(c, np.nan) for c in columns], dtype=np.float64),
                np.array([b[0] for b in bounds], dtype=np.float64),
                np.array([b[1] for b in bounds], dtype=np.float64),
                shaped,
                low,
                high,
                base,
                slope,
                np.array([prep.means[c] for c in columns], dtype=np.float64),
                np.array([prep.scales[c] for c in columns], dtype=np.float64),
            ]
        )
        return layer


@keras.saving.register_keras_serializable(package=PACKAGE)
class CodeOneHot(keras.layers.Layer):
    """(n, numerics + codes) network inputs -> (n, numerics + one-hot blocks), `codes` being
    the levels of each code column (`expand_codes`)."""

    def __init__(self, codes: list[int], **kwargs: Any):
        super().__init__(**kwargs)
        self.codes = [int(c) for c in codes]

    def call(self, x: Any) -> Any:
        return expand_codes(x, tuple(self.codes))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (input_shape[0], input_shape[1] - len(self.codes) + sum(self.codes))

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"codes": self.codes}


@keras.saving.register_keras_serializable(package=PACKAGE)
class CategoryOneHot(keras.layers.Layer):
    """(n, 1) category strings -> (n, levels) float32 one-hot; unseen -> zeros; "" (missing)
    -> `missing_as` when given."""

    def __init__(self, levels: list[str], missing_as: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.levels, self.missing_as = list(levels), missing_as

    def call(self, x: Any) -> Any:
        import tensorflow as tf

        x = tf.reshape(tf.convert_to_tensor(x, tf.string), (-1, 1))
        if self.missing_as is not None:
            x = tf.where(tf.equal(x, ""), tf.constant(self.missing_as), x)
        return tf.cast(tf.equal(x, tf.constant(self.levels)[None, :]), tf.float32)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (input_shape[0], len(self.levels))

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"levels": self.levels, "missing_as": self.missing_as}


@keras.saving.register_keras_serializable(package=PACKAGE)
class CategoryCode(CategoryOneHot):
    """(n, 1) category strings -> (n, 1) float32 codes: the level's position in `levels`;
    unseen -> -1; "" (missing) -> `missing_as`'s code when given."""

    def call(self, x: Any) -> Any:
        import tensorflow as tf

        hits = super().call(x)  # levels are distinct: at most one hit per row
        positions = tf.range(len(self.levels), dtype=tf.float32)[None, :]
        found = tf.reduce_sum(hits, axis=1, keepdims=True)
        return tf.reduce_sum(hits * positions, axis=1, keepdims=True) + found - 1.0

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (input_shape[0], 1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Calibrate(keras.layers.Layer):
    """The members' (n, 1) probabilities -> the calibrated probability (n, 1)."""

    def __init__(self, calibration: dict[str, Any], **kwargs: Any):
        super().__init__(**kwargs)
        self.calibration = Calibration.model_validate(calibration)

    def call(self, members: Any) -> Any:
        scores = [ops.cast(m, "float64") for m in members]
        return ops.cast(calibrated(self.calibration, scores, ops), "float32")

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape[0]

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"calibration": self.calibration.model_dump()}


@keras.saving.register_keras_serializable(package=PACKAGE)
class InputEmbedding(keras.layers.Layer):
    """(n, width) network inputs -> (n, out_width): `Embeddings.apply` for one network."""

    def __init__(
        self, width: int, numeric: int, categories: list[list[int]], seed: int = 0, **kwargs: Any
    ):
        super().__init__(**kwargs)
        self.embeddings = Embeddings(width, numeric, tuple(tuple(c) for c in categories))
        self.seed = seed

    def build(self, input_shape: Any) -> None:
        starts = self.embeddings.initial(self.seed)
        names = ["frequencies", "kernel", "bias"] if self.embeddings.numeric else []
        names += [f"category_{j}" for j in range(len(self.embeddings.categories))]

        def start(value: np.ndarray) -> Any:
            return lambda shape, dtype=None: value

        self.tables = [
            self.add_weight(name=name, shape=value.shape, initializer=start(value))
            for name, value in zip(names, starts, strict=True)
        ]

    def call(self, x: Any) -> Any:
        return self.embeddings.apply(x[None], [w[None] for w in self.tables])[0]

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (input_shape[0], self.embeddings.out_width)

    def get_config(self) -> dict[str, Any]:
        e = self.embeddings
        categories = [list(c) for c in e.categories]
        return super().get_config() | {
            "width": e.width,
            "numeric": e.numeric,
            "categories": categories,
            "seed": self.seed,
        }
