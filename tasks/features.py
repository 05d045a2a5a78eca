"""Stage 4: fit the preprocessing on training rows, transform the three splits, store them.

Store layout: `<store>/<fingerprint>/{train,validation,test}.parquet`, `ids.parquet` (every row's
id, split and validation half), `preprocessing.json` and `manifest.json`, written last. A feature
set is built in a temporary directory and renamed into place, so a crash never leaves a
directory with a manifest and missing or partial files; a set without a valid manifest (files
present, hashes match) is never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from pydantic import BaseModel, PrivateAttr
from upath import UPath

from tasks import gates
from tasks.config import FEATURE_CODE_VERSION, TrainConfig
from tasks.ingest import (
    ID_COLUMN,
    MISSING_LEVEL,
    ROW_COLUMN,
    TARGET_COLUMN,
    IngestResult,
    LeakWatch,
    canonical_categories,
    is_whole,
)
from tasks.io import io_task_options
from tasks.outliers import OutlierResult
from tasks.split import HALF_COLUMN, SPLIT_COLUMN, SPLITS, SplitResult
from tasks.storage import (
    OWNER_FILE,
    changed_file,
    is_local,
    location,
    publish_dir,
    remove_tree,
    scratch_dir,
    sha256_of,
    write_json,
    write_parquet,
)

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
PREPROCESSING = "preprocessing.json"
DATA_FILES = (*(f"{name}.parquet" for name in SPLITS), "ids.parquet", PREPROCESSING)


class Preprocessing(BaseModel):
    """Everything needed to turn raw rows into model inputs, fitted on training rows only."""

    numeric: list[str]
    categorical: list[str]
    impute: str
    impute_values: dict[str, Any]
    clip_bounds: dict[str, tuple[float, float]]
    means: dict[str, float]
    scales: dict[str, float]
    categories: dict[str, list[str]]  # code = position in the list; unseen -> -1
    integer_valued: list[str] = []  # numerics whose training values are all whole numbers
    # normal-quantile transform, applied between clipping and scaling: per column, the knots
    # (increasing training quantiles) and the normal scores they map to; empty: none
    quantiles: dict[str, tuple[list[float], list[float]]] = {}
    dropped_constant: list[str]
    positive_label: str
    negative_label: str
    target: str
    id: str | None

    @property
    def feature_columns(self) -> list[str]:
        return self.numeric + self.categorical

    @property
    def cardinalities(self) -> list[int]:
        """Levels per categorical column, in column order: the widths of the one-hot blocks."""
        return [len(self.categories[c]) for c in self.categorical]

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Raw feature columns -> scaled float32 numerics and int32 category codes."""
        prepared = impute_and_clip(frame, self.numeric, self.impute_values, self.clip_bounds)
        shaped = normal_scores(prepared.to_numpy(), self.numeric, self.quantiles)
        scaled = ((shaped - self._means) / self._scales).astype("float32")
        numeric = pd.DataFrame(scaled, columns=self.numeric, index=frame.index)
        codes: dict[str, Any] = {}
        for column in self.categorical:
            values = canonical_categories(frame[column])
            if column in self.impute_values:
                values = values.fillna(self.impute_values[column])
            lookup = {category: code for code, category in enumerate(self.categories[column])}
            codes[column] = values.map(lookup).fillna(-1).astype("int32")
        if not codes:
            return numeric
        return pd.concat([numeric, pd.DataFrame(codes, index=frame.index)], axis=1)

    @property
    def _means(self) -> np.ndarray:
        return np.array([self.means[c] for c in self.numeric], dtype="float64")

    @property
    def _scales(self) -> np.ndarray:
        return np.array([self.scales[c] for c in self.numeric], dtype="float64")

    def snap_whole(self, numeric: np.ndarray) -> np.ndarray:
        """Scaled numerics (columns as in `numeric`) with each whole-number column moved to its
        nearest whole raw value, then clipped like real rows: for synthesised rows (SMOTE
        interpolates a 0/1 flag or a count to a value no real row has)."""
        out = np.array(numeric, dtype=np.float64, copy=True)
        whole = [j for j, c in enumerate(self.numeric) if c in self.integer_valued]
        if not whole:
            return out
        columns = [self.numeric[j] for j in whole]
        means, scales = self._means[whole], self._scales[whole]
        raw = np.round(raw_values(out[:, whole] * scales + means, columns, self.quantiles))
        low = [self.clip_bounds.get(c, (-np.inf, np.inf))[0] for c in columns]
        high = [self.clip_bounds.get(c, (-np.inf, np.inf))[1] for c in columns]
        shaped = normal_scores(np.clip(raw, low, high), columns, self.quantiles)
        out[:, whole] = (shaped - means) / scales
        return out


QUANTILE_KNOTS = 64  # knots of the normal-quantile transform per numeric column
Knots = dict[str, tuple[list[float], list[float]]]  # column -> (knots, normal scores)


SMOOTH_CLIP = 3.0  # the robust transform's soft bound: z -> z / sqrt(1 + (z / 3)^2)
NORMAL_IQR = 1.349  # the interquartile range of a standard normal


def fit_quantiles(prepared: pd.DataFrame, transform: str = "quantile") -> Knots:
    """Per column of imputed, clipped training values: the knots of a monotone piecewise-linear
    map (the values' own quantiles at QUANTILE_KNOTS evenly spaced levels, tied knots merged at
    their mean level) and what they map to; none for the `standard` transform.

    - quantile: normal scores - the levels' normal quantiles, the extremes at the plotting
      position of the smallest and largest of the m values, 1/(2m). Heavy tails and outliers
      land within a few units; only the ranks are kept.
    - robust: robust scaling, then smooth clipping (Holzmueller et al. 2024, RealMLP): z =
      (x - median) / (IQR / 1.349), or half the range when the IQR is 0; then z / sqrt(1 +
      (z/3)^2). Linear within the bulk (distances kept), tails bounded by 3. Through the same
      knots, so prediction and the out-of-core path apply it unchanged."""
    from scipy.special import ndtri

    if transform == "standard":
        return {}
    fitted = {}
    for column in prepared.columns:
        values = prepared[column].to_numpy(dtype="float64")
        values = values[~np.isnan(values)]
        if len(values) == 0:
            continue
        levels = np.linspace(0.0, 1.0, max(2, min(QUANTILE_KNOTS, len(values))))
        knots, inverse = np.unique(np.quantile(values, levels), return_inverse=True)
        if transform == "robust":
            low, median, high = np.quantile(values, [0.25, 0.5, 0.75])
            spread = (high - low) / NORMAL_IQR or (knots[-1] - knots[0]) / 2 or 1.0
            z = (knots - median) / spread
            scores = z / np.sqrt(1 + (z / SMOOTH_CLIP) ** 2)
        else:
            merged = np.bincount(inverse, weights=levels) / np.bincount(inverse)
            edge = 0.5 / len(values)
            scores = ndtri(np.clip(merged, edge, 1 - edge))
        fitted[column] = (knots.tolist(), scores.tolist())
    return fitted


def normal_scores(values: np.ndarray, columns: list[str], quantiles: Knots) -> np.ndarray:
    """The normal-quantile transform of `values` (columns as `columns`; a column without knots,
    or every column when `quantiles` is empty, passes unchanged; NaN stays NaN; values beyond the
    training range take the extreme scores)."""
    return _through_knots(values, columns, quantiles, inverse=False)


def raw_values(shaped: np.ndarray, columns: list[str], quantiles: Knots) -> np.ndarray:
    """The inverse of normal_scores within the training range."""
    return _through_knots(shaped, columns, quantiles, inverse=True)


def _through_knots(values: np.ndarray, columns: list[str], quantiles: Knots, inverse: bool):
    """Each column with knots through its piecewise-linear map (knots -> scores, or back)."""
    if not quantiles:
        return values
    out = np.array(values, dtype=np.float64, copy=True)
    for j, column in enumerate(columns):
        if column in quantiles:
            knots, scores = quantiles[column]
            points = (scores, knots) if inverse else (knots, scores)
            out[:, j] = np.interp(out[:, j], *points)
    return out


def impute_and_clip(
    frame: pd.DataFrame,
    columns: list[str],
    impute_values: dict[str, Any],
    clip_bounds: dict[str, tuple[float, float]],
) -> pd.DataFrame:
    """The numeric `columns` as float64 with each column's imputed value filled in, then
    clipped to its bounds: what the scaler is fitted on and applied to. One vectorised pass
    over all columns (a column without an imputed value keeps its NaN; without bounds, its
    range)."""
    values = frame[columns].to_numpy(dtype="float64", na_value=np.nan)
    fill = np.array([impute_values.get(c, np.nan) for c in columns], dtype="float64")
    values = np.where(np.isnan(values), fill, values)
    low = np.array([clip_bounds.get(c, (-np.inf, np.inf))[0] for c in columns], dtype="float64")
    high = np.array([clip_bounds.get(c, (-np.inf, np.inf))[1] for c in columns], dtype="float64")
    return pd.DataFrame(np.clip(values, low, high), columns=columns, index=frame.index)


def code_matrix(frame: pd.DataFrame, categorical: list[str]) -> np.ndarray:
    """The categorical code columns as an int32 matrix ((n, 0) when there are none)."""
    if not categorical:
        return np.zeros((len(frame), 0), np.int32)
    return frame[categorical].to_numpy(dtype=np.int32)


class FeatureSet(BaseModel):
    """Where a validated feature set lives; what later stages receive.

    Its manifest (which holds per-feature statistics: thousands of numbers per column) is not a
    field: Prefect walks every task parameter, element by element, and on wide data that walk
    cost more than the tasks. It is kept beside the fields, or read from the store on first use."""

    fingerprint: str
    path: str
    reused: bool
    _manifest: dict[str, Any] | None = PrivateAttr(default=None)

    def __init__(self, manifest: dict[str, Any] | None = None, **fields: Any):
        super().__init__(**fields)
        self._manifest = manifest

    @property
    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            self._manifest = json.loads((self.location / MANIFEST).read_text())
        return self._manifest

    @property
    def location(self) -> UPath:
        return location(self.path)

    def run_facts(self) -> dict[str, Any]:
        """What `run.json` says about the feature set a run used."""
        return {
            "data_fingerprint": self.fingerprint,
            "feature_set": self.path,
            "feature_set_reused": self.reused,
        }

    def split_path(self, name: str) -> UPath:
        return self.location / f"{name}.parquet"

    def preprocessing(self) -> Preprocessing:
        return Preprocessing.model_validate_json((self.location / PREPROCESSING).read_text())


def fingerprint(config: TrainConfig, source_sha256: str, out_of_core: bool = False) -> str:
    """Content address of a feature set: the source bytes, the feature settings, and the path
    that built it (the out-of-core path splits and fits quantiles differently)."""
    settings = config.feature_settings() | ({"out_of_core": True} if out_of_core else {})
    payload = json.dumps({"source": source_sha256, "settings": settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def fit_preprocessing(
    train: pd.DataFrame, ingest: IngestResult, config: TrainConfig, outliers: OutlierResult
) -> Preprocessing:
    numeric, categorical = list(ingest.roles.numeric), list(ingest.roles.categorical)
    impute_values: dict[str, Any] = {}
    if config.impute != "none":
        for column in numeric:  # every column: prediction-time rows may miss any of them
            value = (
                train[column].median()
                if config.impute == "median"
                else train[column].mode().iloc[0]
            )
            impute_values[column] = float(value)
        for column in categorical:
            impute_values[column] = str(train[column].astype("string").mode().iloc[0])
    clip_bounds = outliers.bounds if outliers.method == "clip" else {}

    prepared = impute_and_clip(train, numeric, impute_values, clip_bounds)
    quantiles = fit_quantiles(prepared, config.numeric_transform)
    prepared[:] = normal_scores(prepared.to_numpy(), numeric, quantiles)
    stds = prepared.std(ddof=0)
    constant = [c for c in numeric if not stds[c] > 0]
    if constant:
        log.warning("dropping columns constant on the training rows: %s", ", ".join(constant))
    kept = [c for c in numeric if c not in constant]
    categories = {}
    for column in categorical:
        values = train[column].astype("string")
        if column in impute_values:
            values = values.fillna(impute_values[column])
        categories[column] = sorted(values.dropna().unique().tolist())
    return Preprocessing(
        numeric=kept,
        categorical=categorical,
        impute=config.impute,
        impute_values={k: v for k, v in impute_values.items() if k not in constant},
        clip_bounds={k: v for k, v in clip_bounds.items() if k in kept},
        means={c: float(prepared[c].mean()) for c in kept},
        scales={c: float(stds[c]) for c in kept},
        quantiles={c: q for c, q in quantiles.items() if c in kept},
        categories=categories,
        dropped_constant=constant,
        integer_valued=[c for c in kept if is_whole(train[c].dropna().to_numpy(dtype="float64"))],
        positive_label=ingest.positive_label,
        negative_label=ingest.negative_label,
        target=ingest.roles.target,
        id=ingest.roles.id,
    )


DECILES = [i / 10 for i in range(1, 10)]
PERCENTILES = [i / 100 for i in range(101)]  # the deciles among them: rows 10, 20, ... 90


def histogram_bins(values: pd.Series, deciles: np.ndarray | None = None) -> dict[str, list[float]]:
    """Bins at the unique interior training deciles, with the exact training share in each
    (a value v falls in bin searchsorted(edges, v, side="right")). `deciles`: the values'
    deciles when already computed (feature_statistics takes them from its percentiles)."""
    values = values.dropna().to_numpy(dtype="float64")
    if not len(values):
        edges = np.array([])
    else:
        edges = np.unique(np.quantile(values, DECILES) if deciles is None else deciles)
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return {"edges": edges.tolist(), "shares": (counts / max(len(values), 1)).tolist()}


def feature_statistics(train: pd.DataFrame, prep: Preprocessing) -> dict[str, Any]:
    """Raw-unit statistics of the training rows per feature (schema and drift reference); the
    numeric ones computed for all columns at once."""
    stats: dict[str, Any] = {}
    matrix = train[prep.numeric].to_numpy(dtype="float64", na_value=np.nan)
    present = ~np.isnan(matrix)
    dtypes = train.dtypes
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column gives NaN
        percentiles = np.nanquantile(matrix, PERCENTILES, axis=0)
        means, stds = np.nanmean(matrix, axis=0), np.nanstd(matrix, axis=0)
    for j, column in enumerate(prep.numeric):
        stats[column] = {
            "kind": "numeric",
            "dtype": str(dtypes[column]),
            "mean": float(means[j]),
            "std": float(stds[j]),
            "percentiles": [float(q) for q in percentiles[:, j]],
            "bins": histogram_bins(pd.Series(matrix[present[:, j], j]), percentiles[10:91:10, j]),
            "missing_share": float(1 - present[:, j].mean()) if len(matrix) else 0.0,
            "approximate": False,
        }
    for column in prep.categorical:
        shares = train[column].astype("string").value_counts(normalize=True, dropna=False)
        stats[column] = {
            "kind": "categorical",
            "dtype": "string",
            "frequencies": {
                MISSING_LEVEL if pd.isna(k) else str(k): float(v) for k, v in shares.items()
            },
            "missing_share": float(train[column].isna().mean()),
        }
    return stats


def frames_gate(
    frames: dict[str, pd.DataFrame], prep: Preprocessing, config: TrainConfig
) -> dict[str, Any]:
    nonfinite = sum(
        int((~np.isfinite(frame[prep.numeric].to_numpy(dtype="float64"))).sum())
        for frame in frames.values()
    )
    columns_match = all(list(f.columns) == list(frames["train"].columns) for f in frames.values())
    return features_gate(frames["train"], nonfinite, columns_match, prep, config.scale_tolerance)


def features_gate(
    train: pd.DataFrame, nonfinite: int, columns_match: bool, prep: Preprocessing, tolerance: float
) -> dict[str, Any]:
    """The feature gate on the transformed training rows (or a sample of them, with a tolerance
    to match) and facts about every stored row."""
    n = len(train)
    sample_to_population = float(np.sqrt(n / (n - 1))) if n > 1 else 1.0
    facts = pd.DataFrame(
        [
            {
                "nonfinite_values": nonfinite,
                "columns_match": int(columns_match),
                "feature_count": len(prep.feature_columns),
            }
        ]
    )
    report = gates.validate(
        "features",
        "features",
        {"data": train, "facts": facts},
        {
            "feature_columns": prep.feature_columns,
            "scaled_columns": prep.numeric,
            "code_columns": prep.categorical,
        },
        {
            "scale_tolerance": tolerance,
            "neg_scale_tolerance": -tolerance,
            "min_train_std": 1 - tolerance,
            "max_train_std": sample_to_population + tolerance,
        },
    )
    return report.as_dict()


def build_manifest(
    config: TrainConfig,
    ingest: IngestResult,
    split: SplitResult,
    outliers: OutlierResult,
    prep: Preprocessing,
    layout: dict[str, Any],
    feature_stats: dict[str, Any],
    directory: Path,
    fp: str,
    gate: dict[str, Any],
) -> dict[str, Any]:
    """`layout`: the stored columns, their dtypes and rows/positives/negatives per split."""
    files = {
        name: {"sha256": sha256_of(directory / name), "bytes": (directory / name).stat().st_size}
        for name in DATA_FILES
    }
    return {
        "fingerprint": fp,
        "created_at": datetime.now(UTC).isoformat(),
        "feature_code_version": FEATURE_CODE_VERSION,
        "source": ingest.source,
        "source_sha256": ingest.source_sha256,
        "settings": config.feature_settings(),
        "out_of_core": ingest.out_of_core,
        "target": ingest.roles.target,
        "positive_label": ingest.positive_label,
        "negative_label": ingest.negative_label,
        "target_dtype": ingest.target_dtype,
        "id_column": ingest.roles.id,
        **layout,
        "features": {
            "numeric": prep.numeric,
            "categorical": prep.categorical,
            "dropped_constant": prep.dropped_constant,
        },
        "feature_stats": feature_stats,
        "validation_halves": split.halves,
        "split_method": split.method,
        "split_shares": split.shares,  # achieved, as close to the requested as the groups allow
        "feature_duplicates_across_splits": split.duplicates_across_splits,
        "ingest": {
            "rows": ingest.n_rows,
            "class_counts": ingest.class_counts,
            "exact_duplicate_rows": ingest.exact_duplicate_rows,
            "conflicting_duplicate_rows": ingest.conflicting_duplicate_rows,
            "notes": ingest.notes,
        },
        "outliers": outliers.model_dump(exclude={"removed_path", "gate"}),
        "gates": {"split": split.gate, "outliers": outliers.gate, "features": gate},
        "files": files,
        "versions": library_versions(),
    }


def split_layout(frames: dict[str, pd.DataFrame]) -> dict[str, Any]:
    train = frames["train"]
    return {
        "columns": list(train.columns),
        "dtypes": {c: str(t) for c, t in train.dtypes.items()},
        "splits": {
            name: {
                "rows": len(frame),
                "positives": int(frame[TARGET_COLUMN].sum()),
                "negatives": int(len(frame) - frame[TARGET_COLUMN].sum()),
            }
            for name, frame in frames.items()
        },
    }


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in (
        "pandas",
        "numpy",
        "pyarrow",
        "scikit-learn",
        "great-expectations",
        "prefect",
        "tensorflow-cpu",
        "keras",
        "imbalanced-learn",
    ):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def load_valid_feature_set(store: UPath, fp: str) -> FeatureSet | None:
    """Return the stored feature set if its manifest exists and every file's hash matches."""
    directory = store / fp
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        name = changed_file(directory, {n: i["sha256"] for n, i in manifest["files"].items()})
        if name is not None:
            log.warning("feature set %s is invalid: %s is missing or changed; rebuilding", fp, name)
            return None
    except (json.JSONDecodeError, KeyError, OSError) as exc:
        log.warning("feature set %s has an unreadable manifest (%s); rebuilding", fp, exc)
        return None
    return FeatureSet(fingerprint=fp, path=str(directory), reused=True, manifest=manifest)


@task(name="features", **io_task_options())
def build_features(
    config: TrainConfig, ingest: IngestResult, split: SplitResult, outliers: OutlierResult
) -> FeatureSet:
    raw = pd.read_parquet(ingest.raw_path)
    assignment = pd.read_parquet(
        split.assignment_path, columns=[ROW_COLUMN, SPLIT_COLUMN, HALF_COLUMN]
    )
    removed = set(pd.read_parquet(outliers.removed_path)[ROW_COLUMN])
    raw = raw.merge(assignment, on=ROW_COLUMN, how="left", validate="one_to_one")
    # the drift reference describes the raw training values, before any row is filtered
    reference = raw[raw[SPLIT_COLUMN] == "train"]
    raw = raw[~raw[ROW_COLUMN].isin(removed)]
    parts = {name: raw[raw[SPLIT_COLUMN] == name] for name in SPLITS}

    watch = LeakWatch(ingest.roles.features)
    watch.update(parts["train"], parts["train"][TARGET_COLUMN].to_numpy())
    watch.check()
    prep = fit_preprocessing(parts["train"], ingest, config, outliers)
    frames = {}
    for name, part in parts.items():
        frame = prep.transform(part)
        frame[TARGET_COLUMN] = part[TARGET_COLUMN].to_numpy(dtype="int8")
        frame[ID_COLUMN] = part[ID_COLUMN].to_numpy()
        frames[name] = frame.reset_index(drop=True)
    gate = frames_gate(frames, prep, config)

    def write(staging: Path, fp: str) -> dict[str, Any]:
        for name, frame in frames.items():
            write_parquet(staging / f"{name}.parquet", frame)
        ids = raw[[ID_COLUMN, SPLIT_COLUMN, HALF_COLUMN, TARGET_COLUMN]].rename(
            columns={SPLIT_COLUMN: "split", HALF_COLUMN: "half", TARGET_COLUMN: "y"}
        )
        write_parquet(staging / "ids.parquet", ids.reset_index(drop=True))
        (staging / PREPROCESSING).write_text(prep.model_dump_json(indent=2))
        return build_manifest(
            config,
            ingest,
            split,
            outliers,
            prep,
            split_layout(frames),
            feature_statistics(reference, prep),
            staging,
            fp,
            gate,
        )

    feature_set = commit_feature_set(config, ingest, write)
    log.info("stored feature set %s (%s rows train)", feature_set.fingerprint, len(frames["train"]))
    return feature_set


def commit_feature_set(config: TrainConfig, ingest: IngestResult, write) -> FeatureSet:
    """Build a feature set in a local scratch directory with `write(staging, fingerprint)`,
    which returns the manifest, written last; then publish the directory into the store (one
    rename on a local disk, the manifest uploaded last elsewhere). A set a concurrent run
    finished first is kept."""
    fp = fingerprint(config, ingest.source_sha256, ingest.out_of_core)
    store = config.store_dir
    staging = scratch_dir(store, f".{fp}.tmp-")
    try:
        manifest = write(staging, fp)
        write_json(staging / MANIFEST, manifest)  # last: its presence means the set is complete
        target = store / fp
        if target.exists():
            existing = load_valid_feature_set(store, fp)
            if existing is not None:  # a concurrent run finished the same set first
                return existing.model_copy(update={"reused": False})
            if is_local(target):  # a directory arrives whole by rename: this one is debris
                remove_tree(target)
            # on an object store it may be another worker's upload in progress: never delete
            # its files; the same content is written over them, the manifest last
        (staging / OWNER_FILE).unlink(missing_ok=True)
        publish_dir(staging, target, MANIFEST)
    finally:
        remove_tree(staging)
    return FeatureSet(fingerprint=fp, path=str(target), reused=False, manifest=manifest)
