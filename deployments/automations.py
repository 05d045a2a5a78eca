"""Prefect automations for the imbalance flows, reacting to the events in `tasks/events.py`.

Two are shipped:

- **A failed or crashed training run notifies** through a notification block of yours (Slack,
  Teams, e-mail, a webhook...). Create it against the server in PREFECT_API_URL:

      python -m deployments.automations --notify-block slack-webhook/ml-alerts

  Running it again replaces the automation of the same name.
- **A promoted model triggers batch prediction.** This one is a trigger of the batch-predict
  deployment (`promotion_trigger` below), so it is created with the deployment:
  `deployments/serve.py` passes it, and `deployments/prefect.yaml` declares the same trigger
  (a test keeps the two equal). The new champion scores the deployment's `data`, and the scored
  file goes to `<out_dir>/<model>-<run id>.parquet`.

Both match on names, not ids: the flow `imbalance-train`, the event `imbalance.model.promoted`
on any `imbalance.model.*` resource."""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(
    0, str(Path(__file__).resolve().parent.parent)
)  # the project root, when run as a script

from tasks.events import MODEL_PROMOTED, MODEL_RESOURCE_PREFIX  # noqa: E402

TRAIN_FLOW = "imbalance-train"
TRAINING_ALERT = "imbalance: training run failed"
PROMOTION_TRIGGER = "imbalance: batch predict on promotion"
DEFAULT_PREDICT_OUT = "runs/predictions"

ALERT_SUBJECT = "Training run {{ flow_run.name }} {{ flow_run.state.name }}"
ALERT_BODY = (
    "The imbalance training run {{ flow_run.name }} ended {{ flow_run.state.name }}: "
    "{{ flow_run.state.message }}\n{{ flow_run|ui_url }}"
)


def training_failed_trigger() -> Any:
    """Any flow run of the training flow entering Failed or Crashed (a failed gate fails it)."""
    from prefect.events.schemas.automations import EventTrigger, Posture

    return EventTrigger(
        expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
        match_related={"prefect.resource.role": "flow", "prefect.resource.name": TRAIN_FLOW},
        posture=Posture.Reactive,
        threshold=1,
        within=timedelta(0),
    )


def training_alert(block_document_id: Any) -> Any:
    """The automation: a training run failed or crashed -> a notification through the block."""
    from prefect.automations import Automation, SendNotification

    return Automation(
        name=TRAINING_ALERT,
        description="Notify when a training run of the imbalance flows fails or crashes.",
        trigger=training_failed_trigger(),
        actions=[
            SendNotification(
                block_document_id=block_document_id, subject=ALERT_SUBJECT, body=ALERT_BODY
            )
        ],
    )


def promotion_parameters(data: str, out_dir: str = DEFAULT_PREDICT_OUT) -> dict[str, str]:
    """The batch-predict run a promotion starts: the promoted model scores `data`."""
    return {
        "model": "{{ event.payload.model }}",
        "data": data,
        "out": out_dir.rstrip("/")
        + "/{{ event.payload.model }}-{{ event.payload.run_id }}.parquet",
    }


def promotion_trigger(data: str, out_dir: str = DEFAULT_PREDICT_OUT) -> Any:
    """A trigger for the batch-predict deployment: run it whenever a model is promoted."""
    from prefect.events.schemas.automations import Posture
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name=PROMOTION_TRIGGER,
        description="Score new data with a model as soon as it becomes champion.",
        expect={MODEL_PROMOTED},
        match={"prefect.resource.id": MODEL_RESOURCE_PREFIX + "*"},
        posture=Posture.Reactive,
        threshold=1,
        within=timedelta(0),
        parameters=promotion_parameters(data, out_dir),
    )


def replace_automation(automation: Any) -> Any:
    """Create `automation`, first deleting any of the same name (so reruns do not pile up)."""
    from prefect.automations import Automation

    while True:
        try:
            Automation.read(name=automation.name).delete()
        except ValueError:  # none (left) of that name
            break
    return automation.create()


def block_document_id(slug: str) -> Any:
    """The id of a saved block, given as `<block type slug>/<block name>` (read through the API:
    `Block.load` would also emit a "block loaded" event)."""
    from prefect.client.orchestration import get_client

    block_type, _, name = slug.partition("/")
    if not name:
        raise SystemExit(f"--notify-block {slug!r}: expected <block type>/<name>")
    with get_client(sync_client=True) as client:
        return client.read_block_document_by_name(name, block_type_slug=block_type).id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.automations",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--notify-block",
        required=True,
        help="the notification block failed training runs notify through, as "
        "<block type>/<name>, e.g. slack-webhook/ml-alerts",
    )
    args = parser.parse_args(argv)
    created = replace_automation(training_alert(block_document_id(args.notify_block)))
    print(f"automation {created.name!r} ({created.id}) notifies through {args.notify_block}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
