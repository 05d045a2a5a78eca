"""The storage layer on a local disk, `file://` and `memory://` (a real fsspec filesystem
without rename or symlinks): all-or-nothing writes, directories published marker-last,
pointer files, the registry lock."""

import threading
import time
import uuid

import pandas as pd
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from pydantic import ValidationError

from tasks import storage
from tasks.config import TrainConfig
from tasks.errors import StorageError
from tasks.storage import (
    atomic_path,
    copy_file,
    is_local,
    local_copy,
    location,
    locked,
    publish_dir,
    read_parquet,
    read_pointer,
    set_pointer,
    sha256_of,
    write_json,
    write_parquet,
)


@pytest.fixture
def memory_root():
    """A fresh directory on the process-wide memory filesystem, removed afterwards."""
    root = location(f"memory://test-{uuid.uuid4().hex[:8]}")
    yield root
    storage.remove_tree(root)


@pytest.fixture(params=["local", "file", "memory"])
def root(request, tmp_path, memory_root):
    return {
        "local": location(str(tmp_path)),
        "file": location(tmp_path.as_uri()),
        "memory": memory_root,
    }[request.param]


def test_kinds_of_location():
    assert is_local(location("runs")) and is_local(location("file:///tmp/runs"))
    assert not is_local(location("memory://bucket/runs"))
    assert str(location("~/runs")).startswith("/")  # expanded


def test_atomic_write_leaves_nothing_when_the_block_fails(root):
    target = root / "sub" / "out.parquet"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        pd.DataFrame({"a": [1]}).to_parquet(tmp)
        raise RuntimeError("interrupted")
    assert not target.exists()
    assert [p.name for p in (root / "sub").iterdir()] == []  # no temporary file either


def test_parquet_json_copy_and_hash_round_trip(root, tmp_path):
    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    path = write_parquet(root / "f.parquet", frame)
    pd.testing.assert_frame_equal(read_parquet(path), frame)
    assert read_parquet(path, columns=["b"]).columns.tolist() == ["b"]
    copied = copy_file(path, tmp_path / "copy.parquet")
    assert sha256_of(copied) == sha256_of(path)
    write_json(root / "m.json", {"k": 1})
    with local_copy(root / "m.json") as local:  # what Keras gets: a real local file
        assert local.read_text().strip().startswith("{") and local.name == "m.json"


def test_publish_dir_uploads_the_marker_last_and_a_failure_leaves_no_marker(
    memory_root, tmp_path, monkeypatch
):
    source = tmp_path / "set"
    (source / "nested").mkdir(parents=True)
    for name in ("a.parquet", "manifest.json", "nested/b.parquet"):
        (source / name).write_text(name)
    target = memory_root / "store" / "fp"
    uploaded = []
    original = MemoryFileSystem.put_file

    def recording(self, lpath, rpath, *args, **kwargs):
        uploaded.append(rpath.rsplit("/fp/", 1)[1])
        return original(self, lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "put_file", recording)
    publish_dir(source, target, "manifest.json")
    assert uploaded[-1] == "manifest.json" and sorted(uploaded[:-1]) == [
        "a.parquet",
        "nested/b.parquet",
    ]
    assert (target / "nested" / "b.parquet").read_text() == "nested/b.parquet"
    assert not source.exists()

    again = tmp_path / "again"
    again.mkdir()
    (again / "a.parquet").write_text("a")
    (again / "manifest.json").write_text("{}")

    def failing(self, lpath, rpath, *args, **kwargs):
        if rpath.endswith("a.parquet"):
            raise OSError("connection reset")
        return original(self, lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "put_file", failing)
    with pytest.raises(OSError, match="connection reset"):
        publish_dir(again, memory_root / "store" / "other", "manifest.json")
    assert not (memory_root / "store" / "other" / "manifest.json").exists()


def test_publish_dir_on_a_local_disk_is_one_rename(tmp_path):
    source = tmp_path / ".staging"
    source.mkdir()
    (source / "manifest.json").write_text("{}")
    inode = source.stat().st_ino
    publish_dir(source, location(str(tmp_path)) / "fp", "manifest.json")
    assert (tmp_path / "fp").stat().st_ino == inode and not source.exists()


def test_pointer_file_everywhere_and_a_symlink_where_there_are_symlinks(root):
    (root / "run-1").mkdir(parents=True, exist_ok=True)
    (root / "run-2").mkdir(parents=True, exist_ok=True)
    set_pointer(root, "latest", "run-1")
    set_pointer(root, "latest", "run-2")
    assert read_pointer(root, "latest").name == "run-2"
    link = root / "latest"
    if is_local(root):
        assert storage.local_path(link).is_symlink()
        assert storage.local_path(link).resolve().name == "run-2"
    else:
        assert not link.exists()
    assert read_pointer(root / "nowhere", "latest") is None


def test_lock_on_a_store_without_flock_serialises_writers(memory_root):
    target = memory_root / "registry" / "model.json"
    inside, overlaps = [], []

    def writer(n: int) -> None:
        with locked(target):
            inside.append(n)
            if len(inside) > 1:
                overlaps.append(tuple(inside))
            time.sleep(0.05)
            inside.remove(n)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert overlaps == [] and not (memory_root / "registry" / "model.json.lock").exists()


def test_a_stale_lock_left_by_a_killed_run_is_taken_over(memory_root, monkeypatch):
    target = memory_root / "registry" / "model.json"
    lock = memory_root / "registry" / "model.json.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_bytes(b"killed run")
    monkeypatch.setattr(storage, "LOCK_STALE_SECONDS", 0.3)
    started = time.perf_counter()
    with locked(target):
        waited = time.perf_counter() - started
    assert 0.2 < waited < 5 and not lock.exists()


def test_storage_urls_are_checked_when_the_config_is_built():
    with pytest.raises(ValidationError, match="unknown storage protocol 'nope'"):
        TrainConfig(runs_dir="nope://bucket/runs")
    with pytest.raises(ValidationError, match="cannot see; use --runner threads"):
        TrainConfig(runs_dir="memory://runs", runner="dask")
    config = TrainConfig(runs_dir="memory://bucket/runs")
    assert str(config.store_dir) == "memory://bucket/runs/store"
    assert str(config.registry_dir) == "memory://bucket/runs/registry"
    assert (
        str(TrainConfig(runs_dir="runs", store="file:///srv/store").store_dir)
        == "file:///srv/store"
    )


def test_a_store_that_cannot_create_exclusively_is_named(memory_root, monkeypatch):
    original = MemoryFileSystem._open

    def no_exclusive(self, path, mode="rb", *args, **kwargs):
        if mode == "xb":
            raise NotImplementedError("mode 'xb' not supported")
        return original(self, path, mode, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "_open", no_exclusive)
    with (
        pytest.raises(StorageError, match="cannot create a file exclusively"),
        locked(memory_root / "registry" / "model.json"),
    ):
        pass


def test_a_held_lock_is_renewed_so_it_is_never_taken_for_stale(memory_root, monkeypatch):
    """A decision longer than the stale time keeps its lock: the holder rewrites it, so a second
    run waits instead of taking it over and deciding beside the first."""
    monkeypatch.setattr(storage, "LOCK_STALE_SECONDS", 0.5)
    monkeypatch.setattr(storage, "LOCK_RENEW_SECONDS", 0.1)
    target = memory_root / "registry" / "model.json"
    inside, overlaps = [], []

    def hold(n: int, seconds: float) -> None:
        with locked(target):
            inside.append(n)
            if len(inside) > 1:
                overlaps.append(tuple(inside))
            time.sleep(seconds)
            inside.remove(n)

    first = threading.Thread(target=hold, args=(1, 1.5))
    first.start()
    time.sleep(0.2)
    second = threading.Thread(target=hold, args=(2, 0.01))
    second.start()
    first.join()
    second.join()
    assert overlaps == []


def test_release_after_a_takeover_leaves_the_new_holders_lock(memory_root):
    target = memory_root / "registry" / "model.json"
    lock = memory_root / "registry" / "model.json.lock"
    with locked(target):
        lock.write_bytes(b"another run's token")  # what a stale takeover by another run leaves
    assert lock.exists() and lock.read_bytes() == b"another run's token"
