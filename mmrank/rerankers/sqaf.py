"""SQUARE's first stage, SQAF (semantic query-augmented fusion): an MLLM writes a caption of the
image a composed query asks for, and the caption's text vector is fused into the query vector.

For each composed query (a reference image and a modification text) the model sees the reference
image and the request and answers one sentence describing the target image. The caption goes
through the text tower of the collection's image model (CLIP), is fused with the composed query
vector the first stage searched with (:func:`~mmrank.fusion.fuse_caption_vector`), and the gallery
is searched again. Captions are cached on disk, so re-running an evaluation asks the model nothing
(and does not even load it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mmrank.captions import CaptionCache, caption_key, default_caption_cache
from mmrank.encoders import encodes_text
from mmrank.errors import InputError, ModelUnavailableError
from mmrank.fusion import check_caption_fusion, fuse_caption_vector
from mmrank.mllm.base import check_generation_options
from mmrank.mllm.prompts import TARGET_CAPTION_PROMPT
from mmrank.rerankers.base import at_least_one, keep_order
from mmrank.rerankers.mllm_stage import MLLMReranker
from mmrank.retrieval import without_excluded
from mmrank.types import Hit, Placement

if TYPE_CHECKING:
    from mmrank.collection import Collection
    from mmrank.mllm import Conversation
    from mmrank.types import Query, Ranking

NOT_COMPOSED = "not a composed query (needs a reference image and a modification text); kept the incoming order"
EMPTY_CAPTION = "no caption (the model's answer was empty); kept the incoming order"


@dataclasses.dataclass(kw_only=True)
class CaptionFusionReranker(MLLMReranker):
    """Re-searches the image space with each composed query fused with its target caption.

    ``beta`` weighs the caption against the composed query (SQUARE: 0.5, to be tuned on a
    validation split); ``level`` is ``embedding`` (fuse the vectors) or ``score`` (sum the two
    cosine similarities): the same order, different scores. ``prompt`` is the instruction after
    the reference image, with ``{modification}``. ``cache``: True for the user cache file
    (``~/.cache/mmrank/captions.sqlite``), a path, or False to keep captions for this process only.
    ``batch_size``: captions per model call.

    The stage returns at least ``depth`` hits (and as many as it received); hits the first stage
    found that the new search did not return follow in their incoming order, with a note. Queries
    that are not composed, or whose caption is empty, keep their order. ``on_unavailable`` as in
    :class:`~mmrank.rerankers.mllm_stage.MLLMReranker`, per caption call: captions already written
    stay cached, and the queries whose caption could not be written keep their order with the note
    ``model unavailable: <reason>``. The caption is ``explanations[name][0]``, and the fused vector
    replaces ``query_vectors["image"]`` for the stages after this one.
    """

    name: str = "sqaf"
    depth: int = 100
    head_only: ClassVar[bool] = False  # its new search reorders the whole ranking
    beta: float = 0.5
    level: str = "embedding"
    prompt: str = TARGET_CAPTION_PROMPT
    max_new_tokens: int = 64
    temperature: float = 0.0
    cache: bool | str | Path = True
    batch_size: int = 16
    captions_cache: CaptionCache = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_caption_fusion(self.beta, self.level)
        if "{modification}" not in self.prompt:
            raise InputError(f"prompt must contain {{modification}}; got {self.prompt!r}.")
        check_generation_options(self.max_new_tokens, self.temperature)
        at_least_one("batch_size", self.batch_size)
        self.captions_cache = CaptionCache(default_caption_cache() if self.cache is True else self.cache or None)

    # ---------------------------------------------------------------- captions
    def caption_conversation(self, query: Query) -> Conversation:
        """The one user message: the reference image, then the prompt with the request."""
        return [{"role": "user", "content": [
            {"type": "image", "image": query.image},
            {"type": "text", "text": self.prompt.format(modification=request(query))}]}]

    def captions(self, queries: Sequence[Query]) -> list[str | None]:
        """Each composed query's target caption, from the cache or the model (loaded only when a
        caption is missing). None where the model could not write it (unavailable, or its call
        failed) and ``on_unavailable`` is ``keep-order``."""
        return [caption for caption, _ in self._captions(queries)]

    def _captions(self, queries: Sequence[Query]) -> list[tuple[str | None, str | None]]:
        """Each query's caption, or None and why the model could not write it."""
        keys = [self.cache_key(query) for query in queries]
        known: dict[str, str | None] = dict(self.captions_cache.get_many(list(dict.fromkeys(keys))))
        missing = {key: query for key, query in zip(keys, queries) if key not in known}
        failed: dict[str, str] = {}
        if missing:
            written, failed = self._ask(list(missing.items()))
            known.update(written)
        return [(known.get(key), failed.get(key)) for key in keys]

    def cache_key(self, query: Query) -> str:
        """The key of the query's caption in the cache: its reference image's content, the request,
        the model, the prompt and the decoding settings."""
        return caption_key(query.image, request(query), model=self.handle.identity, prompt=self.prompt,
                           max_new_tokens=self.max_new_tokens, temperature=self.temperature)

    def _ask(self, jobs: list[tuple[str, Query]]) -> tuple[dict[str, str], dict[str, str]]:
        """The captions the model wrote (cached as each call answers), and why the others could
        not be written: the model is unavailable, or their call failed (``on_unavailable``
        ``keep-order``; with ``fail`` the error is raised, the captions already written staying
        cached)."""
        model, problem = self.handle.available(self.name)
        if model is None:
            return {}, {key: problem for key, _ in jobs}
        written: dict[str, str] = {}
        failed: dict[str, str] = {}
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start:start + self.batch_size]
            try:
                generations = model.generate([self.caption_conversation(query) for _, query in chunk],
                                             max_new_tokens=self.max_new_tokens, temperature=self.temperature)
            except ModelUnavailableError as error:
                failed.update(dict.fromkeys((key for key, _ in chunk), self.handle.unavailable(error, self.name)))
                continue
            found = {key: clean_caption(generation.text) for (key, _), generation in zip(chunk, generations)}
            self.captions_cache.put_many(found)
            written.update(found)
        return written, failed

    # ---------------------------------------------------------------- reranking
    def rerank_batch(self, queries: Sequence[Query], rankings: Sequence[Ranking],
                     collection: Collection) -> list[Ranking]:
        """Caption, fuse and search again for every composed query (see the class docstring)."""
        composed = [i for i, query in enumerate(queries) if is_composed(query)]
        written = dict(zip(composed, self._captions([queries[i] for i in composed])))
        captions = {i: caption for i, (caption, _) in written.items()}
        usable = [i for i in composed if captions[i]]
        found: dict[int, tuple[list[tuple[str, float]], np.ndarray]] = {}
        if usable:
            found = dict(zip(usable, self._search(
                [queries[i] for i in usable], [rankings[i] for i in usable], [captions[i] for i in usable],
                collection)))
        items = collection.get_many({item_id for hits, _ in found.values() for item_id, _ in hits})
        results = []
        for i, ranking in enumerate(rankings):
            if i in found:
                results.append(self._apply(ranking, *found[i], captions[i], items))
            else:
                results.append(keep_order(ranking, self.name, _kept_note(written.get(i))))
        return results

    def _search(self, queries: Sequence[Query], rankings: Sequence[Ranking], captions: Sequence[str],
                collection: Collection) -> list[tuple[list[tuple[str, float]], np.ndarray]]:
        encoder = collection.encoder("image")
        if not encodes_text(encoder.name):
            raise InputError(f"The {self.name!r} stage encodes captions with the image model's text tower, "
                             f"but {encoder.name} has none: build the collection with a CLIP model.")
        missing = [q.id or str(n) for n, (q, r) in enumerate(zip(queries, rankings)) if "image" not in r.query_vectors]
        if missing:
            raise InputError(f"The {self.name!r} stage fuses the first stage's image query vector, but queries "
                             f"{missing[:5]} have none: the retriever's paths must include 'image'.")
        fused = fuse_caption_vector(np.stack([np.asarray(r.query_vectors["image"]) for r in rankings]),
                                    encoder.encode_texts(list(captions)), self.beta, self.level)
        length = max([self.depth, *(len(r) for r in rankings)])
        wider = length + max(len(q.excluded) for q in queries)
        hits = collection.search_vectors("image", fused, wider, encoder=encoder.name, among=[q.candidates for q in queries])
        return list(zip(without_excluded(queries, hits, length), fused))

    def _apply(self, ranking: Ranking, hits: list[tuple[str, float]], vector: np.ndarray, caption: str,
               items: Mapping[str, Any]) -> Ranking:
        known = {hit.item_id: hit for hit in ranking.hits}
        ordered = [Placement(known.get(item_id) or Hit(item=items[item_id], score=score), score)
                   for item_id, score in hits]
        returned = {item_id for item_id, _ in hits}
        ordered += [Placement(hit, None, "not returned by the caption-fused search; kept its incoming order")
                    for hit in ranking.hits if hit.item_id not in returned]
        result = ranking.with_stage(self.name, ordered, explanations=(caption,))
        return replace(result, query_vectors={**result.query_vectors, "image": vector})


def _kept_note(written: tuple[str | None, str | None] | None) -> str:
    """Why a query kept its order: not composed, no caption from the model, or an empty caption."""
    if written is None:
        return NOT_COMPOSED
    _, why = written
    return EMPTY_CAPTION if why is None else f"model unavailable: {why}"


def request(query: Query) -> str:
    """A composed query's modification text (its ``modification``, else its ``text``)."""
    return (query.modification or query.text or "").strip()


def is_composed(query: Query) -> bool:
    """A reference image and a modification text."""
    return query.image is not None and bool(request(query))


def clean_caption(text: str) -> str:
    """The model's first non-empty line, without surrounding quotes, a leading "Caption:" or
    unprintable characters."""
    printable = "".join(character for character in text if character.isprintable() or character == "\n")
    line = next((line.strip() for line in printable.splitlines() if line.strip()), "")
    if line.lower().startswith("caption:"):
        line = line[len("caption:"):].strip()
    return line.strip("\"'`“”").strip()
