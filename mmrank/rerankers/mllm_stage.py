"""What the rerankers that ask a vision-language model share: the options naming the model, the
:class:`~mmrank.mllm.handle.ModelHandle` built from them, and (for those that show the model the
candidates) the candidates' pictures."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from mmrank.documents import DEFAULT_DPI
from mmrank.config import dataclass_options
from mmrank.errors import InputError
from mmrank.images import item_image
from mmrank.mllm.handle import ModelHandle, OnUnavailable
from mmrank.rerankers.base import BaseReranker, at_least_one, keep_order

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from mmrank.mllm import VisionLanguageModel
    from mmrank.types import Item, Query, Ranking


@dataclasses.dataclass(kw_only=True)
class MLLMReranker(BaseReranker):
    """A stage that asks a vision-language model.

    ``model`` is a Hugging Face id or local folder (default Qwen/Qwen2.5-VL-3B-Instruct), or a
    ready :class:`~mmrank.mllm.VisionLanguageModel`; ``url`` points at an OpenAI-compatible server
    instead; ``model_options`` go to the backend (``device``, ``dtype``, ``max_pixels``, ...).
    Stages naming the same model share one loaded instance. With ``on_unavailable="keep-order"``
    a model that cannot be loaded leaves the ranking as it came, with a warning and a note on
    every hit, instead of failing the query. ``handle`` is the model, loaded on first use.
    """

    uses_mllm: ClassVar[bool] = True
    default_model: ClassVar[str | None] = None  # None: the backend's default
    default_model_options: ClassVar[Mapping[str, Any]] = {}

    model: str | VisionLanguageModel | None = None
    url: str | None = None
    model_options: Mapping[str, Any] | None = None
    on_unavailable: OnUnavailable = "fail"
    handle: ModelHandle = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        options = self.default_model_options if self.model_options is None else self.model_options
        self.handle = ModelHandle(self.model, self.url, dict(options), self.on_unavailable, self.default_model)

    def options(self) -> dict[str, Any]:
        """The constructor options; a ready model is written as the name it was loaded from."""
        return dataclass_options(self, model=self.handle.reference)

    def model_or_fallback(self, rankings: Sequence[Ranking]) -> tuple[VisionLanguageModel | None, list[Ranking]]:
        """``(model, [])``; or, when the model is unavailable and ``on_unavailable`` is
        ``keep-order``, ``(None, the rankings unchanged with a note on every hit)``."""
        model, problem = self.handle.available(self.name)
        if model is not None:
            return model, []
        return None, [keep_order(ranking, self.name, f"model unavailable: {problem}") for ranking in rankings]

    def question(self, query: Query) -> str:
        """What the model is asked about: the query's text (InputError for an image-only query)."""
        text = query.search_text
        if text is None:
            label = f" {query.id!r}" if query.id else ""
            raise InputError(f"The {self.name!r} reranker asks the model about the query's text, but "
                             f"query{label} has none (an image-only query).")
        return text


@dataclasses.dataclass(kw_only=True)
class PictureMLLMReranker(MLLMReranker):
    """An MLLM stage that shows the model the candidates' pictures (pages rendered at ``dpi``)."""

    dpi: int = DEFAULT_DPI

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least_one("dpi", self.dpi)

    def picture(self, item: Item) -> PILImage.Image:
        """The candidate's picture as the model sees it."""
        return item_image(item, self.dpi)
