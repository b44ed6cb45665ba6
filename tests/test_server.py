"""`mmrank serve`'s API: the same hits as `search --json`, batching that changes nothing, and bad
input, uploads and tokens handled as the issue asks."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from mmrank.collection import Collection
from mmrank.indexing import ItemEncoder, index_paths
from mmrank.pipeline import Pipeline, with_snippets
from mmrank.server import Served, ServeOptions, create_app
from mmrank.types import Query
from tests.paths import REPO
from tests.sample_files import make_pdf

PAGES = ["Cats sleep sixteen hours a day.", "Rockets burn liquid oxygen and kerosene.",
         "Espresso is brewed under nine bars of pressure.", "The violin has four strings tuned in fifths."]
QUESTIONS = ["How long do cats sleep?", "What do rockets burn?", "espresso pressure", "violin strings",
             "cats and violins", "kerosene", "nine bars", "fifths"]


@pytest.fixture(scope="module")
def docs(tmp_path_factory, minilm):
    root = tmp_path_factory.mktemp("docs")
    make_pdf(root / "in" / "facts.pdf", PAGES)
    collection = Collection.create(root / "docs")
    index_paths(collection, [root / "in"], ItemEncoder(minilm))
    collection.use_encoder("text", minilm)
    yield collection
    collection.close()


@pytest.fixture(scope="module")
def pictures(tmp_path_factory, tiny_clip):
    collection = Collection.create(tmp_path_factory.mktemp("pictures") / "pictures")
    index_paths(collection, [REPO / "assets" / "images"], ItemEncoder(None, lambda: tiny_clip))
    collection.use_encoder("image", tiny_clip)
    yield collection
    collection.close()


def _served(docs, pictures=None):
    served = [Served("docs", docs, {"default": Pipeline(docs), "docqa-text": Pipeline.from_yaml("docqa-text", docs)})]
    if pictures is not None:
        served.append(Served("pictures", pictures, {"images-clip": Pipeline.from_yaml("images-clip", pictures)}))
    return served


@pytest.fixture(scope="module")
def client(docs, pictures):
    with TestClient(create_app(_served(docs, pictures), ServeOptions(max_upload_mb=0.5,
                                                                       max_image_pixels=2_000_000))) as client:
        yield client


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_health_and_collections(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/collections").json() == [
        {"name": "docs", "items": 4, "spaces": ["text"], "has_text": True, "pipelines": ["default", "docqa-text"],
         "default_pipeline": "default"},
        {"name": "pictures", "items": 8, "spaces": ["image"], "has_text": False, "pipelines": ["images-clip"],
         "default_pipeline": "images-clip"}]


def test_a_text_search_answers_what_search_json_prints(client, docs):
    answer = client.post("/search", json={"text": "How long do cats sleep?", "k": 3, "pipeline": "docqa-text"}).json()
    expected = with_snippets(Pipeline.from_yaml("docqa-text", docs).search("How long do cats sleep?", 3)).to_dicts()
    assert [{key: value for key, value in hit.items() if key != "thumbnail"} for hit in answer["hits"]] == expected
    assert answer["hits"][0]["page"] == 1 and answer["stages"] == ["retrieve"]
    assert answer["hits"][0]["thumbnail"].startswith("/thumbnail?collection=docs&id=")
    # The same as a form, and the thumbnail it names is the page's picture.
    form = client.post("/search", data={"text": "How long do cats sleep?", "k": "3", "pipeline": "docqa-text"}).json()
    assert form["hits"] == answer["hits"]
    picture = client.get(answer["hits"][0]["thumbnail"])
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(picture.content)).size) <= 256


def test_a_composed_search_with_an_uploaded_picture(client, pictures):
    upload = (REPO / "assets" / "images" / "cat.jpg").read_bytes()
    answer = client.post("/search", data={"text": "make it red", "k": "4", "collection": "pictures"},
                         files={"image": ("cat.jpg", upload, "image/jpeg")})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["query"] == {"text": "make it red", "image": True} and len(body["hits"]) == 4
    query = Query(image=Image.open(io.BytesIO(upload)).convert("RGB"), modification="make it red")
    assert [hit["id"] for hit in body["hits"]] == Pipeline.from_yaml("images-clip", pictures).search(query, 4).ids


def test_concurrent_requests_are_batched_and_answer_as_searches_one_at_a_time(docs):
    app = create_app(_served(docs), ServeOptions(max_batch=16, max_wait_ms=50))
    pipeline = Pipeline(docs)

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            asks = [http.post("/search", json={"text": text, "k": 2 + n % 3}) for n, text in enumerate(QUESTIONS)]
            asks.append(http.post("/search", data={"collection": "docs"},  # an image query this collection
                                  files={"image": ("red.png", _png(8, 8), "image/png")}))  # cannot answer
            return await asyncio.gather(*asks)

    *answers, refused = asyncio.run(main())
    assert max(app.state.batchers["docs", "default"].batches) > 1
    for n, (text, answer) in enumerate(zip(QUESTIONS, answers)):
        assert answer.status_code == 200
        assert [hit["id"] for hit in answer.json()["hits"]] == pipeline.search(text, 2 + n % 3).ids
        assert [hit["score"] for hit in answer.json()["hits"]] == [hit.score for hit in pipeline.search(text, 2 + n % 3)]
    assert refused.status_code == 400 and "no image vectors" in refused.json()["detail"]


@pytest.mark.parametrize(("request_options", "status", "message"), [
    ({"data": {"k": "3"}}, 422, "Give a text, an image, or both."),
    ({"json": {"text": "cats", "k": 0}}, 422, "k must be a whole number from 1 to 100"),
    ({"json": {"text": "cats", "k": "many"}}, 422, "k must be a whole number"),
    ({"json": {"text": "cats", "size": 3}}, 422, "Unknown fields ['size']"),
    ({"json": ["cats"]}, 422, "must be a JSON object"),
    ({"content": b"text=cats", "headers": {"content-type": "text/plain"}}, 415, "Send the search as JSON"),
    ({"json": {"text": "cats", "collection": "elsewhere"}}, 404, "No collection named 'elsewhere' is served"),
    ({"json": {"text": "cats", "pipeline": "grid"}}, 404, "Collection 'docs' has no pipeline 'grid'"),
])
def test_bad_requests_are_answered_with_what_is_wrong(client, request_options, status, message):
    answer = client.post("/search", **request_options)
    assert answer.status_code == status and message in str(answer.json()["detail"])


def test_uploads_are_bounded_checked_and_never_decoded_past_their_limit(client):
    too_big = client.post("/search", data={"text": "x"}, files={"image": ("big.bin", b"\0" * 600_000, "image/png")})
    assert too_big.status_code == 413 and "larger than 0.5 MB" in too_big.json()["detail"]
    not_image = client.post("/search", data={"text": "x"}, files={"image": ("notes.txt", b"hello", "text/plain")})
    assert not_image.status_code == 415 and "notes.txt: not an image PIL can read" in not_image.json()["detail"]
    # PNGs whose headers declare many pixels and hold almost none: refused from the header (decoding
    # would fail on the missing data with a 415). 9,000 x 9,000 passes PIL's own bomb check but not
    # the server's limit (2M here); 30,000 x 30,000 trips PIL's.
    for side, message in ((9_000, "9000 x 9000 pixels is more than the 2,000,000 allowed"),
                          (30_000, "too many pixels to decode safely")):
        refused = client.post("/search", data={"text": "x"}, files={"image": ("bomb.png", _bomb(side), "image/png")})
        assert refused.status_code == 413 and message in refused.json()["detail"]


def _bomb(side: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("item_id", ["../../../../etc/passwd", "/etc/passwd", str(REPO / "assets" / "images" / "cat.jpg"),
                                     "docs/../pictures", ""])
def test_thumbnails_are_found_by_item_id_only(client, item_id):
    answer = client.get("/thumbnail", params={"collection": "docs", "id": item_id})
    assert answer.status_code == 404 and answer.headers["content-type"] == "application/json"
    assert client.get("/thumbnail", params={"collection": "../docs", "id": item_id}).status_code == 404


def test_thumbnail_of_an_image_item(client, pictures):
    item_id = next(item.id for item in pictures.items() if item.source.endswith("cat.jpg"))
    assert client.get("/thumbnail", params={"collection": "pictures", "id": item_id, "size": 128}).status_code == 200
    assert client.get("/thumbnail", params={"collection": "pictures", "id": item_id, "size": 9999}).status_code == 422


def test_a_token_guards_everything_but_health_and_the_page(docs):
    with TestClient(create_app(_served(docs), ServeOptions(token="s3cret"))) as client:
        for answer in (client.get("/collections"), client.post("/search", json={"text": "cats"}),
                       client.get("/thumbnail", params={"collection": "docs", "id": "x"}),
                       client.get("/collections", headers={"Authorization": "Bearer wrong"})):
            assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
            assert answer.json() == {"detail": "A valid token is needed: send the header "
                                               "'Authorization: Bearer <token>'."}
        good = {"Authorization": "Bearer s3cret"}
        assert client.get("/collections", headers=good).json()[0]["name"] == "docs"
        assert client.post("/search", json={"text": "cats"}, headers=good).status_code == 200
        assert client.get("/healthz").status_code == 200 and "<title>mmrank</title>" in client.get("/").text
        assert client.get("/static/app.js").status_code == 200


def test_a_search_past_its_time_is_504_and_the_queue_goes_on(docs):
    with TestClient(create_app(_served(docs), ServeOptions(timeout_s=0.000001))) as client:
        late = client.post("/search", json={"text": "cats"})
    assert late.status_code == 504 and "longer than" in late.json()["detail"]
    with TestClient(create_app(_served(docs))) as client:
        assert client.post("/search", json={"text": "cats"}).status_code == 200


def test_the_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="results"' in page.text and "/static/app.js" in page.text
    assert "textContent" in client.get("/static/app.js").text and "innerHTML" not in client.get("/static/app.js").text
    assert client.get("/static/../server.py").status_code == 404
    assert client.get("/docs").status_code == 200 and "/search" in client.get("/openapi.json").text


def test_serve_refuses_other_hosts_without_a_token(run_cli, docs):
    code, _, err = run_cli("serve", docs.path, "--host", "0.0.0.0")
    assert code == 2 and "--host 0.0.0.0 lets other machines search: give --token" in err


def test_the_web_files_travel_with_the_package():
    from mmrank.server import WEB_DIR

    assert {path.name for path in Path(WEB_DIR).iterdir()} >= {"index.html", "app.js", "style.css"}
