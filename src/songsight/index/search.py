"""Nearest-neighbour search over embeddings: exact search (the reference) and an HNSW index.

Both backends score by inner product, which is cosine similarity for the unit-norm embeddings
the encoder wrappers produce (normalisation happens there, not here). Both answer the same
call, ``search(queries (Q, D), k) -> (scores (Q, k) float32, ids (Q, k) int64)``, sorted by
descending score with ties broken by the lower id; rows with fewer than ``k`` hits are padded
with score ``-inf`` and id ``-1``. ``search(..., allowed_ids=ids)`` answers as if the index
held only those ids (how species lists reach the backend).

A saved index is a directory: ``meta.json``, ``vectors.npy`` (the stored embeddings),
``ids.npy`` and, for HNSW, ``graph.usearch``.

The backends live beside this module: `songsight.index.exact` (the stored vectors and
`ExactIndex`) and `songsight.index.hnsw` (`HNSWIndex`). Import them from here. A third,
`songsight.index.milvus.MilvusIndex`, keeps its rows in a Milvus collection (embedded file or
server) and is imported from its own package, as it needs the optional pymilvus.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from songsight.errors import SongsightError
from songsight.index.exact import ExactIndex, read_index_meta
from songsight.index.hnsw import HNSWIndex

__all__ = [
    "ANN_THRESHOLD",
    "ExactIndex",
    "HNSWIndex",
    "VectorIndex",
    "build_index",
    "load_index",
]

# Past this many vectors `build_index(kind="auto")` builds HNSW. Measured by
# benchmarks/search.py (768-d float32, shared 2-core machine): exact search costs 0.24-0.37 us
# a vector per query (p50 36-38 ms at 100k, 234-355 ms at 1M), needs no build, takes adds at
# once and holds 3.1 KB a vector; HNSW + re-rank answers in 1-2.5 ms but holds ~5 KB a vector
# and takes ~70 s (100k) to 20-29 min (1M) to build. 200k keeps exact queries near 50-75 ms,
# still interactive, so the graph comes in only where exact latency stops being so
# (perch-hoplite draws the line at ~1M on bigger hosts).
ANN_THRESHOLD = 200_000


@runtime_checkable
class VectorIndex(Protocol):
    """What every search backend provides."""

    @property
    def dim(self) -> int: ...

    def __len__(self) -> int: ...

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add `(N, D)` float vectors with `(N,)` int64 ids (unique, >= 0)."""
        ...

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`(Q, D)` queries -> scores `(Q, k)` float32 and ids `(Q, k)` int64, best first.

        ``allowed_ids`` (M,) int64: return only these ids (a species filter, pushed down to
        the backend, which applies it where it is cheapest); None returns any.
        """
        ...

    def save(self, path: str | Path) -> None: ...

    @classmethod
    def load(cls, path: str | Path) -> VectorIndex: ...


def build_index(
    vectors: np.ndarray,
    ids: np.ndarray | None = None,
    kind: str = "auto",
    ann_threshold: int = ANN_THRESHOLD,
    storage_dtype: str = "float32",
    metadata: dict | None = None,
    **hnsw_options: Any,
) -> ExactIndex | HNSWIndex:
    """Index `(N, D)` vectors under `(N,)` ids (default `0..N-1`).

    `kind="auto"` builds exact search up to `ann_threshold` vectors and HNSW past it (see
    `ANN_THRESHOLD` for why). `hnsw_options` go to `HNSWIndex` (connectivity, expansion_add,
    expansion_search, graph_dtype, rerank_factor, min_candidates, threads).
    """
    arr = np.asarray(vectors)
    if arr.ndim != 2:
        raise SongsightError(f"vectors must be a 2-D (N, D) array, got shape {arr.shape}")
    if kind not in ("auto", "exact", "hnsw"):
        raise SongsightError(f"kind must be 'auto', 'exact' or 'hnsw', got {kind!r}")
    if kind == "auto":
        kind = "hnsw" if len(arr) > ann_threshold else "exact"
    if kind == "exact" and hnsw_options:
        raise SongsightError(f"options {sorted(hnsw_options)} only apply to kind='hnsw'")
    index: ExactIndex | HNSWIndex
    if kind == "hnsw":
        index = HNSWIndex(arr.shape[1], storage_dtype, metadata, **hnsw_options)
    else:
        index = ExactIndex(arr.shape[1], storage_dtype, metadata)
    index.add(arr, np.arange(len(arr), dtype=np.int64) if ids is None else ids)
    return index


def load_index(path: str | Path) -> VectorIndex:
    """Load a saved index as the kind it was saved as."""
    kind = read_index_meta(Path(path)).get("kind")
    if kind == "milvus":  # the rows live in Milvus; meta.json names the collection
        from songsight.index.milvus.collection import MilvusIndex

        return MilvusIndex.load(path)
    return HNSWIndex.load(path) if kind == HNSWIndex.kind else ExactIndex.load(path)
