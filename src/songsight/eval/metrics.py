"""Ranking and classification metrics in plain numpy.

Conventions shared by every function here:

- Higher score means more relevant. Scores may be any real dtype; NaN scores are refused
  (a NaN would silently land at one end of the ranking), +-inf are allowed.
- A query (or class) with no relevant item has no defined AP: it gets NaN, and every mean
  taken here skips NaN (`songsight.eval.statistics.summarize` reports how many values each
  mean is over).
- Average precision treats tied scores as one threshold, exactly like
  ``sklearn.metrics.average_precision_score``, so it does not depend on the order of ties.
- Top-k metrics need a strict order: ties are broken by index (a stable sort on the score,
  descending), so the item that comes first in the gallery wins. Deterministic, and
  documented rather than averaged over tie orders.

Nothing here imports torch, the CLI or the trainer.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

# Elements of one (rows, G) block processed at a time: each costs ~40 bytes across the
# sort indices, sorted scores, relevance and cumulative counts, so ~80 MB per block.
_BLOCK_ELEMENTS = 1 << 21


def _as_scores(scores: ArrayLike, ndim: int, name: str) -> np.ndarray:
    arr = np.asarray(scores)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN; fix the embeddings before scoring")
    return arr


def _check_k(k: int) -> int:
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _ranked_average_precision(sorted_scores: np.ndarray, sorted_rel: np.ndarray) -> np.ndarray:
    """Tie-aware AP per row of an already descending-sorted block.

    sorted_scores: (B, G); sorted_rel: (B, G) bool. Returns (B,) float64, NaN where a row
    has no relevant item. Every relevant item takes the precision measured at the end of
    its tie group, which is sklearn's step-wise AP with one threshold per distinct score.
    """
    n_rows, n_items = sorted_rel.shape
    if n_items == 0:
        return np.full(n_rows, np.nan)
    cum_tp = np.cumsum(sorted_rel, axis=1, dtype=np.int64)
    is_group_end = np.ones((n_rows, n_items), dtype=bool)
    is_group_end[:, :-1] = sorted_scores[:, 1:] != sorted_scores[:, :-1]
    # Index of the last item of each item's tie group: a running minimum from the right
    # over "own index if group end, else past-the-end".
    end_marks = np.where(is_group_end, np.arange(n_items), n_items)
    group_end = np.minimum.accumulate(end_marks[:, ::-1], axis=1)[:, ::-1]
    precision_at_end = np.take_along_axis(cum_tp, group_end, axis=1) / (group_end + 1.0)
    n_relevant = cum_tp[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(sorted_rel, precision_at_end, 0.0).sum(axis=1) / n_relevant
    return np.where(n_relevant > 0, ap, np.nan)


def _sort_rows(scores: np.ndarray, rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Descending order per row, ties kept in index order (stable sort on -score)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rel, order, axis=1)


def average_precision(scores: ArrayLike, relevant: ArrayLike) -> float:
    """AP of one ranked gallery.

    scores: (G,) float, higher is more relevant; relevant: (G,) bool.
    Equals ``sklearn.metrics.average_precision_score(relevant, scores)`` (ties form one
    threshold). Returns NaN when nothing is relevant; callers skip NaN in means.
    """
    score_arr = _as_scores(scores, 1, "scores")
    rel = np.asarray(relevant, dtype=bool)
    if rel.shape != score_arr.shape:
        raise ValueError(f"relevant shape {rel.shape} != scores shape {score_arr.shape}")
    sorted_scores, sorted_rel = _sort_rows(score_arr[None, :], rel[None, :])
    return float(_ranked_average_precision(sorted_scores, sorted_rel)[0])


def _encode_labels(
    query_labels: ArrayLike, gallery_labels: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """Map both label arrays to shared integer codes so equality is a cheap int compare."""
    q = np.asarray(query_labels)
    g = np.asarray(gallery_labels)
    if q.ndim != 1 or g.ndim != 1:
        raise ValueError("labels must be 1-D")
    # numpy would otherwise coerce ints to strings and make 1 == "1".
    if (q.dtype.kind in "US") != (g.dtype.kind in "US") and q.size and g.size:
        raise ValueError(f"query labels ({q.dtype}) and gallery labels ({g.dtype}) differ in kind")
    _, codes = np.unique(np.concatenate([q, g]), return_inverse=True)
    codes = codes.reshape(-1)
    return codes[: q.size], codes[q.size :]


def retrieval_metrics(
    similarity: ArrayLike,
    query_labels: ArrayLike,
    gallery_labels: ArrayLike,
    ks: Iterable[int] = (1, 5, 10),
    *,
    exclude_self: bool = False,
    chunk_size: int | None = None,
) -> dict[str, np.ndarray]:
    """Per-query retrieval metrics; a gallery item is relevant when its label equals the query's.

    similarity: (Q, G) float, higher is closer; query_labels: (Q,); gallery_labels: (G,),
    ints or strings. Returns (Q,) float64 arrays under these keys:

    - ``ap``: average precision over the whole ranked gallery (tie-aware, see module doc).
    - ``mrr``: 1 / rank of the first relevant item (the mean over queries is the MRR).
    - ``recall@k``: hit rate, 1.0 if any relevant item is in the top k else 0.0 -- the "R@k"
      of retrieval papers, not the fraction of relevant items retrieved.
    - ``precision@k``: relevant items in the top k divided by min(k, G).
    - ``ndcg@k``: binary gains, discount 1 / log2(rank + 1), ideal DCG from
      min(number relevant, k) relevant items at the top.

    k larger than the gallery is clipped to G (keys keep the requested k). A query with no
    relevant item gets NaN in every metric, so all means run over the same queries.
    Top-k ties go to the lower gallery index. ``exclude_self`` (square Q == G only) drops
    gallery item i from query i's ranking, for leave-one-out retrieval within one set.
    Queries are processed in blocks of ``chunk_size`` rows (default: ~2M elements a block).
    """
    sim = np.asarray(similarity)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be 2-D (Q, G), got shape {sim.shape}")
    q_codes, g_codes = _encode_labels(query_labels, gallery_labels)
    n_queries, n_gallery = sim.shape
    if q_codes.size != n_queries or g_codes.size != n_gallery:
        raise ValueError(
            f"similarity {sim.shape} does not match {q_codes.size} query and "
            f"{g_codes.size} gallery labels"
        )
    if exclude_self and n_queries != n_gallery:
        raise ValueError("exclude_self needs a square similarity (queries == gallery)")
    ks = sorted({_check_k(k) for k in ks})
    n_ranked = n_gallery - 1 if exclude_self else n_gallery
    if chunk_size is None:
        chunk_size = max(1, _BLOCK_ELEMENTS // max(n_gallery, 1))
    elif chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    # Discounts for ranks 1..k_max and the ideal DCG for 0..k_max relevant items.
    k_max = min(max(ks, default=1), n_ranked)
    discount = 1.0 / np.log2(np.arange(2, k_max + 2))
    ideal_dcg = np.concatenate([[0.0], np.cumsum(discount)])

    out = {"ap": np.full(n_queries, np.nan), "mrr": np.full(n_queries, np.nan)}
    for k in ks:
        for name in ("recall", "precision", "ndcg"):
            out[f"{name}@{k}"] = np.full(n_queries, np.nan)
    if n_ranked == 0:
        return out

    for start in range(0, n_queries, chunk_size):
        stop = min(start + chunk_size, n_queries)
        block = _as_scores(sim[start:stop], 2, "similarity")
        rel = q_codes[start:stop, None] == g_codes[None, :]
        if exclude_self:
            keep = np.arange(n_gallery)[None, :] != np.arange(start, stop)[:, None]
            block = block[keep].reshape(stop - start, n_ranked)
            rel = rel[keep].reshape(stop - start, n_ranked)
        sorted_scores, sorted_rel = _sort_rows(block, rel)
        del block, rel
        has_rel = sorted_rel.any(axis=1)
        rows = slice(start, stop)
        out["ap"][rows] = _ranked_average_precision(sorted_scores, sorted_rel)
        first_hit = np.argmax(sorted_rel, axis=1)
        out["mrr"][rows] = np.where(has_rel, 1.0 / (first_hit + 1.0), np.nan)

        head = sorted_rel[:, :k_max]
        hits_cum = np.cumsum(head, axis=1)
        dcg_cum = np.cumsum(head * discount, axis=1)
        n_relevant = sorted_rel.sum(axis=1)
        for k in ks:
            k_eff = min(k, n_ranked)
            hits = hits_cum[:, k_eff - 1]
            idcg = ideal_dcg[np.minimum(n_relevant, k_eff)]
            with np.errstate(invalid="ignore", divide="ignore"):
                ndcg = dcg_cum[:, k_eff - 1] / idcg
            out[f"recall@{k}"][rows] = np.where(has_rel, (hits > 0).astype(float), np.nan)
            out[f"precision@{k}"][rows] = np.where(has_rel, hits / k_eff, np.nan)
            out[f"ndcg@{k}"][rows] = np.where(has_rel, ndcg, np.nan)
    return out


def mean_average_precision(
    similarity: ArrayLike,
    query_labels: ArrayLike,
    gallery_labels: ArrayLike,
    *,
    exclude_self: bool = False,
    chunk_size: int | None = None,
) -> float:
    """mAP over queries that have at least one relevant item (NaN if none has)."""
    ap = retrieval_metrics(
        similarity,
        query_labels,
        gallery_labels,
        ks=(),
        exclude_self=exclude_self,
        chunk_size=chunk_size,
    )["ap"]
    return _nanmean(ap)


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def per_class_ap(per_query_ap: ArrayLike, query_labels: ArrayLike) -> dict[Hashable, float]:
    """Mean AP of the queries of each class: {label: mean AP}, NaN queries skipped.

    per_query_ap: (Q,) float; query_labels: (Q,). Keys are plain Python values (JSON-ready),
    in sorted label order; a class whose queries are all NaN maps to NaN.
    """
    ap = np.asarray(per_query_ap, dtype=np.float64)
    labels = np.asarray(query_labels)
    if ap.shape != labels.shape or ap.ndim != 1:
        raise ValueError(f"per_query_ap {ap.shape} and query_labels {labels.shape} must match")
    classes, codes = np.unique(labels, return_inverse=True)
    codes = codes.reshape(-1)
    return {
        (c.item() if isinstance(c, np.generic) else c): _nanmean(ap[codes == i])
        for i, c in enumerate(classes)
    }


def topk_accuracy(scores: ArrayLike, labels: ArrayLike, k: int = 1) -> float:
    """Fraction of samples whose true class is among the k highest scores.

    scores: (N, C) float; labels: (N,) int in [0, C). Ties are broken by class index (a
    tied lower-index class ranks first), the same rule as retrieval; k >= C gives 1.0.
    """
    score_arr = _as_scores(scores, 2, "scores")
    k = _check_k(k)
    y = np.asarray(labels)
    n, n_classes = score_arr.shape
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be ({n},) integers, got {y.shape} {y.dtype}")
    if n == 0:
        return float("nan")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes})")
    true_score = score_arr[np.arange(n), y][:, None]
    # 0-based rank of the true class under the stable descending order.
    before = (score_arr > true_score) | (
        (score_arr == true_score) & (np.arange(n_classes)[None, :] < y[:, None])
    )
    return float(np.mean(before.sum(axis=1) < k))


class ClasswiseScore(NamedTuple):
    """Macro mean over scored classes and the (C,) per-class values (NaN = skipped)."""

    mean: float
    per_class: np.ndarray

    @property
    def skipped(self) -> np.ndarray:
        """Indices of the classes left out (no positive, or for AUROC no negative)."""
        return np.flatnonzero(np.isnan(self.per_class))


def _check_multilabel(scores: ArrayLike, targets: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    score_arr = _as_scores(scores, 2, "scores")
    target_arr = np.asarray(targets)
    if target_arr.shape != score_arr.shape:
        raise ValueError(f"targets {target_arr.shape} must match scores {score_arr.shape}")
    return score_arr, target_arr.astype(bool)


def classwise_map(scores: ArrayLike, targets: ArrayLike) -> ClasswiseScore:
    """Class-wise AP for multi-label (soundscape) scoring, and its macro mean.

    scores: (N, C) float; targets: (N, C) bool. Column c equals
    ``average_precision_score(targets[:, c], scores[:, c])``; classes with no positive
    are NaN and listed by ``.skipped``. Unpacks as ``mean, per_class``.
    """
    score_arr, target_arr = _check_multilabel(scores, targets)
    sorted_scores, sorted_rel = _sort_rows(score_arr.T, target_arr.T)
    per_class = _ranked_average_precision(sorted_scores, sorted_rel)
    return ClasswiseScore(_nanmean(per_class), per_class)


def classwise_auroc(scores: ArrayLike, targets: ArrayLike) -> ClasswiseScore:
    """Class-wise ROC AUC for multi-label scoring, and its macro mean.

    scores: (N, C) float; targets: (N, C) bool. Column c equals
    ``roc_auc_score(targets[:, c], scores[:, c])`` (ties count one half); classes with no
    positive or no negative are NaN and listed by ``.skipped``.
    """
    score_arr, target_arr = _check_multilabel(scores, targets)
    n, n_classes = score_arr.shape
    per_class = np.full(n_classes, np.nan)
    if n == 0:
        return ClasswiseScore(float("nan"), per_class)
    # Mann-Whitney U with mid-ranks: exactly the trapezoidal ROC area, ties included.
    order = np.argsort(score_arr.T, axis=1, kind="stable")
    sorted_scores = np.take_along_axis(score_arr.T, order, axis=1)
    sorted_pos = np.take_along_axis(target_arr.T, order, axis=1)
    idx = np.arange(n)
    is_start = np.ones((n_classes, n), dtype=bool)
    is_start[:, 1:] = sorted_scores[:, 1:] != sorted_scores[:, :-1]
    is_end = np.ones((n_classes, n), dtype=bool)
    is_end[:, :-1] = is_start[:, 1:]
    group_start = np.maximum.accumulate(np.where(is_start, idx, 0), axis=1)
    group_end = np.minimum.accumulate(np.where(is_end, idx, n)[:, ::-1], axis=1)[:, ::-1]
    mid_rank = (group_start + group_end) / 2.0 + 1.0
    n_pos = sorted_pos.sum(axis=1)
    n_neg = n - n_pos
    rank_sum = np.where(sorted_pos, mid_rank, 0.0).sum(axis=1)
    scored = (n_pos > 0) & (n_neg > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    per_class[scored] = auc[scored]
    return ClasswiseScore(_nanmean(per_class), per_class)
