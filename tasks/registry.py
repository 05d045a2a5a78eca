"""The model registry: which model of each name is champion, every decision that made it so,
and the commands that steer it (`python -m flows.champion`).

One JSON file per model name (`<output>/registry/<name>.json`: champion, candidates, history),
on any fsspec store, beside the seen rows of each entry (`<name>/seen/<run-id>.parquet`). Writes
keep the version they replace (`<name>.json.previous`, restored when the file is found corrupt)
and happen under the registry lock (`registry_lock`): runs of one name decide in turn.

`FileRegistry` is the storage backend; everything else reads and writes through it, so a second
backend (a tracking server's registry) replaces one class."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from prefect import task
from upath import UPath

from tasks.config import SAFE_NAME, check_name
from tasks.errors import ConfigError, DataInputError, StorageError
from tasks.evaluate import evaluate
from tasks.export import EVALUATION_FILE, MODEL_FILE, write_model_files
from tasks.io import io_task_options
from tasks.records import HEADLINE_METRICS, Decision, RegistryEntry
from tasks.storage import (
    address,
    copy_file,
    copy_tree,
    location,
    locked,
    read_parquet,
    read_pointer,
    write_json,
)
from tasks.thresholds import parse_objective, tune_threshold

log = logging.getLogger(__name__)
SEEN_ROWS_FILE = "seen_rows.parquet"  # in the run directory; a copy is kept with the entry


class RegistryBackend(Protocol):
    """The operations every registry implements: `FileRegistry` (the record the champion/
    challenger comparison reads: history and seen rows) and MLflow's model registry
    (`tasks.tracking.MlflowRegistry`, with --tracking-uri). The file registry goes first; the
    others follow its decisions."""

    def record(self, name: str, run_dir: UPath, decision: dict[str, Any]) -> dict[str, Any]:
        """Register the completed run in `run_dir`; champion if the decision promoted it."""
        ...

    def set_champion(self, name: str, entry: dict[str, Any], event: str, reason: str) -> Any:
        """Make `entry`'s model champion (a rollback, a manual promotion, a new threshold)."""
        ...


@dataclass(frozen=True)
class FileRegistry:
    """Registry files in one directory of any fsspec store."""

    directory: UPath

    def path(self, name: str) -> UPath:
        return self.directory / f"{name}.json"

    def read(self, name: str) -> dict[str, Any] | None:
        """A model name's registry; one found empty or corrupt (a crash mid-write on a disk that
        lost the rename's data) is restored from the previous version kept beside it."""
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            previous = self.directory / f"{name}.json.previous"
            if not previous.is_file():
                raise StorageError(
                    f"registry {path} is corrupt ({exc}) and has no previous version"
                ) from exc
            log.warning("registry %s is corrupt (%s); restoring its previous version", path, exc)
            registry = json.loads(previous.read_text())
            write_json(path, registry)
            return registry

    def write(self, name: str, registry: dict[str, Any]) -> None:
        """Write a registry, keeping the version it replaces as `<name>.json.previous`. Callers
        hold the registry lock."""
        path = self.path(name)
        if path.is_file():
            try:
                json.loads(path.read_text())
                copy_file(path, self.directory / f"{name}.json.previous")
            except (json.JSONDecodeError, UnicodeDecodeError):
                pass  # never keep a corrupt file as the fallback
        write_json(path, registry)

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.json"))

    def keep_seen_rows(self, name: str, run_id: str, seen_rows_file: UPath) -> UPath:
        """A copy of a run's seen rows kept with the registry: stores and runs may be cleaned."""
        kept = self.directory / name / "seen" / f"{run_id}.parquet"
        copy_file(seen_rows_file, kept)
        return kept

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        with locked(self.path(name)):
            yield

    def record(self, name: str, run_dir: UPath, decision: dict[str, Any]) -> dict[str, Any]:
        """Append the run to the history; champion when promoted, else a candidate."""
        meta = json.loads((run_dir / "model" / MODEL_FILE).read_text())
        registry = self.read(name) or {
            "name": name,
            "champion": None,
            "candidates": [],
            "history": [],
        }
        seen_copy = self.keep_seen_rows(name, run_dir.name, run_dir / SEEN_ROWS_FILE)
        entry = RegistryEntry.check(
            {
                "run_id": run_dir.name,
                "model_dir": address(run_dir / "model"),
                "strategy": meta["strategy"],
                "metrics": {k: meta["metrics"]["test"][k] for k in HEADLINE_METRICS},
                "seen_rows": address(seen_copy),
                "recorded_at": datetime.now(UTC).isoformat(),
            }
        )
        Decision.check(decision)
        event = {
            **entry,
            "event": "promoted" if decision["action"] == "promote" else "kept_champion",
            "reason": decision["reason"],
            "champion_before": decision.get("champion_run_id"),
            "interval": (decision.get("comparison") or {}).get(
                "pr_auc_interval" if decision.get("metric") == "pr_auc" else "objective_interval"
            ),
        }
        if decision["action"] == "promote":
            registry["champion"] = entry
        else:
            registry["candidates"].append(entry)
        registry["history"].append(event)
        self.write(name, registry)
        return {
            "decision": event["event"],
            "reason": decision["reason"],
            "registry": str(self.path(name)),
            "champion": registry["champion"]["run_id"],
        }

    def set_champion(
        self, name: str, entry: dict[str, Any], event: str, reason: str
    ) -> dict[str, Any]:
        registry = self.read(name)
        champion = _make_champion(registry, entry, event, reason)
        self.write(name, registry)
        return champion


def backends(registry_dir: UPath, tracking_uri: str | None = None) -> list[RegistryBackend]:
    """The file registry, then MLflow's when a tracking URI is configured (or in the env)."""
    from tasks.tracking import MlflowRegistry
    from tasks.tracking import tracking_uri as configured_uri

    uri = configured_uri(tracking_uri)
    if not uri:
        return [FileRegistry(registry_dir)]
    try:
        return [FileRegistry(registry_dir), MlflowRegistry(uri)]
    except ConfigError as exc:  # MLFLOW_TRACKING_URI set where MLflow is not installed
        log.error("%s; the file registry alone records this", exc)
        return [FileRegistry(registry_dir)]


def _follow(others: list[RegistryBackend], what: str, call: Any) -> dict[str, Any]:
    """Run `call` on the registries that follow the file registry. The file registry already
    holds the decision, so a follower that fails is reported, not raised."""
    answers: dict[str, Any] = {}
    for backend in others:
        kind = type(backend).__name__
        try:
            answers[kind] = call(backend)
        except Exception as exc:
            log.error("%s could not record %s: %s: %s", kind, what, type(exc).__name__, exc)
            answers[kind] = {"error": f"{type(exc).__name__}: {exc}"}
    return answers


def read_registry(registry_dir: UPath, name: str) -> dict[str, Any] | None:
    return FileRegistry(registry_dir).read(name)


def write_registry(registry_dir: UPath, name: str, registry: dict[str, Any]) -> None:
    FileRegistry(registry_dir).write(name, registry)


def registered_names(registry_dir: UPath) -> list[str]:
    return FileRegistry(registry_dir).names()


def registry_lock(registry_dir: UPath, name: str):
    """Held while a run or a command decides for this model name."""
    return FileRegistry(registry_dir).lock(name)


def resolve_model(model: str, registry_dir: UPath) -> UPath:
    """A model directory, a run directory (`<output>/latest` included, also on stores that
    have its pointer file instead of a symlink), or a registry name resolved to its champion."""
    path = location(model)
    if path.name == "model" and path.parent.name == "latest":
        path = path.parent
    if path.name == "latest" and not path.is_dir():
        path = read_pointer(path.parent, "latest") or path
    if (path / MODEL_FILE).is_file():
        return path
    if (path / "model" / MODEL_FILE).is_file():  # a run directory
        return path / "model"
    registry = (
        read_registry(registry_dir, model)
        if SAFE_NAME.fullmatch(model) and ".." not in model
        else None
    )
    if registry and registry.get("champion"):
        return location(registry["champion"]["model_dir"])
    raise DataInputError(
        f"no model at {model!r}: not a model directory and not a registered name "
        f"(registered in {registry_dir}: {', '.join(registered_names(registry_dir)) or 'none'})"
    )


# --- commands -------------------------------------------------------------------------------


def show(registry_dir: UPath, name: str) -> dict[str, Any]:
    """A model name's registry: champion, candidates and history."""
    check_name(name, "model name")
    registry = read_registry(registry_dir, name)
    if registry is None:
        known = ", ".join(registered_names(registry_dir)) or "none"
        raise ConfigError(f"no registered model {name!r} in {registry_dir} (registered: {known})")
    return registry


def list_models(registry_dir: UPath) -> list[dict[str, Any]]:
    rows = []
    for name in registered_names(registry_dir):
        registry = read_registry(registry_dir, name)
        champion = registry.get("champion") or {}
        rows.append(
            {
                "name": registry["name"],
                "champion": champion.get("run_id"),
                "strategy": champion.get("strategy"),
                "pr_auc": (champion.get("metrics") or {}).get("pr_auc"),
                "events": len(registry["history"]),
            }
        )
    return rows


CHAMPION_EVENTS = ("promoted", "promoted_manually", "rolled_back_to", "threshold_changed")
ENTRY_KEYS = ("run_id", "model_dir", "strategy", "metrics", "seen_rows", "version")


def _entry(event: dict[str, Any]) -> dict[str, Any]:
    return {k: event[k] for k in ENTRY_KEYS if k in event} | {
        "recorded_at": datetime.now(UTC).isoformat()
    }


def _make_champion(
    registry: dict[str, Any], target: dict[str, Any], event: str, reason: str
) -> dict[str, Any]:
    if not (location(target["model_dir"]) / MODEL_FILE).is_file():
        raise ConfigError(
            f"{registry['name']}: the model of run {target['run_id']} is gone "
            f"({target['model_dir']})"
        )
    entry = _entry(target)
    before = (registry.get("champion") or {}).get("run_id")
    registry["champion"] = entry
    registry["history"].append(
        {**entry, "event": event, "reason": reason, "champion_before": before}
    )
    return entry


def rollback(
    registry_dir: UPath, name: str, to: str | None = None, tracking_uri: str | None = None
) -> dict[str, Any]:
    """Make an earlier champion model again (default: the one before the current; a threshold
    change made a model version of its own, so it rolls back too)."""
    with registry_lock(registry_dir, name):
        registry = show(registry_dir, name)
        current = registry["champion"]
        if to is None:
            earlier = [
                e
                for e in registry["history"]
                if e["event"] in CHAMPION_EVENTS and e["model_dir"] != current["model_dir"]
            ]
            if not earlier:
                raise ConfigError(
                    f"{name}: no earlier champion to roll back to (champion is {current['run_id']})"
                )
            target = earlier[-1]
        else:
            target = _history_entry(registry, to)
        entry, followed = _move_champion(
            registry_dir,
            name,
            target,
            "rolled_back_to",
            f"rollback from {current['run_id']}",
            tracking_uri,
        )
    return {
        "name": name,
        "champion": entry["run_id"],
        "model_dir": entry["model_dir"],
        "previous": current["run_id"],
    } | followed


def _move_champion(
    registry_dir: UPath,
    name: str,
    target: dict[str, Any],
    event: str,
    reason: str,
    tracking_uri: str | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Make `target` champion in every registry (the file registry first). Returns the new
    champion entry and, when MLflow follows, its answer."""
    first, *others = backends(registry_dir, tracking_uri)
    entry = first.set_champion(name, target, event, reason)
    followed = _follow(others, event, lambda b: b.set_champion(name, entry, event, reason))
    return entry, ({"mlflow_version": followed["MlflowRegistry"]} if followed else {})


def _history_entry(registry: dict[str, Any], run_id: str) -> dict[str, Any]:
    matches = [e for e in registry["history"] if e["run_id"] == run_id]
    if not matches:
        runs = ", ".join(dict.fromkeys(e["run_id"] for e in registry["history"]))
        raise ConfigError(
            f"{registry['name']}: run {run_id!r} is not in the registry's history (runs: {runs})"
        )
    return matches[-1]


def promote(
    registry_dir: UPath, name: str, run_id: str, tracking_uri: str | None = None
) -> dict[str, Any]:
    """Make a recorded run's model champion by hand, recorded as a manual promotion."""
    with registry_lock(registry_dir, name):
        registry = show(registry_dir, name)
        before = (registry.get("champion") or {}).get("run_id")
        entry, followed = _move_champion(
            registry_dir,
            name,
            _history_entry(registry, run_id),
            "promoted_manually",
            f"manual promotion (champion was {before})",
            tracking_uri,
        )
    return {"name": name, "champion": entry["run_id"], "previous": before} | followed


def set_threshold(
    registry_dir: UPath, name: str, objective_text: str, tracking_uri: str | None = None
) -> dict[str, Any]:
    """Re-tune the champion's threshold on its tuning-half predictions (no retraining) and
    register the result as a new model version beside it: the old version stays for rollback.
    Everything the threshold touches is recomputed from the predictions that travel with the
    model (test confusion matrix and metrics, tuning-half metrics, hence the reference
    predicted-positive rate drift compares against, and the model card)."""
    objective = parse_objective(objective_text)
    with registry_lock(registry_dir, name):
        registry = show(registry_dir, name)
        champion = registry["champion"]
        model_dir = location(champion["model_dir"])
        meta = json.loads((model_dir / MODEL_FILE).read_text())
        evaluation_file = model_dir / EVALUATION_FILE
        if not evaluation_file.is_file():
            raise ConfigError(
                f"{name}: the champion carries no validation predictions ({evaluation_file}); "
                "it was exported by an older version: retrain to re-tune its threshold"
            )
        rows = read_parquet(evaluation_file)
        tune, test = (rows[rows.part == part] for part in ("tune", "test"))
        threshold, value = tune_threshold(tune.y.to_numpy(), tune.probability.to_numpy(), objective)
        old = {"threshold": meta["threshold"], "objective": meta["threshold_objective"]}
        version = int(meta.get("version", 1)) + 1
        new_dir = model_dir.parent / f"model-v{version}"
        for member in model_dir.iterdir():
            if member.name != MODEL_FILE:  # (the SavedModel's copy is rewritten with it)
                (copy_tree if member.is_dir() else copy_file)(member, new_dir / member.name)
        validation = evaluate(
            tune.y.to_numpy(),
            tune.probability.to_numpy(),
            threshold,
            tune.probability_corrected.to_numpy(),
        ) | {"objective": value}
        at_threshold = evaluate(
            test.y.to_numpy(),
            test.probability.to_numpy(),
            threshold,
            test.probability_corrected.to_numpy(),
        )
        meta |= {
            "threshold": threshold,
            "threshold_objective": objective.label,
            "version": version,
            "derived_from": address(model_dir),
            "created_at": datetime.now(UTC).isoformat(),
            "threshold_history": [
                *meta.get("threshold_history", []),
                {**old, "replaced_at": datetime.now(UTC).isoformat()},
            ],
        }
        meta["metrics"]["test"] |= {k: at_threshold[k] for k in meta["metrics"]["test"]}
        meta["metrics"]["validation_tuning_half"] = validation
        write_model_files(new_dir, meta)
        metrics = {k: meta["metrics"]["test"][k] for k in champion["metrics"]}
        target = {**champion, "model_dir": address(new_dir), "metrics": metrics, "version": version}
        reason = (
            f"{old['objective']} {old['threshold']:.6g} -> {objective.label} {threshold:.6g} "
            f"(tuning-half value {value:.4f}); new version {version}"
        )
        _, followed = _move_champion(
            registry_dir, name, target, "threshold_changed", reason, tracking_uri
        )
    return followed | {
        "name": name,
        "run_id": champion["run_id"],
        "threshold": threshold,
        "objective": objective.label,
        "tuning_half_value": value,
        "previous": old,
        "version": version,
        "model_dir": address(new_dir),
    }


# --- the training flow's record ---------------------------------------------------------------


@task(name="record-decision", **io_task_options())
def record_decision(
    registry_dir: UPath,
    model_name: str,
    run_dir: UPath,
    decision: dict[str, Any],
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Record the completed run in `run_dir` in every registry (the file registry first); make
    it champion when promoted. The caller holds the registry lock."""
    first, *others = backends(registry_dir, tracking_uri)
    answer = first.record(model_name, run_dir, decision)
    followed = _follow(
        others, f"run {run_dir.name}", lambda b: b.record(model_name, run_dir, decision)
    )
    return answer | ({"mlflow": followed["MlflowRegistry"]} if followed else {})
