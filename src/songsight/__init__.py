"""songsight: hear a bird, see it.

Public API (lazy: importing songsight loads neither torch nor pandas)::

    from songsight import Gallery, Searcher, search
    gallery = Gallery.build(["photos/"], "gallery/")           # BioCLIP-2 by default
    gallery = Gallery("gallery/")                              # open an existing one
    results = search("dawn.flac", gallery, model="runs/distilled", min_score=0.5)

Encoders live in `songsight.encoders` (BioLingual, BioCLIP-2, distilled), training in
`songsight.distill`, evaluation in `songsight.eval`.
"""

from songsight.gallery import Gallery
from songsight.retrieval.searcher import Searcher, search

__all__ = ["Gallery", "Searcher", "search"]
