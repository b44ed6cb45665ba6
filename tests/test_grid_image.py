"""The EBR grid image: tile geometry, letterboxing, legible numbered boxes, determinism, placement order."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFont

from mmrank.errors import InputError
from mmrank.grid_image import digit_height_for, grid_shape, place_order, render_grid, tile_boxes

RED, GREEN, BLUE = (210, 30, 30), (30, 170, 40), (30, 60, 200)
WHITE = (255, 255, 255)
GREY = (128, 128, 128)


def solid(size: tuple[int, int], color: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", size, color)


def pixels(image: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    return np.asarray(image.crop(box), dtype=int)


def extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the True pixels, right and bottom exclusive."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


def near(region: np.ndarray, color: tuple[int, int, int], tolerance: int = 12) -> np.ndarray:
    return (np.abs(region - np.array(color)) <= tolerance).all(axis=-1)


def glyph_box(grid: Image.Image, tile_box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The ink extent of the label drawn in a tile, within the black box at its top-left corner."""
    left, top, right, bottom = tile_box
    corner = pixels(grid, (left, top, left + (right - left) // 2, top + (bottom - top) // 2))
    inside = extent((corner < 30).all(axis=-1))  # the black fill, inside the rim
    fill = corner[inside[1] : inside[3], inside[0] : inside[2]]
    return extent((fill > 200).all(axis=-1))


SHAPES = [(1, (1, 1)), (2, (1, 2)), (3, (2, 2)), (4, (2, 2)), (5, (2, 3)), (9, (3, 3)), (10, (3, 4)), (16, (4, 4))]


@pytest.mark.parametrize(("count", "shape"), SHAPES)
def test_grid_shape_is_as_square_as_possible(count, shape):
    assert grid_shape(count) == shape


def test_grid_shape_and_options_reject_bad_values(tmp_path):
    with pytest.raises(InputError, match="at least one"):
        grid_shape(0)
    with pytest.raises(InputError, match="at least one"):
        render_grid([])
    image = solid((10, 10), RED)
    with pytest.raises(InputError, match="at least 32"):
        render_grid([image], tile=31)
    with pytest.raises(InputError, match="gutter"):
        render_grid([image], gutter=-1)
    with pytest.raises(InputError, match="2 labels for 1 images"):
        render_grid([image], labels=["1", "2"])


def test_tile_boxes_are_equal_squares_separated_and_bordered_by_the_gutter():
    tile, gutter = 100, 8
    boxes = tile_boxes(5, tile=tile, gutter=gutter)
    assert boxes[0] == (8, 8, 108, 108)
    assert all(r - l == tile and b - t == tile for l, t, r, b in boxes)
    assert [b[:2] for b in boxes] == [(8, 8), (116, 8), (224, 8), (8, 116), (116, 116)]  # row-major, 2 x 3
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert a[2] + gutter <= b[0] or b[2] + gutter <= a[0] or a[3] + gutter <= b[1] or b[3] + gutter <= a[1]
    grid = render_grid([solid((4, 4), RED)] * 5, tile=tile, gutter=gutter)
    assert grid.size == (3 * tile + 4 * gutter, 2 * tile + 3 * gutter)
    assert tile_boxes(4, tile=tile, gutter=0)[3] == (100, 100, 200, 200)


def test_pictures_are_letterboxed_with_their_aspect_ratio_kept_and_empty_cells_stay_background():
    tile = 336
    images = [solid((400, 100), RED), solid((100, 400), GREEN), solid((200, 200), BLUE)]
    grid = render_grid(images, tile=tile, gutter=8)
    boxes = tile_boxes(3, tile=tile, gutter=8)
    assert grid.mode == "RGB" and grid.size == (2 * tile + 24, 2 * tile + 24)
    for (left, top, right, bottom), color, ratio in zip(boxes, [RED, GREEN, BLUE], [4.0, 0.25, 1.0]):
        region = pixels(grid, (left, top, right, bottom))
        assert near(region[tile // 2, tile // 2], color).all()
        x0, y0, x1, y1 = extent(near(region, color))
        assert max(x1 - x0, y1 - y0) == tile  # scaled to fit, touching two sides
        assert abs((x1 - x0) / (y1 - y0) - ratio) <= 0.03 * ratio
        assert abs((x0 + x1) / 2 - tile / 2) <= 1 and abs((y0 + y1) / 2 - tile / 2) <= 1  # centred
    wide = pixels(grid, boxes[0])
    assert near(wide[tile - 5, tile // 2], GREY).all()  # letterbox padding, not gutter
    assert near(pixels(grid, (tile + 16, tile + 16, 2 * tile + 16, 2 * tile + 16)), WHITE, 0).all()  # empty cell
    gutters = np.asarray(grid, dtype=int)
    assert near(gutters[:8], WHITE, 0).all() and near(gutters[:, tile + 8 : tile + 16], WHITE, 0).all()


@pytest.mark.parametrize("tile", [112, 336])
def test_each_tile_carries_a_legible_high_contrast_number_at_its_top_left_corner(tile):
    grid = render_grid([solid((300, 200), c) for c in [RED, GREEN, BLUE, GREY]], tile=tile)
    for box in tile_boxes(4, tile=tile):
        corner = pixels(grid, (box[0], box[1], box[0] + tile // 8, box[1] + tile // 8))
        assert (corner < 30).all(axis=-1).any() and (corner > 225).all(axis=-1).any()
        x0, y0, x1, y1 = glyph_box(grid, box)
        assert y1 - y0 >= tile / 8 and y1 - y0 >= 14
        assert x1 - x0 >= 4  # a stroke, not a dot
    # The digits are about a sixth of the tile (56 px at 336), never below 14 px.
    assert digit_height_for(336) == 56 and digit_height_for(32) == 14


def test_labels_differ_between_tiles_and_follow_the_labels_given():
    tile = 112
    images = [solid((50, 50), BLUE)] * 16
    grid = render_grid(images, tile=tile)
    boxes = tile_boxes(16, tile=tile)
    corners = [pixels(grid, (b[0], b[1], b[0] + tile // 2, b[1] + tile // 2)) for b in boxes]
    assert len({c.tobytes() for c in corners}) == 16  # every number drawn differently, "10".."16" too
    assert glyph_box(grid, boxes[9])[2] > glyph_box(grid, boxes[8])[2]  # two digits are wider than one
    swapped = render_grid(images[:2], labels=["2", "1"], tile=tile)
    first = tile_boxes(2, tile=tile)[0]
    assert (pixels(swapped, (first[0], first[1], first[0] + tile // 2, first[1] + tile // 2)) == corners[1]).all()


@pytest.mark.parametrize("count", [1, 4, 5, 9, 16])
def test_grids_of_common_sizes_show_every_candidate_in_order(count):
    tile = 64
    colors = [(20 + 14 * i, 200 - 9 * i, 90) for i in range(count)]
    grid = render_grid([solid((30, 40), c) for c in colors], tile=tile, gutter=4)
    rows, columns = grid_shape(count)
    assert grid.size == (columns * (tile + 4) + 4, rows * (tile + 4) + 4)
    boxes = tile_boxes(count, tile=tile, gutter=4)
    for (left, top, _, _), color in zip(boxes, colors):
        assert near(np.asarray(grid, dtype=int)[top + tile // 2, left + tile // 2], color, 3).all()
        assert (pixels(grid, (left, top, left + 8, top + 8)) < 30).all(axis=-1).any()
    for cell in range(count, rows * columns):
        row, column = divmod(cell, columns)
        left, top = 4 + column * (tile + 4), 4 + row * (tile + 4)
        assert near(pixels(grid, (left, top, left + tile, top + tile)), WHITE, 0).all()


def test_rendering_is_deterministic_and_reads_paths(tmp_path):
    paths = []
    for i, (size, color) in enumerate([((400, 100), RED), ((100, 400), GREEN), ((200, 200), BLUE)]):
        paths.append(tmp_path / f"{i}.png")
        solid(size, color).save(paths[-1])
    first, second = render_grid(paths, tile=96), render_grid(paths, tile=96)
    assert first.tobytes() == second.tobytes()
    assert first.tobytes() == render_grid([Image.open(p) for p in paths], tile=96).tobytes()


def test_an_unreadable_path_names_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "cat.jpg"
    with pytest.raises(InputError, match="cat.jpg"):
        render_grid([solid((10, 10), RED), missing])


def test_without_freetype_the_bitmap_font_is_scaled_up(monkeypatch):
    monkeypatch.setattr(ImageFont, "load_default", lambda size=None: ImageFont.load_default_imagefont())
    tile = 112
    grid = render_grid([solid((40, 40), BLUE)] * 2, tile=tile)
    x0, y0, x1, y1 = glyph_box(grid, tile_boxes(2, tile=tile)[1])
    assert y1 - y0 >= tile / 8 and y1 - y0 >= 14


def test_place_order_is_the_identity_or_a_seeded_permutation():
    assert place_order(9, shuffle=False, seed=3) == list(range(9))
    shuffled = place_order(9, shuffle=True, seed=3)
    assert sorted(shuffled) == list(range(9)) and shuffled != list(range(9))
    assert place_order(9, shuffle=True, seed=3) == shuffled
    assert place_order(9, shuffle=True, seed=4) != shuffled
    assert place_order(0, shuffle=True, seed=3) == []
    with pytest.raises(InputError):
        place_order(-1, shuffle=False, seed=0)
