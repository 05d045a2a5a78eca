"""Each training run's own Great Expectations project, under `<run>/gx/`.

The suites in `expectations/` are templates. A run materialises each gate's concrete suite into a
file-backed GX context of its own (never one shared by concurrent runs), with one
ValidationDefinition and one Checkpoint per suite, and every gate validates through its
Checkpoint, so each validation result is kept in the project's results store under the gate's
name (`raw`, `split`, `predictions[smote]`, `raw (rows 0-249999)`, ...). When the run ends,
passed or failed, Data Docs are built from those results and the project travels with the run:
open `gx/uncommitted/data_docs/local_site/index.html`, or load it with
`gx.get_context(context_root_dir="<run>/gx")`.

One project per run directory and process: tasks in threads find it through a context
variable the run sets; a Dask worker opens the same directory from the path it is handed."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import pandas as pd
from upath import UPath

from tasks import preload
from tasks.storage import publish_dir, url

log = logging.getLogger(__name__)

DOCS_INDEX = "gx/uncommitted/data_docs/local_site/index.html"  # relative to a run directory
SOURCE, ASSET, BATCH = "frames", "frame", "whole"
LOCK_FILE = ".create.lock"  # serialises creating suites among the run's processes
_CURRENT: ContextVar[RunProject | None] = ContextVar("imbalance_gx_project", default=None)
_OPEN: dict[str, RunProject] = {}
_OPEN_LOCK = threading.Lock()


def quiet() -> None:
    """GX's own loggers say nothing a user of a run needs below WARNING."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    # this one sets itself to INFO when imported ("temporary directory ... for ephemeral docs")
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)


def progress_bars_off(context: Any) -> None:
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)


def project(root: str | Path) -> RunProject:
    """The project at `root` for this process (opened or created on first use)."""
    with _OPEN_LOCK:
        return _OPEN.setdefault(str(root), RunProject(Path(root)))


def current() -> RunProject | None:
    """The project of the run this code runs in, if any."""
    return _CURRENT.get()


@contextmanager
def recording(root: str | Path | None) -> Iterator[None]:
    """Gates validated inside go through the project at `root` (nothing changes for None, or
    where the run's work directory is not on this machine: a Dask worker on another host
    validates in memory, and its results stay out of the run's Data Docs)."""
    if root is None or not Path(root).parent.is_dir():
        if root is not None:
            log.warning("the run's GX project %s is not on this machine; gates validate here", root)
        yield
        return
    token = _CURRENT.set(project(root))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def _content_key(configs: list[Any]) -> str:
    payload = [
        {"type": c.type, "kwargs": c.kwargs, "notes": c.notes, "meta": c.meta} for c in configs
    ]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class RunProject:
    """One run's file-backed GX context: suites, validation definitions, checkpoints and
    results. Not thread-safe: callers hold the gates' lock."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._context: Any = None
        self._checkpoints: dict[str, tuple[str, Any]] = {}  # name -> (content key, checkpoint)

    def context(self) -> Any:
        if self._context is None:
            preload.finish("great_expectations")
            import great_expectations as gx

            quiet()
            fresh = not (self.root / "great_expectations.yml").exists()
            context = gx.get_context(mode="file", context_root_dir=str(self.root))
            progress_bars_off(context)
            if fresh:
                context.variables.save()  # a Dask worker opening the project reads them
                source = context.data_sources.add_pandas(SOURCE)
                source.add_dataframe_asset(ASSET).add_batch_definition_whole_dataframe(BATCH)
            self._context = context
        return self._context

    def checkpoint(self, name: str, configs: list[Any]) -> Any:
        """The checkpoint validating exactly these expectations: the one named `name` (or
        `name-2`, ... when the same suite file was bound differently, e.g. the out-of-core raw
        gate's table-wide and per-batch checks), created on first use."""
        key = _content_key(configs)
        for n in range(1, 100):
            candidate = name if n == 1 else f"{name}-{n}"
            known = self._checkpoints.get(candidate) or self._stored_or_created(
                candidate, configs, key
            )
            self._checkpoints[candidate] = known
            if known[0] == key:
                return known[1]
        raise RuntimeError(f"more than 99 different suites named {name!r}")

    def _stored_or_created(self, name: str, configs: list[Any], key: str) -> tuple[str, Any]:
        """Created under a file lock: the run's Dask workers share the project."""
        self.context()  # creates the project's directory
        with open(self.root / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._stored(name) or (key, self._create(name, configs, key))

    def _stored(self, name: str) -> tuple[str, Any] | None:
        """A checkpoint another process of this run (a Dask worker) already added."""
        from great_expectations.exceptions import DataContextError

        context = self.context()
        try:
            checkpoint = context.checkpoints.get(name)
        except (DataContextError, KeyError, ValueError):
            return None
        suite = checkpoint.validation_definitions[0].suite
        return (suite.meta or {}).get("content_key", ""), checkpoint

    def _create(self, name: str, configs: list[Any], key: str) -> Any:
        import great_expectations as gx

        context = self.context()
        batch = context.data_sources.get(SOURCE).get_asset(ASSET).get_batch_definition(BATCH)
        suite = gx.ExpectationSuite(
            name=name,
            expectations=[c.to_domain_obj() for c in configs],
            meta={"content_key": key},
        )
        suite = context.suites.add(suite)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=suite)
        )
        return context.checkpoints.add(
            gx.Checkpoint(name=name, validation_definitions=[definition], result_format="SUMMARY")
        )

    def validate(
        self, name: str, run_name: str, configs: list[Any], frame: pd.DataFrame, params: dict
    ) -> Any:
        """Run the gate's checkpoint on `frame`; the result is stored under `run_name`."""
        from great_expectations.core.run_identifier import RunIdentifier

        checkpoint = self.checkpoint(name, configs)
        outcome = checkpoint.run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=params,
            run_id=RunIdentifier(run_name=run_name),
        )
        return next(iter(outcome.run_results.values()))

    def build_docs(self) -> None:
        self.context().build_data_docs()


def publish(root: Path, run_dir: UPath | Path, docs: bool) -> str | None:
    """At the end of a run: build Data Docs (with `docs`) in the project at `root`, then move it
    to `<run_dir>/gx` (uploaded to stores that cannot rename, its config last). Returns the
    Data Docs index, relative to the run directory, or None when no gate ran or docs are off.
    A failure here is logged, never raised: the run's outcome does not depend on its
    documentation."""
    with _OPEN_LOCK:
        opened = _OPEN.pop(str(root), None)
    if not (root / "great_expectations.yml").exists():
        return None
    built = False
    try:
        (root / LOCK_FILE).unlink(missing_ok=True)
        if docs:
            (opened or RunProject(root)).build_docs()
            built = True
        publish_dir(root, run_dir / "gx", "great_expectations.yml")
    except Exception:
        log.exception("the run's Great Expectations project could not be published")
        return None
    return DOCS_INDEX if built else None


def link_artifact(index: UPath | Path, run_id: str) -> None:
    """A Prefect link artifact to the run's Data Docs, on the flow run's page."""
    from prefect.artifacts import create_link_artifact

    try:
        create_link_artifact(
            key="data-docs",
            link=url(index),
            link_text="Great Expectations Data Docs",
            description=f"Every gate of run {run_id}: suites, checkpoints and results",
        )
    except Exception:
        log.warning("the Data Docs link artifact could not be created", exc_info=True)
