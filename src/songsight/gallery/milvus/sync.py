"""A gallery's Milvus collection kept in step with its store: the sync after every change.

The gallery folder stays what `songsight.gallery` describes: ``gallery.parquet`` is the
record of every photo (path, sha256, species ..., vector) and what builds resume from; the
collection (`songsight.gallery.milvus.collection`) holds the same photos for search.

`sync_milvus` brings the collection in line with the store after each build, add or remove:
it inserts the rows the collection lacks (read at "Strong" consistency: the gallery is
claimed, so this is the collection's only writer), upserts those it holds with other metadata
and deletes rows no longer in the store. ``gallery.json`` records how many store rows were
synced and their digest, so a sync after an add checks only the new rows; after an
interrupted sync (the record was not written) the unsynced rows are checked by key, so a rerun
leaves no duplicate and no gap. `songsight.gallery.index.update_index` is the one caller.
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from pathlib import Path

import numpy as np

from songsight.gallery.format import STORE_FILE
from songsight.gallery.milvus.collection import FIELD_OF, SCALAR_FIELDS, open_collection
from songsight.index.milvus.collection import MilvusIndex
from songsight.index.milvus.connect import server_failures

__all__ = ["SYNC_ROWS", "forget_rows", "sync_milvus"]

# Rows per write while syncing: small enough that the progress bar moves and that a kill
# interrupts a sync between writes, large enough to keep gRPC calls few.
SYNC_ROWS = 256
# Past this many rows to check, one scan of the collection beats per-key lookups.
_SCAN_ABOVE_ROWS = 50_000


def _store_rows(directory: Path, table=None):
    """(hashes, per-row field dicts in collection names) of the store (or of ``table``, a
    store's pyarrow Table), without vectors."""
    import pyarrow.parquet as pq

    columns = ["sha256", *FIELD_OF]
    if table is None:
        table = pq.read_table(directory / STORE_FILE, columns=columns)
    table = table.select(columns).to_pydict()
    hashes = [str(h) for h in table["sha256"]]
    fields = [
        {FIELD_OF[c]: table[c][i] for c in FIELD_OF} for i in range(len(hashes))
    ]  # fmt: skip
    return hashes, fields


def _digest(hashes: list[str], fields: list[dict]) -> str:
    from songsight.provenance import stable_hash

    return stable_hash([[h, f] for h, f in zip(hashes, fields, strict=True)])


def _normal(fields: dict) -> dict:
    """Field values as Milvus returns them (unknown strings "", unknown ints -1)."""
    from songsight.index.milvus.rows import scalar_value

    return {name: scalar_value(fields.get(name), kind) for name, kind in SCALAR_FIELDS.items()}


def _held(index: MilvusIndex, hashes: list[str], rows: list[int]) -> dict[str, dict]:
    """key -> stored scalar fields, for the keys of ``rows`` the collection holds, read at
    "Strong" consistency (songsight creates its collections Strong, which the scan and the
    count use): every row a server acknowledged is seen, a killed run's included."""
    names = list(SCALAR_FIELDS)
    if len(index) == 0:
        return {}
    if len(rows) > _SCAN_ABOVE_ROWS:
        wanted = {hashes[r] for r in rows}
        return {
            r["key"]: {n: r[n] for n in names}
            for batch in index.iter_rows(names)
            for r in batch
            if r["key"] in wanted
        }
    return index.fetch([hashes[r] for r in rows], names, strong=True)


def _write_rows(
    index: MilvusIndex, directory: Path, hashes: list[str], fields: list[dict], rows: list[int],
    model: dict, progress: bool, held: Collection[str] = (),
) -> None:  # fmt: skip
    """Write store ``rows`` (ascending) with their vectors, read from the store in batches.

    Rows whose key the collection holds (``held``, read at "Strong" consistency by the only
    writer: the gallery is claimed) are upserted (their metadata changed); the others are
    inserted as new rows. Upserts alone fell far behind: Milvus Lite's slow as the collection
    grows (168 against 45 ms per 256 rows at 60k rows, load 0.7), and a server's are a delete
    plus an insert each, whose deletes set off compactions and re-indexing of every segment
    (`MilvusIndex.add`'s ``absent``)."""
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from songsight.index.store import vectors_from_column

    wanted = np.asarray(rows, np.int64)
    bar = tqdm(
        total=len(rows), desc="writing to Milvus", unit="photo", disable=not progress,
        file=sys.stderr, dynamic_ncols=True, mininterval=0.1,
    )  # fmt: skip
    model_fields = {"model_id": model["model_id"], "model_revision": model.get("revision") or ""}

    def columns(part) -> dict[str, list]:
        return {
            name: [model_fields[name] if name in model_fields else fields[r][name] for r in part]
            for name in SCALAR_FIELDS
        }

    start = 0
    with bar:
        store = pq.ParquetFile(directory / STORE_FILE)
        for batch in store.iter_batches(batch_size=SYNC_ROWS * 8, columns=["embedding"]):
            end = start + batch.num_rows
            lo, hi = np.searchsorted(wanted, [start, end])
            if hi > lo:
                vectors = vectors_from_column(batch.column(0))
                for s in range(lo, hi, SYNC_ROWS):
                    take = wanted[s : min(hi, s + SYNC_ROWS)]
                    old = np.array([hashes[r] in held for r in take], bool)
                    for part, replace in ((take[~old], False), (take[old], True)):
                        if len(part):
                            index.add(vectors[part - start], keys=[hashes[r] for r in part],
                                      fields=columns(part), replace=replace,
                                      absent=not replace)  # fmt: skip
                    bar.update(len(take))
            start = end


def sync_milvus(directory: Path, meta: dict, *, full: bool = False, progress: bool = False) -> str:
    """Bring the gallery's collection in line with its store; returns ``"milvus"``.

    Updates ``meta["index"]["milvus"]["synced"]`` (the caller writes ``gallery.json``).
    ``full`` checks every row, as after a remove or a move to another collection.
    """
    directory = Path(directory)
    hashes, fields = _store_rows(directory)
    index = open_collection(directory, meta, hashes)
    # A server lost half-way: every photo is in the store, and a rerun writes what is missing.
    again = (
        f"Every photo is stored in {directory / STORE_FILE}; once the server is back, run the "
        "same command again: it writes only what the collection lacks."
    )
    with server_failures(index.uri, again):
        _sync(index, directory, meta, hashes, fields, full, progress)
    return "milvus"


def _sync(
    index: MilvusIndex, directory: Path, meta: dict, hashes: list[str], fields: list[dict],
    full: bool, progress: bool,
) -> None:  # fmt: skip
    """`sync_milvus`'s work on the open ``index`` (closed here)."""
    config = meta["index"]["milvus"]
    n = len(hashes)
    try:
        state = config.get("synced") or {}
        m = int(state.get("rows", -1))
        prefix_ok = (
            not full and 0 <= m <= n and state.get("digest") == _digest(hashes[:m], fields[:m])
        )
        first = m if prefix_ok else 0
        todo = list(range(first, n))
        held = _held(index, hashes, todo)
        want = {r: _normal(fields[r]) for r in todo}
        model = meta["image_model"]
        for r in todo:
            want[r].update(model_id=model["model_id"], model_revision=model.get("revision") or "")
        changed = [r for r in todo if held.get(hashes[r]) != want[r]]
        if changed:
            _write_rows(index, directory, hashes, fields, changed, model, progress, set(held))
            index.flush()  # sealed segments are the ones Milvus indexes
        keep = set(hashes)
        # Every store row is in the collection now, so it holds rows the store lacks (removed
        # photos, or a collection reused) only if it holds more rows than the store: the scan
        # for them is skipped otherwise, as after every build into a new collection.
        if not prefix_ok and len(index) > len(keep):
            stale = [r["key"] for b in index.iter_rows() for r in b if r["key"] not in keep]
            index.remove(stale)
        index.tune_index()  # new build knobs (an `index move` to the same place) take effect
        config["synced"] = {"rows": n, "digest": _digest(hashes, fields)}
        config["index_type"] = index.index_type
    finally:
        index.close()


def forget_rows(directory: Path, meta: dict, removed: list[str], old_table) -> None:
    """Delete ``removed`` keys from the collection after the store dropped them (``old_table``
    is the store before). When the collection was in step with the old store, the sync record
    moves to the new store, so the sync that follows has nothing left to check."""
    config = meta["index"]["milvus"]
    old_hashes, old_fields = _store_rows(directory, old_table)
    state = config.get("synced") or {}
    in_step = state.get("rows") == len(old_hashes) and state.get("digest") == _digest(
        old_hashes, old_fields
    )
    index = open_collection(directory, meta)
    try:
        index.remove(removed)
    finally:
        index.close()
    if in_step:
        hashes, fields = _store_rows(directory)
        config["synced"] = {"rows": len(hashes), "digest": _digest(hashes, fields)}
    else:
        config.pop("synced", None)
