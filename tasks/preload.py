"""Heavy imports on a background thread, started by the command line before the flow.

Importing scikit-learn, Great Expectations, TensorFlow and matplotlib's pyplot takes ~8 s of
one core on 2 cores. The training command line starts them on one thread while Prefect's
temporary server starts and the data stages run, during which the main thread mostly waits
(flows.train). A step importing a package that the background thread is importing at the same
moment can deadlock Python's import locks: a run whose data stage imported scikit-learn while
Great Expectations' altair imported narwhals failed with `_DeadlockError` on
`narwhals.stable.v1` (with a Prefect server already running, the flow started before the
imports ended). So the command line waits for the imports the steps share
(`flows.train.SHARED_IMPORTS`) before the flow. Each user also waits for its module with
`finish`. Importing does not start TensorFlow's runtime, so its thread pools can still be set
afterwards (tasks.model.configure_tensorflow, which waits here first).

Python's cyclic garbage collector runs again and again while modules are imported, each time
through every object the imports have made so far: 2.4 s of the default run's ~21 s in one
process, 1.9 s of it in ten full collections (measured with `gc.callbacks`). Those objects live
as long as the process. So the command line pauses collection from its first line
(`pause_collection`); the background thread, once its imports are done, collects once and
freezes every object left (`gc.freeze`: never scanned again, still freed when its references
go), then resumes collection. Without that one collection the garbage the imports made stayed
in memory for good: insurance's peak RSS rose by ~75 MB.
"""

from __future__ import annotations

import gc
import importlib
import logging
import threading

log = logging.getLogger(__name__)

_LOADING: dict[str, threading.Event] = {}
_PAUSED: list[bool] = []  # set while the command line keeps collection paused for its imports


def pause_collection() -> None:
    """Pause cyclic garbage collection until the background imports end (`start`), or until
    `resume_collection` (flows.temporary_server, around the Prefect server's import)."""
    gc.disable()
    _PAUSED.append(True)


def resume_collection() -> None:
    """If `pause_collection` paused collection: collect the imports' garbage once, freeze what
    is left and collect as usual from then on."""
    if _PAUSED:
        _PAUSED.clear()
        gc.collect()  # the imports' own garbage: frozen, it would stay in memory for good
        gc.freeze()
        gc.enable()


def start(modules: tuple[str, ...]) -> threading.Thread:
    """Import `modules`, in this order, on a background thread, then resume collection."""
    events = {module: threading.Event() for module in modules}
    _LOADING.update(events)

    def load() -> None:
        for module, done in events.items():
            try:
                importlib.import_module(module)
            except Exception:  # the user imports it again and reports the error properly
                log.debug("preloading %s failed", module, exc_info=True)
            finally:
                done.set()
        resume_collection()

    thread = threading.Thread(target=load, name="preload-imports", daemon=True)
    thread.start()
    return thread


def finish(module: str) -> None:
    """Wait for the background import of `module`, if one was started."""
    event = _LOADING.get(module)  # kept: every thread that asks waits until it is done
    if event is not None:
        event.wait()
