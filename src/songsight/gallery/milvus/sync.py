"""A gallery searched through Milvus: the collection kept in step with the gallery's store.

The gallery folder stays what `songsight.gallery` describes: ``gallery.parquet`` is the
record of every photo (path, sha256, species ..., vector) and what builds resume from. With
``--backend milvus`` the vectors are also rows of a Milvus collection, keyed by sha256, with
``path``, ``label``, ``species``, ``common_name``, ``genus``, ``family``, ``taxon_order`` and
the image model's ``model_id`` / ``model_revision`` as scalar fields. The collection is an
embedded Milvus Lite file, ``DIR/milvus.db``, unless ``gallery.json`` names a server URI.

`sync_milvus` brings the collection in line with the store after each build, add or remove:
it writes (upserts) the rows the collection lacks or holds with other metadata and deletes
rows no longer in the store. ``gallery.json`` records how many store rows were synced and
their digest, so a sync after an add checks only the new rows; after an interrupted sync
(the record was not written) the unsynced rows are checked by key, so a rerun leaves no
duplicate and no gap. Searches map sha256 keys back to store row numbers, the gallery's ids.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Collection
from pathlib import Path

import numpy as np

from songsight.errors import ProvenanceMismatchError, SongsightError
from songsight.gallery.format import STORE_FILE
from songsight.gallery.manifest import MANIFEST_COLUMNS, _blank
from songsight.index.milvus.collection import MilvusIndex
from songsight.index.milvus.connect import import_pymilvus, release_embedded, server_failures
from songsight.index.milvus.options import MilvusSettings, species_filter, string_literal

__all__ = ["DEFAULT_COLLECTION", "EMBEDDED_FILE", "milvus_config", "open_milvus_index",
           "sync_milvus"]  # fmt: skip

EMBEDDED_FILE = "milvus.db"
DEFAULT_COLLECTION = "songsight_gallery"
# Store column -> collection field ("order" is a word of Milvus's expression language). The
# ranks above order are not fields: they are read from the store, and collections made before
# the store kept them stay as they are.
_FIELD_OF = {c: ("taxon_order" if c == "order" else c) for c in ("path", *MANIFEST_COLUMNS)}
SCALAR_FIELDS = {
    **{f: ("int" if c == "label" else "str") for c, f in _FIELD_OF.items()},
    "model_id": "str",
    "model_revision": "str",
}
_COLLECTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
# Rows per upsert while syncing: small enough that the progress bar moves and that a kill
# interrupts a sync between writes, large enough to keep gRPC calls few.
_SYNC_ROWS = 256
# Past this many rows to check, one scan of the collection beats per-key lookups.
_SCAN_ABOVE_ROWS = 50_000


def milvus_config(
    uri: str | None = None, collection: str | None = None, settings: dict | None = None
) -> dict:
    """The ``gallery.json`` ``index.milvus`` entry: server ``uri`` (None: the embedded file),
    ``collection`` name and `MilvusSettings` overrides; validated here."""
    name = collection or DEFAULT_COLLECTION
    if not _COLLECTION_NAME.match(name):
        raise SongsightError(
            f"Milvus collection names are letters, digits and _ (not starting with a digit), "
            f"at most 255 characters: got {name!r}"
        )
    if uri is not None and str(uri).endswith(".db"):
        raise SongsightError(
            f"--milvus-uri names a server (e.g. http://host:19530); {uri} looks like a Milvus "
            "Lite file, which a gallery keeps inside its folder without --milvus-uri"
        )
    # Refuse a missing extra and unknown or bad knobs before any photo is embedded.
    import_pymilvus()
    MilvusSettings.from_dict(settings)
    return {"uri": uri, "collection": name, "settings": dict(settings or {})}


def check_backend(directory: Path, meta: dict, milvus: dict | None, ann: bool | None) -> None:
    """For an existing gallery: refuse a Milvus config naming another place than its own
    (that is `index move`), and ``--ann`` (songsight's HNSW) on a Milvus gallery."""
    held = meta["index"].get("milvus")
    if milvus is not None and {k: (held or {}).get(k) for k in milvus} != milvus:
        where = f"Milvus collection {held['collection']!r}" if held else "songsight's own index"
        raise SongsightError(
            f"{directory} is searched through {where}; to change that, run "
            f"`songsight index move --gallery {directory} ...`"
        )
    if ann and held:
        raise SongsightError(
            "--ann applies to songsight's own index; this gallery is searched through Milvus"
        )


def _uri(directory: Path, config: dict) -> str:
    return config.get("uri") or str(Path(directory).absolute() / EMBEDDED_FILE)


def _open(
    directory: Path, meta: dict, hashes: list[str] | None = None, species: list | None = None
) -> MilvusIndex:
    config = meta["index"]["milvus"]
    hashes = list(hashes or [])
    rows = {h: i for i, h in enumerate(hashes)}

    def id_to_key(i: int) -> str | None:
        return hashes[i] if 0 <= i < len(hashes) else None

    index = MilvusIndex(
        int(meta["image_model"]["dim"]),
        _uri(directory, config),
        config["collection"],
        storage_dtype=meta["vector_dtype"],
        scalar_fields=SCALAR_FIELDS,
        settings=config.get("settings"),
        key_to_id=rows.get,
        id_to_key=id_to_key,
        ids_filter=_species_shortcut(species) if species is not None else None,
    )
    _check_model(index, meta["image_model"])
    return index


def _check_model(index: MilvusIndex, model: dict) -> None:
    """Refuse a collection holding rows of another image model (checked inside Milvus)."""
    expr = (
        f"model_id != {string_literal(model['model_id'])} or "
        f"model_revision != {string_literal(model.get('revision') or '')}"
    )
    other = index.first_row(expr, ["model_id", "model_revision"])
    if other is not None:
        raise ProvenanceMismatchError(
            f"Milvus collection {index.collection!r} at {index.uri} holds photos embedded with "
            f"{other['model_id']} at revision {other['model_revision']}, but this gallery uses "
            f"{model['model_id']} at revision {model.get('revision')}: their vectors are not "
            "comparable. Pick another --collection."
        )


def _species_shortcut(species: list):
    """allowed ids -> ``species in [...]`` when they are every photo of some species (how a
    species list arrives), else None (the index then filters by key)."""
    import pandas as pd

    names = pd.Series(species, dtype=object)
    sizes = names.value_counts(dropna=True)

    def ids_filter(allowed: np.ndarray) -> str | None:
        rows = allowed[(allowed >= 0) & (allowed < len(names))]
        chosen = names.iloc[rows]
        if not len(rows) or chosen.isna().any():
            return None
        wanted = set(chosen)
        if int(sizes[list(wanted)].sum()) != len(rows):
            return None
        return species_filter(wanted)

    return ids_filter


def probe(directory: Path, meta: dict) -> None:
    """Open and close the gallery's collection: raises what a sync would raise (file held by
    another process, server out of reach, photos of another model) before work is done."""
    _open(directory, meta).close()


def open_milvus_index(directory: Path, meta: dict, metadata) -> MilvusIndex:
    """The gallery's collection, searching by store row number: ``metadata`` is the gallery's
    table (``sha256`` and ``species`` per row, row = id)."""
    species = [None if _blank(v) else str(v) for v in metadata["species"]]
    return _open(directory, meta, list(metadata["sha256"]), species)


def _store_rows(directory: Path, table=None):
    """(hashes, per-row field dicts in collection names) of the store (or of ``table``, a
    store's pyarrow Table), without vectors."""
    import pyarrow.parquet as pq

    columns = ["sha256", *_FIELD_OF]
    if table is None:
        table = pq.read_table(directory / STORE_FILE, columns=columns)
    table = table.select(columns).to_pydict()
    hashes = [str(h) for h in table["sha256"]]
    fields = [
        {_FIELD_OF[c]: table[c][i] for c in _FIELD_OF} for i in range(len(hashes))
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
    """key -> stored scalar fields, for the keys of ``rows`` the collection holds."""
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
    return index.fetch([hashes[r] for r in rows], names)


def _write_rows(
    index: MilvusIndex, directory: Path, hashes: list[str], fields: list[dict], rows: list[int],
    model: dict, progress: bool, held: Collection[str] = (),
) -> None:  # fmt: skip
    """Write store ``rows`` (ascending) with their vectors, read from the store in batches.

    Rows whose key the collection holds (``held``) are upserted (their metadata changed);
    the others are added as new rows, which the embedded file inserts: Milvus Lite's upsert
    slows as the collection grows (168 against 45 ms per 256 rows at 60k rows, load 0.7), so a
    gallery of a million photos written by upserts alone fell far behind the insert rate."""
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
        for batch in store.iter_batches(batch_size=_SYNC_ROWS * 8, columns=["embedding"]):
            end = start + batch.num_rows
            lo, hi = np.searchsorted(wanted, [start, end])
            if hi > lo:
                vectors = vectors_from_column(batch.column(0))
                for s in range(lo, hi, _SYNC_ROWS):
                    take = wanted[s : min(hi, s + _SYNC_ROWS)]
                    old = np.array([hashes[r] in held for r in take], bool)
                    for part, replace in ((take[~old], False), (take[old], True)):
                        if len(part):
                            index.add(vectors[part - start], keys=[hashes[r] for r in part],
                                      fields=columns(part), replace=replace)  # fmt: skip
                    bar.update(len(take))
            start = end


def sync_milvus(directory: Path, meta: dict, *, full: bool = False, progress: bool = False) -> str:
    """Bring the gallery's collection in line with its store; returns ``"milvus"``.

    Updates ``meta["index"]["milvus"]["synced"]`` (the caller writes ``gallery.json``).
    ``full`` checks every row, as after a remove or a move to another collection.
    """
    directory = Path(directory)
    hashes, fields = _store_rows(directory)
    index = _open(directory, meta, hashes)
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
    index = _open(directory, meta)
    try:
        index.remove(removed)
    finally:
        index.close()
    if in_step:
        hashes, fields = _store_rows(directory)
        config["synced"] = {"rows": len(hashes), "digest": _digest(hashes, fields)}
    else:
        config.pop("synced", None)


def ray_sink(directory: Path, meta: dict, pending=None) -> tuple[dict, MilvusIndex]:
    """What Ray workers need to write photos straight into the gallery's collection
    (`RowWriter`), and the driver's open index, to close once the job is over: for the
    embedded file it is the server the workers write through (on this machine).

    ``pending``: the manifest metadata parked for this run (DataFrame with ``path`` and
    `MANIFEST_COLUMNS`), written with each photo so the rows arrive complete.
    """
    index = _open(directory, meta)
    index.ensure_collection()
    uri = index.uri
    if index.embedded:
        from milvus_lite.server_manager import server_manager_instance

        uri = server_manager_instance.start_and_get_uri(str(index.uri))  # this one, reused
    by_path = {}
    if pending is not None and len(pending):
        for rec in pending.drop_duplicates("path", keep="last").to_dict("records"):
            by_path[str(rec["path"])] = {_FIELD_OF[c]: rec.get(c) for c in MANIFEST_COLUMNS}
    model = meta["image_model"]
    sink = {
        "uri": uri,
        "collection": index.collection,
        "dim": index.dim,
        "storage_dtype": index.storage_dtype,
        "settings": meta["index"]["milvus"].get("settings") or {},
        "fields_by_path": by_path,
        "model_id": model["model_id"],
        "model_revision": model.get("revision") or "",
        "writer": RowWriter,  # built on each worker with this sink
    }
    return sink, index


class RowWriter:
    """One Ray worker's connection: writes embedded photos into the collection by sha256
    (photos it already holds are skipped), leaving the index type to the driver."""

    def __init__(self, sink: dict):
        self.sink = sink
        self.index = MilvusIndex(
            sink["dim"], sink["uri"], sink["collection"], storage_dtype=sink["storage_dtype"],
            scalar_fields=SCALAR_FIELDS, settings=sink["settings"], manage_index=False,
        )  # fmt: skip

    def write(self, paths: list[str], hashes: list[str], vectors: np.ndarray) -> None:
        """``vectors (N, D)`` of the photos at ``paths`` with content ``hashes``."""
        first = {h: i for i, h in reversed(list(enumerate(hashes)))}  # a photo stored twice
        rows = sorted(first.values())
        if not rows:
            return
        known = self.sink["fields_by_path"]
        model = {k: self.sink[k] for k in ("model_id", "model_revision")}

        def value(name: str, r: int):
            if name == "path":
                return paths[r]
            return model[name] if name in model else known.get(paths[r], {}).get(name)

        fields = {name: [value(name, r) for r in rows] for name in SCALAR_FIELDS}
        self.index.add(vectors[rows], keys=[hashes[r] for r in rows], fields=fields)


def drop_embedded(directory: Path) -> None:
    """Release and delete the gallery's embedded Milvus file (``--overwrite``)."""
    import shutil

    path = Path(directory).absolute() / EMBEDDED_FILE
    release_embedded(str(path))
    # Milvus Lite 2.5 keeps a file and a lock beside it (3.x a folder).
    for p in (path, path.with_name(f".{EMBEDDED_FILE}.lock")):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
