"""The ViDoRe loader on tiny folders in the Hugging Face layouts of v1 QA, v1 BEIR / v2 and v3:
format detection, pages, queries, judgements, cached images, and every error."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmrank.datasets import load_dataset
from mmrank.datasets.vidore import detect_format, load_vidore
from mmrank.errors import InputError
from mmrank.types import Query
from tests.datasets.test_base import untouched

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SHARD = "test-00000-of-00001.parquet"


def _png(width: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, 20), (width, 0, 0)).save(buffer, "PNG")
    return buffer.getvalue()


def _image(width: int) -> dict[str, Any]:
    return {"bytes": _png(width), "path": f"page_{width}.png"}


def _size(path: str) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def write_table(path: Path, rows: list[dict[str, Any]], types: dict[str, pa.DataType]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, pa.schema(list(types.items()))), path)
    return path


# --- v1 QA -------------------------------------------------------------------------------------

QA_TYPES = {"query": pa.string(), "image": IMAGE, "image_filename": pa.string(),
            "answer": pa.string()}
QA_ROWS = [
    {"query": "What is the revenue?", "image": _image(30), "image_filename": "docs/a.png", "answer": "1"},
    {"query": None, "image": _image(31), "image_filename": "docs/b.png", "answer": None},
    # The same question on another page: ViDoReEvaluatorQA judges only the last row's page
    # relevant (qa_relevance="last"); the BEIR copies MTEB reads judge both ("all").
    {"query": "What is the revenue?", "image": _image(32), "image_filename": "docs/c.png", "answer": "2"},
    # The same page again, with another question: one item.
    {"query": "Who signed it?", "image": _image(99), "image_filename": "docs/c.png", "answer": "Bo"},
    {"query": "  ", "image": _image(33), "image_filename": "docs/d.png", "answer": None},
]


def write_qa(root: Path, rows: list[dict[str, Any]] = QA_ROWS, name: str = f"data/{SHARD}") -> Path:
    write_table(root / name, rows, QA_TYPES)
    return root


def test_qa_rows_give_deduplicated_pages_and_queries(tmp_path: Path) -> None:
    root = write_qa(tmp_path / "docvqa_test_subsampled")
    dataset = load_vidore(root)

    assert [item.id for item in dataset.items] == ["docs/a.png", "docs/b.png", "docs/c.png", "docs/d.png"]
    assert {(item.kind, item.text) for item in dataset.items} == {("page", None)}
    # The first row of a page gives its image (docs/c.png is 32 pixels wide, not 99).
    assert [_size(item.source) for item in dataset.items] == [(30, 20), (31, 20), (32, 20), (33, 20)]
    assert {Path(item.source).parent for item in dataset.items} == {root / ".mmrank-pages"}
    assert {Path(item.source).suffix for item in dataset.items} == {".png"}
    assert dataset.queries == [Query(id="q0", text="What is the revenue?"),
                               Query(id="q3", text="Who signed it?")]
    assert dataset.qrels == {"q0": {"docs/c.png": 1}, "q3": {"docs/c.png": 1}}
    assert (dataset.name, dataset.split) == ("docvqa_test_subsampled", "test")
    assert dataset.metrics[0] == "ndcg@5"
    assert (dataset.group_by, dataset.averaging, dataset.ignored) == (None, "trec_eval", {})
    assert detect_format(root) == "qa"
    every_row = load_vidore(root, qa_relevance="all")
    assert every_row.qrels == {"q0": {"docs/a.png": 1, "docs/c.png": 1}, "q3": {"docs/c.png": 1}}


def test_qa_table_at_the_root_and_in_several_shards(tmp_path: Path) -> None:
    single = load_vidore(write_qa(tmp_path / "flat", name="tabfquad.parquet"))
    assert [q.id for q in single.queries] == ["q0", "q3"]

    root = tmp_path / "sharded"
    write_qa(root, QA_ROWS[:2], "data/test-00000-of-00002.parquet")
    write_qa(root, QA_ROWS[2:], "data/test-00001-of-00002.parquet")
    write_qa(root, QA_ROWS[:1], "data/train-00000-of-00001.parquet")  # another split: not read
    dataset = load_vidore(root)
    assert [q.id for q in dataset.queries] == ["q0", "q3"]  # row numbers run on across shards
    assert dataset.qrels == {"q0": {"docs/c.png": 1}, "q3": {"docs/c.png": 1}}
    assert len(dataset.items) == 4


def test_qa_image_given_by_path_only(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "pages").mkdir(parents=True)
    Image.new("RGB", (12, 34)).save(root / "pages" / "a.png")
    rows = [{"query": "q", "image": {"bytes": None, "path": "pages/a.png"}, "image_filename": "a.png",
             "answer": None}]
    dataset = load_vidore(write_qa(root, rows))
    assert dataset.items[0].source == str(root / "pages" / "a.png")
    assert not (root / ".mmrank-pages").exists()


def test_qa_errors_name_the_file_and_row(tmp_path: Path) -> None:
    no_image = [dict(QA_ROWS[0]), dict(QA_ROWS[1], image={"bytes": None, "path": "gone.png"})]
    with pytest.raises(InputError, match=rf"{SHARD} row 1 \(docs/b\.png\): the image has no bytes "
                                         r"and its path 'gone\.png' is not a file under"):
        load_vidore(write_qa(tmp_path / "a", no_image))
    no_name = [dict(QA_ROWS[0]), dict(QA_ROWS[1], image_filename="")]
    with pytest.raises(InputError, match=rf"{SHARD} row 1: image_filename must be a non-empty string"):
        load_vidore(write_qa(tmp_path / "b", no_name))
    with pytest.raises(InputError, match=rf"{SHARD}: no row has a query"):
        load_vidore(write_qa(tmp_path / "c", [QA_ROWS[1]]))


def test_qa_has_no_language_filter(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="language filter needs a queries config .* format qa"):
        load_vidore(write_qa(tmp_path / "ds"), language="english")


def test_missing_split_lists_the_splits_found(tmp_path: Path) -> None:
    root = write_qa(tmp_path / "ds", name="data/train-00000-of-00001.parquet")
    with pytest.raises(InputError, match=r"ds has no parquet files for split 'test'; splits found: train"):
        load_vidore(root)


# --- v1 BEIR / v2 ------------------------------------------------------------------------------

BEIR_TYPES = {
    "corpus": {"corpus-id": pa.int64(), "image": IMAGE, "doc-id": pa.string()},
    "queries": {"query-id": pa.int64(), "query": pa.string(), "language": pa.string()},
    "qrels": {"query-id": pa.int64(), "corpus-id": pa.int64(), "score": pa.int64()},
}
BEIR_ROWS = {
    "corpus": [{"corpus-id": i, "image": _image(40 + i), "doc-id": "report"} for i in range(3)],
    "queries": [
        {"query-id": 10, "query": "Where is the plant?", "language": "english"},
        {"query-id": 11, "query": "Où est l'usine ?", "language": "french"},
        {"query-id": 12, "query": "How much energy?", "language": "english"},
        {"query-id": 13, "query": "Never judged", "language": "english"},
    ],
    "qrels": [
        {"query-id": 10, "corpus-id": 0, "score": 1},
        {"query-id": 11, "corpus-id": 1, "score": 1},
        {"query-id": 12, "corpus-id": 2, "score": 1},
        {"query-id": 12, "corpus-id": 2, "score": 2},  # judged twice: the last score holds
        {"query-id": 12, "corpus-id": 0, "score": 1},
    ],
}


def write_configs(root: Path, rows: dict[str, list[dict[str, Any]]],
                  types: dict[str, dict[str, pa.DataType]], single_files: bool = False) -> Path:
    """One parquet per config: <root>/<config>/test-00000-of-00001.parquet, or <root>/<config>.parquet."""
    for config in ("corpus", "queries", "qrels"):
        name = f"{config}.parquet" if single_files else f"{config}/{SHARD}"
        write_table(root / name, rows[config], types[config])
    return root


def _beir(root: Path, **changes: list[dict[str, Any]]) -> Path:
    return write_configs(root, {**BEIR_ROWS, **changes}, BEIR_TYPES)


def test_beir_configs_give_pages_queries_and_judgements(tmp_path: Path) -> None:
    root = _beir(tmp_path / "esg_reports_v2")
    dataset = load_vidore(root)

    assert detect_format(root) == "beir"
    assert [item.id for item in dataset.items] == ["0", "1", "2"]
    assert [(item.kind, item.text) for item in dataset.items] == [("page", None)] * 3
    assert [_size(item.source) for item in dataset.items] == [(40, 20), (41, 20), (42, 20)]
    assert dataset.queries == [  # query 13 has no judgement
        Query(id="10", text="Where is the plant?", metadata={"language": "english"}),
        Query(id="11", text="Où est l'usine ?", metadata={"language": "french"}),
        Query(id="12", text="How much energy?", metadata={"language": "english"}),
    ]
    assert dataset.qrels == {"10": {"0": 1}, "11": {"1": 1}, "12": {"2": 2, "0": 1}}
    assert dataset.metrics[0] == "ndcg@5"
    assert all(query.candidates is None for query in dataset.queries)


def test_beir_single_files_and_language_filter(tmp_path: Path) -> None:
    root = write_configs(tmp_path / "ds", BEIR_ROWS, BEIR_TYPES, single_files=True)
    dataset = load_vidore(root, language="French")
    assert [q.id for q in dataset.queries] == ["11"]
    assert dataset.qrels == {"11": {"1": 1}}
    assert len(dataset.items) == 3  # the corpus stays whole


def test_v3_configs_use_markdown_and_ndcg_at_10(tmp_path: Path) -> None:
    types = {
        "corpus": {"corpus_id": pa.int64(), "image": IMAGE, "doc_id": pa.string(),
                   "markdown": pa.string(), "page_number_in_doc": pa.int64()},
        "queries": {"query_id": pa.int64(), "query": pa.string(), "language": pa.string(),
                    "query_types": pa.list_(pa.string())},
        "qrels": {"query_id": pa.int64(), "corpus_id": pa.int64(), "score": pa.int64(),
                  "content_type": pa.list_(pa.string())},
    }
    rows = {
        "corpus": [{"corpus_id": i, "image": _image(50 + i), "doc_id": "hr", "markdown": f"# Page {i}",
                    "page_number_in_doc": i} for i in range(2)],
        "queries": [{"query_id": 0, "query": "Leave policy?", "language": "english",
                     "query_types": ["extractive"]}],
        "qrels": [{"query_id": 0, "corpus_id": 1, "score": 2, "content_type": ["text"]}],
    }
    root = write_configs(tmp_path / "vidore_v3_hr", rows, types)
    dataset = load_vidore(root)

    assert detect_format(root) == "v3"
    assert [(item.id, item.text) for item in dataset.items] == [("0", "# Page 0"), ("1", "# Page 1")]
    assert _size(dataset.items[1].source) == (51, 20)
    assert dataset.queries == [Query(id="0", text="Leave policy?", metadata={"language": "english"})]
    assert dataset.qrels == {"0": {"1": 2}}
    assert dataset.metrics[0] == "ndcg@10"
    assert (dataset.averaging, dataset.group_by) == ("trec_eval", None)  # one language: no groups


def test_second_load_reuses_the_cached_images(tmp_path: Path) -> None:
    root = _beir(tmp_path / "ds")
    first = load_vidore(root, image_cache=tmp_path / "cache")
    stamps = {item.source: Path(item.source).stat().st_mtime_ns for item in first.items}
    second = load_vidore(root, image_cache=tmp_path / "cache")
    assert {item.source: Path(item.source).stat().st_mtime_ns for item in second.items} == stamps
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        Path(source).name for source in stamps)


def test_load_dataset_passes_the_options(tmp_path: Path) -> None:
    dataset = load_dataset("vidore", _beir(tmp_path / "ds"), format="beir", language="english")
    assert [q.id for q in dataset.queries] == ["10", "12"]


# --- detection and malformed folders -----------------------------------------------------------


def test_undetectable_folder_lists_what_it_found_and_every_layout(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    with pytest.raises(InputError) as error:
        load_vidore(root)
    message = str(error.value)
    assert f"Cannot tell which ViDoRe format {root} holds: the folder is empty." in message
    assert "qa (v1 QA): one table <root>/data/<split>-*.parquet" in message
    assert "beir (v1 BEIR, v2): configs corpus (corpus-id, image)" in message
    assert "v3: configs corpus (corpus_id, image, markdown)" in message

    (root / "notes.txt").write_text("x")
    (root / "images").mkdir()
    with pytest.raises(InputError, match=r"holds: found images/, notes\.txt\. Expected one of"):
        load_vidore(root)
    with pytest.raises(InputError, match=r"ViDoRe dataset folder not found: .*nowhere\. Expected"):
        load_vidore(tmp_path / "nowhere")


def test_partial_configs_name_the_missing_ones(tmp_path: Path) -> None:
    root = _beir(tmp_path / "ds")
    (root / "qrels" / SHARD).unlink()
    with pytest.raises(InputError, match=r"holds the config\(s\) corpus, queries but not qrels\. Expected"):
        load_vidore(root)


def test_corpus_without_an_id_column(tmp_path: Path) -> None:
    types = {**BEIR_TYPES, "corpus": {"id": pa.int64(), "image": IMAGE}}
    rows = {**BEIR_ROWS, "corpus": [{"id": 0, "image": _image(40)}]}
    root = write_configs(tmp_path / "ds", rows, types)
    expected = (r"corpus/test-00000-of-00001\.parquet has neither a corpus-id column \(format beir\) "
                r"nor a corpus_id column \(format v3\); columns found: id, image\.")
    with pytest.raises(InputError, match=expected):
        load_vidore(root)


def test_explicit_format_overrides_detection(tmp_path: Path) -> None:
    root = _beir(tmp_path / "ds")
    with pytest.raises(InputError, match=r"ds has no parquet table\. Expected qa \(v1 QA\)"):
        load_vidore(root, format="qa")
    with pytest.raises(InputError, match=r"corpus/test-00000-of-00001\.parquet lacks the column\(s\) "
                                         r"corpus_id; columns found: corpus-id, image, doc-id\."):
        load_vidore(root, format="V3")
    with pytest.raises(InputError, match="Unknown ViDoRe format 'v4': choose qa, beir, v3"):
        load_vidore(root, format="v4")
    with pytest.raises(InputError, match=r"has no corpus config: expected .*corpus/<split>-\*\.parquet"):
        load_vidore(write_qa(tmp_path / "qa"), format="beir")


@pytest.mark.parametrize(
    ("config", "rows", "expected"),
    [
        ("corpus", [{"corpus-id": 0, "image": _image(40)}, {"corpus-id": 0, "image": _image(41)}],
         r"corpus/test-00000-of-00001\.parquet row 1: duplicate corpus-id '0' \(first at row 0\)"),
        ("corpus", [{"corpus-id": None, "image": _image(40)}],
         (r"corpus/test-00000-of-00001\.parquet row 0: corpus-id must be a non-empty string or an "
         r"integer, got None")),
        ("queries", [{"query-id": 10, "query": "a"}, {"query-id": 10, "query": "b"}],
         r"queries/test-00000-of-00001\.parquet row 1: duplicate query-id '10'"),
        ("queries", [{"query-id": 10, "query": None}],
         r"queries/test-00000-of-00001\.parquet row 0: query '10' has no text"),
        ("qrels", [{"query-id": 10, "corpus-id": 0, "score": None}],
         r"qrels/test-00000-of-00001\.parquet row 0: score must be an integer, got None"),
        ("qrels", [{"query-id": 10, "corpus-id": 0, "score": 1}] + [
            {"query-id": 99, "corpus-id": 0, "score": 1}],
         (r"qrels/test-00000-of-00001\.parquet: 1 query-id value\(s\) missing from the queries "
         r"config: '99'\.")),
        ("qrels", [{"query-id": 10, "corpus-id": 7 + i, "score": 1} for i in range(7)],
         (r"7 corpus-id value\(s\) missing from the corpus config: '7', '8', "
         r"'9', '10', '11' and 2 more\.")),
        ("qrels", [], r"qrels/test-00000-of-00001\.parquet holds no relevance judgements"),
    ],
)
def test_bad_rows_name_the_file_and_row(tmp_path: Path, config: str, rows: list[dict[str, Any]],
                                        expected: str) -> None:
    root = _beir(tmp_path / "ds", **{config: rows})
    with pytest.raises(InputError, match=expected):
        load_vidore(root)


def test_float_scores_that_are_whole_numbers_are_accepted(tmp_path: Path) -> None:
    types = {**BEIR_TYPES, "qrels": {"query-id": pa.int64(), "corpus-id": pa.int64(),
                                     "score": pa.float64()}}
    rows = {**BEIR_ROWS, "qrels": [{"query-id": 10, "corpus-id": 0, "score": 2.0}]}
    assert load_vidore(write_configs(tmp_path / "a", rows, types)).qrels == {"10": {"0": 2}}
    rows = {**BEIR_ROWS, "qrels": [{"query-id": 10, "corpus-id": 0, "score": 0.5}]}
    with pytest.raises(InputError, match=r"row 0: score must be an integer, got 0\.5"):
        load_vidore(write_configs(tmp_path / "b", rows, types))


def test_language_filter_errors(tmp_path: Path) -> None:
    root = _beir(tmp_path / "ds")
    expected = (r"No query in .*queries/test-00000-of-00001\.parquet has language 'german'; "
                r"languages found: english, french\.")
    with pytest.raises(InputError, match=expected):
        load_vidore(root, language="german")

    types = {**BEIR_TYPES, "queries": {"query-id": pa.int64(), "query": pa.string()}}
    root = write_configs(tmp_path / "v1", BEIR_ROWS, types)
    expected = r"lacks the column\(s\) language; columns found: query-id, query\."
    with pytest.raises(InputError, match=expected):
        load_vidore(root, language="english")
    assert load_vidore(root).queries[0] == Query(id="10", text="Where is the plant?")


def test_missing_qrels_column_names_file_and_columns(tmp_path: Path) -> None:
    types = {**BEIR_TYPES, "qrels": {"query-id": pa.int64(), "corpus-id": pa.int64()}}
    rows = {**BEIR_ROWS, "qrels": [{"query-id": 10, "corpus-id": 0}]}
    root = write_configs(tmp_path / "ds", rows, types)
    expected = re.escape(f"{root / 'qrels' / SHARD} lacks the column(s) score; columns found: "
                         "query-id, corpus-id.")
    with pytest.raises(InputError, match=expected):
        load_vidore(root)


def test_unusable_image_cache_is_named(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(InputError, match=r"image_cache '.*taken' is not a writable folder"):
        load_vidore(_beir(tmp_path / "ds"), image_cache=tmp_path / "taken")


# --- image paths stay inside the dataset folder ------------------------------------------------


def _outside(tmp_path: Path) -> Path:
    """A real image outside the dataset folder: nothing may look at it."""
    (tmp_path / "outside").mkdir()
    Image.new("RGB", (9, 9), "red").save(tmp_path / "outside" / "secret.png")
    return tmp_path / "outside"


@pytest.mark.parametrize("bad", ["../outside/secret.png", "pages/../../outside/secret.png", "ABSOLUTE"])
def test_an_image_path_leaving_the_folder_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    outside = _outside(tmp_path)
    bad = str(outside / "secret.png") if bad == "ABSOLUTE" else bad
    rows = [dict(QA_ROWS[0]), dict(QA_ROWS[1], image={"bytes": None, "path": bad})]
    root = write_qa(tmp_path / "ds", rows)
    touched = untouched(monkeypatch, outside)
    with pytest.raises(InputError) as error:
        load_vidore(root)
    assert str(error.value).startswith(
        f"{root / 'data' / SHARD} row 1 (docs/b.png) image path: the path {bad!r} ")
    assert f"must lie inside the dataset folder {root}." in str(error.value)
    assert touched == []


def test_a_corpus_image_path_leaving_the_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outside = _outside(tmp_path)
    corpus = [{"corpus-id": 0, "image": {"bytes": None, "path": "../outside/secret.png"}}]
    root = _beir(tmp_path / "ds", corpus=corpus)
    touched = untouched(monkeypatch, outside)
    with pytest.raises(InputError, match=re.escape(f"{root / 'corpus' / SHARD} row 0 (0) image path: the path "
                                                   "'../outside/secret.png' climbs out of the folder")):
        load_vidore(root)
    assert touched == []


def test_the_path_beside_an_images_bytes_is_never_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Hugging Face keeps the name of the file an image came from beside its bytes; the bytes are
    # the image, the name is never opened, so it loads whatever it says.
    outside = _outside(tmp_path)
    rows = [dict(QA_ROWS[0], image={"bytes": _png(30), "path": str(outside / "secret.png")})]
    root = write_qa(tmp_path / "ds", rows)
    touched = untouched(monkeypatch, outside)
    [item] = load_vidore(root).items
    assert Path(item.source).parent == root / ".mmrank-pages" and _size(item.source) == (30, 20)
    assert touched == []


def test_nested_and_symlinked_image_paths_still_load(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "pages" / "a").mkdir(parents=True)
    Image.new("RGB", (12, 34)).save(root / "pages" / "a" / "b.png")
    disk = tmp_path / "other-disk"
    disk.mkdir()
    Image.new("RGB", (56, 78)).save(disk / "c.png")
    (root / "linked").symlink_to(disk, target_is_directory=True)
    rows = [{"query": "q", "image": {"bytes": None, "path": "pages/a/b.png"}, "image_filename": "b.png",
             "answer": None},
            {"query": "r", "image": {"bytes": None, "path": "linked/c.png"}, "image_filename": "c.png",
             "answer": None}]
    dataset = load_vidore(write_qa(root, rows))
    assert [item.source for item in dataset.items] == [str(root / "pages" / "a" / "b.png"),
                                                        str(root / "linked" / "c.png")]
    assert _size(dataset.items[1].source) == (56, 78)


# --- scored as the official evaluators score ---------------------------------------------------


def _pytrec_means(qrels: dict[str, dict[str, int]], rankings: dict[str, list[str]],
                  measures: dict[str, str]) -> dict[str, float]:
    """pytrec_eval on ``rankings`` (best first, given decreasing scores), the mean over the
    queries it returns, as vidore-benchmark's CustomRetrievalEvaluator and MTEB's
    calculate_retrieval_scores average (before MTEB's rounding)."""
    pytrec_eval = pytest.importorskip("pytrec_eval")
    run = {qid: {doc: float(len(order) - rank) for rank, doc in enumerate(order)}
           for qid, order in rankings.items()}
    scores = pytrec_eval.RelevanceEvaluator(qrels, set(measures.values())).evaluate(run)
    return {ours: sum(s[theirs] for s in scores.values()) / len(scores) for ours, theirs in measures.items()}


PYTREC = {"ndcg@5": "ndcg_cut_5", "recall@1": "recall_1", "recall@5": "recall_5"}
# Pages 0..3; "docs/p1.png" is also a query's text, which ViDoReEvaluatorQA (ignore_identical_ids)
# drops from that query's ranking.
QA_PARITY_ROWS = [
    {"query": "revenue?", "image": _image(60), "image_filename": "p0.png", "answer": None},
    {"query": "p1.png", "image": _image(61), "image_filename": "p1.png", "answer": None},
    {"query": "revenue?", "image": _image(62), "image_filename": "p2.png", "answer": None},
    {"query": None, "image": _image(63), "image_filename": "p3.png", "answer": None},
]
QA_RANKINGS = {"q0": ["p0.png", "p1.png", "p2.png", "p3.png"], "q1": ["p3.png", "p1.png", "p0.png", "p2.png"]}


def _vidore_qa_reference(rows: list[dict[str, Any]], rankings: dict[str, list[str]],
                         every_row: bool) -> dict[str, float]:
    """ViDoReEvaluatorQA re-done by hand (every_row=False): queries keyed by text, the relevant page
    the last row's, a page whose file name equals the query's text popped from its results; or
    the BEIR copy MTEB reads (every_row=True): every row's page relevant, nothing popped."""
    ids = {"revenue?": "q0", "p1.png": "q1"}
    qrels: dict[str, dict[str, int]] = {}
    for row in rows:
        if row["query"] is not None:
            judged = qrels.setdefault(row["query"], {}) if every_row else {}
            judged[row["image_filename"]] = 1
            qrels[row["query"]] = judged
    runs = {text: [page for page in rankings[qid] if every_row or page != text] for text, qid in ids.items()}
    return _pytrec_means(qrels, runs, PYTREC)


@pytest.mark.parametrize("qa_relevance", ["last", "all"])
def test_qa_scores_equal_the_official_evaluators(tmp_path: Path, qa_relevance: str) -> None:
    from mmrank.evaluation import score_judgements

    dataset = load_vidore(write_qa(tmp_path / "ds", QA_PARITY_ROWS), qa_relevance=qa_relevance)
    last = qa_relevance == "last"
    assert dataset.qrels == {"q0": {"p2.png": 1} if last else {"p0.png": 1, "p2.png": 1}, "q1": {"p1.png": 1}}
    assert dataset.ignored == ({"q1": frozenset({"p1.png"})} if last else {})
    scored = score_judgements(QA_RANKINGS, dataset.judgements()[""], dataset.metrics)
    reference = _vidore_qa_reference(QA_PARITY_ROWS, QA_RANKINGS, every_row=not last)
    for name in PYTREC:
        assert scored[name] == pytest.approx(reference[name], abs=1e-12), name
    # By hand. "last": q0's page p2 at rank 3; q1's page p1 is ignored (its own text), so 0.
    # "all": q0's pages at ranks 1 and 3; q1's page p1 at rank 2.
    if last:
        assert scored["ndcg@5"] == pytest.approx((1 / math.log2(4) + 0) / 2)
        assert (scored["recall@1"], scored["recall@5"]) == (0.0, 0.5)
    else:
        q0 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
        assert scored["ndcg@5"] == pytest.approx((q0 + 1 / math.log2(3)) / 2)
        assert (scored["recall@1"], scored["recall@5"]) == (0.25, 1.0)


MULTILINGUAL = {
    "corpus": [{"corpus-id": i, "image": _image(70 + i), "doc-id": "report"} for i in range(4)],
    "queries": [
        {"query-id": 20, "query": "plant?", "language": "english"},
        {"query-id": 21, "query": "energy?", "language": "english"},
        {"query-id": 22, "query": "usine ?", "language": "french"},
        {"query-id": 23, "query": "énergie ?", "language": "french"},
    ],
    "qrels": [
        {"query-id": 20, "corpus-id": 0, "score": 1}, {"query-id": 20, "corpus-id": 1, "score": 2},
        {"query-id": 21, "corpus-id": 2, "score": 2}, {"query-id": 21, "corpus-id": 3, "score": 2},
        {"query-id": 21, "corpus-id": 2, "score": 1},  # judged twice: MTEB keeps the last score, 1
        {"query-id": 22, "corpus-id": 1, "score": 1},
        {"query-id": 23, "corpus-id": 0, "score": 0},  # judged, nothing relevant: counts as 0
    ],
}
MULTILINGUAL_RANKINGS = {"20": ["1", "2", "0", "3"], "21": ["2", "3", "0", "1"], "22": ["0", "2", "3", "1"],
                         "23": ["0", "1", "2", "3"]}


def _mteb_reference(rankings: dict[str, list[str]]) -> dict[str, float]:
    """A multilingual ViDoRe task as MTEB scores it: qrels read row by row (a later row of a pair
    replaces it), one subset per language (that language's queries, all the qrels), pytrec_eval's
    mean per subset; the task's score is the mean over the subsets."""
    qrels: dict[str, dict[str, int]] = {}
    for row in MULTILINGUAL["qrels"]:
        qrels.setdefault(str(row["query-id"]), {})[str(row["corpus-id"])] = row["score"]
    languages: dict[str, list[str]] = {}
    for row in MULTILINGUAL["queries"]:
        languages.setdefault(row["language"], []).append(str(row["query-id"]))
    reference = {}
    for language, qids in languages.items():
        means = _pytrec_means(qrels, {qid: rankings[qid] for qid in qids}, PYTREC)
        reference.update({f"{language}/{name}": value for name, value in means.items()})
    for name in PYTREC:
        reference[f"macro/{name}"] = sum(reference[f"{lang}/{name}"] for lang in languages) / len(languages)
    reference.update(_pytrec_means(qrels, rankings, PYTREC))  # every query at once
    return reference


def test_multilingual_beir_scores_equal_mtebs(tmp_path: Path) -> None:
    from mmrank.evaluation import evaluate
    from tests.datasets.test_cir import _fixed_pipeline

    dataset = load_vidore(write_configs(tmp_path / "esg_reports_v2", MULTILINGUAL, BEIR_TYPES))
    assert dataset.qrels["21"] == {"2": 1, "3": 2}
    assert (dataset.averaging, dataset.group_by, dataset.report_groups) == ("trec_eval", "language", True)
    [report] = evaluate(_fixed_pipeline(dataset, MULTILINGUAL_RANKINGS), dataset)
    reference = _mteb_reference(MULTILINGUAL_RANKINGS)
    assert report.metrics.pop("queries") == 4  # query 23 counts, with 0
    assert set(report.metrics) == set(reference)
    for name, value in reference.items():
        assert report.metrics[name] == pytest.approx(value, abs=1e-12), name
    # By hand: 21 ranks its pages (grades 1, 2) first and second: DCG (1 + 2/log2 3), ideal (2 + 1/log2 3).
    q21 = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    english = ((2 + 1 / math.log2(4)) / (2 + 1 / math.log2(3)) + q21) / 2
    french = (1 / math.log2(5) + 0) / 2
    assert report.metrics["english/ndcg@5"] == pytest.approx(english)
    assert report.metrics["french/ndcg@5"] == pytest.approx(french)
    assert report.metrics["macro/ndcg@5"] == pytest.approx((english + french) / 2)

    single = load_vidore(tmp_path / "esg_reports_v2", per_language=False)
    assert (single.group_by, single.report_groups) == (None, False)
    [report] = evaluate(_fixed_pipeline(single, MULTILINGUAL_RANKINGS), single)
    assert set(report.metrics) == {*PYTREC, "queries"}
    assert report.metrics["ndcg@5"] == pytest.approx(reference["ndcg@5"], abs=1e-12)


def test_scoring_options_are_checked(tmp_path: Path) -> None:
    root = write_qa(tmp_path / "ds")
    with pytest.raises(InputError, match=r"Unknown qa_relevance 'first': choose 'last': .*; 'all': "):
        load_vidore(root, qa_relevance="first")
    with pytest.raises(InputError, match=r"per_language must be true or false; got 'no'"):
        load_vidore(root, per_language="no")
