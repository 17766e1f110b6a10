"""Searching a songsight Milvus collection: filters pushed down as expressions, candidates
asked of Milvus, and the exact re-rank that makes its answers exact search's.

Milvus only proposes candidates: each search asks for ``max(k * rerank_factor,
min_candidates)`` of them and orders them here by (score, id). Indexes that score from
quantised codes (`APPROXIMATE_SCORES`) return the candidates' stored float32 vectors too,
and they are re-scored exactly, so scores are the inner products exact search gives.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from songsight.errors import SongsightError
from songsight.index.exact import as_matrix, check_k, select_topk
from songsight.index.milvus.options import APPROXIMATE_SCORES, species_filter
from songsight.index.milvus.rows import KEY_FIELD, VECTOR_FIELD, keys_filter

__all__ = ["SERVER_SEARCH_CONSISTENCY", "search_collection"]

# Keys in one search's `key in [...]` filter; larger allowed sets are searched in chunks.
_KEYS_PER_FILTER = 10_000
# Bytes of candidate vectors in one search reply (gRPC caps a message; 32 MiB is well under).
_REPLY_BYTES = 32 << 20
# A server answers a "Strong" search only once its clock has ticked past the request (a tick
# is 200 ms): 200-400 ms a query, measured on Milvus 2.3.5, against 3-4 ms for "Session",
# which still sees every write this process made to the collection (pymilvus keeps their
# timestamps). Another process's writes are seen once the server has consumed them (within a
# tick); songsight's writers end with a flush. The collection stays "Strong" for the row
# counts and key checks that writes rely on. The embedded file answers at once either way.
SERVER_SEARCH_CONSISTENCY = "Session"


def search_collection(
    index: Any,
    queries: np.ndarray,
    k: int,
    allowed_ids: np.ndarray | Sequence[int] | None = None,
    *,
    allowed_species: Collection[str] | None = None,
    filter_expr: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`(Q, D)` -> scores `(Q, k)` float32, ids `(Q, k)` int64; exact scores, ANN recall.
    `MilvusIndex.search` is this function; ``index`` is that `MilvusIndex` (its client,
    collection, settings and id mappings; typed loosely so this module needs not import it).

    Filters run inside Milvus, as filter expressions: ``allowed_ids`` (only these ids;
    ids the index does not hold are ignored) through ``ids_filter`` (by default ``key in
    [...]``, in chunks whose answers are merged), ``allowed_species`` (names in the
    ``species`` field) and ``filter_expr`` (any Milvus expression).
    """
    k = check_k(k)
    queries = as_matrix(queries, index.dim, "queries")
    n_queries = len(queries)
    out_scores = np.full((n_queries, k), -np.inf, np.float32)
    out_ids = np.full((n_queries, k), -1, np.int64)
    exprs = [f"({filter_expr})"] if filter_expr else []
    if allowed_species is not None:
        if "species" not in index.scalar_fields:
            raise SongsightError("this Milvus collection has no species field to filter by")
        if not len(allowed_species):
            return out_scores, out_ids  # nothing allowed: nothing found
        exprs.append(species_filter(allowed_species))
    id_exprs: list[str | None] = [None]
    if allowed_ids is not None:
        id_exprs = _ids_filters(index, allowed_ids)
        if not id_exprs:
            return out_scores, out_ids
    if n_queries == 0 or index.index_type is None:
        return out_scores, out_ids
    found: list[tuple[list, list]] = [([], []) for _ in range(n_queries)]
    for id_expr in id_exprs:
        expr = " and ".join([*exprs, *([id_expr] if id_expr else [])])
        _candidates(index, queries, k, expr, found)
    for q, (ids, scores) in enumerate(found):
        if ids:
            # Ordered again by (score, id): the contract's tie-break, whatever Milvus did.
            s, i = select_topk(
                np.asarray(scores, np.float32)[None], np.asarray(ids, np.int64)[None], k
            )
            out_scores[q], out_ids[q] = s[0], i[0]
    return out_scores, out_ids


def _ids_filters(index: Any, allowed_ids) -> list[str]:
    """Filter expressions that together allow exactly ``allowed_ids`` (none: empty)."""
    arr = np.asarray(allowed_ids)
    if arr.ndim != 1 or (len(arr) and not np.issubdtype(arr.dtype, np.integer)):
        raise SongsightError(f"allowed_ids must be a 1-D array of ids, got {arr.dtype} {arr.shape}")  # fmt: skip
    arr = np.unique(arr.astype(np.int64, copy=False))
    if index.ids_filter is not None:
        expr = index.ids_filter(arr)
        if expr is not None:
            return [expr]
    keys = [key for key in map(index.id_to_key, arr.tolist()) if key is not None]
    return [
        keys_filter(keys[i : i + _KEYS_PER_FILTER]) for i in range(0, len(keys), _KEYS_PER_FILTER)
    ]


def _candidates(index: Any, queries: np.ndarray, k: int, expr: str, found: list) -> None:
    """Append each query's candidates (ids, exact scores) under ``expr`` to ``found``."""
    settings = index.settings
    n_candidates = max(k * settings.rerank_factor, settings.min_candidates)
    rescore = index.index_type in APPROXIMATE_SCORES
    # Answers that carry their candidates' vectors: bound one reply's size.
    step = max(1, _REPLY_BYTES // (n_candidates * index.dim * 4)) if rescore else len(queries)
    for q0 in range(0, len(queries), step):
        hits = index.client.search(
            index.collection,
            data=list(queries[q0 : q0 + step]),
            filter=expr,
            limit=n_candidates,
            output_fields=[VECTOR_FIELD] if rescore else [],
            anns_field=VECTOR_FIELD,
            search_params={"metric_type": "IP", "params": index.search_params(n_candidates)},
            **({} if index.embedded else {"consistency_level": SERVER_SEARCH_CONSISTENCY}),
        )
        for q, row_hits in enumerate(hits, start=q0):
            ids, scores = found[q]
            for hit in row_hits:
                image_id = index.key_to_id(str(hit.get(KEY_FIELD, hit.get("id"))))
                if image_id is None:
                    continue  # a row this reader does not know (added after it opened)
                ids.append(image_id)
                if rescore:  # the exact re-rank: float32 inner product, stored vector
                    vector = np.asarray(hit["entity"][VECTOR_FIELD], np.float32)
                    scores.append(float(vector @ queries[q]))
                else:
                    scores.append(hit["distance"])
