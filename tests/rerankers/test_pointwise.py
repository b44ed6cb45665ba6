"""Pointwise yes/no relevance reranking (RagLLaVA) on the tiny random-weight Qwen2-VL."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from mmrank.collection import Collection
from mmrank.errors import InputError, ModelUnavailableError
from mmrank.pipeline import Pipeline
from mmrank.rerankers import create_reranker
from mmrank.rerankers.pointwise import PointwiseReranker
from mmrank.retrieval import HybridRetriever
from mmrank.types import Hit, Item, Query, Ranking
from tests.paths import ASSETS

IMAGES = ASSETS / "images"
PLAIN = "Question: {q}\nIs this image relevant to the question? Answer '{yes}' or '{no}'."
CAPTIONED = ("Image Caption: {c}\nQuestion: {q}\nBased on the image and its caption, is the image relevant to "
             "the question? Answer 'Yes' or 'No'.")


def first_stage(collection: Collection, queries: list[str], k: int = 8) -> list[Ranking]:
    return Pipeline(collection, HybridRetriever(paths=["image"])).search_batch(queries, k=k)


def by_hand(source: str | None, text: str) -> list[dict]:
    """The conversation the spec prescribes: one user message, the image first, then the text."""
    content = [] if source is None else [{"type": "image", "image": source}]
    return [{"role": "user", "content": [*content, {"type": "text", "text": text}]}]


def hand_ranking(query: Query, items: list[Item]) -> Ranking:
    return Ranking(query, tuple(Hit(item, 1.0 - index / 10) for index, item in enumerate(items)))


def stage_scores(ranking: Ranking, name: str = "pointwise") -> dict[str, float | None]:
    return {hit.item_id: hit.stages[name].score for hit in ranking}


def test_scores_are_p_yes_of_the_spec_prompt_and_order_the_head(photos, tiny_mllm):
    [first] = first_stage(photos, ["a cat asleep on a sofa"])
    ranking = PointwiseReranker(model=tiny_mllm, depth=6).rerank(first.query, first, photos)
    head = first.hits[:6]
    prompt = PLAIN.format(q="a cat asleep on a sofa", yes="Yes", no="No")
    expected = tiny_mllm.choice_probability([by_hand(h.item.source, prompt) for h in head], ["Yes", "No"])[:, 0]
    assert len(set(np.round(expected, 6))) == 6  # distinct scores: the order below is meaningful
    scores = stage_scores(ranking)
    np.testing.assert_allclose([scores[h.item_id] for h in head], expected, atol=1e-6)
    assert ranking.ids[:6] == [head[i].item_id for i in np.argsort(-expected, kind="stable")]
    assert ranking.ids[:6] != first.ids[:6]
    assert [h.score for h in ranking.hits[:6]] == sorted(expected.tolist(), reverse=True)
    assert ranking.ids[6:] == first.ids[6:]  # after depth: incoming order, no score, rank recorded
    tail = [(h.stages["pointwise"].score, h.stages["pointwise"].rank) for h in ranking.hits[6:]]
    assert tail == [(None, 7), (None, 8)]
    assert ranking.stage_names == ["retrieve", "pointwise"]


def test_one_model_call_for_all_queries_and_batching_changes_nothing(photos, tiny_mllm):
    texts = ["a cat asleep on a sofa", "a rocket launch", "old coins on a table"]
    firsts = first_stage(photos, texts)
    queries = [ranking.query for ranking in firsts]
    stage = PointwiseReranker(model=tiny_mllm, depth=5)
    calls = tiny_mllm.usage.calls
    batched = stage.rerank_batch(queries, firsts, photos)
    assert tiny_mllm.usage.calls == calls + 1
    alone = [stage.rerank(query, first, photos) for query, first in zip(queries, firsts)]
    chunked_stage = PointwiseReranker(model=tiny_mllm, depth=5, batch_size=4)
    calls = tiny_mllm.usage.calls
    chunked = chunked_stage.rerank_batch(queries, firsts, photos)
    assert tiny_mllm.usage.calls == calls + 4  # 15 candidates, 4 per call
    for together, single, in_chunks in zip(batched, alone, chunked):
        assert together.ids == single.ids == in_chunks.ids
        for other in (single, in_chunks):
            np.testing.assert_allclose([h.score for h in together.hits[:5]], [h.score for h in other.hits[:5]],
                                       atol=1e-5)


def test_choice_words_set_the_answer_instruction_and_the_scores(photos, tiny_mllm):
    [first] = first_stage(photos, ["a rocket launch"], k=4)
    yes_no = PointwiseReranker(model=tiny_mllm, depth=4)
    true_false = create_reranker({"type": "pointwise", "depth": 4, "choices": ["True", "False"], "model": tiny_mllm})
    assert isinstance(true_false, PointwiseReranker)
    item = first.hits[0].item
    assert true_false.prompt("a rocket launch", item) == PLAIN.format(q="a rocket launch", yes="True", no="False")
    ranking = true_false.rerank(first.query, first, photos)
    prompt = PLAIN.format(q="a rocket launch", yes="True", no="False")
    expected = tiny_mllm.choice_probability([by_hand(h.item.source, prompt) for h in first], ["True", "False"])[:, 0]
    scores = stage_scores(ranking)
    np.testing.assert_allclose([scores[h.item_id] for h in first], expected, atol=1e-6)
    yes_scores = stage_scores(yes_no.rerank(first.query, first, photos))
    assert all(abs(scores[i] - yes_scores[i]) > 1e-3 for i in first.ids)


def test_captions_from_metadata_or_text_and_the_templates(tiny_mllm):
    cat, rocket = str(IMAGES / "cat.jpg"), str(IMAGES / "rocket.jpg")
    captioned = Item("a", "image", source=cat, metadata={"caption": "A grey   cat\nasleep. "})
    bare = Item("b", "image", source=rocket)
    page = Item("p", "page", source=rocket, text="word " * 200)
    passage = Item("t", "text", text="Espresso is brewed\nunder pressure.")
    question = "is there a cat?"
    auto = PointwiseReranker(model=tiny_mllm)
    assert auto.prompt(question, captioned) == CAPTIONED.format(c="A grey cat asleep.", q=question)
    assert auto.prompt(question, bare) == PLAIN.format(q=question, yes="Yes", no="No")
    assert auto.prompt(question, page) == PLAIN.format(q=question, yes="Yes", no="No")  # metadata has no caption
    from_text = PointwiseReranker(model=tiny_mllm, caption_field="text", caption_chars=23)
    assert from_text.prompt(question, page) == CAPTIONED.format(c="word word word word wor", q=question)
    assert PointwiseReranker(template="plain").prompt(question, captioned) == PLAIN.format(q=question, yes="Yes",
                                                                                           no="No")
    custom = PointwiseReranker(template="{caption} | {question} | {answer}", choices=["yes", "no"])
    assert custom.prompt(question, captioned) == "A grey cat asleep. | is there a cat? | Answer 'yes' or 'no'."
    assert auto.prompt(question, passage) == (
        "Passage: Espresso is brewed under pressure.\nQuestion: is there a cat?\n"
        "Is this passage relevant to the question? Answer 'Yes' or 'No'.")

    [message] = auto.candidate_conversation(question, captioned)
    image, text = message["content"]
    assert message["role"] == "user" and image["type"] == "image" and image["image"].size == (451, 300)
    assert text == {"type": "text", "text": CAPTIONED.format(c="A grey cat asleep.", q=question)}
    assert auto.candidate_conversation(question, passage) == by_hand(None, auto.prompt(question, passage))

    ranking = PointwiseReranker(model=tiny_mllm, template="caption").rerank(
        Query(text=question), hand_ranking(Query(text=question), [captioned, bare, passage]), None)
    expected = tiny_mllm.choice_probability(
        [by_hand(cat, CAPTIONED.format(c="A grey cat asleep.", q=question)),
         by_hand(rocket, PLAIN.format(q=question, yes="Yes", no="No")),
         by_hand(None, auto.prompt(question, passage))], ["Yes", "No"])[:, 0]
    scores = stage_scores(ranking)
    np.testing.assert_allclose([scores["a"], scores["b"], scores["t"]], expected, atol=1e-6)
    notes = {hit.item_id: hit.stages["pointwise"].note for hit in ranking}
    assert notes == {"a": None, "b": "no caption (item metadata 'caption' is empty); asked without one", "t": None}


def test_bad_options_and_a_query_without_text(tiny_mllm):
    with pytest.raises(InputError, match=r"template must be one of auto, caption, plain.*\['caption'\]"):
        PointwiseReranker(template="{caption} relevant?")
    with pytest.raises(InputError, match="not a valid format string"):
        PointwiseReranker(template="{question")
    with pytest.raises(InputError, match="at least two words"):
        PointwiseReranker(choices=["Yes"])
    with pytest.raises(InputError, match="quote them"):
        create_reranker({"type": "pointwise", "choices": [True, False]})
    with pytest.raises(InputError, match="threshold must be between 0 and 1"):
        PointwiseReranker(threshold=2)
    with pytest.raises(InputError, match="Bad options for reranker type 'pointwise'.*'dept'"):
        create_reranker({"type": "pointwise", "dept": 3})
    image_only = Query(image=str(IMAGES / "cat.jpg"), id="q7")
    with pytest.raises(InputError, match="'pointwise' reranker .* query 'q7' has none"):
        PointwiseReranker(model=tiny_mllm).rerank(image_only, hand_ranking(image_only, [Item("a", "image")]), None)


def test_an_unloadable_picture_keeps_its_place_after_the_scored_hits(tmp_path, tiny_mllm):
    items = [Item(name, "image", source=str(IMAGES / f"{name}.jpg")) for name in ("cat", "coins", "dahlia")]
    missing = Item("gone", "image", source=str(tmp_path / "gone.jpg"))
    query = Query(text="a flower")
    incoming = hand_ranking(query, [items[0], missing, items[1], items[2]])
    ranking = PointwiseReranker(model=tiny_mllm, depth=3).rerank(query, incoming, None)
    scores = stage_scores(ranking)
    assert ranking.ids[:3] == sorted(["cat", "coins"], key=lambda i: -scores[i]) + ["gone"]
    assert ranking.ids[3] == "dahlia" and scores["gone"] is None and scores["dahlia"] is None
    note = ranking.hits[2].stages["pointwise"].note
    assert "gone.jpg" in note and note.startswith("not scored: Cannot read image")


def test_top_n_and_threshold_shorten_the_ranking(photos, tiny_mllm):
    [first] = first_stage(photos, ["a cat asleep on a sofa"])
    full = PointwiseReranker(model=tiny_mllm, depth=6).rerank(first.query, first, photos)
    scores = [hit.stages["pointwise"].score for hit in full.hits[:6]]
    cut = scores[3]
    top_two = PointwiseReranker(model=tiny_mllm, depth=6, top_n=2).rerank(first.query, first, photos)
    assert top_two.ids == full.ids[:2]
    kept = PointwiseReranker(model=tiny_mllm, depth=6, threshold=cut).rerank(first.query, first, photos)
    assert kept.ids == full.ids[:4]  # hits after depth have no P(relevant): dropped too
    both = PointwiseReranker(model=tiny_mllm, depth=6, threshold=cut, top_n=3).rerank(first.query, first, photos)
    assert both.ids == full.ids[:3] and [h.stages["pointwise"].rank for h in both] == [1, 2, 3]


def test_missing_model_keeps_the_order_or_fails_naming_it(photos, tmp_path, caplog):
    [first] = first_stage(photos, ["a rocket launch"], k=5)
    folder = str(tmp_path / "no-such-model")
    with caplog.at_level(logging.WARNING, logger="mmrank"):
        kept = PointwiseReranker(model=folder, on_unavailable="keep-order").rerank(first.query, first, photos)
    assert kept.ids == first.ids
    assert all(h.stages["pointwise"].score is None and folder in h.stages["pointwise"].note for h in kept)
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "keeping the incoming order" in caplog.text
    with pytest.raises(ModelUnavailableError, match="no-such-model.*folder does not exist"):
        PointwiseReranker(model=folder, on_unavailable="fail").rerank(first.query, first, photos)
    assert PointwiseReranker(model=folder).rerank(first.query, first, photos).ids == first.ids  # the default


def test_docqa_ragllava_yaml_runs_end_to_end_on_the_sample_pdfs(docs, tiny_mllm_dir):
    pipeline = Pipeline.from_yaml("docqa-ragllava", docs, mllm=str(tiny_mllm_dir))
    [stage] = pipeline.rerankers
    assert list(pipeline.retriever.paths) == ["image", "text", "bm25"] and pipeline.retriever.depth == 50
    assert (stage.depth, stage.template, stage.caption_field, stage.choices) == (20, "auto", "text", ("Yes", "No"))
    question = "What was the operating margin in 2016?"
    ranking = pipeline.search(question, k=5)
    assert stage.handle.get().name == f"hf:{tiny_mllm_dir}"
    scores = [hit.stages["pointwise"].score for hit in ranking]
    assert len(ranking) == 5 and scores == sorted(scores, reverse=True) and None not in scores
    top = ranking[0].item
    caption = " ".join(top.text.split())[:600].rstrip()
    [expected] = stage.handle.get().choice_probability(
        [by_hand(stage.picture(top), CAPTIONED.format(c=caption, q=question))], ["Yes", "No"])[:, 0]
    assert scores[0] == pytest.approx(expected, abs=1e-5)
