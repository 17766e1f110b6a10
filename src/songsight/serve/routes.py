"""The routes around the search: the page and its static files, the API's docs page, health,
photos, spectrograms.

``POST /api/search`` is `songsight.serve.search_route`; `songsight.serve.app.create_app`
adds them all, in the order the OpenAPI document lists them.

FastAPI's own /docs and /redoc load their scripts from a CDN (blank without the internet):
`create_app` turns both off and `add_docs` serves /docs from the package. Its assets (Swagger UI
5, which reads the OpenAPI 3.1 that FastAPI writes; Swagger UI 4 cannot) come from the
``fastapi-offline`` package of the ``ui`` extra, under ``/docs/assets``; a
Content-Security-Policy keeps every request of the page on this server, and Swagger UI's online
validator is off.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import OrderedDict
from pathlib import Path

from songsight.errors import SongsightError
from songsight.serve.batching import SearchQueue
from songsight.serve.limits import ServeLimits
from songsight.serve.photos import photo_response
from songsight.serve.public import model_summary
from songsight.serve.upload import ApiError, missing_extra

try:
    import fastapi_offline
    from fastapi import FastAPI
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import FileResponse, HTMLResponse, Response
    from fastapi.staticfiles import StaticFiles
except ImportError as exc:
    raise missing_extra(exc) from None

log = logging.getLogger("songsight.serve")

STATIC_DIR = Path(__file__).parent / "static"
SPECTROGRAMS_KEPT = 64
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
DOCS_ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
DOCS_ASSETS_URL = "/docs/assets"
# Swagger UI's page runs one inline script (its configuration) and sets inline styles.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


class SpectrogramCache:
    """The PNGs of the last ``kept`` searches, by an unguessable id (thread-safe)."""

    def __init__(self, kept: int = SPECTROGRAMS_KEPT):
        self.kept = kept
        self._pngs: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, png: bytes) -> str:
        result_id = secrets.token_urlsafe(12)
        with self._lock:
            self._pngs[result_id] = png
            while len(self._pngs) > self.kept:
                self._pngs.popitem(last=False)
        return result_id

    def get(self, result_id: str) -> bytes | None:
        with self._lock:
            return self._pngs.get(result_id)


def add_page(app: FastAPI) -> None:
    """``GET /`` (the page, under a strict Content-Security-Policy) and ``/static``."""

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(
            STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_CSP}
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def add_docs(app: FastAPI) -> None:
    """``GET /docs`` (Swagger UI) and its assets, from the package: nothing loads from elsewhere.
    ``app`` was made with ``docs_url=None, redoc_url=None``."""

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title}: the HTTP API",
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
            swagger_ui_parameters={"validatorUrl": None},
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")


def add_health(app: FastAPI, searcher, queue: SearchQueue, limits: ServeLimits,
               version: str, n_missing: int = 0) -> None:  # fmt: skip
    """``GET /api/health``; ``n_missing``: the gallery's photos whose file was gone at start."""

    @app.get("/api/health", tags=["api"])
    def health() -> dict:
        """Status, gallery size, photos whose file was gone when the server started
        (``missing_photos``), which model answers, model provenance and the limits."""
        return {
            "status": "ok",
            "version": version,
            "gallery_size": len(searcher.gallery),
            "missing_photos": n_missing,
            "answered_by": getattr(searcher, "answered_by", None),
            "models": model_summary(searcher),
            "busy": queue.full,
            "queue": {
                "depth": queue.depth,
                "running": queue.running,
                "admitted": queue.admitted,
                "batches": queue.stats.batches,
                "searches": queue.stats.searches,
                "largest_batch": queue.stats.largest_batch,
            },
            "limits": limits.report(),
        }


def add_pictures(app: FastAPI, searcher, spectrograms: SpectrogramCache) -> None:
    """``GET /api/images/{image_id}`` (gallery photos, by integer id only, so no client text
    ever reaches the filesystem) and ``GET /api/spectrogram/{result_id}``."""

    @app.get("/api/images/{image_id}", tags=["api"], response_class=FileResponse)
    def image(image_id: int):
        """A gallery photo by its integer id (the ``image_id`` of a hit)."""
        if not 0 <= image_id < len(searcher.gallery):
            raise ApiError(404, "not_found", "no image with this id")
        try:
            path = Path(searcher.gallery.image_path(image_id))
        except (IndexError, KeyError, ValueError, SongsightError):
            raise ApiError(404, "not_found", "no image with this id") from None
        if not path.is_file():
            log.warning("gallery image %d is missing on disk: %s", image_id, path)
            raise ApiError(
                404,
                "image_missing",
                f"photo {image_id} is in the gallery but its file is gone from the server's "
                "disk (moved or deleted?); `songsight index check` on the server lists such "
                "photos",
            )
        return photo_response(path)

    @app.get("/api/spectrogram/{result_id}", tags=["api"], response_class=Response)
    def spectrogram(result_id: str):
        """The spectrogram PNG of a recent search (the server keeps the last few)."""
        png = spectrograms.get(result_id)
        if png is None:
            raise ApiError(404, "not_found", "no such spectrogram (it may have expired)")
        return Response(
            png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"}
        )
