"""Inspect and steer the model registry: `python -m flows.champion --help`.

python -m flows.champion list
python -m flows.champion show breast_cancer-diagnosis
python -m flows.champion rollback breast_cancer-diagnosis [--to RUN_ID]
python -m flows.champion promote breast_cancer-diagnosis RUN_ID
python -m flows.champion set-threshold breast_cancer-diagnosis --objective recall@precision:0.9
"""

from __future__ import annotations

if __name__ == "__main__":  # before Prefect's import: a running server hears about promotions
    from flows.server import use_running_server

    use_running_server()

import argparse
import sys
from collections.abc import Callable
from typing import Any

from flows.cli import add_deprecated_aliases, run_command
from tasks import events, registry
from tasks.storage import location

# commands that change the champion, announced as a promotion, with the reason from their answer
CHAMPION_MOVES: dict[str, Callable[[dict[str, Any]], str]] = {
    "rollback": lambda done: f"rollback from {done['previous']}",
    "promote": lambda done: f"manual promotion (champion was {done['previous']})",
    "set-threshold": lambda done: (
        f"threshold re-tuned to {done['threshold']:.6g} ({done['objective']}): "
        f"version {done['version']}"
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.champion",
        allow_abbrev=False,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--runs-dir", default="runs", help="where runs and the registry are (default: runs)"
    )
    add_deprecated_aliases(parser, "runs_dir", "--runs-dir")
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI whose registry follows (default: MLFLOW_TRACKING_URI, if set)",
    )
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
    registry_dir = location(args.runs_dir) / "registry"
    commands_by_name: dict[str, Callable[[], Any]] = {
        "list": lambda: registry.list_models(registry_dir),
        "show": lambda: registry.show(registry_dir, args.name),
        "rollback": lambda: registry.rollback(registry_dir, args.name, args.to, args.tracking_uri),
        "promote": lambda: registry.promote(
            registry_dir, args.name, args.run_id, args.tracking_uri
        ),
        "set-threshold": lambda: registry.set_threshold(
            registry_dir, args.name, args.objective, args.tracking_uri
        ),
    }

    def command() -> Any:
        done = commands_by_name[args.command]()
        if args.command in CHAMPION_MOVES:
            champion = registry.show(registry_dir, args.name)["champion"]
            events.model_promoted(
                args.name,
                champion["run_id"],
                CHAMPION_MOVES[args.command](done),
                champion["model_dir"],
                by=args.command,
            )
        return done

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
