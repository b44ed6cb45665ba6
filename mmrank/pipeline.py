"""A pipeline: one first stage, then rerankers, over one collection; built in Python or from YAML."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrank.collection import Collection
from mmrank.errors import InputError
from mmrank.rerankers import Reranker, create_reranker
from mmrank.retrieval import HybridRetriever
from mmrank.types import Query, Ranking

PIPELINES_DIR = Path(__file__).resolve().parent.parent / "pipelines"
_KEYS = {"name", "description", "retriever", "rerankers"}


@dataclass
class Pipeline:
    """Retrieve, then rerank: ``search(query, k)`` returns the final Ranking, every stage recorded."""

    collection: Collection
    retriever: HybridRetriever = field(default_factory=HybridRetriever)
    rerankers: Sequence[Reranker] = ()
    name: str = "pipeline"

    @classmethod
    def from_config(cls, config: Mapping[str, Any], collection: Collection, source: str = "config", *,
                    mllm: str | None = None, mllm_url: str | None = None) -> Pipeline:
        """Build from a mapping with ``retriever`` options and a ``rerankers`` list of ``{type, ...}``;
        ``mllm`` / ``mllm_url`` replace the model / server of every MLLM reranker."""
        if not isinstance(config, Mapping):
            raise InputError(f"{source}: a pipeline must be a mapping with 'retriever' and 'rerankers'.")
        unknown = set(config) - _KEYS
        if unknown:
            raise InputError(f"{source}: unknown pipeline keys {sorted(unknown)}; allowed: {sorted(_KEYS)}.")
        retriever_options = config.get("retriever") or {}
        allowed = {f.name for f in dataclasses.fields(HybridRetriever) if f.init}
        bad = set(retriever_options) - allowed
        if bad:
            raise InputError(f"{source}: unknown retriever options {sorted(bad)}; allowed: {sorted(allowed)}.")
        try:
            retriever = HybridRetriever(**retriever_options)
            rerankers = [create_reranker(options, mllm=mllm, mllm_url=mllm_url)
                         for options in config.get("rerankers") or []]
        except InputError as error:
            raise InputError(f"{source}: {error}") from error
        return cls(collection, retriever, rerankers, name=str(config.get("name", Path(source).stem)))

    @classmethod
    def from_yaml(cls, path: str | Path, collection: Collection, *, mllm: str | None = None,
                  mllm_url: str | None = None) -> Pipeline:
        """Load a pipeline file; a bare name such as ``docqa-text`` means ``pipelines/docqa-text.yaml``.
        ``mllm`` / ``mllm_url`` as in :meth:`from_config`."""
        import yaml

        resolved = resolve_pipeline_path(path)
        try:
            config = yaml.safe_load(resolved.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise InputError(f"{resolved}: not valid YAML ({error}).") from error
        return cls.from_config(config or {}, collection, source=str(resolved), mllm=mllm, mllm_url=mllm_url)

    @property
    def depth(self) -> int:
        return max([self.retriever.depth, *(r.depth for r in self.rerankers)])

    def search(self, query: Query | str, k: int = 10) -> Ranking:
        """The top ``k`` hits for one query (a plain string is a text query)."""
        return self.search_batch([query], k)[0]

    def search_batch(self, queries: Sequence[Query | str], k: int = 10) -> list[Ranking]:
        """The top ``k`` hits for each query; the first stage encodes and searches them together."""
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}.")
        queries = [Query(text=q) if isinstance(q, str) else q for q in queries]
        rankings = self.retriever.retrieve_batch(queries, self.collection, max(k, self.depth))
        for reranker in self.rerankers:
            rankings = rerank_all(reranker, queries, rankings, self.collection)
        return [ranking.top(k) for ranking in rankings]


def rerank_all(reranker: Reranker, queries: Sequence[Query], rankings: Sequence[Ranking],
               collection: Collection) -> list[Ranking]:
    """One reranker over many rankings: in one call when it has ``rerank_batch``."""
    batched = getattr(reranker, "rerank_batch", None)
    if batched is not None:
        return batched(queries, rankings, collection)
    return [reranker.rerank(query, ranking, collection) for query, ranking in zip(queries, rankings)]


def resolve_pipeline_path(path: str | Path) -> Path:
    """A YAML path as given, or the name of one of the bundled pipelines."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    bundled = PIPELINES_DIR / f"{candidate.name}.yaml"
    if candidate.suffix == "" and bundled.is_file():
        return bundled
    names = sorted(p.stem for p in PIPELINES_DIR.glob("*.yaml")) if PIPELINES_DIR.is_dir() else []
    raise InputError(f"{path}: no such pipeline file" + (f" (bundled: {', '.join(names)})." if names else "."))
