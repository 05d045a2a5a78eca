"""Inspect and steer the model registry: `python -m flows.champion --help`.

python -m flows.champion list
python -m flows.champion show breast_cancer-diagnosis
python -m flows.champion rollback breast_cancer-diagnosis [--to RUN_ID]
python -m flows.champion promote breast_cancer-diagnosis RUN_ID
python -m flows.champion set-threshold breast_cancer-diagnosis --objective recall@precision:0.9
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from upath import UPath

from flows.cli import run_command
from tasks.config import check_name
from tasks.errors import ConfigError
from tasks.evaluate import evaluate
from tasks.export import (
    EVALUATION_FILE,
    MODEL_FILE,
    read_registry,
    registered_names,
    write_model_files,
    write_registry,
)
from tasks.storage import address, copy_file, location, locked, read_parquet
from tasks.thresholds import parse_objective, tune_threshold


def _registry(registry_dir: UPath, name: str) -> dict[str, Any]:
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


def rollback(registry_dir: UPath, name: str, to: str | None = None) -> dict[str, Any]:
    """Make an earlier champion model again (default: the one before the current; a threshold
    change made a model version of its own, so it rolls back too)."""
    path = registry_dir / f"{name}.json"
    with locked(path):
        registry = _registry(registry_dir, name)
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
        entry = _make_champion(
            registry, target, "rolled_back_to", f"rollback from {current['run_id']}"
        )
        write_registry(registry_dir, name, registry)
    return {
        "name": name,
        "champion": entry["run_id"],
        "model_dir": entry["model_dir"],
        "previous": current["run_id"],
    }


def _history_entry(registry: dict[str, Any], run_id: str) -> dict[str, Any]:
    matches = [e for e in registry["history"] if e["run_id"] == run_id]
    if not matches:
        runs = ", ".join(dict.fromkeys(e["run_id"] for e in registry["history"]))
        raise ConfigError(
            f"{registry['name']}: run {run_id!r} is not in the registry's history (runs: {runs})"
        )
    return matches[-1]


def promote(registry_dir: UPath, name: str, run_id: str) -> dict[str, Any]:
    """Make a recorded run's model champion by hand, recorded as a manual promotion."""
    path = registry_dir / f"{name}.json"
    with locked(path):
        registry = _registry(registry_dir, name)
        before = (registry.get("champion") or {}).get("run_id")
        entry = _make_champion(
            registry,
            _history_entry(registry, run_id),
            "promoted_manually",
            f"manual promotion (champion was {before})",
        )
        write_registry(registry_dir, name, registry)
    return {"name": name, "champion": entry["run_id"], "previous": before}


def set_threshold(registry_dir: UPath, name: str, objective_text: str) -> dict[str, Any]:
    """Re-tune the champion's threshold on its tuning-half predictions (no retraining) and
    register the result as a new model version beside it: the old version stays for rollback.
    Everything the threshold touches is recomputed from the predictions that travel with the
    model (test confusion matrix and metrics, tuning-half metrics, hence the reference
    predicted-positive rate drift compares against, and the model card)."""
    objective = parse_objective(objective_text)
    path = registry_dir / f"{name}.json"
    with locked(path):
        registry = _registry(registry_dir, name)
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
            if member.name != MODEL_FILE:
                copy_file(member, new_dir / member.name)
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
        _make_champion(registry, target, "threshold_changed", reason)
        write_registry(registry_dir, name, registry)
    return {
        "name": name,
        "run_id": champion["run_id"],
        "threshold": threshold,
        "objective": objective.label,
        "tuning_half_value": value,
        "previous": old,
        "version": version,
        "model_dir": address(new_dir),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.champion",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", default="runs", help="where the registry lives (default: runs)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="registered models and their champions")
    show = commands.add_parser("show", help="a model's champion and history")
    show.add_argument("name")
    back = commands.add_parser("rollback", help="make an earlier model champion again")
    back.add_argument("name")
    back.add_argument("--to", help="run id to restore (default: the previous champion)")
    manual = commands.add_parser("promote", help="make a recorded run's model champion by hand")
    manual.add_argument("name")
    manual.add_argument("run_id")
    thresh = commands.add_parser(
        "set-threshold", help="re-tune the champion's threshold without retraining"
    )
    thresh.add_argument("name")
    thresh.add_argument(
        "--objective", required=True, help="f1 | fbeta:B | cost:FP=a,FN=b | recall@precision:P"
    )
    args = parser.parse_args(argv)
    registry_dir = location(args.output) / "registry"
    commands_by_name: dict[str, Callable[[], Any]] = {
        "list": lambda: list_models(registry_dir),
        "show": lambda: _registry(registry_dir, args.name),
        "rollback": lambda: rollback(registry_dir, args.name, args.to),
        "promote": lambda: promote(registry_dir, args.name, args.run_id),
        "set-threshold": lambda: set_threshold(registry_dir, args.name, args.objective),
    }
    return run_command(commands_by_name[args.command])


if __name__ == "__main__":
    sys.exit(main())
