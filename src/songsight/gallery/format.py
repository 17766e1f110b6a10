"""The gallery folder on disk: file names, ``gallery.json``, ``errors.csv`` and the index.

The layout is described in `songsight.gallery`. Here: reading and writing its files
atomically, the image-model provenance check, and keeping the HNSW index in step with the
store (a saved graph is trusted only when it covers a prefix of the store's rows).
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from songsight.errors import SongsightError

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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def _read_json(directory: Path) -> dict | None:
    f = directory / META_FILE
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


def _sha_digest(hashes: list[str]) -> str:
    from songsight.provenance import stable_hash

    return stable_hash(hashes)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Swap a finished folder into place (a kill leaves either the old or the new one)."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


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


# --- the index --------------------------------------------------------------------------------


def _update_index(directory: Path, meta: dict, hashes: list[str], progress: bool = False) -> str:
    """Bring ``index/`` in line with the store; returns the kind of search the gallery uses."""
    from songsight.index.search import ANN_THRESHOLD

    n = len(hashes)
    requested = meta["index"]["requested"]
    if requested == "milvus":
        from songsight.gallery.milvus import sync_milvus

        return sync_milvus(directory, meta, progress=progress)
    kind = "hnsw" if requested == "hnsw" or (requested == "auto" and n > ANN_THRESHOLD) else "exact"
    index_dir = directory / INDEX_DIR
    if kind == "exact":
        shutil.rmtree(index_dir, ignore_errors=True)  # a stale graph must never be read
        return kind
    index = _load_valid_index(index_dir, hashes)
    done = len(index) if index is not None else 0
    if index is not None and done == n:
        return kind
    vectors = _read_vectors(directory, start=done)
    if index is None:
        index = _new_hnsw(meta, vectors)
    else:
        index.add(vectors, np.arange(done, n, dtype=np.int64))
    index.metadata = {"gallery_rows": n, "sha256_digest": _sha_digest(hashes)}
    tmp = directory / (INDEX_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    index.save(tmp)
    _replace_dir(tmp, index_dir)
    return kind


def _new_hnsw(meta: dict, vectors: np.ndarray):
    from songsight.index.search import build_index

    return build_index(
        vectors,
        kind="hnsw",
        storage_dtype=meta["vector_dtype"],
        **(meta["index"].get("hnsw_options") or {}),
    )


def _load_valid_index(index_dir: Path, hashes: list[str]):
    """The saved HNSW index if it covers a prefix of the gallery's rows, else None."""
    from songsight.index.search import HNSWIndex

    if not (index_dir / "meta.json").is_file():
        return None
    try:
        index = HNSWIndex.load(index_dir)
    except SongsightError:
        return None
    m = int(index.metadata.get("gallery_rows", -1))
    if not 0 <= m <= len(hashes) or len(index) != m:
        return None
    if index.metadata.get("sha256_digest") != _sha_digest(hashes[:m]):
        return None
    return index


def _read_vectors(directory: Path, start: int = 0) -> np.ndarray:
    """(N - start, D) float32 rows of the store's embedding column."""
    import pyarrow.parquet as pq

    from songsight.index.store import vectors_from_column

    column = pq.read_table(directory / STORE_FILE, columns=["embedding"]).column("embedding")
    return vectors_from_column(column.slice(start))


def _clear(directory: Path) -> None:
    """Remove a gallery's own files (and nothing else) from ``directory``."""
    for name in (STORE_FILE, META_FILE, ERRORS_FILE, PENDING_FILE, "gallery.errors.csv"):
        (directory / name).unlink(missing_ok=True)
    for name in (STORE_FILE + ".parts", INDEX_DIR, INDEX_DIR + ".tmp", INDEX_DIR + ".old"):
        shutil.rmtree(directory / name, ignore_errors=True)
    if (directory / "milvus.db").exists():  # the embedded Milvus file of a --backend milvus gallery
        from songsight.gallery.milvus import drop_embedded

        drop_embedded(directory)


def record_update(directory: Path, meta: dict, kind: str, n_images: int) -> None:
    """Write ``gallery.json`` after the store and index changed."""
    from songsight.provenance import package_version

    meta["index"]["kind"] = kind
    meta["count"] = n_images
    meta["n_species"] = _count_species(directory)
    meta["updated_utc"] = _now()
    meta["songsight_version"] = package_version()
    _write_json(directory / META_FILE, meta)


def _count_species(directory: Path) -> int:
    import pyarrow.parquet as pq

    col = pq.read_table(directory / STORE_FILE, columns=["species", "common_name"]).to_pandas()
    names = col["species"].where(col["species"].notna(), col["common_name"])
    return int(names.dropna().nunique())
