"""SQUARE's second stage, EBR (efficient batch reranking): the top K candidates in one grid image,
ranked by a multimodal LLM in a single call per query.

The model sees the reference image (for a composed query), the request and one grid of the
candidates, each in an equal square tile with its number 1..K in the corner (row-major, in
first-stage order unless ``shuffle``), and answers ``{"ranking": [...]}`` with every number from
best to worst. Two ways to read the answer:

- ``generate`` (default): decode the JSON and parse it robustly
  (:func:`~mmrank.mllm.parsing.parse_json_ranking`); stage scores are 1 / new rank;
- ``first-token``: one forward pass with the answer primed up to its first number, then the K
  marks ranked by the probability of their number token there (the FIRST idea from listwise
  reranking); stage scores are those probabilities. Every mark must be a single token for the
  model's tokenizer (Qwen tokenizers split numbers into digits, so K <= 9 there).

The reranked top K replaces positions 1..K; the rest keep their order and score.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from mmrank.errors import InputError
from mmrank.grid_image import check_geometry, place_order, render_grid
from mmrank.mllm.base import check_generation_options
from mmrank.mllm.parsing import parse_json_ranking
from mmrank.mllm.prompts import (
    GRID_ANSWER_PREFIX,
    GRID_CANDIDATES_LABEL,
    GRID_COMPOSED_TEMPLATE,
    GRID_REFERENCE_LABEL,
    GRID_TEXT_TEMPLATE,
)
from mmrank.rerankers.base import HeadPlace, at_least_one, reorder_head
from mmrank.rerankers.mllm_stage import PictureMLLMReranker

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from mmrank.collection import Collection
    from mmrank.mllm import Conversation, VisionLanguageModel
    from mmrank.types import Query, Ranking

GridMode = Literal["generate", "first-token"]
MODES = ("generate", "first-token")


class _Grid:
    """One query's grid: which candidates it shows (positions in the ranking, tile order), those left
    out because their picture failed to load, and what the model made of it: the tiles it ranked
    (best first), their scores (first-token mode), a note and its answer."""

    def __init__(self, ranking: Ranking, depth: int) -> None:
        self.ranking = ranking
        self.head = min(depth, len(ranking.hits))
        self.tiles: list[int] = []
        self.left_out: dict[int, str] = {}
        self.picture: PILImage.Image | None = None
        self.conversation: Conversation | None = None
        self.order: list[int] = []
        self.scores: list[float] | None = None
        self.note: str | None = None
        self.answer = ""


@dataclasses.dataclass(kw_only=True)
class GridReranker(PictureMLLMReranker):
    """Reorders the top ``depth`` (K, default 9) hits from one MLLM call per query over a grid image.

    ``mode``: ``generate`` or ``first-token`` (see the module docstring). ``tile`` / ``gutter``:
    the grid's square tile and gutter sizes in pixels. ``shuffle``: place candidates in the tiles
    in a random order fixed by ``seed`` and the query (to study position bias). ``max_new_tokens``
    defaults to 4 K + 8 and ``temperature`` to 0 (greedy). ``batch_size``: queries per model call
    (grids are built per call, so this bounds memory). Model options and ``on_unavailable`` as in
    :class:`~mmrank.rerankers.mllm_stage.MLLMReranker`: when a call fails, the queries of its batch
    keep their order.

    The grid is ``pictures[name][0]`` and the model's answer ``explanations[name][0]``. An answer
    that cannot be parsed keeps the incoming order; a partial one ranks the numbers given, then the
    rest in incoming order; a candidate whose picture cannot be loaded is left out of the grid and
    placed after the ranked ones; each case is noted on the hits.
    """

    name: str = "grid"
    depth: int = 9
    mode: GridMode = "generate"
    tile: int = 336
    gutter: int = 8
    shuffle: bool = False
    seed: int = 0
    max_new_tokens: int | None = None
    temperature: float = 0.0
    batch_size: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}.")
        at_least_one("batch_size", self.batch_size)
        check_generation_options(self.tokens, self.temperature)
        check_geometry(self.tile, self.gutter)

    @property
    def tokens(self) -> int:
        """Tokens a generated answer may take: ``max_new_tokens``, by default 4 K + 8."""
        return 4 * self.depth + 8 if self.max_new_tokens is None else self.max_new_tokens

    # ------------------------------------------------------------------ prompts
    def placement(self, query: Query, count: int) -> list[int]:
        """Tile i shows candidate ``placement[i]`` (0-based, in incoming order)."""
        key = zlib.crc32((query.id or query.search_text or "").encode()) ^ self.seed
        return place_order(count, self.shuffle, key)

    def grid_conversation(self, query: Query, grid: PILImage.Image, count: int) -> Conversation:
        """The user message: the reference image (composed queries), the grid and the instruction."""
        request = self.question(query)
        example = {1: "1", 2: "2, 1"}.get(count, "3, 1, ...")
        content: list[dict[str, Any]] = []
        if query.image is not None:
            content += [{"type": "text", "text": GRID_REFERENCE_LABEL}, {"type": "image", "image": query.image},
                        {"type": "text", "text": GRID_CANDIDATES_LABEL}, {"type": "image", "image": grid},
                        {"type": "text", "text": GRID_COMPOSED_TEMPLATE.format(
                            request=request, count=count, example=example)}]
        else:
            content += [{"type": "image", "image": grid},
                        {"type": "text", "text": GRID_TEXT_TEMPLATE.format(
                            request=request, count=count, example=example)}]
        return [{"role": "user", "content": content}]

    def _prepare(self, query: Query, ranking: Ranking) -> _Grid:
        """The grid of the query's top candidates and the conversation about it."""
        grid = _Grid(ranking, self.depth)
        pictures = {}
        for position in range(grid.head):
            try:
                pictures[position] = self.picture(ranking.hits[position].item)
            except (InputError, OSError) as error:
                grid.left_out[position] = f"left out of the grid: {error}; placed after the ranked hits"
        shown = list(pictures)
        if shown:
            grid.tiles = [shown[i] for i in self.placement(query, len(shown))]
            grid.picture = render_grid([pictures[p] for p in grid.tiles], tile=self.tile, gutter=self.gutter)
            grid.conversation = self.grid_conversation(query, grid.picture, len(shown))
        return grid

    # ---------------------------------------------------------------- reranking
    def rerank_batch(self, queries: Sequence[Query], rankings: Sequence[Ranking],
                     collection: Collection) -> list[Ranking]:
        """One call per ``batch_size`` queries; see the class docstring."""
        calls = self.model_calls(rankings)
        grids: list[_Grid] = []
        ask = self._first_token if self.mode == "first-token" else self._generate
        if calls.model is not None:
            for begin in range(0, len(rankings), self.batch_size):
                batch = [self._prepare(query, ranking) for query, ranking in
                         zip(queries[begin:begin + self.batch_size], rankings[begin:begin + self.batch_size],
                             strict=True)]
                shown = [index for index, grid in enumerate(batch) if grid.conversation is not None]
                if shown:
                    calls.ask([begin + index for index in shown], ask, [batch[index] for index in shown])
                grids += batch
        return calls.results(lambda row: self._apply(grids[row]))

    def _generate(self, model: VisionLanguageModel, grids: list[_Grid]) -> None:
        """Each grid's ranked tiles from the model's JSON answer."""
        generations = model.generate([grid.conversation for grid in grids], max_new_tokens=self.tokens,
                                     temperature=self.temperature, assistant_prefix=GRID_ANSWER_PREFIX)
        for grid, generation in zip(grids, generations, strict=True):
            grid.answer = GRID_ANSWER_PREFIX + generation.text
            grid.order, grid.note = read_answer(grid.answer, len(grid.tiles))

    def _first_token(self, model: VisionLanguageModel, grids: list[_Grid]) -> None:
        """Each grid's tiles by the probability of their number as the answer's first token."""
        by_count: dict[int, list[_Grid]] = {}
        for grid in grids:
            by_count.setdefault(len(grid.tiles), []).append(grid)
        for count, group in by_count.items():
            marks = [str(i) for i in range(1, count + 1)]
            probabilities = model.choice_probability([grid.conversation for grid in group], marks,
                                                     assistant_prefix=GRID_ANSWER_PREFIX)
            for grid, row in zip(group, probabilities, strict=True):
                grid.order = sorted(range(count), key=lambda tile: (-row[tile], grid.tiles[tile]))
                grid.scores = [float(p) for p in row]
                shown = ", ".join(f"{tile + 1}: {row[tile]:.3f}" for tile in grid.order)
                grid.answer = f"first-token probabilities: {shown}"

    def _apply(self, grid: _Grid) -> Ranking:
        """Ranked tiles, then the tiles the model left out and the candidates left out of the grid, in
        incoming order; then the rest of the ranking."""
        ranked = [grid.tiles[tile] for tile in grid.order]
        rest = sorted(set(range(grid.head)) - set(ranked))
        tile_of = {position: tile for tile, position in enumerate(grid.tiles)}
        head = []
        for rank, position in enumerate(ranked + rest, start=1):
            if position not in tile_of:
                score = None
            else:
                score = 1.0 / rank if grid.scores is None else grid.scores[tile_of[position]]
            head.append(HeadPlace(position, score, grid.left_out.get(position) or grid.note))
        pictures = () if grid.picture is None else (grid.picture,)
        return grid.ranking.with_stage(self.name, reorder_head(grid.ranking, head, grid.head),
                                       explanations=(grid.answer,) if grid.answer else (), pictures=pictures)


def read_answer(answer: str, count: int) -> tuple[list[int], str | None]:
    """The tiles (0-based) a model's answer ranks, best first, and a note when the answer was not a
    full ranking of the ``count`` tiles (nothing readable, or only some tiles ranked)."""
    parsed = parse_json_ranking(answer, count)
    given = [identifier - 1 for identifier in parsed.parsed_ids]
    if parsed.failure is not None:
        return given, f"answer not parsed: {parsed.failure}; kept the incoming order"
    if not parsed.complete:
        return given, f"model ranked {len(given)} of {count}; the rest kept their order"
    return given, None
