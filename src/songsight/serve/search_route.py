"""``POST /api/search``: admit, receive the upload, queue the search, answer the CLI's records.

A full queue answers 503 with Retry-After before the body is read; the upload is streamed to a
temporary file under the size limit (`songsight.serve.upload`); the search waits its turn in
the micro-batching queue (`songsight.serve.batching`), which from submission owns the place and
the temp file. Past the deadline: 504, and a search that had not started is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from songsight.errors import InputFileError, SongsightError
from songsight.serve.batching import SearchJob, SearchQueue
from songsight.serve.guard import request_id
from songsight.serve.limits import MAX_K, ServeLimits
from songsight.serve.openapi import search_openapi
from songsight.serve.public import header_number, header_text, header_utf8, web_records
from songsight.serve.routes import SpectrogramCache
from songsight.serve.upload import (
    ApiError,
    form_number,
    missing_extra,
    receive_upload,
    search_options,
)

try:
    from fastapi import FastAPI, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.responses import JSONResponse
except ImportError as exc:
    raise missing_extra(exc) from None

log = logging.getLogger("songsight.serve")


class _Asked(NamedTuple):
    """What one request asks for, read from its form fields."""

    k: int
    window_s: float | None
    hop_s: float | None
    options: dict


async def _admit_and_receive(request: Request, searcher, queue: SearchQueue,
                             limits: ServeLimits, directory: str):  # fmt: skip
    """(upload, asked): a place in the queue, then the body on disk and its fields checked; on
    any failure the place (and the temp file) is given back before the error propagates."""
    if not queue.try_admit():  # refuse before reading a body that could not wait anyway
        raise ApiError(
            503, "busy", "the server's queue of searches is full; try again shortly",
            {"Retry-After": str(queue.retry_after_s())},
        )  # fmt: skip
    try:
        try:
            upload = await asyncio.wait_for(
                receive_upload(request, directory, limits.max_bytes), limits.request_timeout_s
            )
        except asyncio.TimeoutError:
            raise ApiError(408, "upload_timeout", "the upload took too long") from None
        try:
            asked = _Asked(
                form_number(upload.fields, "k", int, 1, MAX_K) or 10,
                form_number(upload.fields, "window_s", float, 0.1, limits.max_duration_s),
                form_number(upload.fields, "hop_s", float, 0.1, limits.max_duration_s),
                search_options(searcher, upload.fields),
            )
        except BaseException:
            upload.discard()
            raise
    except BaseException:
        queue.release()
        raise
    return upload, asked


async def _outcome(future, remaining_s: float, rid: str, limits: ServeLimits, asked: _Asked):
    """The queued search's (audio, results, png, top_hz), its failures as API errors."""
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), remaining_s)
    except asyncio.TimeoutError:
        future.cancel()  # a search still waiting is dropped; a running one finishes
        log.warning("request %s: search passed the %g s limit", rid, limits.request_timeout_s)
        raise ApiError(
            504, "timeout", f"the search took longer than {limits.request_timeout_s:g} s"
        ) from None
    except InputFileError as exc:
        raise ApiError(422, "invalid_audio", exc.reason) from None
    except (ValueError, SongsightError) as exc:
        if asked.window_s is None and asked.hop_s is None:
            raise
        # The searcher refuses windows its model cannot take (e.g. longer than its input).
        raise ApiError(422, "invalid_request", f"window_s/hop_s refused: {exc}"[:300]) from None


def _fact_headers(searcher, asked: _Asked, result_id: str, audio, top_hz: float) -> dict:
    """The request's facts, which ride in headers so the body stays the CLI's list (`Guard`
    adds X-Request-ID). Same-origin page and no CORS, so the page can read them all."""
    headers = {
        "Link": f'</api/spectrogram/{result_id}>; rel="spectrogram"',
        "X-Spectrogram-Max-Hz": header_number(top_hz),
        "X-Duration-S": header_number(audio.duration_s),
        "X-Sample-Rate-Hz": str(int(audio.sample_rate_hz)),
        "X-Silent": "true" if audio.silent else "false",
        "X-K": str(asked.k),
    }
    answered_by = getattr(searcher, "answered_by", None)
    if answered_by is not None:
        headers["X-Answered-By"] = header_text(answered_by)
    chosen = asked.options.get("species") or getattr(searcher, "species", None)
    if chosen is not None and getattr(chosen, "unknown", None):
        # Species names are often not ASCII ("Pájaro Niño"): percent-encoded UTF-8.
        headers["X-Species-Unknown"] = header_utf8(", ".join(chosen.unknown))
    return headers


def add_search(app: FastAPI, searcher, queue: SearchQueue, limits: ServeLimits,
               spectrograms: SpectrogramCache, to_records: Callable[[list], list[dict]],
               directory: str) -> None:  # fmt: skip
    """``POST /api/search`` over ``searcher``, its uploads under ``directory``."""

    @app.post("/api/search", tags=["api"], response_model=None, openapi_extra=search_openapi(MAX_K))
    async def search(request: Request) -> JSONResponse:
        """Search the gallery with one recording.

        The body is what ``songsight search --format json`` writes for it: a list of records,
        the whole recording then each window, with ``path`` the upload's name, ``image`` a
        file name only, and ``image_id`` and ``url`` added to each hit. The rest rides in
        headers: ``X-Request-ID``, ``Link`` (rel="spectrogram"), ``X-Spectrogram-Max-Hz``,
        ``X-Duration-S``, ``X-Sample-Rate-Hz``, ``X-Silent``, ``X-Answered-By``, ``X-K``, and
        ``X-Species-Unknown`` (species-list entries the gallery does not know: UTF-8,
        percent-encoded; `decodeURIComponent` reads it).

        The options are the form fields ``k``, ``window_s``, ``hop_s``, ``min_score`` and
        ``species_list``; an unknown field, or any query parameter, is refused (422).
        """
        deadline = time.monotonic() + limits.request_timeout_s
        rid = request_id(request)
        upload, asked = await _admit_and_receive(request, searcher, queue, limits, directory)
        # From here the queue owns the place and the temp file, and frees both when done.
        future = queue.submit(SearchJob(upload.path, asked.k, asked.window_s, asked.hop_s,
                                        asked.options))  # fmt: skip
        started = time.monotonic()
        remaining = max(deadline - started, 0.001)
        audio, results, png, top_hz = await _outcome(future, remaining, rid, limits, asked)
        records = web_records(results, to_records(results), upload.filename)
        errors = [r.error for r in results if getattr(r, "error", None)]
        if results and len(errors) == len(results):
            raise ApiError(
                422, "invalid_audio", f"could not search this recording: {errors[0]}"[:300]
            )
        result_id = spectrograms.put(png)
        log.info(
            "request %s: %.1f s of audio, %d windows, k=%d in %.2f s",
            rid, audio.duration_s, len(results), asked.k, time.monotonic() - started,
        )  # fmt: skip
        headers = _fact_headers(searcher, asked, result_id, audio, top_hz)
        return JSONResponse(jsonable_encoder(records), headers=headers)
