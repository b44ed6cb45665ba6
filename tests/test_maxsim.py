"""maxsim: late-interaction scores against a plain sum over tokens of each token's best dot product."""

from __future__ import annotations

import numpy as np
import pytest

from mmrank import maxsim as maxsim_module
from mmrank.maxsim import maxsim, maxsim_pairs
from tests import vectors as sample_vectors


def _pages(counts, dim=16, seed=0):
    return [sample_vectors.unit(count, dim, seed=seed + n) for n, count in enumerate(counts)]


def _by_hand(queries, pages):
    return np.array([[maxsim_pairs(query, page) for page in pages] for query in queries])


def test_scores_equal_the_plain_definition_for_pages_of_any_length(monkeypatch):
    pages = _pages([3, 1, 7, 2, 5])
    queries = [sample_vectors.unit(4, 16, seed=90), sample_vectors.unit(1, 16, seed=91)]
    expected = _by_hand(queries, pages)
    counts = [len(page) for page in pages]
    np.testing.assert_allclose(maxsim(queries, np.vstack(pages), counts), expected, rtol=1e-5)
    monkeypatch.setattr(maxsim_module, "CONVERTED_ROWS", 4)  # many small blocks, pages never split
    np.testing.assert_allclose(maxsim(queries, np.vstack(pages), counts), expected, rtol=1e-5)


def test_float16_rows_score_as_their_float32_values(monkeypatch):
    monkeypatch.setattr(maxsim_module, "CONVERTED_ROWS", 5)
    pages = _pages([6, 4, 9])
    rows = np.vstack(pages).astype(np.float16)
    query = [sample_vectors.unit(3, 16, seed=7)]
    np.testing.assert_allclose(maxsim(query, rows, [6, 4, 9]),
                               maxsim(query, rows.astype(np.float32), [6, 4, 9]), rtol=1e-6)


def test_a_hand_computed_case():
    page = np.array([[1, 0], [0, 1]], dtype=np.float32)
    query = np.array([[1, 0], [0.6, 0.8]], dtype=np.float32)
    # token 1: best is patch 1 (1.0); token 2: best is patch 2 (0.8): 1.8
    assert maxsim([query], page, [2])[0, 0] == pytest.approx(1.8)


def test_the_torch_path_gives_the_same_scores():
    pages = _pages([2, 5, 3])
    queries = [sample_vectors.unit(3, 16, seed=11), sample_vectors.unit(2, 16, seed=12)]
    np.testing.assert_allclose(maxsim_module._maxsim_torch(queries, np.vstack(pages), np.array([2, 5, 3]), "cpu"),
                               _by_hand(queries, pages), rtol=1e-5)


def test_edge_cases():
    assert maxsim([], np.zeros((3, 2), np.float32), [3]).shape == (0, 1)
    assert maxsim([np.ones((1, 2), np.float32)], np.zeros((0, 2), np.float32), []).shape == (1, 0)
    with pytest.raises(ValueError, match="at least one vector"):
        maxsim([np.ones((1, 2), np.float32)], np.zeros((1, 2), np.float32), [1, 0])
