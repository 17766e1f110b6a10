"""HTTP API and web page over a `songsight.retrieval.searcher.Searcher`.

Routes: ``GET /`` (the page), ``GET /api/health``, ``POST /api/search`` (multipart field
``audio``; the body is the CLI's ``--format json`` list, the request's facts are headers),
``GET /api/images/{image_id}`` (gallery photos by integer id only, so no client
text ever reaches the filesystem), ``GET /api/spectrogram/{result_id}``, and FastAPI's
``/openapi.json`` and ``/docs``.

Uploads are streamed to a temporary file and cut off at the size limit (413); the type is
judged by content, magic bytes then libsndfile, never by name or Content-Type (415); see
`songsight.serve.upload` (and `songsight.serve.spectrogram` for the picture). Admitted searches
wait in a bounded queue as their files on disk and run in micro-batches that share the model's
forward passes (`songsight.serve.batching`); only a full queue answers 503 with Retry-After,
before the body is read. A request past its deadline answers 504; if its search had not started
it is dropped, else it finishes and frees its place and temp file. Errors reach the client as
``{"error", "message", "request_id"}``; tracebacks go to the server log only.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

from songsight.errors import InputFileError, SongsightError
from songsight.serve.batching import (
    DEFAULT_BATCH_WAIT_MS,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_QUEUE,
    SearchJob,
    SearchQueue,
)
from songsight.serve.openapi import search_openapi
from songsight.serve.photos import photo_response
from songsight.serve.public import header_number, header_text, model_summary, web_records
from songsight.serve.spectrogram import spectrogram_png
from songsight.serve.upload import (
    ApiError,
    _form_number,
    _missing_extra,
    _receive_upload,
    decode_upload,
    search_options,
)
from songsight.serve.upload import sniff_audio as sniff_audio  # re-exported

try:
    from fastapi import FastAPI, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.datastructures import MutableHeaders
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:
    raise _missing_extra(exc) from None

log = logging.getLogger("songsight.serve")

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_REQUEST_TIMEOUT_S = 120.0
DEFAULT_MAX_CONCURRENCY = 1  # one model forward at a time: CPU threads would only compete
DEFAULT_MAX_DURATION_S = 600.0
MAX_K = 100
SPECTROGRAMS_KEPT = 64
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)


def _error(status: int, code: str, message: str, request_id: str, headers=None) -> JSONResponse:
    body = {"error": code, "message": message, "request_id": request_id}
    return JSONResponse(body, status_code=status, headers=headers)


def _request_id(request: Request) -> str:
    return getattr(request.state, "request_id", None) or uuid.uuid4().hex[:12]


class _Guard:
    """ASGI middleware: a request id and nosniff on every response; any unhandled exception
    becomes a generic JSON 500 here, its traceback logged under that id."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = uuid.uuid4().hex[:12]
        scope.setdefault("state", {})["request_id"] = rid
        started = False

        async def send_with_id(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = rid
                headers["X-Content-Type-Options"] = "nosniff"
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request %s %s failed", rid, scope.get("path"))
            if not started:
                response = _error(500, "internal_error", "the server failed; see its log", rid)
                await response(scope, receive, send_with_id)


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
    pass, gathered over ``batch_wait_ms``. ``app.state.queue`` is the `SearchQueue`.
    """
    if to_records is None:
        from songsight.retrieval.writers import results_to_records as to_records
    if (
        min(max_concurrency, max_queue, max_batch) < 1
        or min(max_upload_mb, request_timeout_s, max_duration_s) <= 0
        or batch_wait_ms < 0
    ):
        raise SongsightError(
            "serve limits must be positive (upload, timeout, workers, queue, batch, duration)"
        )
    max_bytes = int(max_upload_mb * 1e6)
    directory = str(temp_dir) if temp_dir is not None else tempfile.gettempdir()
    spectrograms: OrderedDict[str, bytes] = OrderedDict()
    spectrogram_lock = threading.Lock()

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
    )
    app.state.queue = queue
    app.state.searcher = searcher
    app.add_middleware(_Guard)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.code, exc.message, _request_id(request), exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = "not found" if exc.status_code == 404 else str(exc.detail)[:200]
        return _error(exc.status_code, code, message, _request_id(request), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        where = ", ".join(".".join(str(p) for p in e.get("loc", ())) for e in exc.errors())
        return _error(422, "invalid_request", f"invalid {where or 'request'}", _request_id(request))

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):  # reached only if `_Guard` fails
        return _error(500, "internal_error", "the server failed; see its log", _request_id(request))

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(
            STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_CSP}
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/api/health", tags=["api"])
    def health() -> dict:
        """Status, gallery size, which model answers, model provenance and the limits."""
        return {
            "status": "ok",
            "version": _version(),
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
            "limits": {
                "max_upload_mb": max_upload_mb,
                "max_duration_s": max_duration_s,
                "request_timeout_s": request_timeout_s,
                "max_concurrency": max_concurrency,
                "max_queue": max_queue,
                "max_batch": max_batch,
                "batch_wait_ms": batch_wait_ms,
                "max_k": MAX_K,
            },
        }

    @app.post("/api/search", tags=["api"], response_model=None, openapi_extra=search_openapi(MAX_K))
    async def search(request: Request) -> JSONResponse:
        """Search the gallery with one recording.

        The body is what ``songsight search --format json`` writes for it: a list of records,
        the whole recording then each window, with ``path`` the upload's name, ``image`` a
        file name only, and ``image_id`` and ``url`` added to each hit. The rest rides in
        headers: ``X-Request-ID``, ``Link`` (rel="spectrogram"), ``X-Spectrogram-Max-Hz``,
        ``X-Duration-S``, ``X-Sample-Rate-Hz``, ``X-Silent``, ``X-Answered-By`` and ``X-K``.
        """
        deadline = time.monotonic() + request_timeout_s
        rid = _request_id(request)
        if not queue.try_admit():  # refuse before reading a body that could not wait anyway
            raise ApiError(
                503, "busy", "the server's queue of searches is full; try again shortly",
                {"Retry-After": str(queue.retry_after_s())},
            )  # fmt: skip
        try:
            try:
                upload = await asyncio.wait_for(
                    _receive_upload(request, directory, max_bytes), request_timeout_s
                )
            except asyncio.TimeoutError:
                raise ApiError(408, "upload_timeout", "the upload took too long") from None
            try:
                k = _form_number(upload.fields, "k", int, 1, MAX_K) or 10
                window_s = _form_number(upload.fields, "window_s", float, 0.1, max_duration_s)
                hop_s = _form_number(upload.fields, "hop_s", float, 0.1, max_duration_s)
                options = search_options(searcher, upload.fields)
            except BaseException:
                upload.discard()
                raise
        except BaseException:
            queue.release()
            raise
        # From here the queue owns the place and the temp file, and frees both when done.
        future = queue.submit(SearchJob(upload.path, k, window_s, hop_s, options))
        started = time.monotonic()
        try:
            remaining = max(deadline - started, 0.001)
            audio, results, png, top_hz = await asyncio.wait_for(
                asyncio.wrap_future(future), remaining
            )
        except asyncio.TimeoutError:
            future.cancel()  # a search still waiting is dropped; a running one finishes
            log.warning("request %s: search passed the %g s limit", rid, request_timeout_s)
            raise ApiError(
                504, "timeout", f"the search took longer than {request_timeout_s:g} s"
            ) from None
        except InputFileError as exc:
            raise ApiError(422, "invalid_audio", exc.reason) from None
        except (ValueError, SongsightError) as exc:
            if window_s is None and hop_s is None:
                raise
            # The searcher refuses windows its model cannot take (e.g. longer than its input).
            raise ApiError(422, "invalid_request", f"window_s/hop_s refused: {exc}"[:300]) from None
        records = web_records(results, to_records(results), upload.filename)
        errors = [r.error for r in results if getattr(r, "error", None)]
        if results and len(errors) == len(results):
            raise ApiError(
                422, "invalid_audio", f"could not search this recording: {errors[0]}"[:300]
            )
        result_id = secrets.token_urlsafe(12)
        with spectrogram_lock:
            spectrograms[result_id] = png
            while len(spectrograms) > SPECTROGRAMS_KEPT:
                spectrograms.popitem(last=False)
        log.info(
            "request %s: %.1f s of audio, %d windows, k=%d in %.2f s",
            rid, audio.duration_s, len(results), k, time.monotonic() - started,
        )  # fmt: skip
        # The request's facts ride in headers so the body stays the CLI's list; `_Guard` adds
        # X-Request-ID. Same-origin page and no CORS, so the page can read them all.
        headers = {
            "Link": f'</api/spectrogram/{result_id}>; rel="spectrogram"',
            "X-Spectrogram-Max-Hz": header_number(top_hz),
            "X-Duration-S": header_number(audio.duration_s),
            "X-Sample-Rate-Hz": str(int(audio.sample_rate_hz)),
            "X-Silent": "true" if audio.silent else "false",
            "X-K": str(k),
        }
        answered_by = getattr(searcher, "answered_by", None)
        if answered_by is not None:
            headers["X-Answered-By"] = header_text(answered_by)
        chosen = options.get("species") or getattr(searcher, "species", None)
        if chosen is not None and getattr(chosen, "unknown", None):
            headers["X-Species-Unknown"] = header_text(", ".join(chosen.unknown))
        return JSONResponse(jsonable_encoder(records), headers=headers)

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
        with spectrogram_lock:
            png = spectrograms.get(result_id)
        if png is None:
            raise ApiError(404, "not_found", "no such spectrogram (it may have expired)")
        return Response(
            png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"}
        )

    return app


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
               "species_list": species_list, "method": method, **prompts}  # fmt: skip
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
    print(f"songsight: {len(searcher.gallery)} photos, answered by {searcher.answered_by}")
    print(f"songsight: open http://{host}:{port}/ (Ctrl+C to stop)")
    # uvicorn answers 503 itself (no Retry-After) past this many open connections: leave room
    # for a full queue plus health checks and photos, so the queue decides who waits.
    uvicorn.run(app, host=host, port=port, limit_concurrency=max_queue + 32)
