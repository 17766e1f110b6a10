"""Approximate search: a usearch HNSW graph for candidates, re-ranked exactly.

The graph only proposes candidates; scores come from the stored vectors, so results follow
the same contract as exact search (see `songsight.index.search`). usearch is imported on
first use, so the package works without the `ann` extra until an HNSW index is built.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from songsight.errors import DataNotFoundError, SongsightError
from songsight.index.exact import (
    BLOCK_ELEMENTS,
    StoredIndex,
    VectorStore,
    allowed_rows,
    as_matrix,
    check_k,
    exact_search,
    resolve_dtype,
    select_topk,
)

__all__ = ["FILTER_EXACT_FRACTION", "HNSWIndex"]

# A filtered search over at most this share of the index runs exactly on the allowed rows: the
# graph would need ever more candidates (1 / share) to find k of them.
FILTER_EXACT_FRACTION = 0.05


def _import_usearch():
    try:
        from usearch.index import Index
    except ImportError as err:
        raise SongsightError(
            "the HNSW index needs usearch; install it with: pip install 'songsight[ann]'"
        ) from err
    return Index


class HNSWIndex(StoredIndex):
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
        self.graph_dtype = np.dtype(resolve_dtype(graph_dtype)).name
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
        arr = as_matrix(vectors, self.dim, "vectors")
        start = len(self)
        self._store.append(arr, self._store.check_ids(ids, len(arr)))
        # Graph keys are store row numbers, so re-ranking is a plain row gather.
        keys = np.arange(start, start + len(arr), dtype=np.uint64)
        self._graph.add(keys, arr, threads=self.threads)

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`(Q, D)` -> scores `(Q, k)` float32, ids `(Q, k)` int64; exact scores, ANN recall.

        ``allowed_ids``: only these ids may be returned. The graph is asked for more
        candidates in proportion to the ids left out; a subset no bigger than
        `FILTER_EXACT_FRACTION` of the index (or than the candidate count) is searched exactly,
        which is both faster and exact there.
        """
        k = check_k(k)
        queries = as_matrix(queries, self.dim, "queries")
        allowed = allowed_rows(self._store, allowed_ids)
        n_candidates = max(k * self.rerank_factor, self.min_candidates)
        if allowed is not None:
            n_allowed = int(allowed.sum())
            if n_allowed <= max(n_candidates, FILTER_EXACT_FRACTION * len(self)):
                return exact_search(self._store, queries, k, allowed)
            n_candidates = min(len(self), -(-n_candidates * len(self) // n_allowed))
        if len(self) <= n_candidates or len(queries) == 0:
            return exact_search(self._store, queries, k, allowed)
        # ef below the candidate count would cap what the graph can return.
        self._graph.expansion_search = max(self.expansion_search, n_candidates)
        found = self._graph.search(queries, n_candidates, threads=self.threads)
        rows = np.zeros((len(queries), n_candidates), np.int64)
        keys = np.atleast_2d(found.keys)
        counts = getattr(found, "counts", np.array([keys.shape[1]]))
        rows[:, : keys.shape[1]] = keys
        valid = np.arange(n_candidates)[None, :] < np.asarray(counts)[:, None]
        if allowed is not None:
            valid &= allowed[np.where(valid, rows, 0)]
        return self._rerank(queries, np.where(valid, rows, 0), valid, k)

    def _rerank(
        self, queries: np.ndarray, rows: np.ndarray, valid: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact float32 scores for candidate `rows (Q, C)`; invalid slots become padding."""
        n_queries, n_candidates = rows.shape
        out_scores = np.empty((n_queries, k), np.float32)
        out_ids = np.empty((n_queries, k), np.int64)
        step = max(1, BLOCK_ELEMENTS // (n_candidates * self.dim))
        vectors, ids = self._store.vectors, self._store.ids
        for q0 in range(0, n_queries, step):
            q1 = q0 + step
            # numpy, not torch: right after usearch's worker threads, torch's intra-op pool
            # stalls for milliseconds on a few cores, 100x the cost of this small product.
            gathered = vectors[rows[q0:q1]].astype(np.float32, copy=False)  # (q, C, D)
            scores = np.matmul(gathered, queries[q0:q1, :, None])[:, :, 0]
            scores = np.where(valid[q0:q1], scores, np.float32(-np.inf))
            cand_ids = np.where(valid[q0:q1], ids[rows[q0:q1]], -1)
            out_scores[q0:q1], out_ids[q0:q1] = select_topk(scores, cand_ids, k)
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
        store, meta = VectorStore.load(directory)
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
