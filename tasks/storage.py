"""Where runs, feature sets and the registry live: any fsspec location (a local path,
`file://`, `memory://`, `s3://`, ...), through universal-pathlib's `UPath`.

Writes are all-or-nothing on every kind of store. A file is written to a local temporary path
and then renamed over its target (local disks) or uploaded in one piece (object stores, where a
PUT is atomic). A directory is published by a rename where the store has one; elsewhere its
files are uploaded first and one marker file (a manifest, a `run.json`) last, so a reader that
finds the marker finds the whole directory. Symlinks become pointer files written last."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from upath import UPath

from tasks.errors import StorageError

log = logging.getLogger(__name__)

#: protocols whose filesystem lives inside one process (not shared with Dask worker processes)
PROCESS_LOCAL_PROTOCOLS = frozenset({"memory"})
LOCK_POLL_SECONDS = 0.2
LOCK_STALE_SECONDS = 15 * 60  # a lock object not renewed for this long was left by a killed run
LOCK_RENEW_SECONDS = 60  # a held lock object is rewritten this often


def location(url: str | os.PathLike[str]) -> UPath:
    """A path on any fsspec filesystem; plain paths (with `~`) stay local `pathlib` paths."""
    if isinstance(url, UPath):
        return url
    text = os.fspath(url)
    return UPath(text if "://" in text else os.path.expanduser(text))


def protocol_of(url: str | os.PathLike[str]) -> str:
    text = os.fspath(url) if not isinstance(url, UPath) else str(url)
    return text.split("://", 1)[0].lower() if "://" in text else "file"


def check_location(url: str, what: str) -> None:
    """Fail early, naming the setting, when no fsspec filesystem serves the URL's protocol."""
    protocol = protocol_of(url)
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        raise ValueError(f"{what} {url!r} needs an extra package: {exc}") from exc
    except ValueError as exc:
        raise ValueError(f"{what} {url!r}: unknown storage protocol {protocol!r}") from exc


def is_local(path: UPath | Path) -> bool:
    """On this machine's disk: renames are atomic, symlinks and file locks exist."""
    return not isinstance(path, UPath) or isinstance(path.fs, LocalFileSystem)


def local_path(path: UPath | Path) -> Path:
    return Path(os.fspath(path))


# --- files -----------------------------------------------------------------------------------


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a local temporary path with `target`'s name as its suffix; when the block succeeds,
    rename it over `target` (local) or upload it in one piece (other stores)."""
    target = location(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = f".tmp-{uuid.uuid4().hex[:8]}-"
    if is_local(target):
        tmp = local_path(target).with_name(tag + target.name)  # same directory: rename is atomic
        try:
            yield tmp
            fsync_path(tmp)  # the bytes reach the disk before the name points at them
            os.replace(tmp, local_path(target))
            fsync_path(local_path(target).parent)  # and the rename itself survives a crash
        finally:
            tmp.unlink(missing_ok=True)
        return
    with tempfile.TemporaryDirectory(prefix="imbalance-upload-") as scratch:
        tmp = Path(scratch) / (tag + target.name)
        yield tmp
        target.fs.put_file(str(tmp), target.path)


def fsync_path(path: Path) -> None:
    """Flush a local file or directory to the disk (a no-op where the OS cannot)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> UPath:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return location(path)


def write_text(path: str | os.PathLike[str], text: str) -> UPath:
    return write_bytes(path, text.encode())


PRETTY_JSON_MAX = 1 << 20  # JSON up to this size (compact) is indented for people to read


def json_text(payload: Any) -> str:
    """`payload` as JSON text: indented when it is small enough for people to read, compact
    beyond PRETTY_JSON_MAX. Python's indenting encoder is written in Python: a wide data set's
    20 MB model.json took ~1 s to indent against ~0.4 s compact, several times per run."""
    text = json.dumps(payload, default=str)
    if len(text) <= PRETTY_JSON_MAX:
        text = json.dumps(payload, indent=2, default=str)
    return text + "\n"


def write_json(path: str | os.PathLike[str], payload: Any) -> UPath:
    return write_text(path, json_text(payload))


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(location(path).read_text())


def write_parquet(path: str | os.PathLike[str], frame: pd.DataFrame) -> UPath:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return location(path)


def parquet_batches(
    path: str | os.PathLike[str], rows: int, columns: list[str] | None = None
) -> Iterator[pd.DataFrame]:
    """A local parquet file `rows` rows at a time (only `columns` when given): what a step
    that reads a whole table at once would hold in memory, bounded."""
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(local_path(location(path))).iter_batches(rows, columns=columns):
        yield batch.to_pandas()


def read_parquet(path: str | os.PathLike[str], columns: list[str] | None = None) -> pd.DataFrame:
    """Read a parquet file from any store; only `columns` are fetched when given."""
    path = location(path)
    if is_local(path):
        return pd.read_parquet(local_path(path), columns=columns)
    return pq.read_table(path.path, columns=columns, filesystem=path.fs).to_pandas()


def open_parquet(path: str | os.PathLike[str]) -> pq.ParquetFile:
    """A parquet file on any store, for reading one row group at a time."""
    path = location(path)
    if is_local(path):
        return pq.ParquetFile(local_path(path))
    return pq.ParquetFile(path.fs.open(path.path, "rb"))


def sha256_of(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with location(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def changed_file(directory: str | os.PathLike[str], hashes: dict[str, str]) -> str | None:
    """The first of `hashes`' files (name -> sha256, relative to `directory`) that is missing
    or whose content no longer has that hash; None when every one matches."""
    directory = location(directory)
    for name, digest in hashes.items():
        path = directory / name
        if not path.is_file() or sha256_of(path) != digest:
            return name
    return None


def copy_file(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> UPath:
    """Copy between any two stores (e.g. a feature set on S3 into a local model directory)."""
    with location(source).open("rb") as reader, atomic_path(target) as tmp, open(tmp, "wb") as out:
        shutil.copyfileobj(reader, out, 1 << 20)
    return location(target)


def copy_tree(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> UPath:
    """Copy a directory's files, sub-directories included, between any two stores."""
    source = location(source)
    for path in sorted(source.rglob("*")):
        if path.is_file():
            copy_file(path, location(target) / path.relative_to(source).as_posix())
    return location(target)


@contextmanager
def local_copy(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A local file with `path`'s content and name, for libraries that need one (Keras)."""
    path = location(path)
    if is_local(path):
        yield local_path(path)
        return
    with tempfile.TemporaryDirectory(prefix="imbalance-download-") as scratch:
        local = Path(scratch) / path.name
        path.fs.get_file(path.path, str(local))
        yield local


# --- directories -----------------------------------------------------------------------------


OWNER_FILE = ".owner.json"  # in a staging directory: which process is writing it


def write_owner(directory: Path) -> None:
    """Record which process writes `directory`. Renamed into place, so the file is either
    absent or whole: a process killed while writing it never leaves an empty one."""
    tmp = directory / f"{OWNER_FILE}.tmp"
    tmp.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    os.replace(tmp, directory / OWNER_FILE)


def scratch_dir(beside: UPath | Path, prefix: str) -> Path:
    """A local directory to build something in before publishing it to `beside`'s parent: on
    the same disk when that is local (so publishing is one rename), else in the temp dir."""
    if is_local(beside):
        parent = local_path(beside)
        parent.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        write_owner(path)  # a killed build is cleaned later
    else:
        path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)  # mkdtemp makes it private; stores are often shared
    return path


def publish_dir(source: Path, target: UPath | Path, marker: str) -> None:
    """Move the local directory `source` to `target`, all at once for readers that look for
    `target/marker`: one rename on a local disk; elsewhere every other file is uploaded first
    and `marker` last. `target` must not hold a complete directory already."""
    if is_local(target):
        os.rename(source, local_path(target))
        return
    files = sorted(p for p in source.rglob("*") if p.is_file() and p != source / marker)
    for file in [*files, source / marker]:
        destination = target.joinpath(*file.relative_to(source).parts)
        destination.parent.mkdir(parents=True, exist_ok=True)
        target.fs.put_file(str(file), destination.path)
    remove_tree(source)


def remove_tree(path: UPath | Path) -> None:
    """Delete a directory and everything in it, if it exists."""
    if is_local(path):
        shutil.rmtree(local_path(path), ignore_errors=True)
    elif path.exists():
        path.fs.rm(path.path, recursive=True)


def set_pointer(directory: UPath | Path, name: str, target: str) -> None:
    """Point `directory/name` at the sibling `target`: a symlink swapped atomically where the
    store has symlinks, and always `directory/name.json` ({"target": ...}) written last, which
    readers on any store can follow."""
    directory = location(directory)
    write_json(directory / f"{name}.json", {"target": target})
    if is_local(directory):
        link = local_path(directory) / name
        tmp = link.with_name(f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        os.symlink(target, tmp)
        os.replace(tmp, link)


def read_pointer(directory: UPath | Path, name: str) -> UPath | None:
    pointer = location(directory) / f"{name}.json"
    if not pointer.is_file():
        return None
    return location(directory) / read_json(pointer)["target"]


@contextmanager
def locked(path: UPath | Path) -> Iterator[None]:
    """Hold an exclusive lock named after `path` (e.g. a registry file) while the block runs.

    Local disks use `flock` on `path.lock`. Other stores use a lock object created with
    exclusive-create (`xb`), polled until free; one older than `LOCK_STALE_SECONDS` was left
    by a killed run and is taken over."""
    path = location(path)
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    if is_local(path):
        with open(local_path(lock), "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}".encode()
    while True:
        try:
            with lock.fs.open(lock.path, "xb") as handle:
                handle.write(token)
            break
        except (NotImplementedError, ValueError) as exc:  # fsspec's answer to an unknown mode
            raise StorageError(
                f"{lock}: this store cannot create a file exclusively, which the registry lock "
                f"needs ({type(exc).__name__}: {exc}); put --output on a disk or a store with "
                "conditional writes (S3 through a recent s3fs, a shared mount)"
            ) from exc
        except FileExistsError:
            holder = _lock_token(lock)
            if (
                _lock_age(lock) > LOCK_STALE_SECONDS
                and holder is not None
                and _lock_token(lock) == holder
            ):
                _remove_if_ours(lock, holder)  # a killed holder's: not renewed for the stale time
                continue
            time.sleep(LOCK_POLL_SECONDS)
    stop = threading.Event()
    renewer = threading.Thread(target=_renew_lock, args=(lock, token, stop), daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        _remove_if_ours(lock, token)


def _lock_token(lock: UPath) -> bytes | None:
    try:
        with lock.fs.open(lock.path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _remove_if_ours(lock: UPath, token: bytes) -> None:
    """Delete the lock only while it still holds `token`: after a stale takeover the lock is
    another run's, and deleting it would let a third run in beside that one."""
    if _lock_token(lock) == token:
        with contextlib.suppress(FileNotFoundError):
            lock.fs.rm(lock.path)


def _renew_lock(lock: UPath, token: bytes, stop: threading.Event) -> None:
    """Rewrite the lock every LOCK_RENEW_SECONDS while held, so a long decision is never taken
    for a killed run's leftover (its age restarts); stops if the lock is no longer ours."""
    while not stop.wait(LOCK_RENEW_SECONDS):
        if _lock_token(lock) != token:
            log.warning("registry lock %s was taken over by another run", lock)
            return
        with lock.fs.open(lock.path, "wb") as handle:
            handle.write(token)


def _lock_age(lock: UPath) -> float:
    try:
        modified = lock.fs.modified(lock.path)
    except (FileNotFoundError, NotImplementedError):
        return 0.0
    return time.time() - modified.timestamp()


def address(path: UPath | Path) -> str:
    """How to find `path` again from any working directory: an absolute local path or a URL."""
    return str(local_path(path).resolve()) if is_local(path) else str(path)


def url(path: UPath | Path) -> str:
    """A link to `path`: a file:// URI on this machine, else the store's URL."""
    return local_path(path).resolve().as_uri() if is_local(path) else str(path)
