"""The Revisited Oxford / Paris loader on a tiny fixture in the official layout: a real ground-truth
pickle (numpy arrays inside, as the authors' file has) and small JPEGs written by the test."""

from __future__ import annotations

import codecs
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mmrank.datasets import known_kinds, load_dataset
from mmrank.datasets.base import Judgements
from mmrank.datasets.revisited import (
    convert_ground_truth,
    load_revisited,
    load_roxford5k,
    read_ground_truth,
)
from mmrank.errors import InputError
from mmrank.evaluation import score_judgements
from mmrank.types import Item
from tests.datasets.test_base import untouched

DATABASE = [f"db{i}" for i in range(6)]
QUERIES = ["q0", "q1"]
QUERY_SIZE = (40, 30)
# q0: box inside the image -> crop (5, 4, 25, 20), 20 x 16.
# q1: box past the image -> rounded (10, -3, 55, 31), clipped to (10, 0, 40, 30), 30 x 30.
BOXES = {"q0": (5, 4, 25, 20), "q1": (10, 0, 40, 30)}


def ground_truth() -> dict[str, Any]:
    """The fixture's ground truth, with numpy arrays where the authors' pickle has them."""
    return {
        "imlist": list(DATABASE),
        "qimlist": list(QUERIES),
        "gnd": [
            {"bbx": np.array([5.0, 4.0, 25.0, 20.0]), "easy": np.array([0, 1]),
             "hard": np.array([2]), "junk": np.array([3])},
            {"bbx": np.array([10.4, -3.0, 55.0, 30.6]), "easy": np.array([], dtype=np.int64),
             "hard": np.array([4, 5]), "junk": np.array([0])},
        ],
    }


def write_pickle(path: Path, data: Any, protocol: int = 2) -> Path:
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path


def write_revisited(root: Path, name: str = "roxford5k", gnd: Any = None, protocol: int = 2) -> Path:
    """Write ``root/<name>/`` with the ground-truth pickle and one JPEG per image; returns root."""
    folder = root / name
    (folder / "jpg").mkdir(parents=True)
    write_pickle(folder / f"gnd_{name}.pkl", ground_truth() if gnd is None else gnd, protocol)
    for index, image in enumerate(DATABASE):
        Image.new("RGB", (16 + index, 12), (40 * index, 0, 0)).save(folder / "jpg" / f"{image}.jpg")
    gradient = np.fromfunction(lambda y, x, c: (x * 6 + y * 8 * c) % 256, (30, 40, 3))
    for image in QUERIES:
        Image.fromarray(gradient.astype(np.uint8)).save(folder / "jpg" / f"{image}.jpg", quality=95)
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_revisited(tmp_path / "data")


def image_path(root: Path, image: str) -> str:
    return str(root / "roxford5k" / "jpg" / f"{image}.jpg")


# Per protocol: positives (relevance 1) and ignored images of q0 (easy 0 1, hard 2, junk 3) and
# q1 (easy none, hard 4 5, junk 0).
EXPECTED = {
    "easy": Judgements(
        {"q0": {"db0": 1, "db1": 1}, "q1": {}},
        {"q0": frozenset({"db3", "db2"}), "q1": frozenset({"db0", "db4", "db5"})},
    ),
    "medium": Judgements(
        {"q0": {"db0": 1, "db1": 1, "db2": 1}, "q1": {"db4": 1, "db5": 1}},
        {"q0": frozenset({"db3"}), "q1": frozenset({"db0"})},
    ),
    "hard": Judgements(
        {"q0": {"db2": 1}, "q1": {"db4": 1, "db5": 1}},
        {"q0": frozenset({"db3", "db0", "db1"}), "q1": frozenset({"db0"})},
    ),
}


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_loads_items_queries_and_the_three_protocols(tmp_path: Path, protocol: int) -> None:
    root = write_revisited(tmp_path / "data", protocol=protocol)
    dataset = load_revisited(root)

    assert dataset.name == "roxford5k"
    assert dataset.split == "test"
    assert dataset.items == [
        Item(id=image, kind="image", source=image_path(root, image)) for image in DATABASE
    ]
    assert [query.id for query in dataset.queries] == QUERIES
    assert [query.metadata for query in dataset.queries] == [
        {"source": image_path(root, "q0"), "bbx": [5.0, 4.0, 25.0, 20.0]},
        {"source": image_path(root, "q1"), "bbx": [10.4, -3.0, 55.0, 30.6]},
    ]
    assert dict(dataset.protocols) == EXPECTED
    assert dataset.qrels == EXPECTED["medium"].qrels
    assert dataset.ignored == EXPECTED["medium"].ignored
    assert dataset.metrics == ("rmap", "mp@1", "mp@5", "mp@10")


def test_queries_are_cropped_to_their_box(root: Path) -> None:
    dataset = load_revisited(root)
    for query in dataset.queries:
        box = BOXES[query.id]
        with Image.open(image_path(root, query.id)) as full:
            expected = full.convert("RGB").crop(box)
        assert query.image.mode == "RGB"
        assert query.image.size == (box[2] - box[0], box[3] - box[1])
        assert query.image.tobytes() == expected.tobytes()
    assert [query.image.size for query in dataset.queries] == [(20, 16), (30, 30)]


@pytest.mark.parametrize("protocol", ["easy", "HARD"])
def test_protocol_picks_the_qrels_and_ignored_sets(root: Path, protocol: str) -> None:
    dataset = load_revisited(root, protocol=protocol)
    assert dataset.qrels == EXPECTED[protocol.lower()].qrels
    assert dataset.ignored == EXPECTED[protocol.lower()].ignored


def test_root_may_point_at_the_dataset_folder_itself(root: Path) -> None:
    assert load_revisited(root / "roxford5k").items == load_revisited(root).items


def test_registry_kinds_preset_the_name(tmp_path: Path) -> None:
    assert {"roxford5k", "rparis6k"} <= set(known_kinds())
    paris = write_revisited(tmp_path / "paris", name="rparis6k")
    dataset = load_dataset("RParis6k", paris, protocol="hard")
    assert dataset.name == "rparis6k"
    assert dataset.qrels == EXPECTED["hard"].qrels
    assert dataset.items[0].source == str(paris / "rparis6k" / "jpg" / "db0.jpg")
    oxford = write_revisited(tmp_path / "oxford")
    assert load_dataset("roxford5k", oxford).items == load_roxford5k(oxford).items


def test_unknown_name_and_protocol(root: Path) -> None:
    expected = "Unknown dataset name 'oxford5k': expected one of roxford5k, rparis6k"
    with pytest.raises(InputError, match=expected):
        load_revisited(root, name="oxford5k")
    with pytest.raises(InputError, match="Unknown protocol 'extreme': expected one of easy, medium, hard"):
        load_revisited(root, protocol="extreme")


def test_distractors_are_added_as_items(root: Path, tmp_path: Path) -> None:
    distractors = tmp_path / "r1m"
    (distractors / "00" / "01").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(distractors / "00" / "01" / "x.jpg")
    Image.new("RGB", (8, 8)).save(distractors / "a.JPG")
    (distractors / "notes.txt").write_text("not an image")

    dataset = load_revisited(root, distractors=distractors)

    assert dataset.name == "roxford5k+distractors"
    assert dataset.items[len(DATABASE):] == [
        Item(id="00/01/x", kind="image", source=str(distractors / "00" / "01" / "x.jpg")),
        Item(id="a", kind="image", source=str(distractors / "a.JPG")),
    ]
    assert dataset.qrels == EXPECTED["medium"].qrels


def test_distractor_folder_errors(root: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"Distractor folder not found: .*nowhere"):
        load_revisited(root, distractors=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"Distractor folder .*empty holds no \.jpg images"):
        load_revisited(root, distractors=tmp_path / "empty")
    (tmp_path / "clash").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "clash" / "db1.jpg")
    with pytest.raises(InputError, match=r"clash/db1\.jpg has the id of a database image \('db1'\)"):
        load_revisited(root, distractors=tmp_path / "clash")


# --- the JSON conversion -----------------------------------------------------------------------


def test_json_conversion_round_trips_to_an_identical_dataset(root: Path) -> None:
    folder = root / "roxford5k"
    from_pickle = load_revisited(root)

    written = convert_ground_truth(folder / "gnd_roxford5k.pkl", folder / "gnd_roxford5k.json")

    assert written == folder / "gnd_roxford5k.json"
    assert json.loads(written.read_text(encoding="utf-8")) == {
        "imlist": DATABASE,
        "qimlist": QUERIES,
        "gnd": [
            {"bbx": [5.0, 4.0, 25.0, 20.0], "easy": [0, 1], "hard": [2], "junk": [3]},
            {"bbx": [10.4, -3.0, 55.0, 30.6], "easy": [], "hard": [4, 5], "junk": [0]},
        ],
    }
    assert sorted(p.name for p in folder.iterdir()) == ["gnd_roxford5k.json", "gnd_roxford5k.pkl", "jpg"]
    (folder / "gnd_roxford5k.pkl").unlink()  # the JSON alone is enough
    assert load_revisited(root) == from_pickle


def test_the_json_file_is_preferred_over_the_pickle(root: Path) -> None:
    folder = root / "roxford5k"
    convert_ground_truth(folder / "gnd_roxford5k.pkl", folder / "gnd_roxford5k.json")
    write_pickle(folder / "gnd_roxford5k.pkl", {"not": "read"})
    assert load_revisited(root).qrels == EXPECTED["medium"].qrels


def test_an_explicit_ground_truth_path_is_used(root: Path, tmp_path: Path) -> None:
    folder = root / "roxford5k"
    elsewhere = convert_ground_truth(folder / "gnd_roxford5k.pkl", tmp_path / "truth.json")
    (folder / "gnd_roxford5k.pkl").unlink()
    assert load_revisited(root, ground_truth=elsewhere).qrels == EXPECTED["medium"].qrels


def test_the_json_file_gets_the_same_validation(root: Path) -> None:
    path = root / "roxford5k" / "gnd_roxford5k.json"
    data = {"imlist": DATABASE, "qimlist": ["q0"],
            "gnd": [{"bbx": [0, 0, 1, 1], "easy": [6], "hard": [], "junk": []}]}
    path.write_text(json.dumps(data), encoding="utf-8")
    expected = r"gnd_roxford5k\.json: query 0 \('q0'\): 'easy' index 6 is out of range: imlist has 6 images"
    with pytest.raises(InputError, match=expected):
        load_revisited(root)
    path.write_text("{broken", encoding="utf-8")
    with pytest.raises(InputError, match=r"gnd_roxford5k\.json: not valid JSON"):
        load_revisited(root)


# --- a pickle is never trusted -----------------------------------------------------------------


class _RunsCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


class _Evaluates:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize(
    ("payload", "refused"), [(_RunsCommand, r"posix\.system"), (_Evaluates, r"__builtin__\.eval")]
)
def test_a_pickle_with_a_forbidden_global_is_refused_and_not_run(
    root: Path, tmp_path: Path, payload: type, refused: str
) -> None:
    marker = tmp_path / "pwned"
    gnd = ground_truth()
    gnd["gnd"][0]["easy"] = payload(marker)
    path = write_pickle(root / "roxford5k" / "gnd_roxford5k.pkl", gnd)
    expected = rf"{re.escape(str(path))}: refused to unpickle the global {refused}:"
    with pytest.raises(InputError, match=expected):
        load_revisited(root)
    with pytest.raises(InputError, match="refused to unpickle"):
        convert_ground_truth(path, tmp_path / "out.json")
    assert not marker.exists()
    assert not (tmp_path / "out.json").exists()


def test_a_file_that_is_not_a_pickle(root: Path) -> None:
    path = root / "roxford5k" / "gnd_roxford5k.pkl"
    path.write_bytes(b"\x80\x02}q\x00")  # truncated
    with pytest.raises(InputError, match=r"gnd_roxford5k\.pkl: not a readable ground-truth pickle"):
        read_ground_truth(path)


# --- malformed ground truth and missing files --------------------------------------------------


def _set(path: tuple, value: Any) -> Any:
    """A ground truth with the value at ``path`` (keys/indices) replaced, or deleted if None."""
    gnd = ground_truth()
    target = gnd
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return gnd


@pytest.mark.parametrize(
    ("gnd", "expected"),
    [
        ([1, 2], "expected a mapping with keys imlist, qimlist, gnd; got list"),
        (_set(("qimlist",), None), "missing key\\(s\\) qimlist"),
        (_set(("imlist",), ["db0", 7]), "'imlist' must be a list of non-empty image names"),
        (_set(("imlist",), ["db0", "db0"]), "'imlist' lists 'db0' twice"),
        (_set(("gnd",), [{}]),
         "'gnd' must be a list with one entry per query \\(2 in qimlist\\), got 1 entries"),
        (_set(("gnd", 1), "x"),
         "query 1 \\('q1'\\): expected a mapping with keys bbx, easy, hard, junk; got str"),
        (_set(("gnd", 0, "junk"), None), "query 0 \\('q0'\\): missing key 'junk'"),
        (_set(("gnd", 1, "hard"), np.array([4, 9])),
         "query 1 \\('q1'\\): 'hard' index 9 is out of range: imlist has 6 images"),
        (_set(("gnd", 0, "easy"), [0, -1]), "query 0 \\('q0'\\): 'easy' index -1 is out of range"),
        (_set(("gnd", 0, "easy"), [0.5]), "query 0 \\('q0'\\): 'easy' holds 0.5, not an image index"),
        (_set(("gnd", 0, "junk"), np.zeros((2, 2), dtype=int)),
         "query 0 \\('q0'\\): 'junk' must be a list of image indices"),
        (_set(("gnd", 1, "bbx"), np.array([1.0, 2.0, 3.0])),
         "query 1 \\('q1'\\): 'bbx' must be 4 numbers x1, y1, x2, y2"),
        (_set(("gnd", 0, "bbx"), [1, 2, 3, "4"]), "query 0 \\('q0'\\): 'bbx' must be 4 numbers"),
        (_set(("gnd", 0, "bbx"), [5, 4, 5, 20]),
         "query 0 \\('q0'\\): 'bbx' \\[5.0, 4.0, 5.0, 20.0\\] is empty"),
    ],
)
def test_malformed_ground_truth_names_the_file_and_query(tmp_path: Path, gnd: Any, expected: str) -> None:
    root = write_revisited(tmp_path / "data", gnd=gnd)
    with pytest.raises(InputError, match=rf"gnd_roxford5k\.pkl: {expected}"):
        load_revisited(root)


def test_a_box_outside_the_image_names_the_query_and_image(tmp_path: Path) -> None:
    root = write_revisited(tmp_path / "data", gnd=_set(("gnd", 1, "bbx"), [50, 0, 60, 10]))
    expected = (r"gnd_roxford5k\.pkl: query 1 \('q1'\): 'bbx' \[50\.0, 0\.0, 60\.0, 10\.0\] "
                r"lies outside .*q1\.jpg \(40x30\)")
    with pytest.raises(InputError, match=expected):
        load_revisited(root)


def test_missing_root(tmp_path: Path) -> None:
    expected = (r"Revisited dataset folder not found: .*nowhere\. "
                r"Expected <root>/roxford5k/gnd_roxford5k\.pkl")
    with pytest.raises(InputError, match=expected):
        load_revisited(tmp_path / "nowhere")


def test_missing_ground_truth_names_the_file_and_the_layout(root: Path) -> None:
    (root / "roxford5k" / "gnd_roxford5k.pkl").unlink()
    with pytest.raises(InputError) as error:
        load_revisited(root)
    message = str(error.value)
    assert f"{root / 'roxford5k'} has no gnd_roxford5k.pkl (nor gnd_roxford5k.json)" in message
    assert "<root>/roxford5k/jpg/<image>.jpg" in message


def test_missing_explicit_ground_truth(root: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"Ground-truth file not found: .*elsewhere\.pkl"):
        load_revisited(root, ground_truth=tmp_path / "elsewhere.pkl")


def test_missing_image_folder(root: Path) -> None:
    for path in (root / "roxford5k" / "jpg").iterdir():
        path.unlink()
    (root / "roxford5k" / "jpg").rmdir()
    with pytest.raises(InputError, match=r"roxford5k has no jpg/ image folder\. Expected <root>/roxford5k"):
        load_revisited(root)


def test_missing_images_are_counted_and_the_first_few_named(root: Path) -> None:
    images = root / "roxford5k" / "jpg"
    (images / "db1.jpg").unlink()
    (images / "q1.jpg").unlink()
    expected = r"2 of the 8 images listed in gnd_roxford5k\.pkl are missing: db1\.jpg, q1\.jpg\.$"
    with pytest.raises(InputError, match=expected):
        load_revisited(root)
    for image in DATABASE:
        (images / f"{image}.jpg").unlink(missing_ok=True)
    with pytest.raises(InputError) as error:
        load_revisited(root)
    assert str(error.value) == (
        f"{images}: 7 of the 8 images listed in gnd_roxford5k.pkl are missing: "
        "db0.jpg, db1.jpg, db2.jpg, db3.jpg, db4.jpg and 2 more."
    )


# --- end to end: scoring a hand-made ranking ---------------------------------------------------


def test_score_judgements_gives_the_hand_computed_revisited_metrics(root: Path) -> None:
    dataset = load_revisited(root)
    rankings = {
        "q0": ["db3", "db2", "db5", "db0", "db4", "db1"],
        "q1": ["db0", "db5", "db1", "db2", "db3", "db4"],
    }
    # rmap term for the j-th positive at 0-based rank r: (j/r, or 1 at r=0, + (j+1)/(r+1)) / 2.
    # easy, q0: junk db3, db2 removed -> [db5, db0, db4, db1]; db0 r=1, db1 r=3, npos 2:
    #   (0 + 1/2)/2 = 1/4, (1/3 + 2/4)/2 = 5/12 -> (2/3)/2 = 1/3.  mP@1 0; db1 at 4 is the last
    #   positive: mP@5 = mP@10 = 2/4.  q1 has no easy positive: skipped.
    # medium, q0: db3 removed -> [db2, db5, db0, db4, db1]; db2 r=0, db0 r=2, db1 r=4:
    #   1, (1/2 + 2/3)/2 = 7/12, (2/4 + 3/5)/2 = 11/20 -> (128/60)/3 = 32/45.  mP@1 1, mP@5 3/5.
    # medium and hard, q1: db0 removed -> [db5, db1, db2, db3, db4]; db5 r=0, db4 r=4, npos 2:
    #   1, (1/4 + 2/5)/2 = 13/40 -> (53/40)/2 = 53/80.  mP@1 1, mP@5 = mP@10 = 2/5.
    # hard, q0: db3, db0, db1 removed -> [db2, db5, db4]; db2 r=0 -> 1.  mP@k 1/1 = 1.
    expected = {
        "easy/rmap": 1 / 3, "easy/mp@1": 0.0, "easy/mp@5": 1 / 2, "easy/mp@10": 1 / 2,
        "easy/queries": 1,
        "medium/rmap": (32 / 45 + 53 / 80) / 2, "medium/mp@1": 1.0,
        "medium/mp@5": (3 / 5 + 2 / 5) / 2, "medium/mp@10": (3 / 5 + 2 / 5) / 2, "medium/queries": 2,
        "hard/rmap": (1 + 53 / 80) / 2, "hard/mp@1": 1.0, "hard/mp@5": (1 + 2 / 5) / 2,
        "hard/mp@10": (1 + 2 / 5) / 2, "hard/queries": 2,
    }
    scores: dict[str, float] = {}
    for name, judgements in dataset.judgements().items():
        scores.update(score_judgements(rankings, judgements, dataset.metrics, prefix=name))
    assert scores == pytest.approx(expected, abs=1e-12)


# --- image names stay inside the image folder --------------------------------------------------


@pytest.mark.parametrize(
    ("key", "index", "bad"),
    [("imlist", 4, "../../../outside/secret"), ("qimlist", 1, "x/../../../../outside/secret"),
     ("imlist", 0, "ABSOLUTE")],
)
def test_an_image_name_leaving_the_image_folder_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, index: int, bad: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (40, 30)).save(outside / "secret.jpg")
    bad = str(outside / "secret") if bad == "ABSOLUTE" else bad
    gnd = ground_truth()
    gnd[key][index] = bad
    root = write_revisited(tmp_path / "data", gnd=gnd)
    truth = root / "roxford5k" / "gnd_roxford5k.pkl"
    touched = untouched(monkeypatch, outside)
    with pytest.raises(InputError) as error:
        load_revisited(root)
    message = str(error.value)
    assert message.startswith(f"{truth}: {key}[{index}]: the path {bad + '.jpg'!r} "), message
    assert message.endswith(f"must lie inside the dataset folder {root / 'roxford5k' / 'jpg'}."), message
    assert touched == []


def test_nested_and_symlinked_image_folders_still_load(root: Path, tmp_path: Path) -> None:
    images = root / "roxford5k" / "jpg"
    (images / "sub").mkdir()
    (images / "db0.jpg").rename(images / "sub" / "db0.jpg")
    gnd = ground_truth()
    gnd["imlist"][0] = "sub/db0"
    write_pickle(root / "roxford5k" / "gnd_roxford5k.pkl", gnd)
    dataset = load_revisited(root)
    assert dataset.items[0] == Item(id="sub/db0", kind="image", source=str(images / "sub" / "db0.jpg"))
    assert dataset.qrels["q0"] == {"sub/db0": 1, "db1": 1, "db2": 1}

    images.rename(tmp_path / "other-disk")
    images.symlink_to(tmp_path / "other-disk", target_is_directory=True)
    again = load_revisited(root)
    assert again.items == dataset.items
    assert again.queries[0].metadata["source"] == str(images / "q0.jpg")


# --- the stand-ins for _codecs.encode and bytes ------------------------------------------------


class _Calls:
    """Pickles as a call of ``function`` with ``args``, as a tampered file would hold."""

    def __init__(self, function: Any, *args: Any) -> None:
        self.function = function
        self.args = args

    def __reduce__(self) -> tuple:
        return self.function, self.args


@pytest.mark.parametrize(
    ("call", "shown"),
    [
        (_Calls(codecs.encode, "x", "no-such-codec"), "_codecs.encode('x', 'no-such-codec')"),
        (_Calls(codecs.encode, b"x", "zlib"), "_codecs.encode(b'x', 'zlib')"),  # known, not latin1
        (_Calls(codecs.encode, "x", "rot13"), "_codecs.encode('x', 'rot13')"),
        (_Calls(codecs.encode, 7, "latin1"), "_codecs.encode(7, 'latin1')"),
        (_Calls(codecs.encode, "x", 7), "_codecs.encode('x', 7)"),
        (_Calls(codecs.encode, "x"), "_codecs.encode('x')"),
        (_Calls(codecs.encode, "\u20ac", "latin1"), "_codecs.encode('\u20ac', 'latin1')"),
        (_Calls(bytes, 2**50), f"bytes({2**50})"),  # never allocated
        (_Calls(bytes, "x" * 100, "utf-8"), f"bytes('{'x' * 36}..., 'utf-8')"),
    ],
)
def test_a_pickle_misusing_an_allowed_global_is_not_a_valid_ground_truth_file(
    root: Path, tmp_path: Path, call: _Calls, shown: str
) -> None:
    gnd = ground_truth()
    gnd["gnd"][0]["easy"] = call
    path = write_pickle(root / "roxford5k" / "gnd_roxford5k.pkl", gnd)
    with pytest.raises(InputError) as error:
        load_revisited(root)
    assert str(error.value).startswith(f"{path}: not a valid ground-truth file: it calls {shown}, but ")
    with pytest.raises(InputError, match="not a valid ground-truth file"):
        convert_ground_truth(path, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_bytes_pickled_below_protocol_3_still_read(tmp_path: Path, protocol: int) -> None:
    # Below protocol 3 Python pickles b"..." as _codecs.encode(text, "latin1") and b"" as bytes().
    gnd = ground_truth()
    gnd["gnd"][1]["easy"] = np.frombuffer(b"", dtype=np.int64)
    root = write_revisited(tmp_path / "data", gnd=gnd, protocol=protocol)
    data = (root / "roxford5k" / "gnd_roxford5k.pkl").read_bytes()
    assert b"_codecs" in data and b"bytes" in data
    assert load_revisited(root).protocols == EXPECTED
