"""raw_vectors: full-precision vectors in a file, read by row, and exact re-scoring of candidates."""

from __future__ import annotations

import numpy as np
import pytest

from mmrank.errors import CollectionError, InputError
from mmrank.raw_vectors import RawVectors, rescore
from tests import vectors as sample_vectors


def test_rows_come_back_by_number_in_any_shape(tmp_path):
    data = sample_vectors.unit(10, 4)
    for raw in (RawVectors.create(4, tmp_path / "v.f32"), RawVectors.create(4)):  # a file, a temporary file
        raw.append(data[:6])
        raw.append(data[6:])
        assert len(raw) == 10
        np.testing.assert_array_equal(raw.take(np.array([[9, 0], [3, 3]])), data[[[9, 0], [3, 3]]])
        assert raw.take(np.array([], dtype=np.int64)).shape == (0, 4)
        with pytest.raises(InputError, match="Rows 0..10 asked of 10"):
            raw.take(np.array([0, 10]))
        raw.close()
    assert (tmp_path / "v.f32").stat().st_size == 10 * 4 * 4  # no header: rows x dim x float32


def test_a_saved_file_opens_read_only_and_a_wrong_size_is_named(tmp_path):
    data = sample_vectors.unit(5, 3)
    raw = RawVectors.create(3)
    raw.append(data)
    raw.save_to(tmp_path / "saved.f32")
    opened = RawVectors.open(tmp_path / "saved.f32", 3, 5)
    np.testing.assert_array_equal(opened.take(np.arange(5)), data)
    with pytest.raises(InputError, match="read-only"):
        opened.append(data)
    with pytest.raises(CollectionError, match=r"saved.f32 has 60 bytes; it should hold 6 vectors .* Rebuild"):
        RawVectors.open(tmp_path / "saved.f32", 3, 6)
    with pytest.raises(CollectionError, match="gone.f32 is missing"):
        RawVectors.open(tmp_path / "gone.f32", 3, 5)


def test_rescoring_orders_candidates_by_their_exact_scores():
    raw = RawVectors.create(2)
    raw.append(np.array([[1, 0], [0, 1], [0.6, 0.8], [0.8, 0.6], [1, 0]], dtype=np.float32))
    queries = np.array([[1, 0], [0, 1]], dtype=np.float32)
    candidates = np.array([[1, 2, 3, -1], [0, 4, 3, 2]])
    scores, labels = rescore(raw, queries, candidates, 3, block=1)
    # Query 0: 3 (0.8), 2 (0.6), 1 (0); the missing candidate is never returned.
    # Query 1: 2 (0.8), 3 (0.6), then 0 and 4 tie at 0 and keep their candidate order: 0 first.
    np.testing.assert_array_equal(labels, [[3, 2, 1], [2, 3, 0]])
    np.testing.assert_allclose(scores, [[0.8, 0.6, 0], [0.8, 0.6, 0]], atol=1e-6)


def test_fewer_candidates_than_k_leave_empty_places():
    raw = RawVectors.create(2)
    raw.append(np.eye(2, dtype=np.float32))
    scores, labels = rescore(raw, np.eye(2, dtype=np.float32), np.array([[1, -1, -1], [-1, -1, -1]]), 2)
    np.testing.assert_array_equal(labels, [[1, -1], [-1, -1]])
    assert scores[0, 0] == 0 and np.isneginf(scores[0, 1]) and np.isneginf(scores[1]).all()
