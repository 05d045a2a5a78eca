"""Serve the training and prediction deployments from one local process (no work pool needed).

    python deployments/serve.py                         # weekly retraining on the built-in data
    python deployments/serve.py --config run.yaml --cron "0 2 * * *"
    python deployments/serve.py --predict-data incoming/latest.parquet

A promotion triggers the batch-predict deployment (deployments/automations.py).

Run it from the project root with PREFECT_API_URL pointing at a Prefect server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parent.parent)
)  # the project root, when run as a script

from deployments.automations import promotion_trigger  # noqa: E402
from flows.predict import predict_flow  # noqa: E402
from flows.train import train_flow  # noqa: E402
from tasks.config import TrainConfig, load_config_file  # noqa: E402

DEFAULT_CRON = "0 3 * * 1"  # Mondays 03:00 UTC


def build_deployments(
    config: TrainConfig,
    cron: str | None = DEFAULT_CRON,
    model_name: str | None = None,
    predict_data: str | None = None,
    predict_out: str | None = None,
):
    """The training deployment with only the settings that were given (the flow's defaults
    apply to the rest, and stay current when they change), and the batch-predict deployment,
    which a promotion triggers: the new champion scores `predict_data` (default: the training
    data) into `predict_out` (default: <runs_dir>/predictions)."""
    given = config.model_dump(mode="json", exclude_unset=True)
    training = train_flow.to_deployment(
        name="weekly-retrain",
        cron=cron,
        parameters={"config": given} if given else {},
        tags=["imbalance", "training"],
        description=(
            "Retrain every balancing strategy, compare with the champion, publish the report."
        ),
        concurrency_limit=1,
    )
    runs_dir = {"runs_dir": config.runs_dir} if "runs_dir" in config.model_fields_set else {}
    prediction = predict_flow.to_deployment(
        name="batch-predict",
        parameters={"model": model_name or config.resolved_model_name(), **runs_dir},
        tags=["imbalance", "prediction"],
        description="Score a file with the champion of a registered model.",
        triggers=[
            promotion_trigger(
                predict_data or config.data, predict_out or f"{config.runs_dir}/predictions"
            )
        ],
    )
    return [training, prediction]


def main(argv: list[str] | None = None) -> None:
    from prefect import serve

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML/JSON training settings (default: built-in data)")
    parser.add_argument(
        "--cron", default=DEFAULT_CRON, help=f"retraining schedule (default: {DEFAULT_CRON!r})"
    )
    parser.add_argument(
        "--model-name",
        help="registered model the prediction deployment scores with (default: the one the "
        "training deployment registers)",
    )
    parser.add_argument(
        "--predict-data",
        help="the file a promoted model scores (default: the training data)",
    )
    parser.add_argument(
        "--predict-out",
        help="where promotion-triggered scores go (default: <runs_dir>/predictions)",
    )
    args = parser.parse_args(argv)
    config = TrainConfig(**(load_config_file(args.config) if args.config else {}))
    serve(
        *build_deployments(config, args.cron, args.model_name, args.predict_data, args.predict_out)
    )


if __name__ == "__main__":
    main()
