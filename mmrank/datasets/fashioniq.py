"""FashionIQ (Wu et al., CVPR 2021): composed retrieval of dresses, shirts and tops.

Layout::

    <root>/captions/cap.{dress,shirt,toptee}.{train,val,test}.json   [{candidate, target, captions: [2]}]
    <root>/image_splits/split.{dress,shirt,toptee}.{train,val,test}.json   [ASIN, ...]
    <root>/images/<ASIN>.png   (some copies use .jpg: ``image_ext``)

The gallery is the union of the categories' split images (an ASIN listed in several categories
is one item); every caption pair is a composed query (candidate image + the two captions joined
with "and") searched among its own category's images only. Recall@10/50 is reported per
category (``dress/recall@10``), as the mean over categories (``macro/recall@10``, the number
papers report as the average) and over all queries (``recall@10``).

Scored as the validation code the CIR papers use (``compute_fiq_val_metrics`` and ``main`` in
ABaldrati/CLIP4Cir ``src/validate.py``): per category, the share of captions whose target is in
the top k of that category's split images, the reference image staying in the ranking (nothing is
ignored); the "average recall" of R@10 (of R@50) is the mean of the three categories' values,
``macro/recall@10``. The plain ``recall@10``, over all queries at once, is no number those
papers print. Their ``average_recall``, (average R@10 + average R@50) / 2, is not computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmrank.datasets.base import Qrels, RetrievalDataset, check_files, inside, read_json
from mmrank.errors import InputError
from mmrank.types import Item, Query

CATEGORIES = ("dress", "shirt", "toptee")
SPLITS = ("train", "val", "test")
METRICS = ("recall@10", "recall@50")
LAYOUT = ("<root>/captions/cap.<category>.<split>.json, <root>/image_splits/split.<category>.<split>.json "
          "and the images as <root>/images/<ASIN>.png (see the image_ext option)")
_STRIP = " .?,"


def load_fashioniq(root: str | Path, split: str = "val", categories: Sequence[str] | str = CATEGORIES,
                   image_ext: str = ".png") -> RetrievalDataset:
    """Load one FashionIQ split (``val``, ``test`` or ``train``) of the given ``categories``
    (a list, or a comma-separated string such as ``"dress,toptee"``) from ``root``; images are
    ``<root>/images/<ASIN><image_ext>``, and an ASIN that would name a file outside
    ``<root>/images`` is an InputError naming the split or captions file."""
    if split not in SPLITS:
        raise InputError(f"Unknown FashionIQ split {split!r}: expected one of {', '.join(SPLITS)}.")
    chosen = _categories(categories)
    extension = image_ext if image_ext.startswith(".") else f".{image_ext}"
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise InputError(f"FashionIQ folder not found: {root}. Expected {LAYOUT}.")
    images = root / "images"
    items: dict[str, Item] = {}
    queries: list[Query] = []
    qrels: Qrels = {}
    for category in chosen:
        split_path = root / "image_splits" / f"split.{category}.{split}.json"
        gallery = {asin: inside(images, f"{asin}{extension}", source=f"{split_path}: image {asin!r}")
                   for asin in _read_split(split_path)}
        _check_images(list(gallery.values()), split_path, extension)
        for asin, path in gallery.items():
            items.setdefault(asin, Item(id=asin, kind="image", source=str(path), metadata={"category": category}))
        captions_path = root / "captions" / f"cap.{category}.{split}.json"
        candidates = frozenset(gallery)
        entries = _read_captions(captions_path, split_path.name, candidates, needs_target=split != "test")
        references = [inside(images, f"{entry['candidate']}{extension}",
                             source=f"{captions_path}: entry {index} candidate")
                      for index, entry in enumerate(entries)]
        check_files(sorted(set(references) - set(gallery.values())), captions_path, "candidate images")
        for index, (entry, reference) in enumerate(zip(entries, references)):
            query_id = f"{category}-{index}"
            queries.append(Query(image=str(reference), modification=entry["text"], id=query_id,
                                 metadata={"category": category, "candidate": entry["candidate"]},
                                 candidates=candidates))
            qrels[query_id] = {entry["target"]: 1} if entry["target"] else {}
    return RetrievalDataset(
        name="FashionIQ", items=list(items.values()), queries=queries, qrels=qrels, split=split,
        group_by="category", report_groups=True, metrics=METRICS,
    )


def join_captions(captions: Sequence[str]) -> str:
    """The usual FashionIQ query text: the captions, stripped of edge dots, commas, question
    marks and spaces, joined with " and " (empty ones left out)."""
    return " and ".join(text for text in (c.strip(_STRIP) for c in captions) if text)


def _categories(categories: Sequence[str] | str) -> tuple[str, ...]:
    names = categories.split(",") if isinstance(categories, str) else list(categories)
    chosen = tuple(dict.fromkeys(str(name).strip().lower() for name in names if str(name).strip()))
    unknown = [name for name in chosen if name not in CATEGORIES]
    if unknown or not chosen:
        raise InputError(f"Unknown FashionIQ categories {list(unknown) or categories!r}: choose among "
                         f"{', '.join(CATEGORIES)}.")
    return chosen


def _read_split(path: Path) -> list[str]:
    raw = read_json(path, LAYOUT)
    if not isinstance(raw, list) or not raw:
        raise InputError(f"{path}: expected a non-empty JSON list of image names (ASINs).")
    bad = next((value for value in raw if not isinstance(value, str) or not value.strip()), None)
    if bad is not None:
        raise InputError(f"{path}: expected image names (ASINs), found {bad!r}.")
    return list(dict.fromkeys(raw))


def _check_images(paths: list[Path], split_path: Path, extension: str) -> None:
    folder = paths[0].parent
    if not folder.is_dir():
        raise InputError(f"FashionIQ image folder not found: {folder}. Expected {LAYOUT}.")
    try:
        check_files(paths, split_path)
    except InputError as error:
        other = ".jpg" if extension.lower() == ".png" else ".png"
        if any(p.suffix.lower() == other for p in folder.iterdir()):
            raise InputError(f"{error} If this copy stores its images as {other}, pass "
                             f"image_ext={other} (-O image_ext={other}).") from None
        raise


def _read_captions(path: Path, split_file: str, gallery: frozenset[str], *,
                   needs_target: bool) -> list[dict[str, Any]]:
    """Each entry as {candidate, target (None in a split without targets), text}."""
    raw = read_json(path, LAYOUT)
    if not isinstance(raw, list) or not raw:
        raise InputError(f"{path}: expected a non-empty JSON list of {{candidate, target, captions}} entries.")
    entries = []
    for index, entry in enumerate(raw):
        where = f"{path}: entry {index}"
        if not isinstance(entry, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(entry).__name__}.")
        for key in ("candidate", "captions", *(("target",) if needs_target else ())):
            if key not in entry:
                raise InputError(f"{where} has no {key!r}.")
        candidate, target = entry["candidate"], entry.get("target")
        if not isinstance(candidate, str) or not candidate:
            raise InputError(f"{where}: 'candidate' must be an image name (ASIN), got {candidate!r}.")
        if target is not None and (not isinstance(target, str) or not target):
            raise InputError(f"{where}: 'target' must be an image name (ASIN), got {target!r}.")
        if target is not None and target not in gallery:
            raise InputError(f"{where}: target {target!r} is not an image of {split_file}, so no "
                             "ranking could find it.")
        captions = entry["captions"]
        text = join_captions(captions) if isinstance(captions, list) and all(isinstance(c, str) for c in captions) else ""
        if not text:
            raise InputError(f"{where}: 'captions' must be a list of non-empty strings, got {captions!r}.")
        entries.append({"candidate": candidate, "target": target, "text": text})
    return entries
