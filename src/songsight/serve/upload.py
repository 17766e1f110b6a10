"""Uploads for the HTTP API: a multipart body streamed to a temp file, judged and decoded.

The body is streamed and cut off at the size limit (413); the type is judged by content, magic
bytes then libsndfile, never by name or Content-Type (415). Deliberate HTTP errors are
`ApiError`; `songsight.serve.app` turns them into JSON responses.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PureWindowsPath
from typing import TYPE_CHECKING, Any

from songsight.errors import InputFileError, SongsightError


def missing_extra(exc: ImportError) -> SongsightError:
    """The one error for a web stack that is not installed."""
    return SongsightError(
        f"the web page needs the 'ui' extra ({exc.name} is missing): pip install 'songsight[ui]'"
    )


try:
    try:
        from python_multipart.multipart import MultipartParser, parse_options_header
    except ImportError:  # python-multipart < 0.0.13 names its module `multipart`
        from multipart.multipart import MultipartParser, parse_options_header
except ImportError as exc:
    raise missing_extra(exc) from None

if TYPE_CHECKING:
    from fastapi import Request

__all__ = ["FORM_FIELDS", "ApiError", "decode_upload", "search_options", "sniff_audio"]

# The form fields of ``POST /api/search``, the recording first; any other is refused (422), so
# a misspelt option is never silently ignored. `songsight.serve.openapi` documents these.
FORM_FIELDS = ("audio", "k", "window_s", "hop_s", "min_score", "species_list")

FORM_OVERHEAD_BYTES = 96 * 1024  # multipart boundaries, headers, the fields, a species list
MAX_FIELD_BYTES = 256
MAX_LIST_BYTES = 32 * 1024  # a species list: hundreds of names
MAX_PARTS = 8


class ApiError(Exception):
    """A deliberate HTTP error: ``status``, a stable ``code`` and a message for people."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def sniff_audio(head: bytes) -> str | None:
    """The container a file's first bytes announce: "wav", "flac", "ogg", "mp3", or None."""
    if len(head) >= 12 and head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"ID3":
        return "mp3"
    # An MPEG audio frame header: 11 sync bits, then a layer field that is not 00 (ADTS AAC).
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06:
        return "mp3"
    return None


@dataclass
class _Upload:
    """What `receive_upload` read: the audio part in a temp file plus the small text fields."""

    directory: str
    max_bytes: int
    path: Path | None = None
    filename: str = "recording"
    size: int = 0
    head: bytes = b""
    fields: dict[str, str] = field(default_factory=dict)
    parts: int = 0
    ended: bool = False
    _file: Any = None
    _name: str | None = None
    _value: bytearray | None = None
    _header: list[bytearray] = field(default_factory=lambda: [bytearray(), bytearray()])
    _headers: dict[bytes, bytes] = field(default_factory=dict)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def callbacks(self) -> dict[str, Callable]:
        def header_field(data, start, end):
            self._header[0] += data[start:end]

        def header_value(data, start, end):
            self._header[1] += data[start:end]

        def header_end():
            self._headers[bytes(self._header[0]).strip().lower()] = bytes(self._header[1]).strip()
            self._header = [bytearray(), bytearray()]

        return {
            "on_part_begin": self._part_begin,
            "on_header_field": header_field,
            "on_header_value": header_value,
            "on_header_end": header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": lambda: setattr(self, "ended", True),
        }

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise ApiError(400, "bad_request", f"too many form fields (at most {MAX_PARTS})")
        self._headers, self._name, self._value = {}, None, None

    def _headers_finished(self) -> None:
        _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = opts.get(b"name", b"").decode("utf-8", "replace")
        if self._name not in FORM_FIELDS:
            raise _unknown_field(self._name, b"filename" in opts)
        if self._name != "audio":
            self._value = bytearray()
            return
        if self.path is not None:
            raise ApiError(400, "bad_request", "send one 'audio' file per request")
        self.filename = _display_name(opts.get(b"filename", b"").decode("utf-8", "replace"))
        self._file = tempfile.NamedTemporaryFile(
            dir=self.directory, prefix="songsight-upload-", delete=False
        )
        self.path = Path(self._file.name)

    def _part_data(self, data, start, end) -> None:
        chunk = data[start:end]
        if self._value is not None:
            self._value += chunk
            limit = MAX_LIST_BYTES if self._name == "species_list" else MAX_FIELD_BYTES
            if len(self._value) > limit:
                raise ApiError(400, "bad_request", f"form field {self._name!r} is too long")
            return
        if self._file is None:
            return
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise _too_large(self.max_bytes)
        if len(self.head) < 16:
            self.head += chunk[: 16 - len(self.head)]
            # Judge the type as soon as the magic bytes are in, before storing the rest.
            if len(self.head) >= 12 and sniff_audio(self.head) is None:
                raise _unsupported()
        self._file.write(chunk)

    def _part_end(self) -> None:
        if self._value is not None and self._name:
            self.fields[self._name] = self._value.decode("utf-8", "replace").strip()
        elif self._file is not None:
            self._file.close()
            self._file = None
        self._value = None


def _unknown_field(name: str, is_file: bool) -> ApiError:
    shown = repr(name[:40])
    if is_file:
        message = (
            f"the recording goes in the form field 'audio'; this request sent a file in {shown}"
        )
    else:
        message = f"unknown form field {shown}; the fields are {', '.join(FORM_FIELDS)}"
    return ApiError(422, "invalid_request", message)


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "too_large", f"the upload is larger than {max_bytes / 1e6:g} MB")


def _unsupported() -> ApiError:
    return ApiError(
        415,
        "unsupported_media_type",
        "not a recording this server reads: send WAV, FLAC, Ogg or MP3",
    )


def _display_name(name: str) -> str:
    """The last component of a client-given file name, printable and short (display only)."""
    base = PureWindowsPath(PurePath(name).name).name
    base = re.sub(r"[\x00-\x1f\x7f]", "", base).strip()
    return base[:120] or "recording"


async def receive_upload(request: Request, directory: str, max_bytes: int) -> _Upload:
    """Stream a multipart body into `_Upload`, stopping at the limits. Raises `ApiError`."""
    mime, opts = parse_options_header(request.headers.get("content-type", ""))
    if mime != b"multipart/form-data" or not opts.get(b"boundary"):
        raise ApiError(
            415, "unsupported_media_type", "send multipart/form-data with the recording in 'audio'"
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes + FORM_OVERHEAD_BYTES:
        raise _too_large(max_bytes)
    upload = _Upload(directory, max_bytes)
    try:
        parser = MultipartParser(opts[b"boundary"], upload.callbacks())
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes + FORM_OVERHEAD_BYTES:
                raise _too_large(max_bytes)
            try:
                parser.write(chunk)
            except ApiError:
                raise
            except Exception:
                raise ApiError(400, "bad_request", "malformed multipart body") from None
        parser.finalize()
        if not upload.ended:
            raise ApiError(400, "bad_request", "incomplete multipart body")
        if upload.path is None:
            raise ApiError(422, "invalid_request", "no file in the multipart field 'audio'")
        if upload.size == 0:
            raise ApiError(422, "invalid_request", "the uploaded file is empty")
        if sniff_audio(upload.head) is None:
            raise _unsupported()
    except BaseException:
        upload.discard()
        raise
    return upload


def form_number(fields: dict[str, str], name: str, kind: type, lo: float, hi: float):
    text = fields.get(name, "")
    if text == "":
        return None
    try:
        value = kind(text)
    except ValueError:
        raise ApiError(
            422, "invalid_request", f"{name} must be a number, got {text[:20]!r}"
        ) from None
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ApiError(
            422, "invalid_request", f"{name} must lie in [{lo:g}, {hi:g}], got {text[:20]}"
        )
    return value


def decode_upload(path: str | Path, max_duration_s: float):
    """Decode an upload to `songsight.inputs.audio.Audio` at its own rate, mono. Raises `ApiError`."""
    import soundfile as sf

    from songsight.inputs.audio import prepare_waveform

    try:
        info = sf.info(str(path))
    except Exception:
        raise _unsupported() from None
    # The frame cap bounds memory whatever the header claims (MP3 lengths are estimates).
    limit = int(max_duration_s * info.samplerate) + 1
    if info.duration > max_duration_s + 1:
        raise ApiError(413, "too_long", f"the recording is longer than {max_duration_s:g} s")
    try:
        data, rate = sf.read(str(path), frames=limit, dtype="float32", always_2d=True)
    except Exception:
        raise ApiError(422, "invalid_audio", "the recording is corrupt: decoding failed") from None
    if len(data) >= limit:
        raise ApiError(413, "too_long", f"the recording is longer than {max_duration_s:g} s")
    try:
        return prepare_waveform(data, int(rate), int(rate), name="upload")
    except InputFileError as exc:
        raise ApiError(422, "invalid_audio", exc.reason) from None


def search_options(searcher, fields: dict[str, str]) -> dict:
    """The optional ``min_score`` and ``species_list`` form fields as `Searcher.search`
    arguments (absent fields are not passed). ``species_list``: names or codes, one a line
    or comma-separated. Raises `ApiError` 422."""
    options: dict = {}
    min_score = form_number(fields, "min_score", float, 0.0, 1.0)
    if min_score:
        options["min_score"] = min_score
    text = fields.get("species_list", "").strip()
    if text:
        entries = [e.strip() for e in text.replace(",", "\n").splitlines() if e.strip()]
        try:
            options["species"] = searcher.species_filter(entries, "species_list")
        except SongsightError as exc:
            raise ApiError(422, "invalid_request", str(exc)[:300]) from None
    return options
