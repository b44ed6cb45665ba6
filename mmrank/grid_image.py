"""One grid image of K candidate pictures, each in a numbered square tile, for batch reranking (EBR)."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Sequence

from mmrank.errors import InputError
from mmrank.images import open_rgb
from mmrank.types import ImageInput

if TYPE_CHECKING:
    from PIL import Image as PILImage

Color = tuple[int, int, int]
Box = tuple[int, int, int, int]

MIN_TILE = 32
MIN_DIGIT_HEIGHT = 14
DIGITS = "0123456789"


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, columns) of the grid for ``count`` tiles: as square as possible, never taller than wide."""
    if count < 1:
        raise InputError(f"A grid needs at least one image, got {count}.")
    columns = math.ceil(math.sqrt(count))
    return math.ceil(count / columns), columns


def tile_boxes(count: int, *, tile: int = 336, gutter: int = 8) -> list[Box]:
    """Each tile's (left, top, right, bottom) in the grid image, row-major; ``gutter`` pixels separate
    the tiles and border the whole grid."""
    check_geometry(tile, gutter)
    _, columns = grid_shape(count)
    boxes = []
    for i in range(count):
        row, column = divmod(i, columns)
        left = gutter + column * (tile + gutter)
        top = gutter + row * (tile + gutter)
        boxes.append((left, top, left + tile, top + tile))
    return boxes


def place_order(count: int, shuffle: bool, seed: int) -> list[int]:
    """Which candidate goes in which tile: tile ``i`` shows candidate ``order[i]`` and carries the label
    ``str(i + 1)``. The identity, or with ``shuffle`` a permutation fixed by ``seed`` (to study position
    bias); a model's answer ``n`` then means candidate ``order[n - 1]``."""
    if count < 0:
        raise InputError(f"The number of candidates cannot be negative, got {count}.")
    if not shuffle:
        return list(range(count))
    import numpy as np

    return [int(i) for i in np.random.default_rng(seed).permutation(count)]


def render_grid(
    images: Sequence[ImageInput],
    *,
    labels: Sequence[str] | None = None,
    tile: int = 336,
    gutter: int = 8,
    background: Color = (255, 255, 255),
    letterbox: Color = (128, 128, 128),
) -> PILImage.Image:
    """An RGB grid of ``images`` in row-major order: each letterboxed (aspect ratio kept, centred on
    ``letterbox`` colour) into a ``tile`` square, with its label ("1".."K" by default) in white on a black
    box at the tile's top-left corner. Gutters and empty trailing cells are ``background``."""
    from PIL import Image

    labels = [str(i + 1) for i in range(len(images))] if labels is None else [str(x) for x in labels]
    if len(labels) != len(images):
        raise InputError(f"Got {len(labels)} labels for {len(images)} images.")
    boxes = tile_boxes(len(images), tile=tile, gutter=gutter)
    rows, columns = grid_shape(len(images))
    size = (columns * tile + (columns + 1) * gutter, rows * tile + (rows + 1) * gutter)
    grid = Image.new("RGB", size, background)
    digit_height = digit_height_for(tile)
    for image, label, (left, top, _, _) in zip(images, labels, boxes):
        grid.paste(_letterboxed(open_rgb(image), tile, letterbox), (left, top))
        _draw_label(grid, label, (left, top), digit_height)
    return grid


def digit_height_for(tile: int) -> int:
    """Height in pixels of a label's digits in a ``tile`` square: a sixth of the tile, at least 14."""
    return max(MIN_DIGIT_HEIGHT, tile // 6)


def check_geometry(tile: int, gutter: int) -> None:
    """InputError for a tile under the minimum size or a negative gutter."""
    if tile < MIN_TILE:
        raise InputError(f"Tiles must be at least {MIN_TILE} pixels wide, got {tile}.")
    if gutter < 0:
        raise InputError(f"The gutter cannot be negative, got {gutter}.")


def _letterboxed(image: PILImage.Image, tile: int, fill: Color) -> PILImage.Image:
    """``image`` scaled to fit a ``tile`` square with its aspect ratio kept, centred on ``fill``."""
    from PIL import Image

    width, height = image.size
    scale = tile / max(width, height)
    fitted = (max(1, round(width * scale)), max(1, round(height * scale)))
    square = Image.new("RGB", (tile, tile), fill)
    offset = ((tile - fitted[0]) // 2, (tile - fitted[1]) // 2)
    square.paste(image.resize(fitted, Image.Resampling.LANCZOS), offset)
    return square


def _draw_label(grid: PILImage.Image, label: str, corner: tuple[int, int], digit_height: int) -> None:
    """White ``label`` on a filled black box (with a thin white rim) whose top-left is ``corner``."""
    from PIL import ImageDraw

    ink = _label_ink(label, digit_height)
    pad = max(3, digit_height // 5)
    rim = max(1, digit_height // 28)
    height = max(ink.height, digit_height)  # the same for every label of digits
    left, top = corner
    box = (left, top, left + ink.width + 2 * pad - 1, top + height + 2 * pad - 1)
    ImageDraw.Draw(grid).rectangle(box, fill=(0, 0, 0), outline=(255, 255, 255), width=rim)
    grid.paste((255, 255, 255), (left + pad, top + pad + (height - ink.height) // 2), ink)


def _label_ink(label: str, digit_height: int) -> PILImage.Image:
    """A mask ("L") of ``label`` cropped to its ink, with digits ``digit_height`` pixels tall. Uses Pillow's
    scalable default font (FreeType, Pillow >= 10.1); without FreeType, its bitmap font scaled up."""
    from PIL import ImageFont

    font = ImageFont.load_default(size=digit_height)
    if isinstance(font, ImageFont.FreeTypeFont):
        stroke = max(1, digit_height // 20)  # thickens the thin default face
        return _ink(ImageFont.load_default(size=_font_size(digit_height, stroke)), label, stroke)
    from PIL import Image

    bitmap = _ink(font, label)
    factor = digit_height / _ink(font, DIGITS).height
    size = (max(1, round(bitmap.width * factor)), max(1, round(bitmap.height * factor)))
    return bitmap.resize(size, Image.Resampling.NEAREST)


@lru_cache(maxsize=None)
def _font_size(digit_height: int, stroke: int) -> int:
    """The smallest size of the default FreeType font whose digits, drawn with ``stroke``, are at least
    ``digit_height`` pixels tall."""
    from PIL import ImageFont

    size = max(1, digit_height - 2 * stroke)  # digits are shorter than the font size
    while _ink(ImageFont.load_default(size=size), DIGITS, stroke).height < digit_height:
        size += 1
    return size


def _ink(font, text: str, stroke: int = 0) -> PILImage.Image:
    """``text`` drawn white on black in ``font``, cropped to its ink."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(text, stroke_width=stroke) if stroke else font.getbbox(text)
    canvas = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    draw = ImageDraw.Draw(canvas)
    draw.text((1 - left, 1 - top), text, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    bounds = canvas.getbbox()
    if bounds is None:
        raise InputError(f"Label {text!r} draws nothing.")
    return canvas.crop(bounds)
