"""HTTP API and web page over a `songsight.retrieval.searcher.Searcher`.

Routes: ``GET /`` (the page), ``GET /api/health``, ``POST /api/search`` (multipart field
``audio``; the body is the CLI's ``--format json`` list, the request's facts are headers),
``GET /api/images/{image_id}`` (gallery photos by integer id only, so no client
text ever reaches the filesystem), ``GET /api/spectrogram/{result_id}``, FastAPI's
``/openapi.json``, and ``/docs`` served from the package (`songsight.serve.routes.add_docs`:
no CDN). An unknown form field or query parameter is refused (422) naming the accepted ones
(`songsight.serve.upload.FORM_FIELDS`, `songsight.serve.guard.refuse_unknown_query`).

Uploads are streamed to a temporary file and cut off at the size limit (413); the type is
judged by content, magic bytes then libsndfile, never by name or Content-Type (415); see
`songsight.serve.upload` (and `songsight.serve.spectrogram` for the picture). Admitted searches
wait in a bounded queue as their files on disk and run in micro-batches that share the model's
forward passes (`songsight.serve.batching`); only a full queue answers 503 with Retry-After,
before the body is read. A request past its deadline answers 504; if its search had not started
it is dropped, else it finishes and frees its place and temp file. Errors reach the client as
``{"error", "message", "request_id"}``; tracebacks go to the server log only.

Photos of the gallery whose file is gone are counted once, when the app is made: ``serve``
says so on stderr, ``GET /api/health`` reports ``missing_photos``, and such a photo's URL
answers a 404 that says its file is gone.

Here: `create_app` (which assembles the pieces) and `serve`. The limits are
`songsight.serve.limits`, the JSON errors `songsight.serve.guard`, the search route
`songsight.serve.search_route`, the page, health, photo and spectrogram routes
`songsight.serve.routes`.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

from songsight.errors import SongsightError
from songsight.gallery import missing_note, missing_photos
from songsight.serve.batching import (
    DEFAULT_BATCH_WAIT_MS,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_QUEUE,
    SearchQueue,
)
from songsight.serve.guard import add_error_handlers, refuse_unknown_query
from songsight.serve.limits import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_DURATION_S,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_REQUEST_TIMEOUT_S,
    ServeLimits,
)
from songsight.serve.routes import (
    SpectrogramCache,
    add_docs,
    add_health,
    add_page,
    add_pictures,
)
from songsight.serve.search_route import add_search
from songsight.serve.spectrogram import spectrogram_png
from songsight.serve.upload import decode_upload, missing_extra

try:
    from fastapi import Depends, FastAPI
except ImportError as exc:
    raise missing_extra(exc) from None

log = logging.getLogger("songsight.serve")


def create_app(
    searcher,
    *,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    max_duration_s: float = DEFAULT_MAX_DURATION_S,
    temp_dir: str | Path | None = None,
    to_records: Callable[[list], list[dict]] | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    max_batch: int = DEFAULT_MAX_BATCH,
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
) -> FastAPI:
    """The FastAPI app over ``searcher`` (a `songsight.retrieval.searcher.Searcher` or the same shape).

    ``to_records`` turns search results into the CLI's JSON records; by default
    `songsight.retrieval.writers.results_to_records`. ``max_concurrency`` batch workers; ``max_queue``
    searches admitted at once (one more answers 503); ``max_batch`` searches share a forward
    pass, gathered over ``batch_wait_ms``. ``app.state.queue`` is the `SearchQueue`;
    ``app.state.missing_photos`` the (id, path) of the gallery's photos whose file was gone
    when the app was made.
    """
    if to_records is None:
        from songsight.retrieval.writers import results_to_records as to_records
    limits = ServeLimits(
        max_upload_mb, request_timeout_s, max_concurrency, max_duration_s, max_queue, max_batch,
        batch_wait_ms,
    )  # fmt: skip
    directory = str(temp_dir) if temp_dir is not None else tempfile.gettempdir()

    def finish(audio, results):  # in the worker, once per search of a batch
        png, top_hz = spectrogram_png(audio.waveform, audio.sample_rate_hz)
        return audio, results, png, top_hz

    queue = SearchQueue(
        searcher,
        lambda path: decode_upload(path, max_duration_s),
        finish,
        max_queue=max_queue,
        max_batch=max_batch,
        batch_wait_s=batch_wait_ms / 1000,
        workers=max_concurrency,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        queue.close()

    app = FastAPI(
        title="songsight",
        version=_version(),
        description="Hear a bird, see it: photos of the species singing in a recording.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load from a CDN: `add_docs` serves /docs offline
        redoc_url=None,
        dependencies=[Depends(refuse_unknown_query)],
    )
    app.state.queue = queue
    app.state.searcher = searcher
    app.state.missing_photos = missing_photos(_photo_paths(searcher.gallery))
    add_error_handlers(app)
    # In this order: the OpenAPI document lists the routes as they were added.
    spectrograms = SpectrogramCache()
    add_page(app)
    add_docs(app)
    add_health(app, searcher, queue, limits, _version(), len(app.state.missing_photos))
    add_search(app, searcher, queue, limits, spectrograms, to_records, directory)
    add_pictures(app, searcher, spectrograms)
    return app


def _photo_paths(gallery) -> list:
    """The gallery's photo paths in id order: a `Gallery`'s ``path`` column, or for any other
    gallery of the same shape, ``image_path`` of each id."""
    metadata = getattr(gallery, "metadata", None)
    if metadata is not None:
        return list(metadata["path"])
    return [gallery.image_path(i) for i in range(len(gallery))]


def _version() -> str:
    from songsight.provenance import package_version

    return package_version()


def _check_port(host: str, port: int) -> None:
    """Refuse a port another program holds, before minutes of model loading are spent."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SongsightError(
                    f"port {port} on {host} is already in use (another songsight serve?); "
                    "choose another with --port"
                ) from None
            raise SongsightError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def serve(
    gallery: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    model: str | Path | None = None,
    audio_model: str | None = None,
    image_model: str | None = None,
    device: str | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    max_duration_s: float = DEFAULT_MAX_DURATION_S,
    species_list: str | Path | None = None,
    method: str | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    max_batch: int = DEFAULT_MAX_BATCH,
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
    precision: str = "auto",
    runtime: str = "auto",
    **prompts,
) -> None:
    """Load a `Searcher` over ``gallery`` and serve the page and API until interrupted.

    ``species_list``: the species every search is restricted to (a request may send its own).
    ``prompts``: the cascade's prompt formats and templates (`Searcher`'s arguments).
    """
    import uvicorn

    from songsight.retrieval.searcher import Searcher

    _check_port(host, port)
    options = {"audio_model": audio_model, "image_model": image_model, "device": device,
               "species_list": species_list, "method": method, "runtime": runtime, **prompts}  # fmt: skip
    if precision != "auto":
        options["precision"] = precision
    searcher = Searcher(gallery, model=model, **{k: v for k, v in options.items() if v is not None})
    chosen = getattr(searcher, "species", None)
    if chosen is not None and chosen.warning():
        print(f"songsight: {chosen.warning()}")
    app = create_app(
        searcher,
        max_upload_mb=max_upload_mb,
        request_timeout_s=request_timeout_s,
        max_concurrency=max_concurrency,
        max_duration_s=max_duration_s,
        max_queue=max_queue,
        max_batch=max_batch,
        batch_wait_ms=batch_wait_ms,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: anyone who can reach this port can upload", host)
    note = missing_note(gallery, len(app.state.missing_photos), len(searcher.gallery))
    if note:
        print(f"songsight: {note}", file=sys.stderr)
    print(f"songsight: {len(searcher.gallery)} photos, answered by {searcher.answered_by}")
    print(f"songsight: open http://{host}:{port}/ (Ctrl+C to stop)")
    # uvicorn answers 503 itself (no Retry-After) past this many open connections: leave room
    # for a full queue plus health checks and photos, so the queue decides who waits.
    uvicorn.run(app, host=host, port=port, limit_concurrency=max_queue + 32)
