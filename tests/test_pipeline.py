"""Pipelines from Python and YAML; the hybrid first stage's fusion and its path records."""

from __future__ import annotations

import re

import pytest

from mmrank.collection import Collection
from mmrank.errors import InputError
from mmrank.indexing import ItemEncoder, index_paths
from mmrank.pipeline import Pipeline
from mmrank.retrieval import HybridRetriever
from mmrank.types import Query
from tests.sample_files import make_pdf

PAGES = ["Cats sleep sixteen hours a day.", "Rockets burn liquid oxygen and kerosene.",
         "Espresso is brewed under nine bars of pressure.", "The violin has four strings tuned in fifths."]


@pytest.fixture(scope="module")
def docs(tmp_path_factory, minilm):
    root = tmp_path_factory.mktemp("docs")
    make_pdf(root / "in" / "doc.pdf", PAGES)
    collection = Collection.create(root / "c")
    index_paths(collection, [root / "in"], ItemEncoder(minilm))
    collection.use_encoder("text", minilm)
    yield collection
    collection.close()


def test_bundled_yaml_pipelines_load(docs):
    pipeline = Pipeline.from_yaml("docqa-text", docs)
    assert pipeline.name == "docqa-text"
    assert list(pipeline.retriever.paths) == ["text", "bm25"] and pipeline.retriever.fusion == "rrf"
    assert Pipeline.from_yaml("images-clip", docs).retriever.paths == ["image"]


def test_fused_hits_record_each_path(docs):
    ranking = Pipeline.from_yaml("docqa-text", docs).search("How many strings does a violin have?", k=4)
    top = ranking[0]
    assert top.item.page == 4 and top.found_by == ("text", "bm25")
    assert top.stages["text"].rank == 1 and top.stages["bm25"].rank == 1
    assert top.score == pytest.approx(2 / 61)  # RRF with k = 60, first on both paths
    assert list(ranking.timings) == ["retrieve"]
    assert ranking.order_after("retrieve") == ranking.ids


def test_single_path_keeps_its_own_scores(docs):
    ranking = Pipeline(docs, HybridRetriever(paths=["text"])).search("espresso pressure", k=2)
    assert ranking[0].item.page == 3
    assert ranking[0].score == pytest.approx(ranking[0].stages["text"].score)
    assert 0 < ranking[0].score <= 1


def test_score_fusion_and_weights(docs):
    retriever = HybridRetriever(fusion="score", weights={"text": 1.0, "bm25": 0.0})
    ranking = Pipeline(docs, retriever).search("kerosene rockets", k=4)
    assert ranking[0].item.page == 2 and ranking[0].score == pytest.approx(1.0)


def test_search_batch_matches_single_searches(docs):
    pipeline = Pipeline(docs)
    queries = ["cats", Query(text="violin")]
    assert [r.ids for r in pipeline.search_batch(queries, k=2)] == [pipeline.search(q, k=2).ids for q in queries]


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("retriever: {paths: [text, sparkles]}", "Unknown retrieval paths ['sparkles']"),
        ("retriever: {fusion: max}", "Unknown fusion method 'max'"),
        ("retriever: {deepness: 3}", "unknown retriever options ['deepness']"),
        ("rerankers: [{type: magic}]", "Unknown reranker type 'magic'"),
        ("colour: blue", "unknown pipeline keys ['colour']"),
        ("retriever: [unclosed", "not valid YAML"),
    ],
)
def test_bad_pipeline_files_are_named(tmp_path, docs, yaml_text, message):
    path = tmp_path / "p.yaml"
    path.write_text(yaml_text)
    with pytest.raises(InputError, match=re.escape(message)) as caught:
        Pipeline.from_yaml(path, docs)
    assert str(path) in str(caught.value)


def test_k_must_be_positive(docs):
    with pytest.raises(InputError, match="k must be at least 1"):
        Pipeline(docs).search("cats", k=0)


def test_candidates_restrict_every_path_to_the_given_items(docs):
    pipeline = Pipeline.from_yaml("docqa-text", docs)
    everything = pipeline.search("How many strings does a violin have?", k=4)
    allowed = frozenset(everything.ids[1:3])
    restricted = pipeline.search(Query(text="How many strings does a violin have?", candidates=allowed), k=4)
    assert set(restricted.ids) == allowed
    # Within the allowed items, the order is the unrestricted one.
    assert restricted.ids == [i for i in everything.ids if i in allowed]
