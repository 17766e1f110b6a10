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

import contextlib
import json
import logging
import math
import os
import warnings
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from songsight.errors import DataNotFoundError, SongsightError
from songsight.index.exact import (
    _FORMAT,
    _FORMAT_VERSION,
    _as_matrix,
    _check_k,
    _read_meta,
    _resolve_dtype,
    _select_topk,
)

__all__ = ["MilvusIndex", "MilvusSettings", "choose_index_type", "species_filter"]

KEY_FIELD = "key"
VECTOR_FIELD = "embedding"
_KEY_MAX_CHARS = 128
_TEXT_MAX_CHARS = 2048
# Keys per `key in [...]` expression: keeps each request well under gRPC's message limit.
_KEYS_PER_QUERY = 1000
_ROWS_PER_WRITE = 2000
# Bytes of candidate vectors in one search reply (gRPC caps a message; 32 MiB is well under).
_REPLY_BYTES = 32 << 20
INDEX_TYPES = ("auto", "FLAT", "HNSW", "HNSW_SQ", "IVF_FLAT", "IVF_SQ8", "DISKANN", "AUTOINDEX")


def _import_pymilvus():
    try:
        import pymilvus
    except ImportError as err:
        raise SongsightError(
            "the Milvus backend needs pymilvus and milvus-lite; install them with: "
            "pip install 'songsight[milvus]'"
        ) from err
    return pymilvus


@dataclass
class MilvusSettings:
    """Index and search knobs; ``index_type="auto"`` picks by size (`choose_index_type`).

    ``hnsw_m`` / ``hnsw_ef_construction`` build the graph and ``hnsw_ef`` searches it (raised
    to the candidate count when lower); ``ivf_nlist`` (0: ~4 * sqrt(N) at build time) and
    ``ivf_nprobe`` (lists searched per query) are IVF's; ``diskann_search_list`` is
    DiskANN's. The HNSW defaults are those of `songsight.index.hnsw.HNSWIndex`, chosen by
    benchmarks/search.py.
    """

    index_type: str = "auto"
    flat_threshold: int = 200_000
    diskann_threshold: int = 20_000_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 256
    hnsw_ef: int = 256
    ivf_nlist: int = 0
    ivf_nprobe: int = 32
    diskann_search_list: int = 200
    rerank_factor: int = 4
    min_candidates: int = 100

    def __post_init__(self) -> None:
        self.index_type = str(self.index_type)
        if self.index_type.upper() in INDEX_TYPES:
            self.index_type = self.index_type.upper() if self.index_type != "auto" else "auto"
        if self.index_type not in INDEX_TYPES:
            raise SongsightError(
                f"Milvus index type must be one of {', '.join(INDEX_TYPES)}, "
                f"got {self.index_type!r}"
            )
        for name, value in asdict(self).items():
            if name != "index_type" and (not isinstance(value, int) or value < 0):
                raise SongsightError(f"Milvus setting {name} must be an integer >= 0")
        if self.rerank_factor < 1 or self.min_candidates < 1:
            raise SongsightError("rerank_factor and min_candidates must be >= 1")

    @classmethod
    def from_dict(cls, options: Mapping[str, Any] | None) -> MilvusSettings:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options or {}) - known)
        if unknown:
            raise SongsightError(f"unknown Milvus settings {unknown}; known: {sorted(known)}")
        return cls(**dict(options or {}))


# Index types whose distances are not exact inner products of the stored float32 vectors
# (quantised codes; AUTOINDEX may be, on managed Milvus): their candidates are re-scored here
# from the vectors Milvus returns with them. FLAT, IVF_FLAT, HNSW and DISKANN (which re-ranks
# with full vectors itself) score exactly, and Milvus Lite fetches vectors very slowly (a
# reply of 100 vectors: 0.29 s against 0.016 s without, measured at 5k rows), so those are
# only re-ordered by (score, id).
APPROXIMATE_SCORES = frozenset({"IVF_SQ8", "IVF_PQ", "HNSW_SQ", "HNSW_PQ", "AUTOINDEX"})
# What Milvus Lite 2.5 ("local mode") builds; a server offers every type in INDEX_TYPES.
EMBEDDED_INDEX_TYPES = ("FLAT", "IVF_FLAT", "AUTOINDEX")


def choose_index_type(n_rows: int, settings: MilvusSettings, embedded: bool) -> str:
    """The Milvus index type for a collection of ``n_rows``: FLAT while exact search is still
    interactive (same threshold as `search.ANN_THRESHOLD`); past it IVF_FLAT in the embedded
    file (the only ANN index Milvus Lite builds), HNSW on a server, and DISKANN past
    ``diskann_threshold``, where an in-memory graph (~5 KB a 768-d vector) stops fitting
    one query node."""
    if settings.index_type != "auto":
        if embedded and settings.index_type not in EMBEDDED_INDEX_TYPES:
            raise SongsightError(
                f"the embedded Milvus file builds only {', '.join(EMBEDDED_INDEX_TYPES)} "
                f"indexes, not {settings.index_type}; use a Milvus server (--milvus-uri) for it"
            )
        return settings.index_type
    if n_rows <= settings.flat_threshold:
        return "FLAT"
    if embedded:
        return "IVF_FLAT"
    return "DISKANN" if n_rows > settings.diskann_threshold else "HNSW"


def _index_params(index_type: str, n_rows: int, settings: MilvusSettings) -> dict:
    if index_type in ("HNSW", "HNSW_SQ"):
        return {"M": settings.hnsw_m, "efConstruction": settings.hnsw_ef_construction}
    if index_type in ("IVF_FLAT", "IVF_SQ8"):
        nlist = settings.ivf_nlist or int(min(65_536, max(16, 4 * math.sqrt(max(n_rows, 1)))))
        return {"nlist": nlist}
    return {}


def _search_params(index_type: str, n_candidates: int, settings: MilvusSettings) -> dict:
    if index_type in ("HNSW", "HNSW_SQ"):
        # ef below the candidate count would cap what the graph can return.
        return {"ef": max(settings.hnsw_ef, n_candidates)}
    if index_type in ("IVF_FLAT", "IVF_SQ8"):
        return {"nprobe": settings.ivf_nprobe}
    if index_type == "DISKANN":
        return {"search_list": max(settings.diskann_search_list, n_candidates)}
    return {}


def _literal(value: str) -> str:
    """A Milvus expression string literal (JSON's escaping: quotes and backslashes)."""
    return json.dumps(str(value), ensure_ascii=False)


def species_filter(allowed_species: Iterable[str], field_name: str = "species") -> str:
    """``species in ["A", "B"]``: the allowed-species list as a Milvus filter expression."""
    names = sorted({str(s) for s in allowed_species})
    return f"{field_name} in [{', '.join(_literal(s) for s in names)}]"


def is_embedded(uri: str) -> bool:
    """Whether ``uri`` names a Milvus Lite file (``*.db``) rather than a server."""
    return str(uri).endswith(".db")


@dataclass
class _Schema:
    dim: int
    fields: dict[str, str] = field(default_factory=dict)  # name -> "str" | "int"


def _connect(uri: str):
    pymilvus = _import_pymilvus()
    if is_embedded(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # Milvus Lite 2.5 imports the deprecated pkg_resources: not the user's business.
            warnings.simplefilter("ignore", UserWarning)
            import milvus_lite  # noqa: F401
    try:
        # A server's credentials come from the environment, never from gallery.json.
        token = "" if is_embedded(uri) else os.environ.get("MILVUS_TOKEN", "")
        client = pymilvus.MilvusClient(uri=str(uri), token=token)
        if is_embedded(uri):
            key = str(Path(uri).absolute())
            _OPEN_EMBEDDED[key] = _OPEN_EMBEDDED.get(key, 0) + 1
        return client
    except Exception as err:  # pymilvus raises its own types for every connection failure
        if is_embedded(uri):
            raise SongsightError(
                f"cannot open the embedded Milvus file {uri}: another process holds it (a "
                "running `songsight serve` or `index add`?) or it is damaged; stop that "
                f"process and retry ({type(err).__name__}: {err})"
            ) from None
        raise SongsightError(
            f"cannot reach the Milvus server at {uri}: {type(err).__name__}: {err}"
        ) from None


# MilvusIndex objects open on each embedded file in this process: the file's in-process
# server (and its lock) is released when the last one closes.
_OPEN_EMBEDDED: dict[str, int] = {}


def _disconnect(client, uri: str) -> None:
    try:
        client.close()
    except Exception:  # pymilvus may already be torn down at interpreter exit
        pass
    if is_embedded(uri):
        key = str(Path(uri).absolute())
        _OPEN_EMBEDDED[key] = _OPEN_EMBEDDED.get(key, 1) - 1
        if _OPEN_EMBEDDED[key] <= 0:
            release_embedded(uri)


def release_embedded(uri: str) -> None:
    """Stop this process's Milvus Lite server for ``uri`` (releases the file's lock)."""
    if not is_embedded(uri):
        return
    _OPEN_EMBEDDED.pop(str(Path(uri).absolute()), None)
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        return
    server_manager_instance.release_server(str(uri))


class MilvusIndex:
    """A Milvus collection behind the `VectorIndex` protocol, re-ranked exactly.

    ``uri``: a ``*.db`` path (Milvus Lite, run by this process) or a server address such
    as ``http://host:19530``. ``scalar_fields``: name -> ``"str"`` or ``"int"`` columns stored
    per row (strings default to "", ints to -1). ``key_to_id`` maps primary keys back to the
    int64 ids searches return (default: keys are decimal ids); keys it does not know are
    dropped from results. The collection is created on first use with ``dim``, and its index
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
        self.manage_index = manage_index
        self._client = _connect(self.uri)
        # A dropped index (e.g. a `Gallery` that went out of scope) frees the embedded file too.
        self._finalizer = weakref.finalize(self, _disconnect, self._client, self.uri)
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
        with _quiet_embedded(self.embedded):
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
        with _quiet_embedded(self.embedded):
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
            keys = [str(i) for i in _check_ids(ids, n)]
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
        with _quiet_embedded(self.embedded):
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
        allowed_species: Collection[str] | None = None,
        *,
        filter_expr: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`(Q, D)` -> scores `(Q, k)` float32, ids `(Q, k)` int64; exact scores, ANN recall.

        ``allowed_species`` (names in the ``species`` field) and ``filter_expr`` (any Milvus
        expression) restrict the rows searched, inside Milvus.
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
        if n_queries == 0 or self._index_type is None:
            return out_scores, out_ids
        n_candidates = max(k * self.settings.rerank_factor, self.settings.min_candidates)
        rescore = self._index_type in APPROXIMATE_SCORES
        # Answers that carry their candidates' vectors: bound one reply's size.
        step = max(1, _REPLY_BYTES // (n_candidates * self.dim * 4)) if rescore else n_queries
        hits = []
        for q0 in range(0, n_queries, step):
            hits += self._client.search(
                self.collection,
                data=list(queries[q0 : q0 + step]),
                filter=" and ".join(exprs),
                limit=n_candidates,
                output_fields=[VECTOR_FIELD] if rescore else [],
                anns_field=VECTOR_FIELD,
                search_params={
                    "metric_type": "IP",
                    "params": _search_params(self._index_type, n_candidates, self.settings),
                },
            )
        for q, row_hits in enumerate(hits):
            ids, found = [], []
            for hit in row_hits:
                image_id = self.key_to_id(str(hit.get("key", hit.get("id"))))
                if image_id is None:
                    continue  # a row this reader does not know (added after it opened)
                ids.append(image_id)
                found.append(hit["entity"][VECTOR_FIELD] if rescore else hit["distance"])
            if not ids:
                continue
            if rescore:  # the exact re-rank: float32 inner products with the stored vectors
                scores = np.asarray(found, np.float32) @ queries[q]
            else:
                scores = np.asarray(found, np.float32)
            # Ordered again by (score, id): the contract's tie-break, whatever Milvus did.
            s, i = _select_topk(scores[None], np.asarray(ids, np.int64)[None], k)
            out_scores[q], out_ids[q] = s[0], i[0]
        return out_scores, out_ids

    # --- saving -----------------------------------------------------------------------------
    def _meta(self) -> dict:
        return {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "kind": self.kind,
            "dim": self.dim,
            "count": len(self),
            "storage_dtype": self.storage_dtype,
            "metadata": self.metadata,
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


@contextlib.contextmanager
def _quiet_embedded(embedded: bool):
    """Some Milvus Lite releases lack the timestamp call that pymilvus makes before waiting
    for an index build and before a query iterator: the gRPC server logs a traceback and
    pymilvus a warning, then pymilvus goes on without it (the client's clock, right for a
    file only this process writes). Keep that noise off the user's screen."""
    loggers = ["grpc._server", "pymilvus.client.iterator.query_iterator"] if embedded else []
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _decimal_id(key: str) -> int | None:
    return int(key) if key.isdigit() else None


def _check_ids(ids: Any, n: int) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.shape != (n,):
        raise SongsightError(f"ids must have shape ({n},) to match the vectors, got {arr.shape}")
    if n and not np.issubdtype(arr.dtype, np.integer):
        raise SongsightError(f"ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if n and arr.min() < 0:
        raise SongsightError("ids must be >= 0 (-1 marks padding in search results)")
    if len(np.unique(arr)) != n:
        raise SongsightError("ids must be unique; this batch repeats some")
    return arr


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
