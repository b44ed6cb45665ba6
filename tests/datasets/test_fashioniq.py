"""FashionIQ scored as the CIR papers' validation code scores it (CLIP4Cir's
compute_fiq_val_metrics): per-category Recall@10/50 within the category's images, the reference
image left in the ranking, and the mean over the categories."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmrank.datasets.fashioniq import load_fashioniq
from mmrank.evaluation import evaluate
from tests.datasets.test_cir import _fixed_pipeline, _image, _json

GALLERIES = {"dress": [f"D{i}" for i in range(60)], "shirt": [f"S{i}" for i in range(12)],
             "toptee": ["T0", "T1", "T2"]}
# (category, candidate, target, the target's 1-based rank in the category's ranking).
QUERIES = [
    ("dress", "D0", "D1", 5), ("dress", "D2", "D3", 20), ("dress", "D4", "D5", 55),
    # The reference ranks first and the target 11th: 0 at R@10, as in CLIP4Cir, which never
    # drops the reference (it would be 10th without it).
    ("shirt", "S0", "S1", 1), ("shirt", "S2", "S3", 11),
    ("toptee", "T0", "T2", 3),
]


def write_folder(root: Path) -> Path:
    for index, asin in enumerate(a for names in GALLERIES.values() for a in names):
        _image(root / "images" / f"{asin}.png", index)
    for category, names in GALLERIES.items():
        _json(root / "image_splits" / f"split.{category}.val.json", names)
        _json(root / "captions" / f"cap.{category}.val.json",
              [{"candidate": candidate, "target": target, "captions": ["is red", "is long"]}
               for cat, candidate, target, _ in QUERIES if cat == category])
    return root


def _ranking(category: str, candidate: str, target: str, rank: int) -> list[str]:
    """The category's images: the target at ``rank``, the reference first of the others."""
    order = [candidate, *(name for name in GALLERIES[category] if name not in (candidate, target))]
    return order[:rank - 1] + [target] + order[rank - 1:]


def _clip4cir_reference(rankings: dict[str, list[str]]) -> dict[str, float]:
    """compute_fiq_val_metrics per category (the share of queries whose target is among the first
    k names of the sorted gallery), then main()'s mean over the categories (as fractions, not %)."""
    reference: dict[str, float] = {}
    for k in (10, 50):
        per_category = []
        for category in GALLERIES:
            labels = [[name == target for name in rankings[f"{category}-{index}"]]
                      for index, (_, _, target, _) in enumerate(q for q in QUERIES if q[0] == category)]
            assert all(sum(row) == 1 for row in labels)  # CLIP4Cir's own check
            value = sum(sum(row[:k]) for row in labels) / len(labels)
            reference[f"{category}/recall@{k}"] = value
            per_category.append(value)
        reference[f"macro/recall@{k}"] = sum(per_category) / len(per_category)
    return reference


def test_recall_per_category_and_average_equal_clip4cirs(tmp_path: Path) -> None:
    dataset = load_fashioniq(write_folder(tmp_path / "FashionIQ"))
    assert dataset.ignored == {}
    rankings, counters = {}, dict.fromkeys(GALLERIES, 0)
    for category, candidate, target, rank in QUERIES:
        rankings[f"{category}-{counters[category]}"] = _ranking(category, candidate, target, rank)
        counters[category] += 1
    [report] = evaluate(_fixed_pipeline(dataset, rankings), dataset)
    reference = _clip4cir_reference(rankings)
    for name, value in reference.items():
        assert report.metrics[name] == pytest.approx(value, abs=1e-12), name
    # By hand: dress 1/3 and 2/3, shirt 1/2 and 1, toptee 1 and 1.
    assert report.metrics["macro/recall@10"] == pytest.approx((1 / 3 + 1 / 2 + 1) / 3)
    assert report.metrics["macro/recall@50"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert report.metrics["recall@10"] == pytest.approx(3 / 6)  # over all queries: no paper's number
    assert report.metrics["queries"] == 6
