"""Connections to Milvus: a server by URI, or an embedded Milvus Lite file (``*.db``) whose
server this process starts, shares between its `MilvusIndex` objects and stops (releasing
the file's lock) when the last one closes.

Versions: pymilvus 2.6 to 3.0 as the client, Milvus Lite 2.5 for the file, and a Milvus
server 2.3.4 or newer; older servers are refused by name (`MIN_SERVER_VERSION`). Both ends are
tested against PyPI's ``milvus`` package (tests/test_milvus_server.py): servers 2.3.4 and
2.3.5 with pymilvus 2.6.0 and 3.0.2; 2.3.3 and 2.3.0 refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings
from pathlib import Path

from songsight.errors import SongsightError

__all__ = [
    "MIN_SERVER_VERSION",
    "connect",
    "disconnect",
    "is_embedded",
    "release_embedded",
    "server_failures",
]

# The oldest Milvus server songsight works with. Before 2.3.4 a dropped index blocks a new one
# on the same field ("at most one distinct index is allowed per field", measured on 2.3.0 to
# 2.3.3 for over a minute), so a gallery's index could not grow from FLAT to HNSW; 2.2 has no
# upsert (a rerun after a kill would duplicate rows) and no count(*).
MIN_SERVER_VERSION = (2, 3, 4)


def import_pymilvus():
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
    pymilvus = import_pymilvus()
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
        elif not _lite_socket(uri):
            version = str(client.get_server_version())
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
    if not is_embedded(uri) and not _lite_socket(uri):
        _check_server_version(client, uri, version)
    return client


def _lite_socket(uri: str) -> bool:
    """Whether ``uri`` is the socket of a Milvus Lite server this machine runs (how Ray workers
    reach a gallery's embedded file): it answers no version, and its version is the extra's."""
    return str(uri).startswith("unix:")


def server_version_tuple(version: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a server's version string (``v2.3.5-lite`` -> (2, 3, 5));
    a missing patch is 0 (PyPI's ``milvus`` 2.3.0 says ``v2.2-testing-20230824-...``, the
    branch it was cut from); None when there is no number to read."""
    found = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", version)
    return (int(found[1]), int(found[2]), int(found[3] or 0)) if found else None


def _check_server_version(client, uri: str, version: str) -> None:
    have = server_version_tuple(version)
    if have is not None and have < MIN_SERVER_VERSION:
        client.close()
        need = ".".join(map(str, MIN_SERVER_VERSION))
        raise SongsightError(
            f"the Milvus server at {uri} runs {version}; songsight needs Milvus {need} or newer "
            "(older servers cannot replace a collection's index, which a growing gallery needs)"
        )


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
def server_failures(uri: str, advice: str = ""):
    """pymilvus's errors from a Milvus server (gone, restarting, refusing) as one
    `SongsightError` naming the server, followed by ``advice``; the embedded file's are left
    as they are."""
    try:
        yield
    except SongsightError:
        raise
    except Exception as err:
        pymilvus = sys.modules.get("pymilvus")
        failed = pymilvus is not None and isinstance(err, pymilvus.exceptions.MilvusException)
        if not failed or is_embedded(uri):
            raise
        reason = getattr(err, "message", None) or str(err)
        raise SongsightError(f"the Milvus server at {uri} failed: {reason}. {advice}".strip()) from None  # fmt: skip


# Where pymilvus's query iterator logs: 3.0, then 2.6.
_ITERATOR_LOGGERS = ("pymilvus.client.iterator.query_iterator", "pymilvus.orm.iterator")


@contextlib.contextmanager
def quiet_logger(*names: str, level: int = logging.CRITICAL):
    """Raise these loggers' level while the block runs (their news is said another way)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in zip(loggers, levels, strict=True):
            logger.setLevel(old)


@contextlib.contextmanager
def quiet_iterator():
    """Milvus servers before 2.4 and Milvus Lite 2.5 return no snapshot timestamp to pymilvus's
    query iterator, which then warns "failed to get mvccTs from milvus server, use client-side
    ts instead" and reads as of this machine's clock plus 1 s: every row written before the
    scan, which is what songsight's scans (after its own writes) need. Not the user's business."""
    with quiet_logger(*_ITERATOR_LOGGERS, level=logging.ERROR):
        yield


@contextlib.contextmanager
def quiet_embedded(embedded: bool):
    """Some Milvus Lite releases lack the timestamp call that pymilvus makes before waiting
    for an index build and before a query iterator: the gRPC server logs a traceback and
    pymilvus a warning, then pymilvus goes on without it (the client's clock, right for a
    file only this process writes). Keep that noise off the user's screen."""
    loggers = ["grpc._server", *_ITERATOR_LOGGERS] if embedded else []
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
