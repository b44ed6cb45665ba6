"""`mmrank eval` on a BEIR-format folder: metrics per stage, and the collection reused next time."""

from __future__ import annotations

import json
import time

import pytest

from mmrank.collection import Collection
from mmrank.datasets import RetrievalDataset
from mmrank.evaluation import evaluate
from mmrank.metrics import describe_metric
from mmrank.pipeline import Pipeline
from mmrank.types import Hit, Item, Placement, Query, Ranking, StageScore

CORPUS = {
    "d1": ("Cats", "Domestic cats sleep between twelve and sixteen hours every day."),
    "d2": ("Rockets", "The Falcon 9 first stage is powered by nine Merlin engines."),
    "d3": ("Coffee", "Brazil is the largest coffee producer in the world."),
    "d4": ("Tea", "Green tea is best brewed with water at about 80 degrees Celsius."),
}
QUERIES = {"q1": "How long do cats sleep?", "q2": "How many engines does a Falcon 9 have?",
           "q3": "Which country produces the most coffee?"}


def _write_beir(root):
    root.mkdir()
    (root / "corpus.jsonl").write_text("\n".join(
        json.dumps({"_id": i, "title": t, "text": x}) for i, (t, x) in CORPUS.items()))
    (root / "queries.jsonl").write_text("\n".join(json.dumps({"_id": i, "text": t}) for i, t in QUERIES.items()))
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td3\t1\n")


def test_eval_cli_reports_metrics_and_reuses_the_collection(tmp_path, run_cli, minilm):
    _write_beir(tmp_path / "tiny-beir")
    args = ["eval", tmp_path / "tiny-beir", "--json", "--collection", tmp_path / "c", "--metrics", "recall@1,mrr,ndcg@10"]
    code, out, err = run_cli(*args)
    assert code == 0, err
    result = json.loads(out)
    assert (result["dataset"], result["queries"]) == ("tiny-beir", 3)
    [stage] = result["stages"]
    assert stage["stage"] == "retrieve"
    assert stage["metrics"] == {"recall@1": 1.0, "mrr": 1.0, "ndcg@10": 1.0, "queries": 3}
    assert stage["latency_ms"] > 0
    assert result["definitions"] == {
        "recall@1": "trec_eval recall_1: relevant items in the top 1 / relevant items",
        "mrr": describe_metric("mrr"),
        "ndcg@10": "trec_eval ndcg_cut_10: DCG@10 / ideal DCG@10, gain = grade",
    }
    assert len(Collection.open(tmp_path / "c")) == 4

    code, out, _ = run_cli(*args[:-4], "--collection", tmp_path / "c")
    assert code == 0 and "recall@1" in out and "retrieve" in out
    code, out, _ = run_cli("eval", tmp_path / "tiny-beir", "--collection", tmp_path / "c", "--metrics", "mrr",
                           "--save-runs", tmp_path / "runs", "--report", tmp_path / "eval.html")
    assert code == 0 and "Queries counted in the means: all 3" in out.splitlines()[-1]
    # Evaluation ranks without snippets; the sheet still shows each shown hit's best passage.
    assert "<div class='snippet'><mark>Cats</mark> Domestic <mark>cats</mark>" in (tmp_path / "eval.html").read_text()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["qrels.txt", "results.json", "retrieve.run"]
    assert (tmp_path / "runs" / "qrels.txt").read_text() == "q1 0 d1 1\nq2 0 d2 1\nq3 0 d3 1\n"
    assert (tmp_path / "runs" / "retrieve.run").read_text().splitlines()[0] == "q1 Q0 d1 1 4 docqa-text-retrieve"
    saved = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert saved["definitions"] == {"mrr": describe_metric("mrr")}
    assert saved["stages"][0]["metrics"] == {"mrr": 1.0, "queries": 3}


class _Reverse:
    """A reranker that reverses the top two and takes 20 ms a batch: enough to check per-stage
    bookkeeping, and that the pipeline times the stage."""

    name, depth = "reverse", 2

    def rerank_batch(self, queries, rankings, collection):
        time.sleep(0.02)
        return [ranking.with_stage(self.name, [Placement(h) for h in [*ranking.hits[:2][::-1], *ranking.hits[2:]]])
                for ranking in rankings]


def test_evaluate_scores_every_stage(tmp_path):
    items = [Item(id=i, kind="text", text=t) for i, (_, t) in CORPUS.items()]

    class _FixedRetriever:
        depth = 4

        def retrieve_batch(self, queries, collection, k=None):
            hits = tuple(Hit(item=item, score=1.0 / r, stages={"retrieve": StageScore(1.0 / r, r)})
                         for r, item in enumerate(items, start=1))
            return [Ranking(query=query, hits=hits, timings={"retrieve": 0.002}) for query in queries]

    dataset = RetrievalDataset(name="toy", items=items, queries=[Query(text="x", id="q")],
                               qrels={"q": {"d2": 1}}, split="test")
    pipeline = Pipeline(collection=None, retriever=_FixedRetriever(), rerankers=[_Reverse()])
    reports = {r.stage: r for r in evaluate(pipeline, dataset, ["recall@1", "mrr"], k=4)}
    assert reports["retrieve"].metrics["recall@1"] == 0.0 and reports["retrieve"].metrics["mrr"] == 0.5
    assert reports["reverse"].metrics["recall@1"] == 1.0 and reports["reverse"].metrics["mrr"] == 1.0
    assert reports["retrieve"].latency_ms == 2.0 and 20.0 <= reports["reverse"].latency_ms < 1000


def _fixed_pipeline(items, order):
    """A pipeline whose first stage returns ``order`` (item ids) for every query."""
    by_id = {item.id: item for item in items}

    class _FixedRetriever:
        depth = len(order)

        def retrieve_batch(self, queries, collection, k=None):
            hits = tuple(Hit(item=by_id[i], score=1.0 / r, stages={"retrieve": StageScore(1.0 / r, r)})
                         for r, i in enumerate(order, start=1))
            return [Ranking(query=query, hits=hits, timings={"retrieve": 0.001}) for query in queries]

    return Pipeline(collection=None, retriever=_FixedRetriever())


def test_ignored_items_are_dropped_before_scoring_and_protocols_are_prefixed():
    from mmrank.datasets.base import Judgements

    items = [Item(id=i, kind="text", text=i) for i in "abcd"]
    queries = [Query(text="x", id="q")]
    # Order a, b, c, d. Medium: c relevant, a junk -> c at rank 2 after removing a -> mrr 1/2.
    # Hard: d relevant, a and c ignored -> d at rank 2 -> mrr 1/2; recall@1 0.
    protocols = {"medium": Judgements({"q": {"c": 1}}, {"q": frozenset("a")}),
                 "hard": Judgements({"q": {"d": 1}}, {"q": frozenset("ac")})}
    dataset = RetrievalDataset(name="toy", items=items, queries=queries, qrels={"q": {"c": 1}}, split="test",
                               protocols=protocols, metrics=("mrr", "recall@2"))
    [report] = evaluate(_fixed_pipeline(items, "abcd"), dataset)
    assert report.metrics == {"medium/mrr": 0.5, "medium/recall@2": 1.0, "medium/queries": 1,
                              "hard/mrr": 0.5, "hard/recall@2": 1.0, "hard/queries": 1}


def test_group_by_reports_macro_means_over_groups():
    items = [Item(id=i, kind="text", text=i) for i in "abc"]
    queries = [Query(text="x", id="q1", metadata={"domain": "news"}),
               Query(text="x", id="q2", metadata={"domain": "news"}),
               Query(text="x", id="q3", metadata={"domain": "law"})]
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"a": 1}}
    dataset = RetrievalDataset(name="toy", items=items, queries=queries, qrels=qrels, split="test",
                               group_by="domain")
    [report] = evaluate(_fixed_pipeline(items, "abc"), dataset, ["recall@1"])
    # Per query recall@1: 1, 0, 1. Micro = 2/3; macro = mean(news 0.5, law 1.0) = 0.75.
    assert report.metrics["recall@1"] == 2 / 3
    assert report.metrics["macro/recall@1"] == 0.75


def test_bad_metric_names_fail_before_any_query_runs_and_empty_protocols_are_reported():
    from mmrank.datasets.base import Judgements
    from mmrank.errors import InputError

    items = [Item(id=i, kind="text", text=i) for i in "ab"]
    protocols = {"easy": Judgements({"q": {}}), "hard": Judgements({"q": {"b": 1}})}
    dataset = RetrievalDataset(name="toy", items=items, queries=[Query(text="x", id="q")], qrels={"q": {"b": 1}},
                               split="test", protocols=protocols)

    class _Exploding:
        depth = 2

        def retrieve_batch(self, queries, collection, k=None):
            raise AssertionError("no query may run before the metrics are checked")

    with pytest.raises(InputError, match="Unknown metric 'recal@1'"):
        evaluate(Pipeline(collection=None, retriever=_Exploding()), dataset, ["recal@1"])
    [report] = evaluate(_fixed_pipeline(items, "ab"), dataset, ["mrr"])
    assert report.metrics == {"easy/queries": 0, "hard/mrr": 0.5, "hard/queries": 1}
