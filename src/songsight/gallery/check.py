"""``songsight index check``: which photos of a gallery are gone from disk, and pruning them.

A photo that was moved is found again by `songsight index add` (by content hash, see
`songsight.gallery.dedupe`); one that was deleted stays a dead row until it is pruned.
Pruning rewrites the store without those rows, so the photos after them get new ids (a
running ``songsight serve`` must be restarted), and rebuilds the HNSW index if there is one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from songsight.errors import DataNotFoundError
from songsight.gallery.format import (
    META_FILE,
    STORE_FILE,
    confirm_removal,
    read_meta,
    stored_paths,
    utc_now,
    write_meta,
)
from songsight.gallery.index import update_index
from songsight.outputs import claim

__all__ = ["CheckReport", "check_gallery", "missing_note", "missing_photos"]

_SHOW = 10


@dataclass
class CheckReport:
    """What `check_gallery` found: ``missing`` (id, path) of photos whose file is gone."""

    gallery: Path
    n_images: int
    missing: list[tuple[int, str]] = field(default_factory=list)
    pruned: bool = False

    @property
    def exit_code(self) -> int:
        """1 while the gallery still holds photos whose file is gone, else 0."""
        return 1 if self.missing and not self.pruned else 0

    def summary(self) -> str:
        if not self.missing:
            return f"{self.gallery}: all {self.n_images} photos are on disk"
        lines = [f"  {i}: {p}" for i, p in self.missing[:_SHOW]]
        if len(self.missing) > _SHOW:
            lines.append(f"  ... and {len(self.missing) - _SHOW} more")
        if self.pruned:
            head = (
                f"{self.gallery}: pruned {len(self.missing)} photo(s) whose file is gone; "
                f"{self.n_images} left (ids after them changed: restart a running server)"
            )
        else:
            head = (
                f"{self.gallery}: {len(self.missing)} of {self.n_images} photo(s) have no file "
                "any more (id: path). Moved? `songsight index add NEW_FOLDER --gallery "
                f"{self.gallery}` finds them by content. Deleted? `songsight index check "
                f"--gallery {self.gallery} --prune` removes them."
            )
        return "\n".join([head, *lines])


def missing_photos(paths) -> list[tuple[int, str]]:
    """(id, path) of the photos whose file is gone, from a gallery's ``path`` column in id order."""
    return [(i, p) for i, p in enumerate(paths) if not os.path.isfile(p)]


def missing_note(gallery_dir: str | Path, n_missing: int, n_images: int) -> str | None:
    """The one line a search or a server says about a gallery's photos that are gone, or None."""
    if not n_missing:
        return None
    return (
        f"{n_missing} of {n_images} photos of the gallery {gallery_dir} are no longer on disk: "
        "their paths in the answers lead nowhere; `songsight index check --gallery "
        f"{gallery_dir}` lists them and says how to find or drop them"
    )


def check_gallery(gallery_dir: str | Path, prune: bool = False, yes: bool = False) -> CheckReport:
    """List the gallery's photos whose file is gone; with ``prune``, remove them (more than
    `FEW_PHOTOS`, or all of them, only with ``yes``: a moved folder looks like this too)."""
    report = _check(Path(gallery_dir), False, yes)
    if not prune or not report.missing:
        return report
    with claim(gallery_dir, folder=True, what="--gallery"):
        return _check(Path(gallery_dir), prune, yes)


def _check(directory: Path, prune: bool, yes: bool) -> CheckReport:
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = read_meta(directory)
    store = directory / STORE_FILE
    if meta is None or not store.is_file():
        raise DataNotFoundError(
            f"no gallery at {directory} (no {META_FILE} or {STORE_FILE}); build one with "
            f"`songsight index build PATHS --gallery {directory}`"
        )
    paths = stored_paths(directory)
    missing = missing_photos(paths)
    if not prune or not missing:
        return CheckReport(directory, len(paths), missing)
    confirm_removal(
        directory, [p for _, p in missing], len(paths), "--prune", yes,
        f" (moved, not deleted? `songsight index add NEW_FOLDER --gallery {directory}` finds "
        "them by content instead)",
    )  # fmt: skip
    table = pq.read_table(store)
    gone = {i for i, _ in missing}
    kept = table.filter(pa.array([i not in gone for i in range(len(paths))]))
    tmp = store.with_name(store.name + ".tmp")
    pq.write_table(kept.replace_schema_metadata(table.schema.metadata), tmp)
    os.replace(tmp, store)
    hashes = kept.column("sha256").to_pylist()
    meta["index"]["kind"] = update_index(directory, meta, hashes)
    meta["count"] = len(hashes)
    names = (
        kept.select(["species", "common_name"]).to_pandas()
        if "species" in kept.column_names
        else None
    )
    if names is not None:
        meta["n_species"] = int(
            names["species"]
            .where(names["species"].notna(), names["common_name"])
            .dropna()
            .nunique()
        )
    meta["updated_utc"] = utc_now()
    write_meta(directory, meta)
    return CheckReport(directory, len(hashes), missing, pruned=True)
