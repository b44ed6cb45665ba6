"""Files on disk: atomic writes that never leave a half-written file or a temporary behind, fsync
helpers that close what they open, SHA-256 of files, and mmrank's cache folder."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from mmrank.files import (fsync_dir, fsync_file, sha256_file, temporary_path, user_cache_dir, write_atomic,
                          write_json_atomic)

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _fail_replace(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Make os.replace fail (as a full disk or a crash would); returns the renames attempted."""
    attempts: list[tuple[str, str]] = []

    def replace(source, destination):
        attempts.append((str(source), str(destination)))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", replace)
    return attempts


def _count_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


# ----------------------------------------------------------------------------- user_cache_dir


def test_user_cache_dir_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == tmp_path / "xdg" / "mmrank"


@pytest.mark.parametrize("xdg", [None, ""], ids=["unset", "empty"])
def test_user_cache_dir_defaults_to_home_cache(monkeypatch, tmp_path, xdg):
    if xdg is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_cache_dir() == tmp_path / "home" / ".cache" / "mmrank"


def test_user_cache_dir_creates_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    user_cache_dir()
    assert not (tmp_path / "xdg").exists()


# ----------------------------------------------------------------------------- temporary_path


def test_temporary_path_is_a_new_empty_hidden_file_in_the_folder(tmp_path):
    first = temporary_path(tmp_path)
    second = temporary_path(tmp_path)
    assert first != second
    for path in (first, second):
        assert path.parent == tmp_path
        assert path.is_file() and path.stat().st_size == 0
        assert path.name.startswith(".") and path.name.endswith(".tmp")
    assert _names(tmp_path) == sorted([first.name, second.name])


def test_temporary_path_takes_prefix_and_suffix(tmp_path):
    path = temporary_path(tmp_path, suffix=".faiss.tmp", prefix=".index-")
    assert path.name.startswith(".index-") and path.name.endswith(".faiss.tmp")
    assert len(path.name) > len(".index-.faiss.tmp")  # a unique part between them


def test_temporary_path_in_a_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        temporary_path(tmp_path / "missing")
    assert _names(tmp_path) == []


# ----------------------------------------------------------------------------- write_atomic


def test_write_atomic_creates_and_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "data.bin"
    write_atomic(path, b"first")
    assert path.read_bytes() == b"first"
    write_atomic(path, b"\x00second\xff")
    assert path.read_bytes() == b"\x00second\xff"
    write_atomic(path, b"")
    assert path.read_bytes() == b""
    assert _names(tmp_path) == ["data.bin"]


def test_failed_rename_keeps_the_old_file_and_removes_the_temporary(monkeypatch, tmp_path):
    path = tmp_path / "data.json"
    path.write_bytes(b"old content")
    attempts = _fail_replace(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, b"new content that never lands")
    assert path.read_bytes() == b"old content"
    assert _names(tmp_path) == ["data.json"]
    # The rename was attempted from a hidden temporary beside the file, named after it.
    [(source, destination)] = attempts
    assert Path(source).parent == tmp_path and Path(source).name.startswith(".data.json.")
    assert destination == str(path)


def test_failed_rename_of_a_new_file_leaves_nothing(monkeypatch, tmp_path):
    _fail_replace(monkeypatch)
    with pytest.raises(OSError):
        write_atomic(tmp_path / "new.bin", b"x")
    assert _names(tmp_path) == []


def test_failure_while_syncing_keeps_the_old_file(monkeypatch, tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"old")

    def fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="Input/output error"):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert _names(tmp_path) == ["data.bin"]


def test_an_interrupt_also_cleans_up(monkeypatch, tmp_path):
    """Cleanup covers BaseException (Ctrl-C), not just Exception."""
    path = tmp_path / "data.bin"
    path.write_bytes(b"old")

    def replace(source, destination):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert _names(tmp_path) == ["data.bin"]


def test_sync_flag_decides_whether_bytes_are_fsynced(monkeypatch, tmp_path):
    calls = _count_fsyncs(monkeypatch)
    write_atomic(tmp_path / "durable.bin", b"abc")
    assert len(calls) == 1
    write_atomic(tmp_path / "cache.bin", b"abc", sync=False)
    assert len(calls) == 1
    assert (tmp_path / "cache.bin").read_bytes() == b"abc"


def test_write_atomic_into_a_missing_folder_raises_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "data.bin", b"x")
    assert _names(tmp_path) == []


# ----------------------------------------------------------------------------- write_json_atomic


def test_write_json_atomic_passes_options_to_json_dumps(tmp_path):
    path = tmp_path / "m.json"
    data = {"zeta": 1, "alpha": [1, 2], "name": "café"}
    write_json_atomic(path, data, indent=2, sort_keys=True)
    text = path.read_text(encoding="utf-8")
    assert text == json.dumps(data, indent=2, sort_keys=True)
    assert list(json.loads(text)) == ["alpha", "name", "zeta"]
    assert "\\u00e9" in text  # json.dumps's default ensure_ascii


def test_write_json_atomic_writes_utf8(tmp_path):
    path = tmp_path / "m.json"
    write_json_atomic(path, {"name": "café"}, ensure_ascii=False)
    assert path.read_bytes() == '{"name": "café"}'.encode("utf-8")


def test_write_json_atomic_refuses_unserializable_data_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{"old": true}')
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert path.read_text() == '{"old": true}'
    assert _names(tmp_path) == ["m.json"]


def test_write_json_atomic_failed_rename_keeps_the_old_file(monkeypatch, tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{"version": 1}')
    _fail_replace(monkeypatch)
    with pytest.raises(OSError):
        write_json_atomic(path, {"version": 2})
    assert json.loads(path.read_text()) == {"version": 1}
    assert _names(tmp_path) == ["m.json"]


# ----------------------------------------------------------------------------- fsync helpers


def test_fsync_file_syncs_without_changing_the_file(monkeypatch, tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"keep me")
    calls = _count_fsyncs(monkeypatch)
    fsync_file(path)
    assert len(calls) == 1
    assert path.read_bytes() == b"keep me"  # opened for update, not truncated


def test_fsync_file_of_a_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        fsync_file(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()  # "rb+" does not create it


def test_fsync_dir_syncs_the_folder_and_closes_it(monkeypatch, tmp_path):
    opened: list[int] = []
    closed: list[int] = []
    real_open, real_close = os.open, os.close

    def open_(path, flags, *args):
        fd = real_open(path, flags, *args)
        opened.append(fd)
        return fd

    def close(fd: int) -> None:
        closed.append(fd)
        real_close(fd)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "close", close)
    calls = _count_fsyncs(monkeypatch)
    fsync_dir(tmp_path)
    assert calls == opened == closed and len(opened) == 1


def test_fsync_dir_closes_the_folder_when_fsync_fails(monkeypatch, tmp_path):
    closed: list[int] = []
    real_close = os.close

    def fsync(fd: int) -> None:
        raise OSError(22, "Invalid argument")

    def close(fd: int) -> None:
        closed.append(fd)
        real_close(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "close", close)
    with pytest.raises(OSError, match="Invalid argument"):
        fsync_dir(tmp_path)
    assert len(closed) == 1


def test_fsync_dir_of_a_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "missing")


# ----------------------------------------------------------------------------- sha256_file


def test_sha256_file_matches_hashlib_for_any_block_size(tmp_path):
    data = bytes(range(256)) * 41 + b"tail"
    path = tmp_path / "blob"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    for block in (1, 7, 256, 1 << 20):
        assert sha256_file(path, block=block) == expected
    assert sha256_file(str(path)) == expected


def test_sha256_file_known_values(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "abc").write_bytes(b"abc")
    assert sha256_file(tmp_path / "empty") == EMPTY_SHA256
    assert sha256_file(tmp_path / "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_sha256_file_of_a_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        sha256_file(tmp_path / "missing")

