"""The generic metrics against trec_eval (pytrec_eval) and ir-measures on random rankings with
graded judgements: every per-query value equal to 1e-9, for each metric name mmrank prints."""

from __future__ import annotations

import numpy as np
import pytest

from mmrank.metrics import average_precision_min_at_k, parse_metric

pytrec_eval = pytest.importorskip("pytrec_eval")
ir_measures = pytest.importorskip("ir_measures")

# mmrank's name -> trec_eval's measure name (as pytrec_eval reports it) and ir-measures' measure.
CUTOFF = 10
TREC = {
    f"recall@{CUTOFF}": (f"recall_{CUTOFF}", ir_measures.R @ CUTOFF),
    f"hit@{CUTOFF}": (f"success_{CUTOFF}", ir_measures.Success @ CUTOFF),
    f"map@{CUTOFF}": (f"map_cut_{CUTOFF}", ir_measures.AP @ CUTOFF),
    "map": ("map", ir_measures.AP),
    f"ndcg@{CUTOFF}": (f"ndcg_cut_{CUTOFF}", ir_measures.nDCG @ CUTOFF),
    "mrr": ("recip_rank", ir_measures.RR),
}


def random_case(seed: int, queries: int = 150, items: int = 60):
    """Runs with distinct scores (trec_eval orders by score) and qrels with grades 0-3, some
    judged items never retrieved, and a few queries with many relevant items (more than the cutoff)."""
    rng = np.random.default_rng(seed)
    runs, qrels = {}, {}
    for q in range(queries):
        qid = f"q{q}"
        depth = int(rng.integers(1, items))
        ranked = [f"d{i}" for i in rng.permutation(items)[:depth]]
        runs[qid] = {doc: float(depth - rank) for rank, doc in enumerate(ranked)}
        judged = rng.permutation(items)[: int(rng.integers(1, 40 if q % 10 == 0 else 8))]
        grades = rng.integers(0, 4, size=len(judged))
        grades[0] = max(grades[0], 1)  # at least one relevant item per query
        qrels[qid] = {f"d{i}": int(g) for i, g in zip(judged, grades)}
    return runs, qrels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generic_metrics_equal_trec_eval_and_ir_measures_per_query(seed: int) -> None:
    runs, qrels = random_case(seed)
    trec = pytrec_eval.RelevanceEvaluator(qrels, {name for name, _ in TREC.values()}).evaluate(runs)
    ours = {name: parse_metric(name) for name in TREC}
    measures = {measure: name for name, (_, measure) in TREC.items()}
    theirs: dict[str, dict[str, float]] = {name: {} for name in TREC}
    for metric in ir_measures.iter_calc(list(measures), qrels, runs):
        theirs[measures[metric.measure]][metric.query_id] = metric.value
    for qid, run in runs.items():
        ranked = sorted(run, key=run.get, reverse=True)
        for name, (trec_name, _) in TREC.items():
            value = ours[name](ranked, qrels[qid])
            assert value == pytest.approx(trec[qid][trec_name], abs=1e-9), (name, qid)
            assert value == pytest.approx(theirs[name][qid], abs=1e-9), (name, qid)


def test_map_min_differs_from_trec_map_cut_only_when_relevant_items_outnumber_the_cutoff() -> None:
    runs, qrels = random_case(3)
    trec = pytrec_eval.RelevanceEvaluator(qrels, {"map_cut_5"}).evaluate(runs)
    differing = 0
    for qid, run in runs.items():
        ranked = sorted(run, key=run.get, reverse=True)
        relevant = sum(grade > 0 for grade in qrels[qid].values())
        value = average_precision_min_at_k(ranked, qrels[qid], 5)
        # CIRCO's normalisation: trec_eval's sum of precisions over min(|relevant|, 5), not |relevant|.
        assert value == pytest.approx(trec[qid]["map_cut_5"] * relevant / min(relevant, 5), abs=1e-9)
        differing += relevant > 5 and trec[qid]["map_cut_5"] > 0
    assert differing > 0  # the case exercises the difference
