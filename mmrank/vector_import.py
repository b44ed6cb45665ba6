"""Bring your own embeddings: a collection from vectors computed elsewhere, without encoding.

Two layouts are read, those clip-retrieval's ``clip-retrieval inference`` writes and
embedding-reader reads:

``numpy``
    ``.npy`` matrices (one row per item) named ``img_emb_N.npy`` for the image space and
    ``text_emb_N.npy`` for the text space (other ``.npy`` names are taken too, unless they belong to
    the other space), each with a ``metadata_N.parquet`` holding the same rows in the same order
    (columns such as ``image_path``, ``caption``, ``url``). clip-retrieval writes them to
    ``img_emb/``, ``text_emb/`` and ``metadata/`` under one folder; any arrangement under SOURCE
    works, shards and metadata being paired by their number ``N``. Matrices are memory-mapped and
    never unpickled (``allow_pickle=False``).
``parquet``
    ``.parquet`` files whose rows hold an embedding column (a list of numbers) beside id and
    metadata columns.

Every row becomes one :class:`~mmrank.types.Item`: an image when it names an image path (the
source column), else a text (the caption). Its id is the id column's value, else the image path,
else ``<shard>:<row>``; its other scalar columns become metadata. Vectors are L2-normalised (mmrank
searches unit vectors by inner product); rows with NaN, infinite or all-zero vectors are skipped
and counted. The space records the encoder that made the vectors, so queries are later encoded by
the same model.

Shards are read one at a time, ``batch_size`` rows at once, each batch one transaction. Items
already in the collection are skipped, so a second run adds nothing and an interrupted run picks up
where it stopped. A shard that cannot be read, whose dimension differs from the space's, or whose
metadata has another number of rows is reported with its file name and skipped; the others are
imported (rows it gave before failing stay).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmrank.collection import Collection
from mmrank.errors import EncoderMismatchError, InputError
from mmrank.ingest import Skipped, printable
from mmrank.types import Item

LAYOUTS = ("auto", "numpy", "parquet")
SHARD_PREFIX = {"image": "img_emb", "text": "text_emb"}  # clip-retrieval's names per space
DEFAULT_BATCH_SIZE = 8192
# A batch of vectors and the metadata rows beside them (dicts of column values, or None without metadata).
Batch = tuple[np.ndarray, list[dict[str, Any]] | None]


@dataclass
class ImportReport:
    """What an import run did: rows added, rows already present, bad rows and bad files."""

    source: str
    layout: str
    space: str
    encoder: str
    dim: int | None = None
    files: int = 0
    added: int = 0
    already_present: int = 0
    bad_rows: int = 0
    bad_files: list[Skipped] = field(default_factory=list)
    warnings: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def imported_anything(self) -> bool:
        """Whether the collection holds rows of this source: added now, or by an earlier run."""
        return self.added > 0 or self.already_present > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Shard:
    """One vectors file, its metadata file (numpy layout) and the name its row ids start with."""

    path: Path
    name: str
    metadata: Path | None = None
    metadata_expected: bool = False


class BadShard(Exception):
    """A shard that cannot be imported; the message says why (without the file name)."""


def import_embeddings(
    collection: Collection,
    source: str | Path,
    *,
    encoder: str,
    space: str = "image",
    layout: str = "auto",
    embedding_column: str = "embedding",
    id_column: str | None = None,
    source_column: str = "image_path",
    text_column: str = "caption",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    wait: bool = True,
    on_wait: Callable[[str], None] | None = None,
) -> ImportReport:
    """Add the embeddings under ``source`` to ``collection``'s ``space``, made by ``encoder`` (an
    mmrank encoder name such as ``open_clip:ViT-B-32/laion2b_s34b_b79k``); see the module docstring.
    ``wait`` / ``on_wait``: what to do when another process is writing (see ``Collection.writing``)."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    check_encoder_name(encoder, space)
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}.")
    found_layout, shards = find_shards(source, space, layout)
    report = ImportReport(str(source), found_layout, space, encoder, files=len(shards))
    columns = {"embedding": embedding_column, "id": id_column, "source": source_column, "text": text_column}
    with collection.writing(wait=wait, on_wait=on_wait):
        known = collection.spaces.get(space)
        if known is not None and known.encoder != encoder:
            raise EncoderMismatchError(
                f"{collection.path}: its {space} vectors were made by '{known.encoder}' ({known.dim} dimensions), "
                f"not '{encoder}'; import these into a new collection, or name the same model.")
        dims = {}
        for shard in shards:
            try:
                dims[shard] = _probe(shard, found_layout, embedding_column)
            except BadShard as error:
                report.bad_files.append(Skipped(printable(str(shard.path)), str(error)))
        report.dim = known.dim if known is not None else _common_dim(dims)
        good = []
        for shard, (_, dim) in dims.items():
            if report.dim is None:
                report.bad_files.append(Skipped(printable(str(shard.path)), "holds no vectors"))
            elif dim not in (None, report.dim):  # None: a parquet shard whose rows all lack a vector
                where = f"the collection's {space} space has" if known is not None else "the other files have"
                report.bad_files.append(Skipped(printable(str(shard.path)),
                                                f"its vectors have {dim} dimensions; {where} {report.dim}"))
            else:
                good.append(shard)
        if good:
            collection.bind_encoder(space, encoder, report.dim)
        for shard in tqdm(good, desc="Importing", unit="file", disable=not progress):
            _import_shard(collection, shard, found_layout, columns, batch_size, report)
        collection.build_indexes()
    report.bad_files.sort(key=lambda bad: bad.path)
    report.seconds = time.perf_counter() - start
    return report


def check_encoder_name(encoder: str, space: str) -> None:
    """Refuse an encoder name mmrank could not load to encode queries, or one that does not encode
    ``space``'s kind of input (an InputError that says what to give)."""
    from mmrank.encoders import ENCODERS, modalities

    if space not in SHARD_PREFIX:
        raise InputError(f"Unknown space '{space}': vectors go into the image or the text space.")
    kind, separator, reference = encoder.partition(":")
    if not separator or kind not in ENCODERS or not reference:
        raise InputError(
            f"'{encoder}' is not an mmrank encoder name. Name the model that made the vectors as "
            f"'<kind>:<model>' with kind one of {', '.join(ENCODERS)}, e.g. open_clip:ViT-B-32/laion2b_s34b_b79k "
            "(queries are encoded by that model).")
    if kind == "open_clip" and "/" not in reference and ":" not in reference:
        raise InputError(f"'{encoder}' names no pretrained weights, so queries would be encoded by a random "
                         f"model; add the tag the vectors were made with, e.g. {encoder}/laion2b_s34b_b79k or "
                         f"{encoder}/openai.")
    if space not in modalities(encoder):
        raise InputError(f"'{encoder}' does not encode {space}s, so it cannot have made {space} vectors.")


def find_shards(source: str | Path, space: str, layout: str = "auto") -> tuple[str, list[Shard]]:
    """The layout (``auto`` resolved) and the vector shards of ``space`` under ``source`` (a folder,
    searched recursively, hidden entries skipped; or one .npy / .parquet file), sorted by path."""
    source = Path(source)
    if layout not in LAYOUTS:
        raise InputError(f"Unknown layout '{layout}': use {', '.join(LAYOUTS)}.")
    if not source.exists():
        raise InputError(f"{source}: no such file or folder.")
    files = [source] if source.is_file() else sorted(
        path for path in source.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(source).parts))
    arrays = [path for path in files if path.suffix == ".npy"]
    tables = [path for path in files if path.suffix == ".parquet"]
    if layout == "auto":
        layout = "numpy" if arrays else "parquet"
    if layout == "numpy":
        other = next(prefix for name, prefix in SHARD_PREFIX.items() if name != space)
        named = [path for path in arrays if path.name.startswith(SHARD_PREFIX[space])]
        vectors = named or [path for path in arrays if source.is_file() or not path.name.startswith(other)]
        metadata = {_number(path): path for path in tables if path.name.startswith("metadata")}
        shards = [Shard(path, "", metadata.get(_number(path)) if _number(path) else None, bool(metadata))
                  for path in vectors]
        wanted = f"{SHARD_PREFIX[space]}_N.npy (or other .npy) files"
    else:
        shards = [Shard(path, "") for path in tables if not (source.is_dir() and path.name.startswith("metadata"))]
        shards = shards or [Shard(path, "") for path in tables]
        wanted = ".parquet files"
    if not shards:
        raise InputError(f"{source}: no {wanted} for the {space} space in the {layout} layout; see "
                         "`mmrank import-vectors --help` for the layouts.")
    stems = Counter(shard.path.stem for shard in shards)
    return layout, [Shard(shard.path, _shard_name(shard.path, source, stems), shard.metadata,
                          shard.metadata_expected) for shard in shards]


def _number(path: Path) -> str | None:
    """The shard number a file name ends with (``img_emb_0007.npy`` -> ``0007``), or None."""
    match = re.search(r"(\d+)$", path.stem)
    return match.group(1) if match else None


def _shard_name(path: Path, source: Path, stems: Counter) -> str:
    """The file's name without suffix, or its path under ``source`` when two files share the name."""
    if stems[path.stem] == 1 or source.is_file():
        return path.stem
    return path.relative_to(source).with_suffix("").as_posix()


def _common_dim(dims: dict[Shard, tuple[int, int | None]]) -> int | None:
    """The dimension most rows have (a new space takes it; shards of another are bad)."""
    rows: Counter[int] = Counter()
    for count, dim in dims.values():
        if dim is not None:
            rows[dim] += max(count, 1)
    return rows.most_common(1)[0][0] if rows else None


# ----------------------------------------------------------------- reading shards
def _probe(shard: Shard, layout: str, embedding_column: str) -> tuple[int, int | None]:
    """(rows, dimension) of a shard, checking what can be checked before reading its rows; the
    dimension is None for a parquet shard without any vector. Raises BadShard."""
    try:
        if layout == "numpy":
            matrix = _open_npy(shard.path)
            if shard.metadata_expected and shard.metadata is None:
                raise BadShard(f"no metadata_{_number(shard.path) or 'N'}.parquet beside it, though the "
                               "other shards have one; restore it, or move the shard out of the folder")
            if shard.metadata is not None:
                rows = _parquet_file(shard.metadata).metadata.num_rows
                if rows != len(matrix):
                    raise BadShard(f"{len(matrix)} vectors but {rows} rows in its metadata "
                                   f"{shard.metadata.name}; the two must hold the same rows in the same order")
            return len(matrix), int(matrix.shape[1])
        table = _parquet_file(shard.path)
        return table.metadata.num_rows, _parquet_dim(table, embedding_column)
    except BadShard:
        raise
    except Exception as error:
        raise BadShard(f"cannot be read ({printable(str(error))}; {type(error).__name__})") from error


def _open_npy(path: Path) -> np.ndarray:
    """The matrix in an .npy file, memory-mapped. Files holding Python objects are refused before
    anything is loaded: unpickling an untrusted file could run code."""
    with open(path, "rb") as stream:
        try:
            version = np.lib.format.read_magic(stream)
        except ValueError as error:
            raise BadShard("not a NumPy .npy file (no NumPy header)") from error
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(stream)
    if dtype.hasobject:
        raise BadShard("holds Python objects (a pickled array), which mmrank never loads (allow_pickle=False): "
                       "save the vectors as a float array, e.g. np.save(path, vectors.astype('float32'))")
    if len(shape) != 2 or dtype.kind != "f":
        raise BadShard(f"holds a {dtype} array of shape {shape}; expected a 2-D float matrix, one row per item")
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _parquet_file(path: Path):
    import pyarrow.parquet as pq

    return pq.ParquetFile(path)


def _parquet_dim(table, column: str) -> int | None:
    """The length of the vectors in a parquet file's ``column``: the fixed size of its list type, else
    the length of its first vector (None when it has none)."""
    import pyarrow as pa

    schema = table.schema_arrow
    if column not in schema.names:
        raise BadShard(f"has no column '{column}' (its columns: {', '.join(schema.names)}); name the "
                       "vectors' column with --embedding-column")
    kind = schema.field(column).type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)) or not (
            pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)):
        raise BadShard(f"its column '{column}' holds {kind}, not lists of numbers")
    if pa.types.is_fixed_size_list(kind):
        return kind.list_size
    for batch in table.iter_batches(batch_size=1024, columns=[column]):
        vectors = batch.column(0).drop_null()
        if len(vectors):
            return len(vectors[0])
    return None


def _read(shard: Shard, layout: str, dim: int, embedding_column: str, batch_size: int) -> Iterator[Batch]:
    """The shard's rows, ``batch_size`` at a time at most. Raises BadShard when it cannot be read."""
    try:
        if layout == "numpy":
            yield from _numpy_batches(shard, batch_size)
        else:
            yield from _parquet_batches(shard.path, dim, embedding_column, batch_size)
    except BadShard:
        raise
    except Exception as error:  # anything about this one file: it is reported and skipped
        raise BadShard(f"cannot be read ({printable(str(error))}; {type(error).__name__})") from error


def _numpy_batches(shard: Shard, batch_size: int) -> Iterator[Batch]:
    """Slices of the memory-mapped matrix, beside the same rows of its metadata when it has some."""
    matrix = _open_npy(shard.path)
    if shard.metadata is None:
        for start in range(0, len(matrix), batch_size):
            yield np.asarray(matrix[start:start + batch_size], dtype=np.float32), None
        return
    start = 0
    for batch in _parquet_file(shard.metadata).iter_batches(batch_size=batch_size):
        yield np.asarray(matrix[start:start + batch.num_rows], dtype=np.float32), _records(batch, ())
        start += batch.num_rows


def _parquet_batches(path: Path, dim: int, column: str, batch_size: int) -> Iterator[Batch]:
    """Record batches of a parquet shard as matrices (rows without a vector, or with one of another
    length, are NaN: they are counted as bad rows) and the rows' other columns."""
    import pyarrow.compute as pc

    for batch in _parquet_file(path).iter_batches(batch_size=batch_size):
        vectors = batch.column(column)
        matrix = np.full((batch.num_rows, dim), np.nan, dtype=np.float32)
        usable = np.asarray(pc.and_(vectors.is_valid(), pc.equal(pc.list_value_length(vectors), dim))
                            .fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
        if usable.any():
            values = vectors.filter(usable).flatten().to_numpy(zero_copy_only=False)
            matrix[usable] = np.asarray(values, dtype=np.float32).reshape(-1, dim)
        yield matrix, _records(batch, (column,))


def _records(batch, leave_out: tuple[str, ...]) -> list[dict[str, Any]]:
    """The rows of a record batch as dicts of their columns (but ``leave_out``)."""
    names = [name for name in batch.schema.names if name not in leave_out]
    values = [batch.column(name).to_pylist() for name in names]
    return [dict(zip(names, row)) for row in zip(*values)] if names else [{} for _ in range(batch.num_rows)]


# ----------------------------------------------------------------- storing rows
def _import_shard(collection: Collection, shard: Shard, layout: str, columns: dict[str, str | None],
                  batch_size: int, report: ImportReport) -> None:
    """Store the shard's rows that are usable and not yet in the collection; a shard that cannot be
    read is reported (with the number of rows it gave before failing)."""
    reasons: Counter[str] = Counter()
    row = added = 0
    try:
        for vectors, records in _read(shard, layout, report.dim, columns["embedding"], batch_size):
            added += _store(collection, shard, row, vectors, records, columns, report, reasons)
            row += len(vectors)
    except BadShard as error:
        kept = f" ({added} rows before the failure were imported)" if added else ""
        report.bad_files.append(Skipped(printable(str(shard.path)), f"{error}{kept}"))
    if reasons:
        skipped = ", ".join(f"{count} {reason}" for reason, count in reasons.items())
        report.warnings.append(Skipped(printable(str(shard.path)), f"rows skipped: {skipped}"))


def _store(collection: Collection, shard: Shard, first_row: int, vectors: np.ndarray,
           records: list[dict[str, Any]] | None, columns: dict[str, str | None], report: ImportReport,
           reasons: Counter[str]) -> int:
    """Normalise one batch, skip its bad rows and the items already stored, add the rest; returns
    how many were added."""
    if records is None and columns["id"]:
        raise BadShard(f"has no metadata to read the id column '{columns['id']}' from")
    if records and columns["id"] and columns["id"] not in records[0]:
        raise BadShard(f"has no column '{columns['id']}' for ids (its columns: {', '.join(records[0])})")
    finite = np.isfinite(vectors).all(axis=1)
    norms = np.linalg.norm(np.where(finite[:, None], vectors, 0).astype(np.float64), axis=1)
    bad = Counter({"with a missing, NaN, infinite or wrong-length vector": int((~finite).sum()),
                   "with an all-zero vector": int((finite & (norms == 0)).sum())})
    ids: dict[str, int] = {}  # id -> its first row in the batch
    items = []
    for index in np.flatnonzero(finite & (norms > 0)):
        record = records[index] if records is not None else {}
        item = _item(record, f"{shard.name}:{first_row + index}", columns)
        if item is None:
            bad[f"without a value in the id column '{columns['id']}'"] += 1
        elif item.id not in ids:
            ids[item.id] = int(index)
            items.append(item)
        else:  # the same id twice in one batch: the first row counts
            report.already_present += 1
    reasons.update(+bad)  # the reasons that occurred
    report.bad_rows += sum(bad.values())
    present = collection.get_many(list(ids))
    report.already_present += len(present)
    items = [item for item in items if item.id not in present]
    if not items:
        return 0
    rows = [ids[item.id] for item in items]
    unit = (vectors[rows] / norms[rows, None]).astype(np.float32)  # as encoders.base.l2_normalize
    collection.add(items, {report.space: ([item.id for item in items], unit)})
    report.added += len(items)
    return len(items)


def _item(record: dict[str, Any], fallback_id: str, columns: dict[str, str | None]) -> Item | None:
    """The Item of one row (None when the id column is named and empty): an image when the row
    names one, else a text; the other scalar columns become metadata."""
    source = record.get(columns["source"])
    source = source if isinstance(source, str) and source.strip() else None
    text = record.get(columns["text"])
    text = text if isinstance(text, str) and text.strip() else None
    if columns["id"]:
        if record.get(columns["id"]) in (None, ""):
            return None
        item_id = str(record[columns["id"]])
    else:
        item_id = source or fallback_id
    metadata = {name: _scalar(value) for name, value in record.items()
                if name not in (columns["id"], columns["source"]) and _scalar(value) is not None}
    return Item(id=item_id, kind="image" if source else "text", source=source, text=text, metadata=metadata)


def _scalar(value: Any) -> str | int | float | bool | None:
    """A metadata value as JSON can hold it (dates as ISO text); None for lists, maps, bytes,
    missing values and NaN."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return None
