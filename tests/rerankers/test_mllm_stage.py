"""What the MLLM stages share (pointwise, reasoning, grid, SQAF): the model handle built from their
options, the stage defaults, keeping the order when the model is unavailable (at load or during a
call), the question they ask, the config they write for a ready model, and the pictures they show."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from mmrank.documents import DEFAULT_DPI
from mmrank.errors import InputError, ModelReplyError, ModelUnavailableError
from mmrank.mllm.base import Generation, Usage
from mmrank.mllm.handle import ModelHandle
from mmrank.rerankers import create_reranker
from mmrank.rerankers.grid import GridReranker
from mmrank.rerankers.pointwise import PointwiseReranker
from mmrank.rerankers.reasoning import ReasoningReranker
from mmrank.rerankers.sqaf import CaptionFusionReranker
from mmrank.types import Hit, Item, Query, Ranking, StageScore
from tests.paths import ASSETS, IMAGES

STAGES = [PointwiseReranker, ReasoningReranker, GridReranker, CaptionFusionReranker]
PICTURE_STAGES = [PointwiseReranker, ReasoningReranker, GridReranker]
PDF = ASSETS / "pdfs" / "brightwater_annual_report_2017.pdf"
MMR5_PIXELS = {"max_pixels": 1003520}  # 1280 * 28 * 28


def stage(cls: type, **options):
    """A stage of ``cls``; SQAF keeps its captions in memory (no cache file)."""
    return cls(**options, cache=False) if cls is CaptionFusionReranker else cls(**options)


def hand_ranking(text: str, ids: str) -> Ranking:
    hits = tuple(Hit(Item(i, "text", text=f"passage {i}"), 1.0 - n / 10,
                     stages={"retrieve": StageScore(1.0 - n / 10, n + 1)}) for n, i in enumerate(ids))
    return Ranking(Query(text=text), hits, timings={"retrieve": 0.02})


# ---------------------------------------------------------------------- handles
@pytest.mark.parametrize("cls", STAGES)
def test_the_handle_is_built_from_the_options(cls: type) -> None:
    options = {"max_pixels": 200_704, "device": "cpu"}
    reranker = stage(cls, model="org/model", url="http://h:1/v1", model_options=options, on_unavailable="keep-order")
    assert reranker.handle == ModelHandle("org/model", "http://h:1/v1", options, "keep-order", cls.default_model)
    options["device"] = "cuda"  # the handle holds a copy
    assert reranker.handle.options == {"max_pixels": 200_704, "device": "cpu"}
    assert reranker.model_options is options  # the option itself is kept as given


@pytest.mark.parametrize("cls", [PointwiseReranker, GridReranker, CaptionFusionReranker])
def test_stages_without_their_own_default_use_the_backends(cls: type) -> None:
    reranker = stage(cls)
    assert reranker.handle == ModelHandle(None, None, {}, "keep-order", None)
    assert reranker.handle.model_name is None
    assert reranker.handle.identity == "local|Qwen/Qwen2.5-VL-3B-Instruct|"


def test_reasoning_defaults_to_mm_r5_with_its_page_size() -> None:
    local = ReasoningReranker()
    assert (local.handle.model, local.handle.default, local.handle.model_name) == (None, "i2vec/MM-R5", "i2vec/MM-R5")
    assert local.handle.options == MMR5_PIXELS and local.model_options is None
    assert local.handle.identity == "local|i2vec/MM-R5|max_pixels=1003520"
    served = ReasoningReranker(url="http://h:1/v1")
    assert served.handle.model_name is None and served.handle.options == MMR5_PIXELS  # the server's model
    named = ReasoningReranker(model="org/other", url="http://h:1/v1")
    assert named.handle.model_name == "org/other"
    own = ReasoningReranker(model_options={"device": "cpu"})
    assert own.handle.options == {"device": "cpu"}  # given options replace the default, not add to it
    assert ReasoningReranker(model_options={}).handle.options == {}
    assert ReasoningReranker.default_model_options == MMR5_PIXELS  # not changed by the stages above
    assert ReasoningReranker().to_config()["model_options"] is None  # the default is not written out


@pytest.mark.parametrize("cls", STAGES)
def test_on_unavailable_must_be_fail_or_keep_order(cls: type) -> None:
    with pytest.raises(InputError, match="on_unavailable must be 'fail' or 'keep-order', got 'skip'"):
        stage(cls, on_unavailable="skip")
    assert stage(cls, on_unavailable="fail").handle.on_unavailable == "fail"
    assert stage(cls).on_unavailable == stage(cls).handle.on_unavailable == "keep-order"  # the default


# ----------------------------------------------------------- an unavailable model
@pytest.mark.parametrize("cls", [PointwiseReranker, CaptionFusionReranker])
@pytest.mark.parametrize("options", [{}, {"on_unavailable": "keep-order"}])
def test_a_folder_that_is_not_a_model_keeps_the_order(cls: type, options: dict, tmp_path: Path, caplog) -> None:
    reranker = stage(cls, model=str(tmp_path), **options)
    rankings = [hand_ranking("first", "abc"), hand_ranking("second", "de")]
    calls = reranker.model_calls(rankings)
    assert calls.model is None and set(calls.lost) == {0, 1}
    assert not calls.ask([0], lambda model: pytest.fail("asked a model that is not there"))
    kept = calls.results(lambda row: pytest.fail("no ranking is reranked"))
    assert len(kept) == 2
    for incoming, result in zip(rankings, kept):
        assert result.ids == incoming.ids and [h.score for h in result] == [h.score for h in incoming]
        assert result.stage_names == ["retrieve", reranker.name]
        records = [hit.stages[reranker.name] for hit in result]
        assert [(r.score, r.rank) for r in records] == [(None, rank) for rank in range(1, len(incoming) + 1)]
        assert all(r.note.startswith("model unavailable: Vision-language model ") for r in records)
        assert all(str(tmp_path) in r.note for r in records)
        assert len({r.note for r in records}) == 1
    assert f"{reranker.name}: keeping the incoming order" in caplog.text


@pytest.mark.parametrize("cls", [PointwiseReranker, CaptionFusionReranker])
def test_a_folder_that_is_not_a_model_fails(cls: type, tmp_path: Path) -> None:
    reranker = stage(cls, model=str(tmp_path), on_unavailable="fail")
    with pytest.raises(ModelUnavailableError, match=f"is not available.*{tmp_path.name}"):
        reranker.model_calls([hand_ranking("first", "abc")])


def test_an_available_model_is_asked_and_nothing_is_lost(tiny_mllm) -> None:
    rankings = [hand_ranking("q", "ab")]
    calls = PointwiseReranker(model=tiny_mllm).model_calls(rankings)
    assert calls.model is tiny_mllm and calls.lost == {}
    asked = []
    assert calls.ask([0], lambda model, value: asked.append((model, value)), 7)
    assert asked == [(tiny_mllm, 7)]
    assert calls.results(lambda row: rankings[row]) == rankings


# --------------------------------------------------------- a model failing mid-run
SERVER_DOWN = "Cannot reach the MLLM server at http://gpu:8000/v1 (Connection refused; 3 retries, timeout 120 s)"
PHOTOS = [["cat", "coffee", "coins"], ["dahlia", "rocket", "astronaut"], ["hubble_deep_field", "summer_palace", "cat"]]


class FlakyModel:
    """A ready model in place of a server that fails: the calls numbered in ``failing`` (from 1) raise
    ModelUnavailableError as a server gone away would; the others rank every list of three in reverse
    (P(relevant) rising along each call's conversations; a grid answer or an MM-R5 answer of 3, 2, 1)."""

    name = "flaky"

    def __init__(self, failing=(), error: ModelUnavailableError | None = None) -> None:
        self.failing = set(failing)
        self.error = error or ModelUnavailableError(SERVER_DOWN)
        self.calls = 0
        self.usage = Usage()

    def _call(self) -> None:
        self.calls += 1
        if self.calls in self.failing:
            raise self.error

    def generate(self, conversations, *, max_new_tokens=128, temperature=0.0, assistant_prefix=""):
        self._call()
        answer = "3, 2, 1]}" if assistant_prefix else "<think>the last is best</think><answer>[3, 2, 1]</answer>"
        return [Generation(answer, 0, 0) for _ in conversations]

    def choice_probability(self, conversations, choices, *, assistant_prefix=""):
        self._call()
        relevant = np.linspace(0.2, 0.8, len(conversations)) if len(conversations) > 1 else np.full(1, 0.5)
        return np.stack([relevant, 1 - relevant], axis=1)


def photo_rankings(groups=PHOTOS) -> tuple[list[Query], list[Ranking]]:
    queries, rankings = [], []
    for number, names in enumerate(groups):
        hits = tuple(Hit(Item(f"{number}-{name}", "image", source=str(IMAGES / f"{name}.jpg")), 1.0 - n / 10,
                         stages={"retrieve": StageScore(1.0 - n / 10, n + 1)}) for n, name in enumerate(names))
        queries.append(Query(text=f"question {number}", id=f"q{number}"))
        rankings.append(Ranking(queries[-1], hits, timings={"retrieve": 0.02}))
    return queries, rankings


def flaky_stage(cls: type, model: FlakyModel, **options):
    """A stage making one model call per ranking of three photos."""
    per_ranking = {PointwiseReranker: {"batch_size": 3}, GridReranker: {"batch_size": 1, "tile": 64},
                   ReasoningReranker: {"batch_size": 1, "window": 3}}[cls]
    return cls(model=model, depth=3, **per_ranking, **options)


@pytest.mark.parametrize("cls", PICTURE_STAGES)
@pytest.mark.parametrize(("failing", "lost"), [({2}, [1]), ({2, 3}, [1, 2]), ({1}, [0])])
def test_a_call_that_fails_keeps_the_order_of_its_rankings_only(cls: type, failing: set, lost: list, caplog) -> None:
    model = FlakyModel(failing)
    reranker = flaky_stage(cls, model)
    queries, rankings = photo_rankings()
    with caplog.at_level(logging.WARNING, logger="mmrank"):
        results = reranker.rerank_batch(queries, rankings, None)
    assert model.calls == 3  # a server that blinked may be back: later calls are still made
    for row, (incoming, result) in enumerate(zip(rankings, results)):
        records = [hit.stages[reranker.name] for hit in result]
        assert result.stage_names == ["retrieve", reranker.name]
        if row in lost:
            assert result.ids == incoming.ids and [hit.score for hit in result] == [hit.score for hit in incoming]
            assert [(r.score, r.rank, r.note) for r in records] == [
                (None, rank, f"model unavailable: {SERVER_DOWN}") for rank in (1, 2, 3)]
        else:  # reranked before (or after) the failure: the model's order stays
            assert result.ids == incoming.ids[::-1]
            assert all(r.score is not None and r.note is None for r in records)
    assert [record.getMessage() for record in caplog.records] == (
        [f"{reranker.name}: keeping the incoming order: {SERVER_DOWN}"] * len(failing))


@pytest.mark.parametrize("cls", PICTURE_STAGES)
def test_a_call_that_fails_raises_with_fail(cls: type, caplog) -> None:
    error = ModelReplyError("The MLLM server at http://gpu:8000/v1 sent a reply that is not an OpenAI chat "
                            "completion: empty 'choices'.")
    model = FlakyModel({2}, error)
    queries, rankings = photo_rankings()
    with caplog.at_level(logging.WARNING, logger="mmrank"), pytest.raises(ModelReplyError) as raised:
        flaky_stage(cls, model, on_unavailable="fail").rerank_batch(queries, rankings, None)
    assert raised.value is error and model.calls == 2 and caplog.records == []


@pytest.mark.parametrize("cls", PICTURE_STAGES)
def test_a_malformed_reply_is_noted_like_a_server_gone(cls: type) -> None:
    error = ModelReplyError("The MLLM server at http://gpu:8000/v1 sent a reply that is not an OpenAI chat "
                            "completion: no 'logprobs' for the generated token.")
    queries, rankings = photo_rankings(PHOTOS[:1])
    [result] = flaky_stage(cls, FlakyModel({1}, error)).rerank_batch(queries, rankings, None)
    assert result.ids == rankings[0].ids
    assert {hit.stages[cls.name].note for hit in result} == {f"model unavailable: {error}"}


def test_pointwise_keeps_the_order_of_every_ranking_with_a_candidate_in_the_failed_call() -> None:
    model = FlakyModel({2})  # calls of two candidates: [0a 0b] [0c 1a] fails, [1b 1c] not sent, [2a 2b] [2c]
    queries, rankings = photo_rankings()
    results = PointwiseReranker(model=model, depth=3, batch_size=2).rerank_batch(queries, rankings, None)
    assert model.calls == 4
    for result, incoming in zip(results[:2], rankings):
        assert result.ids == incoming.ids
        assert all(hit.stages["pointwise"].note.startswith("model unavailable: Cannot reach") for hit in result)
    assert [hit.stages["pointwise"].score for hit in results[2]] == [0.8, 0.5, 0.2]


def test_reasoning_drops_the_earlier_windows_of_a_ranking_whose_later_window_fails() -> None:
    model = FlakyModel({2})  # step 1 (windows of both rankings together) answers, step 2 fails
    groups = [["cat", "coffee", "coins", "dahlia", "rocket"], ["astronaut", "hubble_deep_field", "summer_palace"]]
    queries, rankings = photo_rankings(groups)
    reranker = ReasoningReranker(model=model, depth=5, window=3, stride=2)
    results = reranker.rerank_batch(queries, rankings, None)
    assert model.calls == 2  # nothing left to ask after the failure
    assert results[0].ids == rankings[0].ids and results[0].explanations.get("reasoning") is None
    assert results[1].ids == rankings[1].ids[::-1]  # one window, answered at step 1
    assert results[1].explanations["reasoning"] == ("the last is best",)


# --------------------------------------------------------------------- question
@pytest.mark.parametrize("cls", STAGES)
def test_the_question_is_the_querys_text(cls: type) -> None:
    reranker = stage(cls)
    assert reranker.question(Query(text="  a red car ")) == "a red car"
    assert reranker.question(Query(image=str(IMAGES / "cat.jpg"), text="a cat", modification="make it grey")) == (
        "a cat make it grey")
    assert reranker.question(Query(image=str(IMAGES / "cat.jpg"), modification="make it a dog")) == "make it a dog"
    with pytest.raises(InputError, match=f"'{reranker.name}' reranker asks .* but query 'q9' has none "
                                         r"\(an image-only query\)"):
        reranker.question(Query(image=str(IMAGES / "cat.jpg"), id="q9"))
    with pytest.raises(InputError, match="but query has none"):
        reranker.question(Query(image=str(IMAGES / "cat.jpg")))


# ------------------------------------------------------- a ready model's config
@pytest.mark.parametrize("cls", STAGES)
def test_a_ready_model_is_written_as_the_folder_it_came_from(cls: type, tiny_mllm, tiny_mllm_dir, monkeypatch) -> None:
    reranker = stage(cls, model=tiny_mllm, depth=4)
    assert reranker.handle.loaded and reranker.handle.get() is tiny_mllm
    config = reranker.to_config()
    assert config["model"] == tiny_mllm.source == str(tiny_mllm_dir)
    assert config == stage(cls, model=str(tiny_mllm_dir), depth=4).to_config()
    assert reranker.model is tiny_mllm  # writing the config does not change the stage
    rebuilt = create_reranker(config)
    assert type(rebuilt) is cls and rebuilt.to_config() == config
    assert not rebuilt.handle.loaded and rebuilt.handle.model_name == str(tiny_mllm_dir)
    assert rebuilt.handle.reference == reranker.handle.reference == str(tiny_mllm_dir)
    options = "max_pixels=1003520" if cls is ReasoningReranker else ""
    assert rebuilt.handle.identity == f"local|{tiny_mllm_dir}|{options}"
    assert reranker.handle.identity == f"hf:{tiny_mllm_dir}"
    asked = []
    monkeypatch.setattr("mmrank.mllm.shared_mllm",
                        lambda model, *, url=None, **options: asked.append((model, url, options)) or tiny_mllm)
    assert rebuilt.handle.get() is tiny_mllm
    assert asked == [(str(tiny_mllm_dir), None, MMR5_PIXELS if cls is ReasoningReranker else {})]


def test_a_ready_model_with_no_source_is_written_by_name() -> None:
    class Served:
        name = "openai:served-model"

    config = PointwiseReranker(model=Served()).to_config()
    assert config["model"] == "openai:served-model"


# ---------------------------------------------------------------------- pictures
@pytest.mark.parametrize("cls", PICTURE_STAGES)
def test_pages_are_rendered_at_the_stages_dpi(cls: type) -> None:
    page = Item("p1", "page", source=str(PDF), page=1)
    assert cls().dpi == DEFAULT_DPI == 144
    at_72 = cls(dpi=72).picture(page)
    assert at_72.size == (595, 842)  # A4 in points: one pixel a point at 72 dpi
    at_36, at_144 = cls(dpi=36).picture(page), cls().picture(page)
    assert at_144.size == (1190, 1684)
    assert abs(at_36.width * 2 - at_72.width) <= 1 and abs(at_36.height * 2 - at_72.height) <= 1
    assert at_72.mode == "RGB"
    photo = Item("cat", "image", source=str(IMAGES / "cat.jpg"))
    assert cls(dpi=36).picture(photo).size == cls().picture(photo).size == (451, 300)  # files as they are
    with pytest.raises(InputError, match="has no picture"):
        cls().picture(Item("t", "text", text="words"))
    with pytest.raises(InputError, match="must be 18 to 600 dpi; got 0"):
        cls(dpi=0)
