"""Stage 5: one training branch per strategy (plus the reference model), threshold tuning on the
validation tuning half, test metrics for reporting, and selection on the tuning half."""

from __future__ import annotations

import csv
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from upath import UPath

from tasks import embeddings, gates, gx_run, progress, reuse, search
from tasks.calibration import Calibration, fit_platt
from tasks.config import TrainConfig
from tasks.errors import StrategyError
from tasks.evaluate import evaluate, threshold_metrics
from tasks.features import FeatureSet, Preprocessing, code_matrix
from tasks.ingest import ID_COLUMN, TARGET_COLUMN
from tasks.model import (
    BatchStream,
    Network,
    RowGroupStream,
    TrainSettings,
    auto_batch_size,
    configure_tensorflow,
    fit_member,
    member_scores,
    network_inputs,
    patience_gain,
    schedule,
    steps_per_epoch,
)
from tasks.progress import progress_key
from tasks.records import (
    AT_HALF,
    LEADERBOARD_COLUMNS,
    TEST_METRICS,
    THRESHOLD_METRICS,
    BoardLine,
    check_branch,
)
from tasks.reuse import Scores
from tasks.storage import (
    atomic_path,
    location,
    open_parquet,
    read_parquet,
    write_json,
    write_parquet,
)
from tasks.strategies import REFERENCE, STRATEGIES, Strategy
from tasks.thresholds import Objective, objective_values, parse_objective, tune_threshold

log = logging.getLogger(__name__)
PARTS = ("train", "stop", "tune", "test")


@dataclass
class Part:
    """One split's arrays. An out-of-core training split keeps only labels and ids in memory;
    its features stay in the store (`store`) and are streamed."""

    numeric: np.ndarray | None
    codes: np.ndarray | None
    y: np.ndarray
    ids: np.ndarray
    inputs: np.ndarray | None  # the network's input: scaled numerics, then category codes
    store: StoreRows | None = None

    @property
    def out_of_core(self) -> bool:
        return self.store is not None

    def widths(self) -> tuple[int, int, int]:
        """(numeric columns, category code columns, network inputs)."""
        if self.store is not None:
            return len(self.store.numeric), len(self.store.categorical), self.store.width
        return self.numeric.shape[1], self.codes.shape[1], self.inputs.shape[1]


class StoreRows:
    """A stored split read one parquet row group at a time (any fsspec store)."""

    def __init__(self, path: UPath, numeric: list[str], categorical: list[str]):
        self.path, self.numeric, self.categorical = path, numeric, categorical
        metadata = open_parquet(path).metadata
        self.sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
        self.width = len(numeric) + len(categorical)  # network inputs: one column per code

    def features(self, group: int) -> tuple[np.ndarray, np.ndarray]:
        """Scaled numerics (float32) and integer category codes of one row group."""
        frame = (
            open_parquet(self.path)
            .read_row_group(group, columns=[*self.numeric, *self.categorical])
            .to_pandas()
        )
        return frame[self.numeric].to_numpy(dtype=np.float32), code_matrix(frame, self.categorical)

    def inputs(self, group: int) -> np.ndarray:
        return network_inputs(*self.features(group))

    def gather(self, rows: np.ndarray, joined: bool = True) -> Any:
        """The given rows (sorted positions in the split), in one pass over the row groups:
        network inputs, or (numerics, codes) when `joined` is false."""
        starts = np.concatenate([[0], np.cumsum(self.sizes)])
        pieces = []
        for g in range(len(self.sizes)):
            inside = rows[(rows >= starts[g]) & (rows < starts[g + 1])] - starts[g]
            if len(inside):
                numeric, codes = self.features(g)
                pieces.append((numeric[inside], codes[inside]))
        numeric = np.concatenate([p[0] for p in pieces])
        codes = np.concatenate([p[1] for p in pieces])
        if not joined:
            return numeric, codes
        return network_inputs(numeric, codes)


class BranchFailed(Exception):
    """Raised by a branch so Prefect marks it failed; carries the record for the report."""

    def __init__(self, record: dict[str, Any]):
        self.record = record
        super().__init__(f"strategy {record['strategy']} failed: {record['error']}")

    def __reduce__(self):  # survive pickling to and from Dask workers with the record intact
        return (BranchFailed, (self.record,))


_PARTS_LOCK = threading.Lock()
_PARTS_CACHE: dict[str, dict[str, Part]] = {}


def shared_parts(feature_set: FeatureSet) -> dict[str, Part]:
    """The feature set's arrays, read once per process and shared read-only by the branches that
    run in it, so no branch reads the split files again."""
    with _PARTS_LOCK:
        if feature_set.fingerprint not in _PARTS_CACHE:
            _PARTS_CACHE.clear()  # one feature set at a time
            parts = load_parts(feature_set)
            for part in parts.values():
                for array in (part.numeric, part.codes, part.y, part.ids, part.inputs):
                    if array is not None:
                        array.flags.writeable = False
            _PARTS_CACHE[feature_set.fingerprint] = parts
        return _PARTS_CACHE[feature_set.fingerprint]


def release_parts() -> None:
    with _PARTS_LOCK:
        _PARTS_CACHE.clear()


def load_parts(feature_set: FeatureSet) -> dict[str, Part]:
    """train, stop (early stopping), tune (thresholds, selection) and test arrays. The training
    split of an out-of-core feature set stays in the store: only its labels and ids are read."""
    manifest = feature_set.manifest
    numeric, categorical = manifest["features"]["numeric"], manifest["features"]["categorical"]
    halves = read_parquet(feature_set.location / "ids.parquet", columns=[ID_COLUMN, "half"])
    halves = halves[halves["half"] != ""].set_index(ID_COLUMN)["half"]

    def part(frame: pd.DataFrame) -> Part:
        values, codes = frame[numeric].to_numpy(dtype=np.float32), code_matrix(frame, categorical)
        return Part(
            numeric=values,
            codes=codes,
            y=frame[TARGET_COLUMN].to_numpy(dtype=np.int64),
            ids=frame[ID_COLUMN].to_numpy(),
            inputs=network_inputs(values, codes),
        )

    def from_store(path: UPath) -> Part:
        frame = read_parquet(path, columns=[TARGET_COLUMN, ID_COLUMN])
        return Part(
            numeric=None,
            codes=None,
            y=frame[TARGET_COLUMN].to_numpy(dtype=np.int64),
            ids=frame[ID_COLUMN].to_numpy(),
            inputs=None,
            store=StoreRows(path, numeric, categorical),
        )

    validation = read_parquet(feature_set.split_path("validation"))
    half = validation[ID_COLUMN].map(halves)
    train_path = feature_set.split_path("train")
    return {
        "train": from_store(train_path)
        if manifest.get("out_of_core")
        else part(read_parquet(train_path)),
        "stop": part(validation[half == "stop"]),
        "tune": part(validation[half == "tune"]),
        "test": part(read_parquet(feature_set.split_path("test"))),
    }


def _counts(y: np.ndarray, labels: tuple[str, str]) -> dict[str, int]:
    positive, negative = labels
    return {positive: int(y.sum()), negative: int(len(y) - y.sum())}


SAMPLER_WORKING_MB = 64  # scikit-learn's working memory for a sampler's neighbour search


@dataclass
class Resampled:
    """A strategy's training rows: positions into the shared training arrays (no copy), or, for
    samplers that synthesise rows, new arrays."""

    rows: np.ndarray | None = None
    numeric: np.ndarray | None = None
    codes: np.ndarray | None = None
    y: np.ndarray | None = None


def resample(
    strategy: Strategy, part: Part, seed: int, prep: Preprocessing | None = None
) -> Resampled:
    """Apply the strategy's sampler to training rows only. Samplers that only pick rows (random
    under- and oversampling) are fitted on the row positions, so the features are never copied;
    synthesising samplers (SMOTE) get numerics and integer codes together, and their synthetic
    values of whole-number columns (counts, flags) are snapped back to whole numbers (`prep`)."""
    if strategy.sampler is None:
        return Resampled(rows=np.arange(len(part.y)))
    if not strategy.synthetic:
        positions, _ = strategy.sampler(seed, [], 1).fit_resample(
            np.arange(len(part.y))[:, None], part.y
        )
        return Resampled(rows=np.asarray(positions[:, 0]))
    import sklearn

    n_numeric = part.numeric.shape[1]
    stacked = np.hstack([part.numeric.astype(np.float64), part.codes.astype(np.float64)])
    categorical = list(range(n_numeric, stacked.shape[1]))
    sampler = strategy.sampler(seed, categorical, stacked.shape[1])
    # the neighbour search's distance chunks: scikit-learn's default of 1 GB took the insurance
    # run's peak from ~1.4 to ~3.5 GB; 64 MB chunks are as fast (docs/performance.md)
    with sklearn.config_context(working_memory=SAMPLER_WORKING_MB):
        x_res, y_res = sampler.fit_resample(stacked, part.y)
    numeric = x_res[:, :n_numeric]
    if prep is not None:
        numeric = prep.snap_whole(numeric)
    return Resampled(
        numeric=numeric.astype(np.float32),
        codes=np.rint(x_res[:, n_numeric:]).astype(np.int32),
        y=np.asarray(y_res, dtype=np.int64),
    )


def synthetic_copy_bytes(strategy: Strategy, part: Part) -> int:
    """Memory a synthesising sampler needs for its resampled training split: the float64 matrix
    it works on plus the float32 network inputs, for majority x 2 rows, and its neighbour
    search's working memory (0 for other strategies)."""
    if not strategy.synthetic:
        return 0
    rows = 2 * max(int(part.y.sum()), int(len(part.y) - part.y.sum()))
    n_numeric, n_codes, n_inputs = part.widths()
    return rows * (2 * 8 * (n_numeric + n_codes) + 4 * n_inputs) + SAMPLER_WORKING_MB * 2**20


def neural_settings(
    train: Part, stop_rows: int, config: TrainConfig, prep: Preprocessing
) -> TrainSettings:
    """The network and the schedule every strategy shares on this training split and a stop
    half of `stop_rows` rows."""
    batch = config.batch_size or auto_batch_size(len(train.y))
    minority = int(min(train.y.sum(), len(train.y) - train.y.sum()))
    n_numeric, _, width = train.widths()
    codes = tuple(prep.cardinalities)
    chosen = embeddings.choose(
        embeddings.expanded_width(width, codes),
        n_numeric,
        prep.cardinalities,
        embeddings.periodic_wanted(config.numeric_embedding, len(train.y)),
        config.category_embedding == "embedding",
    )
    return TrainSettings(
        hidden=tuple(config.hidden),
        dropout=config.dropout,
        learning_rate=config.learning_rate,
        batch_size=batch,
        linear_skip=config.linear_skip,
        weight_decay=(
            embeddings.default_weight_decay(len(train.y))
            if config.weight_decay is None
            else config.weight_decay
        ),
        lr_schedule=config.lr_schedule,
        embeddings=chosen,
        codes=codes,
        patience_gain=patience_gain(stop_rows),
        **schedule(
            len(train.y),
            minority,
            batch,
            config.epochs,
            config.patience,
            config.min_steps,
            config.min_patience_steps,
            stop_rows,
        ),
    )


@dataclass
class MemberPlan:
    """One member of a strategy, ready to train: its network and the labels its loss sees."""

    member: int
    network: Network
    seen: np.ndarray
    prior: float


def plan_members(
    strategy: Strategy,
    train: Part,
    config: TrainConfig,
    prep: Preprocessing,
    settings: TrainSettings,
    known: dict[tuple, MemberPlan] | None = None,
) -> list[MemberPlan]:
    """Resample the training split for each member and describe its network. A member that
    trains exactly like one already in `known` (same sampler, weights, loss, batches and seed:
    ensemble member 0 and `undersample`) is that member, not a second copy."""
    batch, plans = settings.batch_size, []
    for member in range(strategy.members(config.ensemble_k)):
        seed, balanced = config.seed + member, strategy.batches == "balanced"
        key = strategy.trains_like(seed)
        if known is not None and key in known:
            plans.append(dataclasses.replace(known[key], member=member))
            continue
        sample = resample(strategy, train, seed, prep)
        if sample.rows is None:  # synthesised rows: their own (budget-checked) copy
            x = network_inputs(sample.numeric, sample.codes)
            stream, seen = BatchStream(x, sample.y, batch, seed, balanced), sample.y
        elif train.out_of_core:  # out of core: positions into the stored split, read by row group
            stream = RowGroupStream(train.store, train.y, batch, seed, balanced, sample.rows)
            seen = train.y[sample.rows]
        else:  # positions into the shared arrays
            stream = BatchStream(train.inputs, train.y, batch, seed, balanced, sample.rows)
            seen = train.y[sample.rows]
        prior = strategy.effective_prior(seen)
        network = Network(
            stream=stream,
            seed=seed,
            output_bias=float(np.log(prior / (1 - prior))),
            loss=strategy.loss,
            focal_alpha=strategy.focal_alpha(seen),
            class_weight=strategy.class_weights(seen),
            calibration=strategy.calibration(seen, float(train.y.mean())),
        )
        plans.append(MemberPlan(member, network, seen, prior))
        if known is not None:
            known[key] = plans[-1]
    return plans


def neural_scores(
    strategy: Strategy,
    plans: list[MemberPlan],
    fitted: list[tuple[Any, dict[str, Any]]],
    parts: dict[str, Part],
    settings: TrainSettings,
    labels: tuple[str, str],
    model_dir: UPath,
) -> Scores:
    """Save a strategy's trained members and score the validation and test rows with them."""
    train = parts["train"]
    models, members = [], []
    for plan, (model, info) in zip(plans, fitted, strict=True):
        with atomic_path(model_dir / f"member_{plan.member}.keras") as tmp:
            model.save(tmp)
        models.append(model)
        members.append(
            info | {"train_class_counts": _counts(plan.seen, labels), "trained_prior": plan.prior}
        )
    # members differ only in their seed: one map serves them all
    calibration = plans[0].network.calibration
    inputs = {name: p.inputs for name, p in parts.items() if name != "train"}
    scores = {name: member_scores(models, x) for name, x in inputs.items()}
    raw = {name: np.mean(s, axis=0) for name, s in scores.items()}
    if calibration is None:
        calibration = fit_platt(raw["stop"], parts["stop"].y, "validation stop half")
    return Scores(
        probabilities=raw,
        corrected={name: calibration.apply(s) for name, s in scores.items()},
        calibration=calibration,
        trained_prior=members[0]["trained_prior"],
        train_class_counts=members[0]["train_class_counts"],
        info={
            "steps": int(sum(m["steps"] for m in members)),
            "train_seconds": round(sum(m["train_seconds"] for m in members), 3),
            "members": [{k: v for k, v in m.items() if k != "history"} for m in members],
            "history": [m["history"] for m in members],
            "schedule": {
                "batch_size": settings.batch_size,
                "steps_per_check": settings.steps_per_check,
                "max_steps": settings.max_checks * settings.steps_per_check,
                "patience_checks": settings.patience,
                "steps_per_full_pass": steps_per_epoch(len(train.y), settings.batch_size),
            },
            "training_data": "streamed from the store by row group"
            if train.out_of_core
            else "in memory",
        },
    )


def fit_neural(
    strategy: Strategy,
    parts: dict[str, Part],
    config: TrainConfig,
    prep: Preprocessing,
    labels: tuple[str, str],
    model_dir: UPath,
    line: str | None = None,
) -> Scores:
    """One strategy on its own, each member through Keras's own loop (the `separate` trainer),
    reporting to the progress board's `line` (default: the strategy's name)."""
    settings = neural_settings(parts["train"], len(parts["stop"].y), config, prep)
    plans = plan_members(strategy, parts["train"], config, prep, settings)
    stop = parts["stop"]
    key = line or strategy.name
    progress.start(key, len(plans), settings.max_checks * settings.steps_per_check)
    fitted = [
        fit_member(
            plan.network,
            stop.inputs,
            stop.y,
            settings,
            lambda step, best, m=plan.member: progress.update(key, step, best, member=m),
        )
        for plan in plans
    ]
    return neural_scores(strategy, plans, fitted, parts, settings, labels, model_dir)


REFERENCE_STREAMED_ROWS = 500_000  # out of core: the reference fits on a sample this large


def fit_reference(
    parts: dict[str, Part],
    config: TrainConfig,
    labels: tuple[str, str],
    model_dir: UPath | None = None,
) -> Scores:
    """scikit-learn HistGradientBoosting on the same rows, unbalanced; codes as categoricals. An
    out-of-core training split is sampled (seeded, at most REFERENCE_STREAMED_ROWS rows). With
    `model_dir` the fitted model is saved there (it may be shipped)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from tasks.reference import matrix, save

    train = parts["train"]
    info: dict[str, Any] = {}
    if train.out_of_core:
        rows = np.arange(len(train.y))
        if len(rows) > REFERENCE_STREAMED_ROWS:
            rng = np.random.default_rng(config.seed)
            rows = np.sort(rng.choice(rows, REFERENCE_STREAMED_ROWS, replace=False))
        x, y = matrix(*train.store.gather(rows, joined=False)), train.y[rows]
        info["trained_on"] = (
            f"{len(rows)} of {len(train.y)} training rows (seeded sample, out of core)"
        )
    else:
        x, y = matrix(train.numeric, train.codes), train.y
    n_numeric, n_codes, _ = train.widths()
    categorical = [n_numeric + j for j in range(n_codes)] or None
    # early stopping on a seeded 10% of the training rows (never the validation split): boosting
    # to the full 100 iterations over-fits small data and over-states its confidence
    model = HistGradientBoostingClassifier(
        categorical_features=categorical, random_state=config.seed, early_stopping=True
    )
    started = time.perf_counter()
    model.fit(x, y)
    seconds = time.perf_counter() - started
    if model_dir is not None:
        save(model, model_dir)
    probabilities = {
        n: model.predict_proba(matrix(parts[n].numeric, parts[n].codes))[:, 1]
        for n in ("stop", "tune", "test")
    }
    return Scores(
        probabilities=probabilities,
        corrected=probabilities,  # log loss under the true prior, early-stopped: no distortion
        calibration=Calibration(method="identity"),
        trained_prior=float(train.y.mean()),
        train_class_counts=_counts(train.y, labels),
        info={"steps": int(model.n_iter_), "train_seconds": round(seconds, 3), **info},
    )


def _prediction_gate(name: str, probabilities: dict[str, np.ndarray]) -> None:
    frame = pd.DataFrame(
        {"probability": np.concatenate([probabilities["tune"], probabilities["test"]])}
    )
    gates.validate(f"predictions[{name}]", "predictions", frame, {}, {})


def crossfit(
    stop: Part, tune: Part, p_stop: np.ndarray, p_tune: np.ndarray, objective: Objective
) -> dict[str, float]:
    """Threshold-dependent metrics measured honestly on the validation split: the threshold
    tuned on one half is scored on the other, both ways, and the two are averaged. Ranking by a
    metric on the very rows its threshold was tuned on would favour the noisiest scores."""
    values = []
    for (fit_y, fit_p), (eval_y, eval_p) in (
        ((stop.y, p_stop), (tune.y, p_tune)),
        ((tune.y, p_tune), (stop.y, p_stop)),
    ):
        try:
            threshold, _ = tune_threshold(fit_y, fit_p, objective)
        except StrategyError:  # no feasible threshold on that half: it flags nothing
            threshold = np.inf
        measured = threshold_metrics(eval_y, eval_p, threshold)
        cm = measured["confusion_matrix"]
        measured["objective"] = float(
            objective_values(cm["tp"], cm["fp"], cm["fn"], objective, n_rows=len(eval_y))
        )
        values.append(measured)
    return {k: float(np.mean([v[k] for v in values])) for k in THRESHOLD_METRICS}


def finish_branch(
    name: str, scores: Scores, parts: dict[str, Part], config: TrainConfig, out_dir: UPath
) -> dict[str, Any]:
    """Gate the predictions, tune the threshold on the tuning half, evaluate on test."""
    probabilities, corrected = scores.probabilities, scores.corrected
    _prediction_gate(name, probabilities)
    objective = parse_objective(config.objective)
    stop, tune, test = parts["stop"], parts["tune"], parts["test"]
    threshold, objective_value = tune_threshold(tune.y, probabilities["tune"], objective)
    true_prior = float(parts["train"].y.mean())
    validation = evaluate(tune.y, probabilities["tune"], threshold, corrected["tune"])
    validation["objective"] = objective_value
    validation["crossfit"] = crossfit(
        stop, tune, probabilities["stop"], probabilities["tune"], objective
    )
    at_threshold = evaluate(test.y, probabilities["test"], threshold, corrected["test"])
    at_half = evaluate(test.y, probabilities["test"], 0.5, corrected["test"])

    rows = [
        pd.DataFrame(
            {
                "part": part,
                ID_COLUMN: parts[part].ids,
                "y": parts[part].y,
                "probability": probabilities[part],
                "probability_corrected": corrected[part],
            }
        )
        for part in ("stop", "tune", "test")
    ]
    write_parquet(out_dir / "predictions.parquet", pd.concat(rows, ignore_index=True))
    if "history" in scores.info:
        write_json(out_dir / "history.json", scores.info["history"])
    return {
        "threshold": threshold,
        "threshold_objective": objective.label,
        "objective_value": objective_value,
        "steps": scores.info["steps"],
        "train_seconds": scores.info["train_seconds"],
        "train_class_counts": scores.train_class_counts,
        "trained_prior": scores.trained_prior,
        "true_prior": true_prior,
        "calibration": scores.calibration.model_dump() | {"summary": scores.calibration.summary},
        **{k: at_threshold[k] for k in TEST_METRICS},
        "at_0_5": at_half,
        "validation": validation,
        **{
            k: scores.info[k]
            for k in (
                *("members", "schedule", "training_data", "trained_on", "trainer", "search"),
                "reused_from",
            )
            if k in scores.info
        },
    }


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _started(name: str, config: TrainConfig) -> dict[str, Any]:
    return {
        "strategy": name,
        "status": "ok",
        "error": None,
        "started_at": _now(),
        "eligible": name != REFERENCE or config.allow_reference_champion,
    }


def _failed(record: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    log.error("strategy %s failed", record["strategy"], exc_info=exc)
    return record | {
        "status": "failed",
        "error": f"{type(exc).__name__}: {exc}",
        "finished_at": _now(),
    }


def _finished(record: dict[str, Any], config: TrainConfig) -> dict[str, Any]:
    record["finished_at"] = _now()
    check_branch(record)  # a missing or mistyped key fails here, naming it
    log.info(
        "strategy %s: tuning-half %s %.4f, threshold %.4f",
        record["strategy"],
        config.rank_by,
        rank_value(record, config.rank_by),
        record["threshold"],
    )
    return record


def skip_reason(name: str, train: Part, config: TrainConfig) -> str | None:
    """Why a strategy cannot run on this training split (a synthesising sampler's copy would
    not fit in memory), or None."""
    if name == REFERENCE or not STRATEGIES[name].synthetic:
        return None
    needed = synthetic_copy_bytes(STRATEGIES[name], train)
    if train.out_of_core:
        return (
            f"skipped: it synthesises rows from the whole training split in memory "
            f"(~{needed / 2**30:.2f} GiB), which this out-of-core run streams from the store"
        )
    budget = config.memory_budget_bytes
    if budget is not None and needed > budget:
        return (
            f"skipped: its resampled copy of the training split needs ~{needed / 2**30:.2f} GiB, "
            f"over --memory-budget {config.memory_budget}"
        )
    return None


def _skipped(record: dict[str, Any], reason: str) -> dict[str, Any]:
    log.warning("strategy %s %s", record["strategy"], reason)
    return record | {"status": "skipped", "error": reason, "finished_at": _now()}


def _labels(feature_set: FeatureSet) -> tuple[str, str]:
    manifest = feature_set.manifest
    return manifest["positive_label"], manifest["negative_label"]


@task(name="train-branch", cache_policy=NO_CACHE)
def train_branch(
    name: str,
    feature_set: FeatureSet,
    config: TrainConfig,
    out_dir: str,
    repeat: int = 0,
    gx_dir: str | None = None,
) -> dict[str, Any]:
    """Train and evaluate one strategy (or the reference) on its own. Raises BranchFailed with
    the record when anything goes wrong, so the task shows as failed and the run goes on. Its
    gate goes through the run's GX project at `gx_dir` (a Dask worker is in another process)."""
    with gx_run.recording(gx_dir):
        return _train_branch(name, feature_set, config, out_dir, repeat)


def _train_branch(
    name: str, feature_set: FeatureSet, config: TrainConfig, out_dir: str, repeat: int
) -> dict[str, Any]:
    record, key = _started(name, config), progress_key(name, repeat)
    progress.start(key)
    branch_dir = location(out_dir) / name
    try:
        parts = shared_parts(feature_set)
        reason = skip_reason(name, parts["train"], config)
        scores = None if reason else reused(feature_set, name, repeat, config, branch_dir)
        if reason:
            record = _skipped(record, reason)
        else:
            trained = scores is None
            if trained:
                scores = _fit_branch(name, feature_set, parts, config, branch_dir, key)
            record = _finished(
                record | finish_branch(name, scores, parts, config, branch_dir), config
            )
            if trained:
                reuse.keep(feature_set, name, repeat, config, scores, branch_dir)
    except Exception as exc:
        progress.finish(key, "failed")
        raise BranchFailed(_failed(record, exc)) from exc
    progress.finish(key, record["status"])
    return record


def _fit_branch(
    name: str,
    feature_set: FeatureSet,
    parts: dict[str, Part],
    config: TrainConfig,
    branch_dir: UPath,
    key: str,
) -> Scores:
    """Fit one strategy's networks (or the reference) on their own."""
    labels = _labels(feature_set)
    if name == REFERENCE:
        shippable = config.allow_reference_champion
        return fit_reference(parts, config, labels, branch_dir / "model" if shippable else None)
    configure_tensorflow(config.tf_threads)  # before TensorFlow starts, in any process
    strategy, prep = STRATEGIES[name], feature_set.preprocessing()
    return fit_neural(strategy, parts, config, prep, labels, branch_dir / "model", key)


def reused(
    feature_set: FeatureSet, name: str, repeat: int, config: TrainConfig, branch_dir: UPath
) -> Scores | None:
    """The output of this branch as an earlier run trained it (tasks.reuse), unless --retrain."""
    if config.retrain:
        return None
    scores = reuse.restore(feature_set, name, repeat, config, branch_dir)
    if scores is not None:
        log.info(
            "strategy %s: reusing what %s trained (same feature set, settings and code)",
            name,
            scores.info["reused_from"],
        )
    return scores


def _fit_together(
    networks: list[Network],
    stop: Part,
    settings: TrainSettings,
    on_check: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> list[tuple[Any, dict[str, Any]] | BaseException]:
    """The networks trained side by side; should the program itself fail, one at a time, so a
    failure reaches only the strategies whose own network fails."""
    from tasks.stacked import fit_stacked

    try:
        return list(fit_stacked(networks, stop.inputs, stop.y, settings, on_check))
    except Exception:
        log.exception(
            "stacked training failed; training the %d networks one at a time", len(networks)
        )
    results: list[tuple[Any, dict[str, Any]] | BaseException] = []
    for network in networks:
        try:
            results.append(fit_member(network, stop.inputs, stop.y, settings))
        except Exception as exc:
            results.append(exc)
    return results


def _fit_candidates(
    plans: dict[str, list[MemberPlan]],
    networks: list[Network],
    stop: Part,
    options: list[TrainSettings],
    repeat: int,
) -> list[dict[int, tuple[Any, dict[str, Any]] | BaseException]]:
    """The networks trained side by side once per configuration (`--search`; one without),
    each network's result by `id(network)`. Progress lines count every configuration's steps."""
    total = options[0].max_checks * options[0].steps_per_check
    on_check = _stack_progress(plans, networks, total * len(options), repeat)
    runs = []
    for n, settings in enumerate(options):

        def report(steps: np.ndarray, best: np.ndarray, done: int = n * total) -> None:
            on_check(steps + done, best)

        trained = _fit_together(networks, stop, settings, report)
        runs.append(dict(zip(map(id, networks), trained, strict=True)))
    return runs


def _stack_progress(
    plans: dict[str, list[MemberPlan]], networks: list[Network], total: int, repeat: int
) -> Callable[[np.ndarray, np.ndarray], None]:
    """Start each planned strategy's progress line; the callback that updates them from the
    stacked program's per-network steps and best stop-half scores."""
    position = {id(network): i for i, network in enumerate(networks)}
    rows = {
        progress_key(name, repeat): [position[id(p.network)] for p in planned]
        for name, planned in plans.items()
    }
    for key, members in rows.items():
        progress.start(key, len(members), total)

    def on_check(steps: np.ndarray, best: np.ndarray) -> None:
        for key, members in rows.items():
            progress.update(key, int(steps[members].max()), float(best[members].max()))

    return on_check


@task(name="train-stack", cache_policy=NO_CACHE)
def train_stack(
    names: list[str],
    feature_set: FeatureSet,
    config: TrainConfig,
    out_dir: str,
    repeat: int = 0,
    gx_dir: str | None = None,
) -> list[dict[str, Any]]:
    """Train and evaluate several strategies whose networks train side by side in one compiled
    program (tasks.stacked), then tune and evaluate each on its own. Returns one record per
    strategy, failed or skipped ones included: a strategy that fails never sinks the others.
    Their gates go through the run's GX project at `gx_dir`."""
    with gx_run.recording(gx_dir):
        return _train_stack(names, feature_set, config, out_dir, repeat)


def _train_stack(
    names: list[str], feature_set: FeatureSet, config: TrainConfig, out_dir: str, repeat: int
) -> list[dict[str, Any]]:
    parts = shared_parts(feature_set)
    records = {name: _started(name, config) for name in names}
    fresh = []
    for name in names:
        branch_dir = location(out_dir) / name
        try:
            reason = skip_reason(name, parts["train"], config)
            scores = None if reason else reused(feature_set, name, repeat, config, branch_dir)
            if reason:
                records[name] = _skipped(records[name], reason)
            elif scores is None:
                fresh.append(name)
            else:
                progress.start(progress_key(name, repeat))
                records[name] |= finish_branch(name, scores, parts, config, branch_dir)
                records[name] = _finished(records[name], config)
        except Exception as exc:
            records[name] = _failed(records[name], exc)
    if fresh:
        records |= _fit_stack(fresh, records, feature_set, parts, config, out_dir, repeat)
    for name in names:
        progress.finish(progress_key(name, repeat), records[name]["status"])
    return [records[name] for name in names]


def _fit_stack(
    names: list[str],
    records: dict[str, dict[str, Any]],
    feature_set: FeatureSet,
    parts: dict[str, Part],
    config: TrainConfig,
    out_dir: str,
    repeat: int,
) -> dict[str, dict[str, Any]]:
    """Train these strategies' networks side by side, then finish each branch and keep its
    output for later runs (tasks.reuse); their updated records."""
    configure_tensorflow(config.tf_threads)  # before TensorFlow starts, in any process
    records = {name: records[name] for name in names}
    train, stop = parts["train"], parts["stop"]
    prep, labels = feature_set.preprocessing(), _labels(feature_set)
    settings = neural_settings(train, len(stop.y), config, prep)
    plans: dict[str, list[MemberPlan]] = {}
    known: dict[tuple, MemberPlan] = {}
    for name in names:
        try:
            plans[name] = plan_members(STRATEGIES[name], train, config, prep, settings, known)
        except Exception as exc:
            records[name] = _failed(records[name], exc)
    networks = list({id(p.network): p.network for ps in plans.values() for p in ps}.values())
    options = search.candidates(settings, config.search, config.seed)
    fitted = _fit_candidates(plans, networks, stop, options, repeat)
    log.info(
        "%d strategies trained side by side: %d networks in one program, %d configuration(s)",
        len(plans),
        len(networks),
        len(options),
    )
    for name, planned in plans.items():
        branch_dir = location(out_dir) / name
        try:
            chosen, stop_scores = search.choose(
                [[run[id(p.network)] for p in planned] for run in fitted]
            )
            results = [fitted[chosen][id(p.network)] for p in planned]
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            strategy = STRATEGIES[name]
            scores = neural_scores(
                strategy, planned, results, parts, options[chosen], labels, branch_dir / "model"
            )
            scores.info["trainer"] = f"stacked: {len(networks)} networks in one program"
            if config.search:
                scores.info["search"] = search.record(options, chosen, stop_scores)
            records[name] |= finish_branch(name, scores, parts, config, branch_dir)
            records[name] = _finished(records[name], config)
            reuse.keep(feature_set, name, repeat, config, scores, branch_dir)
        except Exception as exc:
            records[name] = _failed(records[name], exc)
    return records


def rank_value(record: dict[str, Any], rank_by: str) -> float:
    """The validation figure strategies are ranked by: threshold-free metrics on the tuning
    half, threshold-dependent ones cross-fitted over the two validation halves."""
    if rank_by in THRESHOLD_METRICS:
        return float(record["validation"]["crossfit"][rank_by])
    return float(record["validation"][rank_by])


def select(records: list[dict[str, Any]], rank_by: str) -> tuple[list[dict[str, Any]], str | None]:
    """Rank ok branches by the tuning-half metric (never test); the best eligible one is selected.
    Failed and skipped branches follow, unranked."""
    ok = sorted((r for r in records if r["status"] == "ok"), key=lambda r: -rank_value(r, rank_by))
    for position, record in enumerate(ok, start=1):
        record["rank"] = position
    selected = next((r["strategy"] for r in ok if r.get("eligible")), None)
    rest = [r | {"rank": None} for r in records if r["status"] != "ok"]
    return ok + rest, selected


def board_lines(records: list[dict[str, Any]], rank_by: str) -> list[BoardLine]:
    """The ranked records as the closing summary's leaderboard lines."""
    lines = []
    for r in records:
        ok = r["status"] == "ok"
        lines.append(
            BoardLine(
                rank=r.get("rank"),
                strategy=r["strategy"],
                status=r["status"],
                eligible=bool(r.get("eligible")),
                validation=rank_value(r, rank_by) if ok else None,
                test_pr_auc=r["pr_auc"] if ok else None,
                **(
                    {key: r[key] for key in ("f1", "precision", "recall", "threshold")}
                    if ok
                    else {}
                ),
                error=r.get("error"),
                reused_from=r.get("reused_from"),
            )
        )
    return lines


def write_leaderboard(path: UPath, records: list[dict[str, Any]], rank_by: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LEADERBOARD_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in records:
            row = dict(r)
            if r["status"] == "ok":
                row["validation_rank_metric"] = rank_value(r, rank_by)
                row["calibration_method"] = r["calibration"]["method"]
                row |= {f"{k}_at_0_5": r["at_0_5"][k] for k in AT_HALF}
            writer.writerow(row)
