"""Manifest: creating, reading (with clear errors for corrupted or foreign files), vector spaces and
their encoders, the index type, and publishing index files; every change written atomically."""

from __future__ import annotations

import json
import os
import re

import pytest

from mmrank import manifest as manifest_module
from mmrank.errors import CollectionError, EncoderMismatchError
from mmrank.manifest import FORMAT, FORMAT_VERSION, MANIFEST, Manifest, Space


def _on_disk(folder) -> dict:
    return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))


def _write_raw(folder, data) -> None:
    (folder / MANIFEST).write_text(json.dumps(data), encoding="utf-8")


def _count_writes(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Record each manifest write (the data written) while still writing it."""
    written: list[dict] = []
    real = Manifest.write

    def write(self: Manifest) -> None:
        written.append(json.loads(json.dumps(self.data)))
        real(self)

    monkeypatch.setattr(Manifest, "write", write)
    return written


@pytest.fixture
def clock(monkeypatch):
    """A fake clock: each _now() call returns the next of a series of timestamps."""
    ticks = iter(f"2024-01-01T00:00:{second:02d}+00:00" for second in range(60))
    monkeypatch.setattr(manifest_module, "_now", lambda: next(ticks))


# ----------------------------------------------------------------------------- create and read


def test_create_writes_a_complete_manifest(tmp_path, clock):
    manifest = Manifest.create(tmp_path, index_factory="HNSW32")
    assert _on_disk(tmp_path) == {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": "2024-01-01T00:00:00+00:00",
        # write() stamps "updated" again when it saves.
        "updated": "2024-01-01T00:00:01+00:00",
        "spaces": {},
        "index": {"factory": "HNSW32", "files": {}, "revision": -1},
        "counts": {"items": 0, "files": 0, "vectors": {}},
    }
    assert manifest.folder == tmp_path
    assert manifest.index_factory == "HNSW32"
    assert manifest.index_revision == -1
    assert manifest.index_files == {}
    assert manifest.spaces == {}


def test_create_defaults_to_a_flat_index(tmp_path):
    assert Manifest.create(tmp_path).index_factory == "Flat"
    assert _on_disk(tmp_path)["index"]["factory"] == "Flat"


def test_the_file_is_indented_json_with_sorted_keys(tmp_path):
    Manifest.create(tmp_path)
    text = (tmp_path / MANIFEST).read_text()
    assert text.startswith("{\n  ")
    assert list(json.loads(text)) == sorted(json.loads(text))


def test_read_returns_what_was_written(tmp_path):
    created = Manifest.create(tmp_path)
    created.bind_encoder("image", "test:random", 8)
    created.publish({"image": "index/image.r3"}, 3, {"items": 5, "files": 0, "vectors": {"image": 5}})
    read = Manifest.read(tmp_path)
    assert read.data == created.data
    assert read.spaces == {"image": Space("image", "test:random", 8)}
    assert read.index_files == {"image": "index/image.r3"} and read.index_revision == 3


def test_read_of_invalid_json_names_the_file_and_leaves_it(tmp_path):
    (tmp_path / MANIFEST).write_text('{"format": "mmrank.collection", "form')
    with pytest.raises(CollectionError, match=rf"{MANIFEST}: corrupted manifest, not valid JSON"):
        Manifest.read(tmp_path)
    assert (tmp_path / MANIFEST).read_text() == '{"format": "mmrank.collection", "form'


def test_read_of_bytes_that_are_not_utf8(tmp_path):
    (tmp_path / MANIFEST).write_bytes(b'{"format": "\xff\xfe"}')
    with pytest.raises(CollectionError, match="corrupted manifest, not valid JSON"):
        Manifest.read(tmp_path)


def test_read_of_a_missing_manifest_raises_collection_error(tmp_path):
    with pytest.raises(CollectionError, match=re.escape(str(tmp_path / MANIFEST))):
        Manifest.read(tmp_path)


@pytest.mark.parametrize("data", [
    ["a", "list"],
    "a string",
    {"format": "something.else", "format_version": 1},
    {"format_version": 1},
])
def test_read_of_another_kind_of_file(tmp_path, data):
    _write_raw(tmp_path, data)
    with pytest.raises(CollectionError, match=rf"{MANIFEST}: not an mmrank collection manifest\."):
        Manifest.read(tmp_path)


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_read_of_another_format_version(tmp_path, version):
    Manifest.create(tmp_path)
    data = _on_disk(tmp_path)
    data["format_version"] = version
    _write_raw(tmp_path, data)
    with pytest.raises(CollectionError, match=rf"format version {version!r} is not supported .*reads version 1"):
        Manifest.read(tmp_path)


@pytest.mark.parametrize("key", ["spaces", "index", "counts", "created"])
def test_read_of_a_manifest_missing_a_key(tmp_path, key):
    Manifest.create(tmp_path)
    data = _on_disk(tmp_path)
    del data[key]
    _write_raw(tmp_path, data)
    with pytest.raises(CollectionError, match=rf"corrupted manifest, '{key}' is missing"):
        Manifest.read(tmp_path)


# ----------------------------------------------------------------------------- spaces and encoders


def test_bind_encoder_records_and_persists_a_space(tmp_path):
    manifest = Manifest.create(tmp_path)
    manifest.bind_encoder("image", "test:random", 16)
    manifest.bind_encoder("text", "test:text", 8)
    assert manifest.space("image") == Space("image", "test:random", 16)
    assert manifest.spaces == {"image": Space("image", "test:random", 16), "text": Space("text", "test:text", 8)}
    assert _on_disk(tmp_path)["spaces"] == {"image": {"encoder": "test:random", "dim": 16},
                                             "text": {"encoder": "test:text", "dim": 8}}


def test_bind_encoder_stores_the_dimension_as_an_int(tmp_path):
    import numpy as np

    manifest = Manifest.create(tmp_path)
    manifest.bind_encoder("image", "test:random", np.int64(12))
    assert type(manifest.space("image").dim) is int
    assert _on_disk(tmp_path)["spaces"]["image"]["dim"] == 12


def test_binding_the_same_encoder_again_writes_nothing(tmp_path, monkeypatch):
    manifest = Manifest.create(tmp_path)
    manifest.bind_encoder("image", "test:random", 16)
    writes = _count_writes(monkeypatch)
    manifest.bind_encoder("image", "test:random", 16)
    assert writes == []


def test_binding_another_encoder_is_refused_and_changes_nothing(tmp_path):
    manifest = Manifest.create(tmp_path)
    manifest.bind_encoder("image", "test:random", 16)
    before = (tmp_path / MANIFEST).read_bytes()
    with pytest.raises(EncoderMismatchError,
                       match=r"its image vectors were made by 'test:random' \(16 dimensions\), "
                             r"but the query was encoded by 'other:model'\. .*build a new collection with 'other:model'"):
        manifest.bind_encoder("image", "other:model", 16)
    with pytest.raises(EncoderMismatchError, match=r"'test:random' \(16 dimensions\)"):
        manifest.bind_encoder("image", "test:random", 32)
    assert manifest.space("image") == Space("image", "test:random", 16)
    assert (tmp_path / MANIFEST).read_bytes() == before


def test_check_encoder_compares_the_dimension_only_when_given(tmp_path):
    manifest = Manifest.create(tmp_path)
    manifest.bind_encoder("text", "test:text", 8)
    manifest.check_encoder("text", "test:text")
    manifest.check_encoder("text", "test:text", 8)
    with pytest.raises(EncoderMismatchError, match=re.escape(str(tmp_path))):
        manifest.check_encoder("text", "test:text", 9)
    with pytest.raises(EncoderMismatchError, match="encoded by 'test:other'"):
        manifest.check_encoder("text", "test:other")


def test_encoder_mismatch_is_a_collection_error():
    assert issubclass(EncoderMismatchError, CollectionError)


def test_an_unknown_space_is_a_collection_error_naming_it(tmp_path):
    manifest = Manifest.create(tmp_path)
    manifest.bind_encoder("image", "test:random", 8)
    with pytest.raises(CollectionError, match=rf"^{re.escape(str(tmp_path))}: the collection has no text vectors\.$"):
        manifest.space("text")
    with pytest.raises(CollectionError, match="has no audio vectors") as caught:
        manifest.check_encoder("audio", "test:random", 8)
    assert not isinstance(caught.value, EncoderMismatchError)


# ----------------------------------------------------------------------------- index factory and publishing


def test_set_index_factory_unpublishes_but_keeps_the_file_list(tmp_path):
    manifest = Manifest.create(tmp_path)
    manifest.publish({"image": "index/image.r4", "bm25": "bm25.r4"}, 4, {"items": 1, "files": 0, "vectors": {}})
    manifest.set_index_factory("IVF16,Flat")
    assert manifest.index_factory == "IVF16,Flat"
    assert manifest.index_revision == -1
    # The old folders stay listed so that the next build can delete them.
    assert manifest.index_files == {"image": "index/image.r4", "bm25": "bm25.r4"}
    on_disk = _on_disk(tmp_path)["index"]
    assert on_disk == {"factory": "IVF16,Flat", "files": {"image": "index/image.r4", "bm25": "bm25.r4"},
                       "revision": -1}


def test_publish_records_files_revision_and_counts(tmp_path):
    manifest = Manifest.create(tmp_path)
    counts = {"items": 7, "files": 2, "vectors": {"image": 7}}
    manifest.publish({"image": "index/image.r2"}, 2, counts)
    manifest.publish({"image": "index/image.r5", "bm25": "bm25.r5"}, 5, counts)
    data = _on_disk(tmp_path)
    assert data["index"] == {"factory": "Flat", "files": {"image": "index/image.r5", "bm25": "bm25.r5"},
                             "revision": 5}
    assert data["counts"] == counts
    assert Manifest.read(tmp_path).index_revision == 5


def test_index_files_is_a_copy(tmp_path):
    manifest = Manifest.create(tmp_path)
    manifest.publish({"image": "index/image.r1"}, 1, {"items": 0, "files": 0, "vectors": {}})
    files = manifest.index_files
    files["bm25"] = "bm25.r1"
    assert manifest.index_files == {"image": "index/image.r1"}


def test_every_change_stamps_updated_but_not_created(tmp_path, clock):
    manifest = Manifest.create(tmp_path)
    created = _on_disk(tmp_path)["created"]
    stamps = [_on_disk(tmp_path)["updated"]]
    manifest.bind_encoder("image", "test:random", 8)
    stamps.append(_on_disk(tmp_path)["updated"])
    manifest.set_index_factory("HNSW32")
    stamps.append(_on_disk(tmp_path)["updated"])
    manifest.publish({}, 1, {"items": 0, "files": 0, "vectors": {}})
    stamps.append(_on_disk(tmp_path)["updated"])
    assert stamps == sorted(set(stamps)) and len(stamps) == 4
    assert _on_disk(tmp_path)["created"] == created


def test_a_failed_write_leaves_the_old_manifest_and_no_temporary(tmp_path, monkeypatch):
    manifest = Manifest.create(tmp_path)
    manifest.bind_encoder("image", "test:random", 8)
    before = (tmp_path / MANIFEST).read_bytes()

    def replace(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space left"):
        manifest.publish({"image": "index/image.r1"}, 1, {"items": 3, "files": 0, "vectors": {"image": 3}})
    assert (tmp_path / MANIFEST).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST]
    monkeypatch.undo()
    assert Manifest.read(tmp_path).index_revision == -1
