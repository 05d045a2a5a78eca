"""Work kept in the store for later runs (tasks.kept): published whole with its files' hashes,
never used once a file changed, never failing the run, pruned to the newest. On a local disk,
`file://` and `memory://` (no rename)."""

import json
import time
import uuid

import pytest

from tasks import kept, storage
from tasks.storage import location


@pytest.fixture(params=["local", "file", "memory"])
def store(request, tmp_path):
    if request.param == "memory":
        root = location(f"memory://kept-{uuid.uuid4().hex[:8]}")
        yield root
        storage.remove_tree(root)
    else:
        yield location(str(tmp_path) if request.param == "local" else tmp_path.as_uri())


def fill_with(files: dict[str, bytes], recorded: dict | None = None):
    def fill(staging):
        for name, content in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(content)
        return recorded or {"what": "test"}

    return fill


def test_a_kept_directory_is_published_whole_with_the_hash_of_every_file(store):
    directory = store / "things" / "a"
    files = {"x.bin": b"x" * 100, "sub/y.txt": b"why"}
    assert kept.keep(store, directory, fill_with(files, {"strategy": "s"}), "thing")
    manifest = kept.valid_manifest(directory, "thing")
    assert manifest is not None and manifest["strategy"] == "s" and manifest["created_at"]
    assert set(manifest["files"]) == set(files)
    assert manifest["files"]["x.bin"] == storage.sha256_of(directory / "x.bin")
    assert (directory / "sub" / "y.txt").read_bytes() == b"why"
    # nothing is left beside it: no scratch directory, no owner file
    assert [p.name for p in store.iterdir()] == ["things"]
    assert storage.OWNER_FILE not in {p.name for p in directory.iterdir()}


def test_one_kept_first_stays_as_it_is(store):
    directory = store / "a"
    assert kept.keep(store, directory, fill_with({"f": b"first"}), "thing")
    assert not kept.keep(store, directory, fill_with({"f": b"second"}), "thing")
    assert (directory / "f").read_bytes() == b"first"


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / "f").write_bytes(b"changed"),
        lambda d: (d / "f").unlink(),
        lambda d: (d / kept.MANIFEST).write_text("{not json"),
        lambda d: (d / kept.MANIFEST).write_text(json.dumps({"no": "files"})),
        lambda d: (d / kept.MANIFEST).write_text(json.dumps({"files": ["f"]})),
    ],
    ids=["changed file", "missing file", "unreadable manifest", "no files", "files not a map"],
)
def test_a_kept_directory_whose_files_do_not_match_is_never_used(store, damage, caplog):
    directory = store / "a"
    assert kept.keep(store, directory, fill_with({"f": b"content"}), "thing")
    damage(directory)
    assert kept.valid_manifest(directory, "the thing") is None
    assert "the thing" in caplog.text  # the warning names what is computed again
    assert kept.valid_manifest(store / "never-kept", "other") is None


def test_keeping_never_fails_the_run(store, caplog):
    def failing(staging):
        raise OSError("disk full")

    assert not kept.keep(store, store / "a", failing, "the thing")
    assert "could not keep the thing" in caplog.text and "disk full" in caplog.text
    assert not (store / "a").exists()
    assert not store.exists() or list(store.iterdir()) == []  # no scratch directory left


def test_only_the_newest_matching_directories_are_kept(store):
    for i in range(5):
        kind = "even" if i % 2 == 0 else "odd"
        kept.keep(store, store / "d" / f"v{i}", fill_with({"f": bytes([i])}, {"kind": kind}), "x")
        time.sleep(0.002)  # distinct created_at
    (store / "d" / "debris").mkdir(parents=True, exist_ok=True)  # no manifest: left alone
    kept.prune(store / "d", 1, lambda m: m["kind"] == "even")
    names = sorted(p.name for p in (store / "d").iterdir())
    assert names == ["debris", "v1", "v3", "v4"] or names == ["v1", "v3", "v4"]  # memory:// drops
    kept.prune(store / "d", 1)
    assert [n for n in sorted(p.name for p in (store / "d").iterdir()) if n != "debris"] == ["v4"]
