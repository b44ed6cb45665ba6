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
    assert list(pipeline.retriever.paths) == ["text", "bm25"] and pipeline.retriever.fusion == "score"
    # BM25 counts double: measured on benchmarks/docqa_devset.json (see the file's comment).
    assert pipeline.retriever.weights == {"text": 0.5, "bm25": 1.0}
    assert Pipeline.from_yaml("images-clip", docs).retriever.paths == ["image"]


def test_fused_hits_record_each_path(docs):
    ranking = Pipeline.from_yaml("docqa-text", docs).search("How many strings does a violin have?", k=4)
    top = ranking[0]
    assert top.item.page == 4 and top.found_by == ("text", "bm25")
    assert top.stages["text"].rank == 1 and top.stages["bm25"].rank == 1
    # Score fusion: each path's scores min-max scaled to [0, 1], then weighted (text 0.5, BM25 1.0).
    assert top.score == pytest.approx(0.5 * 1.0 + 1.0 * 1.0)
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


def test_snippets_can_be_left_out_for_deep_rankings_nobody_reads(docs):
    pipeline = Pipeline(docs)
    with_text, without = (pipeline.search_batch(["cats sleep"], k=5, snippets=flag)[0] for flag in (True, False))
    assert with_text.ids == without.ids and [h.score for h in with_text] == [h.score for h in without]
    assert all(hit.snippet for hit in with_text) and all(hit.snippet is None for hit in without)


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


# ---------------------------------------------------------------- configs: to_config, to_yaml, overrides
from mmrank.config import read_yaml  # noqa: E402
from mmrank.pipeline import resolve_pipeline_path  # noqa: E402
from mmrank.resources import bundled_pipelines  # noqa: E402

BUNDLED = bundled_pipelines()


def differences(before: dict, after: dict, prefix: str = "") -> dict[str, tuple]:
    """``{dotted key: (before, after)}`` for every leaf option that differs between two configs."""
    found: dict[str, tuple] = {}
    if isinstance(before, dict) and isinstance(after, dict):
        for key in dict.fromkeys([*before, *after]):
            found.update(differences(before.get(key), after.get(key), f"{prefix}{key}."))
    elif isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for position, (one, other) in enumerate(zip(before, after)):
            found.update(differences(one, other, f"{prefix}{position}."))
    elif before != after:
        found[prefix.rstrip(".")] = (before, after)
    return found


def test_every_pipeline_file_is_bundled():
    assert BUNDLED == ["beir-dear", "beir-erank", "beir-first", "beir-insertrank", "beir-prorank",
                       "beir-qwen3-reranker", "beir-rebel", "beir-setwise", "cir-square", "docqa-colqwen",
                       "docqa-colqwen-ragllava", "docqa-mmr5", "docqa-ragllava", "docqa-text", "images-clip",
                       "landmarks-superglobal"]


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_pipeline_round_trips_through_its_config_and_yaml(name):
    import yaml

    pipeline = Pipeline.from_yaml(name, None)  # building does not touch the collection
    config = pipeline.to_config()
    assert list(config) == ["name", "description", "retriever", "rerankers"]
    assert Pipeline.from_config(config, None).to_config() == config
    assert Pipeline.from_config(yaml.safe_load(pipeline.to_yaml()), None).to_config() == config
    # config is made of plain YAML values only: it survives a dump and load unchanged
    assert yaml.safe_load(yaml.safe_dump(config)) == config


@pytest.mark.parametrize("name", BUNDLED)
def test_to_config_keeps_every_option_the_file_gives(name):
    written = read_yaml(resolve_pipeline_path(name))
    config = Pipeline.from_yaml(name, None).to_config()
    assert config["name"] == written["name"] == name
    assert config["description"] == written["description"]
    for option, value in written["retriever"].items():
        assert config["retriever"][option] == value, f"retriever.{option}"
    stages = written.get("rerankers") or []
    assert [stage["type"] for stage in config["rerankers"]] == [stage["type"] for stage in stages]
    for position, stage in enumerate(stages):
        for option, value in stage.items():
            assert config["rerankers"][position][option] == value, f"{position}.{option}"


@pytest.mark.parametrize(("name", "stage"), [("docqa-ragllava", "pointwise"), ("docqa-mmr5", "reasoning"),
                                             ("cir-square", "grid"), ("cir-square", "0")])
def test_overrides_change_exactly_the_options_they_name(name, stage):
    before = Pipeline.from_yaml(name, None).to_config()
    pipeline = Pipeline.from_yaml(name, None, overrides={"retriever.depth": 7, f"{stage}.depth": 3})
    after = pipeline.to_config()
    position = int(stage) if stage.isdigit() else [s["type"] for s in before["rerankers"]].index(stage)
    assert differences(before, after) == {"retriever.depth": (before["retriever"]["depth"], 7),
                                          f"rerankers.{position}.depth": (before["rerankers"][position]["depth"], 3)}
    assert pipeline.retriever.depth == 7 and pipeline.rerankers[position].depth == 3


@pytest.mark.parametrize(("overrides", "message"), [
    ({"retriever.deepness": 3}, "unknown retriever options ['deepness']"),
    ({"pointwise.deepness": 3}, "Bad options for reranker type 'pointwise'"),
    ({"reasoning.depth": 3}, "'reasoning' names no stage; stages: pointwise"),
    ({"depth": 3}, "override 'depth'"),
])
def test_a_bad_override_names_the_pipeline_file(overrides, message):
    with pytest.raises(InputError, match=re.escape(message)) as caught:
        Pipeline.from_yaml("docqa-ragllava", None, overrides=overrides)
    assert str(caught.value).startswith(f"{resolve_pipeline_path('docqa-ragllava')}:")


def test_to_yaml_writes_the_file_that_loads_back_the_same_pipeline(tmp_path):
    original = Pipeline.from_yaml("docqa-ragllava", None, overrides={"name": "mine", "pointwise.top_n": 2})
    path = tmp_path / "mine.yaml"
    text = original.to_yaml(path)
    assert path.read_text(encoding="utf-8") == text
    loaded = Pipeline.from_yaml(path, None)
    assert loaded.to_config() == original.to_config()
    assert loaded.name == "mine" and loaded.rerankers[0].top_n == 2


def test_a_round_tripped_pipeline_ranks_the_same(docs, tmp_path):
    original = Pipeline.from_yaml("docqa-text", docs)
    original.to_yaml(tmp_path / "copy.yaml")
    copies = [Pipeline.from_config(original.to_config(), docs), Pipeline.from_yaml(tmp_path / "copy.yaml", docs)]
    for question in ("How many strings does a violin have?", "espresso pressure", "what do rockets burn"):
        expected = original.search(question, k=4)
        assert len(expected.ids) == 4
        for copy in copies:
            ranking = copy.search(question, k=4)
            assert ranking.ids == expected.ids
            assert [hit.score for hit in ranking.hits] == [hit.score for hit in expected.hits]
