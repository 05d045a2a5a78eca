"""The MLflow pyfunc model of a registered run, logged as "models from code": MLflow copies this
file beside the model's artifacts and runs it when the model is loaded (nothing is pickled).
Loading needs this project installed (`tasks.predict`).

Raw rows in; `probability`, `probability_corrected`, `label` and `is_positive` (at the tuned
threshold) out, from the standalone model in the `model_dir` artifact."""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class ThresholdedModel(PythonModel):
    def load_context(self, context):  # noqa: ANN001
        from upath import UPath

        from tasks.predict import LoadedModel

        self.model = LoadedModel(UPath(context.artifacts["model_dir"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:  # noqa: ANN001
        from tasks.predict import score

        return score(self.model, model_input)


mlflow.models.set_model(ThresholdedModel())
