"""The search index kept beside a gallery's store: opened, kept in step, cleared.

A gallery is searched exactly, through an HNSW graph saved in ``index/`` (trusted only when
it covers a prefix of the store's rows, by their sha256 digest), or through a Milvus
collection (`songsight.gallery.milvus`). `update_index` is the one hook every change of the
store ends with (build, add, remove, prune, move): it brings whichever the gallery uses in
line with the store. `open_index` gives the `songsight.index.search.VectorIndex` a `Gallery`
searches; `clear_gallery` removes a gallery's files for ``--overwrite``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from songsight.errors import SongsightError
from songsight.gallery.format import (
    ERRORS_FILE,
    INDEX_DIR,
    META_FILE,
    PENDING_FILE,
    STORE_FILE,
    read_vectors,
)

__all__ = ["clear_gallery", "open_index", "update_index"]


def update_index(
    directory: Path,
    meta: dict,
    hashes: list[str],
    progress: bool = False,
    *,
    removed: Sequence[str] = (),
    before=None,
) -> str:
    """Bring the gallery's index in line with the store (whose rows have ``hashes``); returns
    the kind of search the gallery uses. ``removed``: sha256 of the photos the store just
    dropped, ``before`` the store's pyarrow Table before (a Milvus collection deletes them)."""
    from songsight.index.search import ANN_THRESHOLD

    n = len(hashes)
    requested = meta["index"]["requested"]
    if requested == "milvus":
        from songsight.gallery.milvus.sync import forget_rows, sync_milvus

        if removed:
            forget_rows(directory, meta, list(removed), before)
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
    vectors = read_vectors(directory, start=done)
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


def open_index(directory: Path, meta: dict, metadata):
    """The index a gallery is searched with, by store row number: its Milvus collection, its
    saved HNSW graph (rebuilt in memory when older than the store), or exact search.
    ``metadata``: the gallery's table (``sha256`` and ``species`` per row, row = id)."""
    hashes = metadata["sha256"].tolist()
    index = None
    if meta["index"].get("kind") == "milvus":
        from songsight.gallery.milvus.collection import open_milvus_index

        index = open_milvus_index(directory, meta, metadata)
    if meta["index"].get("kind") == "hnsw":
        index = _load_valid_index(directory / INDEX_DIR, hashes)
        if index is not None and len(index) != len(hashes):
            index = None
        if index is None:
            # A graph older than the store (e.g. an add interrupted before the index
            # update): rebuild it in memory, correct if slower to open.
            index = _new_hnsw(meta, read_vectors(directory))
    if index is None:
        from songsight.index.search import ExactIndex

        index = ExactIndex(int(meta["image_model"]["dim"]), meta["vector_dtype"])
        vectors = read_vectors(directory)
        if len(vectors):
            index.add(vectors, np.arange(len(vectors), dtype=np.int64))
    return index


def clear_gallery(directory: Path) -> None:
    """Remove a gallery's own files (and nothing else) from ``directory``."""
    for name in (STORE_FILE, META_FILE, ERRORS_FILE, PENDING_FILE, "gallery.errors.csv"):
        (directory / name).unlink(missing_ok=True)
    for name in (STORE_FILE + ".parts", INDEX_DIR, INDEX_DIR + ".tmp", INDEX_DIR + ".old"):
        shutil.rmtree(directory / name, ignore_errors=True)
    from songsight.gallery.milvus.collection import EMBEDDED_FILE, drop_embedded

    if (directory / EMBEDDED_FILE).exists():  # the embedded Milvus file of a Milvus gallery
        drop_embedded(directory)


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
