"""What a search answers: photos (`Hit`), taxa (`SpeciesScore`), per recording or window
(`WindowResult`).

`songsight.retrieval.Searcher` fills them in, `songsight.rollup` names the photos and rolls
them up into taxa, and `songsight.results_io` writes them out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Hit", "SpeciesScore", "WindowResult"]


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
    """A taxon's share of the top photo evidence; ``rank`` is species, genus or family."""

    name: str
    score: float
    rank: str
    label: int | None = None
    common_name: str | None = None


@dataclass
class WindowResult:
    """Hits and species roll-up for a whole recording (``window`` None) or one window of it."""

    path: str
    start_s: float
    end_s: float
    hits: list[Hit] = field(default_factory=list)
    species: list[SpeciesScore] = field(default_factory=list)
    window: int | None = None
    error: str | None = None
    answered_by: str = ""
