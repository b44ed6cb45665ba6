"""Indexing on Ray Data: Ray processes (on this machine or a cluster) read, render and encode the
files; this process writes the collection. ``mmrank index --ray`` runs :func:`index_paths_on_ray`.

The work is split like this:

- **driver** (this process, holding the collection's writer lock for the whole run): finds the
  files, removes the stored files that are gone and skips those stored unchanged, exactly as
  :func:`mmrank.indexing.index_paths` does;
- **Ray tasks** (CPUs): read each remaining file (fingerprint, pages, text layer, OCR) into one row
  per item and render the pictures the image model needs;
- **an actor pool** (``map_batches`` with :class:`EncodeItems`, one GPU per actor when the cluster
  has GPUs): each actor builds its encoders once, from the run's
  :class:`~mmrank.indexing.EncoderChoice` and the encoder names the collection records (never a
  pickled model), and encodes batches of items;
- **driver** again: gathers the items of each file; a complete file joins the next transaction
  (whole files, :meth:`~mmrank.collection.Collection.replace_files`), binding each space's encoder
  to the collection as a single-process run does. The result is the same collection.

Resumable like a single-process run: a file is stored whole or not at all, so a driver killed
mid-run leaves the finished files stored and the next run reads only the others. A bad file or
page is reported and skipped by the task or actor that meets it, never raised. A worker process
that dies is retried by Ray (``max_retries`` for the tasks, ``max_restarts`` and
``max_task_retries`` for the actors), and the driver keeps one result per item and stores each
file once, so a retried batch cannot double anything.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from mmrank.errors import InputError
from mmrank.indexing import (
    RUN_ERRORS,
    PATCHES,
    EncoderChoice,
    IndexReport,
    encode_one_by_one,
    left_out_reason,
    merged,
    note_left_out,
    read_file,
    reason_for,
    skipped_item,
    stored_version,
    unchanged_on_disk,
    wants_picture,
)
from mmrank.ingest import Fingerprint, Skipped, discover, printable
from mmrank.text import PassageSplit
from mmrank.types import Item

if TYPE_CHECKING:
    from mmrank.collection import Collection
    from mmrank.item_store import VectorBatch
    from mmrank.manifest import Space

TASK_RETRIES = 3  # times a read-and-render task whose worker process died is run again
ACTOR_RESTARTS = 3  # times an encoder actor whose process died is restarted (its batch is retried)
LOCAL_OBJECT_STORE = 1 << 30  # bytes of object store for a local Ray (rendered pages pass through it)
MAX_BLOCKS = 2000  # the files are read in as many tasks, one file each when they are fewer
PICTURE_CODEC = "lz4"  # how rendered pictures travel to the actors (pyarrow's codecs)
CLIENT_BATCH = 256  # rows per call when the rows come through a Ray Client

# Ray Data settings for a run: no progress bars or plan print-outs of its own; mmrank's errors stop the
# run as themselves; and no per-operator reservations of the object store: under them an actor pool fed
# blocks of pictures larger than its share (measured with uncompressed pages; large photos still are)
# waited for all the reading to end (80 s instead of 15 s for the bundled files, 200 MB object store).
DATA_SETTINGS = {"enable_progress_bars": False, "print_on_execution_start": False,
                 "raise_original_map_exception": True, "op_resource_reservation_enabled": False}

# Every row has every column: what reading, rendering and encoding add to it.
_ROW: dict[str, Any] = {"path": "", "kind": "", "order": -1, "info": "", "item": "", "pixels": b"",
                        "height": 0, "width": 0, "problem": "", "result": "", "vectors": b""}


def require_ray_data() -> ModuleType:
    """``ray.data``, or MissingDependencyError naming the ``ray`` extra."""
    from mmrank.optional import require

    return require("ray.data", "Indexing with --ray")


def check_workers(workers: int | None) -> None:
    if workers is not None and workers < 1:
        raise InputError(f"--ray-workers must be at least 1, got {workers}.")


def index_paths_on_ray(
    collection: Collection,
    paths: Iterable[str | Path],
    choice: EncoderChoice,
    *,
    address: str | None = None,
    workers: int | None = None,
    batch_size: int = 32,
    device: str = "auto",
    progress: bool = False,
    prune: bool = True,
    wait: bool = True,
    on_wait: Callable[[str], None] | None = None,
) -> IndexReport:
    """Add the supported files under ``paths`` to ``collection`` as
    :func:`mmrank.indexing.index_paths` does, with reading, rendering and encoding on Ray Data
    (see the module docstring). ``address``: a Ray cluster (``auto``, ``ray://HOST:PORT``,
    ``HOST:PORT``), else a local Ray is started for the run (a Ray this process has already
    initialised is used as it is). ``workers``: encoder actors (default: one per GPU, else half the
    CPUs). ``device``: ``auto`` (GPUs when the cluster has them), ``cpu``, or ``cuda`` (GPUs
    required). Every Ray node must see the files at the same paths and have mmrank installed."""
    from tqdm.auto import tqdm

    check_workers(workers)
    if choice.page_model is not None or PATCHES in collection.spaces:
        raise InputError(f"{collection.path}: late-interaction page models (--page-model, the {PATCHES} space) do not "
                         "run on Ray yet; index without --ray (nothing was written).")
    start = time.perf_counter()
    paths = [Path(path) for path in paths]
    files, skipped = discover(paths)
    report = IndexReport(skipped=list(skipped))
    with collection.writing(wait=wait, on_wait=on_wait):
        if prune:
            report.removed_files = collection.remove_missing_files(paths)
        todo = _files_to_read(files, collection, report)
        if todo:
            with ray_session(address, workers), _data_context(**DATA_SETTINGS), tqdm(
                    total=len(todo), desc="Indexing", unit="file", disable=not progress) as bar:
                writer = _Writer(collection, report, batch_size, on_file=bar.update)
                for row in _rows(todo, choice, collection.spaces, workers=workers, batch_size=batch_size,
                                 device=device):
                    writer.add(row)
                writer.close()
        collection.build_indexes()
    report.seconds = time.perf_counter() - start
    return report


def _files_to_read(files: list[Path], collection: Collection, report: IndexReport) -> list[dict[str, Any]]:
    """The files the tasks read, as rows: the others are stored unchanged (counted) or cannot even
    be looked at (skipped), as in a single-process run."""
    todo = []
    for path in files:
        key = str(path)
        try:
            known, stored = stored_version(collection, key)
            if unchanged_on_disk(path, stored):
                report.unchanged_files += 1
                continue
        except RUN_ERRORS:
            raise
        except Exception as error:
            report.skipped.append(Skipped(printable(key), reason_for(error, key)))
            continue
        todo.append({"path": key, "known": known, "stored": json.dumps(asdict(stored)) if stored else ""})
    return todo


# ----------------------------------------------------------------------------- the Ray side
@contextmanager
def ray_session(address: str | None, workers: int | None = None) -> Iterator[ModuleType]:
    """Ray for one run: the one this process already has, a cluster at ``address``, or a local Ray
    (CPUs for ``workers`` encoder actors and at least one reading task, a small object store, no
    dashboard), shut down afterwards unless it was already there."""
    require_ray_data()
    import ray

    if ray.is_initialized():
        yield ray
        return
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        cpus = max(os.cpu_count() or 1, (workers or 1) + 1)
        ray.init(num_cpus=cpus, object_store_memory=LOCAL_OBJECT_STORE, include_dashboard=False,
                 logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()


@contextmanager
def _data_context(**settings: Any) -> Iterator[None]:
    """Ray Data's current DataContext with ``settings`` for the block (those this Ray version has),
    as it was afterwards."""
    import ray.data

    context = ray.data.DataContext.get_current()
    before = {name: getattr(context, name) for name in settings if hasattr(context, name)}
    settings = {name: value for name, value in settings.items() if name in before}
    for name, value in settings.items():
        setattr(context, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(context, name, value)


def _rows(*args: Any, **options: Any) -> Iterator[dict[str, Any]]:
    """:func:`_pipeline`'s rows; through a Ray Client (``ray://``), where Ray Data cannot run the
    pipeline itself, from an actor on the cluster that runs it and hands the rows over in batches."""
    import ray
    from ray.util.client import ray as client

    if not client.is_connected():
        yield from _pipeline(*args, **options)
        return
    source = ray.remote(num_cpus=0, max_restarts=0)(_RowSource).remote(*args, **options)
    while batch := ray.get(source.next.remote(CLIENT_BATCH)):
        yield from batch


class _RowSource:
    """:func:`_pipeline` run on the cluster, its rows handed over ``count`` at a time."""

    def __init__(self, *args: Any, **options: Any) -> None:
        import ray.data

        context = ray.data.DataContext.get_current()
        for name, value in DATA_SETTINGS.items():
            setattr(context, name, value)
        self.rows = iter(_pipeline(*args, **options))

    def next(self, count: int) -> list[dict[str, Any]]:
        from itertools import islice

        return list(islice(self.rows, count))


def _pipeline(todo: list[dict[str, Any]], choice: EncoderChoice, spaces: Mapping[str, Space], *,
              workers: int | None, batch_size: int, device: str) -> Iterator[dict[str, Any]]:
    """The rows of every file and item, read and rendered by tasks and encoded by an actor pool."""
    import warnings

    import ray
    import ray.data

    workers, gpus, device = _placement(ray.cluster_resources(), workers, device)
    blocks = min(len(todo), MAX_BLOCKS)
    with warnings.catch_warnings():  # max_retries / max_restarts have no named parameter yet
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        dataset = (ray.data.from_items(todo, override_num_blocks=blocks)
                   .flat_map(read_rows, fn_kwargs={"ocr": choice.ocr}, max_retries=TASK_RETRIES)
                   .map(render_row, fn_kwargs={"dpi": choice.dpi, "pages_as_images": choice.pages_as_images},
                        max_retries=TASK_RETRIES)
                   .map_batches(EncodeItems, batch_size=batch_size, batch_format="pyarrow",
                                compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1, num_gpus=gpus,
                                fn_constructor_kwargs={"choice": choice, "spaces": dict(spaces),
                                                       "registry": _registry(), "device": device,
                                                       "batch_size": batch_size},
                                max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS))
    return dataset.iter_rows()


def _placement(resources: Mapping[str, float], workers: int | None, device: str) -> tuple[int, int, str]:
    """(encoder actors, GPUs per actor, the actors' device) for a cluster with ``resources``; an
    InputError when the actors could never all start, or would leave no CPU for reading."""
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    use_gpus = gpus > 0 and device != "cpu"
    if device.startswith("cuda") and not use_gpus:
        raise InputError(f"--device {device} with --ray: the Ray cluster has no GPUs.")
    workers = workers or (gpus if use_gpus else max(1, cpus // 2))
    if use_gpus and workers > gpus:
        raise InputError(f"--ray-workers {workers}: the Ray cluster has {gpus} GPUs, one per encoder actor.")
    if workers >= cpus:
        raise InputError(f"--ray-workers {workers}: the Ray cluster has {cpus} CPUs, one per encoder actor and "
                         "at least one more for reading files; use fewer workers.")
    return workers, int(use_gpus), "cuda" if use_gpus else "cpu"


def _registry() -> dict[str, str]:
    """The encoder kinds this process knows, as ``module:Class`` names the actors register too (so
    an encoder registered here, importable there, loads there by its recorded name)."""
    from mmrank.encoders import ENCODERS

    return {kind: target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"
            for kind, target in ENCODERS.items()}


def read_rows(task: dict[str, Any], *, ocr: str) -> list[dict[str, Any]]:
    """A Ray task: one file's rows, a ``file`` row (what reading it gave: fingerprint, item count,
    warning, or why it is skipped) and an ``item`` row per item."""
    stored = Fingerprint(**json.loads(task["stored"])) if task["stored"] else None
    read = read_file(Path(task["path"]), stored, ocr)
    info = {"known": task["known"], "fingerprint": asdict(read.fingerprint) if read.fingerprint else None,
            "items": len(read.items), "warning": read.warning, "error": read.error,
            "same_content": read.same_content}
    return [{**_ROW, "path": read.path, "kind": "file", "info": json.dumps(info)},
            *({**_ROW, "path": read.path, "kind": "item", "order": n, "item": json.dumps(item.to_dict())}
              for n, item in enumerate(read.items))]


def render_row(row: dict[str, Any], *, dpi: int, pages_as_images: bool) -> dict[str, Any]:
    """A Ray task: an item row with the picture the image model will encode (the image file decoded,
    or the page rendered at ``dpi``) as RGB pixels, or the ``problem`` that stopped it."""
    if row["kind"] != "item":
        return row
    from mmrank.images import item_image

    item = _item(row["item"])
    if not wants_picture(item, pages_as_images):
        return row
    try:
        pixels = np.asarray(item_image(item, dpi))
    except RUN_ERRORS:
        raise
    except Exception as error:  # this page or image only: the actor skips it
        return {**row, "problem": reason_for(error, item.source)}
    return {**row, "pixels": _packed(pixels), "height": pixels.shape[0], "width": pixels.shape[1]}


class EncodeItems:
    """A Ray actor that encodes batches of rows. Its encoders are built once, when the first items
    come, by :meth:`EncoderChoice.item_encoder` from ``choice`` and the collection's ``spaces`` (the
    encoder names it records), on ``device``; ``registry``: the encoder kinds of the driver."""

    def __init__(self, choice: EncoderChoice, spaces: dict[str, Space], registry: dict[str, str], device: str,
                 batch_size: int) -> None:
        from mmrank.encoders import register_encoder

        for kind, target in registry.items():
            register_encoder(kind, target)
        self.choice, self.spaces, self.device, self.batch_size = choice, spaces, device, batch_size
        self.encoder, self.passages = None, None

    def __call__(self, batch):
        import pyarrow as pa

        rows = batch.to_pylist()
        items = {n: _item(row["item"]) for n, row in enumerate(rows) if row["kind"] == "item"}
        results = self.encode(items, rows) if items else {}
        return pa.Table.from_pylist([{**row, "pixels": b"", **results.get(n, {})} for n, row in enumerate(rows)])

    def _load(self) -> None:
        """The encoders, on first use (a model that cannot be loaded stops the run with its error)."""
        if self.encoder is None:
            self.encoder = self.choice.item_encoder(self.spaces, self.device)
            self.passages = self.spaces["text"].passages if "text" in self.spaces else self.encoder.new_passages()

    def encode(self, items: dict[int, Item], rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
        """Per item row: ``result`` (JSON: ``encoded`` with its rows per space and the encoders, or
        ``left_out`` / ``failed`` with the reason) and ``vectors`` (its float32 rows, space by space)."""
        self._load()
        self.encoder.ready_for(list(items.values()))
        reason = left_out_reason(self.encoder)
        results, todo = {}, {}
        for n, item in items.items():
            spaces = self.encoder.spaces_for(item)
            if not spaces:
                results[n] = _result("left_out", reason)
            elif "image" in spaces and rows[n]["problem"]:
                results[n] = _result("failed", rows[n]["problem"])
            else:
                todo[n] = item
        pictures = {item.id: _picture(rows[n]) for n, item in todo.items() if rows[n]["height"]}
        vectors, skipped = self._isolated(list(todo.values()), pictures)
        failed = iter(skipped)
        for n, item in todo.items():
            results[n] = self._encoded(item, vectors) if item.id in vectors else _result("failed", next(failed).reason)
        return results

    def _isolated(self, items: list[Item], pictures: dict[str, Any]) -> tuple[dict[str, dict], list[Skipped]]:
        """The items' vectors (item id -> space -> rows), encoded together or, when that fails, one
        by one, skipping the ones that fail (as a single-process run does)."""
        try:
            return _by_item(self._vectors(items, pictures)), []
        except RUN_ERRORS:
            raise
        except Exception:  # find the culprits
            _, parts, skipped = encode_one_by_one(items, lambda some: self._vectors(some, pictures))
            return _by_item(merged(parts)), skipped

    def _vectors(self, items: list[Item], pictures: dict[str, Any]) -> VectorBatch:
        wanted, vectors = self.encoder.wanted(items), {}
        if wanted["text"]:
            vectors["text"] = self.encoder.text_vectors(wanted["text"], self.passages)
        if wanted["image"]:
            vectors["image"] = self.encoder.image_vectors(wanted["image"], batch_size=self.batch_size,
                                                          picture=lambda item: pictures[item.id])
        return vectors

    def _encoded(self, item: Item, vectors: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
        mine = vectors[item.id]
        encoders = {space: self.encoder.text_encoder if space == "text" else self.encoder.image() for space in mine}
        result = {"state": "encoded", "rows": {space: len(matrix) for space, matrix in mine.items()},
                  "encoders": {space: [encoder.name, encoder.dim] for space, encoder in encoders.items()},
                  "passages": self.passages.to_dict() if self.passages and "text" in mine else None}
        return {"result": json.dumps(result),
                "vectors": b"".join(np.ascontiguousarray(matrix, dtype=np.float32).tobytes() for matrix in mine.values())}


def _result(state: str, reason: str) -> dict[str, Any]:
    return {"result": json.dumps({"state": state, "reason": reason})}


def _item(text: str) -> Item:
    return Item(**json.loads(text))


def _packed(pixels: np.ndarray) -> bytes:
    """RGB pixels, LZ4-compressed for the trip through the object store: a page rendered at 144 dpi
    shrinks from 5.9 MB to about 0.2 MB for 6 ms here and 2 ms at the actor (uncompressed, the
    benchmark's 288 items overflowed a 1 GB object store and spilled to disk)."""
    import pyarrow as pa

    return pa.compress(pixels.tobytes(), codec=PICTURE_CODEC, asbytes=True)


def _picture(row: dict[str, Any]):
    """The picture of an item row, as :func:`render_row` packed it."""
    import pyarrow as pa
    from PIL import Image

    size = (row["width"], row["height"])
    pixels = pa.decompress(row["pixels"], decompressed_size=3 * size[0] * size[1], codec=PICTURE_CODEC, asbytes=True)
    return Image.frombytes("RGB", size, pixels)


def _by_item(vectors: VectorBatch) -> dict[str, dict[str, np.ndarray]]:
    """A vector batch as item id -> space -> that item's rows (its passages, in order)."""
    rows: dict[str, dict[str, list[int]]] = {}
    for space, (ids, _) in vectors.items():
        for row, item_id in enumerate(ids):
            rows.setdefault(item_id, {}).setdefault(space, []).append(row)
    return {item_id: {space: vectors[space][1][numbers] for space, numbers in spaces.items()}
            for item_id, spaces in rows.items()}


# ----------------------------------------------------------------------------- the driver's side
@dataclass
class _File:
    """What has come back of one file: its ``file`` row's info, and its items by order."""

    info: dict[str, Any] | None = None
    items: dict[int, tuple[Item, dict[str, Any], bytes]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.info is not None and len(self.items) == self.info["items"]


class _Writer:
    """Stores the files as their rows come back: each complete file once, whole, in transactions
    of at least ``batch_size`` items, binding encoders to the collection first."""

    def __init__(self, collection: Collection, report: IndexReport, batch_size: int, on_file=None) -> None:
        self.collection, self.report, self.batch_size, self.on_file = collection, report, batch_size, on_file
        self.files: dict[str, _File] = {}
        self.done: set[str] = set()
        self.entries: list = []
        self.vectors: dict[str, tuple[list[str], list[np.ndarray]]] = {}
        self.encoders: dict[str, tuple[str, int, PassageSplit | None]] = {}

    def add(self, row: dict[str, Any]) -> None:
        path = row["path"]
        if path in self.done:
            return  # a retried task's row for a file already stored
        file = self.files.setdefault(path, _File())
        if row["kind"] == "file":
            file.info = json.loads(row["info"])
        else:
            file.items[row["order"]] = (_item(row["item"]), json.loads(row["result"]), row["vectors"])
        if file.complete:
            self.done.add(path)
            self._finish(path, self.files.pop(path))
            if self.on_file is not None:
                self.on_file()

    def close(self) -> None:
        """Store what is pending; files whose rows did not all come back are reported (and left for
        the next run)."""
        for path in self.files:
            self.report.skipped.append(Skipped(printable(path), "not finished: its rows did not all come back from "
                                                                "Ray; run again to index it"))
        self._flush()

    def _finish(self, key: str, file: _File) -> None:
        """A complete file, as :func:`mmrank.indexing.index_paths` treats it."""
        info, report = file.info, self.report
        if info["error"] is not None:
            report.skipped.append(Skipped(printable(key), info["error"]))
            return
        fingerprint = Fingerprint(**info["fingerprint"])
        if info["same_content"]:
            self.collection.touch_file(key, fingerprint)
            report.unchanged_files += 1
            return
        if info["warning"]:
            report.warnings.append(Skipped(key, info["warning"]))
        rows = [file.items[n] for n in sorted(file.items)]
        left_out = [(item.page, result["reason"]) for item, result, _ in rows if result["state"] == "left_out"]
        note_left_out(key, left_out, report)
        if not rows:
            return
        report.replaced_files += info["known"]
        report.added_files += not info["known"]
        failed = [(item, result) for item, result, _ in rows if result["state"] == "failed"]
        report.skipped.extend(skipped_item(item, result["reason"]) for item, result in failed)
        kept = [(item, result, vectors) for item, result, vectors in rows if result["state"] == "encoded"]
        if failed and not kept:
            return  # every item failed: left out, to be tried again next run
        from mmrank.item_store import FileEntry

        self.entries.append(FileEntry(path=key, items=[item for item, _, _ in kept], fingerprint=fingerprint,
                                      skipped_pages=left_out))
        for item, result, vectors in kept:
            self._add_vectors(item, result, vectors)
        if sum(len(entry.items) for entry in self.entries) >= self.batch_size:
            self._flush()

    def _add_vectors(self, item: Item, result: dict[str, Any], data: bytes) -> None:
        flat, start = np.frombuffer(data, dtype=np.float32), 0
        for space, count in result["rows"].items():
            name, dim = result["encoders"][space]
            passages = PassageSplit.from_dict(result["passages"]) if space == "text" and result["passages"] else None
            self.encoders.setdefault(space, (name, dim, passages))
            ids, matrices = self.vectors.setdefault(space, ([], []))
            ids.extend([item.id] * count)
            matrices.append(flat[start:start + count * dim].reshape(count, dim))
            start += count * dim

    def _flush(self) -> None:
        if not self.entries:
            return
        for space, (name, dim, passages) in self.encoders.items():
            self.collection.bind_encoder(space, name, dim, passages)
        vectors = {space: (ids, np.concatenate(matrices)) for space, (ids, matrices) in self.vectors.items()}
        self.collection.replace_files(self.entries, vectors)
        self.report.items_added += sum(len(entry.items) for entry in self.entries)
        self.entries, self.vectors = [], {}
