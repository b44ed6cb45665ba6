"""CIRCO (Composed Image Retrieval on Common Objects in context, Baldrati et al., ICCV 2023).

Layout::

    <root>/annotations/{val,test}.json
    <root>/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json   {"images": [{id, file_name}]}
    <root>/COCO2017_unlabeled/unlabeled2017/<file_name>

The gallery is every COCO 2017 unlabeled image (~123k; item id = the COCO image id as a string);
every annotation entry is a composed query (reference image + relative caption) with several
ground truths (``gt_img_ids``). The metric is mAP@5/10/25/50 with AP@k divided by
min(#ground truths, k), which is how :func:`mmrank.metrics.average_precision_at_k` normalises.
The test split has no ground truths: its rankings go to the evaluation server
(:func:`write_circo_submission`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Integral
from pathlib import Path
from typing import Any

from mmrank.datasets.base import (
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

SPLITS = ("val", "test")
METRICS = ("map_min@5", "map_min@10", "map_min@25", "map_min@50")  # CIRCO's mAP@k: AP@k / min(|relevant|, k)
SUBMISSION_DEPTH = 50
IMAGE_INFO = Path("COCO2017_unlabeled") / "annotations" / "image_info_unlabeled2017.json"
IMAGE_FOLDER = Path("COCO2017_unlabeled") / "unlabeled2017"
LAYOUT = (f"<root>/annotations/<split>.json, <root>/{IMAGE_INFO.as_posix()} and the images in "
          f"<root>/{IMAGE_FOLDER.as_posix()}/")


def load_circo(root: str | Path, split: str = "val") -> RetrievalDataset:
    """Load one CIRCO split (``val`` or ``test``) from ``root`` (the folder holding
    ``annotations/`` and ``COCO2017_unlabeled/``). A ``file_name`` of the image info that does not
    lie inside the image folder is an InputError naming the image."""
    if split not in SPLITS:
        raise InputError(f"Unknown CIRCO split {split!r}: expected one of {', '.join(SPLITS)}.")
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise InputError(f"CIRCO folder not found: {root}. Expected {LAYOUT}.")
    info_path = root / IMAGE_INFO
    paths = _read_image_info(info_path, root / IMAGE_FOLDER)
    annotations = root / "annotations" / f"{split}.json"
    entries = read_json(annotations, LAYOUT)
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{annotations}: expected a non-empty JSON list of query entries, got "
                         f"{type(entries).__name__}{' (empty)' if entries == [] else ''}.")
    check_files(list(paths.values()), info_path)
    items = [Item(id=image_id, kind="image", source=str(path)) for image_id, path in paths.items()]
    queries: list[Query] = []
    qrels: Qrels = {}
    for index, entry in enumerate(entries):
        query, relevant = _entry(entry, f"{annotations}: entry {index}", paths, needs_truth=split != "test")
        if query.id in qrels:
            raise InputError(f"{annotations}: entry {index} repeats query id {query.id}.")
        queries.append(query)
        qrels[query.id] = {image_id: 1 for image_id in relevant}
    return RetrievalDataset(
        name="CIRCO", items=items, queries=queries, qrels=qrels, split=split, metrics=METRICS,
        write_submission=circo_submission_writer([query.id for query in queries]),
    )


def circo_submission_writer(query_ids: Sequence[str]) -> SubmissionWriter:
    """The ``write_submission`` of a CIRCO split with these queries: see
    :func:`write_circo_submission`."""

    def write(rankings: Mapping[str, list[str]], folder: Path, pipeline: str) -> list[Path]:
        return [write_circo_submission(rankings, query_ids, folder, pipeline)]

    return write


def write_circo_submission(rankings: Mapping[str, list[str]], query_ids: Sequence[str], folder: Path,
                           pipeline: str) -> Path:
    """Write ``circo_submission_<pipeline>.json``, the file the CIRCO evaluation server takes:
    ``{query id: [top-50 image ids, as integers]}``."""
    content = {qid: [int(image_id) for image_id in list(dict.fromkeys(rankings.get(qid, ())))[:SUBMISSION_DEPTH]]
               for qid in query_ids}
    path = submission_path(folder, "circo_submission", pipeline)
    write_json_atomic(path, content)
    return path


def _read_image_info(path: Path, folder: Path) -> dict[str, Path]:
    """COCO image id (as a string) -> its file in ``folder``, in the file's order; a file name
    that does not lie inside ``folder`` is an InputError naming the image."""
    raw = read_json(path, LAYOUT)
    images = raw.get("images") if isinstance(raw, dict) else None
    if not isinstance(images, list) or not images:
        raise InputError(f"{path}: expected {{\"images\": [{{\"id\", \"file_name\"}}, ...]}} with at least one image.")
    files: dict[str, Path] = {}
    for index, image in enumerate(images):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise InputError(f"{path}: images[{index}] must be an object with 'id' and 'file_name', got {image!r}.")
        image_id, name = image["id"], image["file_name"]
        if not _is_int(image_id) or not isinstance(name, str) or not name:
            raise InputError(f"{path}: images[{index}] needs an integer 'id' and a 'file_name', got {image!r}.")
        if str(image_id) in files:
            raise InputError(f"{path}: images[{index}] repeats image id {image_id}.")
        files[str(image_id)] = inside(folder, name, source=f"{path}: images[{index}] (id {image_id}) file_name")
    return files


def _entry(entry: Any, where: str, paths: Mapping[str, Path], *, needs_truth: bool) -> tuple[Query, list[str]]:
    if not isinstance(entry, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(entry).__name__}.")
    for key in ("id", "reference_img_id", "relative_caption", *(("gt_img_ids",) if needs_truth else ())):
        if key not in entry:
            raise InputError(f"{where} has no {key!r}.")
    if not _is_int(entry["id"]):
        raise InputError(f"{where}: 'id' must be an integer, got {entry['id']!r}.")
    where = f"{where} (id {entry['id']})"
    caption = entry["relative_caption"]
    if not isinstance(caption, str):
        raise InputError(f"{where}: 'relative_caption' must be a string, got {caption!r}.")
    reference = _image_id(entry["reference_img_id"], "reference_img_id", where, paths)
    relevant: list[str] = []
    if needs_truth:
        truth = entry["gt_img_ids"]
        if not isinstance(truth, list) or not truth:
            raise InputError(f"{where}: 'gt_img_ids' must be a non-empty list of image ids, got {truth!r}.")
        relevant = [_image_id(value, "gt_img_ids", where, paths) for value in truth]
        if entry.get("target_img_id") is not None:
            relevant.insert(0, _image_id(entry["target_img_id"], "target_img_id", where, paths))
    metadata = {"reference": reference, "shared_concept": entry.get("shared_concept")}
    if "semantic_aspects" in entry:
        metadata["semantic_aspects"] = entry["semantic_aspects"]
    query = Query(image=str(paths[reference]), modification=caption, id=str(entry["id"]), metadata=metadata)
    return query, list(dict.fromkeys(relevant))


def _image_id(value: Any, key: str, where: str, paths: Mapping[str, Path]) -> str:
    if not _is_int(value):
        raise InputError(f"{where}: {key!r} must hold COCO image ids (integers), got {value!r}.")
    if str(value) not in paths:
        raise InputError(f"{where}: {key} {value} is not an image of {IMAGE_INFO.as_posix()}.")
    return str(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)
