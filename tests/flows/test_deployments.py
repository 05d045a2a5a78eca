"""Deployment definitions point at real flows with valid parameters."""

from pathlib import Path

import yaml
from prefect.flows import Flow, load_flow_from_entrypoint

from deployments.serve import build_deployments
from tasks.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"


def test_every_prefect_yaml_entrypoint_resolves_to_a_flow(monkeypatch):
    monkeypatch.chdir(ROOT)  # entrypoints are relative to the project root
    spec = yaml.safe_load(PREFECT_YAML.read_text())
    assert {d["name"] for d in spec["deployments"]} == {"weekly-retrain", "batch-predict"}
    for deployment in spec["deployments"]:
        path, _ = deployment["entrypoint"].split(":")
        assert (ROOT / path).is_file(), deployment["entrypoint"]
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        assert isinstance(flow, Flow)
        # the declared parameters are valid for the flow
        flow.validate_parameters(
            deployment.get("parameters", {})
            | ({"data": "x.csv", "out": "y.parquet"} if flow.name == "imbalance-predict" else {})
        )


def test_training_deployment_parameters_are_the_typed_config():
    spec = yaml.safe_load(PREFECT_YAML.read_text())
    training = next(d for d in spec["deployments"] if d["name"] == "weekly-retrain")
    assert training["schedules"][0]["cron"] == "0 3 * * 1"
    TrainConfig(**training["parameters"]["config"])


def test_prefect_yaml_pulls_the_workers_own_checkout_not_the_deployers_directory():
    spec = yaml.safe_load(PREFECT_YAML.read_text())
    assert spec["pull"] == [
        {
            "prefect.deployments.steps.set_working_directory": {
                "directory": "{{ $IMBALANCE_PROJECT_DIR }}"
            }
        }
    ]


def test_prefect_yaml_declares_the_same_promotion_trigger_as_serve_py():
    """One trigger, two ways to deploy it: the YAML's must be the Python one."""
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    from deployments.automations import promotion_trigger

    spec = yaml.safe_load(PREFECT_YAML.read_text())
    prediction = next(d for d in spec["deployments"] if d["name"] == "batch-predict")
    (declared,) = prediction["triggers"]
    expected = promotion_trigger("breast_cancer", "runs/predictions")
    assert DeploymentEventTrigger(**declared).model_dump() == expected.model_dump()
    assert expected.parameters["out"].startswith("runs/predictions/{{ event.payload.model }}-")


def test_served_deployments_freeze_only_the_settings_that_were_given():
    """serve.py used to write every default into the deployment, so a changed default never
    reached a served deployment."""
    training, prediction = build_deployments(TrainConfig(), cron=None)
    assert training.parameters == {}
    assert prediction.parameters == {"model": "breast_cancer-diagnosis"}
    (trigger,) = prediction.triggers
    assert trigger.parameters["data"] == "breast_cancer"
    assert trigger.parameters["out"].startswith("runs/predictions/")
    training, prediction = build_deployments(
        TrainConfig(data="x.csv", target="y", epochs=3, runs_dir="memory://b/r"),
        predict_data="in.parquet",
    )
    assert training.parameters == {
        "config": {"data": "x.csv", "target": "y", "epochs": 3, "runs_dir": "memory://b/r"}
    }
    assert prediction.parameters == {"model": "x-y", "runs_dir": "memory://b/r"}
    assert prediction.triggers[0].parameters["data"] == "in.parquet"
    assert prediction.triggers[0].parameters["out"].startswith("memory://b/r/predictions/")


def test_served_deployments_resolve_and_carry_the_schedule():
    config = TrainConfig(runs_dir="somewhere")
    training, prediction = build_deployments(config, cron="0 2 * * *")
    for deployment in (training, prediction):
        path = Path(deployment.entrypoint.split(":")[0])
        entrypoint = (
            deployment.entrypoint if path.is_absolute() else str(ROOT / deployment.entrypoint)
        )
        flow = load_flow_from_entrypoint(entrypoint)
        assert isinstance(flow, Flow)
    assert training.schedules[0].schedule.cron == "0 2 * * *"
    assert TrainConfig(**training.parameters["config"]) == config
    # the UI renders the flow's typed config parameter as a form built from this schema
    from prefect.utilities.callables import parameter_schema

    from flows.train import train_flow

    schema = parameter_schema(train_flow.fn).model_dump()
    assert list(schema["properties"]) == ["config"]
    fields = schema["definitions"]["TrainConfig"]["properties"]
    assert {"data", "target", "strategies", "objective", "seed"} <= set(fields)
