"""Heavy imports on a background thread, started by the command line before the flow.

Importing Great Expectations, TensorFlow and matplotlib's pyplot takes ~8 s of one core on 2
cores. The training command line starts them on one thread while Prefect's temporary server
starts and the data stages run, during which the main thread mostly waits (flows.train). Each
user waits for its module with `finish` before its first use; no earlier step imports them,
since two threads importing one package at once can see it half initialised. Importing does not
start TensorFlow's runtime, so its thread pools can still be set afterwards
(tasks.model.configure_tensorflow, which waits here first)."""

from __future__ import annotations

import importlib
import logging
import threading

log = logging.getLogger(__name__)

_LOADING: dict[str, threading.Event] = {}


def start(modules: tuple[str, ...]) -> None:
    """Import `modules`, in this order, on a background thread."""
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

    threading.Thread(target=load, name="preload-imports", daemon=True).start()


def finish(module: str) -> None:
    """Wait for the background import of `module`, if one was started."""
    event = _LOADING.get(module)  # kept: every thread that asks waits until it is done
    if event is not None:
        event.wait()
