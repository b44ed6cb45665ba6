"""The helpers every loader shares: ``inside``, which keeps a path read from a data file within
the dataset folder, and ``untouched``, the spy the loaders' tests use to show that a refused path
is never looked at."""

from __future__ import annotations

import builtins
import io
import os
import sys
from pathlib import Path

import pytest

from mmrank.datasets.base import inside
from mmrank.errors import InputError

SOURCE = "annotations.json: entry 3"


def untouched(monkeypatch: pytest.MonkeyPatch, folder: Path) -> list[str]:
    """A list that collects every path under ``folder`` (judged lexically) that is stat-ed, listed
    or opened from now until the test ends; a loader that refuses a path climbing into ``folder``
    leaves it empty."""
    touched: list[str] = []
    prefix = os.path.normpath(os.path.abspath(folder))

    def spy(original):
        def call(*args, **kwargs):
            path = args[0] if args else kwargs.get("path", kwargs.get("file"))
            if isinstance(path, (str, bytes, os.PathLike)):
                full = os.path.normpath(os.path.abspath(os.fsdecode(path)))
                if full == prefix or full.startswith(prefix + os.sep):
                    touched.append(full)
            return original(*args, **kwargs)

        return call

    for module, name in ((os, "stat"), (os, "lstat"), (os, "listdir"), (os, "scandir"), (os, "open"),
                         (builtins, "open"), (io, "open")):
        monkeypatch.setattr(module, name, spy(getattr(module, name)))
    return touched


def test_untouched_sees_stats_listings_and_opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"secret")
    touched = untouched(monkeypatch, outside)
    (tmp_path / "ds").mkdir()
    assert (tmp_path / "ds").is_dir() and touched == []
    assert (tmp_path / "ds" / ".." / "outside" / "secret.png").is_file()
    assert os.listdir(outside) == ["secret.png"]
    assert (outside / "secret.png").read_bytes() == b"secret"
    assert touched == [str(outside / "secret.png"), str(outside), str(outside / "secret.png")]


# --- inside ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("a.png", "a.png"),
        ("images/a/b.png", "images/a/b.png"),
        ("./x.png", "x.png"),
        ("a/../b.png", "b.png"),  # climbs back down: still inside
        ("images//a/./b.png", "images/a/b.png"),
        ("images/a/../../b.png", "b.png"),
        ("...", "..."),  # a file name, not a parent
        ("..x.png", "..x.png"),
    ],
)
def test_paths_that_stay_inside_are_joined_normalised(tmp_path: Path, relative: str, expected: str) -> None:
    assert inside(tmp_path, relative, source=SOURCE) == tmp_path / expected


@pytest.mark.parametrize(
    ("relative", "reason"),
    [
        ("../outside/secret.png", "climbs out of the folder with '..'"),
        ("..", "climbs out of the folder with '..'"),
        ("images/../../secret.png", "climbs out of the folder with '..'"),
        ("a/b/../../../secret.png", "climbs out of the folder with '..'"),
        ("/etc/passwd", "is not relative (it starts with "),
        ("//server/share/x.png", "is not relative (it starts with "),
        ("C:/data/x.png", "is not relative (it starts with "),
        ("C:x.png", "is not relative (it starts with 'C:')"),
        ("", "is empty"),
        ("   ", "is empty"),
        ("images/a\0.png", "holds a NUL character"),
        (".", "names the folder itself, not a file in it"),
        ("images/..", "names the folder itself, not a file in it"),
    ],
)
def test_paths_that_leave_the_folder_are_refused(tmp_path: Path, relative: str, reason: str) -> None:
    with pytest.raises(InputError) as error:
        inside(tmp_path / "ds", relative, source=SOURCE)
    message = str(error.value)
    assert message.startswith(f"{SOURCE}: the path {relative!r} {reason}")
    assert message.endswith(f"; a path read from a data file must lie inside the dataset folder {tmp_path / 'ds'}.")


def test_the_message_names_the_source_the_path_and_the_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError) as error:
        inside(tmp_path, "../outside/secret.png", source=SOURCE)
    assert str(error.value) == (
        f"{SOURCE}: the path '../outside/secret.png' climbs out of the folder with '..'; a path read "
        f"from a data file must lie inside the dataset folder {tmp_path}."
    )


def test_an_absolute_path_inside_the_folder_is_refused_too(tmp_path: Path) -> None:
    # Data files name files relative to the dataset folder: an absolute path is refused wherever
    # it points, so a dataset reads the same files wherever it is copied.
    with pytest.raises(InputError, match="is not relative"):
        inside(tmp_path, str(tmp_path / "a.png"), source=SOURCE)


@pytest.mark.skipif(sys.platform == "win32", reason="a backslash is a separator on Windows")
def test_a_backslash_is_part_of_a_file_name_on_posix(tmp_path: Path) -> None:
    # POSIX reads "..\\outside\\secret.png" as one file name in the folder, not as a way out.
    assert inside(tmp_path, "..\\outside\\secret.png", source=SOURCE) == tmp_path / "..\\outside\\secret.png"
    assert inside(tmp_path, "images\\a.png", source=SOURCE).parent == tmp_path
    # A Windows drive or UNC share is refused on every platform; so is a POSIX absolute path.
    with pytest.raises(InputError, match=r"is not relative \(it starts with '/'\)"):
        inside(tmp_path, "/etc/passwd", source=SOURCE)
    with pytest.raises(InputError, match=r"is not relative \(it starts with 'C:'\)"):
        inside(tmp_path, "C:\\data\\x.png", source=SOURCE)
    with pytest.raises(InputError, match="is not relative"):
        inside(tmp_path, "\\\\server\\share\\x.png", source=SOURCE)


@pytest.mark.skipif(sys.platform != "win32", reason="a backslash is a file name character on POSIX")
def test_a_backslash_is_a_separator_on_windows(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="climbs out of the folder"):
        inside(tmp_path, "..\\outside\\secret.png", source=SOURCE)
    with pytest.raises(InputError, match="is not relative"):
        inside(tmp_path, "\\secret.png", source=SOURCE)


def test_a_symlinked_folder_inside_is_followed_wherever_it_points(tmp_path: Path) -> None:
    (tmp_path / "disk" / "images").mkdir(parents=True)
    (tmp_path / "disk" / "images" / "a.png").write_bytes(b"png")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "images").symlink_to(tmp_path / "disk" / "images", target_is_directory=True)
    path = inside(tmp_path / "ds", "images/a.png", source=SOURCE)
    assert path == tmp_path / "ds" / "images" / "a.png" and path.read_bytes() == b"png"
    # Judged lexically: "images/.." is the dataset folder, not the symlink target's parent.
    assert inside(tmp_path / "ds", "images/../b.png", source=SOURCE) == tmp_path / "ds" / "b.png"
