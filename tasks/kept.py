"""Work kept in the store for later runs: published whole, checked before it is used.

A kept directory holds its files and `manifest.json`, written last, with every file's sha256
beside what its keeper records. It is built in a scratch directory at the store's top level
(where tasks.runs.clean_stale sweeps what a killed run left) and published at once
(tasks.storage.publish_dir), so a reader finds a whole one or none; one whose files no longer
match their hashes is not used. Keeping is an optimisation: it never fails the run, and a
directory another run kept first stays as it is. Kept trained branches (tasks.reuse) and kept
standalone exports (tasks.export) are such directories."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from upath import UPath

from tasks.storage import (
    OWNER_FILE,
    changed_file,
    is_local,
    json_text,
    publish_dir,
    read_json,
    remove_tree,
    scratch_dir,
    sha256_of,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def valid_manifest(directory: UPath, what: str) -> dict[str, Any] | None:
    """The manifest of the kept `directory` when every file it lists still has its hash; None
    when none is kept, or (with a warning naming `what`) when a file is missing, changed or
    unreadable."""
    if not (directory / MANIFEST).is_file():
        return None
    try:
        manifest = read_json(directory / MANIFEST)
        changed = changed_file(directory, manifest["files"])
    except (AttributeError, OSError, KeyError, TypeError, ValueError) as exc:
        log.warning("kept %s is unreadable (%s); computing it again", what, exc)
        return None
    if changed is not None:
        log.warning("kept %s: %s is missing or changed; computing it again", what, changed)
        return None
    return manifest


def keep(store: UPath, directory: UPath, fill: Callable[[Path], dict[str, Any]], what: str) -> bool:
    """Keep `directory` (inside `store`) unless one is kept already: `fill(staging)` writes
    the files into a local scratch directory and returns what the manifest records beside the
    files' hashes. True when this call published it. Never raises: a store that refuses the
    write only costs a later run the work again."""
    try:
        if (directory / MANIFEST).is_file():
            return False
        staging = scratch_dir(store, f".{directory.name}.tmp-")
        try:
            recorded = fill(staging)
            (staging / OWNER_FILE).unlink(missing_ok=True)
            files = {
                p.relative_to(staging).as_posix(): sha256_of(p)
                for p in sorted(staging.rglob("*"))
                if p.is_file()
            }
            manifest = recorded | {"created_at": datetime.now(UTC).isoformat(), "files": files}
            (staging / MANIFEST).write_text(json_text(manifest))
            directory.parent.mkdir(parents=True, exist_ok=True)
            if (directory / MANIFEST).is_file():  # another run kept it meanwhile
                return False
            if directory.exists() and is_local(directory):  # a local one arrives whole: debris
                remove_tree(directory)
            publish_dir(staging, directory, MANIFEST)  # a rename: fails if one just arrived
        finally:
            remove_tree(staging)
        return True
    except Exception as exc:  # noqa: BLE001 - an optimisation never fails the run
        log.warning("could not keep %s for later runs: %s", what, exc)
        return False


def prune(
    parent: UPath, newest: int, same: Callable[[dict[str, Any]], bool] = lambda _: True
) -> None:
    """Of the kept directories in `parent` whose manifest passes `same`, remove all but the
    `newest` (by the manifest's `created_at`). Directories without a readable manifest are
    being published, or debris: not this function's to judge."""
    versions = []
    for directory in parent.iterdir():
        try:
            manifest = read_json(directory / MANIFEST)
        except (OSError, ValueError):
            continue
        if same(manifest):
            versions.append((str(manifest.get("created_at", "")), directory))
    for _, directory in sorted(versions, key=lambda v: v[0], reverse=True)[newest:]:
        remove_tree(directory)
