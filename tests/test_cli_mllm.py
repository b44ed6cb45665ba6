"""`mmrank search --pipeline docqa-ragllava --mllm PATH`: the CLI swaps in the given model for the
pipeline's MLLM stage; --mllm on a pipeline without one is an error, not silently ignored."""

from __future__ import annotations

import json
from pathlib import Path


ASSETS = Path(__file__).resolve().parent.parent / "assets"




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
    assert code == 2 and "--mllm/--mllm-url need a pipeline with an MLLM reranker" in err
