"""Connections to Milvus: a server by URI, or an embedded Milvus Lite file (``*.db``) whose
server this process starts, shares between its `MilvusIndex` objects and stops (releasing
the file's lock) when the last one closes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

from songsight.errors import SongsightError

__all__ = ["connect", "disconnect", "is_embedded", "release_embedded"]


def _import_pymilvus():
    try:
        import pymilvus
    except ImportError as err:
        raise SongsightError(
            "the Milvus backend needs pymilvus and milvus-lite; install them with: "
            "pip install 'songsight[milvus]'"
        ) from err
    return pymilvus


def is_embedded(uri: str) -> bool:
    """Whether ``uri`` names a Milvus Lite file (``*.db``) rather than a server."""
    return str(uri).endswith(".db")


class _LiteLogs(logging.Filter):
    """Milvus Lite logs its failures on the root logger; songsight's own error says them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "milvus_lite" not in record.pathname


def connect(uri: str):
    """A ``pymilvus.MilvusClient`` for ``uri``; failures are one clear `SongsightError`."""
    pymilvus = _import_pymilvus()
    if is_embedded(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # Milvus Lite 2.5 imports the deprecated pkg_resources: not the user's business.
            warnings.simplefilter("ignore", UserWarning)
            import milvus_lite  # noqa: F401
    quiet = _LiteLogs()
    logging.getLogger().addFilter(quiet)
    try:
        # A server's credentials come from the environment, never from gallery.json.
        token = "" if is_embedded(uri) else os.environ.get("MILVUS_TOKEN", "")
        client = pymilvus.MilvusClient(uri=str(uri), token=token)
        if is_embedded(uri):
            key = str(Path(uri).absolute())
            _OPEN_EMBEDDED[key] = _OPEN_EMBEDDED.get(key, 0) + 1
        return client
    except Exception as err:  # pymilvus raises its own types for every connection failure
        if is_embedded(uri):
            raise SongsightError(
                f"cannot open the embedded Milvus file {uri}: another process holds it (a "
                "running `songsight serve` or `index add`?); stop that process and retry"
            ) from None
        reason = getattr(err, "message", None) or str(err)
        raise SongsightError(f"cannot reach the Milvus server at {uri}: {reason}") from None
    finally:
        logging.getLogger().removeFilter(quiet)


# MilvusIndex objects open on each embedded file in this process: the file's in-process
# server (and its lock) is released when the last one closes.
_OPEN_EMBEDDED: dict[str, int] = {}


def disconnect(client, uri: str) -> None:
    try:
        client.close()
    except Exception:  # pymilvus may already be torn down at interpreter exit
        pass
    if is_embedded(uri):
        key = str(Path(uri).absolute())
        _OPEN_EMBEDDED[key] = _OPEN_EMBEDDED.get(key, 1) - 1
        if _OPEN_EMBEDDED[key] <= 0:
            release_embedded(uri)


def release_embedded(uri: str) -> None:
    """Stop this process's Milvus Lite server for ``uri`` (releases the file's lock)."""
    if not is_embedded(uri):
        return
    _OPEN_EMBEDDED.pop(str(Path(uri).absolute()), None)
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        return
    server_manager_instance.release_server(str(uri))


@contextlib.contextmanager
def quiet_embedded(embedded: bool):
    """Some Milvus Lite releases lack the timestamp call that pymilvus makes before waiting
    for an index build and before a query iterator: the gRPC server logs a traceback and
    pymilvus a warning, then pymilvus goes on without it (the client's clock, right for a
    file only this process writes). Keep that noise off the user's screen."""
    loggers = ["grpc._server", "pymilvus.client.iterator.query_iterator"] if embedded else []
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
