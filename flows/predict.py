"""Batch prediction with an exported model: `python -m flows.predict --help`."""

from __future__ import annotations

import argparse
from typing import Any, Literal

from prefect import flow

from flows.cli import configure_logging, exit_now, run_command
from flows.server import start_temporary_server
from tasks.config import DriftSettings
from tasks.datasets import BUILTINS
from tasks.io import existing_file
from tasks.predict import check_output, predict_file
from tasks.registry import resolve_model
from tasks.storage import location

DEFAULT_DRIFT = DriftSettings()


PREDICT_EXAMPLES = """\
examples:
  python -m flows.predict --model runs/latest/model --data new.csv --out scored.parquet
  python -m flows.predict --model breast_cancer-diagnosis --data new.parquet --out scored.csv

exit codes: 0 success, 2 bad input (missing columns, wrong types, rows that cannot be scored),
1 internal error
"""


@flow(name="imbalance-predict", flow_run_name="predict-{model}", log_prints=True)
def predict_flow(
    model: str,
    data: str,
    out: str,
    output: str = "runs",
    sep: str | None = None,
    drift: DriftSettings = DEFAULT_DRIFT,
    on_bad_rows: Literal["refuse", "skip"] = "refuse",
    on_unseen: Literal["score", "refuse"] = "score",
) -> dict[str, Any]:
    """Score `data` with a model directory or the champion of a registered name; write parquet
    (or CSV for an `.csv` path) with `probability`, `probability_corrected`, `label`,
    `is_positive` (and the id column when present)."""
    model_dir = resolve_model(model, location(output) / "registry")
    return predict_file(model_dir, data, location(out), sep, drift, on_bad_rows, on_unseen) | {
        "model": str(model_dir)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.predict",
        description="Score a CSV or parquet file with an exported model.",
        epilog=PREDICT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", required=True, help="model directory, run directory, or registered model name"
    )
    parser.add_argument("--data", required=True, help="CSV/CSV.GZ/parquet file to score")
    parser.add_argument("--out", required=True, help="parquet file to write")
    parser.add_argument("--output", default="runs", help="where the registry lives (default: runs)")
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
    configure_logging()

    def body() -> dict[str, Any]:
        drift = DriftSettings(**{name: getattr(args, name) for name in DriftSettings.model_fields})
        # before any server starts: the model resolves, the data file is there, the output is not it
        resolve_model(args.model, location(args.output) / "registry")
        if args.data not in BUILTINS:
            existing_file(args.data)
        check_output(location(args.out), args.data)
        start_temporary_server()
        return predict_flow(
            args.model,
            args.data,
            args.out,
            args.output,
            args.sep,
            drift,
            args.on_bad_rows,
            args.on_unseen,
        )

    return run_command(body)


if __name__ == "__main__":
    exit_now(main())
