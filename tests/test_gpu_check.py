"""benchmarks/gpu_check.py's pure parts on the CPU at tiny sizes: recall, shortfall, the table, the
error wrapping, JSON parsing, and the search-parity and collection checks (torch backend vs FAISS)."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from tests.paths import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def test_recall_at_k_counts_the_overlap_of_the_first_k(gpu_check):
    truth = [["a", "b", "c"], ["d", "e", "f"]]
    assert gpu_check.recall_at_k(truth, truth, 3) == 1.0
    assert gpu_check.recall_at_k([["c", "b", "x"], ["f", "y", "z"]], truth, 3) == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert gpu_check.recall_at_k([["a", "b", "c", "d"]], [["a", "b", "c", "x"]], 3) == 1.0  # only the first k
    with pytest.raises(ValueError):
        gpu_check.recall_at_k([["a"]], [], 1)


def test_shortfall_is_zero_for_exact_results_and_the_gap_for_a_wrong_one(gpu_check):
    database = np.eye(4, dtype=np.float32)
    queries = np.array([[0.9, 0.5, 0.1, 0.0]], dtype=np.float32)
    truth_scores = np.array([[0.9, 0.5]], dtype=np.float32)
    assert gpu_check.shortfall([["0", "1"]], truth_scores, database, queries, 2) == 0.0
    assert gpu_check.shortfall([["0", "2"]], truth_scores, database, queries, 2) == pytest.approx(0.4)


def test_format_rows_aligns_every_column_and_shows_seconds_and_memory(gpu_check):
    rows = [gpu_check.Row("exact search", "recall 1.0", "1.0", "pass", 1.234, 0.5),
            gpu_check.Row("open_clip ViT-L-14 encode_image", "skipped (no CUDA)", status="skipped")]
    lines = gpu_check.format_rows(rows).splitlines()
    assert lines[0].split() == ["check", "result", "target", "status", "s", "peak", "GiB"]
    assert set(lines[1]) == {"-", " "} and len(lines) == 4
    assert lines[2].split() == ["exact", "search", "recall", "1.0", "1.0", "pass", "1.2", "0.50"]
    assert lines[3].index("skipped (no CUDA)") == lines[2].index("recall 1.0")
    assert lines[3].index("skipped", lines[3].index("CUDA")) == lines[2].index("pass")
    assert gpu_check.summary(rows) == "1 pass, 1 skipped"


def test_run_check_turns_an_error_into_a_fail_row_and_times_each_check(gpu_check):
    def broken():
        raise RuntimeError("no such\nthing")

    [row] = gpu_check.run_check("broken check", broken, "cpu")
    assert row.status == "FAIL" and row.result == "error: RuntimeError: no such thing"
    assert row.seconds is not None and row.peak_gib is None
    rows = gpu_check.run_check("fine", lambda: [gpu_check.Row("a", "1"), gpu_check.Row("b", "2")], "cpu")
    assert rows[0].seconds is not None and rows[1].seconds is None


def test_parse_json_rows_finds_the_list_among_other_output(gpu_check):
    out = 'loading...\n[{"method": "sqaf", "queries_per_s": 3.5}]\n'
    assert gpu_check.parse_json_rows(out) == [{"method": "sqaf", "queries_per_s": 3.5}]
    assert gpu_check.parse_json_rows('[{"a": 1},\n {"a": 2}]') == [{"a": 1}, {"a": 2}]
    indented = 'model tiny\n[x] not json\n[\n  {\n    "k": 9,\n    "method": "ebr generate"\n  }\n]\n'
    assert gpu_check.parse_json_rows(indented) == [{"k": 9, "method": "ebr generate"}]
    with pytest.raises(ValueError):
        gpu_check.parse_json_rows("no json here\n[not json")


def test_missing_distributions_and_install_without_wheels(gpu_check, tmp_path):
    assert gpu_check.missing_distributions({"numpy": "numpy", "nope": "no_such_module_mmrank"}) == ["nope"]
    assert gpu_check.install_wheels(tmp_path, tmp_path / "site", []) == "nothing to install"
    message = gpu_check.install_wheels(tmp_path / "absent", tmp_path / "site", ["nope"])
    assert "no wheel folder" in message


def test_search_parity_torch_backend_on_cpu_matches_faiss(gpu_check):
    rows = gpu_check.search_parity(2_000, 64, 40, 10, "cpu", repeats=1)
    assert rows[0].check.startswith("exact search CPU FAISS Flat (N=2,000 D=64 Q=40 k=10)")
    assert "queries/s" in rows[0].result
    [parity] = rows[1:]
    assert parity.check == "exact search torch float32 on cpu vs CPU FAISS: recall@10"
    assert parity.result.startswith("1.0000; shortfall") and parity.status == "pass"


def test_collection_roundtrip_on_cpu(gpu_check, tmp_path):
    [row] = gpu_check.collection_roundtrip(500, 32, 10, 5, "cpu", tmp_path)
    assert row.status == "pass" and row.result.startswith("10/10 identical top-5")


def test_cpu_sizes_are_small(gpu_check):
    quick = gpu_check.sizes("cpu", quick=True)
    assert quick["n"] <= 5_000 and quick["clip_models"] == ("ViT-B-32",) and quick["mllm_arch"] == "tiny"
    assert quick["multi_n"] <= 5_000 and gpu_check.sizes("cuda", quick=False)["multi_n"] == 1_000_000
    full = gpu_check.sizes("cuda", quick=False)
    assert full["n"] == 1_000_000 and full["nq"] == 1000 and full["clip_batch"] == 256 and full["sg_q"] == 1000


def test_split_plan_uses_every_gpu_and_says_when_there_is_one(gpu_check):
    assert gpu_check.split_plan("cpu", 0) == ("cpu", ["cpu", "cpu"], None)
    assert gpu_check.split_plan("cuda", 1) == ("cuda:0", ["cuda:0", "cuda:0"], "1 GPU visible: skipped")
    assert gpu_check.split_plan("cuda", 3) == ("cuda:0", ["cuda:0", "cuda:1", "cuda:2"], None)


def test_torch_split_search_on_two_cpu_parts(gpu_check):
    rows = gpu_check.torch_split_search(600, 16, 12, 5, "cpu", ["cpu", "cpu"], repeats=1,
                                        moot="1 GPU visible: skipped")
    skipped, exact, random = rows
    assert (skipped.status, skipped.result) == ("skipped", "1 GPU visible: skipped")
    assert exact.check == "torch split search, integer vectors (2 parts on cpu; N=600 D=16 k=5)"
    assert (exact.result, exact.status) == ("identical labels and scores", "pass")
    assert random.result.startswith("12/12 identical rows; recall 1.0000") and random.status == "pass"


def test_multi_gpu_checks_on_the_cpu_skip_faiss(gpu_check):
    size = {"multi_n": 300, "dim": 8, "nq": 5, "k": 3, "repeats": 1}
    rows = gpu_check.multi_gpu_checks("cpu", size)
    assert [r.status for r in rows] == ["pass", "pass", "skipped"]
    assert rows[-1].check == "FAISS sharded / replicated over GPUs"


def test_faiss_multi_gpu_without_a_faiss_gpu_build_is_skipped(gpu_check):
    if hasattr(__import__("faiss"), "StandardGpuResources"):
        pytest.skip("this FAISS build has GPU support")
    [row] = gpu_check.faiss_multi_gpu(100, 8, 4, 3)
    assert (row.result, row.status) == ("skipped: no faiss GPU build", "skipped")


def test_the_maxsim_check_compares_the_torch_path_with_numpy(gpu_check):
    [row] = gpu_check.maxsim_check(6, 50, 16, 2, "cpu", 1)
    assert row.status == "pass" and "pages/s on cpu" in row.result
