"""Inspect and steer the model registry: `python -m flows.champion --help`.

python -m flows.champion list
python -m flows.champion show breast_cancer-diagnosis
python -m flows.champion rollback breast_cancer-diagnosis [--to RUN_ID]
python -m flows.champion set-threshold breast_cancer-diagnosis --objective recall@precision:0.9
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from upath import UPath

from tasks.errors import ConfigError, ImbalanceFlowError
from tasks.export import MODEL_FILE, read_registry, registered_names
from tasks.storage import location, locked, read_parquet, write_json
from tasks.thresholds import parse_objective, tune_threshold


def _registry(registry_dir: UPath, name: str) -> dict[str, Any]:
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
        rows.append({"name": registry["name"], "champion": champion.get("run_id"), "strategy": champion.get("strategy"),
                     "pr_auc": (champion.get("metrics") or {}).get("pr_auc"), "events": len(registry["history"])})  # fmt: skip
    return rows


def rollback(registry_dir: UPath, name: str, to: str | None = None) -> dict[str, Any]:
    """Make an earlier promoted model champion again (default: the one before the current)."""
    path = registry_dir / f"{name}.json"
    with locked(path):
        registry = _registry(registry_dir, name)
        current = registry["champion"]["run_id"]
        promoted = [e for e in registry["history"] if e["event"] in ("promoted", "rolled_back_to")]
        if to is None:
            earlier = [e for e in promoted if e["run_id"] != current]
            if not earlier:
                raise ConfigError(
                    f"{name}: no earlier champion to roll back to (champion is {current})"
                )
            target = earlier[-1]
        else:
            matches = [e for e in registry["history"] if e["run_id"] == to]
            if not matches:
                runs = ", ".join(dict.fromkeys(e["run_id"] for e in registry["history"]))
                raise ConfigError(
                    f"{name}: run {to!r} is not in the registry's history (runs: {runs})"
                )
            target = matches[-1]
        if not (location(target["model_dir"]) / MODEL_FILE).is_file():
            raise ConfigError(
                f"{name}: the model of run {target['run_id']} is gone ({target['model_dir']})"
            )
        entry = {k: target[k] for k in ("run_id", "model_dir", "strategy", "metrics")} | {
            "recorded_at": datetime.now(UTC).isoformat()}  # fmt: skip
        registry["champion"] = entry
        registry["history"].append({**entry, "event": "rolled_back_to", "reason": f"rollback from {current}",
                                    "champion_before": current})  # fmt: skip
        write_json(path, registry)
    return {"name": name, "champion": entry["run_id"], "previous": current}


def set_threshold(registry_dir: UPath, name: str, objective_text: str) -> dict[str, Any]:
    """Re-tune the champion's threshold on its stored tuning-half predictions (no retraining)."""
    objective = parse_objective(objective_text)
    path = registry_dir / f"{name}.json"
    with locked(path):
        registry = _registry(registry_dir, name)
        champion = registry["champion"]
        model_dir = location(champion["model_dir"])
        meta = json.loads((model_dir / MODEL_FILE).read_text())
        predictions_file = model_dir.parent / "branches" / meta["strategy"] / "predictions.parquet"
        if not predictions_file.is_file():
            raise ConfigError(
                f"{name}: the champion's tuning-half predictions are gone ({predictions_file})"
            )
        tune = read_parquet(predictions_file).query("part == 'tune'")
        threshold, value = tune_threshold(tune.y.to_numpy(), tune.probability.to_numpy(), objective)
        old = {"threshold": meta["threshold"], "objective": meta["threshold_objective"]}
        meta |= {"threshold": threshold, "threshold_objective": objective.label,
                 "threshold_history": [*meta.get("threshold_history", []), {**old, "replaced_at": datetime.now(UTC).isoformat()}]}  # fmt: skip
        write_json(model_dir / MODEL_FILE, meta)
        registry["history"].append({**{k: champion[k] for k in ("run_id", "model_dir", "strategy", "metrics")},
                                    "event": "threshold_changed", "recorded_at": datetime.now(UTC).isoformat(),
                                    "reason": f"{old['objective']} {old['threshold']:.6g} -> {objective.label} {threshold:.6g} "
                                              f"(tuning-half value {value:.4f})"})  # fmt: skip
        write_json(path, registry)
    return {"name": name, "run_id": champion["run_id"], "threshold": threshold, "objective": objective.label,
            "tuning_half_value": value, "previous": old}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.champion", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--output", default="runs", help="where the registry lives (default: runs)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="registered models and their champions")
    show = commands.add_parser("show", help="a model's champion and history")
    show.add_argument("name")
    back = commands.add_parser("rollback", help="make an earlier model champion again")
    back.add_argument("name")
    back.add_argument("--to", help="run id to restore (default: the previous champion)")
    thresh = commands.add_parser(
        "set-threshold", help="re-tune the champion's threshold without retraining"
    )
    thresh.add_argument("name")
    thresh.add_argument(
        "--objective", required=True, help="f1 | fbeta:B | cost:FP=a,FN=b | recall@precision:P"
    )
    args = parser.parse_args(argv)
    registry_dir = location(args.output) / "registry"
    try:
        if args.command == "list":
            result: Any = list_models(registry_dir)
        elif args.command == "show":
            result = _registry(registry_dir, args.name)
        elif args.command == "rollback":
            result = rollback(registry_dir, args.name, args.to)
        else:
            result = set_threshold(registry_dir, args.name, args.objective)
    except ImbalanceFlowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
