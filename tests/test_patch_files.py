"""patch_files: a late-interaction space's patch vectors appended to files and read back by page."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mmrank.errors import CollectionError, InputError
from mmrank.patch_files import PatchFiles, check_dtype
from tests import vectors as sample_vectors


def test_pages_come_back_as_written_in_any_order(tmp_path):
    files = PatchFiles(tmp_path / "patches", "patches", 4, "float32")
    first, second = sample_vectors.unit(3, 4, seed=1), sample_vectors.unit(5, 4, seed=2)
    assert files.append(first) == (0, 0)
    assert files.append(second) == (0, 3)  # appended after the first page's rows
    rows = files.read(np.array([[0, 3, 5], [0, 0, 3]]))
    np.testing.assert_array_equal(rows, np.vstack([second, first]))
    assert files.read(np.zeros((0, 3), np.int64)).shape == (0, 4)
    assert files.rows(0) == 8 and files.segments() == [0]
    assert (tmp_path / "patches" / "patches.0.f32").stat().st_size == 8 * 4 * 4  # no header


def test_float16_storage_halves_the_bytes_and_reads_back_rounded(tmp_path):
    files = PatchFiles(tmp_path, "patches", 8)  # float16 by default
    data = sample_vectors.unit(10, 8)
    files.append(data)
    assert files.bytes_on_disk() == 10 * 8 * 2
    stored = files.read(np.array([[0, 0, 10]]), dtype=None)
    assert stored.dtype == np.float16
    np.testing.assert_array_equal(files.read(np.array([[0, 0, 10]])), data.astype(np.float16).astype(np.float32))


def test_a_write_cut_short_is_overwritten_by_the_next_append(tmp_path):
    files = PatchFiles(tmp_path, "patches", 4, "float32")
    files.append(sample_vectors.unit(2, 4))
    with open(files.path(0), "ab") as out:  # half a row, as a killed write leaves it
        out.write(b"\0" * 8)
    more = sample_vectors.unit(1, 4, seed=5)
    assert files.append(more) == (0, 2)
    np.testing.assert_array_equal(files.read(np.array([[0, 2, 1]])), more)


def test_missing_and_truncated_files_are_named(tmp_path):
    files = PatchFiles(tmp_path, "patches", 4, "float32")
    with pytest.raises(CollectionError, match=r"patches.0.f32 is missing"):
        files.read(np.array([[0, 0, 1]]))
    files.append(sample_vectors.unit(2, 4))
    files.forget_readers()
    os.truncate(files.path(0), 20)
    with pytest.raises(CollectionError, match=r"patches.0.f32 is truncated: rows 1..1"):
        files.read(np.array([[0, 1, 1]]))


def test_a_file_opened_for_reading_survives_being_replaced(tmp_path):
    files = PatchFiles(tmp_path, "patches", 4, "float32")
    data = sample_vectors.unit(3, 4)
    files.append(data)
    files.read(np.array([[0, 0, 1]]))  # opens segment 0
    files.path(0).unlink()  # compaction deletes an old segment
    np.testing.assert_array_equal(files.read(np.array([[0, 0, 3]])), data)


def test_bad_shapes_dtypes_and_names_are_refused(tmp_path):
    files = PatchFiles(tmp_path, "patches", 4)
    with pytest.raises(InputError, match=r"shape \(2, 3\) for a space of 4 dimensions"):
        files.append(np.zeros((2, 3)))
    with pytest.raises(InputError, match="float16 or float32; got 'int8'"):
        check_dtype("int8")
    with pytest.raises(InputError, match="letters, digits"):
        PatchFiles(tmp_path, "../up", 4)
