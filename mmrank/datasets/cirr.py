"""CIRR (Composed Image Retrieval on Real-life images, Liu et al., ICCV 2021), release rc2.

Layout (the images' relative paths come from the split files)::

    <root>/dev/dev-244-0-img0.png   <root>/test1/...   <root>/train/<n>/...
    <root>/cirr/captions/cap.rc2.{train,val,test1}.json
    <root>/cirr/image_splits/split.rc2.{train,val,test1}.json

Some copies drop the inner ``cirr/`` (``<root>/captions/...``); both are read.

Every image of the split is an item (id = its name, e.g. ``dev-244-0-img0``); every caption is a
composed query (reference image + caption) whose reference is never returned. Two judgement sets
are scored from the same rankings: Recall@1/5/10/50 over the gallery, and Recall_subset@1/2/3
within the query's image set (``img_set.members`` less the reference), as ``subset/recall@K``.
test1 has no targets: its rankings go to the evaluation server (:func:`write_cirr_submission`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmrank.datasets.base import (
    Judgements,
    Qrels,
    RetrievalDataset,
    SubmissionWriter,
    check_files,
    inside,
    read_json,
    submission_path,
)
from mmrank.errors import InputError
from mmrank.files import write_json_atomic
from mmrank.types import Item, Query

SPLITS = ("train", "val", "test1")
METRICS = ("recall@1", "recall@5", "recall@10", "recall@50")
SUBSET_METRICS = ("recall@1", "recall@2", "recall@3")
SUBMISSION_DEPTH = 50
LAYOUT = ("<root>/cirr/captions/cap.rc2.<split>.json, <root>/cirr/image_splits/split.rc2.<split>.json "
          "(or the same without the inner cirr/) and the images at the paths the split file gives, "
          "relative to <root> (e.g. ./dev/dev-244-0-img0.png)")


@dataclass(frozen=True)
class _Pair:
    pairid: str
    reference: str
    caption: str
    target: str | None
    members: tuple[str, ...]


def load_cirr(root: str | Path, split: str = "val") -> RetrievalDataset:
    """Load one CIRR split (``val``, ``test1`` or ``train``) from ``root`` (the folder holding
    ``dev/``, ``test1/`` and ``cirr/``). An image path in the split file that does not lie inside
    ``root`` (an absolute one, or one climbing out with ``..``) is an InputError naming the image."""
    if split not in SPLITS:
        raise InputError(f"Unknown CIRR split {split!r}: expected one of {', '.join(SPLITS)}.")
    root = Path(root).expanduser().absolute()
    annotations = _annotation_folder(root)
    split_path = annotations / "image_splits" / f"split.rc2.{split}.json"
    captions_path = annotations / "captions" / f"cap.rc2.{split}.json"
    images = _read_split(split_path, root)
    pairs = _read_captions(captions_path, images, split_path, needs_target=split != "test1")
    check_files(list(images.values()), split_path)
    items = [Item(id=name, kind="image", source=str(path)) for name, path in images.items()]
    queries = [
        Query(image=str(images[pair.reference]), modification=pair.caption, id=pair.pairid,
              metadata={"reference": pair.reference, "members": list(pair.members)},
              excluded=frozenset({pair.reference}))
        for pair in pairs
    ]
    qrels: Qrels = {pair.pairid: {pair.target: 1} if pair.target else {} for pair in pairs}
    ignored = {pair.pairid: frozenset({pair.reference}) for pair in pairs}
    within = {pair.pairid: frozenset(pair.members) - {pair.reference} for pair in pairs}
    protocols = {
        "": Judgements(qrels, ignored),
        "subset": Judgements(qrels, ignored, within=within, metrics=SUBSET_METRICS),
    }
    return RetrievalDataset(
        name="CIRR", items=items, queries=queries, qrels=qrels, split=split, ignored=ignored,
        protocols=protocols, metrics=METRICS,
        write_submission=cirr_submission_writer({p.pairid: (p.reference, p.members) for p in pairs}),
    )


def cirr_submission_writer(image_sets: Mapping[str, tuple[str, tuple[str, ...]]]) -> SubmissionWriter:
    """The ``write_submission`` of a CIRR split whose queries (pair id -> (reference, members))
    are ``image_sets``: see :func:`write_cirr_submission`."""

    def write(rankings: Mapping[str, list[str]], folder: Path, pipeline: str) -> list[Path]:
        return write_cirr_submission(rankings, image_sets, folder, pipeline)

    return write


def write_cirr_submission(rankings: Mapping[str, list[str]],
                          image_sets: Mapping[str, tuple[str, tuple[str, ...]]],
                          folder: Path, pipeline: str) -> list[Path]:
    """Write the two files the CIRR evaluation server takes, ``recall_submission_<pipeline>.json``
    (each pair's top 50 image names, reference left out) and
    ``recall_subset_submission_<pipeline>.json`` (the top 3 of its image set less the reference,
    in ranking order); both are ``{"version": "rc2", "metric": ..., "<pairid>": [names]}``.

    Image-set members missing from a ranking (a ranking cut short with ``-k``) follow the ranked
    ones in their image-set order, so every pair still gets three names.
    """
    recall: dict[str, Any] = {"version": "rc2", "metric": "recall"}
    subset: dict[str, Any] = {"version": "rc2", "metric": "recall_subset"}
    for pairid, (reference, members) in image_sets.items():
        ranked = [name for name in dict.fromkeys(rankings.get(pairid, ())) if name != reference]
        recall[pairid] = ranked[:SUBMISSION_DEPTH]
        group = [name for name in dict.fromkeys(members) if name != reference]
        in_group = [name for name in ranked if name in group]
        subset[pairid] = (in_group + [name for name in group if name not in in_group])[:3]
    paths = [submission_path(folder, "recall_submission", pipeline),
             submission_path(folder, "recall_subset_submission", pipeline)]
    for path, content in zip(paths, (recall, subset)):
        write_json_atomic(path, content)
    return paths


# --- reading -----------------------------------------------------------------------------------


def _annotation_folder(root: Path) -> Path:
    """``<root>/cirr`` when it holds the annotations, else ``<root>`` (copies without ``cirr/``)."""
    if not root.is_dir():
        raise InputError(f"CIRR folder not found: {root}. Expected {LAYOUT}.")
    for folder in (root / "cirr", root):
        if (folder / "captions").is_dir() or (folder / "image_splits").is_dir():
            return folder
    raise InputError(f"CIRR folder {root} has neither cirr/captions/ nor captions/. Expected {LAYOUT}.")


def _read_split(path: Path, root: Path) -> dict[str, Path]:
    """Image name -> its file under ``root`` (``./dev/x.png`` and ``dev/x.png`` alike); a path
    that does not lie inside ``root`` is an InputError naming the image."""
    raw = read_json(path, LAYOUT)
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{path}: expected a non-empty JSON object of image name -> relative path "
                         f"(e.g. \"./dev/dev-244-0-img0.png\"), got {_kind(raw)}.")
    images: dict[str, Path] = {}
    for name, relative in raw.items():
        if not isinstance(relative, str) or not relative.strip():
            raise InputError(f"{path}: image {name!r} has no path (got {relative!r}).")
        images[name] = inside(root, relative.strip(), source=f"{path}: image {name!r}")
    return images


def _read_captions(path: Path, images: Mapping[str, Path], split_path: Path, *,
                   needs_target: bool) -> list[_Pair]:
    raw = read_json(path, LAYOUT)
    if not isinstance(raw, list):
        raise InputError(f"{path}: expected a JSON list of caption entries, got {_kind(raw)}.")
    pairs: list[_Pair] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(raw):
        pair = _pair(entry, f"{path}: entry {index}", images, split_path.name, needs_target)
        if pair.pairid in seen:
            raise InputError(f"{path}: entry {index} repeats pairid {pair.pairid} (entry {seen[pair.pairid]}).")
        seen[pair.pairid] = index
        pairs.append(pair)
    if not pairs:
        raise InputError(f"{path} holds no caption entries.")
    return pairs


def _pair(entry: Any, where: str, images: Mapping[str, Path], split_file: str, needs_target: bool) -> _Pair:
    if not isinstance(entry, dict):
        raise InputError(f"{where}: expected a JSON object, got {_kind(entry)}.")
    for key in ("pairid", "reference", "caption", "img_set", *(("target_hard",) if needs_target else ())):
        if key not in entry:
            raise InputError(f"{where} has no {key!r}.")
    pairid = entry["pairid"]
    if isinstance(pairid, bool) or not isinstance(pairid, (int, str)) or str(pairid).strip() == "":
        raise InputError(f"{where}: 'pairid' must be an integer, got {pairid!r}.")
    where = f"{where} (pairid {pairid})"
    caption = entry["caption"]
    if not isinstance(caption, str):
        raise InputError(f"{where}: 'caption' must be a string, got {caption!r}.")
    reference = _image_name(entry, "reference", where, images, split_file)
    target = _image_name(entry, "target_hard", where, images, split_file) if needs_target else None
    image_set = entry["img_set"]
    members = image_set.get("members") if isinstance(image_set, dict) else None
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise InputError(f"{where}: 'img_set' must be an object whose 'members' is a non-empty list "
                         f"of image names, got {image_set!r}.")
    unknown = [m for m in members if m not in images]
    if unknown:
        raise InputError(f"{where}: img_set member {unknown[0]!r} is not an image of {split_file}.")
    return _Pair(str(pairid).strip(), reference, caption, target, tuple(members))


def _image_name(entry: dict[str, Any], key: str, where: str, images: Mapping[str, Path], split_file: str) -> str:
    name = entry[key]
    if not isinstance(name, str) or not name:
        raise InputError(f"{where}: {key!r} must be an image name, got {name!r}.")
    if name not in images:
        raise InputError(f"{where}: {key} {name!r} is not an image of {split_file}.")
    return name


def _kind(value: Any) -> str:
    return f"an empty {type(value).__name__}" if value in ({}, []) else type(value).__name__
