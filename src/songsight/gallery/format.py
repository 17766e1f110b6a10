"""The gallery folder on disk: file names, ``gallery.json``, the store's paths and vectors.

The layout is described in `songsight.gallery`. Here: its file names, reading and writing
``gallery.json`` atomically (`read_meta`, `write_meta`, `record_update`), the store's paths and
vectors, and the one refusal to remove many photos (`confirm_removal`). The search index kept
beside the store is `songsight.gallery.index`.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from songsight.errors import SongsightError

__all__ = [
    "ERRORS_FILE", "FEW_PHOTOS", "FORMAT", "FORMAT_VERSION", "INDEX_DIR", "INDEX_KINDS",
    "META_FILE", "PENDING_FILE", "STORE_FILE", "VECTOR_DTYPES", "confirm_removal",
    "read_meta", "read_vectors", "record_update", "stored_paths", "utc_now", "write_meta",
]  # fmt: skip

STORE_FILE = "gallery.parquet"
META_FILE = "gallery.json"
INDEX_DIR = "index"
ERRORS_FILE = "errors.csv"
PENDING_FILE = "pending-metadata.parquet"
FORMAT = "songsight-gallery"
FORMAT_VERSION = 1
INDEX_KINDS = ("auto", "exact", "hnsw", "milvus")
# A command that would remove more photos than this, or every photo, shows them and needs --yes.
FEW_PHOTOS = 5
_SHOW_DOOMED = 10
VECTOR_DTYPES = ("float32", "float16")


# --- small file helpers -----------------------------------------------------------------------


def utc_now() -> str:
    """Now, as ``gallery.json`` records times (UTC, ISO 8601, seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_meta(directory: Path, meta: dict) -> None:
    """Replace ``directory``'s ``gallery.json`` with ``meta`` atomically."""
    path = Path(directory) / META_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_meta(directory: Path) -> dict | None:
    """``directory``'s ``gallery.json`` (None without one); refuses a file that is not a
    gallery's or was written by a newer songsight."""
    f = Path(directory) / META_FILE
    if not f.is_file():
        return None
    meta = json.loads(f.read_text())
    if meta.get("format") != FORMAT:
        raise SongsightError(f"{f} is not a songsight gallery file (format {meta.get('format')!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise SongsightError(
            f"{directory} was written by a newer songsight (gallery format "
            f"{meta['format_version']}); upgrade songsight to read it"
        )
    return meta


def confirm_removal(directory: Path, doomed: list[str], n_images: int, action: str,
                    yes: bool, hint: str = "") -> None:  # fmt: skip
    """Refuse, listing them, to remove ``doomed`` photos (paths) of the ``n_images`` a gallery
    holds when they are more than `FEW_PHOTOS` or all of them, unless ``yes``."""
    n = len(doomed)
    if yes or n == 0 or (n <= FEW_PHOTOS and n < n_images):
        return
    shown = [f"  {p}" for p in doomed[:_SHOW_DOOMED]]
    if n > _SHOW_DOOMED:
        shown.append(f"  ... and {n - _SHOW_DOOMED} more")
    whole = "all" if n == n_images else f"{n} of the"
    raise SongsightError(
        f"{action} would remove {whole} {n_images} photos of {directory}; nothing was changed. "
        f"Pass --yes to remove them{hint}. They are:\n" + "\n".join(shown)
    )


def stored_paths(directory: Path) -> list[str]:
    """The gallery's photo paths in id order (none when it has no store yet)."""
    import pyarrow.parquet as pq

    store = directory / STORE_FILE
    if not store.is_file():
        return []
    return pq.read_table(store, columns=["path"]).column("path").to_pylist()


def read_vectors(directory: Path, start: int = 0) -> np.ndarray:
    """(N - start, D) float32 rows of the store's embedding column."""
    import pyarrow.parquet as pq

    from songsight.index.store import vectors_from_column

    column = pq.read_table(directory / STORE_FILE, columns=["embedding"]).column("embedding")
    return vectors_from_column(column.slice(start))


def record_update(directory: Path, meta: dict, kind: str, n_images: int) -> None:
    """Write ``gallery.json`` after the store and index changed."""
    from songsight.provenance import package_version

    meta["index"]["kind"] = kind
    meta["count"] = n_images
    meta["n_species"] = _count_species(directory)
    meta["updated_utc"] = utc_now()
    meta["songsight_version"] = package_version()
    write_meta(directory, meta)


def _count_species(directory: Path) -> int:
    import pyarrow.parquet as pq

    col = pq.read_table(directory / STORE_FILE, columns=["species", "common_name"]).to_pandas()
    names = col["species"].where(col["species"].notna(), col["common_name"])
    return int(names.dropna().nunique())
