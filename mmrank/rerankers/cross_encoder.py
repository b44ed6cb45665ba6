"""Cross-encoder reranking: the query and a candidate's text read together by one transformer that
outputs a relevance score ("Passage Re-ranking with BERT", Nogueira and Cho, 2019), run through
sentence-transformers' ``CrossEncoder`` (any of its models: a Hugging Face id or a local folder).

A text longer than the model's window is split into overlapping passages of words
(:func:`split_passages`, the same way for every candidate), each passage is scored with the query,
and the candidate's score is its best passage's ("MaxP", Dai and Callan, "Deeper Text Understanding
for IR with Contextual Neural Language Modeling", SIGIR 2019). The score is what
``CrossEncoder.predict`` returns, the model's own activation applied to its one logit: for the
ms-marco cross-encoders (whose config names the identity) a raw logit, unbounded; for a model whose
config names no activation, sentence-transformers applies a sigmoid, so a probability in (0, 1).
A passage longer than the model's window after tokenization is cut there (the tokenizer truncates).

A candidate without text (an image, a page without a text layer) is not scored: it keeps its
relative place after the scored ones, with a note saying so.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmrank.errors import InputError, ModelUnavailableError, hugging_face_cache
from mmrank.mllm.handle import ON_UNAVAILABLE, OnUnavailable
from mmrank.rerankers.base import BaseReranker, HeadPlace, at_least_one, keep_order, query_text, reorder_head
from mmrank.text import check_passage_split, split_passages

if TYPE_CHECKING:
    from mmrank.collection import Collection
    from mmrank.types import Query, Ranking

DEFAULT_CROSS_ENCODER = "cross-encoder/ms-marco-MiniLM-L6-v2"
DEFAULT_ORGANIZATION = "cross-encoder"  # what sentence-transformers puts before a bare CrossEncoder name
NO_TEXT_NOTE = "not scored: the item has no text; kept its place after the scored hits"
logger = logging.getLogger("mmrank")


def resolve_cross_encoder(model: str) -> str:
    """The canonical form of a cross-encoder reference: a local folder as its absolute path, a bare
    hub name as ``cross-encoder/<name>`` (as sentence-transformers reads it), else unchanged."""
    from mmrank.encoders.text import resolve_model_id

    return resolve_model_id(model, DEFAULT_ORGANIZATION)


@dataclasses.dataclass(kw_only=True)
class CrossEncoderReranker(BaseReranker):
    """Reorders the top ``depth`` hits by a cross-encoder's score of (query text, item text).

    ``model``: a sentence-transformers CrossEncoder, as a Hugging Face id (a bare name means
    ``cross-encoder/<name>``) or a local folder (what ``CrossEncoder.save_pretrained`` writes); the
    default, cross-encoder/ms-marco-MiniLM-L6-v2, is downloaded into the Hugging Face cache on first
    use. It must give one score per pair (``num_labels=1``). The model is loaded on first use, once
    per stage, on ``device`` (``auto``: CUDA when torch sees a GPU, else the CPU).
    ``max_words`` / ``overlap``: the passage split (see :func:`split_passages`); the defaults, 200
    words sharing 50, fit a 512-token window with the query. ``batch_size``: (query, passage) pairs
    per forward pass, the candidates of all queries together.
    ``on_unavailable``: when the model cannot be loaded, ``keep-order`` (the default) leaves every
    ranking as it came, with a warning on the "mmrank" logger and the note ``model unavailable:
    <reason>`` on every hit (this stage does not try to load it again); ``fail`` raises
    ModelUnavailableError.
    """

    name: str = "cross-encoder"
    depth: int = 20
    model: str = DEFAULT_CROSS_ENCODER
    batch_size: int = 32
    max_words: int = 200
    overlap: int = 50
    device: str | None = "auto"
    on_unavailable: OnUnavailable = "keep-order"
    _model: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)
    _problem: ModelUnavailableError | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.model, Path):
            self.model = str(self.model)
        if not isinstance(self.model, str) or not self.model.strip():
            raise InputError(f"model must be a cross-encoder's Hugging Face id or folder, e.g. "
                             f"{DEFAULT_CROSS_ENCODER}; got {self.model!r}.")
        at_least_one("batch_size", self.batch_size)
        check_passage_split(self.max_words, self.overlap)
        if self.on_unavailable not in ON_UNAVAILABLE:
            raise InputError(f"on_unavailable must be 'fail' or 'keep-order', got {self.on_unavailable!r}.")

    @property
    def model_id(self) -> str:
        """The model as it is loaded: an absolute folder, or a Hugging Face id."""
        return resolve_cross_encoder(self.model)

    # ------------------------------------------------------------------- model
    def cross_encoder(self) -> Any:
        """The sentence-transformers CrossEncoder, loaded on first use and kept; ModelUnavailableError
        when it cannot be loaded (then again on every later call, without trying again)."""
        if self._model is None:
            if self._problem is not None:
                raise self._problem
            try:
                self._model = self._load()
            except ModelUnavailableError as error:
                self._problem = error
                raise
        return self._model

    def _load(self) -> Any:
        from sentence_transformers import CrossEncoder

        from mmrank.encoders.base import resolve_device
        from mmrank.encoders.text import loading_bar

        model_id = self.model_id
        try:
            with loading_bar(False):
                model = CrossEncoder(model_id, device=resolve_device(self.device))
        except (OSError, ValueError) as error:
            raise self._unavailable(model_id, error) from error
        labels = getattr(model, "num_labels", None) or model.config.num_labels
        if labels != 1:
            raise ModelUnavailableError(
                f"cross-encoder model {model_id!r} gives {labels} scores per pair; the {self.name!r} stage needs "
                "a model with one relevance score per pair (num_labels=1), such as "
                f"{DEFAULT_CROSS_ENCODER}.")
        return model

    def _unavailable(self, model_id: str, error: Exception) -> ModelUnavailableError:
        folder = Path(model_id).expanduser()
        if folder.is_absolute() or model_id.startswith((".", "~")) or model_id.count("/") > 1:
            where = f"the folder {folder}" + ("" if folder.exists() else " (it does not exist)")
        else:
            where = hugging_face_cache(hub=True)
        reason = " ".join(str(error).split()).rstrip(".")  # one line: it becomes every hit's note
        return ModelUnavailableError(
            f"cross-encoder model {model_id!r} is not available: {reason}. Looked in {where}. "
            "To use it offline: load it once on a machine with network access (this fills the Hugging Face "
            "cache; copy the cache over and set HF_HUB_OFFLINE=1), or save it with "
            "CrossEncoder(name).save_pretrained('/path/to/folder') and pass that folder as the model.")

    # --------------------------------------------------------------- reranking
    def query_text(self, query: Query) -> str:
        """What the model reads with each passage: the query's text (InputError for an image-only query)."""
        return query_text(query, self.name, "reranker reads the query's text with each candidate's text",
                          "; use it with text queries")

    def rerank_batch(self, queries: Sequence[Query], rankings: Sequence[Ranking],
                     collection: Collection) -> list[Ranking]:
        """Score the passages of the top ``depth`` hits of every ranking, ``batch_size`` pairs per
        forward pass, and order each head by its hits' best passage scores (ties in incoming order)."""
        texts = [self.query_text(query) for query in queries]
        pairs: list[tuple[str, str]] = []
        owners: list[tuple[int, int]] = []  # (row, position) of each pair's hit
        for row, ranking in enumerate(rankings):
            for position, hit in enumerate(ranking.hits[:self.depth]):
                for passage in split_passages(hit.item.text or "", self.max_words, self.overlap):
                    pairs.append((texts[row], passage))
                    owners.append((row, position))
        best: list[dict[int, float]] = [{} for _ in rankings]
        if pairs:
            try:
                model = self.cross_encoder()
            except ModelUnavailableError as error:
                if self.on_unavailable == "fail":
                    raise
                logger.warning("%s: keeping the incoming order: %s", self.name, error)
                return [keep_order(ranking, self.name, f"model unavailable: {error}") for ranking in rankings]
            for (row, position), score in zip(owners, self._scores(model, pairs)):
                best[row][position] = max(score, best[row].get(position, score))
        return [self._apply(ranking, scores) for ranking, scores in zip(rankings, best)]

    def _scores(self, model: Any, pairs: list[tuple[str, str]]) -> Iterator[float]:
        """The model's score of every pair, ``batch_size`` pairs per forward pass."""
        for begin in range(0, len(pairs), self.batch_size):
            chunk = pairs[begin:begin + self.batch_size]
            scores = model.predict(chunk, batch_size=self.batch_size, show_progress_bar=False, convert_to_numpy=True)
            yield from (float(score) for score in scores.reshape(len(chunk)))

    def _apply(self, ranking: Ranking, scores: dict[int, float]) -> Ranking:
        """Scored head by best passage score (ties in incoming order), the head without text, then the rest."""
        size = min(self.depth, len(ranking.hits))
        scored = sorted((HeadPlace(position, scores[position]) for position in range(size) if position in scores),
                        key=lambda place: -place.score)
        unscored = [HeadPlace(position, None, NO_TEXT_NOTE) for position in range(size) if position not in scores]
        return ranking.with_stage(self.name, reorder_head(ranking, scored + unscored, self.depth))
