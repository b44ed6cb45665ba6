"""From paths on disk to Items: find the supported files, read them, report what was skipped."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mmrank.documents import read_pdf
from mmrank.errors import InputError
from mmrank.files import sha256_file
from mmrank.types import Item

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
PDF_SUFFIXES = frozenset({".pdf"})
SUPPORTED_SUFFIXES = IMAGE_SUFFIXES | PDF_SUFFIXES


@dataclass(frozen=True)
class Skipped:
    """A file (or page) left out of a collection, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class Fingerprint:
    """What identifies a file's content: size and modification time, backed by a SHA-256."""

    size: int
    mtime_ns: int
    sha256: str


def discover(paths: Iterable[str | Path]) -> tuple[list[Path], list[Skipped]]:
    """Supported files under the given files and folders (recursively, sorted, hidden entries
    skipped), and the unsupported ones. A path that does not exist raises InputError."""
    found: dict[Path, None] = {}
    skipped: list[Skipped] = []
    for path in require_existing(paths):
        candidates = [path] if path.is_file() else sorted(_walk(path))
        for candidate in candidates:
            if printable(str(candidate)) != str(candidate):
                skipped.append(Skipped(printable(str(candidate)),
                                       "its name is not valid UTF-8, which a collection cannot store; rename it"))
            elif candidate.suffix.lower() in SUPPORTED_SUFFIXES:
                found[candidate.resolve()] = None
            else:
                kind = f"'{candidate.suffix}'" if candidate.suffix else "without an extension"
                skipped.append(Skipped(str(candidate), f"unsupported file type {kind}"))
    return list(found), skipped


def printable(text: str) -> str:
    """``text`` with the bytes of a file name that is not valid UTF-8 (which Python keeps as lone
    surrogates) written as backslash escapes (``caf\\xe9.pdf``), so it can be printed and stored."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name byte stands for
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def require_existing(paths: Iterable[str | Path]) -> list[Path]:
    """The paths as Paths; InputError naming the first one that does not exist."""
    resolved = [Path(raw).expanduser() for raw in paths]
    for path in resolved:
        if not path.exists():
            raise InputError(f"{path}: no such file or folder.")
    return resolved


def _walk(folder: Path) -> Iterator[Path]:
    for entry in folder.rglob("*"):
        relative = entry.relative_to(folder)
        if entry.is_file() and not any(part.startswith(".") for part in relative.parts):
            yield entry


def fingerprint(path: Path) -> Fingerprint:
    stat = path.stat()
    return Fingerprint(size=stat.st_size, mtime_ns=stat.st_mtime_ns, sha256=sha256_file(path))


def read_items(path: Path, ocr: str = "auto") -> tuple[list[Item], str | None]:
    """The items of one supported file (one for an image, one per page for a PDF) and a warning
    when the file was damaged but partly readable. ``ocr``: how pages without a text layer are
    read (see :func:`mmrank.documents.read_pdf`; a page read by OCR has ``metadata["ocr"]``).
    Raises InputError (naming the file and the reason) when the file cannot be read at all."""
    suffix = path.suffix.lower()
    if suffix in PDF_SUFFIXES:
        pdf = read_pdf(path, ocr=ocr)
        items = [
            Item(id=f"{path}#page={page.number}", kind="page", source=str(path), page=page.number,
                 text=page.text or None, metadata={"ocr": True} if page.ocr else {})
            for page in pdf.pages
        ]
        warning = "damaged PDF (truncated or corrupt) repaired on opening; some pages may be empty"
        return items, warning if pdf.repaired else None
    if suffix in IMAGE_SUFFIXES:
        check_image(path)
        return [Item(id=str(path), kind="image", source=str(path))], None
    raise InputError(f"{path}: unsupported file type '{suffix}'.")


def check_image(path: Path) -> None:
    """Decode the whole image once so corrupt or truncated files are caught at indexing time; an
    image larger than Pillow's ``Image.MAX_IMAGE_PIXELS`` (a decompression bomb) is refused from
    its header, before anything is decoded."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputError(f"{path}: too large to index, not decoded ({error})") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InputError(f"{path}: not a readable image ({error}).") from error
