"""The web page and its HTTP API: ``create_app(searcher)`` and ``serve(gallery, host, port)``.

Needs the ``ui`` extra (fastapi, uvicorn, python-multipart, fastapi-offline). Importing this
package is free; the web stack is imported on first use of `create_app` or `serve`, which
raise a `songsight.errors.SongsightError` naming the extra when it is missing.
"""

from __future__ import annotations

__all__ = ["create_app", "serve"]


def __getattr__(name: str):
    if name in __all__:
        from songsight.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'songsight.serve' has no attribute {name!r}")
