"""The viewer's web application (FastAPI): pages, DeepZoom descriptors and tiles, views.

Routes:
    GET  /                                     the viewer page (static/index.html)
    GET  /static/...                           its scripts, styles, OpenSeadragon (vendored)
    GET  /api/slides                           served slides (ids, sizes, mpp) and the model
    GET  /api/status                           caches, queue and counters
    POST /api/view                             a client's current view (cancels stale tiles)
    GET  /slides/<id>/<kind>.dzi               DeepZoom descriptor, kind "sr" or "bicubic"
    GET  /slides/<id>/<kind>_files/<level>/<col>_<row>.jpeg   a tile; ?client=<id> optional

Before any route, :class:`~iste.serve.guard.RequestGuard` checks the Host (400 unless it is a
name the server is bound to), the Origin of writes (403 from another site) and the body (413
over 4 KB, 408 when it stalls).

Errors are JSON ``{"error": "<one line>"}``: 400 for malformed requests, 404 for unknown
slides, paths and tiles (near misses too: a path with a trailing or doubled ``/`` or a ``.``
segment names nothing, it is never redirected nor normalised into another), 503
(Retry-After) for tiles cancelled because the client's view moved on, 500 "internal error"
for anything unexpected (details go to the server log, never to the client).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import math
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from iste.refusals import DiskFullError
from iste.process_memory import FreedMemoryLimit
from iste.provenance import iste_version
from iste.runtime import HEAP_TRIM_THRESHOLD
from iste.serve.addresses import (BadRequest, DziAddress, NotFound, View, is_plain_path,
                                  parse_client, parse_slide_path, parse_view, TILE_FORMAT)
from iste.serve.cache import DiskCache, MemoryCache
from iste.serve.catalog import SlideCatalog, UnknownSlide
from iste.serve.deepzoom import TileAddressError
from iste.serve.guard import LOOPBACK_NAMES, RefusedRequest, RequestGuard
from iste.serve.pixels import ServedSlide, Upscaler
from iste.serve.tiles import (ClientGone, TileCancelled, TileFailed, TileKey,
                              TileProducer, TileRefused)
from iste.slides.tissue import BLEND_RULE
from iste.slides.writer import encode_jpeg

__all__ = ["CacheSettings", "create_app", "static_dir"]

log = logging.getLogger("iste.serve")
_MAX_BODY = 4096  # bytes of a view report
_MAX_VIEW_TILES = 1024  # tiles of a reported view that a model tile may encode with its own


@dataclass(frozen=True)
class CacheSettings:
    """memory_mb: in-memory tile cache; disk_dir / disk_mb: the disk cache of model tiles
    (None or 0 MB: no disk cache); quality: JPEG quality of tiles."""

    memory_mb: float = 256
    disk_dir: Path | None = None
    disk_mb: float = 1024
    quality: int = 90

    def __post_init__(self):
        if not all(math.isfinite(v) and v >= 0 for v in (self.memory_mb, self.disk_mb)):
            raise ValueError(f"cache sizes must be finite numbers >= 0, got "
                             f"{self.memory_mb:g} MB in memory and {self.disk_mb:g} MB on disk")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {self.quality}")


def static_dir() -> Path:
    return Path(str(resources.files("iste.serve") / "static"))


class _StaticFiles(StaticFiles):
    """The page's files by their plain names only (:func:`is_plain_path`): Starlette
    normalises ``viewer.js/`` or ``vendor/../viewer.js`` into a file it serves."""

    def get_path(self, scope) -> str:
        path, root = scope["path"], scope.get("root_path", "")  # root: ".../static"
        rest = path[len(root):] if path.startswith(root) else path
        if not rest.startswith("/") or not is_plain_path(rest[1:]):
            raise NotFound(rest)
        return super().get_path(scope)

    async def get_response(self, path: str, scope) -> Response:
        # HTTP requires a 405 to name the allowed methods; the Starlette releases that
        # fastapi >= 0.110 accepts (0.36 and later) raised it without them
        if scope["method"] not in ("GET", "HEAD"):
            raise StarletteHTTPException(405, headers={"Allow": "GET, HEAD"})
        return await super().get_response(path, scope)


def _error(status: int, message: str, **headers) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


class _SecurityHeaders:
    """Pure ASGI middleware adding headers that keep the page self-contained."""

    HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
               (b"content-security-policy",
                b"default-src 'self'; img-src 'self' data: blob:; "
                b"style-src 'self' 'unsafe-inline'; frame-ancestors 'none'")]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + self.HEADERS}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(catalog: SlideCatalog, upscaler: Upscaler, *,
               cache: CacheSettings = CacheSettings(),
               hosts: frozenset[str] = LOOPBACK_NAMES, body_timeout: float = 10.0) -> FastAPI:
    """The viewer application for the slides of ``catalog``, super-resolved by ``upscaler``;
    ``hosts``: the Host names it answers (:func:`iste.serve.guard.allowed_hosts`);
    ``body_timeout``: seconds a request body may stall."""
    views = ViewBook()
    producer = _make_producer(catalog, upscaler, cache, views)

    @asynccontextmanager
    async def lifespan(_app):
        producer.start()
        try:
            yield
        finally:
            producer.close()

    # no redirects: a near-miss path (/api/slides/, /static) is as unknown as any other (404),
    # as the page and scripts expect, not a 307 to another address
    app = FastAPI(title="iste viewer", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None, redirect_slashes=False)
    app.state.producer = producer
    app.state.catalog, app.state.upscaler, app.state.views = catalog, upscaler, views
    app.add_middleware(RequestGuard, hosts=hosts, max_body=_MAX_BODY, body_timeout=body_timeout)
    app.add_middleware(_SecurityHeaders)  # outermost: refusals get the headers too
    _add_error_handlers(app)
    app.mount("/static", _StaticFiles(directory=static_dir()), name="static")
    _add_api_routes(app, catalog, producer, upscaler, views)
    _add_slide_routes(app, catalog, producer, upscaler)
    return app


class ViewBook:
    """The latest view each client reported at an SR level: the tiles a model tile's encoding
    can cover with its own (:meth:`iste.engine.shared.SharedEncoding.features`). Browsers
    ask for a few tiles at a time (the viewer's ``imageLoaderLimit``), so the model queue
    alone rarely holds a view; the view report names all of it. One view per client (a
    client shows one), the ``MAX_CLIENTS`` latest; thread-safe."""

    MAX_CLIENTS = 64

    def __init__(self):
        self._views: collections.OrderedDict[str, View] = collections.OrderedDict()
        self._lock = threading.Lock()

    def put(self, view: View) -> None:
        with self._lock:
            self._views.pop(view.client, None)
            self._views[view.client] = view
            while len(self._views) > self.MAX_CLIENTS:
                self._views.popitem(last=False)

    def drop(self, client: str) -> None:
        """Forget ``client``'s view (it left super-resolution)."""
        with self._lock:
            self._views.pop(client, None)

    def at(self, slide: str, level: int) -> list[View]:
        """The views shown at (slide, level), the latest first."""
        with self._lock:
            return [v for v in reversed(self._views.values())
                    if (v.slide, v.level) == (slide, level)]


def _add_api_routes(app: FastAPI, catalog: SlideCatalog, producer: TileProducer,
                    upscaler: Upscaler, views: ViewBook) -> None:
    model_info = {"name": upscaler.name, "fingerprint": upscaler.fingerprint,
                  "untrained": upscaler.untrained}

    @app.api_route("/", methods=["GET", "HEAD"])
    async def index():
        return FileResponse(static_dir() / "index.html", headers={"Cache-Control": "no-cache"})

    @app.api_route("/api/slides", methods=["GET", "HEAD"])
    async def slides():
        return {"slides": [catalog.describe(i) for i in catalog.ids()], "model": model_info}

    @app.api_route("/api/status", methods=["GET", "HEAD"])
    async def status():
        return producer.status()

    @app.post("/api/view")
    async def view(request: Request):
        body = await request.body()  # at most _MAX_BODY bytes: the guard refuses more
        try:
            report = parse_view(json.loads(body))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise BadRequest("a view report is JSON (an object, not nested)") from None
        served = catalog.get(report.slide)
        if report.level < served.zoom.level_count and served.zoom.is_super_resolved(report.level):
            views.put(report)
        else:
            views.drop(report.client)
        cancelled = producer.set_view(report.client, report.generation,
                                      _wanted(report, served.zoom))
        return {"cancelled": cancelled}


def _add_slide_routes(app: FastAPI, catalog: SlideCatalog, producer: TileProducer,
                      upscaler: Upscaler) -> None:
    @app.api_route("/slides/{slide_id}/{rest:path}", methods=["GET", "HEAD"])
    async def slide_resource(slide_id: str, rest: str, request: Request):
        if request.scope["path"] != f"/slides/{slide_id}/{rest}":  # the route's pattern
            raise NotFound(rest)  # ends with $, which lets a trailing newline through
        served = catalog.get(slide_id)
        address = parse_slide_path(rest)
        if isinstance(address, DziAddress):
            return Response(served.zoom.dzi(TILE_FORMAT), media_type="application/xml")
        client = parse_client(request.query_params.get("client"))
        served.zoom.tile_box(address.level, address.col, address.row)  # 404 when outside
        def kind_of():  # a slide's first SR tile finds its tissue (a second or more):
            with catalog.reading(slide_id):  # not on the event loop
                return served.kind_of(address.level, address.kind, address.col, address.row,
                                      upscaler)

        try:
            kind = await run_in_threadpool(kind_of)
        except TileRefused as err:
            producer.say_refused(err)
            return _error(500, str(TileFailed.of(TileKey(slide_id, address.kind, address.level,
                                                          address.col, address.row), err)))
        key = TileKey(slide_id, kind, address.level, address.col, address.row)
        try:
            data = await producer.get(key, client=client,
                                      disconnected=lambda: _until_disconnected(request))
        except (TileCancelled, ClientGone) as err:
            return _error(503, str(err), **{"Retry-After": "1"})
        except asyncio.CancelledError:  # the server stopping (Ctrl-C) ends waiting requests:
            return _error(503, "server shutting down")  # an answer, not a traceback each
        except TileFailed as err:
            return _error(500, str(err))
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})


async def _until_disconnected(request: Request) -> None:
    """Returns when the HTTP client goes away (a GET has no body left to read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _wanted(view: View, zoom):
    """key -> True for tiles of ``view``'s slide and level that touch its box (grown by half
    its size on each side, for panning); tiles of other levels or slides are not wanted."""
    x, y, w, h = view.box
    x0, y0, x1, y1 = x - w / 2, y - h / 2, x + 1.5 * w, y + 1.5 * h
    top_w, top_h = zoom.full_size

    def wanted(key: TileKey) -> bool:
        if key.slide != view.slide or key.level != view.level:
            return False
        lw, lh = zoom.level_size(key.level)
        tx, ty, tw, th = zoom.tile_box(key.level, key.col, key.row)
        fx, fy = top_w / lw, top_h / lh
        return tx * fx < x1 and (tx + tw) * fx > x0 and ty * fy < y1 and (ty + th) * fy > y0

    return wanted


def _make_producer(catalog: SlideCatalog, upscaler: Upscaler, cache: CacheSettings,
                   views: ViewBook) -> TileProducer:
    memory = MemoryCache(int(cache.memory_mb * 2**20))
    # the freed memory kept is the heap's trim threshold (keep_freed_memory); model tiles are
    # rendered on the one model worker, the only thread that checks it
    freed = FreedMemoryLimit(HEAP_TRIM_THRESHOLD)

    def render(key: TileKey, ahead: Sequence[TileKey]) -> bytes:
        served = catalog.get(key.slide)
        # before and after: a changed slide's model tile would take the model seconds, then
        # be thrown away (and the viewer asks again); tiles made before the change are served
        catalog.check_unchanged(key.slide)
        with catalog.reading(key.slide):
            later = _sr_tiles_ahead(key, ahead, views, served, upscaler, memory) \
                if key.kind == "sr" else []
            rgb = served.render(key.kind, key.level, key.col, key.row, upscaler,  # type: ignore
                                ahead=later)
        catalog.check_unchanged(key.slide)  # read from the file it was opened from: cached
        rgb = served.colour(rgb)  # every kind alike, after the model: sRGB for the browser
        if key.kind == "sr":
            start = time.perf_counter()
            if freed.check():
                log.info("returned freed memory to the system (trim %d, %.0f ms)", freed.trims,
                         1000 * (time.perf_counter() - start))
        return encode_jpeg(rgb, cache.quality)

    # per slide: what its tiles depend on, not which other slides the server shows (a slide
    # added to the folder would rename every cached tile)
    # (the tissue rule itself: tiles of session 30's model-or-bicubic per tile are not served)
    common = [iste_version(), upscaler.fingerprint, repr(upscaler.geometry),
              upscaler.options.pixel_key, upscaler.tissue and BLEND_RULE, "jpeg-444",
              cache.quality]
    def namespace(served: ServedSlide) -> str:
        zoom, slide = served.zoom, served.slide
        return hashlib.sha256(json.dumps(
            [*common, zoom.max_scale, zoom.tile, zoom.overlap, slide.processing,
             slide.decoder, served.colour.key]).encode()).hexdigest()

    # each slide's on its first model tile, on the thread that names it (not the event
    # loop): its colour key builds its colour transform, which took the server's start
    # 0.13 s a slide for a 13 MB profile; two threads at once compute the same name
    namespaces: dict[str, str] = {}

    def disk_name(key: TileKey) -> str:
        if key.slide not in namespaces:
            namespaces[key.slide] = namespace(catalog.get(key.slide))
        text = f"{namespaces[key.slide]}/{key.slide}/{key.kind}/{key.level}/{key.col}/{key.row}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    disk = None
    if cache.disk_dir is not None and cache.disk_mb > 0:
        try:
            # indexed on a thread: a large cache's scan does not hold the server's start
            disk = DiskCache(cache.disk_dir, int(cache.disk_mb * 2**20), background=True)
        except DiskFullError as err:  # served, not kept, as on a disk that fills later
            log.warning("%s; tiles are served but not cached", err)
    return TileProducer(render, memory=memory, disk=disk, disk_name=disk_name)


def _sr_tiles_ahead(key: TileKey, queued: Sequence[TileKey], views: ViewBook,
                    served: ServedSlide, upscaler: Upscaler, memory: MemoryCache
                    ) -> list[tuple[int, int]]:
    """(col, row) of the SR tiles of ``key``'s level likely asked for next, nearest first:
    those queued behind it and those of the reported views that show it, less the ones
    already made (in ``memory``) and the ones on glass (bicubic)."""
    wanted = {(k.col, k.row) for k in queued
              if (k.slide, k.kind, k.level) == (key.slide, "sr", key.level)}
    for view in views.at(key.slide, key.level):
        with contextlib.suppress(ValueError):  # a box of thousands of tiles: not a view
            shown = served.zoom.tiles_in(key.level, view.box, limit=_MAX_VIEW_TILES)
            if (key.col, key.row) in shown:  # another client's view elsewhere: not ahead
                wanted.update(shown)
    wanted.discard((key.col, key.row))
    later = [(c, r) for c, r in wanted
             if TileKey(key.slide, "sr", key.level, c, r) not in memory
             and served.kind_of(key.level, "sr", c, r, upscaler) == "sr"]
    return sorted(later, key=lambda cr: (cr[0] - key.col) ** 2 + (cr[1] - key.row) ** 2)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BadRequest)
    async def bad_request(_request, err):
        return _error(400, str(err))

    @app.exception_handler(RefusedRequest)
    async def refused(_request, err):
        return _error(err.status, str(err), Connection="close")

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, _err):
        return _error(400, "malformed request")

    @app.exception_handler(UnknownSlide)
    async def unknown_slide(_request, _err):
        return _error(404, "unknown slide")

    @app.exception_handler(NotFound)
    @app.exception_handler(TileAddressError)
    async def not_found(_request, err):
        return _error(404, "not found" if isinstance(err, NotFound) else str(err))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, err):
        message = {404: "not found", 405: "method not allowed"}.get(err.status_code,
                                                                     "request refused")
        return _error(err.status_code, message, **(err.headers or {}))  # a 405's Allow

    @app.exception_handler(Exception)
    async def internal(_request, err):
        log.error("internal error", exc_info=err)
        return _error(500, "internal error")
