"""The vector index of a songsight Milvus collection: what Milvus holds, declaring a new one,
and waiting for a server to build it. `songsight.index.milvus.MilvusIndex` decides which index
a collection needs (`songsight.index.milvus.options.choose_index_type`) and calls these.

A server builds the declared index on sealed segments in the background, after a flush; until
it has, it scans those rows (exact, slower). The embedded file never builds one (it searches
an interim index, see `choose_index_type`).
"""

from __future__ import annotations

import time
from typing import Any

from songsight.errors import SongsightError
from songsight.index.milvus.connect import quiet_embedded, quiet_logger
from songsight.index.milvus.rows import VECTOR_FIELD

__all__ = ["BUILD_PARAMS", "create_vector_index", "held_vector_index", "wait_indexed"]

# Build parameters read back from ``describe_index`` (Milvus returns them as text).
BUILD_PARAMS = ("M", "efConstruction", "nlist")


def held_vector_index(client, collection: str) -> tuple[str | None, dict[str, int]]:
    """(index type, build parameters) of the collection's vector index; (None, {}): none."""
    info = client.describe_index(collection, VECTOR_FIELD)
    if not info:
        return None, {}
    return str(info.get("index_type") or "FLAT"), {
        k: int(info[k]) for k in BUILD_PARAMS if k in info
    }


def create_vector_index(
    client, collection: str, uri: str, index_type: str, params: dict[str, Any], embedded: bool
) -> None:
    """Declare ``index_type`` with build ``params`` on the vector field (inner product); a type
    or parameter Milvus refuses is one clear `SongsightError` in the server's words."""
    index = client.prepare_index_params()
    index.add_index(field_name=VECTOR_FIELD, index_type=index_type, metric_type="IP", params=params)  # fmt: skip
    try:
        # pymilvus logs a refusal with its traceback; the error below says it once.
        with quiet_embedded(embedded), quiet_logger("pymilvus.decorators"):
            client.create_index(collection, index)
    except Exception as err:  # pymilvus's MilvusException
        reason = getattr(err, "message", None) or str(err)
        raise SongsightError(f"Milvus at {uri} refused a {index_type} index {params}: {reason}") from None  # fmt: skip


def wait_indexed(client, collection: str, uri: str, timeout_s: float) -> float:
    """Wait until Milvus has indexed every sealed row; returns the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        info = client.describe_index(collection, VECTOR_FIELD) or {}
        pending = int(info.get("pending_index_rows", 0))
        if pending == 0 and int(info.get("indexed_rows", 0)) >= int(info.get("total_rows", 0)):
            return time.perf_counter() - t0
        time.sleep(0.5)
    raise SongsightError(
        f"Milvus at {uri} has not indexed collection {collection!r} after {timeout_s:.0f} s"
    )
