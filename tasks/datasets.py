"""Built-in datasets shipped inside installed packages (nothing is downloaded at run time)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    description: str
    target: str
    positive: str
    id: str | None
    loader: Callable[[], pd.DataFrame]

    def load(self) -> pd.DataFrame:
        return self.loader()


def _kaggle_name(sklearn_name: str) -> str:
    """'mean concave points' -> 'concave points_mean', 'radius error' -> 'radius_se'."""
    if sklearn_name.startswith("mean "):
        stem, suffix = sklearn_name.removeprefix("mean "), "_mean"
    elif sklearn_name.startswith("worst "):
        stem, suffix = sklearn_name.removeprefix("worst "), "_worst"
    else:
        stem, suffix = sklearn_name.removesuffix(" error"), "_se"
    if stem != "concave points":  # the Kaggle file keeps this one space
        stem = stem.replace(" ", "_")
    return stem + suffix


def _breast_cancer() -> pd.DataFrame:
    """scikit-learn's copy of the Wisconsin Diagnostic data in the Kaggle file's layout:
    `id`, `diagnosis` (M = malignant, the positive class; B = benign), then the 30 features."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    features = pd.DataFrame(bunch.data, columns=[_kaggle_name(n) for n in bunch.feature_names])
    # scikit-learn codes malignant as 0 and benign as 1.
    diagnosis = np.where(bunch.target == 0, "M", "B")
    frame = pd.concat(
        [
            pd.DataFrame({"id": np.arange(1, len(features) + 1), "diagnosis": diagnosis}),
            features,
        ],
        axis=1,
    )
    frame["diagnosis"] = frame["diagnosis"].astype("str")
    return frame


BUILTINS: dict[str, BuiltinDataset] = {
    "breast_cancer": BuiltinDataset(
        name="breast_cancer",
        description="Wisconsin Diagnostic Breast Cancer (scikit-learn copy, Kaggle layout), 569 "
        "rows, "
        "positive class M (malignant, 37%)",
        target="diagnosis",
        positive="M",
        id="id",
        loader=_breast_cancer,
    ),
}
