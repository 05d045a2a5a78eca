"""The one typed configuration object shared by the CLI, the flow, deployments and tests."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from upath import UPath

from tasks.errors import ConfigError
from tasks.storage import PROCESS_LOCAL_PROTOCOLS, check_location, location, protocol_of

log = logging.getLogger(__name__)

# Bump when the feature-building code changes what it writes: old feature sets are then rebuilt.
FEATURE_CODE_VERSION = 7
DEFAULT_MIN_STEPS = 2000  # see TrainConfig.min_steps and docs/quality.md
DEFAULT_MIN_PATIENCE_STEPS = 500

OutlierMethod = Literal["zscore", "iqr", "clip", "none"]
ImputeMethod = Literal["none", "median", "most_frequent"]
RankMetric = Literal["pr_auc", "roc_auc", "f1", "mcc", "balanced_accuracy", "g_mean", "objective"]


class DriftSettings(BaseModel):
    """Limits of the drift checks on new data (prediction) and new training data."""

    psi_warn: float = Field(0.1, gt=0, description="PSI that warns")
    psi_fail: float = Field(0.25, gt=0, description="PSI that fails")
    ks_warn: float = Field(0.2, gt=0, description="KS statistic that warns")
    rate_ratio_limit: float = Field(
        2.0, gt=1, description="predicted-positive rate ratio (either way) that fails"
    )
    action: Literal["warn", "fail"] = Field(
        "warn", description="on failing drift: warn and write, or fail and write nothing"
    )


class TrainConfig(BaseModel):
    """Everything a training run needs. CLI flags, YAML/JSON files and deployment parameters all
    build this object; `feature_settings()` is the subset that changes the stored features."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- data --------------------------------------------------------------------------
    data: str = Field("breast_cancer", description="CSV/CSV.GZ/parquet path or a built-in name")
    sep: str | None = Field(None, description="CSV delimiter; detected when not given")
    target: str | None = Field(None, description="target column (built-ins know theirs)")
    positive: str | None = Field(
        None, description="positive label, matched by its string form; default: minority class"
    )
    id: str | None = Field(None, description="id column: unique, kept out of the features")
    drop: list[str] = Field(default_factory=list, description="columns to ignore")
    categorical: list[str] = Field(default_factory=list, description="text/code columns to encode")
    impute: ImputeMethod = "none"
    max_categories: int = Field(
        1000, ge=2, description="most levels a categorical column may have (one-hot inputs)"
    )

    # --- split -------------------------------------------------------------------------
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    split_by: str | None = Field(
        None, description="'time:COL' trains on the past, tests on the future"
    )
    group: str | None = Field(None, description="no value of this column lands in two splits")

    # --- outliers ----------------------------------------------------------------------
    outlier: OutlierMethod = Field(
        "clip",
        description="clip: winsorise every split to training bounds; zscore/iqr: drop training "
        "rows "
        "of either class outside them; none",
    )
    outlier_z: float = Field(3.0, gt=0)
    outlier_iqr_k: float = Field(1.5, gt=0)

    # --- gates (limits passed to the Great Expectations suites as parameters) -------------
    min_class_count: int = Field(10, ge=1, description="raw gate: rows each class needs")
    min_positives_per_split: int = Field(5, ge=1, description="split gate: positives per split")
    min_positives_per_half: int = Field(
        5, ge=1, description="split gate: positives in each validation half (stop, tune)"
    )
    split_ratio_tolerance: float = Field(
        0.05, ge=0, description="split gate: |positive rate of a split - overall| allowed"
    )
    numeric_transform: Literal["quantile", "robust", "standard"] = Field(
        "quantile",
        description="quantile: each numeric column through its training quantiles onto normal "
        "scores, then standardised (robust to heavy tails and outliers); robust: centred on "
        "the training median, scaled by the interquartile range and smoothly clipped at 3 "
        "(linear in the bulk), then standardised; standard: standardised only",
    )
    max_removed_share: float = Field(
        0.2, ge=0, le=1, description="outlier gate: share of a class's training rows removable"
    )
    scale_tolerance: float = Field(1e-3, gt=0, description="feature gate: |mean|, |std-1| on train")

    # --- training ----------------------------------------------------------------------
    strategies: list[str] | None = Field(None, description="balancing strategies; default all")
    hidden: list[int] = Field(default_factory=lambda: [64, 32])
    dropout: float = Field(0.2, ge=0, lt=1)
    weight_decay: float | None = Field(
        None,
        ge=0,
        description="decoupled weight decay (AdamW): every step each weight shrinks by "
        "learning_rate x weight_decay of itself; default 5 below 2,000 training rows, 0 from "
        "there (docs/quality.md)",
    )
    linear_skip: bool = Field(
        True,
        description="add a linear path from the inputs to the output logit (a logistic "
        "regression inside every network)",
    )
    learning_rate: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="constant: the learning rate throughout; cosine: decays along a half cosine "
        "to 1% of it over the step budget (--epochs, --min-steps)",
    )
    numeric_embedding: Literal["auto", "none", "periodic"] = Field(
        "auto",
        description="periodic: each numeric column enters the network through a learned "
        "periodic embedding (16 frequencies, 8 wide; Gorishniy et al. 2022); none: as one "
        "input; auto: periodic from 2,000 to 50,000 training rows (docs/quality.md). Data with "
        "more than 256 numeric columns is never embedded",
    )
    category_embedding: Literal["one-hot", "embedding"] = Field(
        "embedding",
        description="embedding: a categorical column of 17 levels or more enters the network "
        "as a learned 8-wide vector per level; one-hot: one input per level",
    )
    search: int = Field(
        0,
        ge=0,
        le=36,
        description="also train N other configurations of learning rate, weight decay and "
        "dropout per strategy (drawn with the seed) and keep, per strategy, the one that scores "
        "best on the validation stop half; training takes about N+1 times as long (stacked "
        "trainer only)",
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description="rows per training step; default scales with the training rows: ~128 steps "
        "per epoch, a power of two from 256 to 4096",
    )
    epochs: int = Field(40, ge=1)
    patience: int = Field(
        4,
        ge=1,
        description="early stopping waits this many full passes without improvement on the "
        "stop half, and at least --min-patience-steps (docs/performance.md: 6 passes were ~770 "
        "steps on insurance, for under 0.001 of stop-half PR-AUC)",
    )
    min_steps: int | None = Field(
        None,
        ge=0,
        description="optimizer steps the training cap allows at least, however few passes "
        f"--epochs makes on small data; default {DEFAULT_MIN_STEPS}, or 0 when --epochs is given",
    )
    min_patience_steps: int | None = Field(
        None,
        ge=0,
        description="early stopping also waits at least this many optimizer steps without "
        f"improvement; default {DEFAULT_MIN_PATIENCE_STEPS}, or 0 when --epochs or --patience "
        "is given",
    )
    ensemble_k: int = Field(5, ge=1)
    objective: str = Field("f1", description="f1 | fbeta:B | cost:FP=a,FN=b | recall@precision:P")
    rank_by: RankMetric = "pr_auc"
    selection: Literal["reliable", "top"] = Field(
        "reliable",
        description="reliable: baseline, unless the strategy ranked first has a reliably higher "
        "PR-AUC on the validation tuning half (95% paired-bootstrap interval above zero; when "
        "ranking by pr_auc); top: the strategy ranked first",
    )
    allow_reference_champion: bool = Field(
        False,
        description="let the gradient-boosting reference be selected and shipped when it ranks "
        "first on the validation tuning half, under the same threshold tuning, export, card and "
        "registry rules (a scikit-learn model: no SavedModel)",
    )
    max_parallel: int = Field(2, ge=1, description="strategy branches trained at once")
    runner: Literal["threads", "dask"] = Field(
        "threads", description="where branches run: threads here, or a Dask cluster (prefect-dask)"
    )
    dask_address: str | None = Field(
        None,
        description="scheduler of an existing Dask cluster; default: a local cluster of "
        "max_parallel workers",
    )
    trainer: Literal["auto", "stacked", "separate"] = Field(
        "auto",
        description="stacked: the strategies' networks train side by side in one compiled "
        "program (one task); separate: one task per strategy, each network through Keras's own "
        "loop (the reference); auto: stacked unless the training split is streamed from the "
        "store",
    )
    tf_threads: int = Field(1, ge=1, description="TensorFlow intra/inter-op threads per process")
    retrain: bool = Field(
        False,
        description="train every branch, even one an earlier run trained on the same feature set "
        "with the same settings and code (by default its kept output is reused: tasks/reuse.py)",
    )
    memory_budget: str | None = Field(
        None,
        description="e.g. 2GB: strategies whose resampled copy of the training split would exceed "
        "it (SMOTE) are skipped with the reason; the others never copy the training split",
    )

    # --- reporting and export -------------------------------------------------------------
    repeats: int = Field(1, ge=1, description="train every strategy with N seeds; report mean ± sd")
    bootstrap: int = Field(
        2000,
        description="paired-bootstrap resamples for the verdict (at least 1000; promotion "
        "decisions "
        "use at least 2000)",
    )
    model_name: str | None = Field(None, description="registry name; default <dataset>-<target>")
    saved_model: bool = Field(
        True,
        description="export the TensorFlow SavedModel (saved_model/) beside model.keras; off "
        "saves ~2 s a run where only flows.predict or Keras will load the model",
    )
    data_docs: bool = Field(
        True,
        description="build Great Expectations Data Docs for the run's gates in <run>/gx/ (its "
        "suites, checkpoints and results are kept either way); off saves ~0.5 s a run",
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI (e.g. sqlite:///mlflow.db): track the run there and "
        "register its model; default: MLFLOW_TRACKING_URI, else none (needs .[mlflow])",
    )
    promote_metric: Literal["pr_auc", "objective"] = Field(
        "pr_auc", description="metric whose paired-bootstrap difference decides promotion"
    )
    promote_margin: float = Field(
        0.0,
        description="promote when the 95% interval's lower bound of (challenger - champion) "
        "exceeds this",
    )
    drift_psi_warn: float = Field(
        0.1, gt=0, description="retraining drift vs the champion: PSI that warns"
    )
    drift_psi_fail: float = Field(0.25, gt=0, description="PSI that fails")
    drift_ks_warn: float = Field(0.2, gt=0, description="KS that warns")
    drift_rate_ratio_limit: float = Field(
        2.0, gt=1, description="predicted-positive rate ratio that fails"
    )
    drift_action: Literal["warn", "fail"] = Field(
        "warn",
        description="on failing drift vs the champion's training data: warn, or fail the run",
    )

    # --- seeds and paths ----------------------------------------------------------------
    seed: int = 42
    runs_dir: str = Field(
        "runs",
        validation_alias=AliasChoices("runs_dir", "output"),  # `output`: the deprecated name
        description="where runs and the registry go: a path or fsspec URL (file://, s3://, "
        "memory://)",
    )
    store: str | None = Field(
        None, description="feature store path or fsspec URL; default <runs-dir>/store"
    )

    @model_validator(mode="before")
    @classmethod
    def _deprecated_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and "output" in data:
            log.warning("the setting `output` is deprecated: it is now `runs_dir` (--runs-dir)")
        return data

    @field_validator("drop", "categorical", "strategies", "hidden", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("model_name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        if value is not None:
            check_name(value, "--model-name")
        return value

    @field_validator("tracking_uri")
    @classmethod
    def _mlflow_installed(cls, value: str | None) -> str | None:
        """Refused before any work when MLflow is missing, not after the run completed."""
        import importlib.util

        if value and importlib.util.find_spec("mlflow") is None:
            raise ConfigError(f"--tracking-uri {value} needs MLflow: pip install -e '.[mlflow]'")
        return value

    @field_validator("bootstrap")
    @classmethod
    def _enough_resamples(cls, value: int) -> int:
        if value < 1000:
            raise ValueError(
                f"{value} bootstrap resamples give unstable 95% interval bounds; use at least 1000"
            )
        return value

    @field_validator("memory_budget")
    @classmethod
    def _size_form(cls, value: str | None) -> str | None:
        if value is not None:
            parse_size(value)
        return value

    @field_validator("split", mode="before")
    @classmethod
    def _split_tuple(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return tuple(float(part) for part in value.split(","))
            except ValueError as exc:
                raise ValueError(
                    f"--split expects three numbers like 0.6,0.2,0.2, got {value!r}"
                ) from exc
        return value

    @field_validator("split")
    @classmethod
    def _split_sums_to_one(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(part <= 0 for part in value) or abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"split shares must be positive and sum to 1, got {value}")
        return value

    @field_validator("split_by")
    @classmethod
    def _split_by_form(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("time:") or not value[5:]):
            raise ValueError(f"--split-by expects 'time:COLUMN', got {value!r}")
        return value

    @field_validator("objective")
    @classmethod
    def _objective_form(cls, value: str) -> str:
        from tasks.thresholds import parse_objective  # local: keeps the command line's start light

        parse_objective(value)
        return value

    @field_validator("strategies")
    @classmethod
    def _known_strategies(cls, value: list[str] | None) -> list[str] | None:
        from tasks.strategies import resolve_strategies  # local: the registry loads numpy

        return None if value is None else resolve_strategies(value)

    @field_validator("runs_dir", "store")
    @classmethod
    def _storage_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            check_location(value, f"--{info.field_name.replace('_', '-')}")
        return value

    @model_validator(mode="after")
    def _step_floors(self) -> TrainConfig:
        """The budget floors in optimizer steps, unless the user sized the run in passes."""
        given = self.model_fields_set
        if self.min_steps is None:
            self.__dict__["min_steps"] = 0 if "epochs" in given else DEFAULT_MIN_STEPS
        if self.min_patience_steps is None:
            floor = 0 if {"epochs", "patience"} & given else DEFAULT_MIN_PATIENCE_STEPS
            self.__dict__["min_patience_steps"] = floor
        return self

    @model_validator(mode="after")
    def _exclusive_split_modes(self) -> TrainConfig:
        if self.split_by and self.group:
            raise ValueError("--split-by and --group cannot be combined")
        return self

    @model_validator(mode="after")
    def _storage_reachable_from_workers(self) -> TrainConfig:
        if self.runner == "dask":
            for name, url in (("runs-dir", self.runs_dir), ("store", self.store)):
                if url is not None and protocol_of(url) in PROCESS_LOCAL_PROTOCOLS:
                    raise ValueError(
                        f"--{name} {url!r} lives in this process's memory, which Dask worker "
                        "processes cannot see; use --runner threads or a shared location"
                    )
        return self

    # --- derived values -------------------------------------------------------------------
    @property
    def time_column(self) -> str | None:
        return self.split_by[5:] if self.split_by else None

    @property
    def output_dir(self) -> UPath:
        return location(self.runs_dir)

    @property
    def store_dir(self) -> UPath:
        return location(self.store) if self.store else self.output_dir / "store"

    def drift_settings(self) -> DriftSettings:
        return DriftSettings(
            psi_warn=self.drift_psi_warn,
            psi_fail=self.drift_psi_fail,
            ks_warn=self.drift_ks_warn,
            rate_ratio_limit=self.drift_rate_ratio_limit,
            action=self.drift_action,
        )

    @property
    def memory_budget_bytes(self) -> int | None:
        return None if self.memory_budget is None else parse_size(self.memory_budget)

    @property
    def registry_dir(self) -> UPath:
        return self.output_dir / "registry"

    def resolved_model_name(self, target: str | None = None) -> str:
        """The registry name: --model-name, else `<dataset>-<target>`; `target` defaults to the
        configured one (or the built-in dataset's)."""
        if self.model_name:
            return self.model_name
        if target is None:
            from tasks.datasets import BUILTINS

            builtin = BUILTINS.get(self.data)
            target = self.target or (builtin.target if builtin else "target")
        dataset = Path(self.data).name.split(".")[0]
        return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{dataset}-{target}").lstrip("._-") or "model"

    def feature_settings(self) -> dict[str, Any]:
        """Exactly the settings that change the stored features (part of the fingerprint)."""
        keys = (
            "sep",
            "target",
            "positive",
            "id",
            "drop",
            "categorical",
            "impute",
            "split",
            "split_by",
            "group",
            "outlier",
            "outlier_z",
            "outlier_iqr_k",
            "numeric_transform",
            "seed",
            "min_positives_per_split",
            "min_positives_per_half",
            # the gates' limits: a stored set passed its gates under these; a stricter run rebuilds
            "min_class_count",
            "split_ratio_tolerance",
            "max_removed_share",
            "scale_tolerance",
            "max_categories",
        )
        settings = self.model_dump(include=set(keys), mode="json")
        settings["feature_code_version"] = FEATURE_CODE_VERSION
        return settings


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_name(value: str, what: str) -> str:
    """Registry names and run ids become file names: letters, digits, '_', '-', '.', no '..'."""
    if not SAFE_NAME.fullmatch(value) or ".." in value:
        raise ConfigError(
            f"{what} {value!r} is not a safe name: use letters, digits, '_', '-' and '.' "
            "(no path separators, no '..', at most 128 characters)"
        )
    return value


SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str) -> int:
    """'2GB', '512 MiB', '1.5gb', '1000000' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else None
    if match is None or unit not in SIZE_UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"expected a positive size like 2GB, 512MB or 1.5GiB, got {text!r}")
    return int(float(match.group(1)) * SIZE_UNITS[unit])


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict of TrainConfig fields."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"config file {path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}"
        ) from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of settings, got {type(loaded).__name__}"
        )
    return loaded
