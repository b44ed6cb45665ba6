"""Pictures of queries and items: image files, PIL images and PDF page renders, all as RGB."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mmrank.documents import DEFAULT_DPI, render_page
from mmrank.errors import InputError
from mmrank.types import ImageInput, Item

if TYPE_CHECKING:
    from PIL import Image as PILImage


def open_rgb(image: ImageInput) -> PILImage.Image:
    """A PIL image in RGB; a path that is not a readable image raises InputError naming it."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        with Image.open(image) as opened:
            return opened.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"Cannot read image {str(image)!r}: {exc}") from exc


def encoded(picture: PILImage.Image, format: str = "JPEG", **options) -> bytes:
    """``picture`` as a ``format`` file in memory (``options`` as PIL's ``save`` takes them, e.g.
    ``quality``); JPEG gets the picture in RGB."""
    import io

    buffer = io.BytesIO()
    (picture.convert("RGB") if format.upper() == "JPEG" else picture).save(buffer, format=format, **options)
    return buffer.getvalue()


def data_url(picture: PILImage.Image, format: str = "JPEG", **options) -> str:
    """:func:`encoded` as a ``data:image/<format>;base64,...`` URL (for HTML and OpenAI messages)."""
    import base64

    return f"data:image/{format.lower()};base64,{base64.b64encode(encoded(picture, format, **options)).decode('ascii')}"


def item_image(item: Item, dpi: int = DEFAULT_DPI) -> PILImage.Image:
    """The picture of an item: an image file, or a page (rendered from its PDF at ``dpi``, or read
    from the page-image file a dataset ships). Text items have none: InputError."""
    if item.source is None or item.kind == "text":
        raise InputError(f"Item {item.id!r} has no picture (kind {item.kind!r}, source {item.source!r}).")
    if item.kind == "page" and Path(item.source).suffix.lower() == ".pdf":
        return render_page(item.source, item.page or 1, dpi)
    return open_rgb(item.source)
