"""Gallery photos sent to the browser: each with its true media type, in a form it can show."""

from __future__ import annotations

import io
from pathlib import Path

__all__ = ["photo_response"]

IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp", ".gif": "image/gif", ".bmp": "image/bmp"}  # fmt: skip
# Galleries take TIFF photos, which browsers do not show: those are sent as PNG.
CONVERTED_SUFFIXES = (".tif", ".tiff")
_MAGIC = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG", "image/png"), (b"GIF8", "image/gif"), (b"BM", "image/bmp"))  # fmt: skip
_CACHE = {"Cache-Control": "public, max-age=86400"}


def sniffed_type(path: Path) -> str:
    """A photo's media type by its first bytes (for files with odd or no extensions)."""
    with path.open("rb") as fh:
        head = fh.read(16)
    for magic, media_type in _MAGIC:
        if head.startswith(magic):
            return media_type
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    return "application/octet-stream"


def photo_response(path: Path):
    """The photo at ``path`` (which exists), as the browser can show it: a FastAPI response."""
    from fastapi.responses import FileResponse, Response

    suffix = path.suffix.lower()
    media_type = IMAGE_TYPES.get(suffix) or sniffed_type(path)
    if suffix in CONVERTED_SUFFIXES or media_type == "image/tiff":
        from songsight.inputs.images import load_image

        buf = io.BytesIO()
        load_image(path).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png", headers=_CACHE)
    return FileResponse(path, media_type=media_type, headers=_CACHE)
