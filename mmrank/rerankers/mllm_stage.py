"""What the MLLM rerankers (pointwise, reasoning, grid) share: a lazily loaded, shared model, the
candidates' pictures, and a configurable fallback to the incoming order when the model is missing."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from mmrank.documents import DEFAULT_DPI
from mmrank.errors import InputError, ModelUnavailableError
from mmrank.images import item_image

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from mmrank.collection import Collection
    from mmrank.mllm import VisionLanguageModel
    from mmrank.types import Item, Query, Ranking

OnUnavailable = Literal["fail", "keep-order"]
logger = logging.getLogger("mmrank")


class MLLMReranker(ABC):
    """A reranking stage that asks a vision-language model about the top ``depth`` hits.

    ``model`` is a Hugging Face id or local folder (default Qwen/Qwen2.5-VL-3B-Instruct), or a
    ready :class:`~mmrank.mllm.VisionLanguageModel`; ``url`` points at an OpenAI-compatible server
    instead; ``model_options`` go to the backend (``device``, ``dtype``, ``max_pixels``, ...).
    Stages naming the same model share one loaded instance. With ``on_unavailable="keep-order"``
    a model that cannot be loaded leaves the ranking as it came, with a warning and a note on
    every hit, instead of failing the query.
    """

    uses_mllm = True

    def __init__(self, *, depth: int, name: str, model: str | VisionLanguageModel | None = None,
                 url: str | None = None, model_options: Mapping[str, Any] | None = None,
                 on_unavailable: OnUnavailable = "fail", dpi: int = DEFAULT_DPI) -> None:
        if depth < 1:
            raise InputError(f"depth must be at least 1, got {depth}.")
        if on_unavailable not in ("fail", "keep-order"):
            raise InputError(f"on_unavailable must be 'fail' or 'keep-order', got {on_unavailable!r}.")
        self.depth, self.name, self.on_unavailable, self.dpi = depth, name, on_unavailable, dpi
        self._model, self._url, self._model_options = model, url, dict(model_options or {})

    @property
    def mllm(self) -> VisionLanguageModel:
        """The model, loaded on first use (ModelUnavailableError when it cannot be)."""
        if isinstance(self._model, str) or self._model is None:
            from mmrank.mllm import shared_mllm

            self._model = shared_mllm(self._model, url=self._url, **self._model_options)
        return self._model

    def rerank(self, query: Query, ranking: Ranking, collection: Collection) -> Ranking:
        return self.rerank_batch([query], [ranking], collection)[0]

    def rerank_batch(self, queries: Sequence[Query], rankings: Sequence[Ranking],
                     collection: Collection) -> list[Ranking]:
        """Rerank every ranking; see :meth:`rerank_with` for the work itself."""
        start = time.perf_counter()
        model, problem = self.available_model()
        if model is None:
            seconds = (time.perf_counter() - start) / max(1, len(rankings))
            return [keep_order(ranking, self.name, f"model unavailable: {problem}", seconds) for ranking in rankings]
        return self.rerank_with(model, queries, rankings, collection)

    def available_model(self) -> tuple[VisionLanguageModel | None, str | None]:
        """``(model, None)``; or, when it cannot be loaded and ``on_unavailable`` is ``keep-order``,
        ``(None, why)`` after a warning (with ``fail``, the ModelUnavailableError is raised)."""
        try:
            return self.mllm, None
        except ModelUnavailableError as error:
            if self.on_unavailable == "fail":
                raise
            logger.warning("%s: keeping the incoming order: %s", self.name, error)
            return None, str(error)

    @abstractmethod
    def rerank_with(self, model: VisionLanguageModel, queries: Sequence[Query], rankings: Sequence[Ranking],
                    collection: Collection) -> list[Ranking]:
        """Rerank with a loaded model; record scores and notes through ``Ranking.with_stage``."""

    def question(self, query: Query) -> str:
        """What the model is asked about: the query's text (InputError for an image-only query)."""
        text = query.search_text
        if text is None:
            label = f" {query.id!r}" if query.id else ""
            raise InputError(f"The {self.name!r} reranker asks the model about the query's text, but "
                             f"query{label} has none (an image-only query).")
        return text

    def picture(self, item: Item) -> PILImage.Image:
        """The candidate's picture as the model sees it (pages rendered at ``dpi``)."""
        return item_image(item, self.dpi)


def keep_order(ranking: Ranking, stage: str, note: str | None, seconds: float) -> Ranking:
    """The ranking unchanged, recorded as ``stage`` with ``note`` on every hit."""
    return ranking.with_stage(stage, [(hit, None, note) for hit in ranking.hits], seconds)
