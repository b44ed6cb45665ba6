"""What every reranker shares: reordering the head while keeping the tail, keeping the order with a
note, the registry that builds rerankers from configs (and writes them back), and the base class."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import pytest

from mmrank.errors import InputError
from mmrank.rerankers import (
    RERANKERS,
    BaseReranker,
    Reranker,
    create_reranker,
    register_reranker,
    reranker_class,
    reranker_type,
)
from mmrank.rerankers.base import HeadPlace, at_least_one, keep_order, reorder_head
from mmrank.rerankers.pointwise import PointwiseReranker
from mmrank.rerankers.superglobal import SuperGlobalReranker
from mmrank.types import Hit, Item, Placement, Query, Ranking, StageScore

SCORES = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6, "e": 0.5, "f": 0.4}


def hand_ranking(ids: str = "abcdef") -> Ranking:
    """Hits in the order of ``ids``, each scored and ranked by a ``retrieve`` stage."""
    hits = tuple(Hit(item=Item(id=i, kind="text", text=f"text {i}"), score=SCORES[i],
                     stages={"retrieve": StageScore(SCORES[i], rank)})
                 for rank, i in enumerate(ids, start=1))
    return Ranking(query=Query(text="q"), hits=hits, timings={"retrieve": 0.01})


def placed(placements: Sequence[Placement]) -> list[tuple[str, float | None, str | None]]:
    return [(p.hit.item_id, p.score, p.note) for p in placements]


@dataclasses.dataclass(kw_only=True)
class ReverseHead(BaseReranker):
    """Reverses the first ``depth`` hits, scoring them 1, 2, 3 ... from the (new) bottom of the head."""

    name: str = "reverse"
    depth: int = 3

    def rerank_batch(self, queries, rankings, collection):
        results = []
        for ranking in rankings:
            size = min(self.depth, len(ranking))
            head = [HeadPlace(position, float(position + 1)) for position in reversed(range(size))]
            results.append(ranking.with_stage(self.name, reorder_head(ranking, head, self.depth)))
        return results


@dataclasses.dataclass(kw_only=True)
class SlowKeepOrder(BaseReranker):
    """Keeps the order after sleeping 10 ms per call; records every call."""

    name: str = "slow"
    depth: int = 5
    calls: list = dataclasses.field(default_factory=list, init=False, repr=False, compare=False)

    def rerank_batch(self, queries, rankings, collection):
        self.calls.append((list(queries), list(rankings), collection))
        time.sleep(0.01)
        return [keep_order(ranking, self.name, None) for ranking in rankings]


@pytest.fixture
def registry():
    """The registry as a test leaves it is put back as it was."""
    saved = dict(RERANKERS)
    yield RERANKERS
    RERANKERS.clear()
    RERANKERS.update(saved)


# ------------------------------------------------------------------ reorder_head
def test_reorder_head_places_the_head_then_the_unplaced_head_then_the_tail() -> None:
    ranking = hand_ranking()
    head = [HeadPlace(2, 5.0, "up"), HeadPlace(0, 4.0), HeadPlace(3, None, "kept")]
    result = reorder_head(ranking, head, depth=4, unplaced_note="not scored")
    assert placed(result) == [("c", 5.0, "up"), ("a", 4.0, None), ("d", None, "kept"),
                              ("b", None, "not scored"),  # in the head, not placed: after the placed ones
                              ("e", None, None), ("f", None, None)]  # after depth: unchanged, no note
    assert all(isinstance(p, Placement) for p in result)
    assert [p.hit for p in result] == [ranking.hits[i] for i in (2, 0, 3, 1, 4, 5)]
    assert result[0].hit is ranking.hits[2]


def test_reorder_head_keeps_the_incoming_order_of_several_unplaced_hits() -> None:
    result = reorder_head(hand_ranking(), [HeadPlace(4, 1.0)], depth=5, unplaced_note="n")
    assert placed(result) == [("e", 1.0, None), ("a", None, "n"), ("b", None, "n"), ("c", None, "n"),
                              ("d", None, "n"), ("f", None, None)]


def test_reorder_head_with_depth_beyond_the_ranking() -> None:
    result = reorder_head(hand_ranking("abc"), [HeadPlace(1, 0.5)], depth=10, unplaced_note="later")
    assert placed(result) == [("b", 0.5, None), ("a", None, "later"), ("c", None, "later")]


def test_reorder_head_with_an_empty_head_keeps_the_order() -> None:
    result = reorder_head(hand_ranking("abcd"), [], depth=2, unplaced_note="no score")
    assert placed(result) == [("a", None, "no score"), ("b", None, "no score"), ("c", None, None), ("d", None, None)]
    assert placed(reorder_head(hand_ranking("ab"), [], depth=2)) == [("a", None, None), ("b", None, None)]


def test_with_stage_of_a_reordered_head_records_ranks_scores_and_notes() -> None:
    ranking = hand_ranking()
    head = [HeadPlace(2, 5.0, "up"), HeadPlace(0, 4.0)]
    result = ranking.with_stage("stage", reorder_head(ranking, head, depth=4, unplaced_note="not scored"))
    assert result.ids == ["c", "a", "b", "d", "e", "f"]
    assert [h.stages["stage"].rank for h in result] == [1, 2, 3, 4, 5, 6]
    assert [h.stages["stage"].score for h in result] == [5.0, 4.0, None, None, None, None]
    assert [h.score for h in result] == [5.0, 4.0, 0.8, 0.6, 0.5, 0.4]  # None keeps the previous score
    assert [h.stages["stage"].note for h in result] == ["up", None, "not scored", "not scored", None, None]
    assert result.order_after("retrieve") == list("abcdef")  # earlier stages are kept
    assert result.stage_names == ["retrieve", "stage"]


# -------------------------------------------------------------------- keep_order
def test_keep_order_notes_every_hit_and_records_the_stage() -> None:
    ranking = hand_ranking("abcd")
    kept = keep_order(ranking, "mllm", "model unavailable: gone")
    assert kept.ids == ranking.ids
    assert [h.score for h in kept] == [h.score for h in ranking]
    assert [(h.stages["mllm"].score, h.stages["mllm"].rank, h.stages["mllm"].note) for h in kept] == [
        (None, rank, "model unavailable: gone") for rank in range(1, 5)]
    assert kept.stage_names == ["retrieve", "mllm"] and kept.timings["mllm"] == 0.0
    assert ranking.stage_names == ["retrieve"]  # the incoming ranking is not changed
    assert [h.stages["mllm"].note for h in keep_order(ranking, "mllm", None)] == [None] * 4


def test_at_least_one() -> None:
    assert at_least_one("depth", 1) == 1 and at_least_one("batch_size", None) is None
    with pytest.raises(InputError, match=r"^batch_size must be at least 1, got 0\.$"):
        at_least_one("batch_size", 0)
    with pytest.raises(InputError, match="dpi must be at least 1, got -3"):
        at_least_one("dpi", -3)


# ---------------------------------------------------------------------- registry
@pytest.mark.parametrize("kind", sorted(RERANKERS))
def test_every_registered_type_builds_with_defaults_and_round_trips(kind: str) -> None:
    reranker = create_reranker({"type": kind})
    assert isinstance(reranker, reranker_class(kind)) and isinstance(reranker, Reranker)
    assert reranker_type(type(reranker)) == kind
    config = reranker.to_config()
    assert next(iter(config)) == "type" and config["type"] == kind
    assert config["name"] == reranker.name
    assert "handle" not in config and "captions_cache" not in config  # derived, not options
    rebuilt = create_reranker(config)
    assert type(rebuilt) is type(reranker)
    assert rebuilt.to_config() == config
    assert rebuilt.depth == reranker.depth


def test_a_changed_option_survives_the_round_trip() -> None:
    config = create_reranker({"type": "pointwise", "depth": 7, "choices": ["True", "False"],
                              "model_options": {"max_pixels": 1000}}).to_config()
    assert (config["depth"], config["choices"], config["model_options"]) == (7, ["True", "False"], {"max_pixels": 1000})
    assert create_reranker(config).to_config() == config
    stage = create_reranker({"type": "superglobal", "m": 12, "k": 3})
    assert stage.depth == 12 and "depth" not in stage.to_config()  # SuperGlobal's depth is its m
    assert create_reranker(stage.to_config()).depth == 12


def test_unknown_type_lists_the_known_ones() -> None:
    with pytest.raises(InputError, match="Unknown reranker type 'colbert'; known types: ") as error:
        create_reranker({"type": "colbert"})
    assert all(kind in str(error.value) for kind in RERANKERS)
    assert str(error.value).endswith(f"known types: {', '.join(sorted(RERANKERS))}.")
    with pytest.raises(InputError, match="Unknown reranker type None"):
        create_reranker({"depth": 3})
    with pytest.raises(InputError, match="Unknown reranker type 'colbert'"):
        reranker_class("colbert")


def test_a_bad_option_names_the_type_and_the_option() -> None:
    with pytest.raises(InputError, match=r"Bad options for reranker type 'alpha-qe'.*'beta'"):
        create_reranker({"type": "alpha-qe", "beta": 0.5})
    with pytest.raises(InputError, match=r"Bad options for reranker type 'superglobal'.*'depth'"):
        create_reranker({"type": "superglobal", "depth": 5})  # not an option: SuperGlobal's depth is m
    with pytest.raises(InputError, match=r"Bad options for reranker type 'grid'.*'handle'"):
        create_reranker({"type": "grid", "handle": None})  # derived from the options, not one of them


def test_create_reranker_does_not_change_the_config() -> None:
    config = {"type": "pointwise", "depth": 4}
    create_reranker(config, mllm="x", mllm_url="http://h:1")
    assert config == {"type": "pointwise", "depth": 4}


def test_a_registered_class_is_built_found_and_written(registry) -> None:
    register_reranker("reverse-head", ReverseHead)
    assert RERANKERS["reverse-head"] is ReverseHead
    assert reranker_class("reverse-head") is ReverseHead
    assert reranker_type(ReverseHead) == "reverse-head"
    stage = create_reranker({"type": "reverse-head", "depth": 4})
    assert isinstance(stage, ReverseHead) and isinstance(stage, Reranker) and stage.depth == 4
    assert stage.to_config() == {"type": "reverse-head", "name": "reverse", "depth": 4}
    ranking = hand_ranking()
    result = stage.rerank(ranking.query, ranking, None)
    assert result.ids == ["d", "c", "b", "a", "e", "f"]
    assert [h.stages["reverse"].score for h in result] == [4.0, 3.0, 2.0, 1.0, None, None]
    with pytest.raises(InputError, match="Bad options for reranker type 'reverse-head'"):
        create_reranker({"type": "reverse-head", "m": 4})


def test_a_class_registered_by_its_import_path(registry) -> None:
    register_reranker("late", "tests.rerankers.test_base:ReverseHead")
    assert reranker_type(ReverseHead) == "late"
    assert isinstance(create_reranker({"type": "late"}), ReverseHead)
    with pytest.raises(InputError, match="non-empty name"):
        register_reranker("", ReverseHead)


def test_registration_is_undone_after_the_test() -> None:
    assert "reverse-head" not in RERANKERS and "late" not in RERANKERS


def test_a_class_defined_in_a_function_can_be_registered(registry) -> None:
    @dataclasses.dataclass(kw_only=True)
    class Local(ReverseHead):
        name: str = "local"

    register_reranker("local", Local)
    assert isinstance(create_reranker({"type": "local"}), Local)


def test_an_unregistered_class_has_no_type() -> None:
    with pytest.raises(InputError, match=r"ReverseHead is not a registered reranker type.*register_reranker"):
        reranker_type(ReverseHead)
    with pytest.raises(InputError, match="register it with mmrank.rerankers.register_reranker"):
        ReverseHead().to_config()

    @dataclasses.dataclass(kw_only=True)
    class Subclass(PointwiseReranker):  # a subclass is not its registered parent
        pass

    with pytest.raises(InputError, match="Subclass is not a registered reranker type"):
        reranker_type(Subclass)


def test_mllm_options_replace_the_model_of_mllm_stages_only() -> None:
    stage = create_reranker({"type": "pointwise", "model": "org/other"}, mllm="x", mllm_url="http://h:1")
    assert (stage.model, stage.url) == ("x", "http://h:1")
    assert (stage.handle.model, stage.handle.url) == ("x", "http://h:1")
    only_url = create_reranker({"type": "pointwise", "model": "org/other"}, mllm_url="http://h:1")
    assert (only_url.model, only_url.url) == ("org/other", "http://h:1")
    only_model = create_reranker({"type": "reasoning"}, mllm="x")
    assert (only_model.model, only_model.url) == ("x", None)
    untouched = create_reranker({"type": "pointwise", "model": "org/other"})
    assert (untouched.model, untouched.url) == ("org/other", None)
    vectors = create_reranker({"type": "superglobal", "m": 5}, mllm="x", mllm_url="http://h:1")
    assert isinstance(vectors, SuperGlobalReranker) and vectors.m == 5
    assert not hasattr(vectors, "model") and not hasattr(vectors, "url")


# ------------------------------------------------------------------ BaseReranker
def test_depth_below_one_is_refused() -> None:
    for depth in (0, -1):
        with pytest.raises(InputError, match=f"depth must be at least 1, got {depth}"):
            ReverseHead(depth=depth)
    with pytest.raises(TypeError):
        ReverseHead(3)  # keyword-only
    with pytest.raises(TypeError):
        BaseReranker(name="x", depth=1)  # abstract: rerank_batch is missing


def test_rerank_of_one_query_goes_through_rerank_batch_and_is_timed() -> None:
    stage = SlowKeepOrder()
    ranking = hand_ranking("abc")
    collection = object()
    result = stage.rerank(ranking.query, ranking, collection)
    assert stage.calls == [([ranking.query], [ranking], collection)]
    assert result.ids == ["a", "b", "c"]
    assert result.stage_names == ["retrieve", "slow"]
    assert result.timings["slow"] >= 0.01  # measured around rerank_batch, not the 0.0 keep_order wrote
    assert result.timings["retrieve"] == 0.01


def test_query_text_is_the_search_text_or_an_error_naming_stage_use_and_query() -> None:
    from mmrank.rerankers.base import query_text
    from mmrank.types import Query

    assert query_text(Query(text=" red car "), "s", "stage reads text") == "red car"
    assert query_text(Query(image="cat.jpg", modification="make it grey"), "s", "stage reads text") == "make it grey"
    with pytest.raises(InputError, match=r"^The 's' stage reads text, but query 'q1' has none "
                                         r"\(an image-only query\); try text\.$"):
        query_text(Query(image="cat.jpg", id="q1"), "s", "stage reads text", "; try text")


def test_hugging_face_cache_names_the_folder_and_whether_it_was_offline(monkeypatch) -> None:
    from huggingface_hub import constants

    from mmrank.errors import hugging_face_cache

    monkeypatch.setattr(constants, "HF_HUB_CACHE", "/cache/hub")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hugging_face_cache() == hugging_face_cache(hub=True) == "the Hugging Face cache /cache/hub with HF_HUB_OFFLINE=1"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert hugging_face_cache() == "the Hugging Face cache /cache/hub"
    assert hugging_face_cache(hub=True) == "the Hugging Face cache /cache/hub and on the Hub"
