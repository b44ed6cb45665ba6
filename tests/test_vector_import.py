"""Bring your own embeddings: collections built from clip-retrieval style numpy and parquet shards."""

from __future__ import annotations

import json
import pathlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmrank.collection import Collection
from mmrank.errors import EncoderMismatchError, InputError
from mmrank.vector_import import find_shards, import_embeddings

DIM = 12
SIZES = (100, 120, 80)
ENCODER = "open_clip:ViT-B-32/laion2b_s34b_b79k"


def vectors(rows: int, seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)


def write_numpy(root: Path, sizes=SIZES, *, dim: int = DIM, metadata: bool = True) -> list[np.ndarray]:
    """clip-retrieval's inference output: img_emb/img_emb_N.npy and metadata/metadata_N.parquet."""
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    shards = []
    for number, rows in enumerate(sizes):
        matrix = vectors(rows, number, dim)
        np.save(root / "img_emb" / f"img_emb_{number}.npy", matrix)
        if metadata:
            names = [f"images/{number}/{row}.jpg" for row in range(rows)]
            pq.write_table(pa.table({
                "image_path": names,
                "caption": [f"photo {number}-{row}" for row in range(rows)],
                "url": [f"https://example.com/{number}/{row}.jpg" for row in range(rows)],
                "width": list(range(rows)),
                "tags": [["a", "b"]] * rows,  # not a scalar: left out of the metadata
            }), root / "metadata" / f"metadata_{number}.parquet", row_group_size=37)
        shards.append(matrix)
    return shards


def write_parquet(root: Path, sizes=SIZES, *, dim: int = DIM, kind=None) -> list[np.ndarray]:
    """Parquet shards: an id, the embedding (a list of floats) and a caption per row."""
    root.mkdir(parents=True)
    kind = kind or pa.list_(pa.float32())
    shards = []
    for number, rows in enumerate(sizes):
        matrix = vectors(rows, 10 + number, dim)
        pq.write_table(pa.table({
            "key": [f"doc-{number}-{row}" for row in range(rows)],
            "embedding": pa.array(list(matrix), type=kind),
            "caption": [f"passage n{number}r{row}" for row in range(rows)],
        }), root / f"part-{number}.parquet", row_group_size=50)
        shards.append(matrix)
    return shards


def exact_top_k(database: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    unit = database / np.linalg.norm(database, axis=1, keepdims=True)
    scores = queries @ unit.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def assert_search_is_exact(collection: Collection, ids: list[str], database: np.ndarray, space: str = "image"):
    queries = vectors(7, 99)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    order, scores = exact_top_k(database, queries, 10)
    hits = collection.search_vectors(space, queries, 10)
    assert [[item_id for item_id, _ in query] for query in hits] == [[ids[i] for i in row] for row in order]
    np.testing.assert_allclose([[score for _, score in query] for query in hits], scores, rtol=1e-5, atol=1e-5)


def numpy_ids(sizes=SIZES) -> list[str]:
    return [f"images/{number}/{row}.jpg" for number, rows in enumerate(sizes) for row in range(rows)]


# ----------------------------------------------------------------- the two layouts
def test_numpy_layout_imports_every_row_and_searches_exactly(tmp_path):
    shards = write_numpy(tmp_path / "embeddings")
    with Collection.create(tmp_path / "c") as collection:
        report = import_embeddings(collection, tmp_path / "embeddings", encoder=ENCODER, batch_size=64)
        assert (report.layout, report.files, report.added, report.bad_rows) == ("numpy", 3, 300, 0)
        assert report.bad_files == [] and report.warnings == []
        assert collection.info()["spaces"]["image"] == {"encoder": ENCODER, "dim": DIM, "vectors": 300}
        item = collection.get("images/1/7.jpg")
        assert (item.kind, item.source, item.text) == ("image", "images/1/7.jpg", "photo 1-7")
        assert dict(item.metadata) == {"caption": "photo 1-7", "url": "https://example.com/1/7.jpg", "width": 7}
        stored = collection.vectors(["images/2/3.jpg"], "image")[0]
        np.testing.assert_allclose(stored, shards[2][3] / np.linalg.norm(shards[2][3]), rtol=1e-6)
        assert_search_is_exact(collection, numpy_ids(), np.concatenate(shards))


def test_numpy_shards_without_metadata_get_shard_and_row_ids(tmp_path):
    shards = write_numpy(tmp_path / "e", sizes=(30, 20), metadata=False)
    with Collection.create(tmp_path / "c") as collection:
        report = import_embeddings(collection, tmp_path / "e", encoder=ENCODER)
        assert report.added == 50
        item = collection.get("img_emb_1:4")
        assert (item.kind, item.source, item.text) == ("text", None, None)
        ids = [f"img_emb_{n}:{row}" for n, rows in enumerate((30, 20)) for row in range(rows)]
        assert_search_is_exact(collection, ids, np.concatenate(shards))


@pytest.mark.parametrize("kind", [pa.list_(pa.float32()), pa.large_list(pa.float64()), pa.list_(pa.float32(), DIM)],
                         ids=["list", "large_list", "fixed_size_list"])
def test_parquet_layout_with_an_id_column(tmp_path, kind):
    shards = write_parquet(tmp_path / "p", kind=kind)
    with Collection.create(tmp_path / "c") as collection:
        report = import_embeddings(collection, tmp_path / "p", encoder="sentence-transformers:all-MiniLM-L6-v2",
                                   space="text", id_column="key", batch_size=45)
        assert (report.layout, report.files, report.added, report.bad_files) == ("parquet", 3, 300, [])
        item = collection.get("doc-1-5")
        assert (item.kind, item.source, item.text, dict(item.metadata)) == (
            "text", None, "passage n1r5", {"caption": "passage n1r5"})
        ids = [f"doc-{n}-{row}" for n, rows in enumerate(SIZES) for row in range(rows)]
        assert_search_is_exact(collection, ids, np.concatenate(shards), space="text")
        assert collection.search_bm25(["n2r17"], 1)[0][0][0] == "doc-2-17"  # captions are item texts


def test_layout_is_detected_and_the_other_space_is_left_alone(tmp_path):
    write_numpy(tmp_path / "e")
    np.save(tmp_path / "e" / "img_emb" / "text_emb_0.npy", vectors(3, 1))
    layout, shards = find_shards(tmp_path / "e", "image")
    assert layout == "numpy" and [s.name for s in shards] == ["img_emb_0", "img_emb_1", "img_emb_2"]
    assert [s.metadata.name for s in shards] == ["metadata_0.parquet", "metadata_1.parquet", "metadata_2.parquet"]
    assert [s.name for s in find_shards(tmp_path / "e", "text")[1]] == ["text_emb_0"]
    one = tmp_path / "e" / "img_emb" / "text_emb_0.npy"
    assert find_shards(one, "image") == ("numpy", [type(shards[0])(one, "text_emb_0")])  # a file given is taken
    write_parquet(tmp_path / "p")
    assert find_shards(tmp_path / "p", "image")[0] == "parquet"
    with pytest.raises(InputError, match="no .parquet files"):
        find_shards(tmp_path / "e" / "img_emb", "image", "parquet")
    with pytest.raises(InputError, match="no such file"):
        find_shards(tmp_path / "missing", "image")


# ----------------------------------------------------------------- resuming
def test_a_second_run_adds_nothing(tmp_path):
    write_numpy(tmp_path / "e")
    with Collection.create(tmp_path / "c") as collection:
        import_embeddings(collection, tmp_path / "e", encoder=ENCODER)
        revision = collection.revision
        again = import_embeddings(collection, tmp_path / "e", encoder=ENCODER)
        assert (again.added, again.already_present, again.bad_files) == (0, 300, [])
        assert len(collection) == 300 and collection.revision == revision


def test_an_interrupted_run_finishes_without_duplicates(tmp_path, monkeypatch):
    shards = write_numpy(tmp_path / "e")
    with Collection.create(tmp_path / "c") as collection:
        real_add, calls = collection.add, []

        def add_then_stop(items, vectors):
            calls.append(len(items))
            if len(calls) == 2:
                raise KeyboardInterrupt  # killed while storing the second shard
            real_add(items, vectors)

        monkeypatch.setattr(collection, "add", add_then_stop)
        with pytest.raises(KeyboardInterrupt):
            import_embeddings(collection, tmp_path / "e", encoder=ENCODER, batch_size=1000)
        assert len(collection) == 100
        monkeypatch.setattr(collection, "add", real_add)
        report = import_embeddings(collection, tmp_path / "e", encoder=ENCODER, batch_size=1000)
        assert (report.added, report.already_present) == (200, 100)
        assert len(collection) == 300 and sorted(collection.store.ids()) == sorted(numpy_ids())
        assert_search_is_exact(collection, numpy_ids(), np.concatenate(shards))


# ----------------------------------------------------------------- bad shards and rows
def _spoil(root: Path, problem: str) -> None:
    """Make shard 1 of a numpy layout bad in one way."""
    shard = root / "img_emb" / "img_emb_1.npy"
    if problem == "wrong dimension":
        np.save(shard, vectors(120, 1, dim=DIM + 4))
    elif problem == "corrupt file":
        shard.write_bytes(shard.read_bytes()[:200])
    elif problem == "not numpy":
        shard.write_bytes(b"this is not an array\n" * 10)
    elif problem == "metadata length":
        table = pq.read_table(root / "metadata" / "metadata_1.parquet")
        pq.write_table(table.slice(0, 119), root / "metadata" / "metadata_1.parquet")
    elif problem == "missing metadata":
        (root / "metadata" / "metadata_1.parquet").unlink()
    elif problem == "corrupt metadata":
        (root / "metadata" / "metadata_1.parquet").write_bytes(b"PAR1 nonsense")


@pytest.mark.parametrize("problem, reason", [
    ("wrong dimension", "its vectors have 16 dimensions; the other files have 12"),
    ("corrupt file", "cannot be read"),
    ("not numpy", "not a NumPy .npy file"),
    ("metadata length", "120 vectors but 119 rows in its metadata metadata_1.parquet"),
    ("missing metadata", "no metadata_1.parquet beside it"),
    ("corrupt metadata", "cannot be read"),
])
def test_a_bad_shard_is_reported_by_name_and_the_others_are_imported(tmp_path, problem, reason):
    shards = write_numpy(tmp_path / "e")
    _spoil(tmp_path / "e", problem)
    with Collection.create(tmp_path / "c") as collection:
        report = import_embeddings(collection, tmp_path / "e", encoder=ENCODER)
        assert [Path(bad.path).name for bad in report.bad_files] == ["img_emb_1.npy"]
        assert reason in report.bad_files[0].reason
        assert report.added == 180 and len(collection) == 180
        kept = [i for i in numpy_ids() if not i.startswith("images/1/")]
        assert_search_is_exact(collection, kept, np.concatenate([shards[0], shards[2]]))


def test_a_dimension_other_than_the_space_is_refused_per_file(tmp_path):
    write_numpy(tmp_path / "e")
    write_numpy(tmp_path / "wide", sizes=(10,), dim=DIM * 2)
    with Collection.create(tmp_path / "c") as collection:
        import_embeddings(collection, tmp_path / "e", encoder=ENCODER)
        report = import_embeddings(collection, tmp_path / "wide", encoder=ENCODER)
        assert report.added == 0 and not report.imported_anything
        assert report.bad_files[0].path.endswith("img_emb_0.npy")
        assert "24 dimensions; the collection's image space has 12" in report.bad_files[0].reason
        with pytest.raises(EncoderMismatchError, match="made by 'open_clip:ViT-B-32/laion2b_s34b_b79k'"):
            import_embeddings(collection, tmp_path / "e", encoder="open_clip:ViT-L-14/openai")


def test_non_finite_and_zero_rows_are_skipped_and_counted(tmp_path):
    root = tmp_path / "e"
    shards = write_numpy(root)
    shards[1][[3, 50]] = np.nan
    shards[1][7, 2] = np.inf
    shards[1][9] = 0
    np.save(root / "img_emb" / "img_emb_1.npy", shards[1])
    with Collection.create(tmp_path / "c") as collection:
        report = import_embeddings(collection, root, encoder=ENCODER, batch_size=32)
        assert (report.added, report.bad_rows, report.bad_files) == (296, 4, [])
        assert [Path(w.path).name for w in report.warnings] == ["img_emb_1.npy"]
        assert report.warnings[0].reason == (
            "rows skipped: 3 with a missing, NaN, infinite or wrong-length vector, 1 with an all-zero vector")
        bad = {f"images/1/{row}.jpg" for row in (3, 7, 9, 50)}
        assert not collection.get_many(bad)
        keep = [i for i, name in enumerate(numpy_ids()) if name not in bad]
        assert_search_is_exact(collection, [numpy_ids()[i] for i in keep], np.concatenate(shards)[keep])


def test_parquet_rows_without_a_vector_or_of_another_length_are_bad_rows(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    rows = [list(map(float, v)) for v in vectors(6, 3)]
    rows[1], rows[4] = None, rows[4][:-1]
    pq.write_table(pa.table({"embedding": pa.array(rows, type=pa.list_(pa.float32())),
                             "image_path": [f"{i}.jpg" for i in range(6)]}), root / "a.parquet")
    pq.write_table(pa.table({"vec": pa.array(rows, type=pa.list_(pa.float32()))}), root / "b.parquet")
    with Collection.create(tmp_path / "c") as collection:
        report = import_embeddings(collection, root, encoder=ENCODER)
        assert (report.added, report.bad_rows) == (4, 2)
        assert sorted(collection.store.ids()) == ["0.jpg", "2.jpg", "3.jpg", "5.jpg"]
        assert [Path(b.path).name for b in report.bad_files] == ["b.parquet"]
        assert "has no column 'embedding' (its columns: vec)" in report.bad_files[0].reason


class _Touch:
    """Unpickling this creates a file: the proof that a pickle was (not) loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


def test_a_pickled_object_array_is_refused_and_never_unpickled(tmp_path):
    root = tmp_path / "e"
    write_numpy(root)
    marker = tmp_path / "unpickled"
    np.save(root / "img_emb" / "img_emb_1.npy", np.array([_Touch(marker)] * 3, dtype=object), allow_pickle=True)
    with Collection.create(tmp_path / "c") as collection:
        report = import_embeddings(collection, root, encoder=ENCODER)
    assert not marker.exists()
    assert [Path(b.path).name for b in report.bad_files] == ["img_emb_1.npy"]
    assert "Python objects (a pickled array)" in report.bad_files[0].reason
    assert "allow_pickle=False" in report.bad_files[0].reason and report.added == 180


@pytest.mark.parametrize("encoder, space, message", [
    ("ViT-B-32", "image", "not an mmrank encoder name"),
    ("clip:ViT-B-32", "image", "not an mmrank encoder name"),
    ("open_clip:ViT-B-32", "image", "names no pretrained weights"),
    ("gem:resnet50/superglobal", "text", "does not encode texts"),
    (ENCODER, "audio", "Unknown space"),
])
def test_encoder_names_mmrank_cannot_use_for_queries_are_refused(tmp_path, encoder, space, message):
    write_numpy(tmp_path / "e", sizes=(5,))
    with Collection.create(tmp_path / "c") as collection:
        with pytest.raises(InputError, match=message):
            import_embeddings(collection, tmp_path / "e", encoder=encoder, space=space)
        assert len(collection) == 0 and collection.spaces == {}


# ----------------------------------------------------------------- searching with the space's encoder
def test_a_pipeline_encodes_queries_with_the_space_encoder(tmp_path, tiny_clip):
    from mmrank.pipeline import Pipeline

    write_numpy(tmp_path / "e", dim=tiny_clip.dim)
    database = np.concatenate([vectors(rows, number, tiny_clip.dim) for number, rows in enumerate(SIZES)])
    with Collection.create(tmp_path / "c") as collection:
        import_embeddings(collection, tmp_path / "e", encoder=tiny_clip.name)
        collection.use_encoder("image", tiny_clip)
        ranking = Pipeline.from_yaml("images-clip", collection).search("a red bicycle", k=5)
    query = tiny_clip.encode_texts(["a red bicycle"])
    order, _ = exact_top_k(database, query, 5)
    assert [hit.item_id for hit in ranking.hits] == [numpy_ids()[i] for i in order[0]]


# ----------------------------------------------------------------- the command line
def test_import_vectors_command(tmp_path, run_cli):
    write_numpy(tmp_path / "e")
    _spoil(tmp_path / "e", "wrong dimension")
    out = tmp_path / "c"
    code, stdout, stderr = run_cli("import-vectors", tmp_path / "e", "--out", out, "--encoder", ENCODER, "-q")
    assert code == 0, stderr
    assert "Imported 180 image vectors from 3 numpy files" in stdout and f"{out} now holds 180 items" in stdout
    assert "img_emb_1.npy: its vectors have 16 dimensions" in stderr

    code, stdout, _ = run_cli("import-vectors", tmp_path / "e", "--out", out, "--encoder", ENCODER, "--json")
    assert code == 0
    result = json.loads(stdout)
    assert (result["added"], result["already_present"], result["items"], result["dim"]) == (0, 180, 180, DIM)
    assert (result["layout"], result["space"], result["encoder"]) == ("numpy", "image", ENCODER)
    assert [Path(bad["path"]).name for bad in result["bad_files"]] == ["img_emb_1.npy"]

    write_parquet(tmp_path / "p")
    code, stdout, _ = run_cli("import-vectors", tmp_path / "p", "--out", tmp_path / "t", "--encoder",
                              "sentence-transformers:all-MiniLM-L6-v2", "--space", "text", "--layout", "parquet",
                              "--id-column", "key", "--json")
    assert code == 0 and json.loads(stdout)["added"] == 300
    code, stdout, _ = run_cli("info", tmp_path / "t", "--json")
    assert json.loads(stdout)["spaces"]["text"]["vectors"] == 300

    code, _, stderr = run_cli("import-vectors", tmp_path / "p", "--out", tmp_path / "x", "--encoder", ENCODER,
                              "--embedding-column", "vec")
    assert code == 1 and "nothing could be imported" in stderr and "has no column 'vec'" in stderr
    code, _, stderr = run_cli("import-vectors", tmp_path / "e", "--out", tmp_path / "y", "--encoder", "ViT-B-32")
    assert code == 2 and "not an mmrank encoder name" in stderr and not (tmp_path / "y").exists()

    code, stdout, _ = run_cli("import-vectors", "--help")
    assert code == 0 and "img_emb_N.npy" in stdout and "metadata_N.parquet" in stdout


def test_import_vectors_into_an_auto_index_under_a_memory_budget(tmp_path, run_cli):
    write_numpy(tmp_path / "e")
    out = tmp_path / "c"
    code, _, stderr = run_cli("import-vectors", tmp_path / "e", "--out", out, "--encoder", ENCODER, "-q",
                              "--index", "auto", "--memory-budget", "1KB")
    assert code == 0, stderr
    code, stdout, _ = run_cli("info", out, "--json")
    info = json.loads(stdout)
    assert (info["index"], info["memory_budget"]) == ("auto", 1024)
    assert info["index_plans"]["image"].endswith("searched from disk")  # 1 KB holds no codes for 240 vectors
    code, _, stderr = run_cli("import-vectors", tmp_path / "e", "--out", tmp_path / "f", "--encoder", ENCODER,
                              "--memory-budget", "1GB")
    assert code == 2 and "memory budget applies to --index-factory auto" in stderr
