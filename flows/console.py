"""What a run says, and where: the project's log lines on the console, in the flow run's logs
in the Prefect UI and in the run directory's `run.log`; the `--quiet` / `--verbose` levels; and
the closing summary a command line prints.

The project's loggers (`flows.*`, `tasks.*`) are Prefect "extra loggers": they get Prefect's API
log handler (as `PREFECT_LOGGING_EXTRA_LOGGERS` would give them; set for worker processes too),
so a line logged inside a flow or task run shows in that run's logs in the UI, and they
propagate to the root logger's Prefect console handler. Only `logging` is imported at load time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

PROJECT_LOGGERS = ("flows", "tasks")
Verbosity = Literal["quiet", "normal", "verbose"]
CONSOLE_LEVELS: dict[str, int] = {"quiet": logging.ERROR, "normal": 0, "verbose": 0}
PROJECT_LEVELS: dict[str, int] = {
    "quiet": logging.INFO,
    "normal": logging.INFO,
    "verbose": logging.DEBUG,
}
RUN_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def prepare_environment() -> None:
    """Before Prefect or TensorFlow is imported: TensorFlow's C++ log level (its start-up lines
    are not for users), the servers' analytics off unless the user turned them on, the
    project's loggers as Prefect extra loggers (read by every process
    that imports Prefect, Dask workers included), and no warning when a project line is logged
    outside any run (a background thread, a test)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # no telemetry from the servers a run starts (it fails, with an error line, offline)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    named = [n for n in os.environ.get("PREFECT_LOGGING_EXTRA_LOGGERS", "").split(",") if n]
    os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] = ",".join(
        dict.fromkeys([*named, *PROJECT_LOGGERS])
    )
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


def use_project_loggers(level: int = logging.INFO) -> None:
    """Give the project's loggers Prefect's API handler and `level` (when none is set), whatever
    the import order was: a deployment or a test may import Prefect before this package."""
    import prefect.logging.configuration  # noqa: F401  (configures Prefect's logging once)

    api_handlers = logging.getLogger("prefect.extra").handlers
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(level)
        for handler in api_handlers:
            if handler not in logger.handlers:
                logger.addHandler(handler)


def configure_logging(verbosity: Verbosity = "normal") -> None:
    """A command line's logging: the project's lines at INFO (DEBUG with --verbose) on the
    console and in the UI; with --quiet the console shows errors only (the UI and `run.log`
    still get everything)."""
    use_project_loggers()
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(PROJECT_LEVELS[verbosity])
    root = logging.getLogger()
    if not root.handlers:  # Prefect's logging configuration is off: a plain console
        logging.basicConfig(format=RUN_LOG_FORMAT)
    for handler in root.handlers:
        if not _is_file_handler(handler):
            handler.setLevel(CONSOLE_LEVELS[verbosity])


def _is_file_handler(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.FileHandler)


def console_handler_console() -> Any | None:
    """The rich Console Prefect's console handler writes to, if there is one: a live display on
    it keeps log lines above the display instead of tearing through it."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            return handler.console
    return None


class _ThisRun(logging.Filter):
    """Records logged by this flow run (or outside any run: its own helper threads)."""

    def __init__(self, flow_run_id: str | None):
        super().__init__()
        self.flow_run_id = flow_run_id

    def filter(self, record: logging.LogRecord) -> bool:
        from prefect.context import FlowRunContext, TaskRunContext

        if self.flow_run_id is None:
            return True
        task = TaskRunContext.get()
        if task is not None:
            return str(task.task_run.flow_run_id) == self.flow_run_id
        flow = FlowRunContext.get()
        return flow is None or flow.flow_run is None or str(flow.flow_run.id) == self.flow_run_id


def _run_log_formatter() -> logging.Formatter:
    """Plain lines; Prefect's run lines name their flow or task run, as on the console."""
    from prefect.logging.formatters import PrefectFormatter

    return PrefectFormatter(
        format=RUN_LOG_FORMAT,
        flow_run_fmt="%(asctime)s %(levelname)s flow run %(flow_run_name)s: %(message)s",
        task_run_fmt="%(asctime)s %(levelname)s task run %(task_run_name)s: %(message)s",
    )


@contextmanager
def run_log(path: Path, flow_run_id: str | None) -> Iterator[Path]:
    """Write this run's INFO lines (the project's and Prefect's, whatever the console shows) to
    `path` while the block runs; the project's lines also reach the run's logs in the UI,
    however the run was started (use_project_loggers)."""
    use_project_loggers()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(_run_log_formatter())
    handler.addFilter(_ThisRun(flow_run_id))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()


def _figure(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def summary_table(lines: list[Any], rank_by: str) -> Any:
    """The leaderboard as a rich table: one line per strategy, the reference included (marked
    when it may not be shipped: without --allow-reference-champion)."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, caption_justify="left")
    table.add_column("#", justify="right")
    table.add_column("strategy", no_wrap=True)
    for name in (f"valid. {rank_by}", "test PR-AUC", "F1", "precision", "recall", "threshold"):
        table.add_column(name, justify="right")
    for line in lines:
        name = line.strategy + ("" if line.eligible or line.status != "ok" else " *")
        name += " +" if line.reused_from else ""
        if line.status != "ok":
            table.add_row("", name, f"{line.status}: {line.error or ''}"[:60], *[""] * 5)
            continue
        figures = (line.validation, line.test_pr_auc, line.f1, line.precision, line.recall)
        table.add_row(str(line.rank or ""), name, *map(_figure, figures), _figure(line.threshold))
    notes = []
    if any(line.status == "ok" and not line.eligible for line in lines):
        notes.append("* a reference, never shipped; test metrics at each tuned threshold")
    trainers = sorted({line.reused_from for line in lines if line.reused_from})
    if trainers:
        notes.append(
            f"+ not trained again: reused what {', '.join(trainers)} trained on the same feature "
            "set with the same settings and code (--retrain trains again)"
        )
    table.caption = "\n".join(notes) or None
    return table


def print_summary(result: Any, file: Any = None) -> None:
    """The run's answer on stdout: the leaderboard, the selected strategy and threshold, the
    verdict against the baseline, the champion decision, where the report and model are and,
    when a lasting Prefect server shows the run, its address in the UI."""
    import sys

    from rich.console import Console

    out = file or sys.stdout
    console = Console(file=out, width=None if out.isatty() else 120, highlight=False)
    console.print(summary_table(result.leaderboard, result.rank_by))
    console.print(
        f"[bold]Ship {result.selected} at threshold {result.threshold:.4f}[/bold] "
        f"(selected on the validation tuning half by {result.rank_by})."
    )
    registry = result.registry
    lines = [
        result.verdict.replace("**", ""),
        f"Champion: {registry.get('decision')} ({registry.get('reason')}).",
        f"Report: {result.report_path}",
        f"Model:  {result.model_dir}",
    ]
    if result.flow_run_url:
        lines.append(f"In the Prefect UI: {result.flow_run_url}")
    for line in lines:
        console.print(line, markup=False, soft_wrap=True)


class LiveProgress:
    """One live line per strategy on the console while strategies train (rich's progress
    display, on the Console Prefect's log handler writes to, so log lines print above it).
    Only on a terminal; elsewhere the board's periodic log lines stand in."""

    def __init__(self, console: Any):
        from rich.progress import BarColumn, Progress, TextColumn

        self.progress = Progress(
            TextColumn("{task.description:<28}"),
            # Prefect's console has its own theme, without rich's default progress styles
            BarColumn(
                bar_width=24,
                style="grey37",
                complete_style="cyan",
                finished_style="green",
                pulse_style="cyan",
            ),
            TextColumn("{task.fields[text]}"),
            console=console,
            refresh_per_second=4,
        )
        self.rows: dict[str, Any] = {}

    def show(self, line: Any) -> None:
        row = self.rows.get(line.strategy)
        if row is None:
            row = self.rows[line.strategy] = self.progress.add_task(
                line.strategy, total=100.0, text=""
            )
        self.progress.update(row, completed=line.percent, text=line.text())

    def __enter__(self) -> LiveProgress:
        from tasks.progress import BOARD

        self.progress.start()
        BOARD.add_view(self)
        return self

    def __exit__(self, *exc: object) -> None:
        from tasks.progress import BOARD

        BOARD.remove_view(self)
        try:
            self.progress.stop()
        except Exception:  # the display must not fail a run that completed
            logging.getLogger(__name__).debug("live progress did not stop", exc_info=True)


@contextmanager
def live_progress(verbosity: Verbosity) -> Iterator[None]:
    """The live display while the block runs, when the console is a terminal and not --quiet."""
    console = console_handler_console()
    if verbosity == "quiet" or console is None or not console.is_terminal:
        yield
        return
    with LiveProgress(console):
        yield
