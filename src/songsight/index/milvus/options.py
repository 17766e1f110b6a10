"""Milvus index settings: the knobs, the index type for a collection's size, and the
parameters and filter expressions Milvus is sent. No connection here
(`songsight.index.milvus.connect`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from songsight.errors import SongsightError

__all__ = [
    "APPROXIMATE_SCORES",
    "EMBEDDED_INDEX_TYPES",
    "INDEX_TYPES",
    "MilvusSettings",
    "choose_index_type",
    "species_filter",
]

INDEX_TYPES = ("auto", "FLAT", "HNSW", "HNSW_SQ", "IVF_FLAT", "IVF_SQ8", "DISKANN", "AUTOINDEX")


@dataclass
class MilvusSettings:
    """Index and search knobs; ``index_type="auto"`` picks by size (`choose_index_type`).

    ``hnsw_m`` / ``hnsw_ef_construction`` build the graph and ``hnsw_ef`` searches it (raised
    to the candidate count when lower); ``ivf_nlist`` (0: ~4 * sqrt(N) at build time) and
    ``ivf_nprobe`` (lists searched per query; 0: `auto_nprobe` of the built nlist) are IVF's
    on a Milvus server; the embedded file ignores both (it searches Milvus's fixed interim
    index, see `choose_index_type`). ``diskann_search_list`` is DiskANN's. The HNSW defaults are
    those of `songsight.index.hnsw.HNSWIndex`, chosen by benchmarks/search.py.
    """

    index_type: str = "auto"
    flat_threshold: int = 200_000
    diskann_threshold: int = 20_000_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 256
    hnsw_ef: int = 256
    ivf_nlist: int = 0
    ivf_nprobe: int = 0
    diskann_search_list: int = 200
    rerank_factor: int = 4
    min_candidates: int = 100

    def __post_init__(self) -> None:
        self.index_type = str(self.index_type)
        if self.index_type.upper() in INDEX_TYPES:
            self.index_type = self.index_type.upper() if self.index_type != "auto" else "auto"
        if self.index_type not in INDEX_TYPES:
            raise SongsightError(
                f"Milvus index type must be one of {', '.join(INDEX_TYPES)}, "
                f"got {self.index_type!r}"
            )
        for name, value in asdict(self).items():
            if name != "index_type" and (not isinstance(value, int) or value < 0):
                raise SongsightError(f"Milvus setting {name} must be an integer >= 0")
        if self.rerank_factor < 1 or self.min_candidates < 1:
            raise SongsightError("rerank_factor and min_candidates must be >= 1")

    @classmethod
    def from_dict(cls, options: Mapping[str, Any] | None) -> MilvusSettings:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options or {}) - known)
        if unknown:
            raise SongsightError(f"unknown Milvus settings {unknown}; known: {sorted(known)}")
        return cls(**dict(options or {}))


# Index types whose distances are not exact inner products of the stored float32 vectors
# (quantised codes; AUTOINDEX may be, on managed Milvus): their candidates are re-scored here
# from the vectors Milvus returns with them. FLAT, IVF_FLAT, HNSW and DISKANN (which re-ranks
# with full vectors itself) score exactly, and Milvus Lite fetches vectors very slowly (a
# reply of 100 vectors: 0.29 s against 0.016 s without, measured at 5k rows), so those are
# only re-ordered by (score, id).
APPROXIMATE_SCORES = frozenset({"IVF_SQ8", "IVF_PQ", "HNSW_SQ", "HNSW_PQ", "AUTOINDEX"})
# What Milvus Lite 2.5 ("local mode") builds; a server offers every type in INDEX_TYPES.
EMBEDDED_INDEX_TYPES = ("FLAT", "IVF_FLAT", "AUTOINDEX")


def choose_index_type(n_rows: int, settings: MilvusSettings, embedded: bool) -> str:
    """The Milvus index type for a collection of ``n_rows``: FLAT while exact search is still
    interactive (same threshold as `search.ANN_THRESHOLD`); past it IVF_FLAT in the embedded
    file, HNSW on a server, and DISKANN past ``diskann_threshold``, where an in-memory graph
    (~5 KB a 768-d vector) stops fitting one query node.

    In the embedded file "IVF_FLAT" means "not FLAT": Milvus Lite 2.5 keeps all rows in one
    growing segment and, for any declared type but FLAT, searches Milvus's interim IVF index
    with its own fixed lists and probes. Measured (benchmarks/milvus_lite_probe.py, 100k
    random 768-d vectors): identical answers and latency for nlist 16 to 5,000, nprobe 1 to
    nlist and AUTOINDEX, about a ninth of FLAT's scan time; recall@10 1.0 for FLAT against
    0.165 on those structureless vectors, and 0.9998 on species-clustered ones
    (docs/scale.md). FLAT stays available for exact answers at any size."""
    if settings.index_type != "auto":
        if embedded and settings.index_type not in EMBEDDED_INDEX_TYPES:
            raise SongsightError(
                f"the embedded Milvus file builds only {', '.join(EMBEDDED_INDEX_TYPES)} "
                f"indexes, not {settings.index_type}; use a Milvus server (--milvus-uri) for it"
            )
        return settings.index_type
    if n_rows <= settings.flat_threshold:
        return "FLAT"
    if embedded:
        return "IVF_FLAT"
    return "DISKANN" if n_rows > settings.diskann_threshold else "HNSW"


def ideal_nlist(n_rows: int) -> int:
    """IVF lists for ``n_rows``: ~4 * sqrt(N), 16 to 65,536 (Milvus's range)."""
    return int(min(65_536, max(16, 4 * math.sqrt(max(n_rows, 1)))))


def auto_nprobe(nlist: int) -> int:
    """Lists an IVF search probes by default: 1/32 of them, at least 32 (all when fewer).

    A fixed nprobe probes a shrinking share of a growing index (nlist ~ sqrt(N)); a fixed
    share keeps what recall needs from falling as the gallery grows. It is a margin, not a
    measured need: every IVF figure in docs/scale.md comes from the embedded file, which
    ignores nprobe (see `choose_index_type`), so this share has not been measured on a server.
    """
    return int(min(nlist, max(32, math.ceil(nlist / 32))))


def build_index_params(index_type: str, n_rows: int, settings: MilvusSettings) -> dict:
    if index_type in ("HNSW", "HNSW_SQ"):
        return {"M": settings.hnsw_m, "efConstruction": settings.hnsw_ef_construction}
    if index_type in ("IVF_FLAT", "IVF_SQ8"):
        return {"nlist": settings.ivf_nlist or ideal_nlist(n_rows)}
    return {}


def build_search_params(
    index_type: str, n_candidates: int, settings: MilvusSettings, nlist: int = 0
) -> dict:
    """What one search sends; ``nlist`` is the built IVF index's (for the default nprobe)."""
    if index_type in ("HNSW", "HNSW_SQ"):
        # ef below the candidate count would cap what the graph can return.
        return {"ef": max(settings.hnsw_ef, n_candidates)}
    if index_type in ("IVF_FLAT", "IVF_SQ8"):
        return {"nprobe": settings.ivf_nprobe or auto_nprobe(nlist or ideal_nlist(0))}
    if index_type == "DISKANN":
        return {"search_list": max(settings.diskann_search_list, n_candidates)}
    return {}


def string_literal(value: str) -> str:
    """A Milvus expression string literal (JSON's escaping: quotes and backslashes)."""
    return json.dumps(str(value), ensure_ascii=False)


def species_filter(allowed_species: Iterable[str], field_name: str = "species") -> str:
    """``species in ["A", "B"]``: the allowed-species list as a Milvus filter expression."""
    names = sorted({str(s) for s in allowed_species})
    return f"{field_name} in [{', '.join(string_literal(s) for s in names)}]"
