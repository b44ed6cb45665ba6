"""Cross-encoder reranking (best passage score per candidate) on a tiny random-weight BERT
cross-encoder, checked against sentence-transformers' own ``CrossEncoder.predict``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from mmrank.errors import InputError, ModelUnavailableError
from mmrank.pipeline import Pipeline
from mmrank.rerankers import create_reranker
from mmrank.rerankers.cross_encoder import (
    DEFAULT_CROSS_ENCODER,
    NO_TEXT_NOTE,
    CrossEncoderReranker,
    resolve_cross_encoder,
)
from mmrank.text import split_passages
from mmrank.types import Hit, Item, Query, Ranking, StageScore
from tests.rerankers.conftest import TINY_WORDS, build_tiny_cross_encoder
from tests.paths import ASSETS

STAGE = "cross-encoder"


def words(count: int, offset: int = 0) -> str:
    """``count`` words of the tiny model's vocabulary, from ``offset`` on (cycling)."""
    return " ".join(TINY_WORDS[(offset + index) % len(TINY_WORDS)] for index in range(count))


def hand_ranking(query: Query, items: list[Item]) -> Ranking:
    """The items in this order, scored 1.0, 0.9, ... by a ``retrieve`` stage."""
    hits = tuple(Hit(item, 1.0 - index / 10, stages={"retrieve": StageScore(1.0 - index / 10, index + 1)})
                 for index, item in enumerate(items))
    return Ranking(query, hits, timings={"retrieve": 0.01})


def text_items(count: int, length: int = 6, kind: str = "text") -> list[Item]:
    return [Item(f"t{index}", kind, text=words(length, offset=3 * index)) for index in range(count)]


def stage_scores(ranking: Ranking) -> dict[str, float | None]:
    return {hit.item_id: hit.stages[STAGE].score for hit in ranking}


def best_passage_scores(model, question: str, items: list[Item], max_words: int, overlap: int) -> np.ndarray:
    """What the stage should give each item: ``model.predict`` on (question, passage), max per item."""
    passages = [split_passages(item.text, max_words, overlap) for item in items]
    scores = model.predict([(question, passage) for item_passages in passages for passage in item_passages])
    bounds = np.cumsum([0] + [len(item_passages) for item_passages in passages])
    return np.array([scores[begin:end].max() for begin, end in zip(bounds[:-1], bounds[1:])])


class FixedScores:
    """A stand-in for sentence-transformers' CrossEncoder: each pair scored from ``table`` by its
    passage (0.0 when absent); every instance and every ``predict`` call's pairs are recorded."""

    table: dict[str, float] = {}
    instances: list[FixedScores] = []

    def __init__(self, model: str, device: str | None = None, **options) -> None:
        self.model, self.device, self.calls, self.num_labels = model, device, [], 1
        self.instances.append(self)

    def predict(self, pairs, batch_size=32, show_progress_bar=None, convert_to_numpy=True):
        self.calls.append(list(pairs))
        return np.array([self.table.get(passage, 0.0) for _, passage in pairs], dtype=np.float32)


@pytest.fixture
def fixed_scores(monkeypatch) -> dict[str, float]:
    """The stage loads :class:`FixedScores` instead of a real model; fill the returned table."""
    import sentence_transformers

    monkeypatch.setattr(FixedScores, "table", {})
    monkeypatch.setattr(FixedScores, "instances", [])
    monkeypatch.setattr(sentence_transformers, "CrossEncoder", FixedScores)
    return FixedScores.table


# ------------------------------------------------------------------- the fixture
def test_the_tiny_cross_encoder_loads_offline_and_is_reproducible(tiny_cross_encoder_dir, tiny_cross_encoder,
                                                                    tmp_path):
    from sentence_transformers import CrossEncoder

    files = {path.name for path in tiny_cross_encoder_dir.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"} <= files
    model = tiny_cross_encoder
    assert model.num_labels == 1 and model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
    assert type(model.activation_fn).__name__ == "Identity"  # raw logits, as the ms-marco models give
    assert model.tokenizer.tokenize("Operating margin 16") == ["operating", "margin", "1", "##6"]
    pairs = [("what is the revenue", words(12)), ("a red flower", words(12, 5)), ("the moon", "a cat on a sofa")]
    scores = model.predict(pairs)
    assert scores.shape == (3,) and len(set(np.round(scores, 4))) == 3
    again = CrossEncoder(str(build_tiny_cross_encoder(tmp_path / "same", seed=0)), device="cpu")
    np.testing.assert_allclose(again.predict(pairs), scores, atol=1e-6)
    other = CrossEncoder(str(build_tiny_cross_encoder(tmp_path / "other", seed=1)), device="cpu")
    assert np.abs(other.predict(pairs) - scores).max() > 1e-3


# -------------------------------------------------------------------- scoring
def test_scores_are_the_best_passage_score_of_a_direct_predict(tiny_cross_encoder_dir, tiny_cross_encoder):
    question = "what was the operating margin of the year"
    long_page = Item("long", "page", source="report.pdf", page=3, text=words(20, offset=7))  # 3 passages of 8
    items = [*text_items(4), long_page, Item("two", "text", text=words(12, offset=20))]
    query = Query(text=question)
    incoming = hand_ranking(query, items)
    stage = CrossEncoderReranker(model=str(tiny_cross_encoder_dir), max_words=8, overlap=2, device="cpu")
    ranking = stage.rerank(query, incoming, None)

    passages = split_passages(long_page.text, 8, 2)
    assert len(passages) == 3
    by_passage = tiny_cross_encoder.predict([(question, passage) for passage in passages])
    assert len(set(np.round(by_passage, 4))) == 3
    scores = stage_scores(ranking)
    assert scores["long"] == pytest.approx(float(by_passage.max()), abs=1e-5)  # the best of its 3 passages

    expected = best_passage_scores(tiny_cross_encoder, question, items, 8, 2)
    assert len(set(np.round(expected, 4))) == len(items)  # distinct scores: the order below is meaningful
    np.testing.assert_allclose([scores[item.id] for item in items], expected, atol=1e-5)
    assert ranking.ids == [items[index].id for index in np.argsort(-expected, kind="stable")]
    assert ranking.ids != incoming.ids
    assert [hit.score for hit in ranking] == sorted(scores.values(), reverse=True)  # the stage score is the hit's
    assert [hit.stages[STAGE].rank for hit in ranking] == list(range(1, len(items) + 1))
    assert all(hit.stages[STAGE].note is None for hit in ranking)
    assert ranking.stage_names == ["retrieve", STAGE] and ranking.timings[STAGE] > 0
    assert ranking.order_after("retrieve") == incoming.ids


def test_only_the_head_is_reranked_and_the_tail_keeps_its_order(tiny_cross_encoder_dir, tiny_cross_encoder):
    query = Query(text="a red flower in the garden")
    items = text_items(7)
    incoming = hand_ranking(query, items)
    ranking = CrossEncoderReranker(model=str(tiny_cross_encoder_dir), depth=4, device="cpu").rerank(
        query, incoming, None)
    expected = best_passage_scores(tiny_cross_encoder, query.text, items[:4], 200, 50)
    assert ranking.ids[:4] == [items[index].id for index in np.argsort(-expected, kind="stable")]
    assert ranking.ids[4:] == ["t4", "t5", "t6"]
    tail = [(hit.score, hit.stages[STAGE].score, hit.stages[STAGE].rank, hit.stages[STAGE].note)
            for hit in ranking.hits[4:]]
    assert tail == [(incoming[position].score, None, position + 1, None) for position in (4, 5, 6)]


def test_ties_keep_the_incoming_order(fixed_scores):
    fixed_scores.update({"b": 2.0, "c": 5.0, "d": 2.0, "f": 2.0, "g": 9.0})
    items = [Item(name, "text", text=name) for name in "abcdefg"]  # a and e score 0.0
    query = Query(text="q")
    ranking = CrossEncoderReranker(model="tie-model", depth=6).rerank(query, hand_ranking(query, items), None)
    assert ranking.ids == ["c", "b", "d", "f", "a", "e", "g"]  # g is after depth: not scored, not moved
    assert [hit.stages[STAGE].score for hit in ranking] == [5.0, 2.0, 2.0, 2.0, 0.0, 0.0, None]


def test_items_without_text_keep_their_place_after_the_scored_ones(tiny_cross_encoder_dir, tiny_cross_encoder):
    photo = Item("photo", "image", source=str(ASSETS / "images" / "cat.jpg"))
    blank_page = Item("blank", "page", source="scan.pdf", page=1, text="  \n ")
    scored = text_items(3)
    items = [photo, scored[0], blank_page, scored[1], scored[2], Item("after", "image")]
    query = Query(text="a cat on a sofa", image=str(ASSETS / "images" / "cat.jpg"))  # text and picture
    ranking = CrossEncoderReranker(model=str(tiny_cross_encoder_dir), depth=5, device="cpu").rerank(
        query, hand_ranking(query, items), None)
    expected = best_passage_scores(tiny_cross_encoder, "a cat on a sofa", scored, 200, 50)
    assert ranking.ids == [scored[index].id for index in np.argsort(-expected, kind="stable")] + [
        "photo", "blank", "after"]
    notes = {hit.item_id: hit.stages[STAGE].note for hit in ranking}
    assert notes == {"t0": None, "t1": None, "t2": None, "photo": NO_TEXT_NOTE, "blank": NO_TEXT_NOTE,
                     "after": None}
    assert "no text" in NO_TEXT_NOTE and "after the scored hits" in NO_TEXT_NOTE
    assert stage_scores(ranking)["photo"] is None and ranking[3].score == 1.0  # keeps its earlier score


def test_a_head_without_any_text_does_not_load_the_model(fixed_scores):
    items = [Item("a", "image"), Item("b", "page", text="")]
    query = Query(text="q")
    ranking = CrossEncoderReranker(model="never-loaded").rerank(query, hand_ranking(query, items), None)
    assert ranking.ids == ["a", "b"] and FixedScores.instances == []
    assert [hit.stages[STAGE].note for hit in ranking] == [NO_TEXT_NOTE, NO_TEXT_NOTE]


def test_an_image_only_query_is_an_input_error_naming_the_stage(tiny_cross_encoder_dir):
    image_only = Query(image=str(ASSETS / "images" / "cat.jpg"), id="q7")
    stage = CrossEncoderReranker(model=str(tiny_cross_encoder_dir), name="ce", device="cpu")
    with pytest.raises(InputError, match=r"The 'ce' reranker reads the query's text .* query 'q7' has none "
                                         r"\(an image-only query\)"):
        stage.rerank(image_only, hand_ranking(image_only, text_items(2)), None)
    composed = Query(image=str(ASSETS / "images" / "cat.jpg"), modification="make it red")
    assert stage.query_text(composed) == "make it red"  # a composed query's text is its modification


# ------------------------------------------------------------ batching and loading
def test_batch_size_sets_the_pairs_per_pass_and_changes_no_score(tiny_cross_encoder_dir):
    questions = ["what is the revenue", "a red flower", "how many coins on the table"]
    queries = [Query(text=question, id=f"q{row}") for row, question in enumerate(questions)]
    pages = [Item(f"p{index}", "page", page=index + 1, text=words(5 + 4 * index, offset=index)) for index in range(5)]
    rankings = [hand_ranking(query, pages[row:] + pages[:row]) for row, query in enumerate(queries)]
    small = CrossEncoderReranker(model=str(tiny_cross_encoder_dir), batch_size=2, max_words=6, overlap=2,
                                 device="cpu")
    large = CrossEncoderReranker(model=str(tiny_cross_encoder_dir), batch_size=1000, max_words=6, overlap=2,
                                 device="cpu")
    model = small.cross_encoder()
    sizes = []
    predict = model.predict
    model.predict = lambda pairs, **options: sizes.append(len(pairs)) or predict(pairs, **options)
    in_twos = small.rerank_batch(queries, rankings, None)
    at_once = large.rerank_batch(queries, rankings, None)
    pairs_per_query = sum(len(split_passages(page.text, 6, 2)) for page in pages)
    assert sizes == [2] * (3 * pairs_per_query // 2) + [1] * (3 * pairs_per_query % 2)  # all queries together
    alone = [large.rerank(query, ranking, None) for query, ranking in zip(queries, rankings)]
    for two, once, single in zip(in_twos, at_once, alone):
        assert two.ids == once.ids == single.ids
        for other in (once, single):
            np.testing.assert_allclose([hit.score for hit in two], [hit.score for hit in other], atol=1e-5)
    assert len({tuple(ranking.ids) for ranking in at_once}) == 3  # the queries are ranked differently


def test_the_model_is_loaded_lazily_and_once_per_stage(fixed_scores):
    fixed_scores.update({"x": 1.0})
    stage = create_reranker({"type": "cross-encoder", "model": "some-model", "device": "cpu"})
    assert FixedScores.instances == []  # building the stage loads nothing
    query = Query(text="q")
    ranking = hand_ranking(query, [Item("a", "text", text="y"), Item("b", "text", text="x")])
    assert stage.rerank(query, ranking, None).ids == ["b", "a"]
    stage.rerank_batch([query, query], [ranking, ranking], None)
    [model] = FixedScores.instances
    assert (model.model, model.device) == ("cross-encoder/some-model", "cpu")
    assert [len(call) for call in model.calls] == [2, 4]  # one pass per call here: batch_size 32
    create_reranker(stage.to_config()).rerank(query, ranking, None)
    assert len(FixedScores.instances) == 2  # another stage loads its own


def test_a_model_with_several_outputs_is_refused(fixed_scores, monkeypatch):
    monkeypatch.setattr(FixedScores, "__init__", lambda self, *args, **options: setattr(self, "num_labels", 3))
    query = Query(text="q")
    ranking = hand_ranking(query, text_items(2))
    with pytest.raises(ModelUnavailableError, match=r"gives 3 scores per pair.*num_labels=1"):
        CrossEncoderReranker(model="nli", on_unavailable="fail").rerank(query, ranking, None)


def test_a_missing_model_keeps_the_order_or_fails_naming_where_it_looked(tmp_path, caplog):
    folder = str(tmp_path / "no-such-model")
    query = Query(text="what is the revenue")
    incoming = hand_ranking(query, text_items(5))
    stage = CrossEncoderReranker(model=folder, depth=3, device="cpu")
    assert stage.on_unavailable == "keep-order"  # the default
    with caplog.at_level(logging.WARNING, logger="mmrank"):
        kept = stage.rerank(query, incoming, None)
    assert kept.ids == incoming.ids and [hit.score for hit in kept] == [hit.score for hit in incoming]
    notes = [hit.stages[STAGE].note for hit in kept]
    assert all(note.startswith("model unavailable: cross-encoder model") and folder in note for note in notes)
    assert len(notes) == 5  # every hit, after depth too
    assert [record.levelname for record in caplog.records] == ["WARNING"]
    assert "cross-encoder: keeping the incoming order" in caplog.text
    assert stage.rerank_batch([query], [incoming], None)[0].ids == incoming.ids  # remembered, not retried

    with pytest.raises(ModelUnavailableError) as error:
        CrossEncoderReranker(model=folder, on_unavailable="fail", device="cpu").rerank(query, incoming, None)
    message = str(error.value)
    assert f"Looked in the folder {folder} (it does not exist)" in message
    assert "To use it offline" in message and "save_pretrained" in message and "HF_HUB_OFFLINE=1" in message


def test_a_hub_model_missing_offline_says_where_it_looked():
    stage = CrossEncoderReranker(model="not-a-cached-cross-encoder", on_unavailable="fail", device="cpu")
    assert stage.model_id == "cross-encoder/not-a-cached-cross-encoder"
    query = Query(text="q")
    with pytest.raises(ModelUnavailableError, match=r"'cross-encoder/not-a-cached-cross-encoder' is not available.*"
                                                    r"Looked in the Hugging Face cache .* with HF_HUB_OFFLINE=1"):
        stage.rerank(query, hand_ranking(query, text_items(1)), None)


def test_model_references_resolve_like_sentence_transformers(tiny_cross_encoder_dir, tmp_path, monkeypatch):
    assert resolve_cross_encoder("ms-marco-MiniLM-L6-v2") == DEFAULT_CROSS_ENCODER
    assert resolve_cross_encoder("BAAI/bge-reranker-base") == "BAAI/bge-reranker-base"
    assert resolve_cross_encoder(str(tiny_cross_encoder_dir)) == str(tiny_cross_encoder_dir.resolve())
    monkeypatch.chdir(tiny_cross_encoder_dir.parent)
    assert resolve_cross_encoder(tiny_cross_encoder_dir.name) == str(tiny_cross_encoder_dir.resolve())


# ------------------------------------------------------------------ config
def test_create_reranker_builds_it_and_the_config_round_trips(tiny_cross_encoder_dir):
    default = create_reranker({"type": "cross-encoder"})
    assert isinstance(default, CrossEncoderReranker)
    assert default.to_config() == {"type": "cross-encoder", "name": "cross-encoder", "depth": 20,
                                   "model": DEFAULT_CROSS_ENCODER, "batch_size": 32, "max_words": 200,
                                   "overlap": 50, "device": "auto", "on_unavailable": "keep-order"}
    config = {"type": "cross-encoder", "model": str(tiny_cross_encoder_dir), "depth": 7, "name": "ce",
              "batch_size": 4, "max_words": 100, "overlap": 10, "device": "cpu", "on_unavailable": "fail"}
    stage = create_reranker(config)
    assert stage.to_config() == config
    assert create_reranker(stage.to_config()).to_config() == config
    query = Query(text="what is the revenue")
    ranking = stage.rerank(query, hand_ranking(query, text_items(3)), None)
    assert ranking.stage_names == ["retrieve", "ce"] and None not in [hit.stages["ce"].score for hit in ranking]


@pytest.mark.parametrize(("options", "message"), [
    ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
    ({"depth": 0}, "depth must be at least 1, got 0"),
    ({"max_words": 10, "overlap": 10}, r"overlap must be at least 0 and less than max_words \(10\)"),
    ({"on_unavailable": "ignore"}, "on_unavailable must be 'fail' or 'keep-order', got 'ignore'"),
    ({"model": ""}, "model must be a cross-encoder's Hugging Face id or folder"),
    ({"modle": "x"}, r"Bad options for reranker type 'cross-encoder'.*'modle'"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(InputError, match=message):
        create_reranker({"type": "cross-encoder", **options})


# ------------------------------------------------------------- end to end
def test_a_pipeline_reranks_pdf_pages_by_their_best_passage(docs, tiny_cross_encoder_dir, tiny_cross_encoder):
    config = {"retriever": {"paths": ["text", "bm25"]},
              "rerankers": [{"type": "cross-encoder", "model": str(tiny_cross_encoder_dir), "depth": 6,
                             "max_words": 60, "overlap": 15, "device": "cpu"}]}
    pipeline = Pipeline.from_config(config, docs)
    question = "What was the operating margin in 2016?"
    ranking = pipeline.search(question, k=8)
    head = [hit for hit in ranking.hits if hit.stages["cross-encoder"].score is not None]
    assert 0 < len(head) <= 6
    assert any(len(split_passages(hit.item.text, 60, 15)) > 1 for hit in head)  # pages longer than a passage
    expected = best_passage_scores(tiny_cross_encoder, question, [hit.item for hit in head], 60, 15)
    np.testing.assert_allclose([hit.stages["cross-encoder"].score for hit in head], expected, atol=1e-5)
    assert list(expected) == sorted(expected, reverse=True)
    assert ranking.stage_names == ["retrieve", "cross-encoder"]


def test_the_stage_reads_a_model_folder_given_as_a_path(tiny_cross_encoder_dir: Path):
    stage = CrossEncoderReranker(model=tiny_cross_encoder_dir, device="cpu")  # a Path is kept as its text
    assert stage.model == str(tiny_cross_encoder_dir) and stage.to_config()["model"] == str(tiny_cross_encoder_dir)
    assert stage.model_id == str(tiny_cross_encoder_dir.resolve())
    model = stage.cross_encoder()
    assert stage.cross_encoder() is model and model.num_labels == 1
