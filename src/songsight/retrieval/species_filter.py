"""Species lists: answer only with the species of a region or a season (BirdNET's habit).

A list is a text file, one species a line, by scientific name, common name or species code
(case and spacing ignored; BirdNET's ``Scientific name_Common name`` lines work too; blank
lines and ``#`` comments are skipped). `species_filter` resolves it against a gallery: the
species it names, the entries it does not know (listed, not fatal), and the gallery rows of
those species, which the searcher hands to the index (``allowed_ids``) so exact search, HNSW
and any other backend can each apply it where it is cheapest. The cascade scores only these
species, and the roll-up sees only their photos.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from songsight.errors import DataNotFoundError

__all__ = ["SpeciesFilter", "name_lookup", "read_species_list", "species_filter"]


@dataclass(frozen=True)
class SpeciesFilter:
    """A species list resolved against one gallery.

    ``names``: the gallery species kept (as the gallery names them); ``unknown``: list
    entries matching none; ``allowed_ids`` (M,) int64 sorted gallery rows of those species.
    """

    names: tuple[str, ...]
    unknown: tuple[str, ...]
    allowed_ids: np.ndarray = field(repr=False)
    source: str = "species list"

    def describe(self) -> dict:
        """What provenance records about it."""
        return {"source": self.source, "species": list(self.names), "unknown": list(self.unknown)}

    def warning(self) -> str | None:
        """One line naming the entries that matched no species, or None."""
        if not self.unknown:
            return None
        shown = ", ".join(self.unknown[:10]) + (" ..." if len(self.unknown) > 10 else "")
        return (
            f"{self.source}: {len(self.unknown)} of {len(self.unknown) + len(self.names)} "
            f"entries are not species of this gallery, ignored: {shown}"
        )


def _norm(text: str) -> str:
    from songsight.data.manifest import name_key

    return name_key(text)


def name_lookup(metadata, species_codes: np.ndarray, species_names: list[str]) -> dict[str, int]:
    """Every way the gallery names a species (scientific, common name, code; compared as
    `name_key`) -> its index in ``species_names``; arguments as `species_filter`'s."""
    lookup: dict[str, int] = {}
    columns = [c for c in ("species", "common_name", "species_code") if c in metadata]
    for c, name in enumerate(species_names):
        lookup.setdefault(_norm(name), c)
    for row, code in enumerate(species_codes.tolist()):
        if code < 0:
            continue
        for column in columns:
            value = metadata[column].iat[row]
            if isinstance(value, str) and value.strip():
                lookup.setdefault(_norm(value), code)
    return lookup


def read_species_list(path: str | Path) -> list[str]:
    """The entries of a species list file (see the module docstring)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"species list not found: {path}")
    entries = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            entries.append(line)
    if not entries:
        raise DataNotFoundError(f"{path}: the species list is empty (one species a line)")
    return entries


def species_filter(
    entries: Iterable[str], metadata, species_codes: np.ndarray, species_names: list[str],
    source: str = "species list",
) -> SpeciesFilter:  # fmt: skip
    """Resolve ``entries`` against a gallery.

    ``metadata``: the gallery's table (``species``, ``common_name``, optional
    ``species_code``); ``species_codes`` (N,) each row's index into ``species_names`` (-1 for
    none), as `songsight.retrieval.rollup.GalleryTaxa` keeps them. Raises `DataNotFoundError` when no
    entry names a species of the gallery.
    """
    entries = [str(e).strip() for e in entries if str(e).strip()]
    lookup = name_lookup(metadata, species_codes, species_names)
    kept: dict[int, None] = {}
    unknown = []
    for entry in entries:
        # BirdNET lists say "Turdus migratorius_American Robin": either half will do.
        candidates = [entry, *entry.split("_")] if "_" in entry else [entry]
        code = next((lookup[_norm(x)] for x in candidates if _norm(x) in lookup), None)
        if code is None:
            unknown.append(entry)
        else:
            kept[code] = None
    if not kept:
        shown = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
        raise DataNotFoundError(
            f"{source}: none of its {len(entries)} entries ({shown}) is a species of the "
            "gallery; give scientific names, common names or species codes, one a line"
        )
    codes = np.fromiter(kept, np.int64)
    allowed = np.flatnonzero(np.isin(species_codes, codes)).astype(np.int64)
    names = tuple(species_names[c] for c in sorted(kept))
    return SpeciesFilter(names, tuple(unknown), allowed, source)
