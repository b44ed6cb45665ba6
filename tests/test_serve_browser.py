"""The page of ``mmrank serve`` in a real browser: the server runs (uvicorn on a free local port)
over collections of the bundled PDFs (MiniLM), the bundled photos (the tiny CLIP) and a page full of
markup; Chromium, driven by Playwright, types, uploads and reads what the page shows.

Needs the Debian package ``chromium`` (``scripts/system_packages.sh`` installs it as root; Playwright's
own browser download is not used). Set ``MMRANK_SERVE_SCREENSHOT=docs/serve.png`` to save the
screenshot of the README from the first test.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.paths import ASSETS, IMAGES
from tests.sample_files import make_pdf

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="the search page's browser tests need Chromium: as root, bash scripts/system_packages.sh "
    "(or apt-get install chromium)")

TOKEN = "s3cret-token"
MARKUP = "<script>window.pwned=1</script>"
MARKUP_IMG = "<img src=x onerror=window.pwned=2>"
MARKUP_NAME = "<b>bold<b> notes.pdf"  # a file name with markup (a Linux file name may hold < and >)


class LiveServer:
    """uvicorn serving ``app`` on a free port of 127.0.0.1, in a thread of this process."""

    def __init__(self, app) -> None:
        import uvicorn

        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [listener]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, minilm, tiny_clip):
    """The three served collections: pdfs (docqa-text, then the default pipeline), photos and markup."""
    from mmrank.collection import Collection
    from mmrank.indexing import ItemEncoder, index_paths
    from mmrank.pipeline import Pipeline
    from mmrank.server import Served

    root = tmp_path_factory.mktemp("served")
    pdfs = Collection.create(root / "pdfs")
    index_paths(pdfs, [ASSETS / "pdfs"], ItemEncoder(minilm))
    pdfs.use_encoder("text", minilm)
    photos = Collection.create(root / "photos")
    index_paths(photos, [IMAGES], ItemEncoder(None, tiny_clip))
    photos.use_encoder("image", tiny_clip)
    markup = Collection.create(root / "markup")
    page = make_pdf(root / "files" / MARKUP_NAME, [f"Notes on tags: {MARKUP} and {MARKUP_IMG} in a page."])
    index_paths(markup, [page], ItemEncoder(minilm))
    markup.use_encoder("text", minilm)
    entries = [Served("pdfs", pdfs, {"docqa-text": Pipeline.from_yaml("docqa-text", pdfs), "default": Pipeline(pdfs)}),
               Served("photos", photos, {"default": Pipeline(photos)}),
               Served("markup", markup, {"default": Pipeline(markup)})]
    yield entries
    for entry in entries:
        entry.collection.close()


def _serve(served, token=None) -> Iterator[LiveServer]:
    from mmrank.server import ServeOptions, create_app

    server = LiveServer(create_app(served, ServeOptions(token=token)))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server(served) -> Iterator[LiveServer]:
    yield from _serve(served)


@pytest.fixture(scope="module")
def token_server(served) -> Iterator[LiveServer]:
    yield from _serve(served[2:], token=TOKEN)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh page (its own session storage) that fails the test on a script error or a dialog."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("dialog", lambda dialog: (errors.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    yield page
    context.close()
    assert not errors, errors


def open_page(page, url: str, ready: str = "Ready: ") -> None:
    page.goto(url + "/")
    page.wait_for_function("text => document.getElementById('status').textContent.includes(text)", arg=ready)


def search(page, text: str = "", *, collection: str | None = None, k: int = 10, image: Path | None = None):
    """Fill the form, submit, wait until the page has shown the answer; returns the /search response."""
    if collection:
        page.select_option("#collection", collection)
    if image:
        page.set_input_files("#image", str(image))
    page.fill("#text", text)
    page.fill("#k", str(k))
    with page.expect_response(lambda r: r.url.endswith("/search") and r.request.method == "POST") as answer:
        page.click("#go")
    page.wait_for_function("!document.getElementById('go').disabled")
    return answer.value


def wait_for_thumbnails(page) -> None:
    page.wait_for_function("""() => {
        const thumbs = [...document.querySelectorAll('#results article.card img.thumb')];
        return thumbs.length > 0 && thumbs.every((img) => img.complete && img.naturalWidth > 0);
    }""", timeout=15_000)


def status(page) -> str:
    return page.text_content("#status")


def test_questions_find_their_pages_with_thumbnails(page, server, served):
    open_page(page, server.url)
    assert page.eval_on_selector_all("#collection option", "os => os.map((o) => o.value)") == ["pdfs", "photos",
                                                                                                "markup"]
    assert page.eval_on_selector_all("#pipeline option", "os => os.map((o) => o.value)") == ["docqa-text", "default"]
    pdfs = served[0].collection
    questions = json.loads((ASSETS / "questions.json").read_text())
    for question in questions:
        response = search(page, question["question"], collection="pdfs", k=6)
        assert response.ok, response.text()
        first = page.locator("#results article.card").first
        item = pdfs.get(first.get_attribute("data-id"))
        expected = question["expected"][0]
        assert (Path(item.source).name, item.page) == (Path(expected["source"]).name, expected["page"]), question
        assert first.locator(".source").text_content() == f"{Path(expected['source']).name}, page {expected['page']}"
        assert first.locator(".rank").text_content() == "#1"
        assert page.locator("#results article.card").count() == 6
        assert re.fullmatch(r"6 results from pdfs \(docqa-text\), \d+ ms\.", status(page)), status(page)
        wait_for_thumbnails(page)
        assert first.locator("td").first.text_content() == "retrieve" and "found by" in first.text_content()
    if os.environ.get("MMRANK_SERVE_SCREENSHOT"):  # the README's picture, in 256 colours to keep it small
        from PIL import Image

        search(page, "How long do cats sleep?", collection="pdfs", k=8)
        wait_for_thumbnails(page)
        picture = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
        picture.quantize(256, Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            os.environ["MMRANK_SERVE_SCREENSHOT"], optimize=True)


def test_picture_and_text_search_the_photos(page, server):
    open_page(page, server.url)
    page.select_option("#collection", "photos")
    assert page.eval_on_selector_all("#pipeline option", "os => os.map((o) => o.value)") == ["default"]
    response = search(page, "the same, in black and white", collection="photos", k=5, image=IMAGES / "cat.jpg")
    assert response.ok, response.text()
    assert response.json()["query"] == {"text": "the same, in black and white", "image": True}
    assert page.is_visible("#preview") and page.text_content("#drop-text") == "Reference: cat.jpg"
    assert page.locator("#results article.card").count() == 5
    assert re.fullmatch(r"5 results from photos \(default\), \d+ ms\.", status(page)), status(page)
    wait_for_thumbnails(page)
    ids = page.eval_on_selector_all("#results article.card", "cards => cards.map((c) => c.dataset.id)")
    assert len(set(ids)) == 5 and {i.rsplit("/", 1)[-1] for i in ids} <= {p.name for p in IMAGES.glob("*.jpg")}

    page.click("#clear-image")  # without the picture, a text alone searches through CLIP's text tower
    assert page.is_hidden("#preview")
    response = search(page, "a rocket", k=3)
    assert response.ok and response.json()["query"] == {"text": "a rocket", "image": False}
    assert page.locator("#results article.card").count() == 3

    response = search(page, "", k=3, image=IMAGES / "coins.jpg")  # a picture alone
    assert response.ok and response.json()["query"] == {"text": None, "image": True}
    assert page.text_content("#drop-text") == "Reference: coins.jpg"
    assert page.locator("#results article.card").count() == 3
    wait_for_thumbnails(page)

    page.click("#clear-image")  # nothing left to search with: the page says so and sends nothing
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url))
    page.fill("#text", "")
    page.click("#go")
    assert status(page) == "Type a text, add a picture, or both." and "error" in page.get_attribute("#status", "class")
    page.wait_for_timeout(100)
    assert not [url for url in sent if url.endswith("/search")]


def test_markup_in_the_query_and_the_page_shows_as_text(page, server):
    open_page(page, server.url)
    query = f"tags {MARKUP} {MARKUP_IMG}"
    response = search(page, query, collection="markup", k=5)
    assert response.ok, response.text()
    card = page.locator("#results article.card").first
    assert MARKUP in card.locator(".snippet").text_content() and MARKUP_IMG in card.locator(".snippet").text_content()
    assert card.locator(".source").text_content() == f"{MARKUP_NAME}, page 1"
    wait_for_thumbnails(page)
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.locator("body script").count() == 1  # the page's own app.js, nothing added
    assert page.locator("img[src='x']").count() == 0 and page.locator("#results b").count() == 0

    # An error message that repeats what was sent shows as text too.
    page.evaluate("""(markup) => {
        const option = document.createElement('option');
        option.value = option.textContent = markup;
        document.getElementById('collection').append(option);
    }""", MARKUP_IMG)
    response = search(page, "tags", collection=MARKUP_IMG)
    assert response.status == 404
    assert MARKUP_IMG in status(page) and "error" in page.get_attribute("#status", "class")
    assert page.evaluate("typeof window.pwned") == "undefined" and page.locator("img[src='x']").count() == 0


def test_token_box_then_search(page, token_server):
    open_page(page, token_server.url, ready="needs a token")
    assert page.is_visible("#token-box") and page.locator("#collection option").count() == 0

    page.fill("#token", "wrong")
    response = search(page, "tags")
    assert response.status == 401 and "valid token" in status(page)

    page.fill("#token", TOKEN)
    response = search(page, "tags", k=3)
    assert response.ok, response.text()
    assert page.locator("#results article.card").count() == 1
    assert re.fullmatch(r"1 result from markup \(default\), \d+ ms\.", status(page)), status(page)
    wait_for_thumbnails(page)  # the thumbnail is fetched with the token too
    page.wait_for_function("document.querySelectorAll('#collection option').length === 1")
    assert page.input_value("#collection") == "markup"
