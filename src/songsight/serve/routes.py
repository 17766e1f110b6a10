"""The routes around the search: the page and its static files, health, photos, spectrograms.

``POST /api/search`` is `songsight.serve.search_route`; `songsight.serve.app.create_app`
adds them all, in the order the OpenAPI document lists them.
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
from songsight.serve.upload import ApiError, _missing_extra

try:
    from fastapi import FastAPI
    from fastapi.responses import FileResponse, Response
    from fastapi.staticfiles import StaticFiles
except ImportError as exc:
    raise _missing_extra(exc) from None

log = logging.getLogger("songsight.serve")

STATIC_DIR = Path(__file__).parent / "static"
SPECTROGRAMS_KEPT = 64
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
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


def add_health(app: FastAPI, searcher, queue: SearchQueue, limits: ServeLimits,
               version: str) -> None:  # fmt: skip
    """``GET /api/health``."""

    @app.get("/api/health", tags=["api"])
    def health() -> dict:
        """Status, gallery size, which model answers, model provenance and the limits."""
        return {
            "status": "ok",
            "version": version,
            "gallery_size": len(searcher.gallery),
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
                f"photo {image_id} is in the gallery but its file is gone from the server "
                "(moved or deleted?); `songsight index check` lists such photos",
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
