"""Training progress, one line per strategy: live on the console (or periodic log lines when
the console is not a terminal) and as Prefect progress artifacts in the UI.

The trainers report to this process's `BOARD`: `start` when a strategy's networks are planned,
`update` after every check interval (optimizer steps done, the stop-half PR-AUC of the weights
early stopping keeps), `finish` with the branch's status. Views registered on the board render
every change (the command line's live display, flows.console); without one, a strategy that
trains for longer than LOG_SECONDS gets a log line every LOG_SECONDS. The UI's artifacts are
written by a publisher thread (`Board.publishing`) at most once per strategy every
PUBLISH_SECONDS, so the training loop never waits for the API; where no publisher runs (a Dask
worker), each strategy's artifact is written once, when it finishes.
IMBALANCE_PROGRESS_ARTIFACTS=false turns the artifacts off. A failure to write an artifact is
logged, never raised: progress must not sink a run."""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

PUBLISH_SECONDS = 2.0  # at most one API update per strategy this often
# "false" keeps progress off the API (the console and logs still show it): for a server far
# away, or a test session whose one SQLite server serves hundreds of runs
ARTIFACTS_VARIABLE = "IMBALANCE_PROGRESS_ARTIFACTS"
LOG_SECONDS = 15.0  # without a live display: a progress line per strategy this often


@dataclass
class Line:
    """One strategy's progress."""

    strategy: str
    members: int  # networks of the strategy (0: the reference, which has no steps)
    total: int  # optimizer steps in the budget of one network
    step: int = 0  # steps done (of the member training now, or of the furthest one)
    member: int | None = None  # the member training now, when members train one at a time
    best: float | None = None  # stop-half PR-AUC of the kept weights, best over members
    status: str = "training"  # then ok, failed or skipped
    started: float = field(default_factory=lambda: time.monotonic())
    ids: tuple[Any, Any] = (None, None)  # the task run and flow run it belongs to
    artifact_id: Any = None
    published: float = 0.0
    logged: float = 0.0
    changed: bool = True

    @property
    def percent(self) -> float:
        if self.status != "training":
            return 100.0
        return 100.0 * min(self.step / self.total, 1.0) if self.total else 0.0

    def text(self) -> str:
        """`member 2/5 · step 400/2000 · best 0.9912 · 12 s`."""
        parts = []
        if self.status != "training":
            parts.append(self.status)
        elif self.members > 1 and self.member is not None:
            parts.append(f"member {self.member + 1}/{self.members}")
        elif self.members > 1:
            parts.append(f"{self.members} members")
        if self.total:
            parts.append(f"step {self.step}/{self.total}")
        if self.best is not None:
            parts.append(f"best {self.best:.4f}")
        parts.append(f"{time.monotonic() - self.started:.0f} s")
        return " · ".join(parts)


def _run_ids() -> tuple[Any, Any]:
    """The task run and flow run the caller is in (None outside them)."""
    from prefect.utilities.context import get_task_and_flow_run_ids

    return get_task_and_flow_run_ids()


class View(Protocol):
    def show(self, line: Line) -> None: ...


class Board:
    """This process's strategies and their progress (see the module's docstring)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.lines: dict[str, Line] = {}
        self.views: list[View] = []
        self.expected: list[str] = []
        self._summary: Line | None = None  # "strategies k/n done", on the flow run
        self._publisher: threading.Thread | None = None
        self._stop = threading.Event()

    # --- what the trainers call ---------------------------------------------------------------
    def start(self, strategy: str, members: int = 0, total: int = 0) -> None:
        line = Line(strategy, members, total, ids=_run_ids())
        with self._lock:
            self.lines[strategy] = line
        self._show(line)

    def update(
        self, strategy: str, step: int, best: float | None, member: int | None = None
    ) -> None:
        with self._lock:
            line = self.lines.get(strategy)
            if line is None or line.status != "training":
                return
            line.step, line.member, line.changed = step, member, True
            if best is not None and (line.best is None or best > line.best):
                line.best = best
        self._show(line)

    def finish(self, strategy: str, status: str) -> None:
        """The branch is done; idempotent (the flow repeats it for branches run elsewhere)."""
        with self._lock:
            line = self.lines.get(strategy)
            if line is None:  # never started (skipped while planning, or run in another process)
                line = self.lines[strategy] = Line(strategy, 0, 0, ids=_run_ids())
            if line.status != "training":
                return
            line.status, line.changed = status, True
            if self._summary is not None:
                done = sum(
                    self.lines[s].status != "training" for s in self.expected if s in self.lines
                )
                self._summary.step, self._summary.changed = done, True
        self._show(line)
        if self._publisher is None:
            self._publish(line)

    # --- views and the UI ---------------------------------------------------------------------
    def add_view(self, view: View) -> None:
        with self._lock:
            self.views.append(view)

    def remove_view(self, view: View) -> None:
        with self._lock:
            self.views = [v for v in self.views if v is not view]

    def _show(self, line: Line) -> None:
        for view in list(self.views):
            try:
                view.show(line)
            except Exception:  # a display must not sink training
                log.debug("progress view %r failed; removed", view, exc_info=True)
                self.remove_view(view)
        now = time.monotonic()
        if (
            not self.views
            and line.status == "training"
            and now - line.started >= LOG_SECONDS
            and now - line.logged >= LOG_SECONDS
        ):
            line.logged = now
            log.info("training %s: %s", line.strategy, line.text())

    @contextmanager
    def publishing(self, strategies: list[str]) -> Iterator[None]:
        """While the branches train (called by the flow): a flow-run artifact "strategies k/n
        done", and a thread that writes the strategies' progress artifacts. Each strategy's
        final state is written before this returns."""
        with self._lock:
            self.lines = {}
            self.expected = list(strategies)
            self._summary = Line("strategies", 0, len(strategies), ids=_run_ids())
            self._stop.clear()
        context = contextvars.copy_context()  # Prefect's settings and client, in the thread
        self._publisher = threading.Thread(
            target=context.run, args=(self._publish_until_stopped,), name="progress", daemon=True
        )
        self._publisher.start()
        try:
            yield
        finally:
            self._stop.set()
            self._publisher.join(timeout=30)
            self._publisher = None
            context.run(self._publish_changed, True)
            self._summary = None

    def _publish_until_stopped(self) -> None:
        while not self._stop.wait(PUBLISH_SECONDS / 4):
            self._publish_changed(False)

    def _publish_changed(self, final: bool) -> None:
        now = time.monotonic()
        with self._lock:
            lines = [*self.lines.values(), *([self._summary] if self._summary else [])]
        for line in lines:
            if line.changed and (final or now - line.published >= PUBLISH_SECONDS):
                self._publish(line)

    def _publish(self, line: Line) -> None:
        from prefect.artifacts import ProgressArtifact, update_progress_artifact

        line.changed, line.published = False, time.monotonic()
        if os.environ.get(ARTIFACTS_VARIABLE, "true").lower() in ("0", "false", "no", "off"):
            return
        if line.ids == (None, None):  # not in a flow run (a trainer called directly): no API
            return
        if line is self._summary:
            progress = 100.0 * line.step / line.total if line.total else 100.0
            description = f"strategies {line.step}/{line.total} done"
        else:
            progress, description = line.percent, f"{line.strategy}: {line.text()}"
        try:
            if line.artifact_id is None:
                task_run_id, flow_run_id = line.ids
                artifact = ProgressArtifact(
                    progress=progress,
                    description=description,
                    task_run_id=task_run_id,
                    flow_run_id=flow_run_id,
                ).create()
                line.artifact_id = artifact.id
            else:
                update_progress_artifact(line.artifact_id, progress, description)
        except Exception as exc:  # the UI's copy of progress must not sink a run
            log.debug("progress artifact for %s not written: %s", line.strategy, exc)


# What the trainers call. Module functions, not the board itself: a task shipped to a Dask worker
# is pickled with the globals it names, and a board (locks, a thread) cannot be pickled.
def start(strategy: str, members: int = 0, total: int = 0) -> None:
    BOARD.start(strategy, members, total)


def update(strategy: str, step: int, best: float | None, member: int | None = None) -> None:
    BOARD.update(strategy, step, best, member)


def finish(strategy: str, status: str) -> None:
    BOARD.finish(strategy, status)


def progress_key(strategy: str, repeat: int = 0) -> str:
    """A branch's line: its strategy, and its repeat after the first."""
    return strategy if repeat == 0 else f"{strategy} (repeat {repeat})"


BOARD = Board()
