"""Nearest-neighbour search over embeddings: exact search (the reference) and an HNSW index.

Both backends score by inner product, which is cosine similarity for the unit-norm embeddings
the encoder wrappers produce (normalisation happens there, not here). Both answer the same
call, ``search(queries (Q, D), k) -> (scores (Q, k) float32, ids (Q, k) int64)``, sorted by
descending score with ties broken by the lower id; rows with fewer than ``k`` hits are padded
with score ``-inf`` and id ``-1``.

A saved index is a directory: ``meta.json``, ``vectors.npy`` (the stored embeddings),
``ids.npy`` and, for HNSW, ``graph.usearch``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from songsight.errors import DataNotFoundError, SongsightError

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

_FORMAT = "songsight-vector-index"
_FORMAT_VERSION = 1
# Upper bound on float32 elements in one score or gather block (64 MiB): keeps memory flat for
# large galleries and large query batches alike.
_BLOCK_ELEMENTS = 1 << 24
_QUERY_ROWS = 1024
# float16 gallery rows are upcast in chunks of this many before the matmul: torch's float16
# CPU matmul rounds its output to float16 (~1e-3 error), which would make ranking inexact.
_F16_CHUNK_ROWS = 16_384
_DTYPES = {"float32": np.float32, "f32": np.float32, "float16": np.float16, "f16": np.float16}


@runtime_checkable
class VectorIndex(Protocol):
    """What every search backend provides."""

    @property
    def dim(self) -> int: ...

    def __len__(self) -> int: ...

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add `(N, D)` float vectors with `(N,)` int64 ids (unique, >= 0)."""
        ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`(Q, D)` queries -> scores `(Q, k)` float32 and ids `(Q, k)` int64, best first."""
        ...

    def save(self, path: str | Path) -> None: ...

    @classmethod
    def load(cls, path: str | Path) -> VectorIndex: ...


def _resolve_dtype(name: Any) -> type[np.floating]:
    key = np.dtype(name).name if not isinstance(name, str) else name.lower()
    if key not in _DTYPES:
        raise SongsightError(f"storage dtype must be float32 or float16, got {name!r}")
    return _DTYPES[key]


def _as_matrix(x: Any, dim: int, what: str) -> np.ndarray:
    """Validate `(N, dim)` finite real numbers and return them as contiguous float32."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise SongsightError(
            f"{what} must be a 2-D (N, {dim}) array, got shape {arr.shape}"
            + ("; use x.reshape(1, -1) for a single vector" if arr.ndim == 1 else "")
        )
    if arr.shape[1] != dim:
        raise SongsightError(f"{what} have dimension {arr.shape[1]}, the index holds {dim}-d")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise SongsightError(f"{what} must be real numbers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    rows_per_check = max(1, _BLOCK_ELEMENTS // max(dim, 1))  # bound the boolean temporary
    for start in range(0, len(arr), rows_per_check):
        if not np.isfinite(arr[start : start + rows_per_check]).all():
            raise SongsightError(f"{what} contain NaN or infinite values")
    return arr


def _read_meta(directory: Path) -> dict:
    meta_path = Path(directory) / "meta.json"
    if not meta_path.is_file():
        raise DataNotFoundError(f"no saved songsight index at {directory} (missing meta.json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != _FORMAT or meta.get("format_version") != _FORMAT_VERSION:
        raise SongsightError(
            f"{directory} holds index format {meta.get('format')!r} version "
            f"{meta.get('format_version')!r}; this songsight reads {_FORMAT!r} "
            f"version {_FORMAT_VERSION}"
        )
    return meta


class _VectorStore:
    """Growable `(N, D)` array of stored vectors with their int64 ids (amortised appends)."""

    def __init__(self, dim: int, dtype: type[np.floating]):
        self.dim = int(dim)
        self.dtype = dtype
        self._vectors = np.empty((0, self.dim), dtype=dtype)
        self._ids = np.empty(0, dtype=np.int64)
        self.count = 0

    @property
    def vectors(self) -> np.ndarray:
        return self._vectors[: self.count]

    @property
    def ids(self) -> np.ndarray:
        return self._ids[: self.count]

    def check_ids(self, ids: Any, n: int) -> np.ndarray:
        arr = np.asarray(ids)
        if arr.shape != (n,):
            raise SongsightError(
                f"ids must have shape ({n},) to match the vectors, got {arr.shape}"
            )
        if n and not np.issubdtype(arr.dtype, np.integer):
            raise SongsightError(f"ids must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
        if n and arr.min() < 0:
            raise SongsightError("ids must be >= 0 (-1 marks padding in search results)")
        if len(np.unique(arr)) != n:
            raise SongsightError("ids must be unique; this batch repeats some")
        clash = arr[np.isin(arr, self.ids)]
        if len(clash):
            raise SongsightError(f"ids already in the index: {clash[:5].tolist()}")
        return arr

    def append(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Append already validated float32 `vectors (M, D)` and int64 `ids (M,)`."""
        m, end = len(vectors), self.count + len(vectors)
        if end > len(self._vectors):
            capacity = end if self.count == 0 else max(end, int(len(self._vectors) * 1.5))
            grown = np.empty((capacity, self.dim), dtype=self.dtype)
            grown[: self.count] = self.vectors
            grown_ids = np.empty(capacity, dtype=np.int64)
            grown_ids[: self.count] = self.ids
            self._vectors, self._ids = grown, grown_ids
        with np.errstate(over="ignore"):  # overflow is reported just below, as an error
            self._vectors[self.count : end] = vectors
        if self.dtype is np.float16 and not np.isfinite(self._vectors[self.count : end]).all():
            raise SongsightError("vectors overflow float16 storage; store them as float32")
        self._ids[self.count : end] = ids
        self.count += m

    def save(self, directory: Path, meta: dict) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "vectors.npy", self.vectors)
        np.save(directory / "ids.npy", self.ids)
        # meta.json last: a directory without it is an unfinished save, never half-read.
        (directory / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))

    @staticmethod
    def load(directory: Path) -> tuple[_VectorStore, dict]:
        meta = _read_meta(directory)
        vectors = np.load(directory / "vectors.npy")
        ids = np.load(directory / "ids.npy")
        store = _VectorStore(meta["dim"], _resolve_dtype(meta["storage_dtype"]))
        store._vectors, store._ids, store.count = vectors, ids, len(ids)
        return store, meta


def _select_topk(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best `k` per row of `scores (Q, C)` by (descending score, ascending id), padded."""
    q, c = scores.shape
    if c < k:
        scores = np.concatenate([scores, np.full((q, k - c), -np.inf, np.float32)], axis=1)
        ids = np.concatenate([ids, np.full((q, k - c), -1, np.int64)], axis=1)
    order = np.lexsort((ids, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def _block_topk(scores: torch.Tensor, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top `k` of one `(q, g)` score block with `ids (g,)`, ties to the lower id."""
    q, g = scores.shape
    if g <= k:
        return _select_topk(scores.numpy(), np.broadcast_to(ids, (q, g)), k)
    # Taking k + 1 shows whether the k-th score ties with one left out; only such rows need
    # the full (score, id) ordering, so near-tie-free real data stays on the fast path.
    values, cols = torch.topk(scores, k + 1, dim=1)
    values, cols = values.numpy(), cols.numpy()
    top_scores, top_ids = values[:, :k], ids[cols[:, :k]]
    for row in np.flatnonzero(values[:, k] == values[:, k - 1]):
        row_scores = scores[row].numpy()
        tied = np.flatnonzero(row_scores >= values[row, k - 1])
        s, i = _select_topk(row_scores[tied][None], ids[tied][None], k)
        top_scores[row], top_ids[row] = s[0], i[0]
    return top_scores, top_ids


def _exact_search(
    store: _VectorStore, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top `k` over the whole store, gallery and queries both chunked."""
    n_queries = len(queries)
    best_scores = np.full((n_queries, k), -np.inf, np.float32)
    best_ids = np.full((n_queries, k), -1, np.int64)
    if n_queries == 0 or store.count == 0:
        return best_scores, best_ids
    query_rows = min(n_queries, _QUERY_ROWS)
    gallery_rows = max(1, _BLOCK_ELEMENTS // query_rows)
    if store.dtype is np.float16:
        gallery_rows = min(gallery_rows, _F16_CHUNK_ROWS)
    queries_t = torch.from_numpy(queries)
    vectors, ids = store.vectors, store.ids
    # Gallery outermost so each float16 chunk is upcast once for all queries.
    for g0 in range(0, store.count, gallery_rows):
        chunk = torch.from_numpy(vectors[g0 : g0 + gallery_rows]).float()
        chunk_ids = ids[g0 : g0 + gallery_rows]
        for q0 in range(0, n_queries, query_rows):
            q1 = q0 + query_rows
            block = queries_t[q0:q1] @ chunk.T
            s, i = _block_topk(block, chunk_ids, k)
            best_scores[q0:q1], best_ids[q0:q1] = _select_topk(
                np.concatenate([best_scores[q0:q1], s], 1),
                np.concatenate([best_ids[q0:q1], i], 1),
                k,
            )
    return best_scores, best_ids


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SongsightError(f"k must be a positive integer, got {k!r}")
    return int(k)


class _StoredIndex:
    """What both backends share: the stored vectors, ids, provenance metadata and files."""

    kind = ""

    def __init__(self, dim: int, storage_dtype: str = "float32", metadata: dict | None = None):
        if int(dim) < 1:
            raise SongsightError(f"dim must be >= 1, got {dim}")
        self._store = _VectorStore(int(dim), _resolve_dtype(storage_dtype))
        self.metadata = dict(metadata or {})  # provenance, saved with the index

    @property
    def dim(self) -> int:
        return self._store.dim

    @property
    def storage_dtype(self) -> str:
        return np.dtype(self._store.dtype).name

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored vectors and ids."""
        return self._store.vectors.nbytes + self._store.ids.nbytes

    def __len__(self) -> int:
        return self._store.count

    def _meta(self) -> dict:
        return {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "kind": self.kind,
            "dim": self.dim,
            "count": len(self),
            "storage_dtype": self.storage_dtype,
            "metadata": self.metadata,
        }

    def save(self, path: str | Path) -> None:
        """Write the index into directory `path` (created if needed)."""
        self._store.save(Path(path), self._meta())


class ExactIndex(_StoredIndex):
    """Brute-force inner-product search: the ground truth every other backend is held to.

    `storage_dtype="float16"` halves memory; scores are still accumulated in float32.
    """

    kind = "exact"

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add `(N, D)` vectors with unique non-negative `(N,)` int64 ids."""
        arr = _as_matrix(vectors, self.dim, "vectors")
        self._store.append(arr, self._store.check_ids(ids, len(arr)))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`(Q, D)` -> scores `(Q, k)` float32, ids `(Q, k)` int64; see the module docstring."""
        k = _check_k(k)
        return _exact_search(self._store, _as_matrix(queries, self.dim, "queries"), k)

    @classmethod
    def load(cls, path: str | Path) -> ExactIndex:
        """Read any saved songsight index (HNSW too) as exact search over its vectors."""
        store, meta = _VectorStore.load(Path(path))
        index = cls(store.dim, np.dtype(store.dtype).name, meta.get("metadata"))
        index._store = store
        return index


def _import_usearch():
    try:
        from usearch.index import Index
    except ImportError as err:
        raise SongsightError(
            "the HNSW index needs usearch; install it with: pip install 'songsight[ann]'"
        ) from err
    return Index


class HNSWIndex(_StoredIndex):
    """usearch HNSW graph for candidates, then an exact re-rank against the stored vectors.

    Each search asks the graph for `max(k * rerank_factor, min_candidates)` candidates and
    re-scores them in float32 from the stored vectors, so returned scores are exact and the
    graph may hold a cheaper `graph_dtype` (float16 by default: half the memory, and the
    re-rank removes its rounding). Indexes no bigger than the candidate count are searched
    exactly. `threads=0` lets usearch use every core.

    Defaults come from benchmarks/search.py (768-d, species-like clusters, 1000 centres, 2
    cores, one run): with `connectivity=16` recall@10 plateaued at ~0.94 at 1M however large
    `expansion_search` was, as dense species clusters leave nodes the graph cannot reach.
    `connectivity=32, expansion_add=128` lifted it to 0.985 (ef 512) / 0.988 (ef 1024);
    `expansion_add=256` reaches 0.9938 at `expansion_search=256` (p50 2.2 ms vs 114 ms exact,
    52x) and 0.9989 at 1024, for a 1M build of ~16 min on 2 cores instead of ~9 min. At 100k
    every setting here is >= 0.9999. Build time grows with `expansion_add`; lower it for
    fast, slightly less exact indexes.
    """

    kind = "hnsw"

    def __init__(
        self,
        dim: int,
        storage_dtype: str = "float32",
        metadata: dict | None = None,
        *,
        graph_dtype: str = "float16",
        connectivity: int = 32,
        expansion_add: int = 256,
        expansion_search: int = 256,
        rerank_factor: int = 4,
        min_candidates: int = 100,
        threads: int = 0,
    ):
        super().__init__(dim, storage_dtype, metadata)
        if rerank_factor < 1 or min_candidates < 1:
            raise SongsightError("rerank_factor and min_candidates must be >= 1")
        self.graph_dtype = np.dtype(_resolve_dtype(graph_dtype)).name
        self.connectivity = int(connectivity)
        self.expansion_add = int(expansion_add)
        self.expansion_search = int(expansion_search)
        self.rerank_factor = int(rerank_factor)
        self.min_candidates = int(min_candidates)
        self.threads = int(threads)
        self._graph = _import_usearch()(
            ndim=self.dim,
            metric="ip",
            dtype="f16" if self.graph_dtype == "float16" else "f32",
            connectivity=self.connectivity,
            expansion_add=self.expansion_add,
            expansion_search=self.expansion_search,
        )

    @property
    def graph_nbytes(self) -> int:
        """Bytes usearch reports for the graph and its own copy of the vectors."""
        return int(self._graph.memory_usage)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add `(N, D)` vectors with unique non-negative `(N,)` int64 ids; extends the graph."""
        arr = _as_matrix(vectors, self.dim, "vectors")
        start = len(self)
        self._store.append(arr, self._store.check_ids(ids, len(arr)))
        # Graph keys are store row numbers, so re-ranking is a plain row gather.
        keys = np.arange(start, start + len(arr), dtype=np.uint64)
        self._graph.add(keys, arr, threads=self.threads)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`(Q, D)` -> scores `(Q, k)` float32, ids `(Q, k)` int64; exact scores, ANN recall."""
        k = _check_k(k)
        queries = _as_matrix(queries, self.dim, "queries")
        n_candidates = max(k * self.rerank_factor, self.min_candidates)
        if len(self) <= n_candidates or len(queries) == 0:
            return _exact_search(self._store, queries, k)
        # ef below the candidate count would cap what the graph can return.
        self._graph.expansion_search = max(self.expansion_search, n_candidates)
        found = self._graph.search(queries, n_candidates, threads=self.threads)
        rows = np.zeros((len(queries), n_candidates), np.int64)
        keys = np.atleast_2d(found.keys)
        counts = getattr(found, "counts", np.array([keys.shape[1]]))
        rows[:, : keys.shape[1]] = keys
        valid = np.arange(n_candidates)[None, :] < np.asarray(counts)[:, None]
        return self._rerank(queries, np.where(valid, rows, 0), valid, k)

    def _rerank(
        self, queries: np.ndarray, rows: np.ndarray, valid: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact float32 scores for candidate `rows (Q, C)`; invalid slots become padding."""
        n_queries, n_candidates = rows.shape
        out_scores = np.empty((n_queries, k), np.float32)
        out_ids = np.empty((n_queries, k), np.int64)
        step = max(1, _BLOCK_ELEMENTS // (n_candidates * self.dim))
        vectors, ids = self._store.vectors, self._store.ids
        for q0 in range(0, n_queries, step):
            q1 = q0 + step
            # numpy, not torch: right after usearch's worker threads, torch's intra-op pool
            # stalls for milliseconds on a few cores, 100x the cost of this small product.
            gathered = vectors[rows[q0:q1]].astype(np.float32, copy=False)  # (q, C, D)
            scores = np.matmul(gathered, queries[q0:q1, :, None])[:, :, 0]
            scores = np.where(valid[q0:q1], scores, np.float32(-np.inf))
            cand_ids = np.where(valid[q0:q1], ids[rows[q0:q1]], -1)
            out_scores[q0:q1], out_ids[q0:q1] = _select_topk(scores, cand_ids, k)
        return out_scores, out_ids

    def _meta(self) -> dict:
        meta = super()._meta()
        meta["hnsw"] = {
            "graph_dtype": self.graph_dtype,
            "connectivity": self.connectivity,
            "expansion_add": self.expansion_add,
            "expansion_search": self.expansion_search,
            "rerank_factor": self.rerank_factor,
            "min_candidates": self.min_candidates,
            "threads": self.threads,
        }
        return meta

    def save(self, path: str | Path) -> None:
        """Write vectors, ids and the graph into directory `path`."""
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        self._graph.save(str(directory / "graph.usearch"))
        self._store.save(directory, self._meta())

    @classmethod
    def load(cls, path: str | Path) -> HNSWIndex:
        """Read an index saved by `HNSWIndex.save`."""
        directory = Path(path)
        store, meta = _VectorStore.load(directory)
        graph_path = directory / "graph.usearch"
        if meta.get("kind") != cls.kind or not graph_path.is_file():
            raise DataNotFoundError(
                f"{directory} holds no HNSW graph (kind {meta.get('kind')!r}); "
                "load it with ExactIndex.load or rebuild with build_index(kind='hnsw')"
            )
        index = cls(store.dim, np.dtype(store.dtype).name, meta.get("metadata"), **meta["hnsw"])
        index._graph = _import_usearch().restore(str(graph_path))
        # usearch does not persist the search-time expansion.
        index._graph.expansion_add = index.expansion_add
        index._graph.expansion_search = index.expansion_search
        if len(index._graph) != store.count or index._graph.ndim != store.dim:
            raise SongsightError(
                f"{directory}: graph holds {len(index._graph)} {index._graph.ndim}-d vectors, "
                f"the store {store.count} {store.dim}-d; the save is damaged, rebuild it"
            )
        index._store = store
        return index


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


def load_index(path: str | Path) -> ExactIndex | HNSWIndex:
    """Load a saved index as the kind it was saved as."""
    kind = _read_meta(Path(path)).get("kind")
    return HNSWIndex.load(path) if kind == HNSWIndex.kind else ExactIndex.load(path)
