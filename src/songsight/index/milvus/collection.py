"""Vector search in a Milvus collection: an embedded Milvus Lite file or a Milvus server.

`MilvusIndex` answers the search contract of `songsight.index.search` (inner product, best
first, ties to the lower id, ``-inf`` / ``-1`` padding) through ``pymilvus.MilvusClient``;
Milvus proposes candidates and ``search.py`` re-ranks them exactly (the package's other
modules: `songsight.index.milvus`).

Rows are keyed by a string primary key (a gallery uses the photo's sha256, so re-adding a
photo is a no-op); without keys an int id is its own key. Keys the only writer found absent at
"Strong" consistency are inserted (``add(absent=True)``), others upserted (racing writers cannot
duplicate them; a server's upsert is a delete plus an insert, and a million deletes make it
compact and re-index every segment: docs/scale.md). Scalar fields (species, path ...) sit
beside the vectors; an ``allowed_species`` filter is pushed down to Milvus as a filter expression.

The index type follows the collection's size (`choose_index_type`): FLAT (exact) up to
``flat_threshold`` rows; past it IVF_FLAT in the embedded file, HNSW on a Milvus server and
DISKANN past ``diskann_threshold``. The embedded engine is Milvus Lite 2.5, which searches
an interim index whatever is declared (`choose_index_type`; Lite 3.x is ~8x slower, so the
``milvus`` extra keeps 2.5); a server builds what is declared. pymilvus is imported on use.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from songsight.errors import DataNotFoundError, SongsightError
from songsight.index.exact import (
    as_matrix,
    index_meta,
    read_index_meta,
    resolve_dtype,
    validate_ids,
)
from songsight.index.milvus.connect import (
    connect,
    disconnect,
    import_pymilvus,
    is_embedded,
    quiet_embedded,
    quiet_iterator,
)
from songsight.index.milvus.options import (
    MilvusSettings,
    build_index_params,
    build_search_params,
    choose_index_type,
    ideal_nlist,
)
from songsight.index.milvus.rows import (
    KEY_FIELD,
    VECTOR_FIELD,
    check_schema,
    collection_schema,
    delete_rows,
    fetch_rows,
    field_columns,
    round_to_storage,
    write_rows,
)
from songsight.index.milvus.search import SERVER_SEARCH_CONSISTENCY, search_collection
from songsight.index.milvus.vector_index import create_vector_index, held_vector_index, wait_indexed

log = logging.getLogger("songsight.milvus")

__all__ = ["MilvusIndex"]


@dataclass
class _Schema:
    dim: int
    fields: dict[str, str] = field(default_factory=dict)  # name -> "str" | "int"


class MilvusIndex:
    """A Milvus collection behind the `VectorIndex` protocol, re-ranked exactly.

    ``uri``: a ``*.db`` path (Milvus Lite, run by this process) or a server address such
    as ``http://host:19530``. ``scalar_fields``: name -> ``"str"`` or ``"int"`` columns stored
    per row (strings default to "", ints to -1). ``key_to_id`` maps primary keys back to the
    int64 ids searches return (default: keys are decimal ids), ``id_to_key`` the other way
    (None: not in the index); keys it does not know are dropped from results.
    ``ids_filter`` may turn a search's ``allowed_ids`` into one filter expression (a gallery
    turns whole species into ``species in [...]``). The collection is created on first use with ``dim``, and its index
    type follows its size; ``manage_index=False`` (many writers, e.g. Ray workers) only
    writes rows into a collection that exists, leaving both to one owner.
    """

    kind = "milvus"

    def __init__(
        self,
        dim: int,
        uri: str | Path,
        collection: str = "songsight",
        *,
        storage_dtype: str = "float32",
        metadata: dict | None = None,
        scalar_fields: Mapping[str, str] | None = None,
        settings: MilvusSettings | Mapping[str, Any] | None = None,
        key_to_id: Callable[[str], int | None] | None = None,
        id_to_key: Callable[[int], str | None] | None = None,
        ids_filter: Callable[[np.ndarray], str | None] | None = None,
        manage_index: bool = True,
    ):
        if int(dim) < 1:
            raise SongsightError(f"dim must be >= 1, got {dim}")
        self._schema = _Schema(int(dim), dict(scalar_fields or {}))
        bad = {n: t for n, t in self._schema.fields.items() if t not in ("str", "int")}
        if bad or {KEY_FIELD, VECTOR_FIELD} & set(self._schema.fields):
            raise SongsightError(
                f"scalar fields must be 'str' or 'int' and not key/embedding: {bad}"
            )
        self.uri = str(uri)
        self.collection = str(collection)
        self._dtype = resolve_dtype(storage_dtype)
        self.metadata = dict(metadata or {})
        self.settings = (
            settings if isinstance(settings, MilvusSettings) else MilvusSettings.from_dict(settings)
        )
        self.key_to_id = key_to_id or _decimal_id
        self.id_to_key = id_to_key or str
        self.ids_filter = ids_filter  # allowed ids -> one cheaper expression, or None
        self.manage_index = manage_index
        if self.embedded and (self.settings.ivf_nlist or self.settings.ivf_nprobe):
            log.warning(
                "ivf_nlist / ivf_nprobe have no effect on the embedded Milvus Lite file: it "
                "searches with Milvus's fixed interim index (docs/scale.md); use a Milvus "
                "server (--milvus-uri) to tune IVF, or --milvus-index FLAT for exact answers"
            )
        self._client = connect(self.uri)
        # A dropped index (e.g. a `Gallery` that went out of scope) frees the embedded file too.
        self._finalizer = weakref.finalize(self, disconnect, self._client, self.uri)
        self._index_type: str | None = None
        self._built: dict[str, Any] = {}  # the vector index's build parameters (nlist ...)
        if self._client.has_collection(self.collection):
            self._check_schema()
            self._index_type, self._built = held_vector_index(self._client, self.collection)
            if self._index_type is None:  # a create that the server refused half-way
                self._declare(choose_index_type(0, self.settings, self.embedded))
            # A collection is searchable only once loaded (after a restart, or a reopened file).
            self._client.load_collection(self.collection)

    # --- the collection -------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._schema.dim

    @property
    def storage_dtype(self) -> str:
        return np.dtype(self._dtype).name

    @property
    def client(self):
        """The ``pymilvus.MilvusClient`` this index talks through."""
        return self._client

    @property
    def scalar_fields(self) -> dict[str, str]:
        """name -> ``"str"`` | ``"int"``: the scalar columns beside the vectors."""
        return dict(self._schema.fields)

    @property
    def embedded(self) -> bool:
        return is_embedded(self.uri)

    @property
    def index_type(self) -> str | None:
        """The vector index Milvus holds now (None before the first row)."""
        return self._index_type

    def __len__(self) -> int:
        return self._count()

    def _count(self, **consistency) -> int:
        if self._index_type is None:
            return 0
        rows = self._client.query(self.collection, "", output_fields=["count(*)"], **consistency)
        return int(rows[0]["count(*)"])

    @property
    def _session(self) -> dict[str, str]:
        """ "Session" reads on a server (see `SERVER_SEARCH_CONSISTENCY`), for the write path's
        reads, which only save work: a key thought absent is upserted again, harmlessly."""
        return {} if self.embedded else {"consistency_level": SERVER_SEARCH_CONSISTENCY}

    def _create(self) -> None:
        schema = collection_schema(import_pymilvus(), self.dim, self._schema.fields)
        index_type = choose_index_type(0, self.settings, self.embedded)
        # Strong consistency: a search right after an add sees it (the contract of the
        # in-process backends); a server would otherwise answer from a slightly stale view.
        self._client.create_collection(self.collection, schema=schema, consistency_level="Strong")
        try:
            self._declare(index_type)
        except SongsightError:
            self._client.drop_collection(self.collection)  # no half-made collection left behind
            raise
        self._client.load_collection(self.collection)

    def _declare(self, index_type: str, n_rows: int = 0) -> None:
        self._built = build_index_params(index_type, n_rows, self.settings)
        create_vector_index(
            self._client, self.collection, self.uri, index_type, self._built, self.embedded
        )
        self._index_type = index_type

    def index_params(self) -> dict[str, Any]:
        """The vector index's build parameters as Milvus holds them (e.g. ``{"nlist": 4000}``)."""
        return dict(self._built)

    def search_params(self, n_candidates: int | None = None) -> dict[str, Any]:
        """The search-time knobs a search sends now (e.g. ``{"nprobe": 125}``)."""
        if n_candidates is None:
            n_candidates = self.settings.min_candidates
        return build_search_params(
            str(self._index_type), n_candidates, self.settings, self._built.get("nlist", 0)
        )

    def _check_schema(self) -> None:
        check_schema(self._client, self.collection, self.uri, self.dim, self._schema.fields)

    def tune_index(self) -> None:
        """Rebuild the vector index if the size or the build knobs call for another one (FLAT
        -> HNSW, IVF lists, a new ``hnsw_m``); only an index that manages the collection does."""
        if self.manage_index and self._index_type is not None:
            self._retune()

    def wait_for_index(self, timeout_s: float = 3600.0) -> float:
        """Wait until Milvus has indexed every sealed row (a server builds the index after a
        flush, in the background; until then it scans those rows); returns seconds waited.
        The embedded file builds no index (`choose_index_type`): nothing to wait for."""
        if self.embedded or self._index_type is None:
            return 0.0
        return wait_indexed(self._client, self.collection, self.uri, timeout_s)

    def _retune(self) -> None:
        """Rebuild the vector index when the size calls for another type (FLAT -> HNSW), or
        the build knobs changed (``index move`` to the same place with new options)."""
        n_rows = self._count(**self._session)
        want = choose_index_type(n_rows, self.settings, self.embedded)
        nlist = self._built.get("nlist")
        # IVF lists are retrained once the size calls for twice as many (or half), except in
        # the embedded file, which searches its interim index whatever nlist it was given.
        stale = (
            bool(nlist)
            and not self.embedded
            and not self.settings.ivf_nlist
            and not (nlist / 2 < ideal_nlist(n_rows) < nlist * 2)
        )
        wanted = build_index_params(want, n_rows, self.settings)
        if nlist and not self.settings.ivf_nlist:
            wanted["nlist"] = nlist  # lists chosen by size are retrained by `stale` alone
        if want == self._index_type and not stale and wanted == self._built:
            return
        self._client.release_collection(self.collection)
        self._client.drop_index(self.collection, VECTOR_FIELD)
        self._declare(want, n_rows)
        self._client.load_collection(self.collection)

    # --- writing ----------------------------------------------------------------------------
    def fetch(self, keys: Sequence[str], output_fields: Sequence[str] = (), strong=False) -> dict:
        """key -> ``output_fields`` of the rows of ``keys`` the collection holds; ``strong``: as
        of every write a server acknowledged (a killed writer's too), not this session's."""
        if self._index_type is None or not len(keys):
            return {}
        level = {"consistency_level": "Strong"} if strong and not self.embedded else self._session
        return fetch_rows(self._client, self.collection, keys, output_fields, **level)

    def existing_keys(self, keys: Sequence[str]) -> set[str]:
        """The subset of ``keys`` the collection holds."""
        return set(self.fetch(keys))

    def add(
        self,
        vectors: np.ndarray,
        ids: np.ndarray | Sequence[int] | None = None,
        *,
        keys: Sequence[str] | None = None,
        fields: Mapping[str, Sequence[Any]] | None = None,
        replace: bool = False,
        absent: bool = False,
    ) -> None:
        """Add `(N, D)` vectors under unique ``keys`` (default: the int64 ``ids`` as text).

        Keys the collection already holds are refused (``ids``) or, with explicit ``keys``,
        skipped: re-adding a photo is a no-op; ``replace`` overwrites them instead (new
        metadata). ``fields``: column name -> N values. ``absent``: the only writer found none
        of ``keys`` (``fetch(strong=True)``), so they are inserted."""
        arr = as_matrix(vectors, self.dim, "vectors")
        n = len(arr)
        if keys is None:
            if ids is None:
                raise SongsightError("give ids or keys for the vectors")
            keys = [str(i) for i in validate_ids(ids, n)]
            clash = self.existing_keys(keys)
            if clash:
                raise SongsightError(f"ids already in the index: {sorted(clash, key=int)[:5]}")
        else:
            keys = [str(k) for k in keys]
            if len(keys) != n or len(set(keys)) != n:
                raise SongsightError(f"keys must be {n} unique strings, one per vector")
        arr = round_to_storage(arr, self._dtype)
        columns = field_columns(self._schema.fields, fields or {}, n)
        done = self.existing_keys(keys) if ids is None and not (replace or absent) else set()
        todo = [i for i, key in enumerate(keys) if key not in done]
        if not todo:
            return
        self.ensure_collection()
        # Insert when no row can be there: the caller says so, or an embedded file (one writer).
        insert = not replace and (absent or self.embedded)
        write_rows(self._client, self.collection, keys, arr, columns, todo, absent=insert)
        if self.manage_index:
            self._retune()

    def flush(self) -> None:
        """Seal what was written into segments (Milvus indexes sealed segments)."""
        if self._index_type is not None:
            self._client.flush(self.collection)

    def drop(self) -> None:
        """Delete the collection and every row in it."""
        if self._index_type is not None:
            self._client.drop_collection(self.collection)
            self._index_type = None

    def ensure_collection(self) -> None:
        """Create the collection if it does not exist yet (only an index that manages it)."""
        if self._index_type is not None:
            return
        if not self.manage_index:
            raise SongsightError(
                f"Milvus collection {self.collection!r} does not exist at {self.uri}"
            )
        self._create()

    def remove(self, keys: Iterable[str]) -> int:
        """Delete the rows of ``keys``; returns how many the collection held."""
        keys = [str(k) for k in keys]
        held = sorted(self.existing_keys(keys))
        delete_rows(self._client, self.collection, held)
        return len(held)

    def iter_rows(self, output_fields: Sequence[str] = (), batch_rows: int = 10_000):
        """Every row's key and ``output_fields``, in batches of dicts (any order)."""
        if self._index_type is None:
            return
        with quiet_embedded(self.embedded), quiet_iterator():
            it = self._client.query_iterator(
                self.collection, batch_size=batch_rows, output_fields=[KEY_FIELD, *output_fields]
            )
            try:
                while batch := it.next():
                    yield batch
            finally:
                it.close()

    def first_row(self, filter_expr: str, output_fields: Sequence[str]) -> dict | None:
        """One row matching ``filter_expr`` (None if none): a pushed-down existence check."""
        if self._index_type is None:
            return None
        rows = self._client.query(
            self.collection, filter=filter_expr, output_fields=list(output_fields), limit=1
        )
        return dict(rows[0]) if rows else None

    # --- searching --------------------------------------------------------------------------
    # search(queries, k, allowed_ids=None, *, allowed_species=None, filter_expr=None): the
    # search path (filters pushed down, candidates, exact re-rank) is its own module.
    search = search_collection

    # --- saving -----------------------------------------------------------------------------
    def _meta(self) -> dict:
        return {
            **index_meta(self),
            "milvus": {
                "uri": str(Path(self.uri).absolute()) if self.embedded else self.uri,
                "collection": self.collection,
                "scalar_fields": self._schema.fields,
                "settings": asdict(self.settings),
            },
        }

    def save(self, path: str | Path) -> None:
        """Write ``meta.json`` naming the collection into directory ``path``; the rows stay in
        Milvus (they are written as they are added)."""
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "meta.json").write_text(json.dumps(self._meta(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> MilvusIndex:
        """Reopen the collection a `save` named."""
        meta = read_index_meta(Path(path))
        if meta.get("kind") != cls.kind:
            raise DataNotFoundError(f"{path} holds a {meta.get('kind')!r} index, not a Milvus one")
        m = meta["milvus"]
        return cls(
            meta["dim"],
            m["uri"],
            m["collection"],
            storage_dtype=meta["storage_dtype"],
            metadata=meta.get("metadata"),
            scalar_fields=m["scalar_fields"],
            settings=m["settings"],
        )

    def close(self) -> None:
        """Drop the connection; an embedded file is released for other processes."""
        self._finalizer()  # runs once, here or when the index is garbage collected


def _decimal_id(key: str) -> int | None:
    return int(key) if key.isdigit() else None
