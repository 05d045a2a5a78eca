"""The flows and their command lines. Importing this package sets the process's logging
defaults (flows.console.prepare_environment) before any entry point imports Prefect or
TensorFlow: `python -m flows.train`, `flows.predict`, `flows.champion`, the deployments."""

from flows.console import prepare_environment

prepare_environment()
