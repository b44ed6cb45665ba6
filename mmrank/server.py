"""``mmrank serve`` (extra ``mmrank[serve]``): collections and their pipelines behind an HTTP API and a web page, the models
loaded once, searches that arrive together run together (:mod:`mmrank.batcher`).

Endpoints (OpenAPI docs at ``/docs``):

- ``POST /search``: a JSON body ``{"text", "k", "collection", "pipeline"}``, or a multipart form with
  the same fields and an ``image`` file (a reference image; with a text, a composed query). The
  answer holds the hits as ``mmrank search --json`` prints them (every stage's score, rank and
  note), each with a ``thumbnail`` URL when it has a picture, plus what the models said
  (``explanations``) and showed (``pictures``, as data URLs).
- ``GET /collections``: what is served, with each collection's pipelines.
- ``GET /thumbnail?collection=&id=``: a small JPEG of an item (page render or image) of a served
  collection, found by id only: nothing in a request is ever used as a path.
- ``GET /healthz``; ``GET /``: the page (plain HTML, CSS and JS in ``mmrank/web``).

With a ``token``, every endpoint but ``/healthz`` and the page's own files needs the header
``Authorization: Bearer <token>`` (401 otherwise, saying nothing about the collections).
Uploads are bounded (``max_upload_mb``: 413), must be images PIL can read (415), and are refused
from their header when they hold more than ``max_image_pixels`` (413, before any pixel is decoded).
"""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles

from mmrank.batcher import DynamicBatcher
from mmrank.collection import Collection
from mmrank.errors import InputError, MMRankError, ModelUnavailableError
from mmrank.images import data_url, encoded
from mmrank.pipeline import Pipeline
from mmrank.types import Item, Query, Ranking

WEB_DIR = Path(__file__).with_name("web")
MAX_K = 100
THUMBNAIL_SIZES = (128, 256, 512)


@dataclass
class Served:
    """A collection served under ``name``, with its pipelines by name (the first is the default)."""

    name: str
    collection: Collection
    pipelines: dict[str, Pipeline] = field(default_factory=dict)

    @property
    def default_pipeline(self) -> str:
        return next(iter(self.pipelines))


@dataclass(frozen=True)
class ServeOptions:
    """How the service batches and what it accepts."""

    token: str | None = None
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_upload_mb: float = 10.0
    max_image_pixels: int = 40_000_000
    timeout_s: float = 120.0


class HTTPError(Exception):
    """An answer with an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class SearchAsk:
    """One search as the batcher carries it: the query and how many hits."""

    query: Query
    k: int


def create_app(served: Sequence[Served], options: ServeOptions = ServeOptions()) -> FastAPI:
    """The FastAPI application serving ``served`` (see the module docstring)."""
    if not served:
        raise InputError("Serve at least one collection.")
    by_name = {entry.name: entry for entry in served}
    if len(by_name) != len(served):
        raise InputError("Two served collections have the same name; give each folder its own name.")
    # Every use of a collection (searches, item lookups) runs in one thread, one at a time; page
    # renders for thumbnails run beside it.
    executor = ThreadPoolExecutor(1, thread_name_prefix="mmrank-search")
    renderer = ThreadPoolExecutor(2, thread_name_prefix="mmrank-thumbnail")
    described = [{"name": entry.name, "items": len(entry.collection), "spaces": sorted(entry.collection.spaces),
                  "has_text": entry.collection.has_text, "pipelines": list(entry.pipelines),
                  "default_pipeline": entry.default_pipeline} for entry in served]
    batchers = {(entry.name, name): DynamicBatcher(_search_runner(pipeline), max_batch=options.max_batch,
                                                   max_wait_ms=options.max_wait_ms, executor=executor)
                for entry in served for name, pipeline in entry.pipelines.items()}

    @asynccontextmanager
    async def lifespan(app):
        yield
        for batcher in batchers.values():  # requests in flight have finished: uvicorn waits for them
            await batcher.close()
        executor.shutdown(wait=True)
        renderer.shutdown(wait=True)

    app = FastAPI(title="mmrank", description="Search collections of images and PDF pages with text, "
                  "an image, or both.", lifespan=lifespan)
    app.add_middleware(UploadLimit, limit=int(options.max_upload_mb * 1024 * 1024))
    bearer = HTTPBearer(auto_error=False)

    def authorized(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if options.token is None:
            return
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), options.token.encode()):
            raise HTTPError(401, "A valid token is needed: send the header 'Authorization: Bearer <token>'.")

    @app.exception_handler(HTTPError)
    async def http_error(request: Request, error: HTTPError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return JSONResponse({"detail": error.message}, status_code=error.status, headers=headers)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/collections", dependencies=[Depends(authorized)])
    async def collections() -> list[dict[str, Any]]:
        """Every served collection: its name, size, spaces and pipelines (the first is the default)."""
        return described

    @app.post("/search", dependencies=[Depends(authorized)], openapi_extra=_SEARCH_OPENAPI)
    async def search(request: Request) -> JSONResponse:
        """Search with a JSON body or a multipart form (see the request body schema)."""
        fields, image = await _read_request(request, options)
        entry, pipeline_name = _choose(by_name, fields.get("collection"), fields.get("pipeline"))
        query = _query(fields.get("text"), image)
        k = _k(fields.get("k", 10))
        try:
            ranking = await asyncio.wait_for(batchers[entry.name, pipeline_name].submit(SearchAsk(query, k)),
                                             options.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPError(504, f"The search took longer than {options.timeout_s:g} s.") from None
        except ModelUnavailableError as error:
            raise HTTPError(503, str(error)) from None
        except MMRankError as error:
            raise HTTPError(400, str(error)) from None
        return JSONResponse(_answer(entry, pipeline_name, ranking))  # plain JSON: no jsonable_encoder walk

    @app.get("/thumbnail", dependencies=[Depends(authorized)],
             responses={200: {"content": {"image/jpeg": {}}}})
    async def thumbnail(collection: str, id: str, size: int = 256) -> Response:
        """A JPEG of the item ``id`` of a served collection (404 for an id it does not hold)."""
        if collection not in by_name:
            raise HTTPError(404, f"No collection named {collection!r} is served.")
        if size not in THUMBNAIL_SIZES:
            raise HTTPError(422, f"size must be one of {', '.join(map(str, THUMBNAIL_SIZES))}.")
        loop = asyncio.get_running_loop()
        item = (await loop.run_in_executor(executor, by_name[collection].collection.get_many, [id])).get(id)
        picture = None if item is None else await loop.run_in_executor(renderer, thumbnail_jpeg, item, size)
        if picture is None:
            raise HTTPError(404, f"Collection {collection!r} holds no item {id!r} with a picture.")
        return Response(picture, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    app.state.batchers = batchers
    return app


def _search_runner(pipeline: Pipeline):
    """The batch function of one pipeline: the asks of a batch searched together, those with the
    same ``k`` in one ``search_batch`` call (so every result is what a search alone gives)."""

    def run(asks: Sequence[SearchAsk]) -> list[Ranking]:
        results: dict[int, Ranking] = {}
        for k in sorted({ask.k for ask in asks}):
            positions = [n for n, ask in enumerate(asks) if ask.k == k]
            for n, ranking in zip(positions, pipeline.search_batch([asks[n].query for n in positions], k)):
                results[n] = ranking
        return [results[n] for n in range(len(asks))]

    return run


async def _read_request(request: Request, options: ServeOptions) -> tuple[dict[str, Any], Any]:
    """The search fields and the uploaded image (a PIL image, or None) of a JSON or multipart request."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            fields = json.loads(await request.body() or b"null")
        except ValueError:
            raise HTTPError(422, "The body is not valid JSON.") from None
        if not isinstance(fields, dict):
            raise HTTPError(422, 'The body must be a JSON object such as {"text": "...", "k": 10}.')
        unknown = set(fields) - {"text", "k", "collection", "pipeline"}
        if unknown:
            raise HTTPError(422, f"Unknown fields {sorted(unknown)}; allowed: text, k, collection, pipeline.")
        return fields, None
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=1, max_fields=8)
        fields = {key: value for key, value in form.items() if isinstance(value, str) and value.strip()}
        upload = form.get("image")
        image = None
        if upload is not None and not isinstance(upload, str):
            data = await upload.read()
            if data:
                image = read_image(data, upload.filename or "upload", options.max_image_pixels)
        return fields, image
    raise HTTPError(415, "Send the search as JSON (application/json) or as a form (multipart/form-data).")


def read_image(data: bytes, name: str, max_pixels: int):
    """An uploaded image as an RGB PIL image. HTTPError 415 when it is not an image PIL reads, 413
    when its header declares more than ``max_pixels`` pixels (checked before decoding them)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(data))  # reads the header only
            width, height = picture.size
            if width * height > max_pixels:
                raise HTTPError(413, f"{name}: {width} x {height} pixels is more than the {max_pixels:,} "
                                     "allowed; send a smaller picture.")
            picture.load()
    except HTTPError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise HTTPError(413, f"{name}: too many pixels to decode safely; send a smaller picture.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise HTTPError(415, f"{name}: not an image PIL can read ({error}); send a JPEG, PNG or WebP.") from None
    return picture.convert("RGB")


def _choose(by_name: Mapping[str, Served], collection: Any, pipeline: Any) -> tuple[Served, str]:
    if collection is None:
        entry = next(iter(by_name.values()))
    elif collection in by_name:
        entry = by_name[collection]
    else:
        raise HTTPError(404, f"No collection named {collection!r} is served; served: {', '.join(by_name)}.")
    name = pipeline or entry.default_pipeline
    if name not in entry.pipelines:
        raise HTTPError(404, f"Collection {entry.name!r} has no pipeline {name!r}; it has "
                             f"{', '.join(entry.pipelines)}.")
    return entry, name


def _query(text: Any, image: Any) -> Query:
    if text is not None and not isinstance(text, str):
        raise HTTPError(422, "text must be a string.")
    text = (text or "").strip() or None
    if text is None and image is None:
        raise HTTPError(422, "Give a text, an image, or both.")
    if image is None:
        return Query(text=text)
    return Query(image=image, modification=text) if text else Query(image=image)


def _k(value: Any) -> int:
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise HTTPError(422, f"k must be a whole number from 1 to {MAX_K}, got {value!r}.") from None
    if isinstance(value, bool) or not 1 <= k <= MAX_K:
        raise HTTPError(422, f"k must be a whole number from 1 to {MAX_K}, got {value!r}.")
    return k


def _answer(entry: Served, pipeline: str, ranking: Ranking) -> dict[str, Any]:
    """The JSON answer: the hits as ``search --json`` prints them, with thumbnail URLs."""
    hits = ranking.to_dicts()  # with the snippets search_batch made
    for hit, found in zip(hits, ranking.hits):
        hit["thumbnail"] = (f"/thumbnail?{urlencode({'collection': entry.name, 'id': found.item_id})}"
                            if _has_picture(found.item) else None)
    return {
        "collection": entry.name, "pipeline": pipeline,
        "query": {"text": ranking.query.search_text, "image": ranking.query.image is not None},
        "stages": list(ranking.timings), "timings_ms": {s: 1000 * t for s, t in ranking.timings.items()},
        "hits": hits, "explanations": {s: list(texts) for s, texts in ranking.explanations.items()},
        "pictures": {s: [data_url(p, quality=85) for p in shown] for s, shown in ranking.pictures.items()},
    }


def _has_picture(item: Any) -> bool:
    return item.kind != "text" and item.source is not None


def thumbnail_jpeg(item: Item, size: int) -> bytes | None:
    """A JPEG of an item's picture (page render or image file), ``size`` pixels at most; None for
    an item without one. The item comes from a collection's database, never from a request."""
    return _rendered(item.kind, item.source, item.page, size) if _has_picture(item) else None


@lru_cache(maxsize=2048)
def _rendered(kind: str, source: str, page: int | None, size: int) -> bytes | None:
    from mmrank.report import thumbnail

    picture = thumbnail(Item(id=source, kind=kind, source=source, page=page), size)
    return None if picture is None else encoded(picture, quality=85)


class UploadLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 (from its Content-Length at
    once, else as soon as the bytes read pass the limit)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _too_large(send, self.limit)
        seen, started = 0, False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge()
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await _too_large(send, self.limit)


class _TooLarge(Exception):
    pass


async def _too_large(send, limit: int) -> None:
    body = json.dumps({"detail": f"The request is larger than {limit / 1024 / 1024:g} MB."}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


_FIELDS = {
    "text": {"type": "string", "description": "The question or description; with an image, what to change."},
    "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10},
    "collection": {"type": "string", "description": "A served collection (default: the first)."},
    "pipeline": {"type": "string", "description": "One of the collection's pipelines (default: its first)."},
}
_SEARCH_OPENAPI = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "properties": _FIELDS}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        **_FIELDS, "image": {"type": "string", "format": "binary", "description": "A reference image."}}}},
}}}
