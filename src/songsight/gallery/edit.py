"""Changing a gallery without embedding: remove photos, or move its search to another backend.

`remove_from_gallery` drops photos (by path or sha256) from the store and from the index
(``songsight index remove``); the remaining photos are renumbered, since a gallery's ids are
its store rows. `move_gallery` points the gallery's search at a Milvus collection (the
embedded file or a server) or back to songsight's own index, and fills the new place from the
store (``songsight index move``): nothing is embedded again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from songsight.errors import DataNotFoundError
from songsight.gallery.format import (
    META_FILE,
    STORE_FILE,
    confirm_removal,
    read_meta,
    record_update,
)
from songsight.gallery.index import update_index
from songsight.outputs import claim

__all__ = ["RemoveReport", "move_gallery", "remove_from_gallery"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class RemoveReport:
    gallery: Path
    n_removed: int
    n_images: int
    not_found: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.not_found else 0

    def summary(self) -> str:
        text = f"{self.n_removed} removed; {self.n_images} photos in {self.gallery}"
        if self.not_found:
            shown = ", ".join(self.not_found[:5]) + (" ..." if len(self.not_found) > 5 else "")
            text += f"; not in the gallery: {shown}"
        return text


def _open_meta(directory: Path) -> dict:
    meta = read_meta(directory)
    if meta is None or not (directory / STORE_FILE).is_file():
        raise DataNotFoundError(f"no gallery at {directory} (no {META_FILE} or {STORE_FILE})")
    return meta


def _finish(directory: Path, meta: dict, hashes: list[str], progress: bool, **removed) -> str:
    """The index brought in line with the store (``removed``: `update_index`'s ``removed`` and
    ``before``), and ``gallery.json`` written."""
    kind = update_index(directory, meta, hashes, progress=progress, **removed)
    record_update(directory, meta, kind, len(hashes))
    return kind


def remove_from_gallery(
    items: Iterable[str | Path],
    gallery_dir: str | Path,
    progress: bool = True,
    yes: bool = False,
) -> RemoveReport:
    """Remove photos given by path or sha256 (64 hex digits) from the store and the index.

    More than `FEW_PHOTOS` photos, or all of them, are removed only with ``yes``. A removed
    photo stays removed: `songsight index add` of its folder leaves it out, until it is added
    by name (its path, or a manifest row); the gallery records it in ``removed``."""
    _open_meta(Path(gallery_dir))  # no gallery: said before a claim could make its folder
    with claim(gallery_dir, folder=True, what="--gallery"):
        return _remove(Path(gallery_dir), [str(i) for i in items], progress, yes)


def _remove(directory: Path, items: list[str], progress: bool, yes: bool) -> RemoveReport:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    meta = _open_meta(directory)
    if not items:
        raise DataNotFoundError("nothing to remove: give photo paths or sha256 hashes")
    hashes = {i.lower() for i in items if _SHA256.match(i.lower())}
    paths = {str(Path(i).absolute()) for i in items if not _SHA256.match(i.lower())}
    store = directory / STORE_FILE
    table = pq.read_table(store)
    drop = pc.or_(
        pc.is_in(table["sha256"], pa.array(sorted(hashes), pa.string())),
        pc.is_in(table["path"], pa.array(sorted(paths), pa.string())),
    )
    dropped = table.filter(drop)
    found = set(dropped["sha256"].to_pylist()) | set(dropped["path"].to_pylist())
    not_found = [
        i for i in items if i.lower() not in found and str(Path(i).absolute()) not in found
    ]
    confirm_removal(directory, dropped["path"].to_pylist(), table.num_rows, "index remove", yes)
    if dropped.num_rows:
        removed = meta.setdefault("removed", {})
        for sha, path in zip(
            dropped["sha256"].to_pylist(), dropped["path"].to_pylist(), strict=True
        ):
            removed[sha] = path
        kept = table.filter(pc.invert(drop)).replace_schema_metadata(table.schema.metadata)
        tmp = store.with_name(store.name + ".tmp")
        pq.write_table(kept, tmp)
        os.replace(tmp, store)
        remaining = kept["sha256"].to_pylist()
        _finish(directory, meta, remaining, progress,
                removed=dropped["sha256"].to_pylist(), before=table)  # fmt: skip
    return RemoveReport(directory, dropped.num_rows, table.num_rows - dropped.num_rows, not_found)


def move_gallery(gallery_dir: str | Path, milvus: dict | None = None, progress: bool = True) -> str:
    """Search the gallery through the Milvus collection ``milvus`` describes (arguments of
    `songsight.gallery.milvus.milvus_config`: ``uri``, ``collection``, ``settings``), or with
    ``milvus=None`` through songsight's own index; returns the gallery's search kind."""
    _open_meta(Path(gallery_dir))
    with claim(gallery_dir, folder=True, what="--gallery"):
        return _move(Path(gallery_dir), milvus, progress)


def _move(directory: Path, milvus: dict | None, progress: bool) -> str:
    import pyarrow.parquet as pq

    meta = _open_meta(directory)
    if milvus is None:
        meta["index"] = {"requested": "auto", "kind": "exact", "hnsw_options": {}}
    else:
        from songsight.gallery.milvus.collection import milvus_config

        # No "synced" record: the first sync checks every row of the new collection.
        meta["index"] = {
            "requested": "milvus", "kind": "milvus", "milvus": milvus_config(**milvus),
        }  # fmt: skip
    hashes = pq.read_table(directory / STORE_FILE, columns=["sha256"])["sha256"].to_pylist()
    return _finish(directory, meta, hashes, progress)
