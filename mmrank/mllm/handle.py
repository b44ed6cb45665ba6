"""A handle on the vision-language model a stage asks: what to load, loaded on first use, and what to
do when it cannot be loaded or stops answering."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from mmrank.errors import InputError, ModelUnavailableError

if TYPE_CHECKING:
    from mmrank.mllm.base import VisionLanguageModel

OnUnavailable = Literal["fail", "keep-order"]
ON_UNAVAILABLE = ("fail", "keep-order")
logger = logging.getLogger("mmrank")


@dataclass(frozen=True)
class ModelHandle:
    """Which model to use, without loading it.

    ``model`` is a Hugging Face id or local folder (run locally with transformers; None means
    ``default``), or a ready :class:`~mmrank.mllm.VisionLanguageModel`; with ``url`` it is the model
    name an OpenAI-compatible server serves (None: the server's first model). ``options`` go to the
    backend (``device``, ``dtype``, ``max_pixels``, ...).

    ``on_unavailable`` says what a ModelUnavailableError (a model that cannot be loaded, a server
    that cannot be reached, answers an error after its retries or sends a malformed reply) does to
    the stage asking: ``keep-order`` (the default) logs a warning on the "mmrank" logger and lets the
    stage keep the incoming order of the rankings concerned, with a note ``model unavailable:
    <reason>`` on their hits (see :meth:`available` and :meth:`unavailable`), so that a long
    evaluation survives a server that blinked; ``fail`` raises the error.
    """

    model: str | VisionLanguageModel | None = None
    url: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    on_unavailable: OnUnavailable = "keep-order"
    default: str | None = None

    def __post_init__(self) -> None:
        if self.on_unavailable not in ON_UNAVAILABLE:
            raise InputError(f"on_unavailable must be 'fail' or 'keep-order', got {self.on_unavailable!r}.")

    @property
    def loaded(self) -> bool:
        """Whether ``model`` is a model object rather than a name."""
        return self.model is not None and not isinstance(self.model, str)

    @property
    def reference(self) -> str | None:
        """``model`` as a name: a ready model's source (its Hub id or folder) or its name."""
        if self.loaded:
            return getattr(self.model, "source", None) or self.model.name
        return self.model

    @property
    def model_name(self) -> str | None:
        """The model to load: ``model``, else ``default`` (unless a server chooses its own)."""
        if self.loaded:
            return None
        return self.model or (self.default if self.url is None else None)

    @property
    def identity(self) -> str:
        """What names the model (e.g. in cache keys), without loading it: the loaded model's name, or
        the server, the model and the options."""
        if self.loaded:
            return self.model.name
        from mmrank.mllm import DEFAULT_MLLM

        options = ",".join(f"{key}={self.options[key]!r}" for key in sorted(self.options))
        return f"{self.url or 'local'}|{self.model_name or DEFAULT_MLLM}|{options}"

    def get(self) -> VisionLanguageModel:
        """The model, loaded on first use and shared with every handle naming the same one in this
        process (ModelUnavailableError when it cannot be loaded)."""
        if self.loaded:
            return self.model
        from mmrank.mllm import shared_mllm

        return shared_mllm(self.model_name, url=self.url, **self.options)

    def available(self, asking: str = "stage") -> tuple[VisionLanguageModel | None, str | None]:
        """``(model, None)``; or, when it cannot be loaded and ``on_unavailable`` is ``keep-order``,
        ``(None, why)`` after a warning naming ``asking`` (with ``fail`` the error is raised)."""
        try:
            return self.get(), None
        except ModelUnavailableError as error:
            return None, self.unavailable(error, asking)

    def unavailable(self, error: ModelUnavailableError, asking: str = "stage") -> str:
        """Why the model failed ``asking`` (the error's message), after a warning naming
        ``asking``, when ``on_unavailable`` is ``keep-order``; with ``fail``, ``error`` is raised."""
        if self.on_unavailable == "fail":
            raise error
        logger.warning("%s: keeping the incoming order: %s", asking, error)
        return str(error)
