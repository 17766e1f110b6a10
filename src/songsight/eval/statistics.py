"""Means with bootstrap intervals, paired differences, and where embeddings land: the
statistics every table and validation reports, in plain numpy.

A per-query score may be NaN (a query with no relevant item): every mean here skips NaN and
says how many values it is over. Nothing here imports torch, the CLI or the trainer.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["BLOCK_ELEMENTS", "landing", "paired_difference", "summarize"]

# Bootstrap resamples are drawn in blocks of at most this many indices.
BLOCK_ELEMENTS = 1 << 21


def summarize(
    per_query: Mapping[str, ArrayLike],
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, dict[str, float | int]]:
    """Mean and percentile-bootstrap CI of each per-query metric.

    per_query: {metric: (Q,) float}, NaN entries (queries without a relevant item) excluded.
    Returns {metric: {"mean", "ci_low", "ci_high", "n"}} with plain floats and n the number
    of non-NaN queries. Queries are resampled with replacement ``n_boot`` times from a
    generator seeded with ``seed`` (the same resamples for every metric of equal n).
    With n == 0 everything but n is NaN; with n_boot == 0 the CI is NaN.
    """
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    tail_pct = 100.0 * (1.0 - ci) / 2.0
    result: dict[str, dict[str, float | int]] = {}
    for name, values in per_query.items():
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        arr = arr[~np.isnan(arr)]
        n = int(arr.size)
        low = high = float("nan")
        if n and n_boot:
            rng = np.random.default_rng(seed)
            boot_means = np.empty(n_boot)
            # Resample in blocks so n_boot x n indices never sit in memory at once.
            per_block = max(1, BLOCK_ELEMENTS // n)
            for b0 in range(0, n_boot, per_block):
                b1 = min(b0 + per_block, n_boot)
                idx = rng.integers(0, n, size=(b1 - b0, n))
                boot_means[b0:b1] = arr[idx].mean(axis=1)
            low, high = (float(v) for v in np.percentile(boot_means, [tail_pct, 100 - tail_pct]))
        result[name] = {
            "mean": float(arr.mean()) if n else float("nan"),
            "ci_low": low,
            "ci_high": high,
            "n": n,
        }
    return result


def paired_difference(
    a: ArrayLike, b: ArrayLike, n_boot: int = 1000, seed: int = 0, ci: float = 0.95
) -> dict[str, float | int]:
    """Mean of ``a - b`` over the same queries, with a paired percentile-bootstrap CI.

    ``a``, ``b``: (Q,) per-query scores of two methods on the same queries (NaN where a query
    has no relevant item: such queries are left out of both). Each bootstrap resample draws
    queries with replacement and takes the mean difference on them, so both methods are
    always judged on the same resample: the interval of a difference, not two intervals.
    Returns {"diff", "ci_low", "ci_high", "n"}.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"a and b must score the same queries, got {a.shape} and {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    out = summarize({"diff": a[keep] - b[keep]}, n_boot, seed, ci)["diff"]
    return {"diff": out["mean"], "ci_low": out["ci_low"], "ci_high": out["ci_high"], "n": out["n"]}


def landing(
    emb: ArrayLike,
    labels: ArrayLike,
    species_emb: ArrayLike,
    species_labels: ArrayLike,
    photos: ArrayLike | None = None,
    photo_labels: ArrayLike | None = None,
) -> dict[str, float]:
    """Where unit embeddings land: their mean cosine to their own species' text embedding
    (``cos_text``) and, given photos, to the normalised mean of their species' photo
    embeddings (``cos_photos``, over embeddings whose species has photos).

    ``emb`` (N, D) and ``labels`` (N,); ``species_emb`` (S, D) rows for ``species_labels``
    (S,); ``photos`` (G, D) with ``photo_labels`` (G,). All unit norm. NaN when nothing counts.
    """
    emb = np.asarray(emb, np.float64)
    labels = np.asarray(labels)
    row = {lab: i for i, lab in enumerate(np.asarray(species_labels).tolist())}
    known = np.array([lab in row for lab in labels.tolist()], bool)
    text = np.asarray(species_emb, np.float64)[[row[lab] for lab in labels[known].tolist()]]
    out = {"cos_text": float(np.sum(emb[known] * text, axis=1).mean()) if known.any() else float("nan")}  # fmt: skip
    if photos is not None:
        photos, photo_labels = np.asarray(photos, np.float64), np.asarray(photo_labels)
        cos = []
        for lab in np.unique(labels):
            mine = photos[photo_labels == lab]
            if len(mine):
                centroid = mine.mean(0) / max(np.linalg.norm(mine.mean(0)), 1e-12)
                cos.append(emb[labels == lab] @ centroid)
        out["cos_photos"] = float(np.concatenate(cos).mean()) if cos else float("nan")
    return out
