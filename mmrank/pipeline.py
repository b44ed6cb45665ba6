"""A pipeline: one first stage, then rerankers, over one collection; built in Python or from YAML,
and written back to YAML."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrank.collection import Collection
from mmrank.columns import ItemTable, RowOrder
from mmrank.config import apply_overrides, read_yaml, to_yaml
from mmrank.errors import InputError
from mmrank.rerankers import Reranker, create_reranker
from mmrank.resources import PIPELINES_DIR, bundled_pipelines
from mmrank.retrieval import STAGE, HybridRetriever
from mmrank.text import snippet
from mmrank.types import Query, Ranking

_KEYS = ("name", "description", "retriever", "rerankers")


@dataclass
class Pipeline:
    """Retrieve, then rerank: ``search(query, k)`` returns the final Ranking, every stage recorded
    with its score, rank, note and time per query."""

    collection: Collection
    retriever: HybridRetriever = field(default_factory=HybridRetriever)
    rerankers: Sequence[Reranker] = ()
    name: str = "pipeline"
    description: str = ""

    @classmethod
    def from_config(cls, config: Mapping[str, Any], collection: Collection, source: str = "config", *,
                    mllm: str | None = None, mllm_url: str | None = None,
                    trust_remote_code: bool = False) -> Pipeline:
        """Build from a mapping with ``retriever`` options and a ``rerankers`` list of ``{type, ...}``;
        ``mllm`` / ``mllm_url`` replace the model / server of every MLLM reranker.

        A config is untrusted input: it cannot turn on ``trust_remote_code`` (running Python code
        shipped with a model). Only this argument (``--trust-remote-code`` on the command line)
        does, for every MLLM reranker that loads its model locally.
        """
        if not isinstance(config, Mapping):
            raise InputError(f"{source}: a pipeline must be a mapping with 'retriever' and 'rerankers'.")
        unknown = set(config) - set(_KEYS)
        if unknown:
            raise InputError(f"{source}: unknown pipeline keys {sorted(unknown)}; allowed: {sorted(_KEYS)}.")
        if not trust_remote_code and _mentions(config, "trust_remote_code"):
            raise InputError(
                f"{source}: sets trust_remote_code, which runs Python code shipped with a model; a pipeline "
                "file cannot turn that on. If you trust the model, leave it out of the file and pass "
                "--trust-remote-code (mmrank search / eval) or trust_remote_code=True (Pipeline.from_yaml).")
        retriever_options = config.get("retriever") or {}
        stages = config.get("rerankers") or []
        if not isinstance(retriever_options, Mapping):
            raise InputError(f"{source}: 'retriever' must be a mapping of options, e.g. {{paths: [text, bm25]}}.")
        if not isinstance(stages, list):
            raise InputError(f"{source}: 'rerankers' must be a list of stages, e.g. [{{type: pointwise}}]; "
                             f"got {stages!r}.")
        allowed = {f.name for f in dataclasses.fields(HybridRetriever) if f.init}
        bad = set(retriever_options) - allowed
        if bad:
            raise InputError(f"{source}: unknown retriever options {sorted(bad)}; allowed: {sorted(allowed)}.")
        try:
            retriever = HybridRetriever(**retriever_options)
            rerankers = [create_reranker(options, mllm=mllm, mllm_url=mllm_url, trust_remote_code=trust_remote_code)
                         for options in stages]
        except InputError as error:
            raise InputError(f"{source}: {error}") from error
        return cls(collection, retriever, rerankers, name=str(config.get("name", Path(source).stem)),
                   description=str(config.get("description") or ""))

    @classmethod
    def from_yaml(cls, path: str | Path, collection: Collection, *, overrides: Mapping[str, Any] | None = None,
                  mllm: str | None = None, mllm_url: str | None = None,
                  trust_remote_code: bool = False) -> Pipeline:
        """Load a pipeline file; a bare name such as ``docqa-text`` means a bundled pipeline.

        ``overrides`` change options before the pipeline is built, by dotted keys:
        ``{"retriever.depth": 50, "pointwise.depth": 10}`` (a stage by its name or its position, see
        :func:`mmrank.config.apply_overrides`). ``mllm``, ``mllm_url`` and ``trust_remote_code`` as
        in :meth:`from_config`.
        """
        resolved = resolve_pipeline_path(path)
        config = read_yaml(resolved) or {}
        if overrides:
            if not isinstance(config, Mapping):
                raise InputError(f"{resolved}: a pipeline must be a mapping with 'retriever' and 'rerankers'.")
            config = apply_overrides(config, overrides, source=str(resolved))
        return cls.from_config(config, collection, source=str(resolved), mllm=mllm, mllm_url=mllm_url,
                               trust_remote_code=trust_remote_code)

    def to_config(self) -> dict[str, Any]:
        """The config that builds this pipeline again (:meth:`from_config`): every option of the
        retriever and of each reranker."""
        return {"name": self.name, "description": self.description, "retriever": self.retriever.to_config(),
                "rerankers": [reranker.to_config() for reranker in self.rerankers]}

    def to_yaml(self, path: str | Path | None = None) -> str:
        """:meth:`to_config` as YAML text, also written to ``path`` when given."""
        text = to_yaml(self.to_config())
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @property
    def depth(self) -> int:
        return max([self.retriever.depth, *(r.depth for r in self.rerankers)])

    def search(self, query: Query | str, k: int = 10) -> Ranking:
        """The top ``k`` hits for one query (a plain string is a text query)."""
        return self.search_batch([query], k)[0]

    def search_batch(self, queries: Sequence[Query | str], k: int = 10, *, snippets: bool = True) -> list[Ranking]:
        """The top ``k`` hits for each query; the first stage encodes and searches them together,
        and each reranker takes the whole batch. With ``snippets`` (the default), each hit with text
        carries the part that best matches the query; evaluation, which ranks deep and shows no
        text, turns them off."""
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}.")
        queries = [Query(text=q) if isinstance(q, str) else q for q in queries]
        rankings = self.retriever.retrieve_batch(queries, self.collection, max(k, self.depth))
        for reranker in self.rerankers:
            rankings = rerank_all(reranker, queries, rankings, self.collection)
        return [with_snippets(ranking.top(k)) if snippets else ranking.top(k) for ranking in rankings]


    def search_rows(self, queries: Sequence[Query | str], k: int, *, hits: int = 0) -> list[RankedRows]:
        """Each query's top ``k`` after every stage as arrays of item rows, for ranking deep
        (evaluation): the same orders :meth:`search_batch` gives, with Hit objects built only for
        the head the rerankers look at (the deepest reranker's ``depth``), or the first ``hits``
        when that is more. The tail stays the first stage's array, in its order. A reranker that
        may reorder past its depth (``head_only`` false or absent, e.g. ``sqaf``, which searches
        again) is given every hit, as in :meth:`search_batch`."""
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}.")
        queries = [Query(text=q) if isinstance(q, str) else q for q in queries]
        depth = max(k, self.depth)
        head = max([hits, *(r.depth for r in self.rerankers)])
        if not all(getattr(r, "head_only", False) for r in self.rerankers):
            head = None
        if hasattr(self.retriever, "retrieve_rows"):
            retrieved = self.retriever.retrieve_rows(queries, self.collection, depth)
            table = self.collection.item_table()
            items = self.collection.get_many({item_id for found in retrieved for item_id in found.ids(head)})
            rankings = [found.ranking(items, head) for found in retrieved]
            firsts = [found.rows for found in retrieved]
        else:  # a retriever of its own, with retrieve_batch only: its rankings as they come
            rankings = self.retriever.retrieve_batch(queries, self.collection, depth)
            table = (self.collection.item_table() if self.collection is not None
                     else ItemTable(dict.fromkeys(item_id for ranking in rankings for item_id in ranking.ids)))
            firsts = [table.rows(ranking.ids) for ranking in rankings]
        orders = [{next(iter(ranking.timings), STAGE): RowOrder.of(rows)} for ranking, rows in zip(rankings, firsts)]
        for reranker in self.rerankers:
            rankings = rerank_all(reranker, queries, rankings, self.collection)
            for order, ranking in zip(orders, rankings):
                order[reranker.name] = next(reversed(order.values())).reheaded(table.rows(ranking.ids))
        return [RankedRows(ranking.query, {stage: rows.cut(k) for stage, rows in order.items()}, ranking, table)
                for order, ranking in zip(orders, rankings)]


@dataclass(frozen=True)
class RankedRows:
    """One query's ranking after every stage as arrays (:meth:`Pipeline.search_rows`): ``orders``
    maps each stage, in order, to the item rows of ``table`` it left, best first (stages that
    reorder a head share the first stage's array for the rest); ``ranking`` is the final
    ranking's head as Hits, with every stage's timing."""

    query: Query
    orders: Mapping[str, RowOrder]
    ranking: Ranking
    table: ItemTable

    @property
    def timings(self) -> Mapping[str, float]:
        return self.ranking.timings

    def ids(self, stage: str | None = None, k: int | None = None) -> list[str]:
        """The first ``k`` item ids (all when None) in the order ``stage`` left (the last stage's
        by default)."""
        order = self.orders[stage] if stage is not None else next(reversed(self.orders.values()))
        return self.table.id_list(order.rows(k))


def rerank_all(reranker: Reranker, queries: Sequence[Query], rankings: Sequence[Ranking],
               collection: Collection) -> list[Ranking]:
    """One reranker over many rankings in one ``rerank_batch`` call; each ranking records the
    stage's time as its share of the call."""
    start = time.perf_counter()
    reranked = reranker.rerank_batch(queries, rankings, collection)
    seconds = (time.perf_counter() - start) / max(1, len(rankings))
    return [ranking.with_timing(reranker.name, seconds) for ranking in reranked]


def with_snippets(ranking: Ranking) -> Ranking:
    """The ranking with each hit that has text carrying its snippet: the part of its text that best
    matches the query (:func:`mmrank.text.snippet`)."""
    question = ranking.query.search_text
    if question is None:
        return ranking
    hits = tuple(dataclasses.replace(hit, snippet=snippet(hit.item.text, question)) if hit.item.has_text else hit
                 for hit in ranking.hits)
    return dataclasses.replace(ranking, hits=hits)


def _mentions(value: Any, key: str) -> bool:
    """Whether ``key`` is a key anywhere in a nested config."""
    if isinstance(value, Mapping):
        return key in value or any(_mentions(inner, key) for inner in value.values())
    if isinstance(value, (list, tuple)):
        return any(_mentions(inner, key) for inner in value)
    return False


def resolve_pipeline_path(path: str | Path) -> Path:
    """A YAML path as given, or the name of one of the bundled pipelines."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    bundled = PIPELINES_DIR / f"{candidate.name}.yaml"
    if candidate.suffix == "" and bundled.is_file():
        return bundled
    names = bundled_pipelines()
    raise InputError(f"{path}: no such pipeline file" + (f" (bundled: {', '.join(names)})." if names else "."))
