"""Prefect events for automations: a gate failed, a model was promoted, new data drifted.

Every event concerns one registered model: its resource is `imbalance.model.<name>` (named
`<name>`), and its payload carries `model`, `run_id` and `reason`, plus what is particular to
the event (the gate's failures, the drifted features). Emitted inside a flow run, Prefect adds
the flow run, its flow, deployment and tags as related resources, so an automation can match on
either. Outside a flow run an event is sent only when a Prefect API is configured: a command
such as `flows.champion promote` never starts a server just to announce itself.

    imbalance.gate.failed       a Great Expectations gate stopped a training or prediction run
    imbalance.model.promoted    a model became champion (by the run's decision or by hand)
    imbalance.drift.warn        scored rows drifted past the warn limits
    imbalance.drift.fail        ... past the fail limits (the run fails when --drift-action fail)

`deployments/automations.py` ships automations that react to them."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

GATE_FAILED = "imbalance.gate.failed"
MODEL_PROMOTED = "imbalance.model.promoted"
DRIFT_PREFIX = "imbalance.drift."  # + warn | fail
MODEL_RESOURCE_PREFIX = "imbalance.model."


def model_resource(model_name: str) -> dict[str, str]:
    """The resource every event of this project is about: one registered model."""
    return {
        "prefect.resource.id": MODEL_RESOURCE_PREFIX + model_name,
        "prefect.resource.name": model_name,
    }


def _api_reachable() -> bool:
    """Inside a flow run Prefect knows where its API is; elsewhere only a configured URL counts
    (never the ephemeral server Prefect would otherwise start for one event)."""
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL

    return FlowRunContext.get() is not None or bool(PREFECT_API_URL.value())


def emit(event: str, model_name: str, run_id: str | None, reason: str, **details: Any) -> bool:
    """Send one event; True when it was handed to Prefect's event worker. An event that cannot
    be sent is logged and never fails the run that announces it."""
    try:
        if not _api_reachable():
            log.debug("no Prefect API: event %s for %s not sent", event, model_name)
            return False
        from prefect.events import emit_event

        sent = emit_event(
            event,
            resource=model_resource(model_name),
            payload={"model": model_name, "run_id": run_id, "reason": reason, **details},
        )
    except Exception:  # an announcement must not sink the work it announces
        log.warning("could not emit the Prefect event %s", event, exc_info=True)
        return False
    return sent is not None


def gate_failed(model_name: str, run_id: str | None, stage: str, failures: list[str]) -> bool:
    reason = f"{stage} gate failed: " + "; ".join(failures[:5])
    return emit(GATE_FAILED, model_name, run_id, reason, gate=stage, failures=failures[:50])


def model_promoted(
    model_name: str, run_id: str, reason: str, model_dir: str, by: str = "run"
) -> bool:
    """`by`: "run" for the champion/challenger decision, else the command that moved it."""
    return emit(MODEL_PROMOTED, model_name, run_id, reason, model_dir=model_dir, by=by)


def decided(decision: dict[str, Any], model_name: str, run_dir: Any) -> bool:
    """A training run's champion/challenger decision: an event only when it promoted."""
    if decision["action"] != "promote":
        return False
    return model_promoted(model_name, run_dir.name, decision["reason"], str(run_dir / "model"))


def drift(
    status: str, model_name: str, run_id: str | None, data: str, features: list[str], action: str
) -> bool:
    reason = f"drift {status} on {data}: " + ", ".join(features[:10])
    return emit(
        DRIFT_PREFIX + status,
        model_name,
        run_id,
        reason,
        data=data,
        features=features,
        action=action,
    )
