"""Run directories: everything a run writes lives in `<output>/<run-id>/`, on any store.

On a local disk a run writes into a hidden staging directory and is renamed into place when it
succeeds. On stores without rename (object stores, `memory://`) it writes into
`<output>/<run-id>/` directly and `run.json`, written last, marks it complete. Then
`<output>/latest.json` (and, where symlinks exist, the `<output>/latest` link) points at it. A
failed run leaves only `<output>/<run-id>/run.json` (status, failed stage, messages, config).
Intermediate files (raw copy, split assignment) stay on this machine in `work_dir`."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from upath import UPath

from tasks.config import TrainConfig
from tasks.errors import GateFailed
from tasks.storage import is_local, local_path, remove_tree, set_pointer, write_json


def make_run_id(flow_run_id: str | None, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    short = (flow_run_id or os.urandom(4).hex()).replace("-", "")[:8]
    return f"{now:%Y%m%dT%H%M%SZ}-{short}"


@dataclass
class RunRecord:
    config: TrainConfig
    flow_run_id: str | None
    run_id: str = ""
    started_at: str = ""
    stage: str = "start"
    stages: list[dict[str, Any]] = field(default_factory=list)
    completed: bool = False
    work_dir: Path = field(init=False)
    _t0: float = 0.0
    _stage_t0: float = 0.0

    def __post_init__(self) -> None:
        self.run_id = make_run_id(self.flow_run_id)
        self.started_at = datetime.now(UTC).isoformat()
        self._t0 = self._stage_t0 = time.perf_counter()
        if self.renames:
            self.staging.mkdir(parents=True, exist_ok=False)
            self.work_dir = local_path(self.staging) / "work"
            self.work_dir.mkdir()
        else:
            if self.run_dir.exists():
                raise FileExistsError(f"run directory {self.run_dir} already exists")
            self.work_dir = Path(tempfile.mkdtemp(prefix=f"imbalance-{self.run_id}-"))

    @property
    def output(self) -> UPath:
        return self.config.output_dir

    @property
    def renames(self) -> bool:
        """Whether the output store can rename a finished staging directory into place."""
        return is_local(self.output)

    @property
    def run_dir(self) -> UPath:
        return self.output / self.run_id

    @property
    def staging(self) -> UPath:
        """Where the run's files are written until it completes."""
        return self.output / f".{self.run_id}.partial" if self.renames else self.run_dir

    def enter(self, stage: str) -> None:
        now = time.perf_counter()
        if self.stage != "start":
            self.stages.append({"stage": self.stage, "seconds": round(now - self._stage_t0, 3)})
        self.stage, self._stage_t0 = stage, now

    def _record(self, status: str, **extra: Any) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "flow_run_id": self.flow_run_id,
            "status": status,
            "started_at": self.started_at,
            "finished_at": datetime.now(UTC).isoformat(),
            "seconds": round(time.perf_counter() - self._t0, 3),
            "stages": self.stages,
            "config": self.config.model_dump(mode="json"),
            **extra,
        }

    def snapshot(self, **extra: Any) -> dict[str, Any]:
        """The run record so far (for the report, written before the run completes)."""
        return self._record("running", **extra)

    def succeed(self, **extra: Any) -> UPath:
        self.enter("done")
        remove_tree(self.work_dir)
        write_json(self.staging / "run.json", self._record("completed", **extra))  # last
        if self.renames:
            os.rename(local_path(self.staging), local_path(self.run_dir))
        set_pointer(self.output, "latest", self.run_id)
        self.completed = True
        return self.run_dir

    def fail(self, error: BaseException) -> UPath:
        failed_stage = self.stage
        self.enter("failed")
        remove_tree(self.work_dir)
        remove_tree(self.staging)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        gate = error.stage if isinstance(error, GateFailed) else None
        messages = [f"{gate} gate: {line}" for line in error.failures] if gate else [str(error)]
        write_json(
            self.run_dir / "run.json",
            self._record("failed", failed_stage=failed_stage, failed_gate=gate,
                         error_type=type(error).__name__, messages=messages),
        )  # fmt: skip
        return self.run_dir
