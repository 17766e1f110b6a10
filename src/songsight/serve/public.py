"""What the server shows its clients: search records, provenance and header values, with no
server path and nothing that could break a header."""

from __future__ import annotations

import re
from pathlib import PurePath, PureWindowsPath
from typing import Any
from urllib.parse import quote


def web_records(results: list, records: list[dict], filename: str) -> list[dict]:
    """The CLI's records, made safe for the web: image URLs by id, no server paths."""
    out = []
    for result, record in zip(results, records, strict=True):
        record = {**record, "path": filename}
        hits = []
        for hit, row in zip(result.hits, record.get("hits") or [], strict=True):
            image_id = int(hit.image_id)
            image = PurePath(str(row.get("image", ""))).name
            hits.append(
                {**row, "image": image, "image_id": image_id, "url": f"/api/images/{image_id}"}
            )
        record["hits"] = hits
        out.append(record)
    return out


def header_number(value: float) -> str:
    """A float as a header value: the shortest text that reads back to the same number."""
    return repr(float(value))


def header_text(value: Any) -> str:
    """Printable ASCII only, other characters as ``?``: header values are latin-1 and must not
    carry line breaks. For text whose every character matters, `header_utf8`."""
    return re.sub(r"[^\x20-\x7e]", "?", str(value))[:200]


# Printable ASCII but "%": what `header_utf8` leaves as it is.
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def header_utf8(value: Any, max_chars: int = 300) -> str:
    """Any text as a header value, nothing lost: UTF-8, with ``%`` and every byte outside
    printable ASCII percent-encoded (``Pájaro Niño`` -> ``P%C3%A1jaro Ni%C3%B1o``), so
    ``decodeURIComponent`` or ``urllib.parse.unquote`` gives the text back; line breaks can
    neither break the header nor add one. Cut to ``max_chars`` characters before encoding."""
    return quote(str(value)[:max_chars], safe=_HEADER_SAFE, encoding="utf-8")


def model_summary(searcher) -> dict:
    """The searcher's provenance (model ids, revisions, settings) without server paths."""
    prov = getattr(searcher, "provenance", None)
    return _public(prov) if isinstance(prov, dict) else {}


def _public(value: Any, depth: int = 3) -> Any:
    """JSON scalars and small dicts; folders dropped, absolute paths cut to their last part."""
    if isinstance(value, dict):
        if depth == 0:
            return None
        out = {}
        for key, item in value.items():
            item = _public(item, depth - 1)
            if item is not None and str(key) not in _PRIVATE_KEYS:
                out[str(key)] = item
        return out
    if isinstance(value, str) and (
        value.startswith(("/", "~")) or re.match(r"^[A-Za-z]:\\", value)
    ):
        return PureWindowsPath(value).name or None
    if isinstance(value, (str, int, float, bool)):
        return value
    return None


_PRIVATE_KEYS = {"directory", "dir", "path", "local_dir", "cache_dir", "checkpoint"}
