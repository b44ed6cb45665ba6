"""Composed image retrieval with SQUARE: caption fusion (SQAF), its caption cache, and single-pass
grid reranking (EBR), with the tiny CLIP and the tiny Qwen2-VL, against hand computations and
direct calls to the same model."""

from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmrank.captions import CaptionCache, caption_key, image_digest
from mmrank.encoders.base import l2_normalize
from mmrank.errors import InputError, ModelUnavailableError
from mmrank.mllm.base import Generation
from mmrank.fusion import compose_query_vector, fuse_caption_vector
from mmrank.mllm.parsing import parse_json_ranking
from mmrank.mllm.prompts import GRID_ANSWER_PREFIX
from mmrank.pipeline import Pipeline
from mmrank.rerankers import create_reranker
from mmrank.rerankers.grid import GridReranker, read_answer
from mmrank.rerankers.sqaf import EMPTY_CAPTION, NOT_COMPOSED, CaptionFusionReranker, clean_caption
from mmrank.retrieval import HybridRetriever
from mmrank.types import Hit, Item, Query, Ranking
from tests.paths import IMAGES

CAT = IMAGES / "cat.jpg"
MISSING_MODEL = "/nonexistent/mllm-folder"


def composed(modification: str = "make it a dog", **options) -> Query:
    return Query(image=CAT, modification=modification, id="q1", **options)


def cat_id(collection) -> str:
    return next(item.id for item in collection.items() if item.source.endswith("cat.jpg"))


def first_stage(collection, query: Query, depth: int = 8) -> Ranking:
    return HybridRetriever(paths=["image"], depth=depth).retrieve(query, collection)


def gallery_order(collection, vector: np.ndarray, excluded=()) -> tuple[list[str], np.ndarray]:
    """Every gallery item by inner product with ``vector``, computed here from the stored vectors."""
    ids, vectors = collection.stored_vectors([item.id for item in collection.items()], "image")
    scores = vectors @ vector
    order = [i for i in np.argsort(-scores, kind="stable") if ids[i] not in excluded]
    return [ids[i] for i in order], scores[order]


# ------------------------------------------------------------------ fusion


def test_caption_fusion_by_hand_and_both_levels_rank_alike():
    rng = np.random.default_rng(0)
    query, caption = l2_normalize(rng.normal(size=16)), l2_normalize(rng.normal(size=16))
    gallery = l2_normalize(rng.normal(size=(50, 16)))
    embedding = fuse_caption_vector(query, caption, beta=0.3)
    expected = 0.7 * query + 0.3 * caption
    np.testing.assert_allclose(embedding, expected / np.linalg.norm(expected), rtol=1e-6)
    score = fuse_caption_vector(query, caption, beta=0.3, level="score")
    np.testing.assert_allclose(gallery @ score, 0.7 * gallery @ query + 0.3 * gallery @ caption, atol=1e-6)
    assert list(np.argsort(-(gallery @ embedding))) == list(np.argsort(-(gallery @ score)))
    with pytest.raises(InputError, match="beta must lie in"):
        fuse_caption_vector(query, caption, beta=1.5)
    with pytest.raises(InputError, match="level 'middle'"):
        fuse_caption_vector(query, caption, level="middle")


def test_composed_query_searches_the_fused_clip_vector(photos, tiny_clip):
    ranking = first_stage(photos, composed("make it red"))
    vector = compose_query_vector(tiny_clip.encode_images([CAT])[0], tiny_clip.encode_texts(["make it red"])[0], 0.8)
    ids, scores = gallery_order(photos, vector)
    assert ranking.ids == ids
    np.testing.assert_allclose([h.score for h in ranking], scores, atol=1e-5)


def test_excluded_ids_never_come_back(photos):
    everything = first_stage(photos, composed())
    reference = cat_id(photos)
    ranking = first_stage(photos, composed(excluded={reference}))
    assert reference not in ranking.ids and ranking.ids == [i for i in everything.ids if i != reference]


# ------------------------------------------------------------ caption cache


def test_caption_keys_cover_image_content_text_and_settings(tmp_path):
    copy = tmp_path / "copy.jpg"
    shutil.copy(CAT, copy)
    assert image_digest(copy) == image_digest(CAT) != image_digest(IMAGES / "coins.jpg")
    base = caption_key(CAT, "make it red", model="m", prompt="p")
    assert caption_key(copy, "make it red", model="m", prompt="p") == base
    for changed in (caption_key(CAT, "make it blue", model="m", prompt="p"),
                    caption_key(CAT, "make it red", model="other", prompt="p"),
                    caption_key(CAT, "make it red", model="m", prompt="q"),
                    caption_key(IMAGES / "coins.jpg", "make it red", model="m", prompt="p")):
        assert changed != base
    with pytest.raises(InputError, match="nope.jpg"):
        image_digest(tmp_path / "nope.jpg")


def test_caption_cache_persists_and_reports_a_corrupt_file(tmp_path):
    path = tmp_path / "sub" / "captions.sqlite"
    CaptionCache(path).put_many({"a": "a red car", "b": "a dog"})
    assert CaptionCache(path).get_many(["a", "b", "c"]) == {"a": "a red car", "b": "a dog"}
    assert CaptionCache(tmp_path / "absent.sqlite").get_many(["a"]) == {}
    assert not (tmp_path / "absent.sqlite").exists()
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(b"this is not a database" * 100)
    with pytest.raises(InputError, match="broken.sqlite"):
        CaptionCache(broken).get_many(["a"])


@pytest.mark.parametrize("raw, caption", [
    ("A red car on a beach.", "A red car on a beach."),
    ('\n  "A dog on grass."\nMore text', "A dog on grass."),
    ("Caption: a cat wearing a hat", "a cat wearing a hat"),
    ("   \n", ""),
    ("a red\x07 car\x00", "a red car"),
])
def test_clean_caption(raw, caption):
    assert clean_caption(raw) == caption


# ------------------------------------------------------------- SQAF stage


def test_sqaf_with_a_cached_caption_fuses_and_searches_without_loading_the_model(photos, tiny_clip, tmp_path):
    stage = CaptionFusionReranker(model=MISSING_MODEL, cache=tmp_path / "c.sqlite", beta=0.5, depth=8)
    reference = cat_id(photos)
    query = composed(excluded={reference})
    stage.captions_cache.put_many({stage.cache_key(query): "a photo of a rocket in the sky"})
    ranking = first_stage(photos, query)
    result = stage.rerank(query, ranking, photos)  # would fail if it tried to load MISSING_MODEL

    vector = l2_normalize(0.5 * ranking.query_vectors["image"]
                          + 0.5 * tiny_clip.encode_texts(["a photo of a rocket in the sky"])[0])
    ids, scores = gallery_order(photos, vector, excluded={reference})
    assert result.order_after("sqaf") == ids and reference not in result.ids
    np.testing.assert_allclose([h.stages["sqaf"].score for h in result], scores, atol=1e-5)
    assert result.order_after("retrieve") == ranking.ids  # the first stage's record survives
    assert result.explanations["sqaf"] == ("a photo of a rocket in the sky",)
    np.testing.assert_allclose(result.query_vectors["image"], vector, atol=1e-6)


def test_sqaf_asks_the_model_once_then_reads_the_cache(photos, tiny_mllm, tmp_path):
    query, ranking = composed(), first_stage(photos, composed())
    calls = tiny_mllm.usage.calls
    first = CaptionFusionReranker(model=tiny_mllm, cache=tmp_path / "c.sqlite", max_new_tokens=12)
    caption = first.captions([query])[0]
    assert tiny_mllm.usage.calls == calls + 1 and caption
    again = CaptionFusionReranker(model=tiny_mllm, cache=tmp_path / "c.sqlite", max_new_tokens=12)
    result = again.rerank(query, ranking, photos)
    assert tiny_mllm.usage.calls == calls + 1
    assert result.explanations["sqaf"] == (caption,)
    generated = tiny_mllm.generate([first.caption_conversation(query)], max_new_tokens=12)[0].text
    assert caption == clean_caption(generated)


def test_sqaf_keeps_the_order_of_queries_it_cannot_caption(photos, tmp_path):
    text_query = Query(text="a cat", id="t")
    ranking = first_stage(photos, text_query)
    stage = CaptionFusionReranker(model=MISSING_MODEL, cache=False)
    kept = stage.rerank(text_query, ranking, photos)
    assert kept.order_after("sqaf") == ranking.ids and all(h.stages["sqaf"].note == NOT_COMPOSED for h in kept)
    unavailable = CaptionFusionReranker(model=MISSING_MODEL, cache=False)  # keep-order, the default
    result = unavailable.rerank(composed(), first_stage(photos, composed()), photos)
    assert result.order_after("sqaf") == first_stage(photos, composed()).ids
    assert {h.stages["sqaf"].note for h in result} == {
        f"model unavailable: {unavailable.handle.available()[1]}"}
    assert MISSING_MODEL in result[0].stages["sqaf"].note
    with pytest.raises(ModelUnavailableError, match="not available"):
        CaptionFusionReranker(model=MISSING_MODEL, cache=False, on_unavailable="fail").rerank(
            composed(), ranking, photos)


class FlakyCaptioner:
    """A ready model that writes "a photo of a rocket" for every query, except in the calls numbered
    in ``failing`` (from 1), which raise ModelUnavailableError as a server gone away would."""

    name = "flaky-captioner"

    def __init__(self, failing=()) -> None:
        self.failing, self.calls, self.asked = set(failing), 0, 0

    def generate(self, conversations, **options):
        self.calls += 1
        if self.calls in self.failing:
            raise ModelUnavailableError("The MLLM server at http://gpu:8000/v1 answered 500 after 3 retries: 'oops'.")
        self.asked += len(conversations)
        return [Generation("Caption: a photo of a rocket", 0, 0) for _ in conversations]


def test_sqaf_keeps_captions_written_before_a_failure_and_the_order_of_the_rest(photos, tmp_path, caplog):
    queries = [composed("make it a dog"), composed("make it red"), composed("make it tiny")]
    rankings = [first_stage(photos, query) for query in queries]
    model = FlakyCaptioner(failing={2})
    stage = CaptionFusionReranker(model=model, cache=tmp_path / "c.sqlite", batch_size=1)
    with caplog.at_level("WARNING", logger="mmrank"):
        results = stage.rerank_batch(queries, rankings, photos)
    assert model.calls == 3 and model.asked == 2  # the third query was still asked
    assert [r.explanations.get("sqaf") for r in results] == [("a photo of a rocket",), None, ("a photo of a rocket",)]
    assert results[1].order_after("sqaf") == rankings[1].ids
    assert {h.stages["sqaf"].note for h in results[1]} == {
        "model unavailable: The MLLM server at http://gpu:8000/v1 answered 500 after 3 retries: 'oops'."}
    assert results[0].order_after("sqaf") != rankings[0].ids and results[0][0].stages["sqaf"].note is None
    assert "sqaf: keeping the incoming order: The MLLM server" in caplog.text
    cached = stage.captions_cache.get_many([stage.cache_key(query) for query in queries])
    assert set(cached) == {stage.cache_key(queries[0]), stage.cache_key(queries[2])}
    # Run again: only the missing caption is asked for.
    again = FlakyCaptioner()
    assert CaptionFusionReranker(model=again, cache=tmp_path / "c.sqlite").captions(queries) == (
        ["a photo of a rocket"] * 3)
    assert again.asked == 1


def test_sqaf_fails_on_a_failed_call_with_fail_after_caching_what_it_wrote(photos, tmp_path):
    queries = [composed("make it a dog"), composed("make it red")]
    stage = CaptionFusionReranker(model=FlakyCaptioner(failing={2}), cache=tmp_path / "c.sqlite", batch_size=1,
                                  on_unavailable="fail")
    with pytest.raises(ModelUnavailableError, match="answered 500"):
        stage.rerank_batch(queries, [first_stage(photos, query) for query in queries], photos)
    assert list(stage.captions_cache.get_many([stage.cache_key(query) for query in queries])) == [
        stage.cache_key(queries[0])]


def test_sqaf_notes_an_empty_caption(photos):
    class Silent:
        name = "silent"

        def generate(self, conversations, **options):
            return [Generation("  \n", 0, 0) for _ in conversations]

    query = composed()
    result = CaptionFusionReranker(model=Silent(), cache=False).rerank(query, first_stage(photos, query), photos)
    assert result.order_after("sqaf") == first_stage(photos, query).ids
    assert {h.stages["sqaf"].note for h in result} == {EMPTY_CAPTION}


def test_sqaf_options_are_checked():
    with pytest.raises(InputError, match="modification"):
        CaptionFusionReranker(prompt="Describe the image.")
    with pytest.raises(InputError, match="beta"):
        create_reranker({"type": "sqaf", "beta": 2})


# -------------------------------------------------------------- EBR stage


@pytest.mark.parametrize("shuffle", [False, True])
def test_grid_generate_applies_the_models_own_answer(photos, tiny_mllm, shuffle):
    query = composed()
    ranking = first_stage(photos, query)
    stage = GridReranker(model=tiny_mllm, depth=4, tile=112, shuffle=shuffle, seed=3, max_new_tokens=16)
    result = stage.rerank(query, ranking, photos)

    grid = result.pictures["grid"][0]
    assert grid.size == (2 * 112 + 3 * 8, 2 * 112 + 3 * 8)
    answer = tiny_mllm.generate([stage.grid_conversation(query, grid, 4)], max_new_tokens=16,
                                assistant_prefix=GRID_ANSWER_PREFIX)[0].text
    assert result.explanations["grid"] == (GRID_ANSWER_PREFIX + answer,)
    placement = stage.placement(query, 4)
    assert sorted(placement) == [0, 1, 2, 3] and (placement != [0, 1, 2, 3]) == shuffle
    given = [placement[i - 1] for i in parse_json_ranking(GRID_ANSWER_PREFIX + answer, 4).parsed_ids]
    expected_head = given + [p for p in range(4) if p not in given]
    assert result.ids[:4] == [ranking.ids[p] for p in expected_head]
    assert result.ids[4:] == ranking.ids[4:]
    assert [h.stages["grid"].score for h in result][:4] == [1.0, 0.5, 1 / 3, 0.25]


def test_grid_first_token_ranks_by_the_marks_probabilities(photos, tiny_mllm):
    query = composed()
    ranking = first_stage(photos, query)
    stage = GridReranker(model=tiny_mllm, depth=4, tile=112, mode="first-token")
    calls, passes = tiny_mllm.usage.calls, tiny_mllm.usage.forward_passes
    result = stage.rerank(query, ranking, photos)
    assert (tiny_mllm.usage.calls - calls, tiny_mllm.usage.forward_passes - passes) == (1, 1)
    conversation = stage.grid_conversation(query, result.pictures["grid"][0], 4)
    probabilities = tiny_mllm.choice_probability([conversation], ["1", "2", "3", "4"],
                                                 assistant_prefix=GRID_ANSWER_PREFIX)[0]
    expected = sorted(range(4), key=lambda tile: (-probabilities[tile], tile))
    assert result.ids[:4] == [ranking.ids[t] for t in expected]
    np.testing.assert_allclose([h.stages["grid"].score for h in result][:4], probabilities[expected], atol=1e-9)
    assert result.explanations["grid"][0].startswith("first-token probabilities: ")


def test_grid_leaves_out_a_candidate_whose_picture_is_missing(photos, tiny_mllm, tmp_path):
    items = [Item(id=f"i{n}", kind="image", source=str(IMAGES / name))
             for n, name in enumerate(["coins.jpg", "rocket.jpg", "dahlia.jpg"])]
    items.insert(1, Item(id="gone", kind="image", source=str(tmp_path / "gone.jpg")))
    query = composed()
    ranking = Ranking(query, tuple(Hit(item, 1.0 - n / 10) for n, item in enumerate(items)))
    result = GridReranker(model=tiny_mllm, depth=4, tile=112, mode="first-token").rerank(query, ranking, photos)
    assert result.ids[3] == "gone" and set(result.ids[:3]) == {"i0", "i1", "i2"}
    assert "left out of the grid" in result[3].stages["grid"].note and "gone.jpg" in result[3].stages["grid"].note
    assert result.pictures["grid"][0].size == (2 * 112 + 3 * 8,) * 2  # 3 tiles in a 2x2 grid


def test_grid_options_are_checked():
    with pytest.raises(InputError, match="mode must be one of"):
        GridReranker(mode="beam")
    with pytest.raises(InputError):
        GridReranker(tile=8)
    assert GridReranker(depth=9).tokens == 44


# ----------------------------------------------------------- end to end


def test_cir_square_pipeline_records_every_stage(photos, tiny_mllm_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pipeline = Pipeline.from_yaml("cir-square", photos, mllm=str(tiny_mllm_dir))
    reference = cat_id(photos)
    ranking = pipeline.search(composed(excluded={reference}), k=5)
    assert list(ranking.timings) == ["retrieve", "sqaf", "grid"]
    assert len(ranking) == 5 and reference not in ranking.ids
    assert ranking.pictures["grid"][0].size == (3 * 336 + 4 * 8,) * 2  # 7 candidates, a 3x3 grid
    assert len(ranking.explanations["sqaf"]) == 1
    with sqlite3.connect(tmp_path / "cache" / "mmrank" / "captions.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM captions").fetchone()[0] == 1


def test_cli_composed_search_with_report(photos, tiny_mllm_dir, tmp_path, monkeypatch, run_cli):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    report = tmp_path / "out.html"
    code, out, err = run_cli("search", photos.path, "--image", CAT, "--text", "make it a dog", "-k", "8",
                             "--pipeline", "cir-square", "--mllm", tiny_mllm_dir, "--report", report)
    assert code == 0, err
    assert "\nsqaf: " in out and '\ngrid: {"ranking": [' in out
    page = report.read_text()
    assert "make it a dog" in page and page.count("data:image") == 1 + 1 + 7  # reference, grid, the 7 other photos
    assert "cat.jpg</td>" not in page  # the reference is no answer to a composed query
    code, _, err = run_cli("search", photos.path, "a cat", "--text", "a dog")
    assert code == 2 and "once" in err


def test_eval_cirr_reports_clip_fusion_sqaf_and_ebr(tmp_path, tiny_clip_dir, tiny_mllm_dir, monkeypatch, run_cli):
    import json

    from tests.datasets.test_cir import write_cirr

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pipeline = tmp_path / "cir.yaml"
    pipeline.write_text("retriever: {paths: [image], depth: 20}\n"
                        "rerankers: [{type: sqaf, max_new_tokens: 12}, {type: grid, depth: 4, tile: 112}]\n")
    args = ("eval", write_cirr(tmp_path / "CIRR"), "--format", "cirr", "--pipeline", pipeline, "--mllm",
            tiny_mllm_dir, "--image-model", f"local-dir:{tiny_clip_dir}", "--device", "cpu", "--json")
    code, out, err = run_cli(*args)
    assert code == 0, err
    stages = json.loads(out)["stages"]
    assert [s["stage"] for s in stages] == ["retrieve", "sqaf", "grid"]
    assert all(s["metrics"]["queries"] == 2 and "subset/recall@1" in s["metrics"] for s in stages)
    with sqlite3.connect(tmp_path / "cache" / "mmrank" / "captions.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM captions").fetchone()[0] == 2
    code, again, err = run_cli(*args)  # every caption from the cache: the same metrics
    assert code == 0, err
    assert [s["metrics"] for s in json.loads(again)["stages"]][:2] == [s["metrics"] for s in stages][:2]


def test_eval_report_shows_every_stage(tmp_path, tiny_clip_dir, tiny_mllm_dir, monkeypatch, run_cli):
    from tests.datasets.test_cir import write_cirr

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pipeline = tmp_path / "cir.yaml"
    pipeline.write_text("retriever: {paths: [image], depth: 20}\n"
                        "rerankers: [{type: grid, depth: 4, tile: 112, mode: first-token}]\n")
    report = tmp_path / "eval.html"
    code, out, err = run_cli("eval", write_cirr(tmp_path / "CIRR"), "--format", "cirr", "--pipeline", pipeline,
                             "--mllm", tiny_mllm_dir, "--image-model", f"local-dir:{tiny_clip_dir}",
                             "--device", "cpu", "--report", report, "--report-queries", "1")
    assert code == 0, err
    page = report.read_text()
    assert page.count("<h2") == 1 and "make it blue" in page and "first-token probabilities" in page


@settings(max_examples=300, deadline=None)
@given(count=st.integers(1, 16), text=st.text(alphabet=st.sampled_from(list('0123456789[]{},: "rankig\n')), max_size=60))
def test_any_grid_answer_reads_as_distinct_tiles_in_range(count, text):
    tiles, note = read_answer(text, count)
    assert len(set(tiles)) == len(tiles) and all(0 <= tile < count for tile in tiles)
    assert (note is None) == (len(tiles) == count)


@given(order=st.permutations(list(range(1, 10))), noise=st.sampled_from(["", "Sure! ", "```json\n"]))
def test_a_full_json_ranking_is_read_exactly(order, noise):
    tiles, note = read_answer(f'{noise}{{"ranking": {order}}}', 9)
    assert tiles == [i - 1 for i in order] and note is None


def test_grid_conversations_for_composed_and_text_queries():
    from PIL import Image

    stage, grid = GridReranker(depth=9), Image.new("RGB", (64, 64))
    [composed_message] = stage.grid_conversation(composed("make it red"), grid, 9)
    kinds = [part["type"] for part in composed_message["content"]]
    assert kinds == ["text", "image", "text", "image", "text"]
    assert composed_message["content"][1]["image"] == CAT and composed_message["content"][3]["image"] is grid
    instruction = composed_message["content"][4]["text"]
    assert '"make it red"' in instruction and "numbered 1 to 9" in instruction and '{"ranking": [3, 1, ...]}' in instruction
    [text_message] = stage.grid_conversation(Query(text="a red car"), grid, 4)
    assert [part["type"] for part in text_message["content"]] == ["image", "text"]
    assert '"a red car"' in text_message["content"][1]["text"]
    with pytest.raises(InputError, match="image-only"):
        stage.grid_conversation(Query(image=CAT), grid, 4)
