"""Trained branches kept in the feature store, and reused when nothing that trains them changed.

A branch's training output - its scores on the stop, tune and test rows, its calibration, its
record of training, and its members' model files - depends only on the feature set, the
strategy, the repeat, the settings that shape training, the code and the libraries that run it:
training is seeded, and a network's result does not depend on which others share its program
(tasks.stacked). So a run whose branch has all of those in common with an earlier run's gets
that earlier branch's output, copied into its own run directory, instead of training again
(`--retrain` trains anyway). What follows training - the prediction gate, threshold tuning,
evaluation on test, selection, the comparisons - runs as always.

Layout: `<store>/branches/<feature set>/<key>/` with `scores.npz`, `scores.json`, `model/` (when
the branch saved one) and `manifest.json`, written last, holding every file's hash. A branch is
built in a scratch directory and published whole (tasks.storage.publish_dir), so a reader never
sees a partial one; one whose files do not match its manifest is ignored (and trained again).

The key covers every TrainConfig field except those listed in NOT_TRAINING (where results go,
what is done with the scores after training, which strategies run at all, how the work is
spread over workers), so a new setting is part of the key until someone decides otherwise; the
code is every module of the `tasks` package, hashed."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import platform
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from upath import UPath

from tasks import kept
from tasks.calibration import Calibration
from tasks.config import TrainConfig
from tasks.features import FeatureSet
from tasks.storage import (
    copy_tree,
    location,
    read_json,
)

log = logging.getLogger(__name__)

BRANCHES = "branches"  # in the store: branches/<feature set fingerprint>/<key>
MANIFEST = kept.MANIFEST
SCORES = "scores.npz"
RECORD = "scores.json"
MODEL = "model"
PARTS = ("stop", "tune", "test")
# TrainConfig fields that never change what a branch's training produces: where results go,
# what happens to the scores after training (thresholds, selection, comparisons, promotion,
# drift checks, reports), which strategies run and how many repeats (each branch's repeat index
# is in its key), and how branches are spread over workers (a network trains the same in any
# program: tasks.stacked). The data's bytes and the feature settings are the feature set's.
NOT_TRAINING = frozenset(
    {
        *("data", "runs_dir", "store", "model_name", "tracking_uri", "saved_model", "data_docs"),
        *("objective", "rank_by", "selection", "bootstrap", "promote_metric", "promote_margin"),
        *("drift_psi_warn", "drift_psi_fail", "drift_ks_warn", "drift_rate_ratio_limit"),
        *("drift_action", "strategies", "repeats", "max_parallel", "runner", "dask_address"),
        "retrain",
    }
)
KEPT_PER_BRANCH = 3  # versions kept per strategy, repeat and feature set (the newest)
LIBRARIES = ("tensorflow-cpu", "tensorflow", "keras", "numpy", "scikit-learn", "imbalanced-learn")


def source_hash(package: Path) -> str:
    """A hash of every Python module under `package`, with its path."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@cache
def code_version() -> str:
    """The `tasks` package's modules and the versions of the libraries that train, hashed."""
    digest = hashlib.sha256(source_hash(Path(__file__).parent).encode())
    for name in LIBRARIES:
        try:
            digest.update(f"{name}=={version(name)}".encode())
        except PackageNotFoundError:
            digest.update(f"{name} absent".encode())
    digest.update(platform.machine().encode())
    return digest.hexdigest()


def branch_key(name: str, repeat: int, config: TrainConfig) -> str:
    """What a branch's training depends on beyond its feature set, as one hash."""
    settings = config.model_dump(mode="json", exclude=set(NOT_TRAINING))
    payload = {"strategy": name, "repeat": repeat, "settings": settings, "code": code_version()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class Scores:
    """What a fitted branch hands to the shared finishing step (tasks.train.finish_branch), and
    what is kept of it."""

    probabilities: dict[str, np.ndarray]  # stop, tune, test: the raw score (members averaged)
    corrected: dict[str, np.ndarray]  # the same rows' calibrated probabilities
    calibration: Calibration
    trained_prior: float
    train_class_counts: dict[str, int]
    info: dict[str, Any]


def _directory(feature_set: FeatureSet, key: str) -> UPath:
    return kept_branch(feature_set.location.parent, feature_set.fingerprint, key)


def kept_branch(store: UPath, fingerprint: str, key: str) -> UPath:
    """Where a branch with this key is kept for the feature set `fingerprint`."""
    return store / BRANCHES / fingerprint / key


def restore(
    feature_set: FeatureSet, name: str, repeat: int, config: TrainConfig, branch_dir: UPath
) -> Scores | None:
    """The kept output of this branch, its model directory copied into `branch_dir`; or None
    (none kept, or files that do not match). Its `info["reused_from"]` names the run
    that trained it."""
    directory = _directory(feature_set, branch_key(name, repeat, config))
    manifest = kept.valid_manifest(directory, f"branch {name}")
    if manifest is None:
        return None
    try:
        arrays = np.load(io.BytesIO((directory / SCORES).read_bytes()))
        record = read_json(directory / RECORD)
        if (directory / MODEL).exists():
            copy_tree(directory / MODEL, branch_dir / MODEL)
        return Scores(
            probabilities={part: arrays[f"probabilities_{part}"] for part in PARTS},
            corrected={part: arrays[f"corrected_{part}"] for part in PARTS},
            calibration=Calibration.model_validate(record["calibration"]),
            trained_prior=float(record["trained_prior"]),
            train_class_counts=record["train_class_counts"],
            info=record["info"] | {"reused_from": manifest["trained_in"]},
        )
    except (OSError, KeyError, ValueError) as exc:
        log.warning("kept branch %s is unreadable (%s); training again", name, exc)
        return None


def keep(
    feature_set: FeatureSet,
    name: str,
    repeat: int,
    config: TrainConfig,
    scores: Scores,
    branch_dir: UPath,
) -> None:
    """Keep a freshly trained branch's output (and its model directory, when it saved one) for
    later runs; `branch_dir` is its directory in this run. A branch another run kept first
    stays as it is. Never fails the run: keeping is an optimisation, so a store that refuses
    the write only costs the next run a retrain. It is built in the store's directory, where
    tasks.runs.clean_stale sweeps what a killed run left."""
    directory = _directory(feature_set, branch_key(name, repeat, config))

    def fill(staging: Path) -> dict[str, Any]:
        _write(staging, scores, branch_dir)
        return {"strategy": name, "repeat": repeat, "trained_in": trained_in(branch_dir)}

    if kept.keep(feature_set.location.parent, directory, fill, f"branch {name}"):
        kept.prune(
            directory.parent,
            KEPT_PER_BRANCH,
            lambda m: m.get("strategy") == name and m.get("repeat") == repeat,
        )


def trained_in(branch_dir: UPath) -> str:
    """The run a branch directory belongs to (`<runs>/<run id>/branches/[repeat-r/]<name>`,
    or `<runs>/.<run id>.partial/...` while the run is being written), else the directory."""
    parts = location(branch_dir).parts
    if BRANCHES not in parts[1:]:
        return str(branch_dir)
    run = parts[len(parts) - 1 - parts[::-1].index(BRANCHES) - 1]
    if run.startswith(".") and run.endswith(".partial"):
        run = run[1 : -len(".partial")]
    return f"run {run}"


def _write(staging: Path, scores: Scores, branch_dir: UPath) -> None:
    arrays = {f"probabilities_{p}": scores.probabilities[p] for p in PARTS}
    arrays |= {f"corrected_{p}": scores.corrected[p] for p in PARTS}
    np.savez(staging / SCORES, **arrays)
    record = {
        "calibration": scores.calibration.model_dump(mode="json"),
        "trained_prior": scores.trained_prior,
        "train_class_counts": scores.train_class_counts,
        "info": scores.info,
    }
    (staging / RECORD).write_text(json.dumps(record, default=str))
    if (branch_dir / MODEL).exists():
        copy_tree(branch_dir / MODEL, staging / MODEL)
