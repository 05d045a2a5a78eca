"""Batch prediction with an exported model: `python -m flows.predict --help`."""

from __future__ import annotations

if __name__ == "__main__":  # before Prefect's import: a server running here serves this run
    from flows.server import use_running_server

    use_running_server()

import argparse
import logging
from pathlib import Path
from typing import Any, Literal

from prefect import flow
from prefect.runtime import flow_run

from flows.cli import add_deprecated_aliases, exit_now, run_command
from flows.console import configure_logging
from flows.server import heartbeats_only_to_a_lasting_server, start_temporary_server
from tasks.config import DriftSettings
from tasks.datasets import BUILTINS
from tasks.io import existing_file
from tasks.predict import check_output, predict_file
from tasks.registry import resolve_model
from tasks.storage import location

DEFAULT_DRIFT = DriftSettings()
log = logging.getLogger(__name__)


PREDICT_EXAMPLES = """\
examples:
  python -m flows.predict --model runs/latest/model --data new.csv --out scored.parquet
  python -m flows.predict --model breast_cancer-diagnosis --data new.parquet --out scored.csv

exit codes: 0 success, 2 bad input (missing columns, wrong types, rows that cannot be scored),
1 internal error
"""


def _flow_run_name() -> str:
    """`predict-<model>-<start time>-<id>`: unique in the UI."""
    model = Path(str(flow_run.parameters.get("model", "model"))).name
    short = (flow_run.id or "").replace("-", "")[:8]
    return f"predict-{model}-{flow_run.scheduled_start_time:%Y%m%dT%H%M%S}-{short}"


@flow(name="imbalance-predict", flow_run_name=_flow_run_name, log_prints=True)
def predict_flow(
    model: str,
    data: str,
    out: str,
    runs_dir: str = "runs",
    sep: str | None = None,
    drift: DriftSettings = DEFAULT_DRIFT,
    on_bad_rows: Literal["refuse", "skip"] = "refuse",
    on_unseen: Literal["score", "refuse"] = "score",
    output: str | None = None,
) -> dict[str, Any]:
    """Score `data` with a model directory or the champion of a registered name; write parquet
    (or CSV for an `.csv` path) with `probability`, `probability_corrected`, `label`,
    `is_positive` (and the id column when present). `output` is the deprecated name of
    `runs_dir`."""
    if output is not None:
        log.warning("the parameter `output` is deprecated: it is now `runs_dir`")
        runs_dir = output
    model_dir = resolve_model(model, location(runs_dir) / "registry")
    return predict_file(model_dir, data, location(out), sep, drift, on_bad_rows, on_unseen) | {
        "model": str(model_dir)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.predict",
        allow_abbrev=False,
        description="Score a CSV or parquet file with an exported model.",
        epilog=PREDICT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", required=True, help="model directory, run directory, or registered model name"
    )
    parser.add_argument("--data", required=True, help="CSV/CSV.GZ/parquet file to score")
    parser.add_argument(
        "--out", required=True, help="the scored file: .csv, .csv.gz or .parquet (by its name)"
    )
    parser.add_argument(
        "--runs-dir", default="runs", help="where runs and the registry are (default: runs)"
    )
    add_deprecated_aliases(parser, "runs_dir", "--runs-dir")
    parser.add_argument("--sep", default=None, help="CSV delimiter; detected when not given")
    parser.add_argument(
        "--on-bad-rows",
        choices=["refuse", "skip"],
        default="refuse",
        help="rows that cannot be scored (missing or non-finite values): refuse the file, or skip "
        "them into <out>.rejects.csv with a reason per row (default: %(default)s)",
    )
    parser.add_argument(
        "--on-unseen",
        choices=["score", "refuse"],
        default="score",
        help="category levels never seen in training: score them with the unseen code (counted "
        "in the output), or treat their rows as bad rows (default: %(default)s)",
    )
    for name, field in DriftSettings.model_fields.items():  # one flag per drift setting
        flag = "--drift-action" if name == "action" else f"--{name.replace('_', '-')}"
        parser.add_argument(
            flag,
            dest=name,
            default=field.default,
            help=f"{field.description} (default: %(default)s)",
        )
    args = parser.parse_args(argv)
    configure_logging("normal")

    def body() -> dict[str, Any]:
        drift = DriftSettings(**{name: getattr(args, name) for name in DriftSettings.model_fields})
        # before any server starts: the model resolves, the data file is there, the output is not it
        resolve_model(args.model, location(args.runs_dir) / "registry")
        if args.data not in BUILTINS:
            existing_file(args.data)
        check_output(location(args.out), args.data)
        start_temporary_server()
        with heartbeats_only_to_a_lasting_server():
            return predict_flow(
                args.model,
                args.data,
                args.out,
                args.runs_dir,
                args.sep,
                drift,
                args.on_bad_rows,
                args.on_unseen,
            )

    return run_command(body)


if __name__ == "__main__":
    exit_now(main())
