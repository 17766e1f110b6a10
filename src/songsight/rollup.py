"""A query's top photos, named: each hit's species, and the species / genus / family roll-up.

The top ``rollup_k`` photo scores ``s_i`` of a query become weights ``softmax(s_i / T)``
(``T = 0.01``, BioCLIP's CLIP logit scale of 100, in which image-text cosines are calibrated),
summed per species, and per genus and family when the gallery knows them. A score is the share
of the top-``rollup_k`` evidence that points at that taxon; photos without a species keep their
share, so species scores sum to at most 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from songsight.results import Hit, SpeciesScore

__all__ = [
    "ROLLUP_K",
    "ROLLUP_TEMPERATURE",
    "TOP_SPECIES",
    "GalleryTaxa",
    "softmax_rollup",
]

ROLLUP_K = 100
ROLLUP_TEMPERATURE = 0.01
TOP_SPECIES = 5


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
