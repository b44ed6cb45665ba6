"""`mmrank search --pipeline docqa-ragllava --mllm PATH`: the CLI swaps in the given model for the
pipeline's MLLM stage; --mllm on a pipeline without one is an error, not silently ignored. A server
that fails leaves the first-stage ranking, noted, unless the pipeline says ``on_unavailable: fail``."""

from __future__ import annotations

import json

from tests.mllm.test_openai import FaultyServer
from tests.paths import ASSETS

QUESTION = "What was the operating margin?"


def test_search_with_an_mllm_reranker_from_the_command_line(tmp_path, run_cli, tiny_clip_dir, tiny_mllm_dir):
    code, _, err = run_cli("index", ASSETS / "pdfs", "-o", tmp_path / "c", "--pages-as-images",
                           "--image-model", f"local-dir:{tiny_clip_dir}", "--quiet")
    assert code == 0, err
    code, out, err = run_cli("search", tmp_path / "c", "What was the operating margin?", "-k", "3", "--json",
                             "--pipeline", "docqa-ragllava", "--mllm", tiny_mllm_dir)
    assert code == 0, err
    hits = json.loads(out)
    assert len(hits) == 3 and all("pointwise" in hit["stages"] for hit in hits)
    probabilities = [hit["stages"]["pointwise"]["score"] for hit in hits]
    assert probabilities == sorted(probabilities, reverse=True) and all(0 < p < 1 for p in probabilities)

    code, _, err = run_cli("search", tmp_path / "c", "margin", "--pipeline", "docqa-text", "--mllm", tiny_mllm_dir)
    assert code == 2 and "--mllm/--mllm-url" in err and "need a pipeline with an MLLM reranker" in err


def test_search_prints_the_reasoning_of_a_reasoning_stage(tmp_path, run_cli, tiny_clip_dir, tiny_mllm_dir):
    code, _, err = run_cli("index", ASSETS / "pdfs", "-o", tmp_path / "c", "--pages-as-images",
                           "--image-model", f"local-dir:{tiny_clip_dir}", "--quiet")
    assert code == 0, err
    pipeline = tmp_path / "reasoning.yaml"
    pipeline.write_text("retriever: {paths: [image, text, bm25], depth: 5}\n"
                        "rerankers: [{type: reasoning, depth: 5, window: 5, max_new_tokens: 12}]\n")
    code, out, err = run_cli("search", tmp_path / "c", "What was the operating margin?", "-k", "5",
                             "--pipeline", pipeline, "--mllm", tiny_mllm_dir)
    assert code == 0, err
    from mmrank.collection import Collection
    from mmrank.pipeline import Pipeline

    with Collection.open(tmp_path / "c") as collection:
        ranking = Pipeline.from_yaml(pipeline, collection, mllm=str(tiny_mllm_dir)).search(
            "What was the operating margin?", k=5)
    [reasoning] = ranking.explanations["reasoning"]
    assert reasoning.strip() and f"reasoning: {reasoning.strip()}" in out


def test_a_failing_server_leaves_the_first_stage_ranking(tmp_path, run_cli, tiny_clip_dir):
    code, _, err = run_cli("index", ASSETS / "pdfs", "-o", tmp_path / "c", "--pages-as-images",
                           "--image-model", f"local-dir:{tiny_clip_dir}", "--quiet")
    assert code == 0, err
    first_stage = tmp_path / "first-stage.yaml"
    first_stage.write_text("retriever: {paths: [image, text, bm25], fusion: rrf, depth: 50}\nrerankers: []\n")
    code, out, err = run_cli("search", tmp_path / "c", QUESTION, "-k", "5", "--json", "--pipeline", first_stage)
    assert code == 0, err
    expected = [hit["id"] for hit in json.loads(out)]

    with FaultyServer() as server:  # every chat request answered 500
        code, out, err = run_cli("search", tmp_path / "c", QUESTION, "-k", "5", "--json",
                                 "--pipeline", "docqa-ragllava", "--mllm-url", server.url)
        assert code == 0, err
        assert server.requests >= 4  # the SDK's 3 retries came first
    hits = json.loads(out)
    assert [hit["id"] for hit in hits] == expected
    notes = [hit["stages"]["pointwise"].get("note", "") for hit in hits]
    assert all(note.startswith(f"model unavailable: The MLLM server at {server.url} answered 500 after 3 retries: "
                               "'the engine died'.") for note in notes), notes
    assert [hit["stages"]["pointwise"]["score"] for hit in hits] == [None] * 5

    failing = tmp_path / "fail.yaml"
    failing.write_text("retriever: {paths: [image, text, bm25], fusion: rrf, depth: 50}\n"
                       "rerankers: [{type: pointwise, depth: 5, on_unavailable: fail,\n"
                       "             model_options: {max_retries: 1}}]\n")
    with FaultyServer() as server:
        code, out, err = run_cli("search", tmp_path / "c", QUESTION, "--pipeline", failing, "--mllm-url", server.url)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"Error: The MLLM server at {server.url} answered 500 after 1 retry: "
                                        "'the engine died'. The server failed or is overloaded: check its log, or "
                                        "raise max_retries or timeout in model_options."]
