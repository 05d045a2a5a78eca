"""The command line's background imports (tasks.preload): Python's cyclic garbage collection is
paused while they run and resumes once they end, with what they made frozen."""

from __future__ import annotations

import gc
import sys

import pytest

from tasks import preload

PROBE = "gc_state_probe"  # a module that records, as it is imported, whether collection is on


@pytest.fixture
def probe(tmp_path, monkeypatch):
    (tmp_path / f"{PROBE}.py").write_text(
        "import gc, weakref\n"
        "COLLECTING = gc.isenabled()\n"
        "class Node: ...\n"
        "garbage = Node()\n"
        "garbage.itself = garbage  # a cycle: only the cyclic collector frees it\n"
        "GARBAGE = weakref.ref(garbage)\n"
        "del garbage\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(preload, "_LOADING", {})
    monkeypatch.setattr(preload, "_PAUSED", [])
    enabled = gc.isenabled()
    yield
    sys.modules.pop(PROBE, None)
    gc.unfreeze()
    (gc.enable if enabled else gc.disable)()


def test_collection_pauses_for_the_imports_and_resumes_with_their_objects_frozen(probe):
    """Regression (session 19): collection ran through every imported object again and again,
    2.4 s of the default run's main process."""
    frozen_before = gc.get_freeze_count()
    preload.pause_collection()
    assert not gc.isenabled()
    preload.start((PROBE,)).join()
    assert sys.modules[PROBE].COLLECTING is False  # imported while collection was paused
    assert gc.isenabled()
    assert gc.get_freeze_count() > frozen_before  # the imports' objects are never scanned again
    assert preload._PAUSED == []


def test_the_garbage_the_imports_made_is_collected_not_frozen(probe):
    """Regression (session 19): freezing without a collection first kept every cycle the imports
    had left behind for good (insurance's peak RSS rose by ~75 MB)."""
    preload.pause_collection()
    preload.start((PROBE,)).join()
    assert sys.modules[PROBE].GARBAGE() is None


def test_without_a_pause_the_imports_leave_collection_alone(probe):
    """Flows run from tests, deployments or `imbalance-train` pause nothing, so nothing of
    theirs is frozen."""
    frozen_before = gc.get_freeze_count()
    preload.start((PROBE,)).join()
    assert sys.modules[PROBE].COLLECTING is True
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen_before


def test_a_failing_import_still_resumes_collection(probe):
    preload.pause_collection()
    preload.start(("no_such_module_anywhere", PROBE)).join()
    assert gc.isenabled()
    assert sys.modules[PROBE].COLLECTING is False
