"""The composed image retrieval benchmarks (CIRR, CIRCO, FashionIQ) on tiny fixture folders in
their official layouts: loaders, bad-input errors, the metrics on hand-computed rankings, the
test-server submission files, and `mmrank eval` end to end with a tiny CLIP."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from mmrank.datasets import known_kinds, load_dataset
from mmrank.datasets.base import Judgements, RetrievalDataset
from mmrank.datasets.circo import load_circo
from mmrank.datasets.cirr import load_cirr
from mmrank.datasets.fashioniq import join_captions, load_fashioniq
from mmrank.errors import InputError
from mmrank.evaluation import SubmissionRankings, evaluate, score_judgements
from mmrank.metrics import parse_metric
from mmrank.pipeline import Pipeline, RankedRows
from mmrank.types import Hit, Item, Query, Ranking, StageScore
from tests.datasets.test_base import untouched


def _image(path: Path, index: int) -> None:
    """A distinct solid-colour 8 x 8 image (PNG or JPEG by the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), ((53 * index) % 256, (97 * index + 40) % 256, (29 * index + 200) % 256)).save(path)


def _json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")


class _FixedRetriever:
    """A first stage returning a fixed order per query id (every item not listed follows)."""

    def __init__(self, items: list[Item], orders: dict[str, list[str]]) -> None:
        self.items = {item.id: item for item in items}
        self.orders = orders
        self.depth = 1
        self.asked: list[int | None] = []

    def retrieve_batch(self, queries, collection, k=None):
        self.asked.append(k)
        rankings = []
        for query in queries:
            listed = self.orders.get(query.id, [])
            order = [*listed, *(i for i in self.items if i not in listed)][:k]
            hits = tuple(Hit(item=self.items[i], score=1.0 / r, stages={"retrieve": StageScore(1.0 / r, r)})
                         for r, i in enumerate(order, start=1))
            rankings.append(Ranking(query=query, hits=hits, timings={"retrieve": 0.001}))
        return rankings


def _fixed_pipeline(dataset: RetrievalDataset, orders: dict[str, list[str]]) -> Pipeline:
    return Pipeline(collection=None, retriever=_FixedRetriever(dataset.items, orders), name="fixed")


def test_the_three_kinds_are_registered():
    assert {"cirr", "circo", "fashioniq"} <= set(known_kinds())


# --- CIRR --------------------------------------------------------------------------------------

DEV = [f"dev-{i}-0-img{i % 2}" for i in range(10)]


def _cirr_pair(pairid: int, reference: str, target: str | None, members: list[str], caption: str) -> dict:
    pair = {"pairid": pairid, "reference": reference, "caption": caption,
            "img_set": {"id": pairid, "members": members, "reference_rank": 0}}
    if target is not None:
        pair.update(target_hard=target, target_soft={target: 1.0})
        pair["img_set"]["target_rank"] = members.index(target)
    return pair


def write_cirr(root: Path, inner: bool = True) -> Path:
    """``root`` in the official CIRR layout: ten dev images, three test1 images, two val pairs
    and one test1 pair (with ``inner=False``, the copy that drops the inner ``cirr/``)."""
    annotations = root / "cirr" if inner else root
    for index, name in enumerate(DEV):
        _image(root / "dev" / f"{name}.png", index)
    tests = [f"test1-{i}-0-img0" for i in range(3)]
    for index, name in enumerate(tests):
        _image(root / "test1" / f"{name}.png", 20 + index)
    # The split file's paths mix the official "./dev/..." form and a plain relative one.
    _json(annotations / "image_splits" / "split.rc2.val.json",
          {name: (f"./dev/{name}.png" if i % 2 == 0 else f"dev/{name}.png") for i, name in enumerate(DEV)})
    _json(annotations / "image_splits" / "split.rc2.test1.json", {name: f"./test1/{name}.png" for name in tests})
    _json(annotations / "captions" / "cap.rc2.val.json", [
        _cirr_pair(10, DEV[0], DEV[1], DEV[:6], "make it blue"),
        _cirr_pair(11, DEV[2], DEV[6], [DEV[2], DEV[6], DEV[7], DEV[3], DEV[4], DEV[5]], "add a dog"),
    ])
    _json(annotations / "captions" / "cap.rc2.test1.json", [
        {"pairid": 7, "reference": tests[0], "caption": "at night",
         "img_set": {"id": 3, "members": tests}},
    ])
    return root


@pytest.fixture
def cirr_root(tmp_path: Path) -> Path:
    return write_cirr(tmp_path / "CIRR")


def test_cirr_loader_reads_the_val_split(cirr_root: Path):
    dataset = load_dataset("cirr", cirr_root)
    assert (dataset.name, dataset.split) == ("CIRR", "val")
    assert [item.id for item in dataset.items] == DEV
    assert dataset.items[3].source == str(cirr_root / "dev" / f"{DEV[3]}.png")
    assert {item.kind for item in dataset.items} == {"image"}
    first, second = dataset.queries
    assert first == Query(image=str(cirr_root / "dev" / f"{DEV[0]}.png"), modification="make it blue", id="10",
                          metadata={"reference": DEV[0], "members": DEV[:6]}, excluded=frozenset({DEV[0]}))
    assert second.id == "11" and second.excluded == {DEV[2]} and second.candidates is None
    assert dataset.qrels == {"10": {DEV[1]: 1}, "11": {DEV[6]: 1}}
    assert dataset.ignored == {"10": {DEV[0]}, "11": {DEV[2]}}
    assert dataset.metrics == ("recall@1", "recall@5", "recall@10", "recall@50")
    judgements = dataset.judgements()
    assert set(judgements) == {"", "subset"}
    assert judgements[""] == Judgements(dataset.qrels, dataset.ignored)
    subset = judgements["subset"]
    assert subset.metrics == ("recall@1", "recall@2", "recall@3")
    assert subset.within == {"10": frozenset(DEV[1:6]), "11": frozenset([DEV[6], DEV[7], *DEV[3:6]])}
    assert subset.ignored == dataset.ignored and subset.qrels == dataset.qrels
    assert dataset.needs_full_ranking and dataset.write_submission is not None


def test_cirr_test1_has_no_targets_and_the_inner_cirr_folder_is_optional(tmp_path: Path):
    root = write_cirr(tmp_path / "CIRR", inner=False)
    dataset = load_cirr(root, split="test1")
    assert [item.id for item in dataset.items] == [f"test1-{i}-0-img0" for i in range(3)]
    [query] = dataset.queries
    assert query.id == "7" and query.metadata["reference"] == "test1-0-0-img0"
    assert dataset.qrels == {"7": {}}
    assert dataset.judgements()["subset"].within == {"7": frozenset({"test1-1-0-img0", "test1-2-0-img0"})}
    # Scoring a split without targets reports no query instead of failing.
    assert score_judgements({"7": ["test1-1-0-img0"]}, dataset.judgements()["subset"], ["recall@1"],
                            prefix="subset") == {"subset/queries": 0}
    assert len(load_cirr(root).queries) == 2


def _rewrite(path: Path, change) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def test_cirr_bad_inputs_are_clear_errors(cirr_root: Path):
    captions = cirr_root / "cirr" / "captions" / "cap.rc2.val.json"
    with pytest.raises(InputError, match="Unknown CIRR split 'dev'"):
        load_cirr(cirr_root, split="dev")
    with pytest.raises(InputError, match="neither cirr/captions/ nor captions/"):
        load_cirr(cirr_root / "dev")
    original = captions.read_text()
    _rewrite(captions, lambda pairs: pairs[1].pop("reference"))
    with pytest.raises(InputError, match=re.escape(f"{captions}: entry 1 has no 'reference'.")):
        load_cirr(cirr_root)
    captions.write_text(original)
    _rewrite(captions, lambda pairs: pairs[0].update(target_hard="dev-99-0-img0"))
    with pytest.raises(InputError, match=re.escape(f"{captions}: entry 0 (pairid 10): target_hard "
                                                   "'dev-99-0-img0' is not an image of split.rc2.val.json")):
        load_cirr(cirr_root)
    captions.write_text(original)
    _rewrite(captions, lambda pairs: pairs[0]["img_set"].pop("members"))
    with pytest.raises(InputError, match="entry 0 \\(pairid 10\\): 'img_set' must be an object whose 'members'"):
        load_cirr(cirr_root)
    captions.write_text(original)
    (cirr_root / "dev" / f"{DEV[4]}.png").unlink()
    with pytest.raises(InputError, match=re.escape("split.rc2.val.json: 1 of the 10 images it lists are missing: "
                                                   f"{cirr_root / 'dev' / DEV[4]}.png")):
        load_cirr(cirr_root)
    captions.unlink()
    with pytest.raises(InputError, match=re.escape(f"Missing file {captions}.")):
        load_cirr(cirr_root)


def test_cirr_recall_and_subset_recall_on_a_hand_made_ranking(cirr_root: Path):
    dataset = load_cirr(cirr_root)
    # Pair 10 (reference dev-0, target dev-1, set dev-0..dev-5). Globally, with the reference
    # removed, the target is 6th: recall@1 = recall@5 = 0, recall@10 = 1. Within its set less the
    # reference the order is dev-3, dev-1: subset recall@1 = 0, @2 = @3 = 1.
    # Pair 11 (reference dev-2, target dev-6): the target is first everywhere.
    orders = {"10": [DEV[9], DEV[8], DEV[7], DEV[6], DEV[0], DEV[3], DEV[1]],
              "11": [DEV[2], DEV[6]]}
    seen: list[list[RankedRows]] = []
    [report] = evaluate(_fixed_pipeline(dataset, orders), dataset, k=len(dataset.items), on_batch=seen.append)
    assert report.metrics == {
        "recall@1": 0.5, "recall@5": 0.5, "recall@10": 1.0, "recall@50": 1.0, "queries": 2,
        "subset/recall@1": 0.5, "subset/recall@2": 1.0, "subset/recall@3": 1.0, "subset/queries": 2,
    }
    # on_batch sees the final rankings, one batch here.
    assert [[ranked.query.id for ranked in batch] for batch in seen] == [["10", "11"]]
    assert seen[0][0].ids(k=3) == [DEV[9], DEV[8], DEV[7]]
    # Without k, the Python API ranks as deep as `mmrank eval` does: every item, since the subset
    # protocol scores within each query's set; a smaller k cuts the rankings (and the subset recall).
    pipeline = _fixed_pipeline(dataset, orders)
    assert evaluate(pipeline, dataset)[0].metrics == report.metrics
    assert pipeline.retriever.asked == [len(dataset.items)]
    assert evaluate(pipeline, dataset, k=5)[0].metrics["subset/recall@2"] == 0.5
    # The caller's metrics replace the plain ones, never the subset protocol's own.
    [report] = evaluate(_fixed_pipeline(dataset, orders), dataset, ["mrr"], k=len(dataset.items))
    assert report.metrics == {"mrr": (1 / 6 + 1) / 2, "queries": 2, "subset/recall@1": 0.5,
                              "subset/recall@2": 1.0, "subset/recall@3": 1.0, "subset/queries": 2}


def test_a_judgement_sets_own_metric_names_are_checked_before_any_query_runs(cirr_root: Path):
    dataset = load_cirr(cirr_root)
    bad = Judgements(dataset.qrels, within=dataset.judgements()["subset"].within, metrics=("recal@2",))
    dataset.protocols = {**dataset.protocols, "subset": bad}

    class _Exploding:
        depth = 2

        def retrieve_batch(self, queries, collection, k=None):
            raise AssertionError("no query may run before the metrics are checked")

    with pytest.raises(InputError, match="Unknown metric 'recal@2'"):
        evaluate(Pipeline(collection=None, retriever=_Exploding()), dataset)


def test_cirr_submission_files_hold_exactly_the_server_format(cirr_root: Path, tmp_path: Path):
    dataset = load_cirr(cirr_root)
    rankings = {
        # The reference (dev-0) is dropped; the set less the reference ranks dev-3, dev-1, dev-5.
        "10": [DEV[9], DEV[0], DEV[3], DEV[8], DEV[1], DEV[5], DEV[2], DEV[4]],
        # A ranking cut short: members it lacks follow in their image-set order.
        "11": [DEV[4], DEV[9]],
    }
    paths = dataset.write_submission(rankings, tmp_path, "images clip/v1")
    assert [p.name for p in paths] == ["recall_submission_images_clip_v1.json",
                                       "recall_subset_submission_images_clip_v1.json"]
    assert json.loads(paths[0].read_text()) == {
        "version": "rc2", "metric": "recall",
        "10": [DEV[9], DEV[3], DEV[8], DEV[1], DEV[5], DEV[2], DEV[4]],
        "11": [DEV[4], DEV[9]],
    }
    assert json.loads(paths[1].read_text()) == {
        "version": "rc2", "metric": "recall_subset",
        "10": [DEV[3], DEV[1], DEV[5]],
        "11": [DEV[4], DEV[6], DEV[7]],
    }


def test_submission_rankings_keep_the_top_50_and_the_image_set(cirr_root: Path):
    dataset = load_cirr(cirr_root)
    collect = SubmissionRankings(dataset, depth=3)
    orders = {"10": [DEV[9], DEV[8], DEV[7], DEV[6], DEV[5], DEV[0], DEV[4]]}
    evaluate(_fixed_pipeline(dataset, orders), dataset, k=len(dataset.items), on_batch=collect)
    # Top 3, then the lower-ranked members of the image set less the reference (dev-1 .. dev-5), in
    # ranking order (the fixed first stage ranks the unlisted dev-1, dev-2, dev-3 last).
    assert collect.rankings["10"] == [DEV[9], DEV[8], DEV[7], DEV[5], DEV[4], DEV[1], DEV[2], DEV[3]]
    assert collect.rankings["11"] == [DEV[0], DEV[1], DEV[2], DEV[3], DEV[4], DEV[5], DEV[6], DEV[7]]


# --- CIRCO -------------------------------------------------------------------------------------

CIRCO_IDS = list(range(101, 111))


def write_circo(root: Path) -> Path:
    """``root`` in the official CIRCO layout: ten COCO unlabeled images (ids 101..110), two val
    queries (three and six ground truths) and one test query."""
    coco = root / "COCO2017_unlabeled"
    images = [{"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": 8, "height": 8}
              for image_id in CIRCO_IDS]
    _json(coco / "annotations" / "image_info_unlabeled2017.json", {"images": images, "info": {}})
    for index, image in enumerate(images):
        _image(coco / "unlabeled2017" / image["file_name"], index)
    _json(root / "annotations" / "val.json", [
        {"id": 0, "reference_img_id": 101, "target_img_id": 102, "relative_caption": "has two dogs",
         "shared_concept": "a dog", "gt_img_ids": [102, 103, 104], "semantic_aspects": ["cardinality"]},
        {"id": 1, "reference_img_id": 110, "target_img_id": 101, "relative_caption": "is at night",
         "shared_concept": "a street", "gt_img_ids": [101, 103, 104, 105, 106, 107], "semantic_aspects": []},
    ])
    _json(root / "annotations" / "test.json", [
        {"id": 5, "reference_img_id": 105, "relative_caption": "in black and white", "shared_concept": "a cat"},
    ])
    return root


@pytest.fixture
def circo_root(tmp_path: Path) -> Path:
    return write_circo(tmp_path / "CIRCO")


def test_circo_loader_reads_the_gallery_queries_and_ground_truths(circo_root: Path):
    dataset = load_dataset("circo", circo_root)
    assert (dataset.name, dataset.split, dataset.metrics) == ("CIRCO", "val", ("map_min@5", "map_min@10", "map_min@25", "map_min@50"))
    assert [item.id for item in dataset.items] == [str(i) for i in CIRCO_IDS]
    assert dataset.items[0].source == str(circo_root / "COCO2017_unlabeled" / "unlabeled2017" / "000000000101.jpg")
    first = dataset.queries[0]
    assert (first.id, first.modification, first.image) == ("0", "has two dogs", dataset.items[0].source)
    assert first.metadata == {"reference": "101", "shared_concept": "a dog", "semantic_aspects": ["cardinality"]}
    assert dataset.qrels == {"0": {"102": 1, "103": 1, "104": 1},
                             "1": {"101": 1, "103": 1, "104": 1, "105": 1, "106": 1, "107": 1}}
    assert not dataset.needs_full_ranking

    test = load_circo(circo_root, "test")
    assert [q.id for q in test.queries] == ["5"] and test.qrels == {"5": {}}
    assert test.queries[0].image == str(circo_root / "COCO2017_unlabeled" / "unlabeled2017" / "000000000105.jpg")


def test_circo_map_divides_by_min_of_ground_truths_and_k(circo_root: Path):
    dataset = load_circo(circo_root)
    # Query 0: 3 ground truths, at ranks 1, 3 and 6.
    #   AP@5  = (1/1 + 2/3) / min(3, 5)           = 5/9
    #   AP@10 = (1/1 + 2/3 + 3/6) / min(3, 10)    = 13/18
    # Query 1: 6 ground truths, at ranks 1, 2, 4, 5, 7 and 9.
    #   AP@5  = (1/1 + 2/2 + 3/4 + 4/5) / min(6, 5) = 3.55 / 5
    #   AP@10 = (... + 5/7 + 6/9) / min(6, 10)        = (3.55 + 5/7 + 2/3) / 6
    orders = {"0": ["102", "110", "103", "101", "105", "104"],
              "1": ["101", "103", "110", "104", "105", "102", "106", "108", "107"]}
    [report] = evaluate(_fixed_pipeline(dataset, orders), dataset, ["map_min@5", "map_min@10"], k=10)
    assert report.metrics["map_min@5"] == pytest.approx((5 / 9 + 3.55 / 5) / 2)
    assert report.metrics["map_min@10"] == pytest.approx((13 / 18 + (3.55 + 5 / 7 + 2 / 3) / 6) / 2)
    # trec_eval's map_cut (mmrank's map@5) divides query 1's AP@5 by 6: CIRCO's normalisation differs.
    assert parse_metric("map_min@5")(orders["1"], dataset.qrels["1"]) == pytest.approx(3.55 / 5)
    assert parse_metric("map@5")(orders["1"], dataset.qrels["1"]) == pytest.approx(3.55 / 6)
    [default] = evaluate(_fixed_pipeline(dataset, orders), dataset)
    assert default.metrics["map_min@5"] == report.metrics["map_min@5"]


def test_circo_bad_inputs_are_clear_errors(circo_root: Path):
    val = circo_root / "annotations" / "val.json"
    original = val.read_text()
    _rewrite(val, lambda entries: entries[1].pop("relative_caption"))
    with pytest.raises(InputError, match=re.escape(f"{val}: entry 1 has no 'relative_caption'.")):
        load_circo(circo_root)
    val.write_text(original)
    _rewrite(val, lambda entries: entries[0]["gt_img_ids"].append(999))
    with pytest.raises(InputError, match=re.escape(f"{val}: entry 0 (id 0): gt_img_ids 999 is not an image of "
                                                   "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json")):
        load_circo(circo_root)
    val.write_text(original)
    with pytest.raises(InputError, match="CIRCO folder not found: .*missing"):
        load_circo(circo_root / "missing")
    with pytest.raises(InputError, match="Unknown CIRCO split 'train'"):
        load_circo(circo_root, "train")
    (circo_root / "annotations" / "test.json").unlink()
    with pytest.raises(InputError, match=re.escape(f"Missing file {circo_root / 'annotations' / 'test.json'}.")):
        load_circo(circo_root, "test")
    image = circo_root / "COCO2017_unlabeled" / "unlabeled2017" / "000000000107.jpg"
    image.unlink()
    with pytest.raises(InputError, match=re.escape(f"image_info_unlabeled2017.json: 1 of the 10 images it lists "
                                                   f"are missing: {image}")):
        load_circo(circo_root)
    info = circo_root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
    info.unlink()
    with pytest.raises(InputError, match=re.escape(f"Missing file {info}.")):
        load_circo(circo_root)


def test_circo_submission_is_query_id_to_top_50_integer_ids(circo_root: Path, tmp_path: Path):
    dataset = load_circo(circo_root, "test")
    ranking = [str(1000 + i) for i in range(60)]
    [path] = dataset.write_submission({"5": ranking}, tmp_path, "images-clip")
    assert path.name == "circo_submission_images-clip.json"
    assert json.loads(path.read_text()) == {"5": list(range(1000, 1050))}


# --- FashionIQ ---------------------------------------------------------------------------------

FIQ_SPLITS = {"dress": ["D1", "D2", "D3", "S1"], "shirt": ["S1", "S2", "S3"], "toptee": ["T1", "T2", "T3"]}


def write_fashioniq(root: Path, ext: str = ".png") -> Path:
    """``root`` in the official FashionIQ layout: a few images per category (S1 listed under
    both dress and shirt), two queries for dress and shirt, one for toptee."""
    for index, asin in enumerate(sorted({a for names in FIQ_SPLITS.values() for a in names})):
        _image(root / "images" / f"{asin}{ext}", index)
    for category, names in FIQ_SPLITS.items():
        _json(root / "image_splits" / f"split.{category}.val.json", names)
    _json(root / "captions" / "cap.dress.val.json", [
        {"candidate": "D1", "target": "D2", "captions": ["is red.", " has long sleeves. "]},
        {"candidate": "D3", "target": "S1", "captions": ["is shorter", "is blue"]},
    ])
    _json(root / "captions" / "cap.shirt.val.json", [
        {"candidate": "S1", "target": "S2", "captions": ["has a collar", "is striped."]},
        {"candidate": "S2", "target": "S3", "captions": ["is plain", "is green"]},
    ])
    _json(root / "captions" / "cap.toptee.val.json", [
        {"candidate": "T1", "target": "T3", "captions": ["has a logo.", "is black"]},
    ])
    return root


@pytest.fixture
def fiq_root(tmp_path: Path) -> Path:
    return write_fashioniq(tmp_path / "FashionIQ")


def test_fashioniq_loader_reads_every_category(fiq_root: Path):
    dataset = load_dataset("fashioniq", fiq_root)
    assert (dataset.name, dataset.split, dataset.metrics) == ("FashionIQ", "val", ("recall@10", "recall@50"))
    assert [item.id for item in dataset.items] == ["D1", "D2", "D3", "S1", "S2", "S3", "T1", "T2", "T3"]
    by_id = {item.id: item for item in dataset.items}
    assert by_id["S1"].metadata == {"category": "dress"} and by_id["T2"].metadata == {"category": "toptee"}
    assert by_id["D2"].source == str(fiq_root / "images" / "D2.png")
    assert [q.id for q in dataset.queries] == ["dress-0", "dress-1", "shirt-0", "shirt-1", "toptee-0"]
    first = dataset.queries[0]
    assert first == Query(image=str(fiq_root / "images" / "D1.png"), modification="is red and has long sleeves",
                          id="dress-0", metadata={"category": "dress", "candidate": "D1"},
                          candidates=frozenset(FIQ_SPLITS["dress"]))
    assert dataset.queries[2].candidates == frozenset(FIQ_SPLITS["shirt"])
    assert dataset.qrels == {"dress-0": {"D2": 1}, "dress-1": {"S1": 1}, "shirt-0": {"S2": 1},
                             "shirt-1": {"S3": 1}, "toptee-0": {"T3": 1}}
    assert (dataset.group_by, dataset.report_groups) == ("category", True)

    shirts = load_fashioniq(fiq_root, categories="shirt")
    assert [item.id for item in shirts.items] == ["S1", "S2", "S3"] and len(shirts.queries) == 2
    assert join_captions(["Is red. ", "", "?has a bow,"]) == "Is red and has a bow"


def test_fashioniq_reports_recall_per_category_and_their_mean(fiq_root: Path):
    dataset = load_fashioniq(fiq_root)
    # recall@1 per query: dress-0 1, dress-1 0, shirt-0 0, shirt-1 1, toptee-0 1.
    orders = {"dress-0": ["D2"], "dress-1": ["D1", "S1"], "shirt-0": ["S3", "S2"], "shirt-1": ["S3"],
              "toptee-0": ["T3"]}
    [report] = evaluate(_fixed_pipeline(dataset, orders), dataset, ["recall@1", "recall@2"], k=10)
    assert report.metrics == {
        "recall@1": 3 / 5, "macro/recall@1": (0.5 + 0.5 + 1.0) / 3,
        "dress/recall@1": 0.5, "shirt/recall@1": 0.5, "toptee/recall@1": 1.0,
        "recall@2": 1.0, "macro/recall@2": 1.0, "dress/recall@2": 1.0, "shirt/recall@2": 1.0,
        "toptee/recall@2": 1.0, "queries": 5,
    }


def test_fashioniq_bad_inputs_are_clear_errors(fiq_root: Path, tmp_path: Path):
    with pytest.raises(InputError, match="Unknown FashionIQ categories \\['skirt'\\]"):
        load_fashioniq(fiq_root, categories=("dress", "skirt"))
    dress = fiq_root / "captions" / "cap.dress.val.json"
    original = dress.read_text()
    _rewrite(dress, lambda entries: entries[1].pop("captions"))
    with pytest.raises(InputError, match=re.escape(f"{dress}: entry 1 has no 'captions'.")):
        load_fashioniq(fiq_root)
    dress.write_text(original)
    _rewrite(dress, lambda entries: entries[0].update(target="T1"))
    with pytest.raises(InputError, match=re.escape(f"{dress}: entry 0: target 'T1' is not an image of "
                                                   "split.dress.val.json")):
        load_fashioniq(fiq_root)
    dress.write_text(original)
    (fiq_root / "image_splits" / "split.toptee.val.json").unlink()
    with pytest.raises(InputError, match="Missing file .*split.toptee.val.json"):
        load_fashioniq(fiq_root)
    # A copy with .jpg images: the error says which files are missing and how to point at them.
    jpg_root = write_fashioniq(tmp_path / "jpg", ext=".jpg")
    with pytest.raises(InputError, match=re.escape("split.dress.val.json: 4 of the 4 images it lists are "
                                                   f"missing: {jpg_root / 'images' / 'D1.png'}") +
                       ".*pass image_ext=.jpg"):
        load_fashioniq(jpg_root)
    assert len(load_fashioniq(jpg_root, image_ext="jpg").items) == 9


# --- end to end --------------------------------------------------------------------------------


def _eval(run_cli, root: Path, kind: str, tiny_clip_dir: Path, *extra) -> dict:
    code, out, err = run_cli("eval", root, "--format", kind, "--pipeline", "images-clip",
                             "--image-model", f"local-dir:{tiny_clip_dir}", "--device", "cpu", "--json", *extra)
    assert code == 0, err
    result = json.loads(out)
    [stage] = result["stages"]
    assert stage["stage"] == "retrieve"
    return stage["metrics"]


def test_eval_cirr_end_to_end_with_a_submission(cirr_root: Path, tmp_path: Path, run_cli, tiny_clip_dir: Path):
    out = tmp_path / "submission"
    metrics = _eval(run_cli, cirr_root, "cirr", tiny_clip_dir, "--submission", out)
    assert list(metrics) == ["recall@1", "recall@5", "recall@10", "recall@50", "queries",
                             "subset/recall@1", "subset/recall@2", "subset/recall@3", "subset/queries"]
    assert metrics["queries"] == 2 and metrics["recall@50"] == 1.0 and metrics["subset/recall@3"] >= 0.5
    recall = json.loads((out / "recall_submission_images-clip.json").read_text())
    subset = json.loads((out / "recall_subset_submission_images-clip.json").read_text())
    # Every other dev image is ranked (the whole gallery: the subset protocol needs it), never
    # the reference.
    assert sorted(recall["10"]) == sorted(DEV[1:]) and sorted(recall["11"]) == sorted(set(DEV) - {DEV[2]})
    assert set(subset["10"]) <= set(DEV[1:6]) and len(subset["10"]) == 3

    code, _, err = run_cli("eval", write_fashioniq(tmp_path / "fiq"), "--format", "fashioniq",
                           "--submission", out, "--image-model", f"local-dir:{tiny_clip_dir}")
    assert code == 2 and "--submission: the dataset FashionIQ (fashioniq) has no test-server submission" in err


def test_cirr_rankings_never_hold_the_reference_and_cover_the_gallery(cirr_root: Path, tiny_clip, tmp_path: Path):
    from mmrank.collection import Collection
    from mmrank.evaluation import add_dataset_items
    from mmrank.indexing import ItemEncoder

    dataset = load_cirr(cirr_root)
    with Collection.create(tmp_path / "c") as collection:
        add_dataset_items(collection, dataset, ItemEncoder(None, tiny_clip))
        collection.use_encoder("image", tiny_clip)
        pipeline = Pipeline.from_yaml("images-clip", collection)
        seen: list[RankedRows] = []
        evaluate(pipeline, dataset, k=len(dataset.items), on_batch=seen.extend)
    assert [ranked.query.id for ranked in seen] == ["10", "11"]
    for ranked in seen:
        reference = ranked.query.metadata["reference"]
        assert reference not in ranked.ids()
        assert sorted(ranked.ids()) == sorted(set(DEV) - {reference})


def test_eval_circo_and_fashioniq_end_to_end(circo_root: Path, fiq_root: Path, tmp_path: Path, run_cli,
                                             tiny_clip_dir: Path):
    out = tmp_path / "submission"
    metrics = _eval(run_cli, circo_root, "circo", tiny_clip_dir, "--submission", out)
    assert list(metrics) == ["map_min@5", "map_min@10", "map_min@25", "map_min@50", "queries"] and metrics["queries"] == 2
    submitted = json.loads((out / "circo_submission_images-clip.json").read_text())
    assert set(submitted) == {"0", "1"} and sorted(submitted["0"]) == CIRCO_IDS

    metrics = _eval(run_cli, fiq_root, "fashioniq", tiny_clip_dir)
    assert list(metrics) == [
        "recall@10", "macro/recall@10", "dress/recall@10", "shirt/recall@10", "toptee/recall@10",
        "recall@50", "macro/recall@50", "dress/recall@50", "shirt/recall@50", "toptee/recall@50", "queries"]
    # Each category's gallery has at most four images, so every target is in the top 10.
    assert all(value == 1.0 for key, value in metrics.items() if key != "queries")


def test_a_dataset_with_subset_judgements_is_ranked_to_the_last_item(cirr_root: Path, circo_root: Path):
    from mmrank.evaluation import ranking_depth

    assert ranking_depth(["recall@1", "recall@50"], 2297, full=load_cirr(cirr_root).needs_full_ranking) == 2297
    assert ranking_depth(["map_min@50"], 123403, full=load_circo(circo_root).needs_full_ranking) == 100


# --- paths in the annotations stay inside the dataset folder -----------------------------------


def _outside(tmp_path: Path, name: str = "secret.png") -> Path:
    """A real image outside the dataset folder: nothing may look at it."""
    _image(tmp_path / "outside" / name, 99)
    return tmp_path / "outside"


def _refused(error: pytest.ExceptionInfo, source: str, path: str, folder: Path) -> None:
    message = str(error.value)
    assert message.startswith(f"{source}: the path {path!r} "), message
    assert message.endswith(f"must lie inside the dataset folder {folder}."), message


@pytest.mark.parametrize("bad", ["../outside/secret.png", "./dev/../../outside/secret.png", "ABSOLUTE"])
def test_cirr_image_path_leaving_the_folder_is_refused_before_it_is_read(
    cirr_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
):
    outside = _outside(tmp_path)
    bad = str(outside / "secret.png") if bad == "ABSOLUTE" else bad  # once kept as it was
    split = cirr_root / "cirr" / "image_splits" / "split.rc2.val.json"
    _rewrite(split, lambda paths: paths.update({DEV[5]: bad}))
    touched = untouched(monkeypatch, outside)
    with pytest.raises(InputError) as error:
        load_cirr(cirr_root)
    _refused(error, f"{split}: image {DEV[5]!r}", bad, cirr_root)
    assert touched == []


def test_cirr_nested_and_symlinked_image_folders_still_load(cirr_root: Path, tmp_path: Path):
    split = cirr_root / "cirr" / "image_splits" / "split.rc2.val.json"
    (cirr_root / "dev" / "a").mkdir()
    (cirr_root / "dev" / f"{DEV[0]}.png").rename(cirr_root / "dev" / "a" / "b.png")
    _rewrite(split, lambda paths: paths.update({DEV[0]: "./dev/a/b.png", DEV[1]: "dev/x/../" + f"{DEV[1]}.png"}))
    dataset = load_cirr(cirr_root)
    assert dataset.items[0].source == str(cirr_root / "dev" / "a" / "b.png")
    assert dataset.items[1].source == str(cirr_root / "dev" / f"{DEV[1]}.png")
    assert dataset.queries[0].image == dataset.items[0].source

    (tmp_path / "other-disk").mkdir()
    (cirr_root / "dev").rename(tmp_path / "other-disk" / "dev")
    (cirr_root / "dev").symlink_to(tmp_path / "other-disk" / "dev", target_is_directory=True)
    assert [item.source for item in load_cirr(cirr_root).items] == [item.source for item in dataset.items]


CIRCO_IMAGES = Path("COCO2017_unlabeled") / "unlabeled2017"


def _circo_file_name(root: Path, index: int, name: str) -> Path:
    info = root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
    _rewrite(info, lambda value: value["images"][index].update(file_name=name))
    return info


# "../secret.jpg" stays in the dataset folder but leaves the image folder file names are relative to.
@pytest.mark.parametrize("bad", ["../../../outside/secret.jpg", "../secret.jpg", "ABSOLUTE"])
def test_circo_file_name_leaving_the_image_folder_is_refused_before_it_is_read(
    circo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
):
    outside = _outside(tmp_path, "secret.jpg")
    bad = str(outside / "secret.jpg") if bad == "ABSOLUTE" else bad
    info = _circo_file_name(circo_root, 2, bad)
    touched = untouched(monkeypatch, outside)
    with pytest.raises(InputError) as error:
        load_circo(circo_root)
    _refused(error, f"{info}: images[2] (id 103) file_name", bad, circo_root / CIRCO_IMAGES)
    assert touched == []


def test_circo_nested_and_symlinked_image_folders_still_load(circo_root: Path, tmp_path: Path):
    images = circo_root / CIRCO_IMAGES
    (images / "a").mkdir()
    (images / "000000000101.jpg").rename(images / "a" / "b.jpg")
    _circo_file_name(circo_root, 0, "a/b.jpg")
    dataset = load_circo(circo_root)
    assert dataset.items[0].source == str(images / "a" / "b.jpg")
    assert dataset.queries[0].image == dataset.items[0].source

    images.rename(tmp_path / "unlabeled2017")
    images.symlink_to(tmp_path / "unlabeled2017", target_is_directory=True)
    assert [item.source for item in load_circo(circo_root).items] == [item.source for item in dataset.items]


@pytest.mark.parametrize("bad", ["../../outside/secret", "a/../../../outside/secret", "ABSOLUTE"])
def test_fashioniq_image_names_leaving_the_image_folder_are_refused_before_they_are_read(
    fiq_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
):
    outside = _outside(tmp_path)
    bad = str(outside / "secret") if bad == "ABSOLUTE" else bad
    touched = untouched(monkeypatch, outside)
    split = fiq_root / "image_splits" / "split.shirt.val.json"
    original = split.read_text()
    _rewrite(split, lambda names: names.append(bad))
    with pytest.raises(InputError) as error:
        load_fashioniq(fiq_root)
    _refused(error, f"{split}: image {bad!r}", f"{bad}.png", fiq_root / "images")
    split.write_text(original)

    captions = fiq_root / "captions" / "cap.shirt.val.json"
    _rewrite(captions, lambda entries: entries[1].update(candidate=bad))
    with pytest.raises(InputError) as error:
        load_fashioniq(fiq_root)
    _refused(error, f"{captions}: entry 1 candidate", f"{bad}.png", fiq_root / "images")
    assert touched == []


def test_fashioniq_nested_and_symlinked_image_folders_still_load(fiq_root: Path, tmp_path: Path):
    _image(fiq_root / "images" / "a" / "T9.png", 9)
    _rewrite(fiq_root / "image_splits" / "split.toptee.val.json", lambda names: names.append("a/T9"))
    dataset = load_fashioniq(fiq_root, categories="toptee")
    assert dataset.items[-1].id == "a/T9"
    assert dataset.items[-1].source == str(fiq_root / "images" / "a" / "T9.png")

    (fiq_root / "images").rename(tmp_path / "other-disk")
    (fiq_root / "images").symlink_to(tmp_path / "other-disk", target_is_directory=True)
    assert [item.source for item in load_fashioniq(fiq_root, categories="toptee").items] == [
        item.source for item in dataset.items]
