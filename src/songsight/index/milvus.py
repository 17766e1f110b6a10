"""Vector search in a Milvus collection: an embedded Milvus Lite file or a Milvus server.

`MilvusIndex` answers the search contract of `songsight.index.search` (inner product, best
first, ties to the lower id, ``-inf`` / ``-1`` padding) through ``pymilvus.MilvusClient``.
Milvus only proposes candidates: each search asks for ``max(k * rerank_factor,
min_candidates)`` of them and orders them here by (score, id). Indexes that score from
quantised codes (`APPROXIMATE_SCORES`) return the candidates' stored float32 vectors too,
and they are re-scored exactly, so scores are the inner products exact search gives.

Rows are keyed by a string primary key (a gallery uses the photo's sha256, so re-adding a
photo is a no-op); without keys an int id is its own key. Writes are upserts of the keys the
collection lacks, so a write that was killed and is run again leaves neither duplicates nor
gaps. Scalar fields (species, path, model provenance ...) live beside the vectors, and an
``allowed_species`` filter is pushed down to Milvus as a filter expression.

The index type follows the collection's size (`choose_index_type`): FLAT (exact) up to
``flat_threshold`` rows; past it IVF_FLAT in the embedded file, HNSW on a Milvus server and
DISKANN past ``diskann_threshold``. The embedded engine is Milvus Lite 2.5 (Milvus's own C++
engine in a child process; it builds only FLAT, IVF_FLAT and AUTOINDEX). Milvus Lite 3.x, a
rewrite in Python, walks every row's key in Python on each search (0.4 s a query at 100k
vectors, measured), so the ``milvus`` extra keeps 2.5. pymilvus is imported on first use.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from songsight.errors import DataNotFoundError, SongsightError
from songsight.index.exact import (
    _as_matrix,
    _check_k,
    _index_meta,
    _read_meta,
    _resolve_dtype,
    _select_topk,
    _validate_ids,
)
from songsight.index.milvus_connect import (
    _import_pymilvus,
    connect,
    disconnect,
    is_embedded,
    quiet_embedded,
    release_embedded,
)
from songsight.index.milvus_options import (
    APPROXIMATE_SCORES,
    MilvusSettings,
    _index_params,
    _literal,
    _search_params,
    choose_index_type,
    species_filter,
)

# MilvusSettings, choose_index_type, species_filter, is_embedded and release_embedded are
# re-exported: callers need only this module.
__all__ = [
    "MilvusIndex",
    "MilvusSettings",
    "choose_index_type",
    "is_embedded",
    "release_embedded",
    "species_filter",
]

KEY_FIELD = "key"
VECTOR_FIELD = "embedding"
_KEY_MAX_CHARS = 128
_TEXT_MAX_CHARS = 2048
# Keys per `key in [...]` expression: keeps each request well under gRPC's message limit.
_KEYS_PER_QUERY = 1000
_ROWS_PER_WRITE = 2000
# Keys in one search's `key in [...]` filter; larger allowed sets are searched in chunks.
_KEYS_PER_FILTER = 10_000
# Bytes of candidate vectors in one search reply (gRPC caps a message; 32 MiB is well under).
_REPLY_BYTES = 32 << 20


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
        self._dtype = _resolve_dtype(storage_dtype)
        self.metadata = dict(metadata or {})
        self.settings = (
            settings if isinstance(settings, MilvusSettings) else MilvusSettings.from_dict(settings)
        )
        self.key_to_id = key_to_id or _decimal_id
        self.id_to_key = id_to_key or str
        self.ids_filter = ids_filter  # allowed ids -> one cheaper expression, or None
        self.manage_index = manage_index
        self._client = connect(self.uri)
        # A dropped index (e.g. a `Gallery` that went out of scope) frees the embedded file too.
        self._finalizer = weakref.finalize(self, disconnect, self._client, self.uri)
        self._index_type: str | None = None
        if self._client.has_collection(self.collection):
            self._check_schema()
            self._index_type = self._current_index_type()
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
    def embedded(self) -> bool:
        return is_embedded(self.uri)

    @property
    def index_type(self) -> str | None:
        """The vector index Milvus holds now (None before the first row)."""
        return self._index_type

    def __len__(self) -> int:
        if self._index_type is None:
            return 0
        rows = self._client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def _create(self) -> None:
        pymilvus = _import_pymilvus()
        types = {"str": pymilvus.DataType.VARCHAR, "int": pymilvus.DataType.INT64}
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(KEY_FIELD, pymilvus.DataType.VARCHAR, is_primary=True, max_length=_KEY_MAX_CHARS)  # fmt: skip
        schema.add_field(VECTOR_FIELD, pymilvus.DataType.FLOAT_VECTOR, dim=self.dim)
        for name, kind in self._schema.fields.items():
            extra = {"max_length": _TEXT_MAX_CHARS} if kind == "str" else {}
            schema.add_field(name, types[kind], **extra)
        index_type = choose_index_type(0, self.settings, self.embedded)
        # Strong consistency: a search right after an add sees it (the contract of the
        # in-process backends); a server would otherwise answer from a slightly stale view.
        with quiet_embedded(self.embedded):
            self._client.create_collection(
                self.collection,
                schema=schema,
                index_params=self._index_params(index_type, 0),
                consistency_level="Strong",
            )
        self._index_type = index_type

    def _index_params(self, index_type: str, n_rows: int):
        params = self._client.prepare_index_params()
        params.add_index(
            field_name=VECTOR_FIELD,
            index_type=index_type,
            metric_type="IP",
            params=_index_params(index_type, n_rows, self.settings),
        )
        return params

    def _current_index_type(self) -> str:
        info = self._client.describe_index(self.collection, VECTOR_FIELD)
        return str(info.get("index_type") or "FLAT")

    def _check_schema(self) -> None:
        info = self._client.describe_collection(self.collection)
        fields = {f["name"]: f for f in info["fields"]}
        vec = fields.get(VECTOR_FIELD)
        if KEY_FIELD not in fields or vec is None:
            raise SongsightError(
                f"Milvus collection {self.collection!r} at {self.uri} was not made by songsight "
                f"(no {KEY_FIELD!r} key and {VECTOR_FIELD!r} vector); pick another --collection"
            )
        have = int(vec.get("params", {}).get("dim", 0))
        if have != self.dim:
            raise SongsightError(
                f"Milvus collection {self.collection!r} holds {have}-d vectors, "
                f"this index {self.dim}-d"
            )
        missing = sorted(set(self._schema.fields) - set(fields))
        if missing:
            raise SongsightError(
                f"Milvus collection {self.collection!r} lacks the fields {missing}; "
                "pick another --collection"
            )

    def _retune(self) -> None:
        """Rebuild the vector index when the size calls for another type (FLAT -> HNSW)."""
        want = choose_index_type(len(self), self.settings, self.embedded)
        if want == self._index_type:
            return
        self._client.release_collection(self.collection)
        self._client.drop_index(self.collection, VECTOR_FIELD)
        with quiet_embedded(self.embedded):
            self._client.create_index(self.collection, self._index_params(want, len(self)))
        self._client.load_collection(self.collection)
        self._index_type = want

    # --- writing ----------------------------------------------------------------------------
    def fetch(self, keys: Sequence[str], output_fields: Sequence[str] = ()) -> dict[str, dict]:
        """key -> ``output_fields`` of the rows of ``keys`` the collection holds."""
        found: dict[str, dict] = {}
        if self._index_type is None or not len(keys):
            return found
        keys = list(keys)
        for start in range(0, len(keys), _KEYS_PER_QUERY):
            chunk = keys[start : start + _KEYS_PER_QUERY]
            expr = f"{KEY_FIELD} in [{', '.join(_literal(k) for k in chunk)}]"
            rows = self._client.query(
                self.collection, filter=expr, output_fields=[KEY_FIELD, *output_fields]
            )
            found.update({str(r[KEY_FIELD]): {f: r[f] for f in output_fields} for r in rows})
        return found

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
    ) -> None:
        """Add `(N, D)` vectors under unique ``keys`` (default: the int64 ``ids`` as text).

        Keys the collection already holds are refused (``ids``) or, with explicit ``keys``,
        skipped: re-adding a photo is a no-op; ``replace`` overwrites them instead (new
        metadata). ``fields``: column name -> N values.
        """
        arr = _as_matrix(vectors, self.dim, "vectors")
        n = len(arr)
        if keys is None:
            if ids is None:
                raise SongsightError("give ids or keys for the vectors")
            keys = [str(i) for i in _validate_ids(ids, n)]
            clash = self.existing_keys(keys)
            if clash:
                raise SongsightError(f"ids already in the index: {sorted(clash, key=int)[:5]}")
        else:
            keys = [str(k) for k in keys]
            if len(keys) != n or len(set(keys)) != n:
                raise SongsightError(f"keys must be {n} unique strings, one per vector")
        arr = _round_to_storage(arr, self._dtype)
        columns = self._columns(fields or {}, n)
        done = self.existing_keys(keys) if ids is None and not replace else set()
        todo = [i for i, key in enumerate(keys) if key not in done]
        if not todo:
            return
        self.ensure_collection()
        for start in range(0, len(todo), _ROWS_PER_WRITE):
            rows = []
            for i in todo[start : start + _ROWS_PER_WRITE]:
                row = {KEY_FIELD: keys[i], VECTOR_FIELD: arr[i]}
                row.update({name: values[i] for name, values in columns.items()})
                rows.append(row)
            # Upsert, not insert: a Milvus server keeps duplicate primary keys on insert, and
            # two writers (Ray workers) may race on the same photo.
            self._client.upsert(self.collection, rows)
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

    def _columns(self, fields: Mapping[str, Sequence[Any]], n: int) -> dict[str, list]:
        unknown = sorted(set(fields) - set(self._schema.fields))
        if unknown:
            raise SongsightError(f"unknown fields {unknown}; the collection has {sorted(self._schema.fields)}")  # fmt: skip
        out: dict[str, list] = {}
        for name, kind in self._schema.fields.items():
            values = list(fields.get(name, [None] * n))
            if len(values) != n:
                raise SongsightError(f"field {name!r} has {len(values)} values for {n} vectors")
            out[name] = [_scalar(v, kind) for v in values]
        return out

    def remove(self, keys: Iterable[str]) -> int:
        """Delete the rows of ``keys``; returns how many the collection held."""
        keys = [str(k) for k in keys]
        held = sorted(self.existing_keys(keys))
        for start in range(0, len(held), _KEYS_PER_QUERY):
            chunk = held[start : start + _KEYS_PER_QUERY]
            expr = f"{KEY_FIELD} in [{', '.join(_literal(k) for k in chunk)}]"
            self._client.delete(self.collection, filter=expr)
        return len(held)

    def iter_rows(self, output_fields: Sequence[str] = (), batch_rows: int = 10_000):
        """Every row's key and ``output_fields``, in batches of dicts (any order)."""
        if self._index_type is None:
            return
        with quiet_embedded(self.embedded):
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
    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed_ids: np.ndarray | Sequence[int] | None = None,
        *,
        allowed_species: Collection[str] | None = None,
        filter_expr: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`(Q, D)` -> scores `(Q, k)` float32, ids `(Q, k)` int64; exact scores, ANN recall.

        Filters run inside Milvus, as filter expressions: ``allowed_ids`` (only these ids;
        ids the index does not hold are ignored) through ``ids_filter`` (by default ``key in
        [...]``, in chunks whose answers are merged), ``allowed_species`` (names in the
        ``species`` field) and ``filter_expr`` (any Milvus expression).
        """
        k = _check_k(k)
        queries = _as_matrix(queries, self.dim, "queries")
        n_queries = len(queries)
        out_scores = np.full((n_queries, k), -np.inf, np.float32)
        out_ids = np.full((n_queries, k), -1, np.int64)
        exprs = [f"({filter_expr})"] if filter_expr else []
        if allowed_species is not None:
            if "species" not in self._schema.fields:
                raise SongsightError("this Milvus collection has no species field to filter by")
            if not len(allowed_species):
                return out_scores, out_ids  # nothing allowed: nothing found
            exprs.append(species_filter(allowed_species))
        id_exprs: list[str | None] = [None]
        if allowed_ids is not None:
            id_exprs = self._ids_filters(allowed_ids)
            if not id_exprs:
                return out_scores, out_ids
        if n_queries == 0 or self._index_type is None:
            return out_scores, out_ids
        found: list[tuple[list, list]] = [([], []) for _ in range(n_queries)]
        for id_expr in id_exprs:
            self._candidates(queries, k, " and ".join([*exprs, *([id_expr] if id_expr else [])]), found)  # fmt: skip
        for q, (ids, scores) in enumerate(found):
            if ids:
                # Ordered again by (score, id): the contract's tie-break, whatever Milvus did.
                s, i = _select_topk(
                    np.asarray(scores, np.float32)[None], np.asarray(ids, np.int64)[None], k
                )
                out_scores[q], out_ids[q] = s[0], i[0]
        return out_scores, out_ids

    def _ids_filters(self, allowed_ids) -> list[str]:
        """Filter expressions that together allow exactly ``allowed_ids`` (none: empty)."""
        arr = np.asarray(allowed_ids)
        if arr.ndim != 1 or (len(arr) and not np.issubdtype(arr.dtype, np.integer)):
            raise SongsightError(f"allowed_ids must be a 1-D array of ids, got {arr.dtype} {arr.shape}")  # fmt: skip
        arr = np.unique(arr.astype(np.int64, copy=False))
        if self.ids_filter is not None:
            expr = self.ids_filter(arr)
            if expr is not None:
                return [expr]
        keys = [key for key in map(self.id_to_key, arr.tolist()) if key is not None]
        return [
            f"{KEY_FIELD} in [{', '.join(_literal(k) for k in keys[i : i + _KEYS_PER_FILTER])}]"
            for i in range(0, len(keys), _KEYS_PER_FILTER)
        ]

    def _candidates(self, queries: np.ndarray, k: int, expr: str, found: list) -> None:
        """Append each query's candidates (ids, exact scores) under ``expr`` to ``found``."""
        n_candidates = max(k * self.settings.rerank_factor, self.settings.min_candidates)
        rescore = self._index_type in APPROXIMATE_SCORES
        # Answers that carry their candidates' vectors: bound one reply's size.
        step = max(1, _REPLY_BYTES // (n_candidates * self.dim * 4)) if rescore else len(queries)
        for q0 in range(0, len(queries), step):
            hits = self._client.search(
                self.collection,
                data=list(queries[q0 : q0 + step]),
                filter=expr,
                limit=n_candidates,
                output_fields=[VECTOR_FIELD] if rescore else [],
                anns_field=VECTOR_FIELD,
                search_params={
                    "metric_type": "IP",
                    "params": _search_params(self._index_type, n_candidates, self.settings),
                },
            )
            for q, row_hits in enumerate(hits, start=q0):
                ids, scores = found[q]
                for hit in row_hits:
                    image_id = self.key_to_id(str(hit.get("key", hit.get("id"))))
                    if image_id is None:
                        continue  # a row this reader does not know (added after it opened)
                    ids.append(image_id)
                    if rescore:  # the exact re-rank: float32 inner product, stored vector
                        vector = np.asarray(hit["entity"][VECTOR_FIELD], np.float32)
                        scores.append(float(vector @ queries[q]))
                    else:
                        scores.append(hit["distance"])

    # --- saving -----------------------------------------------------------------------------
    def _meta(self) -> dict:
        return {
            **_index_meta(self),
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
        meta = _read_meta(Path(path))
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


def _round_to_storage(arr: np.ndarray, dtype: type[np.floating]) -> np.ndarray:
    """float16 storage keeps float16-rounded values (in Milvus's float32 vector field), so
    scores match the exact index's over the same float16 rows."""
    if dtype is not np.float16:
        return arr
    with np.errstate(over="ignore"):
        rounded = arr.astype(np.float16)
    if not np.isfinite(rounded).all():
        raise SongsightError("vectors overflow float16 storage; store them as float32")
    return rounded.astype(np.float32)


def _scalar(value: Any, kind: str) -> Any:
    """A field value as Milvus stores it: unknown strings are "", unknown ints -1."""
    import pandas as pd

    blank = value is None or (not isinstance(value, (list, tuple)) and bool(pd.isna(value)))
    if kind == "int":
        return -1 if blank else int(value)
    return "" if blank or not str(value).strip() else str(value)
