"""Project exceptions. User-facing problems (bad input, failed gates) map to exit code 2."""

from __future__ import annotations


class ImbalanceFlowError(Exception):
    """Base class of the errors a user can fix by changing the input or the settings."""

    stage: str = "input"


class ConfigError(ImbalanceFlowError, ValueError):
    """A setting is invalid. A ValueError too, so pydantic reports it as a validation error."""

    stage = "config"


class DataInputError(ImbalanceFlowError):
    """The data file is missing, empty, unreadable or does not fit the settings."""

    stage = "ingest"


class GateFailed(ImbalanceFlowError):
    """A Great Expectations gate failed. `failures` holds one readable line per expectation."""

    def __init__(self, stage: str, failures: list[str]):
        self.stage = stage
        self.failures = failures
        lines = "\n".join(f"  - {failure}" for failure in failures)
        super().__init__(f"{stage} gate failed:\n{lines}")


class DriftError(ImbalanceFlowError):
    """New rows drifted past the fail limits and the drift action is `fail`."""

    stage = "drift"


class StrategyError(ImbalanceFlowError):
    """A strategy branch could not produce a usable model (it is recorded as failed)."""

    stage = "train"


class StorageError(ImbalanceFlowError):
    """The output or store location cannot do what a run needs (e.g. an exclusive lock)."""

    stage = "storage"
