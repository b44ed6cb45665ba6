"""Evaluating a pipeline on a dataset: metrics and latency after every stage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mmrank.collection import Collection
from mmrank.datasets import RetrievalDataset
from mmrank.indexing import ItemEncoder
from mmrank.metrics import evaluate_rankings
from mmrank.pipeline import Pipeline

DEFAULT_METRICS = ("recall@1", "recall@5", "recall@10", "map@10", "ndcg@10", "mrr")


@dataclass(frozen=True)
class StageReport:
    """Metrics of the ranking as one stage left it, and that stage's mean latency per query."""

    stage: str
    metrics: dict[str, float]
    latency_ms: float


def add_dataset_items(collection: Collection, dataset: RetrievalDataset, encoder: ItemEncoder,
                      *, batch_size: int = 256, progress: bool = False) -> int:
    """Encode and store the dataset's items that the collection lacks (so an interrupted build
    resumes); returns how many were added."""
    from tqdm.auto import tqdm

    present = collection.get_many(item.id for item in dataset.items)
    missing = [item for item in dataset.items if item.id not in present]
    for start in tqdm(range(0, len(missing), batch_size), desc="Encoding corpus", disable=not progress):
        batch = missing[start:start + batch_size]
        collection.add(batch, encoder.encode(batch, collection))
    collection.build_indexes()
    return len(missing)


def evaluate(pipeline: Pipeline, dataset: RetrievalDataset, metrics: Sequence[str] = DEFAULT_METRICS,
             *, k: int = 100, batch_size: int = 64, progress: bool = False) -> list[StageReport]:
    """Run every query (``batch_size`` at a time through the first stage) and score the order after
    each stage (first stage, then each reranker); latency is the mean time per query per stage."""
    from tqdm.auto import tqdm

    orders: dict[str, dict[str, list[str]]] = {}
    seconds: dict[str, float] = {}
    with tqdm(total=len(dataset.queries), desc="Queries", disable=not progress) as bar:
        for start in range(0, len(dataset.queries), batch_size):
            batch = dataset.queries[start:start + batch_size]
            for query, ranking in zip(batch, pipeline.search_batch(batch, k)):
                for stage, spent in ranking.timings.items():
                    orders.setdefault(stage, {})[query.id] = ranking.order_after(stage)
                    seconds[stage] = seconds.get(stage, 0.0) + spent
            bar.update(len(batch))
    count = max(1, len(dataset.queries))
    return [
        StageReport(stage, evaluate_rankings(order, dataset.qrels, metrics), 1000 * seconds[stage] / count)
        for stage, order in orders.items()
    ]
