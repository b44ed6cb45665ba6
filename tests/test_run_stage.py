"""A first stage read from a TREC run (`mmrank eval --run`): the run's order (trec_eval's, ties and
unsorted lines included) and scores, unknown doc ids and missing queries counted, a malformed
line reported by file:line, metrics equal to hand-computed ones, and a reranker after it."""

from __future__ import annotations

import json
import math

import pytest

from mmrank.collection import Collection
from mmrank.columns import ItemTable
from mmrank.errors import InputError
from mmrank.pipeline import Pipeline
from mmrank.rerankers.passages import DensePassageReranker
from mmrank.run_stage import RunFirstStage, with_run
from mmrank.types import Item, Query

CORPUS = {
    "d1": ("Cats", "Domestic cats sleep between twelve and sixteen hours every day."),
    "d2": ("Rockets", "The Falcon 9 first stage is powered by nine Merlin engines."),
    "d3": ("Coffee", "Brazil is the largest coffee producer in the world."),
    "d4": ("Tea", "Green tea is best brewed with water at about 80 degrees Celsius."),
    "d5": ("Dogs", "Dogs were domesticated from wolves many thousands of years ago."),
    "d6": ("Moon", "The Moon is about 384,000 kilometres from the Earth."),
}
QUERIES = {"q1": "How long do cats sleep?", "q2": "How many engines does a Falcon 9 have?",
           "q3": "Which country produces the most coffee?", "q4": "At what temperature should green tea brew?"}
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 2, "d4": 1}, "q3": {"d3": 1}, "q4": {"d4": 1}}

# Lines out of order; q1's d1 and d3 tie at 2.5 (trec_eval puts the larger doc id first: d3, whatever
# the rank field says); d9 is in no corpus; q4 has no line.
RUN = """\
q2 Q0 d4 3 1.0 bm25
q1 Q0 d1 1 2.5 bm25
q3 Q0 d3 2 8.0 bm25
q1 Q0 d3 2 2.5 bm25
q2 Q0 d2 1 7.0 bm25
q1 Q0 d9 3 3.0 bm25

q1 Q0 d5 4 0.5 bm25
q2 Q0 d6 2 4.0 bm25
q3 Q0 d4 1 9.0 bm25
"""
# The run's order per query, checked by hand: score descending, ties by doc id descending, d9 left out.
RUN_ORDER = {"q1": ["d3", "d1", "d5"], "q2": ["d2", "d6", "d4"], "q3": ["d4", "d3"], "q4": []}
RUN_SCORES = {"q1": [2.5, 2.5, 0.5], "q2": [7.0, 4.0, 1.0], "q3": [9.0, 8.0], "q4": []}


def _write_beir(root):
    root.mkdir()
    (root / "corpus.jsonl").write_text("\n".join(
        json.dumps({"_id": i, "title": t, "text": x}) for i, (t, x) in CORPUS.items()))
    (root / "queries.jsonl").write_text("\n".join(json.dumps({"_id": i, "text": t}) for i, t in QUERIES.items()))
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{qid}\t{docid}\t{grade}\n" for qid, judged in QRELS.items() for docid, grade in judged.items()))
    return root


def _write_run(tmp_path, text=RUN, name="bm25.trec"):
    path = tmp_path / name
    path.write_text(text)
    return path


class _Items:
    """What the run stage reads of a collection: the item table and items by id."""

    def __init__(self, ids):
        self.items = {i: Item(id=i, kind="text", text=CORPUS[i][1]) for i in ids}

    def item_table(self):
        return ItemTable(self.items)

    def get_many(self, ids):
        return {i: self.items[i] for i in ids if i in self.items}


def _queries():
    return [Query(id=qid, text=text) for qid, text in QUERIES.items()]


def test_the_first_stage_is_the_runs_order_with_its_scores(tmp_path):
    stage = RunFirstStage.from_file(_write_run(tmp_path))
    rankings = stage.retrieve_batch(_queries(), _Items(CORPUS))
    assert {r.query.id: r.ids for r in rankings} == RUN_ORDER
    assert {r.query.id: [hit.score for hit in r] for r in rankings} == RUN_SCORES
    q1 = rankings[0]
    assert stage.name == "run:bm25.trec" and q1.stage_names == ["run:bm25.trec"]
    assert [(h.stages["run:bm25.trec"].score, h.stages["run:bm25.trec"].rank) for h in q1] == [
        (2.5, 1), (2.5, 2), (0.5, 3)]
    assert q1[0].found_by == ("run",) and q1[0].item.text == CORPUS["d3"][1]


def test_unknown_doc_ids_are_left_out_and_missing_queries_ranked_empty_with_warnings(tmp_path):
    run = _write_run(tmp_path)
    stage = RunFirstStage.from_file(run)
    rankings = stage.retrieve_batch(_queries(), _Items(["d1", "d2", "d3", "d4", "d5"]))  # no d6 either
    assert {r.query.id: r.ids for r in rankings} == {"q1": ["d3", "d1", "d5"], "q2": ["d2", "d4"],
                                                     "q3": ["d4", "d3"], "q4": []}
    stage.retrieve_batch(_queries()[:1], _Items(CORPUS))  # a query asked again is not counted again
    assert stage.warnings() == [
        f"{run}: 2 doc ids the collection does not hold (e.g. q1 d9; q2 d6); left out of their rankings",
        f"{run}: 1 queries without a line in the run (e.g. q4); their rankings are empty"]
    other = RunFirstStage.from_file(run)
    other.check_queries(["q1", "q2", "q4"])
    assert other.warnings() == [f"{run}: 1 run queries that are not asked (e.g. q3); not reranked (is it the run "
                                "of another split?)"]


def test_depth_excluded_and_candidates_cut_the_runs_ranking(tmp_path):
    stage = RunFirstStage.from_file(_write_run(tmp_path), depth=2)
    collection = _Items(CORPUS)
    assert stage.retrieve(Query(id="q1", text="x"), collection).ids == ["d3", "d1"]
    assert stage.retrieve(Query(id="q1", text="x"), collection, k=3).ids == ["d3", "d1", "d5"]
    assert stage.retrieve(Query(id="q1", text="x", excluded={"d3"}), collection).ids == ["d1", "d5"]
    assert stage.retrieve(Query(id="q2", text="x", candidates={"d4", "d6"}), collection).ids == ["d6", "d4"]
    with pytest.raises(InputError, match="ranks queries by id"):
        stage.retrieve(Query(text="no id"), collection)


def test_a_bad_run_line_names_its_file_and_line(tmp_path):
    with pytest.raises(InputError, match=r"bad\.trec:2: the score 'high' is not a number"):
        RunFirstStage.from_file(_write_run(tmp_path, "q1 Q0 d1 1 2.0 x\nq1 Q0 d2 2 high x\n", "bad.trec"))


def test_eval_with_a_bad_run_line_exits_with_one_line(tmp_path, run_cli):
    dataset = _write_beir(tmp_path / "tiny-beir")
    run = _write_run(tmp_path, RUN + "q3 Q0 d5 3\n", "bad.trec")
    code, out, err = run_cli("eval", dataset, "--run", run, "--collection", tmp_path / "c")
    assert code == 2 and out == ""
    assert err.splitlines() == [f"Error: {run}:11: expected 6 fields 'qid Q0 docid rank score tag', got 4."]
    assert not (tmp_path / "c").exists()  # read before anything was encoded


def _hand_metrics() -> dict[str, float]:
    """recall@1, recall@10, mrr and nDCG@10 (linear gain) of RUN_ORDER under QRELS, per query by hand,
    averaged over the 4 judged queries (q4, ranked empty, scores 0)."""
    ndcg_q1 = ndcg_q3 = 1 / math.log2(3)  # the one relevant item at rank 2
    ndcg_q2 = (2 / math.log2(2) + 1 / math.log2(4)) / (2 / math.log2(2) + 1 / math.log2(3))  # grade 2 at 1, 1 at 3
    return {"recall@1": (0 + 1 / 2 + 0 + 0) / 4, "recall@10": (1 + 1 + 1 + 0) / 4,
            "mrr": (1 / 2 + 1 + 1 / 2 + 0) / 4, "ndcg@10": (ndcg_q1 + ndcg_q2 + ndcg_q3 + 0) / 4, "queries": 4}


def test_eval_run_scores_the_runs_order_as_computed_by_hand(tmp_path, run_cli, minilm):
    dataset = _write_beir(tmp_path / "tiny-beir")
    run = _write_run(tmp_path)
    code, out, err = run_cli("eval", dataset, "--run", run, "--json", "--collection", tmp_path / "c",
                             "--metrics", "recall@1,recall@10,mrr,ndcg@10", "--save-runs", tmp_path / "runs")
    assert code == 0, err
    [stage] = json.loads(out)["stages"]
    assert stage["stage"] == "run:bm25.trec"
    assert stage["metrics"] == pytest.approx(_hand_metrics())
    assert f"warning {run}: 1 doc ids the collection does not hold (e.g. q1 d9); left out of their rankings" in err
    assert f"warning {run}: 1 queries without a line in the run (e.g. q4); their rankings are empty" in err
    saved = (tmp_path / "runs" / "run_bm25.trec.run").read_text().splitlines()
    assert [line.split()[2] for line in saved if line.startswith("q1 ")] == RUN_ORDER["q1"]


def test_a_reranker_after_the_run_reorders_it_and_the_run_stage_is_recorded(tmp_path, run_cli, minilm):
    dataset = _write_beir(tmp_path / "tiny-beir")
    run = _write_run(tmp_path)
    pipeline = tmp_path / "rerank.yaml"
    # weight 3: the passage score outweighs the run's (both min-max normalised over the head)
    pipeline.write_text("name: rerank-run\nretriever: {depth: 100}\n"
                        "rerankers:\n  - {type: dense-passages, depth: 10, weight: 3}\n")
    code, out, err = run_cli("eval", dataset, "--run", run, "--pipeline", pipeline, "--json",
                             "--collection", tmp_path / "c", "--metrics", "recall@1,mrr")
    assert code == 0, err
    stages = {s["stage"]: s["metrics"] for s in json.loads(out)["stages"]}
    assert list(stages) == ["run:bm25.trec", "dense-passages"]
    assert stages["run:bm25.trec"] == pytest.approx({"recall@1": 0.125, "mrr": 0.5, "queries": 4})
    assert stages["dense-passages"]["mrr"] > stages["run:bm25.trec"]["mrr"]

    with Collection.open(tmp_path / "c") as collection:
        collection.use_encoder("text", minilm)
        runner = with_run(Pipeline.from_yaml(pipeline, collection), RunFirstStage.from_file(run))
        ranking = runner.search(Query(id="q1", text=QUERIES["q1"]), k=3)
    assert ranking.stage_names == ["run:bm25.trec", "dense-passages"]
    assert ranking.order_after("run:bm25.trec") == RUN_ORDER["q1"]
    assert ranking.ids[0] == "d1" and ranking.ids != RUN_ORDER["q1"]  # the cats page first
    assert [hit.stages["run:bm25.trec"].score for hit in ranking] == [
        dict(zip(RUN_ORDER["q1"], RUN_SCORES["q1"]))[i] for i in ranking.ids]
