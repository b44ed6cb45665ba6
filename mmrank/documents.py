"""PDF files as pages (pymupdf): the text layer of every page, and page images rendered on demand."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from mmrank.errors import InputError
from mmrank.text import normalize_text

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_DPI = 144
MIN_DPI, MAX_DPI = 18, 600
MAX_RENDER_PIXELS = 40_000_000  # a page larger than this at the asked DPI is rendered at a lower one


def check_dpi(dpi: int) -> int:
    """``dpi`` after an InputError unless it lies in [MIN_DPI, MAX_DPI]."""
    if isinstance(dpi, bool) or not isinstance(dpi, int) or not MIN_DPI <= dpi <= MAX_DPI:
        raise InputError(f"The page resolution must be {MIN_DPI} to {MAX_DPI} dpi; got {dpi!r}.")
    return dpi


OCR_MODES = ("auto", "off", "force")
OCR_DPI = 300


@dataclass(frozen=True)
class PdfPage:
    """One page's text; ``number`` is 1-based; ``ocr`` when the text was read by OCR."""

    number: int
    text: str
    ocr: bool = False


@lru_cache(maxsize=1)
def ocr_available() -> bool:
    """Whether Tesseract (and its language data) is installed, so pages can be read by OCR
    (checked once per process)."""
    import shutil

    import pymupdf

    if shutil.which("tesseract") is None:
        return False
    try:
        return bool(pymupdf.get_tessdata())
    except RuntimeError:
        return False


def check_ocr(mode: str) -> str:
    """``mode`` after an InputError unless it is one of OCR_MODES, or ``force`` without Tesseract."""
    if mode not in OCR_MODES:
        raise InputError(f"OCR mode must be one of {', '.join(OCR_MODES)}; got {mode!r}.")
    if mode == "force" and not ocr_available():
        raise InputError("--ocr force needs Tesseract, which is not installed (Debian/Ubuntu: apt-get install "
                         "tesseract-ocr).")
    return mode


def _open_pdf(path: Path):
    import pymupdf

    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes).")
    try:
        document = pymupdf.open(path, filetype="pdf")
    except Exception as error:  # pymupdf raises several types for unreadable files
        raise InputError(f"{path}: not a readable PDF ({error}).") from error
    if document.needs_pass:
        document.close()
        raise InputError(f"{path}: encrypted PDF; a password is required to read it.")
    if document.page_count == 0:
        document.close()
        raise InputError(f"{path}: the PDF has no pages (truncated or damaged file).")
    return document


@dataclass(frozen=True)
class PdfText:
    """The pages of a PDF; ``repaired`` is True when the file was damaged (e.g. truncated) and
    pymupdf had to repair it to open it, so later pages may be empty or missing."""

    pages: list[PdfPage]
    repaired: bool


def read_pdf(path: str | Path, ocr: str = "off") -> PdfText:
    """The text of every page, in order, normalised (:func:`mmrank.text.normalize_text`): the text
    layer, or with ``ocr="auto"`` Tesseract's reading of a page without one (when Tesseract is
    installed), or with ``ocr="force"`` Tesseract's reading of every page. A file that cannot be
    opened, or a page that cannot be read, raises InputError naming the file and the reason."""
    import pymupdf

    path = Path(path)
    check_ocr(ocr)
    use_ocr = ocr == "force" or (ocr == "auto" and ocr_available())
    document = _open_pdf(path)
    flags = pymupdf.TEXTFLAGS_TEXT & ~pymupdf.TEXT_PRESERVE_LIGATURES  # "ﬁ" -> "fi", so words match
    pages = []
    try:
        for index in range(document.page_count):
            try:
                page = document.load_page(index)
                text = "" if ocr == "force" else page.get_text("text", flags=flags)
                read_by_ocr = use_ocr and not text.strip()
                if read_by_ocr:
                    textpage = page.get_textpage_ocr(language="eng", dpi=OCR_DPI, full=True)
                    text = page.get_text("text", flags=flags, textpage=textpage)
            except Exception as error:
                raise InputError(f"{path}: page {index + 1} cannot be read ({error}).") from error
            pages.append(PdfPage(number=index + 1, text=normalize_text(text), ocr=read_by_ocr))
        return PdfText(pages=pages, repaired=bool(document.is_repaired))
    finally:
        document.close()


def render_page(path: str | Path, page: int, dpi: int = DEFAULT_DPI) -> Image.Image:
    """Render a 1-based ``page`` of a PDF as an RGB PIL image at ``dpi`` dots per inch (lower for a
    page so large that it would exceed ``MAX_RENDER_PIXELS``)."""
    from PIL import Image

    path = Path(path)
    check_dpi(dpi)
    document = _open_pdf(path)
    try:
        if not 1 <= page <= document.page_count:
            raise InputError(f"{path}: page {page} does not exist (the PDF has {document.page_count}).")
        loaded = document.load_page(page - 1)
        area = max(1.0, loaded.rect.width * loaded.rect.height) / 72 ** 2  # square inches
        dpi = max(1, min(dpi, int((MAX_RENDER_PIXELS / area) ** 0.5)))
        pixmap = loaded.get_pixmap(dpi=dpi, alpha=False)
        return Image.frombytes("RGB", (pixmap.width, pixmap.height), pixmap.samples)
    finally:
        document.close()
