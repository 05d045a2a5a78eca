"""Run directories: everything a run writes lives in `<output>/<run-id>/`, on any store.

On a local disk a run writes into a hidden staging directory and is renamed into place when it
succeeds. On stores without rename (object stores, `memory://`) it writes into
`<output>/<run-id>/` directly and `run.json`, written last, marks it complete. Then
`<output>/latest.json` (and, where symlinks exist, the `<output>/latest` link) points at it. A
failed run leaves only `<output>/<run-id>/run.json` (status, failed stage, messages, config)
and `gx/`, the Great Expectations project of the gates that ran (`tasks.gx_run`). Intermediate
files (raw copy, split assignment, the GX project while the run goes) stay on this machine in
`work_dir`."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from upath import UPath

from tasks import events, gx_run
from tasks.config import TrainConfig
from tasks.errors import GateFailed
from tasks.storage import (
    OWNER_FILE,
    is_local,
    local_path,
    remove_tree,
    set_pointer,
    write_json,
    write_owner,
)

log = logging.getLogger(__name__)


RUN_LOG = "run.log"  # the run's log lines, kept in its directory
OWNERLESS_SECONDS = 60  # a leftover with no owner file: its creator died before writing one
STALE_SECONDS = 24 * 3600  # a partial directory no live process on this host owns, or this old


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(directory: Path) -> bool:
    """Left by a killed run: its owner is a process of this host that is gone, or it has not
    been touched for STALE_SECONDS (an owner on another host cannot be asked), or it has had no
    owner file for OWNERLESS_SECONDS (its creator died between creating it and writing one)."""
    try:
        age = time.time() - directory.stat().st_mtime
    except OSError:
        return False
    try:
        owner = json.loads((directory / OWNER_FILE).read_text())
    except (OSError, ValueError):  # a live creator writes it right after creating the directory
        return age > OWNERLESS_SECONDS
    if owner.get("host") == socket.gethostname():
        return not _alive(int(owner.get("pid", -1)))
    return age > STALE_SECONDS


def clean_stale(directory: Path) -> list[str]:
    """Remove what killed runs left in a local output or store directory: `.<run-id>.partial/`
    run staging directories and `.<fingerprint>.tmp-*` feature-set builds that no live process
    owns. Never one a live run holds."""
    if not directory.is_dir():
        return []
    removed = []
    for path in directory.iterdir():
        leftover = path.name.startswith(".") and (
            path.name.endswith(".partial") or ".tmp-" in path.name
        )
        if path.is_dir() and leftover and is_stale(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    if removed:
        log.info("removed what killed runs left in %s: %s", directory, ", ".join(removed))
    return removed


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
    current_stage: str = "start"
    stages: list[dict[str, Any]] = field(default_factory=list)
    completed: bool = False
    facts: dict[str, Any] = field(default_factory=dict)
    work_dir: Path = field(init=False)
    data_docs: str | None = None  # the Data Docs index, relative to the run directory
    _t0: float = 0.0
    _stage_t0: float = 0.0

    def __post_init__(self) -> None:
        self.run_id = make_run_id(self.flow_run_id)
        self.started_at = datetime.now(UTC).isoformat()
        self._t0 = self._stage_t0 = time.perf_counter()
        if self.renames:
            clean_stale(local_path(self.output))
            if is_local(self.config.store_dir):
                clean_stale(local_path(self.config.store_dir))
            self.staging.mkdir(parents=True, exist_ok=False)
            write_owner(local_path(self.staging))
            self.work_dir = local_path(self.staging) / "work"
            self.work_dir.mkdir()
        else:
            if self.run_dir.exists():
                raise FileExistsError(f"run directory {self.run_dir} already exists")
            self.work_dir = Path(tempfile.mkdtemp(prefix=f"imbalance-{self.run_id}-"))
        log.info("run %s: data %s -> %s", self.run_id, self.config.data, self.run_dir)

    @property
    def output(self) -> UPath:
        return self.config.output_dir

    @property
    def renames(self) -> bool:
        """Whether the output store can rename a finished staging directory into place."""
        return is_local(self.output)

    @property
    def log_path(self) -> Path:
        """Where `run.log` is written while the run goes: in the staging directory on a local
        disk, else beside the work files (copied into the run directory as it completes)."""
        return (local_path(self.staging) if self.renames else self.work_dir) / RUN_LOG

    @property
    def run_dir(self) -> UPath:
        return self.output / self.run_id

    @property
    def staging(self) -> UPath:
        """Where the run's files are written until it completes."""
        return self.output / f".{self.run_id}.partial" if self.renames else self.run_dir

    @property
    def gx_root(self) -> Path:
        """The run's Great Expectations project while it runs (moved to `<run>/gx` at its end)."""
        return self.work_dir / "gx"

    def __enter__(self) -> RunRecord:
        self._recording = gx_run.recording(self.gx_root)  # gates run inside go through it
        self._recording.__enter__()
        return self

    def __exit__(self, kind: Any, error: BaseException | None, trace: Any) -> None:
        """A run that fails before it completes leaves only `run.json` and its gates' GX
        project, naming the stage and the cause; the error goes on to the caller. After
        completion nothing is undone."""
        try:
            if error is not None and not self.completed:
                self.fail(error)
        finally:
            self._recording.__exit__(None, None, None)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage: it runs until the next one starts (`run.json` lists them)."""
        self.enter(name)
        yield

    def note(self, **facts: Any) -> None:
        """Facts every later record of this run carries (the report's, `run.json`'s)."""
        self.facts.update(facts)

    def enter(self, stage: str) -> None:
        now = time.perf_counter()
        if self.current_stage != "start":
            self.stages.append(
                {"stage": self.current_stage, "seconds": round(now - self._stage_t0, 3)}
            )
        self.current_stage, self._stage_t0 = stage, now

    def _record(self, status: str, **extra: Any) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "flow_run_id": self.flow_run_id,
            "status": status,
            "started_at": self.started_at,
            "finished_at": datetime.now(UTC).isoformat(),
            "seconds": round(time.perf_counter() - self._t0, 3),
            "stages": self.stages,
            "data_docs": self.data_docs,
            "config": self.config.model_dump(mode="json"),
            **self.facts,
            **extra,
        }

    def snapshot(self, **extra: Any) -> dict[str, Any]:
        """The run record so far (for the report, written before the run completes): Data Docs
        are linked where they will be once the run completes."""
        if self.config.data_docs and (self.gx_root / "great_expectations.yml").exists():
            self.data_docs = gx_run.DOCS_INDEX
        return self._record("running", **extra)

    def _publish_gates(self, run_dir: UPath) -> None:
        """The gates' GX project (and its Data Docs) into `run_dir`, linked from the flow run."""
        self.data_docs = gx_run.publish(self.gx_root, run_dir, self.config.data_docs)
        if self.data_docs and self.flow_run_id:
            gx_run.link_artifact(self.run_dir / self.data_docs, self.run_id)

    def succeed(self, **extra: Any) -> UPath:
        self.enter("data docs")
        self._publish_gates(self.staging)
        self.enter("done")
        if not self.renames and self.log_path.exists():
            (self.staging / RUN_LOG).write_bytes(self.log_path.read_bytes())
        remove_tree(self.work_dir)
        if self.renames:
            (local_path(self.staging) / OWNER_FILE).unlink(missing_ok=True)
        write_json(self.staging / "run.json", self._record("completed", **extra))  # last
        if self.renames:
            os.rename(local_path(self.staging), local_path(self.run_dir))
        self.completed = True  # from here on the run is complete, whatever follows
        try:
            set_pointer(self.output, "latest", self.run_id)
        except OSError as exc:
            log.warning(
                "run %s completed, but the 'latest' pointer could not be moved: %s",
                self.run_id,
                exc,
            )
        return self.run_dir

    def fail(self, error: BaseException) -> UPath:
        failed_stage = self.current_stage
        self.enter("failed")
        if self.renames:  # the project lives in the staging directory: move it out first
            self.run_dir.mkdir(parents=True)
            self._publish_gates(self.run_dir)
            remove_tree(self.staging)
        else:  # the staging directory is the run directory; the project is on this machine
            remove_tree(self.staging)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._publish_gates(self.run_dir)
        remove_tree(self.work_dir)
        gate = error.stage if isinstance(error, GateFailed) else None
        messages = [f"{gate} gate: {line}" for line in error.failures] if gate else [str(error)]
        if gate:
            events.gate_failed(self.config.resolved_model_name(), self.run_id, gate, error.failures)
        write_json(
            self.run_dir / "run.json",
            self._record(
                "failed",
                failed_stage=failed_stage,
                failed_gate=gate,
                error_type=type(error).__name__,
                messages=messages,
            ),
        )
        return self.run_dir
