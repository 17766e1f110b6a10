"""Stored vectors and exact inner-product search: the reference every other backend is held to.

`VectorStore` holds the vectors and ids every backend saves (``vectors.npy``, ``ids.npy``,
``meta.json``); `StoredIndex` is the base both backends share; `ExactIndex` searches the
store by brute force. The search contract (ordering, ties, padding) is set out in
`songsight.index.search`, which is where callers import from. The pieces the other backends
(`songsight.index.hnsw`, `songsight.index.milvus`) share with it are public here: the store,
the checks on queries, ids and ``k``, the exact top-k and the saved ``meta.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from songsight.errors import DataNotFoundError, SongsightError

__all__ = [
    "BLOCK_ELEMENTS",
    "ExactIndex",
    "StoredIndex",
    "VectorStore",
    "allowed_rows",
    "as_matrix",
    "check_k",
    "exact_search",
    "index_meta",
    "read_index_meta",
    "resolve_dtype",
    "select_topk",
    "validate_ids",
]

_FORMAT = "songsight-vector-index"
_FORMAT_VERSION = 1
# Upper bound on float32 elements in one score or gather block (64 MiB): keeps memory flat for
# large galleries and large query batches alike.
BLOCK_ELEMENTS = 1 << 24
_QUERY_ROWS = 1024
# float16 gallery rows are upcast in chunks of this many before the matmul: a float16 matmul
# rounds its output to float16 (~1e-3 error), which would make ranking inexact.
_F16_CHUNK_ROWS = 16_384
_DTYPES = {"float32": np.float32, "f32": np.float32, "float16": np.float16, "f16": np.float16}


def resolve_dtype(name: Any) -> type[np.floating]:
    key = np.dtype(name).name if not isinstance(name, str) else name.lower()
    if key not in _DTYPES:
        raise SongsightError(f"storage dtype must be float32 or float16, got {name!r}")
    return _DTYPES[key]


def as_matrix(x: Any, dim: int, what: str) -> np.ndarray:
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
    rows_per_check = max(1, BLOCK_ELEMENTS // max(dim, 1))  # bound the boolean temporary
    for start in range(0, len(arr), rows_per_check):
        if not np.isfinite(arr[start : start + rows_per_check]).all():
            raise SongsightError(f"{what} contain NaN or infinite values")
    return arr


def read_index_meta(directory: Path) -> dict:
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


def validate_ids(ids: Any, n: int) -> np.ndarray:
    """`(n,)` unique non-negative integer ids as int64, or a clear error."""
    arr = np.asarray(ids)
    if arr.shape != (n,):
        raise SongsightError(f"ids must have shape ({n},) to match the vectors, got {arr.shape}")
    if n and not np.issubdtype(arr.dtype, np.integer):
        raise SongsightError(f"ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if n and arr.min() < 0:
        raise SongsightError("ids must be >= 0 (-1 marks padding in search results)")
    if len(np.unique(arr)) != n:
        raise SongsightError("ids must be unique; this batch repeats some")
    return arr


class VectorStore:
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
        arr = validate_ids(ids, n)
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
    def load(directory: Path) -> tuple[VectorStore, dict]:
        meta = read_index_meta(directory)
        vectors = np.load(directory / "vectors.npy")
        ids = np.load(directory / "ids.npy")
        store = VectorStore(meta["dim"], resolve_dtype(meta["storage_dtype"]))
        store._vectors, store._ids, store.count = vectors, ids, len(ids)
        return store, meta


def select_topk(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best `k` per row of `scores (Q, C)` by (descending score, ascending id), padded."""
    q, c = scores.shape
    if c < k:
        scores = np.concatenate([scores, np.full((q, k - c), -np.inf, np.float32)], axis=1)
        ids = np.concatenate([ids, np.full((q, k - c), -1, np.int64)], axis=1)
    order = np.lexsort((ids, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def _block_topk(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top `k` of one `(q, g)` score block with `ids (g,)`, ties to the lower id."""
    q, g = scores.shape
    if g <= k + 1:
        return select_topk(scores, np.broadcast_to(ids, (q, g)), k)
    # Taking k + 1 shows whether the k-th score ties with one left out; only such rows need
    # the full (score, id) ordering, so near-tie-free real data stays on the fast path.
    cols = np.argpartition(-scores, k, axis=1)[:, : k + 1]
    values = np.take_along_axis(scores, cols, 1)
    order = np.argsort(-values, axis=1, kind="stable")
    values, cols = np.take_along_axis(values, order, 1), np.take_along_axis(cols, order, 1)
    top_scores, top_ids = values[:, :k].copy(), ids[cols[:, :k]]
    for row in np.flatnonzero(values[:, k] == values[:, k - 1]):
        tied = np.flatnonzero(scores[row] >= values[row, k - 1])
        s, i = select_topk(scores[row, tied][None], ids[tied][None], k)
        top_scores[row], top_ids[row] = s[0], i[0]
    for row in np.flatnonzero((values[:, :k][:, 1:] == values[:, :k][:, :-1]).any(axis=1)):
        s, i = select_topk(top_scores[row][None], top_ids[row][None], k)  # ties inside: by id
        top_scores[row], top_ids[row] = s[0], i[0]
    return top_scores, top_ids


def allowed_rows(store: VectorStore, allowed_ids: np.ndarray | None) -> np.ndarray | None:
    """(N,) bool: the stored rows whose id is in ``allowed_ids``; None when all are allowed."""
    if allowed_ids is None:
        return None
    allowed = np.asarray(allowed_ids)
    if allowed.ndim != 1 or (len(allowed) and not np.issubdtype(allowed.dtype, np.integer)):
        raise SongsightError(f"allowed_ids must be a 1-D array of ids, got {allowed.dtype} {allowed.shape}")  # fmt: skip
    return np.isin(store.ids, allowed.astype(np.int64, copy=False))


def exact_search(
    store: VectorStore, queries: np.ndarray, k: int, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top `k` over the store (only its ``rows`` (N,) bool when given), gallery
    and queries both chunked."""
    n_queries = len(queries)
    best_scores = np.full((n_queries, k), -np.inf, np.float32)
    best_ids = np.full((n_queries, k), -1, np.int64)
    if n_queries == 0 or store.count == 0 or (rows is not None and not rows.any()):
        return best_scores, best_ids
    query_rows = min(n_queries, _QUERY_ROWS)
    gallery_rows = max(1, BLOCK_ELEMENTS // query_rows)
    if store.dtype is np.float16:
        gallery_rows = min(gallery_rows, _F16_CHUNK_ROWS)
    vectors, ids = store.vectors, store.ids
    # Gallery outermost so each float16 chunk is upcast once for all queries.
    for g0 in range(0, store.count, gallery_rows):
        chunk_vectors, chunk_ids = vectors[g0 : g0 + gallery_rows], ids[g0 : g0 + gallery_rows]
        if rows is not None:
            keep = rows[g0 : g0 + gallery_rows]
            if not keep.any():
                continue
            chunk_vectors, chunk_ids = chunk_vectors[keep], chunk_ids[keep]
        chunk = np.ascontiguousarray(chunk_vectors, dtype=np.float32)
        for q0 in range(0, n_queries, query_rows):
            q1 = q0 + query_rows
            block = queries[q0:q1] @ chunk.T
            s, i = _block_topk(block, chunk_ids, k)
            best_scores[q0:q1], best_ids[q0:q1] = select_topk(
                np.concatenate([best_scores[q0:q1], s], 1),
                np.concatenate([best_ids[q0:q1], i], 1),
                k,
            )
    return best_scores, best_ids


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SongsightError(f"k must be a positive integer, got {k!r}")
    return int(k)


def index_meta(index) -> dict:
    """The ``meta.json`` fields every saved index has (any backend: kind, dim, len, dtype)."""
    return {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "kind": index.kind,
        "dim": index.dim,
        "count": len(index),
        "storage_dtype": index.storage_dtype,
        "metadata": index.metadata,
    }


class StoredIndex:
    """What both backends share: the stored vectors, ids, provenance metadata and files."""

    kind = ""

    def __init__(self, dim: int, storage_dtype: str = "float32", metadata: dict | None = None):
        if int(dim) < 1:
            raise SongsightError(f"dim must be >= 1, got {dim}")
        self._store = VectorStore(int(dim), resolve_dtype(storage_dtype))
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
        return index_meta(self)

    def save(self, path: str | Path) -> None:
        """Write the index into directory `path` (created if needed)."""
        self._store.save(Path(path), self._meta())


class ExactIndex(StoredIndex):
    """Brute-force inner-product search: the ground truth every other backend is held to.

    `storage_dtype="float16"` halves memory; scores are still accumulated in float32.
    """

    kind = "exact"

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add `(N, D)` vectors with unique non-negative `(N,)` int64 ids."""
        arr = as_matrix(vectors, self.dim, "vectors")
        self._store.append(arr, self._store.check_ids(ids, len(arr)))

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`(Q, D)` -> scores `(Q, k)` float32, ids `(Q, k)` int64; see the module docstring.

        ``allowed_ids``: only these ids may be returned (a species filter); None, any.
        """
        k = check_k(k)
        queries = as_matrix(queries, self.dim, "queries")
        return exact_search(self._store, queries, k, allowed_rows(self._store, allowed_ids))

    @classmethod
    def load(cls, path: str | Path) -> ExactIndex:
        """Read any saved songsight index (HNSW too) as exact search over its vectors."""
        store, meta = VectorStore.load(Path(path))
        index = cls(store.dim, np.dtype(store.dtype).name, meta.get("metadata"))
        index._store = store
        return index
