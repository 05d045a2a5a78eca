"""MLflow (optional: `pip install -e '.[mlflow]'`): every run tracked, every model registered.

With `--tracking-uri URI` (or `MLFLOW_TRACKING_URI`), a completed training run is mirrored into
MLflow from its run directory, which holds the whole record:
- one MLflow run per flow run (experiment `imbalance/<model name>`): the config as params, the
  selected strategy's test metrics, the data fingerprint, run id and flow run id as tags; the
  report, leaderboard, run.json and model card as artifacts;
- one nested run per strategy with its test and tuning-half metrics and its status;
- the selected model as an MLflow pyfunc model (`tasks/mlflow_model.py`: the standalone model plus
  the threshold), registered under the model name; the run's champion/challenger decision sets the
  alias `champion` (promoted) or `challenger` (kept).

`MlflowRegistry` is the registry seam's second implementation (`tasks.registry.RegistryBackend`):
`flows.champion rollback`/`promote` move the `champion` alias to the version of that run's model,
and `set-threshold` registers the new model version and makes it champion. The file registry
stays the record the champion/challenger comparison reads (its seen rows and history)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from upath import UPath

from tasks.storage import copy_tree, is_local, local_copy, local_path, location

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
RUN_ID_TAG = "imbalance.run_id"
MODEL_DIR_TAG = "imbalance.model_dir"
RUN_ARTIFACTS = ("report.html", "leaderboard.csv", "run.json", "MODEL_CARD.md")


def tracking_uri(configured: str | None) -> str | None:
    """`--tracking-uri`, else MLFLOW_TRACKING_URI, else None (no tracking)."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or None


def _mlflow(uri: str) -> Any:
    try:
        import mlflow
    except ImportError as exc:
        from tasks.errors import ConfigError

        raise ConfigError(f"--tracking-uri {uri} needs MLflow: pip install -e '.[mlflow]'") from exc
    mlflow.set_tracking_uri(uri)
    return mlflow


def _flat(prefix: str, value: Any, out: dict[str, str]) -> dict[str, str]:
    """Nested settings as MLflow params: `a.b` keys, values as text (MLflow's 6,000 limit)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, list | tuple) else str(value)[:6000]
    return out


def _metrics(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    return {
        f"{prefix}{key}": float(value)
        for key, value in record.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


@contextmanager
def local_directory(path: UPath) -> Iterator[Path]:
    """A local directory with `path`'s files (MLflow logs local artifacts only)."""
    if is_local(path):
        yield local_path(path)
        return
    with tempfile.TemporaryDirectory(prefix="imbalance-mlflow-") as scratch:
        yield local_path(copy_tree(path, Path(scratch) / path.name))


def _log_model(mlflow: Any, name: str, model_dir: UPath) -> Any:
    """Log `model_dir` as a pyfunc model in the active run, registered as `name`."""
    from importlib.metadata import version

    # scikit-learn scores a shipped gradient-boosting reference (--allow-reference-champion)
    packages = ("tensorflow-cpu", "keras", "pandas", "scikit-learn")
    requirements = [f"{p}=={version(p)}" for p in packages]
    with local_directory(model_dir) as local:
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("mlflow_model.py")),
            artifacts={"model_dir": str(local)},
            registered_model_name=name,
            pip_requirements=requirements,
        )


class MlflowRegistry:
    """The MLflow side of the registry seam (see the module docstring)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.mlflow = _mlflow(uri)
        self.client = self.mlflow.MlflowClient()

    def use_experiment(self, name: str) -> None:
        """The model's experiment, `imbalance/<name>`. Created with its artifacts beside a
        local database or file store (MLflow's default is ./mlruns in whatever directory the
        process runs from: a scheduled worker's, a test's)."""
        experiment = f"imbalance/{name}"
        if self.client.get_experiment_by_name(experiment) is None:
            self.client.create_experiment(experiment, artifact_location=self.artifact_root(name))
        self.mlflow.set_experiment(experiment)

    def artifact_root(self, name: str) -> str | None:
        """`<database's directory>/mlartifacts/<name>` for sqlite:/// and file: stores; None
        (the server's own default) for a tracking server."""
        scheme, _, rest = self.uri.partition(":")
        if scheme.startswith("sqlite") and rest.startswith("///"):
            base = Path(rest[3:]).resolve().parent
        elif scheme == "file":
            base = Path(rest.removeprefix("//")).resolve()
        else:
            return None
        return (base / "mlartifacts" / name).as_uri()

    def record(self, name: str, run_dir: UPath, decision: dict[str, Any]) -> dict[str, Any]:
        """Track the completed run in `run_dir`, register its model, set the alias the
        decision gives it. Returns the MLflow run id and the model version."""
        mlflow = self.mlflow
        run_record = json.loads((run_dir / "run.json").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text())
        self.use_experiment(name)
        tags = {
            RUN_ID_TAG: run_dir.name,
            MODEL_DIR_TAG: str(run_dir / "model"),
            "imbalance.data_fingerprint": str(run_record.get("data_fingerprint")),
            "imbalance.flow_run_id": str(run_record.get("flow_run_id")),
            "imbalance.selected": str(metrics.get("selected")),
        }
        with mlflow.start_run(run_name=run_dir.name, tags=tags) as parent:
            mlflow.log_params(_flat("", run_record["config"], {}))
            for row in metrics["strategies"]:
                with mlflow.start_run(run_name=row["strategy"], nested=True):
                    mlflow.set_tags({"status": row["status"], RUN_ID_TAG: run_dir.name})
                    if row["status"] == "ok":
                        mlflow.log_metrics(
                            _metrics(row, "test_") | _metrics(row.get("validation", {}), "tune_")
                        )
                if row["strategy"] == metrics.get("selected"):
                    mlflow.log_metrics(_metrics(row, "test_"))
            for artifact in RUN_ARTIFACTS:
                if (run_dir / artifact).is_file():
                    with local_copy(run_dir / artifact) as path:
                        mlflow.log_artifact(str(path))
            info = _log_model(mlflow, name, run_dir / "model")
            version = str(info.registered_model_version)
            self._tag_version(name, version, run_dir.name, run_dir / "model")
            alias = CHAMPION if decision["action"] == "promote" else CHALLENGER
            self.client.set_registered_model_alias(name, alias, version)
        log.info("MLflow: run %s, %s version %s is %s", parent.info.run_id, name, version, alias)
        return {"mlflow_run_id": parent.info.run_id, "version": version, "alias": alias}

    def set_champion(self, name: str, entry: dict[str, Any], event: str, reason: str) -> str:
        """Move the `champion` alias to the version of `entry`'s model; a model directory MLflow
        never saw (a threshold change's new version) is logged and registered first."""
        version = self._version_of(name, entry["model_dir"])
        if version is None:
            self.use_experiment(name)
            tags = {RUN_ID_TAG: entry["run_id"], "imbalance.event": event}
            with self.mlflow.start_run(run_name=f"{event}-{entry['run_id']}", tags=tags):
                self.mlflow.set_tag("imbalance.reason", reason[:5000])
                info = _log_model(self.mlflow, name, location(entry["model_dir"]))
            version = str(info.registered_model_version)
            self._tag_version(name, version, entry["run_id"], location(entry["model_dir"]))
        self.client.set_registered_model_alias(name, CHAMPION, version)
        return version

    def _tag_version(self, name: str, version: str, run_id: str, model_dir: UPath) -> None:
        self.client.set_model_version_tag(name, version, RUN_ID_TAG, run_id)
        self.client.set_model_version_tag(name, version, MODEL_DIR_TAG, str(model_dir))

    def _version_of(self, name: str, model_dir: str) -> str | None:
        for version in self.client.search_model_versions(f"name = '{name}'"):
            if version.tags.get(MODEL_DIR_TAG) == str(location(model_dir)):
                return str(version.version)
        return None
