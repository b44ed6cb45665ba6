"""Revisited Oxford / Paris (ROxford5k, RParis6k): database images, 70 cropped queries, and the
easy / medium / hard protocols of Radenović et al., CVPR 2018.

Layout: ``<root>/<name>/gnd_<name>.pkl`` (or ``gnd_<name>.json`` written by
:func:`convert_ground_truth`, preferred when present) and ``<root>/<name>/jpg/<image>.jpg``.

The ground-truth pickle comes from the benchmark authors. It is read with an unpickler that
accepts only the globals needed to rebuild numpy arrays, so a tampered file is refused instead
of run.
"""

from __future__ import annotations

import importlib
import json
import math
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmrank.datasets.base import Judgements, RetrievalDataset, inside
from mmrank.errors import InputError, listing
from mmrank.files import write_json_atomic
from mmrank.types import Item, Query

if TYPE_CHECKING:
    from PIL import Image as PILImage

NAMES = ("roxford5k", "rparis6k")
PROTOCOLS = ("easy", "medium", "hard")
METRICS = ("rmap", "mp@1", "mp@5", "mp@10")
_INDEX_KEYS = ("easy", "hard", "junk")

# What a ground-truth pickle may reference: numpy array reconstruction (under numpy 1 and numpy 2
# module names, protocols 0 to 5), plus the two builtins Python 3 uses to pickle raw bytes at
# protocols 0 to 2. Nothing else is ever imported. Those two are never handed out themselves:
# the unpickler gives stand-ins that accept only the calls the pickler writes,
# ``_codecs.encode(text, "latin1")`` and ``bytes()``.
_ALLOWED_GLOBALS = frozenset({
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    ("builtins", "bytes"),
})
_LATIN1 = frozenset({"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1"})


@dataclass(frozen=True)
class QueryTruth:
    """One query's ground truth: its box (x1, y1, x2, y2) and indices into ``imlist``."""

    bbx: tuple[float, float, float, float]
    easy: tuple[int, ...]
    hard: tuple[int, ...]
    junk: tuple[int, ...]


@dataclass(frozen=True)
class GroundTruth:
    """A validated ``gnd_<name>`` file: database names, query names, one truth per query."""

    imlist: tuple[str, ...]
    qimlist: tuple[str, ...]
    gnd: tuple[QueryTruth, ...]

    def to_json(self) -> dict[str, Any]:
        """The same content as plain JSON values (lists of strings, ints and floats)."""
        return {
            "imlist": list(self.imlist),
            "qimlist": list(self.qimlist),
            "gnd": [
                {"bbx": list(q.bbx), "easy": list(q.easy), "hard": list(q.hard), "junk": list(q.junk)}
                for q in self.gnd
            ],
        }


def load_revisited(
    root: str | Path,
    name: str = "roxford5k",
    protocol: str = "medium",
    ground_truth: str | Path | None = None,
    distractors: str | Path | None = None,
) -> RetrievalDataset:
    """Load ROxford5k or RParis6k from ``root`` (the folder holding ``<name>/``, or ``<name>/``
    itself).

    All three protocols are in ``protocols``; ``protocol`` picks the one used as ``qrels`` and
    ``ignored``. A query without positives in a protocol (e.g. no easy images) keeps an empty
    qrels entry, which scoring skips. ``ground_truth`` overrides the ground-truth file;
    ``distractors`` is a folder of extra ``.jpg`` images added as items (the R1M setting).
    """
    name = _choice(name, NAMES, "dataset name")
    protocol = _choice(protocol, PROTOCOLS, "protocol")
    folder = _dataset_folder(Path(root), name)
    truth_path = Path(ground_truth) if ground_truth is not None else _ground_truth_path(folder, name)
    truth = read_ground_truth(truth_path)
    images = _image_folder(folder, name)
    files = _image_files(images, truth, truth_path)
    items = [Item(id=image, kind="image", source=str(files[image])) for image in truth.imlist]
    if distractors is not None:
        items += _distractor_items(Path(distractors), taken=set(truth.imlist))
    queries = [
        _query(files[query_name], query_name, query, truth_path, index)
        for index, (query_name, query) in enumerate(zip(truth.qimlist, truth.gnd))
    ]
    protocols = {key: _judgements(truth, key) for key in PROTOCOLS}
    return RetrievalDataset(
        name=name if distractors is None else f"{name}+distractors",
        items=items,
        queries=queries,
        qrels=protocols[protocol].qrels,
        split="test",
        ignored=protocols[protocol].ignored,
        protocols=protocols,
        metrics=METRICS,
    )


def load_roxford5k(
    root: str | Path,
    protocol: str = "medium",
    ground_truth: str | Path | None = None,
    distractors: str | Path | None = None,
) -> RetrievalDataset:
    """Revisited Oxford (see :func:`load_revisited`)."""
    return load_revisited(root, "roxford5k", protocol, ground_truth, distractors)


def load_rparis6k(
    root: str | Path,
    protocol: str = "medium",
    ground_truth: str | Path | None = None,
    distractors: str | Path | None = None,
) -> RetrievalDataset:
    """Revisited Paris (see :func:`load_revisited`)."""
    return load_revisited(root, "rparis6k", protocol, ground_truth, distractors)


def convert_ground_truth(pkl_path: str | Path, json_path: str | Path) -> Path:
    """Validate the ground-truth pickle and write it as plain JSON, atomically; returns the
    JSON path. The loader prefers ``gnd_<name>.json`` over the pickle when both are present."""
    truth = read_ground_truth(Path(pkl_path))
    json_path = Path(json_path)
    write_json_atomic(json_path, truth.to_json())
    return json_path


def read_ground_truth(path: str | Path) -> GroundTruth:
    """Read and validate a ground-truth file: JSON when it ends in ``.json``, else the authors'
    pickle (restricted to numpy arrays, lists, dicts, strings and numbers)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Ground-truth file not found: {path}.")
    raw = _read_json(path) if path.suffix.lower() == ".json" else _read_pickle(path)
    return _validate(raw, path)


# --- reading -----------------------------------------------------------------------------------


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only; any other global is refused, never imported."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # latin1: numpy arrays pickled by Python 2
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        canonical = _canonical_module(module)
        if (canonical, name) not in _ALLOWED_GLOBALS:
            raise InputError(
                f"{self._path}: refused to unpickle the global {module}.{name}: a ground-truth "
                "file holds only lists, strings, numbers and numpy arrays. The file may have been "
                "tampered with; get it again from the benchmark authors."
            )
        if (canonical, name) == ("_codecs", "encode"):
            return self._latin1_bytes
        if (canonical, name) == ("builtins", "bytes"):
            return self._empty_bytes
        return getattr(_import_allowed(canonical), name)

    def _latin1_bytes(self, *args: Any) -> bytes:
        """``_codecs.encode(text, "latin1")``, as Python 3 pickles non-empty bytes below protocol
        3; any other call (another codec, arguments of another type) is an InputError naming the
        file, and no codec is ever looked up."""
        if len(args) == 2 and all(isinstance(arg, str) for arg in args) and args[1].lower() in _LATIN1:
            try:
                return args[0].encode("latin1")
            except UnicodeEncodeError:
                pass
        raise self._invalid("_codecs.encode", args, "text and the codec 'latin1'")

    def _empty_bytes(self, *args: Any) -> bytes:
        """``bytes()``, as Python 3 pickles empty bytes below protocol 3; a call with arguments
        (``bytes(2**40)`` would allocate a terabyte) is an InputError naming the file."""
        if args:
            raise self._invalid("bytes", args, "no arguments")
        return b""

    def _invalid(self, function: str, args: tuple[Any, ...], expected: str) -> InputError:
        shown = ", ".join(_excerpt(arg) for arg in args)
        return InputError(f"{self._path}: not a valid ground-truth file: it calls {function}({shown}), "
                          f"but a ground-truth pickle only calls it with {expected}.")


def _excerpt(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _canonical_module(module: str) -> str:
    """One spelling per module: numpy 2's ``numpy._core`` as numpy 1's ``numpy.core``, Python 2's
    ``__builtin__`` as ``builtins``."""
    if module.startswith("numpy._core."):
        return "numpy.core." + module[len("numpy._core."):]
    return "builtins" if module == "__builtin__" else module


def _import_allowed(module: str) -> Any:
    if module.startswith("numpy.core."):
        try:  # numpy >= 2 (numpy.core is a deprecated alias there)
            return importlib.import_module("numpy._core." + module[len("numpy.core."):])
        except ImportError:
            pass
    return importlib.import_module(module)


def _read_pickle(path: Path) -> Any:
    try:
        with path.open("rb") as file:
            return _RestrictedUnpickler(file, path).load()
    except InputError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a readable ground-truth pickle ({error}).") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error}).") from None


# --- validation --------------------------------------------------------------------------------


def _validate(raw: Any, path: Path) -> GroundTruth:
    if not isinstance(raw, dict):
        raise InputError(
            f"{path}: expected a mapping with keys imlist, qimlist, gnd; got {type(raw).__name__}."
        )
    missing = [key for key in ("imlist", "qimlist", "gnd") if key not in raw]
    if missing:
        raise InputError(f"{path}: missing key(s) {', '.join(missing)}.")
    imlist = _names(raw["imlist"], "imlist", path)
    qimlist = _names(raw["qimlist"], "qimlist", path)
    entries = _as_list(raw["gnd"])
    if entries is None or len(entries) != len(qimlist):
        got = f"{len(entries)} entries" if entries is not None else type(raw["gnd"]).__name__
        raise InputError(f"{path}: 'gnd' must be a list with one entry per query "
                         f"({len(qimlist)} in qimlist), got {got}.")
    gnd = tuple(
        _query_truth(entry, f"{path}: query {index} ({qimlist[index]!r})", len(imlist))
        for index, entry in enumerate(entries)
    )
    return GroundTruth(imlist, qimlist, gnd)


def _as_list(value: Any) -> list | None:
    """``value`` as a list when it is a list, tuple or 1-D numpy array; else None."""
    if isinstance(value, np.ndarray):
        return value.tolist() if value.ndim == 1 else None
    return list(value) if isinstance(value, (list, tuple)) else None


def _names(value: Any, key: str, path: Path) -> tuple[str, ...]:
    names = _as_list(value)
    if names is None or not all(isinstance(name, str) and name for name in names):
        raise InputError(f"{path}: '{key}' must be a list of non-empty image names.")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InputError(f"{path}: '{key}' lists {name!r} twice.")
        seen.add(name)
    return tuple(names)


def _query_truth(entry: Any, where: str, n_images: int) -> QueryTruth:
    if not isinstance(entry, dict):
        raise InputError(f"{where}: expected a mapping with keys bbx, easy, hard, junk; "
                         f"got {type(entry).__name__}.")
    for key in ("bbx", *_INDEX_KEYS):
        if key not in entry:
            raise InputError(f"{where}: missing key '{key}'.")
    indices = {key: _indices(entry[key], key, where, n_images) for key in _INDEX_KEYS}
    return QueryTruth(bbx=_bbx(entry["bbx"], where), **indices)


def _indices(value: Any, key: str, where: str, n_images: int) -> tuple[int, ...]:
    values = _as_list(value)
    if values is None:
        raise InputError(f"{where}: '{key}' must be a list of image indices, got "
                         f"{type(value).__name__}.")
    for index in values:
        if isinstance(index, bool) or not isinstance(index, Integral):
            raise InputError(f"{where}: '{key}' holds {index!r}, not an image index.")
        if not 0 <= index < n_images:
            raise InputError(f"{where}: '{key}' index {index} is out of range: imlist has "
                             f"{n_images} images.")
    return tuple(int(index) for index in values)


def _bbx(value: Any, where: str) -> tuple[float, float, float, float]:
    values = _as_list(value)
    if values is None or len(values) != 4 or not all(
        isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in values
    ):
        raise InputError(f"{where}: 'bbx' must be 4 numbers x1, y1, x2, y2, got {value!r}.")
    x1, y1, x2, y2 = (float(v) for v in values)
    if x2 <= x1 or y2 <= y1:
        raise InputError(f"{where}: 'bbx' {[x1, y1, x2, y2]} is empty (needs x1 < x2 and y1 < y2).")
    return x1, y1, x2, y2


# --- folders, images, queries, judgements ------------------------------------------------------


def _layout(name: str) -> str:
    return (f"<root>/{name}/gnd_{name}.pkl (or gnd_{name}.json, written by convert_ground_truth) "
            f"and the images as <root>/{name}/jpg/<image>.jpg")


def _choice(value: str, allowed: Sequence[str], what: str) -> str:
    key = value.strip().lower()
    if key not in allowed:
        raise InputError(f"Unknown {what} {value!r}: expected one of {', '.join(allowed)}.")
    return key


def _dataset_folder(root: Path, name: str) -> Path:
    """``root/<name>`` when it exists, else ``root`` itself (pointed straight at it)."""
    if not root.is_dir():
        raise InputError(f"Revisited dataset folder not found: {root}. Expected {_layout(name)}.")
    return root / name if (root / name).is_dir() else root


def _ground_truth_path(folder: Path, name: str) -> Path:
    for suffix in (".json", ".pkl"):
        path = folder / f"gnd_{name}{suffix}"
        if path.is_file():
            return path
    raise InputError(f"{folder} has no gnd_{name}.pkl (nor gnd_{name}.json). Expected {_layout(name)}.")


def _image_folder(folder: Path, name: str) -> Path:
    images = folder / "jpg"
    if not images.is_dir():
        raise InputError(f"{folder} has no jpg/ image folder. Expected {_layout(name)}.")
    return images


def _image_files(images: Path, truth: GroundTruth, truth_path: Path) -> dict[str, Path]:
    """Image name -> ``<images>/<name>.jpg``, for the database and query images. A name that
    would leave ``images`` is an InputError naming its entry, raised before any file is looked
    at; missing files are an InputError that counts them and names the first few."""
    files: dict[str, Path] = {}
    for key, names in (("imlist", truth.imlist), ("qimlist", truth.qimlist)):
        for index, name in enumerate(names):
            files[name] = inside(images, f"{name}.jpg", source=f"{truth_path}: {key}[{index}]")
    names = [*truth.imlist, *truth.qimlist]
    missing = [f"{name}.jpg" for name in names if not files[name].is_file()]
    if missing:
        raise InputError(f"{images}: {len(missing)} of the {len(names)} images listed in "
                         f"{truth_path.name} are missing: {listing(missing, quote=False)}.")
    return files


def _distractor_items(folder: Path, taken: set[str]) -> list[Item]:
    """One image item per ``.jpg`` under ``folder`` (recursively), id = relative path without
    the extension."""
    if not folder.is_dir():
        raise InputError(f"Distractor folder not found: {folder}.")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg") and p.is_file())
    if not paths:
        raise InputError(f"Distractor folder {folder} holds no .jpg images.")
    items = [Item(id=p.relative_to(folder).with_suffix("").as_posix(), kind="image", source=str(p))
             for p in paths]
    clash = next((item.id for item in items if item.id in taken), None)
    if clash is not None:
        raise InputError(f"Distractor {folder / clash}.jpg has the id of a database image ({clash!r}).")
    return items


def _query(path: Path, name: str, truth: QueryTruth, truth_path: Path, index: int) -> Query:
    crop = _crop(path, truth.bbx, f"{truth_path}: query {index} ({name!r})")
    return Query(id=name, image=crop, metadata={"source": str(path), "bbx": list(truth.bbx)})


def _crop(path: Path, bbx: tuple[float, float, float, float], where: str) -> PILImage.Image:
    """The box of the image, rounded as PIL rounds crop boxes, clipped to the image bounds."""
    from mmrank.images import open_rgb

    image = open_rgb(path)
    width, height = image.size
    x1, y1, x2, y2 = (round(v) for v in bbx)
    box = (max(0, x1), max(0, y1), min(width, x2), min(height, y2))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise InputError(f"{where}: 'bbx' {list(bbx)} lies outside {path} ({width}x{height}).")
    return image.crop(box)


_PROTOCOL_SPLIT: dict[str, Callable[[QueryTruth], tuple[tuple[int, ...], tuple[int, ...]]]] = {
    "easy": lambda q: (q.easy, q.junk + q.hard),
    "medium": lambda q: (q.easy + q.hard, q.junk),
    "hard": lambda q: (q.hard, q.junk + q.easy),
}


def _judgements(truth: GroundTruth, protocol: str) -> Judgements:
    """The revisited protocol: (positives, ignored) per query as in revisitop's evaluation."""
    qrels: dict[str, dict[str, int]] = {}
    ignored: dict[str, frozenset[str]] = {}
    for query_name, query in zip(truth.qimlist, truth.gnd):
        positives, junk = _PROTOCOL_SPLIT[protocol](query)
        qrels[query_name] = {truth.imlist[i]: 1 for i in positives}
        ignored[query_name] = frozenset(truth.imlist[i] for i in junk)
    return Judgements(qrels, ignored)
