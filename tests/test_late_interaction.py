"""Late-interaction page retrieval end to end with the tiny random-weight ColQwen2: indexing pages
into patch vectors, the patches path of the first stage, pipelines, the command line, eval, and
bad pages. Random weights: these check plumbing and parity, never retrieval quality."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmrank.collection import Collection
from mmrank.indexing import ItemEncoder, index_paths
from mmrank.maxsim import maxsim_pairs
from mmrank.pipeline import Pipeline
from mmrank.retrieval import HybridRetriever
from mmrank.types import Query
from tests.paths import ASSETS

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-colqwen2"
QUESTIONS = ["operating margin in 2016", "a cat asleep next to a cup of coffee"]


@pytest.fixture(scope="module")
def colqwen():
    from mmrank.encoders import load_page_encoder

    return load_page_encoder(str(FIXTURE), device="cpu")


@pytest.fixture(scope="module")
def pages(tmp_path_factory, colqwen):
    """The bundled PDFs with patch vectors only (no text model), read-only."""
    collection = Collection.create(tmp_path_factory.mktemp("pages") / "c", device="cpu")
    report = index_paths(collection, [ASSETS / "pdfs"], ItemEncoder(None, None, page_encoder=colqwen))
    assert not report.skipped and report.items_added == len(collection) > 10
    collection.use_encoder("patches", colqwen)
    yield collection
    collection.close()


def _by_hand(collection, encoder, question):
    """Every page by plain MaxSim of the query's token vectors against its stored patch vectors."""
    [query] = encoder.encode_queries([question])
    ids = collection.store.ids()
    row_ids, rows = collection.item_vectors(ids, "patches")
    row_ids = np.array(row_ids)
    scores = {item_id: maxsim_pairs(query, rows[row_ids == item_id]) for item_id in ids}
    return sorted(scores.items(), key=lambda pair: (-pair[1], ids.index(pair[0])))


def test_stored_patch_vectors_are_the_encoders_output_in_float16(pages, colqwen):
    from mmrank.images import item_image

    item = pages.get(pages.store.ids()[3])
    [fresh] = colqwen.encode_pages([item_image(item)])
    row_ids, stored = pages.item_vectors([item.id], "patches")
    assert len(row_ids) == len(fresh) and pages.spaces["patches"].multi_vector == "float16"
    np.testing.assert_allclose(stored, fresh, atol=1e-3)  # float16 rounding of unit vectors


def test_the_patches_path_ranks_pages_by_maxsim(pages, colqwen):
    pipeline = Pipeline(pages, HybridRetriever(paths=["patches"], depth=5))
    for question in QUESTIONS:
        ranking = pipeline.search(Query(text=question), k=5)
        expected = _by_hand(pages, colqwen, question)[:5]
        assert [hit.item.id for hit in ranking] == [item_id for item_id, _ in expected]
        np.testing.assert_allclose([hit.score for hit in ranking], [score for _, score in expected], rtol=1e-4)
        assert all(hit.found_by == ("patches",) for hit in ranking)
        assert ranking.query_vectors["patches"].shape[1] == colqwen.dim


def test_exhaustive_and_candidate_search_agree_and_fusion_adds_the_path(pages, minilm, tmp_path):
    query = Query(text=QUESTIONS[0])
    fast = Pipeline(pages, HybridRetriever(paths=["patches"], depth=8)).search(query, k=8)
    slow = Pipeline(pages, HybridRetriever(paths=["patches"], depth=8, exhaustive=True)).search(query, k=8)
    assert [h.item.id for h in fast] == [h.item.id for h in slow]
    restricted = Pipeline(pages, HybridRetriever(paths=["patches"])).search(
        Query(text=QUESTIONS[0], candidates=[fast.hits[3].item.id, fast.hits[1].item.id]), k=5)
    assert [h.item.id for h in restricted] == [fast.hits[1].item.id, fast.hits[3].item.id]


def test_a_page_the_model_gives_no_vector_for_is_skipped_alone(tmp_path, colqwen, monkeypatch):
    calls = {"n": 0}
    real = colqwen.encode_pages

    def broken_second_page(images):
        rows = real(images)
        if len(images) == 1:  # one by one, after the batch failed: page 2 of the first file is empty
            calls["n"] += 1
            if calls["n"] == 2:
                return [np.zeros((0, colqwen.dim), np.float32)]
        elif calls["n"] == 0:
            rows[1] = np.zeros((0, colqwen.dim), np.float32)
        return rows

    monkeypatch.setattr(colqwen, "encode_pages", broken_second_page)
    collection = Collection.create(tmp_path / "c", device="cpu")
    first = sorted((ASSETS / "pdfs").glob("*.pdf"))[0]
    report = index_paths(collection, [first], ItemEncoder(None, None, page_encoder=colqwen))
    [skipped] = report.skipped
    assert skipped.path == f"{first} (page 2)" and "gave no usable vectors" in skipped.reason
    assert report.items_added == len(collection) >= 2 and collection.info()["spaces"]["patches"]["pages"] == len(collection)


def test_page_models_are_refused_as_image_models_and_on_ray(tmp_path):
    from mmrank.encoders import load_image_encoder, load_page_encoder
    from mmrank.errors import InputError
    from mmrank.indexing import EncoderChoice
    from mmrank.ray_indexing import index_paths_on_ray

    with pytest.raises(InputError, match="late-interaction page model .* --page-model"):
        load_image_encoder(f"colvision:{FIXTURE}")
    with pytest.raises(InputError, match="gives one vector per item"):
        load_page_encoder("open_clip:ViT-B-32/laion2b_s34b_b79k")
    collection = Collection.create(tmp_path / "c", device="cpu")
    with pytest.raises(InputError, match="do not run on Ray yet"):
        index_paths_on_ray(collection, [ASSETS / "pdfs"], EncoderChoice(page_model=str(FIXTURE)))


@pytest.mark.slow
def test_the_command_line_indexes_with_a_page_model_and_searches_the_patches_path(tmp_path, run_cli):
    out = tmp_path / "docs"
    code, _, err = run_cli("index", ASSETS / "pdfs", "-o", out, "--page-model", FIXTURE, "--token-pooling", "2",
                           "--device", "cpu", "-q")
    assert code == 0, err
    code, info, _ = run_cli("info", out, "--json")
    space = json.loads(info)["spaces"]["patches"]
    assert space["encoder"] == f"colvision:{FIXTURE.resolve()};pool=2" and space["multi_vector"] == "float16"
    assert space["pages"] == json.loads(info)["items"]  # every page, text or not, has patch vectors
    pipeline = tmp_path / "patches.yaml"
    pipeline.write_text("retriever: {paths: [patches, bm25], fusion: rrf, depth: 10}\nrerankers: []\n")
    code, out_json, err = run_cli("search", out, QUESTIONS[0], "--pipeline", pipeline, "--json", "-k", "3",
                                  "--device", "cpu")
    assert code == 0, err
    hits = json.loads(out_json)
    assert len(hits) == 3 and any("patches" in hit["found_by"] for hit in hits)
    code, _, err = run_cli("index", ASSETS / "pdfs", "-o", tmp_path / "x", "--token-pooling", "2")
    assert code == 2 and "--token-pooling and --patch-dtype go with --page-model" in err


@pytest.mark.slow
def test_eval_on_vidore_ranks_with_the_page_model(tmp_path, run_cli, colqwen):
    from tests.datasets.test_vidore import write_qa

    root = write_qa(tmp_path / "vidore")
    pipeline = tmp_path / "patches.yaml"
    pipeline.write_text("retriever: {paths: [patches], depth: 10}\nrerankers: []\n")
    code, out, err = run_cli("eval", root, "--format", "vidore", "--pipeline", pipeline, "--page-model", FIXTURE,
                             "--collection", tmp_path / "c", "--save-runs", tmp_path / "runs", "--json",
                             "--device", "cpu")
    assert code == 0, err
    [stage] = json.loads(out)["stages"]
    assert stage["metrics"]["queries"] == 2
    collection = Collection.open(tmp_path / "c", device="cpu")
    run = {}
    for line in (tmp_path / "runs" / "retrieve.run").read_text().splitlines():
        qid, _, item_id, rank, _, _ = line.split()
        run.setdefault(qid, []).append(item_id)
    from mmrank.datasets import load_dataset

    dataset = load_dataset("vidore", root)
    for query in dataset.queries:
        if query.id in run:
            expected = [item_id for item_id, _ in _by_hand(collection, colqwen, query.text)]
            assert run[query.id] == expected[:len(run[query.id])]


@pytest.mark.slow
def test_eval_on_mmdocir_scores_each_question_within_its_document(tmp_path, run_cli, colqwen):
    from mmrank.datasets import load_dataset
    from tests.datasets.test_mmdocir import write_mmdocir

    root = write_mmdocir(tmp_path / "MMDocIR")
    pipeline = tmp_path / "patches.yaml"
    pipeline.write_text("retriever: {paths: [patches], depth: 10}\nrerankers: []\n")
    code, out, err = run_cli("eval", root, "--format", "mmdocir", "--pipeline", pipeline, "--page-model", FIXTURE,
                             "--collection", tmp_path / "c", "--save-runs", tmp_path / "runs", "--json",
                             "--device", "cpu")
    assert code == 0, err
    [stage] = json.loads(out)["stages"]
    assert "macro/recall@1" in stage["metrics"]
    collection = Collection.open(tmp_path / "c", device="cpu")
    run = {}
    for line in (tmp_path / "runs" / "retrieve.run").read_text().splitlines():
        qid, _, item_id, *_ = line.split()
        run.setdefault(qid, []).append(item_id)
    dataset = load_dataset("mmdocir", root)
    for query in dataset.queries:
        expected = [item_id for item_id, _ in _by_hand(collection, colqwen, query.text) if item_id in query.candidates]
        assert run[query.id] == expected  # its own document's pages, every one, by MaxSim
