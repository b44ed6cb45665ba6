"""The README's "Extending mmrank" section, run as written: its reranker and its encoder, registered,
then used by a pipeline from the section's YAML and by a collection."""

from __future__ import annotations

import re
import sys
import types

import numpy as np
import pytest
import yaml

from mmrank import encoders, rerankers
from mmrank.collection import Collection
from mmrank.encoders import load_text_encoder
from mmrank.pipeline import Pipeline
from mmrank.types import Item, Query
from tests.paths import REPO

TEXTS = {
    "a": "Espresso is brewed by forcing hot water through finely ground coffee.",
    "b": "Cats sleep for most of the day and hunt at dusk.",
    "c": "Cold brew coffee steeps in cold water for twelve hours.",
    "d": "Rockets carry satellites into orbit around the earth.",
}


def section() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Extending mmrank")
    return readme[start:readme.index("\n## ", start + 1)]


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The section's Python blocks, executed in one module (as a user's file would be), with the
    registry entries they add removed afterwards."""
    monkeypatch.setattr(rerankers, "RERANKERS", dict(rerankers.RERANKERS))
    monkeypatch.setattr(encoders, "ENCODERS", dict(encoders.ENCODERS))
    module = types.ModuleType("readme_extending")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for block in re.findall(r"```python\n(.*?)```", section(), flags=re.S):
        exec(compile(block, "README.md", "exec"), module.__dict__)
    return module


def test_the_section_has_a_reranker_an_encoder_and_a_pipeline() -> None:
    text = section()
    assert len(re.findall(r"```python\n", text)) == 2 and len(re.findall(r"```yaml\n", text)) == 1


def test_the_reranker_is_registered_and_runs_from_the_yaml(example, tmp_path) -> None:
    [stage_config] = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section(), flags=re.S)[1])["rerankers"]
    with Collection.create(tmp_path / "c") as collection:
        collection.add([Item(id=i, kind="text", text=t) for i, t in TEXTS.items()], {})
        pipeline = Pipeline.from_config({"retriever": {"paths": ["bm25"]}, "rerankers": [stage_config]},
                                        collection)
        [stage] = pipeline.rerankers
        assert isinstance(stage, example.TermOverlapReranker) and stage.depth == 10
        assert stage.to_config() == {"type": "term-overlap", "name": "term-overlap", "depth": 10}
        ranking = pipeline.search(Query(text="cold brew coffee water"), k=4)
    # BM25 finds the two texts that share words with the query. Split on spaces and lowercased, c
    # holds all four query words and a only "water" ("brewed" and "coffee." are other words): 1 and 1/4.
    assert sorted(ranking.order_after("retrieve")) == ["a", "c"]
    assert ranking.ids == ["c", "a"]
    assert [hit.stages["term-overlap"].score for hit in ranking] == [1.0, 0.25]
    assert "term-overlap" in ranking.timings


def test_the_encoder_is_registered_and_rebuilt_by_name(example, tmp_path) -> None:
    encoder = load_text_encoder("hashing:256")
    assert isinstance(encoder, example.HashingTextEncoder) and (encoder.name, encoder.dim) == ("hashing:256", 256)
    vectors = encoder.encode_texts(list(TEXTS.values()))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)
    with Collection.create(tmp_path / "c") as collection:
        collection.bind_encoder("text", encoder.name, encoder.dim)
        collection.add([Item(id=i, kind="text", text=t) for i, t in TEXTS.items()], {"text": (list(TEXTS), vectors)})
        collection.build_indexes()
    with Collection.open(tmp_path / "c") as reopened:
        rebuilt = reopened.encoder("text")  # from the name the manifest recorded, through the registry
        assert isinstance(rebuilt, example.HashingTextEncoder) and rebuilt is not encoder
        ranking = Pipeline(reopened).search(TEXTS["c"], k=4)
        assert ranking.ids[0] == "c" and ranking[0].stages["text"].score == pytest.approx(1.0, abs=1e-5)
