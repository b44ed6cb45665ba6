"""Result fusion and composed query vectors against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from mmrank.errors import InputError
from mmrank.fusion import compose_query_vector, fuse_results, reciprocal_rank_fusion, score_fusion


def test_rrf_matches_hand_computed_scores():
    results = {"text": [("a", 0.9), ("b", 0.8)], "bm25": [("b", 12.0), ("c", 3.0)]}
    fused = dict(reciprocal_rank_fusion(results, k=60))
    # a: 1/61; b: 1/62 + 1/61; c: 1/62
    assert fused == pytest.approx({"a": 1 / 61, "b": 1 / 62 + 1 / 61, "c": 1 / 62})
    assert [item for item, _ in reciprocal_rank_fusion(results)] == ["b", "a", "c"]


def test_rrf_weights_can_reorder():
    results = {"text": [("a", 0.9)], "bm25": [("b", 5.0)]}
    assert reciprocal_rank_fusion(results, weights={"bm25": 2.0})[0][0] == "b"


def test_score_fusion_min_max_normalises_each_path():
    results = {"text": [("a", 0.9), ("b", 0.5), ("c", 0.1)], "bm25": [("c", 30.0), ("a", 10.0)]}
    fused = dict(score_fusion(results))
    # text: a 1.0, b 0.5, c 0.0; bm25: c 1.0, a 0.0
    assert fused == pytest.approx({"a": 1.0, "b": 0.5, "c": 1.0})


def test_unknown_fusion_method_is_named():
    with pytest.raises(InputError, match="Unknown fusion method 'max'"):
        fuse_results({}, method="max")


def test_composed_query_vector():
    image, text = np.array([[1.0, 0.0]]), np.array([[0.0, 2.0]])
    composed = compose_query_vector(image, text, alpha=0.8)
    expected = np.array([[0.2, 0.8]]) / np.hypot(0.2, 0.8)
    np.testing.assert_allclose(composed, expected, rtol=1e-6)
    with pytest.raises(InputError, match="alpha"):
        compose_query_vector(image, text, alpha=1.5)
