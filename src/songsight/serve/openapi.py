"""OpenAPI for `POST /api/search`: a multipart upload in, the CLI's JSON records out.

The answer's body is exactly what `songsight search --format json` writes (made web-safe:
file names, not server paths; each hit's ``image_id`` and ``url`` added); per-request facts
travel in headers.
"""

from __future__ import annotations

_HIT_SCHEMA = {
    "type": "object",
    "required": ["image", "score", "image_id", "url"],
    "properties": {
        "image": {"type": "string", "description": "the photo's file name (no folders)"},
        "score": {"type": "number", "description": "cosine similarity"},
        "image_id": {"type": "integer"},
        "url": {"type": "string", "description": "the photo: /api/images/{image_id}"},
        "species": {"type": "string", "description": "scientific name, when known"},
        "label": {"type": "integer"},
        "common_name": {"type": "string"},
    },
}
_RECORD_SCHEMA = {
    "type": "object",
    "required": ["path", "start_s", "end_s", "window", "answered_by", "hits", "species"],
    "properties": {
        "path": {"type": "string", "description": "the uploaded file's name"},
        "start_s": {"type": "number"},
        "end_s": {"type": "number"},
        "window": {"type": ["integer", "null"], "description": "null: the whole recording"},
        "answered_by": {"type": "string"},
        "flags": {
            "type": "array",
            "items": {"type": "string", "enum": ["silent", "too_short"]},
            "description": "no usable signal (then no hits and no species); empty otherwise",
        },
        "hits": {"type": "array", "items": _HIT_SCHEMA},
        "species": {
            "type": "array",
            "description": "the roll-up: each taxon's probability (calibrated when the gallery records a temperature for this model)",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "score": {"type": "number"},
                    "rank": {"type": "string"},
                    "label": {"type": ["integer", "null"]},
                    "common_name": {"type": ["string", "null"]},
                },
            },
        },
        "error": {"type": "string", "description": "only when the recording was unusable"},
    },
}
_SEARCH_HEADERS = {
    "X-Request-ID": {
        "description": "this request's id, as in the server log",
        "schema": {"type": "string"},
    },
    "Link": {
        "description": 'the spectrogram PNG: `</api/spectrogram/ID>; rel="spectrogram"`',
        "schema": {"type": "string"},
    },
    "X-Spectrogram-Max-Hz": {
        "description": "frequency at the spectrogram's top edge",
        "schema": {"type": "number"},
    },
    "X-Duration-S": {"description": "the recording's duration", "schema": {"type": "number"}},
    "X-Sample-Rate-Hz": {
        "description": "the recording's own sample rate",
        "schema": {"type": "integer"},
    },
    "X-Silent": {
        "description": "`true` when the recording is nearly silent",
        "schema": {"type": "string", "enum": ["true", "false"]},
    },
    "X-Answered-By": {
        "description": "which model answered: `distilled` or `cascade: ...`",
        "schema": {"type": "string"},
    },
    "X-Species-Unknown": {
        "description": (
            "entries of the species list that are not species of the gallery, comma-separated; "
            "UTF-8, percent-encoded: `%` and every byte outside printable ASCII is written "
            "`%XX` (`Pájaro Niño` arrives as `P%C3%A1jaro Ni%C3%B1o`); decode with "
            "JavaScript's `decodeURIComponent` or Python's `urllib.parse.unquote`"
        ),
        "schema": {"type": "string"},
    },
    "X-K": {
        "description": "photos asked for per window (the `k` used)",
        "schema": {"type": "integer"},
    },
}


def search_openapi(max_k: int) -> dict:
    """`openapi_extra` of `POST /api/search`: the multipart request, the array answer, its headers."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["audio"],
                        "additionalProperties": False,  # upload.FORM_FIELDS: others are refused
                        "properties": {
                            "audio": {"type": "string", "format": "binary", "description": "WAV, FLAC, Ogg or MP3"},
                            "k": {"type": "integer", "minimum": 1, "maximum": max_k, "default": 10},
                            "window_s": {"type": "number", "description": "analysis window (default: the model's)"},
                            "hop_s": {"type": "number", "description": "hop between windows"},
                            "min_score": {"type": "number", "minimum": 0, "maximum": 1, "description": "keep species of at least this probability, and the windows that detect one"},
                            "species_list": {"type": "string", "description": "answer only with these species: names or codes, one a line or comma-separated"},
                        },
                    }
                }
            },
        },
        "responses": {
            "200": {
                "description": (
                    "The records `songsight search --format json` writes: the whole recording "
                    "(`window` null), then each window. Per-request facts are in the headers."
                ),
                "headers": _SEARCH_HEADERS,
                "content": {"application/json": {"schema": {"type": "array", "items": _RECORD_SCHEMA}}},
            },
            "413": {"description": "upload or recording too large"},
            "415": {"description": "not WAV, FLAC, Ogg or MP3 (judged by content)"},
            "422": {"description": "invalid or unknown field, a query parameter (this route takes none), or undecodable audio"},
            "503": {"description": "busy; retry after the Retry-After header"},
            "504": {"description": "the search passed the time limit"},
        },
    }  # fmt: skip
