"""Showing results: self-contained HTML sheets with thumbnails, and plain text tables for the terminal.

The HTML sheet has one section per query: the query (reference image, text, modification request),
the time each stage took, what every stage said (explanations, e.g. a target caption or a model's
reasoning) and showed the model (pictures, e.g. the grid of numbered candidates), and the results
table with each hit's score and rank after every stage and how far it moved from the first stage's
rank to its final one. Every image is embedded, so the file stands alone.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmrank.images import data_url, item_image
from mmrank.errors import InputError
from mmrank.text import query_words, snippet
from mmrank.types import Hit, Item, Ranking

if TYPE_CHECKING:
    from PIL import Image

THUMBNAIL_PX = 220
PICTURE_PX = 640  # widest a stage picture is shown
LONG_TEXT = 280  # explanations longer than this (or of many lines) are collapsed in <details>
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2.5rem; border-top: 1px solid #ccc; padding-top: 1rem; }
h3 { font-size: .95rem; margin: 1rem 0 .3rem; }
table { border-collapse: collapse; } td, th { padding: .35rem .7rem; border-bottom: 1px solid #ddd;
text-align: left; vertical-align: middle; } th { font-size: .85rem; }
img { max-width: 220px; max-height: 220px; box-shadow: 0 1px 3px #999; }
img.picture { max-width: 640px; max-height: none; margin: .3rem .5rem .3rem 0; }
.muted { color: #777; font-size: .85rem; } .query p { margin: .2rem 0; }
.explanation { white-space: pre-wrap; background: #f6f6f6; padding: .4rem .6rem; margin: .3rem 0; max-width: 60rem; }
details summary { cursor: pointer; } .stage { color: #555; font-size: .85rem; white-space: nowrap; }
.up { color: #1a7f37; } .down { color: #c62828; } .new { color: #1565c0; } .note { color: #b26a00; font-size: .85rem; }
.snippet { font-size: .85rem; color: #444; max-width: 32rem; margin-top: .3rem; } mark { background: #fff3a3; }
"""


def write_html_report(rankings: Sequence[Ranking], path: str | Path, title: str = "mmrank results") -> Path:
    """Write one HTML page with a section per query; images are embedded, so the file stands alone."""
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


def movement(first_rank: int | None, final_rank: int) -> str:
    """How far a hit moved from its first-stage rank to its final rank: ``▲3`` (up three places),
    ``▼2`` (down two), ``=`` (same place), or ``new`` when the first stage did not have it."""
    if first_rank is None:
        return "new"
    moved = first_rank - final_rank
    return "=" if moved == 0 else f"▲{moved}" if moved > 0 else f"▼{-moved}"


def hit_movement(ranking: Ranking, hit: Hit, final_rank: int) -> str:
    """:func:`movement` of ``hit`` from the ranking's first stage (empty when it records no stage)."""
    stages = ranking.stage_names
    if not stages:
        return ""
    first = hit.stages.get(stages[0])
    return movement(first.rank if first else None, final_rank)


def stage_table(ranking: Ranking) -> str:
    """A text table for the terminal: per hit its final rank, source, rank after every stage (in
    stage order; ``-`` where a stage did not rank it) and its movement since the first stage."""
    stages = ranking.stage_names
    rows = []
    for rank, hit in enumerate(ranking.hits, start=1):
        ranks = [str(hit.stages[s].rank) if s in hit.stages else "-" for s in stages]
        rows.append([str(rank), _source_label(hit.item), *ranks, hit_movement(ranking, hit, rank)])
    return format_table(["#", "source", *stages, "move"], rows)


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


def _source_label(item: Item) -> str:
    name = Path(item.source).name if item.source else item.id
    return f"{name} p.{item.page}" if item.page is not None else name


def _section(ranking: Ranking) -> str:
    stages = ranking.stage_names
    timings = ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in ranking.timings.items())
    if len(ranking.timings) > 1:
        timings += f" (total {sum(ranking.timings.values()) * 1000:.0f} ms)"
    shown = [*stages, *(s for s in [*ranking.explanations, *ranking.pictures] if s not in stages)]
    said = "".join(_stage_block(ranking, stage) for stage in dict.fromkeys(shown))
    stage_heads = "".join(f"<th>{html.escape(stage)}<br><span class='muted'>score · rank</span></th>"
                          for stage in stages)
    move_head = "<th>move</th>" if stages else ""
    rows = "\n".join(_row(ranking, rank, hit) for rank, hit in enumerate(ranking.hits, start=1))
    return (f"<section>{_query_block(ranking)}<p class='muted'>{html.escape(timings)}</p>{said}"
            "<table><tr><th>#</th><th>preview</th><th>source</th><th>page</th><th>score</th>"
            f"{stage_heads}{move_head}<th>found by</th><th>notes</th></tr>{rows}</table></section>")


def _query_block(ranking: Ranking) -> str:
    query = ranking.query
    heading = html.escape(query.search_text or "(image query)")
    parts = [f"<h2>{heading}</h2><div class='query'>"]
    if query.image is not None:
        parts.append(_img_tag(_query_thumbnail(query.image), alt="reference image"))
    if query.text and query.text.strip():
        parts.append(f"<p><b>text:</b> {html.escape(query.text)}</p>")
    if query.modification and query.modification.strip():
        parts.append(f"<p><b>modification:</b> {html.escape(query.modification)}</p>")
    if query.id:
        parts.append(f"<p class='muted'>query {html.escape(query.id)}</p>")
    return "".join(parts) + "</div>"


def _query_thumbnail(image: Any) -> Image.Image | None:
    if isinstance(image, (str, Path)):
        return thumbnail(Item(id="query", kind="image", source=str(image)))
    if hasattr(image, "thumbnail") and hasattr(image, "copy"):  # a PIL image
        picture = image.copy()
        picture.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        return picture
    return None


def _stage_block(ranking: Ranking, stage: str) -> str:
    texts = ranking.explanations.get(stage, ())
    pictures = ranking.pictures.get(stage, ())
    if not texts and not pictures:
        return ""
    seconds = ranking.timings.get(stage)
    took = f" <span class='muted'>{seconds * 1000:.0f} ms</span>" if seconds is not None else ""
    body = "".join(_explanation(text) for text in texts)
    body += "".join(_picture_tag(picture, f"{stage} picture {n}") for n, picture in enumerate(pictures, start=1))
    return f"<div class='stage-output'><h3>{html.escape(stage)}{took}</h3>{body}</div>"


def _explanation(text: str) -> str:
    text = str(text)
    if len(text) <= LONG_TEXT and text.count("\n") < 4:
        return f"<div class='explanation'>{html.escape(text)}</div>"
    first = " ".join(text.split())[:160]
    return (f"<details><summary>{html.escape(first)}… <span class='muted'>({len(text)} characters)</span>"
            f"</summary><div class='explanation'>{html.escape(text)}</div></details>")


def _row(ranking: Ranking, rank: int, hit: Hit) -> str:
    item = hit.item
    source = html.escape(Path(item.source).name if item.source else item.id)
    cells = "".join(_stage_cell(hit, stage) for stage in ranking.stage_names)
    move = ""
    if ranking.stage_names:
        moved = hit_movement(ranking, hit, rank)
        kind = "new" if moved == "new" else "up" if moved.startswith("▲") else "down" if moved.startswith("▼") else ""
        move = f"<td class='{kind}'>{html.escape(moved)}</td>" if kind else f"<td>{html.escape(moved)}</td>"
    found_by = ", ".join(
        f"{path} {hit.stages[path].score:.3f}" if path in hit.stages and hit.stages[path].score is not None
        else path for path in hit.found_by)
    notes = "<br>".join(f"{html.escape(stage)}: {html.escape(s.note)}"
                        for stage, s in hit.stages.items() if s.note)
    question = ranking.query.search_text or ""
    passage = hit.snippet or (snippet(item.text, question) if item.has_text and question else None)
    shown = f"<div class='snippet'>{highlight(passage, question)}</div>" if passage else ""
    return (f"<tr><td>{rank}</td><td>{_img_tag(thumbnail(item))}</td><td title='{html.escape(item.source or '')}'>"
            f"{source}{shown}</td><td>{item.page or ''}</td><td>{hit.score:.4f}</td>{cells}{move}"
            f"<td>{html.escape(found_by)}</td><td class='note'>{notes}</td></tr>")


def highlight(text: str, query: str) -> str:
    """``text`` as HTML, the words it shares with ``query`` in ``<mark>``."""
    wanted = query_words(query)
    parts = re.split(r"(\w+)", text)
    return "".join(f"<mark>{html.escape(part)}</mark>" if part.lower() in wanted else html.escape(part)
                   for part in parts)


def _stage_cell(hit: Hit, stage: str) -> str:
    result = hit.stages.get(stage)
    if result is None:
        return "<td class='stage muted'>–</td>"
    score = "—" if result.score is None else f"{result.score:.4f}"
    flag = f" <span class='note' title='{html.escape(result.note)}'>*</span>" if result.note else ""
    return f"<td class='stage'>{score} · #{result.rank}{flag}</td>"


def _img_tag(picture: Image.Image | None, alt: str = "preview") -> str:
    if picture is None:
        return "<span class='muted'>no preview</span>"
    return f"<img alt='{html.escape(alt)}' src='{data_url(picture, quality=80)}'>"


def _picture_tag(picture: Any, alt: str) -> str:
    """A stage's picture, at most PICTURE_PX wide: PNG when it has transparency, else JPEG."""
    from PIL import Image

    if isinstance(picture, (str, Path)):
        try:
            with Image.open(picture) as opened:
                picture = opened.copy()
        except OSError:
            return f"<span class='muted'>{html.escape(alt)}: cannot open {html.escape(str(picture))}</span>"
    if not isinstance(picture, Image.Image):
        return f"<span class='muted'>{html.escape(alt)}: not an image</span>"
    if picture.width > PICTURE_PX:
        height = max(1, round(picture.height * PICTURE_PX / picture.width))
        picture = picture.resize((PICTURE_PX, height), Image.Resampling.LANCZOS)
    if picture.mode in ("RGBA", "LA") or (picture.mode == "P" and "transparency" in picture.info):
        url = data_url(picture, "PNG", optimize=True)
    else:
        url = data_url(picture, quality=88)
    return f"<img class='picture' alt='{html.escape(alt)}' width='{picture.width}' src='{url}'>"
