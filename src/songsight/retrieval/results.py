"""What a search answers: photos (`Hit`), taxa (`SpeciesScore`), per recording or window
(`WindowResult`), and `keep_detections`, the ``--min-score`` filter every output shares.

`songsight.retrieval.searcher.Searcher` fills them in, `songsight.retrieval.rollup` names the photos and rolls
them up into taxa, and `songsight.retrieval.writers` writes them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

__all__ = ["FLAGS", "Hit", "SpeciesScore", "WindowResult", "keep_detections"]

# What a result's ``flags`` may say. Both mean "no usable signal": such a recording (or window)
# is answered with no photos and no species rather than with the photos nearest to noise.
FLAGS = {
    "silent": "no signal above about -90 dBFS (a broken recorder or export?)",
    "too_short": "far shorter than a window: too little sound to name a bird",
}


@dataclass
class Hit:
    """One retrieved photo: its gallery id, file, cosine score and species when known."""

    image_id: int
    image: str
    score: float
    species: str | None = None
    label: int | None = None
    common_name: str | None = None


@dataclass
class SpeciesScore:
    """A taxon and its calibrated probability (see `songsight.retrieval.rollup`); ``rank`` is species,
    genus or family."""

    name: str
    score: float
    rank: str
    label: int | None = None
    common_name: str | None = None


@dataclass
class WindowResult:
    """Hits and species roll-up for a whole recording (``window`` None) or one window of it.

    ``flags``: names from `FLAGS` (``silent``, ``too_short``); a flagged result has no hits
    and no species.
    """

    path: str
    start_s: float
    end_s: float
    hits: list[Hit] = field(default_factory=list)
    species: list[SpeciesScore] = field(default_factory=list)
    window: int | None = None
    error: str | None = None
    answered_by: str = ""
    flags: list[str] = field(default_factory=list)


def keep_detections(results: Sequence[WindowResult], min_score: float) -> list[WindowResult]:
    """Only what scores at least ``min_score``: taxa below it are dropped from every result,
    and windows left without a species are dropped; each recording's whole-file result (and
    any error) always stays, so every input is accounted for."""
    out = []
    for r in results:
        species = [s for s in r.species if s.score >= min_score]
        if r.window is not None and not any(s.rank == "species" for s in species):
            continue
        out.append(replace(r, species=species))
    return out
