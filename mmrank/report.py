"""Showing results: self-contained HTML sheets with thumbnails, and plain text tables for the terminal."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mmrank.images import item_image
from mmrank.errors import InputError
from mmrank.types import Item, Ranking

if TYPE_CHECKING:
    from PIL import Image

THUMBNAIL_PX = 220
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
table { border-collapse: collapse; } td, th { padding: .4rem .8rem; border-bottom: 1px solid #ddd;
text-align: left; vertical-align: middle; } img { max-width: 220px; max-height: 220px;
box-shadow: 0 1px 3px #999; } .muted { color: #777; font-size: .85rem; }
"""


def write_html_report(rankings: Sequence[Ranking], path: str | Path, title: str = "mmrank results") -> Path:
    """Write one HTML page with a section per query; thumbnails are embedded, so the file stands alone."""
    path = Path(path)
    sections = "\n".join(_section(ranking) for ranking in rankings)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{sections}</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain, aligned text table."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
             for line in [headers, ["-" * w for w in widths], *rows]]
    return "\n".join(lines)


def thumbnail(item: Item, size: int = THUMBNAIL_PX) -> Image.Image | None:
    """A small picture of an item (page render or image file); None for items with no picture."""
    if item.kind == "text" or item.source is None or not Path(item.source).exists():
        return None
    try:
        picture = item_image(item, dpi=48)
    except InputError:
        return None
    picture.thumbnail((size, size))
    return picture


def _section(ranking: Ranking) -> str:
    query = ranking.query
    heading = html.escape(query.search_text or "(image query)")
    reference = ""
    if query.image is not None and isinstance(query.image, (str, Path)):
        reference = _img_tag(thumbnail(Item(id="query", kind="image", source=str(query.image))))
    timings = ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in ranking.timings.items())
    rows = "\n".join(_row(rank, hit) for rank, hit in enumerate(ranking.hits, start=1))
    return (f"<h2>{heading}</h2>{reference}<p class='muted'>{html.escape(timings)}</p>"
            "<table><tr><th>#</th><th>preview</th><th>source</th><th>page</th><th>score</th>"
            f"<th>found by</th></tr>{rows}</table>")


def _row(rank: int, hit) -> str:
    item = hit.item
    source = html.escape(Path(item.source).name if item.source else item.id)
    return (f"<tr><td>{rank}</td><td>{_img_tag(thumbnail(item))}</td><td title='{html.escape(item.source or '')}'>"
            f"{source}</td><td>{item.page or ''}</td><td>{hit.score:.4f}</td>"
            f"<td>{html.escape(', '.join(hit.found_by))}</td></tr>")


def _img_tag(picture: Image.Image | None) -> str:
    if picture is None:
        return "<span class='muted'>no preview</span>"
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=80)
    return f"<img alt='preview' src='data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"
