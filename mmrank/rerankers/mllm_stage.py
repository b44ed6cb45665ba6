"""What the rerankers that ask a vision-language model share: the options naming the model, the
:class:`~mmrank.mllm.handle.ModelHandle` built from them, and (for those that show the model the
candidates) the candidates' pictures."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from mmrank.documents import DEFAULT_DPI, check_dpi
from mmrank.config import dataclass_options
from mmrank.errors import ModelUnavailableError
from mmrank.images import item_image
from mmrank.mllm.handle import ModelHandle, OnUnavailable
from mmrank.rerankers.base import BaseReranker, keep_order, query_text

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from mmrank.mllm import VisionLanguageModel
    from mmrank.types import Hit, Item, Query, Ranking


@dataclasses.dataclass(kw_only=True)
class MLLMReranker(BaseReranker):
    """A stage that asks a vision-language model.

    ``model`` is a Hugging Face id or local folder (default Qwen/Qwen2.5-VL-3B-Instruct), or a
    ready :class:`~mmrank.mllm.VisionLanguageModel`; ``url`` points at an OpenAI-compatible server
    instead; ``model_options`` go to the backend (``device``, ``dtype``, ``max_pixels``, ...).
    Stages naming the same model share one loaded instance. ``handle`` is the model, loaded on
    first use.

    ``on_unavailable`` says what happens when the model cannot be loaded or a call to it fails
    (a ModelUnavailableError: a server that went away, answers an error after its retries, or sends
    a malformed reply). ``keep-order`` (the default): the rankings whose call failed keep their
    incoming order, with a warning on the "mmrank" logger and the note ``model unavailable:
    <reason>`` on every hit; rankings whose calls succeeded keep their reranked result, and later
    calls are still made. ``fail``: the error is raised (the CLI exits with status 2 and one line).
    """

    uses_mllm: ClassVar[bool] = True
    default_model: ClassVar[str | None] = None  # None: the backend's default
    default_model_options: ClassVar[Mapping[str, Any]] = {}

    model: str | VisionLanguageModel | None = None
    url: str | None = None
    model_options: Mapping[str, Any] | None = None
    on_unavailable: OnUnavailable = "keep-order"
    handle: ModelHandle = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        options = self.default_model_options if self.model_options is None else self.model_options
        self.handle = ModelHandle(self.model, self.url, dict(options), self.on_unavailable, self.default_model)

    def options(self) -> dict[str, Any]:
        """The constructor options; a ready model is written as the name it was loaded from."""
        return dataclass_options(self, model=self.handle.reference)

    def model_calls(self, rankings: Sequence[Ranking]) -> ModelCalls:
        """The model calls of one :meth:`rerank_batch` over ``rankings``, loading the model now
        (see :class:`ModelCalls`)."""
        return ModelCalls(self, rankings)

    def question(self, query: Query) -> str:
        """What the model is asked about: the query's text (InputError for an image-only query)."""
        return query_text(query, self.name, "reranker asks the model about the query's text")


@dataclasses.dataclass(kw_only=True)
class PictureMLLMReranker(MLLMReranker):
    """An MLLM stage that shows the model the candidates' pictures (pages rendered at ``dpi``)."""

    dpi: int = DEFAULT_DPI

    def __post_init__(self) -> None:
        super().__post_init__()
        check_dpi(self.dpi)

    def picture(self, item: Item) -> PILImage.Image:
        """The candidate's picture as the model sees it."""
        return item_image(item, self.dpi)


class ModelCalls:
    """The calls one ``rerank_batch`` makes to its stage's model, and the rankings they lost.

    Building it loads the model (``model`` is None when it is unavailable and the stage keeps the
    order: every ranking is then lost). :meth:`ask` makes one call on behalf of some rankings (their
    rows in ``rankings``); when it raises ModelUnavailableError (a server gone, an error after the
    retries, a malformed reply) and ``on_unavailable`` is ``keep-order``, those rankings are lost,
    with a warning, and the next calls are still made (a server that blinked may be back); with
    ``fail`` the error is raised. :meth:`results` gives each ranking's result, or for a lost one its
    incoming order with ``model unavailable: <reason>`` on every hit. ``lost`` maps lost rows to
    their reason.
    """

    def __init__(self, stage: MLLMReranker, rankings: Sequence[Ranking]) -> None:
        self.stage = stage
        self.rankings = rankings
        self.model, problem = stage.handle.available(stage.name)
        self.lost: dict[int, str] = {} if problem is None else dict.fromkeys(range(len(rankings)), problem)

    def ask(self, rows: Iterable[int], call: Callable[..., Any], *args: Any) -> bool:
        """``call(model, *args)`` for the rankings at ``rows``: True when it answered; False when
        the model is unavailable (those rankings are then lost; with ``fail`` the error is raised)."""
        rows = list(rows)
        if self.model is None:
            return False
        try:
            call(self.model, *args)
        except ModelUnavailableError as error:
            reason = self.stage.handle.unavailable(error, self.stage.name)
            for row in rows:
                self.lost.setdefault(row, reason)
            return False
        return True

    def ask_heads(self, depth: int, batch_size: int | None,
                  call: Callable[[VisionLanguageModel, list[tuple[int, int, Hit]]], Any]) -> None:
        """``call(model, jobs)`` over the top ``depth`` hits of every ranking as (row, position, hit)
        jobs, ``batch_size`` jobs per call (None: all in one), leaving out the jobs of rankings
        already lost (through :meth:`ask`, so a failing call loses its rankings)."""
        if self.model is None:
            return
        jobs = [(row, position, hit) for row, ranking in enumerate(self.rankings)
                for position, hit in enumerate(ranking.hits[:depth])]
        size = batch_size or max(1, len(jobs))
        for begin in range(0, len(jobs), size):
            batch = [job for job in jobs[begin:begin + size] if job[0] not in self.lost]
            self.ask({row for row, _, _ in batch}, call, batch)

    def results(self, result: Callable[[int], Ranking]) -> list[Ranking]:
        """``result(row)`` for every ranking not lost; the incoming order, noted, for the others."""
        return [keep_order(ranking, self.stage.name, f"model unavailable: {self.lost[row]}")
                if row in self.lost else result(row) for row, ranking in enumerate(self.rankings)]
