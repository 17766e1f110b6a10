"""A query's top photos, named: each hit's species, and the species / genus / family roll-up.

The top ``rollup_k`` photo scores ``s_i`` of a query become weights ``softmax(s_i / T)``,
summed per species, and per genus and family when the gallery knows them. A species score is
the probability that the recording is of that species, as a kernel vote of its nearest photos:
photos without a species keep their share, so species scores sum to at most 1.

The temperature ``T`` makes these probabilities calibrated or not. `fit_temperature` chooses it
by minimising the negative log-likelihood of the true species on labelled validation
recordings (`songsight.retrieval.calibration`, ``songsight index calibrate``), which records it in the
gallery for that model. Without validation data the default is ``T = 0.01``: the logit scale
(100) BioCLIP-2 was trained with, at which its image-text cosines are its own calibrated
logits. Both query kinds live in that space (the distilled student is taught to land on the
teacher's text embeddings, the cascade queries with them), so it is the one scale with a
reason behind it; it is not fitted to audio, which is why calibrating is worth the minute.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from songsight.retrieval.results import Hit, SpeciesScore

__all__ = [
    "ROLLUP_K",
    "ROLLUP_TEMPERATURE",
    "TOP_SPECIES",
    "GalleryTaxa",
    "fit_temperature",
    "rollup_nll",
    "softmax_rollup",
]

ROLLUP_K = 100
ROLLUP_TEMPERATURE = 0.01  # the default without validation data; see the module docstring
TOP_SPECIES = 5
# A true species outside a query's top photos has probability 0; its log-likelihood is floored
# here so one such query cannot make every temperature infinitely bad (it is then a constant
# that does not move the fit).
PROB_FLOOR = 1e-6
TEMPERATURE_BOUNDS = (1e-4, 1.0)


def softmax_rollup(
    scores: np.ndarray, groups: np.ndarray, n_groups: int, temperature: float
) -> np.ndarray:
    """Mass per group of ``softmax(scores / temperature)``; (n_groups,) float64.

    ``scores`` (K,) photo scores (``-inf`` padding is ignored); ``groups`` (K,) int, the group
    of each photo, -1 for none (its mass counts in the softmax but in no group).
    """
    scores = np.asarray(scores, np.float64)
    groups = np.asarray(groups, np.int64)
    valid = np.isfinite(scores)
    out = np.zeros(n_groups, np.float64)
    if not valid.any():
        return out
    logits = scores[valid] / temperature
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    g = groups[valid]
    known = g >= 0
    return out + np.bincount(g[known], weights=weights[known], minlength=n_groups)[:n_groups]


def _true_mass(scores: np.ndarray, groups: np.ndarray, true: np.ndarray, temperature: float):
    """(Q,) roll-up mass of each query's true group; see `rollup_nll`."""
    finite = np.isfinite(scores)
    logits = np.where(finite, scores / temperature, -np.inf)
    top = np.max(np.where(finite, logits, -np.inf), axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    weights = np.where(finite, np.exp(logits - top), 0.0)
    total = weights.sum(axis=1)
    hit = (groups == true[:, None]) & finite
    return np.where(total > 0, (weights * hit).sum(axis=1) / np.maximum(total, 1e-300), 0.0)


def rollup_nll(
    scores: np.ndarray, groups: np.ndarray, true: np.ndarray, temperature: float
) -> float:
    """Mean negative log-likelihood of the true species under the roll-up at ``temperature``.

    ``scores`` (Q, K) each query's top photo scores (``-inf`` padding); ``groups`` (Q, K) int
    species code of each photo (-1 none); ``true`` (Q,) the species code of each query.
    """
    scores = np.asarray(scores, np.float64)
    groups, true = np.asarray(groups, np.int64), np.asarray(true, np.int64)
    mass = _true_mass(scores, groups, true, float(temperature))
    return float(-np.log(np.maximum(mass, PROB_FLOOR)).mean())


def fit_temperature(
    scores: np.ndarray,
    groups: np.ndarray,
    true: np.ndarray,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
) -> float:
    """The temperature in ``bounds`` minimising `rollup_nll` (same arguments).

    A log-spaced grid finds the basin, then golden-section search refines it (the NLL of
    temperature scaling is smooth and, in practice, unimodal in log T).
    """
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    grid = np.linspace(lo, hi, 61)
    nll = [rollup_nll(scores, groups, true, float(np.exp(t))) for t in grid]
    best = int(np.argmin(nll))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    golden = (np.sqrt(5) - 1) / 2
    c, d = b - golden * (b - a), a + golden * (b - a)
    fc = rollup_nll(scores, groups, true, float(np.exp(c)))
    fd = rollup_nll(scores, groups, true, float(np.exp(d)))
    for _ in range(40):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - golden * (b - a)
            fc = rollup_nll(scores, groups, true, float(np.exp(c)))
        else:
            a, c, fc = c, d, fd
            d = a + golden * (b - a)
            fd = rollup_nll(scores, groups, true, float(np.exp(d)))
    t = (a + b) / 2
    return (
        float(np.exp(t))
        if rollup_nll(scores, groups, true, float(np.exp(t))) <= nll[best]
        else float(np.exp(grid[best]))
    )


class GalleryTaxa:
    """Per gallery row: codes of its species, genus and family, and the names behind them.

    ``metadata``: the gallery's table (pandas DataFrame; row = photo id) with ``species``,
    ``common_name``, ``genus``, ``family`` and ``label`` columns. A photo without a scientific
    name goes by its common name.
    """

    def __init__(self, metadata):
        md = metadata
        species = md["species"].where(md["species"].notna(), md["common_name"])
        self.ranks: dict[str, tuple[np.ndarray, list[str]]] = {}
        for rank, column in (
            ("species", species),
            ("genus", md["genus"]),
            ("family", md["family"]),
        ):
            values = [None if _na(v) else str(v) for v in column.tolist()]
            names = sorted({v for v in values if v is not None})
            code = {name: c for c, name in enumerate(names)}
            self.ranks[rank] = (np.array([code.get(v, -1) for v in values], np.int64), names)
        # A species' label and common name: the first photo that has them.
        self.label: dict[str, int] = {}
        self.common: dict[str, str] = {}
        rows = zip(species.tolist(), md["label"].tolist(), md["common_name"].tolist(), strict=True)
        for name, label, common in rows:
            if _na(name):
                continue
            if name not in self.label and not _na(label):
                self.label[name] = int(label)
            if name not in self.common and not _na(common):
                self.common[name] = str(common)

    def species_scores(
        self, scores: np.ndarray, ids: np.ndarray, temperature: float, top_species: int
    ) -> list[SpeciesScore]:
        """The ``top_species`` taxa per rank (species, then genus, then family) by roll-up mass.

        ``scores`` (K,) and ``ids`` (K,) one query's gallery answer, best first, id -1 for
        padding. Taxa with no mass are left out.
        """
        out: list[SpeciesScore] = []
        safe = np.where(ids >= 0, ids, 0)
        for rank, (codes, names) in self.ranks.items():
            if not names:
                continue
            groups = np.where(ids >= 0, codes[safe], -1)
            mass = softmax_rollup(scores, groups, len(names), temperature)
            for c in np.argsort(-mass, kind="stable")[:top_species]:
                if mass[c] <= 0:
                    break
                name = names[c]
                is_species = rank == "species"
                out.append(
                    SpeciesScore(
                        name,
                        float(mass[c]),
                        rank,
                        self.label.get(name) if is_species else None,
                        self.common.get(name) if is_species else None,
                    )
                )
        return out

    def hits(self, metadata, scores: np.ndarray, ids: np.ndarray, k: int) -> list[Hit]:
        """The first ``k`` photos of one query's answer (stopping at id -1 padding), named.

        ``metadata``: the table these taxa were built from (its ``path`` and ``label``).
        """
        codes, names = self.ranks["species"]
        hits = []
        for s, i in zip(scores[:k], ids[:k], strict=True):
            if i < 0:
                break
            name = names[codes[i]] if codes[i] >= 0 else None
            label = metadata["label"].iat[int(i)]
            hits.append(
                Hit(
                    int(i),
                    str(metadata["path"].iat[int(i)]),
                    float(s),
                    name,
                    None if _na(label) else int(label),
                    self.common.get(name) if name else None,
                )
            )
        return hits


def _na(value: Any) -> bool:
    if value is None:
        return True
    try:
        import pandas as pd  # here, so that importing songsight does not load pandas

        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False
