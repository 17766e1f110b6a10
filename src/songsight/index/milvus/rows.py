"""The rows of a songsight Milvus collection: its schema, and reading, writing and deleting
rows by primary key. `songsight.index.milvus.MilvusIndex` owns the collection and calls these;
searching is `songsight.index.milvus.search`.

A row is a string primary key (a gallery uses the photo's sha256), a float32 vector and the
scalar columns the index was made with (``"str"`` or ``"int"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from songsight.errors import SongsightError
from songsight.index.milvus.options import string_literal

__all__ = [
    "KEY_FIELD",
    "VECTOR_FIELD",
    "check_schema",
    "collection_schema",
    "delete_rows",
    "fetch_rows",
    "field_columns",
    "keys_filter",
    "round_to_storage",
    "scalar_value",
    "write_rows",
]

KEY_FIELD = "key"
VECTOR_FIELD = "embedding"
_KEY_MAX_CHARS = 128
_TEXT_MAX_CHARS = 2048
# Keys per `key in [...]` expression: keeps each request well under gRPC's message limit.
_KEYS_PER_QUERY = 1000
# Rows per insert / upsert: Milvus Lite 2.5 stalled for minutes on 4,000 768-d rows (12 MB)
# and 8,000 in one request (measured), 2,000 never did.
_ROWS_PER_WRITE = 2000


def collection_schema(pymilvus, dim: int, fields: Mapping[str, str]):
    """The Milvus schema: ``key`` (primary), ``embedding`` (``dim`` floats), ``fields``."""
    types = {"str": pymilvus.DataType.VARCHAR, "int": pymilvus.DataType.INT64}
    schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(KEY_FIELD, pymilvus.DataType.VARCHAR, is_primary=True, max_length=_KEY_MAX_CHARS)  # fmt: skip
    schema.add_field(VECTOR_FIELD, pymilvus.DataType.FLOAT_VECTOR, dim=dim)
    for name, kind in fields.items():
        extra = {"max_length": _TEXT_MAX_CHARS} if kind == "str" else {}
        schema.add_field(name, types[kind], **extra)
    return schema


def check_schema(client, collection: str, uri: str, dim: int, fields: Mapping[str, str]) -> None:
    """Refuse, with one clear error, a collection songsight did not make or made otherwise."""
    info = client.describe_collection(collection)
    have_fields = {f["name"]: f for f in info["fields"]}
    vec = have_fields.get(VECTOR_FIELD)
    if KEY_FIELD not in have_fields or vec is None:
        raise SongsightError(
            f"Milvus collection {collection!r} at {uri} was not made by songsight "
            f"(no {KEY_FIELD!r} key and {VECTOR_FIELD!r} vector); pick another --collection"
        )
    have = int(vec.get("params", {}).get("dim", 0))
    if have != dim:
        raise SongsightError(
            f"Milvus collection {collection!r} holds {have}-d vectors, this index {dim}-d"
        )
    missing = sorted(set(fields) - set(have_fields))
    if missing:
        raise SongsightError(
            f"Milvus collection {collection!r} lacks the fields {missing}; "
            "pick another --collection"
        )


def keys_filter(keys: Sequence[str]) -> str:
    """``key in ["a", "b"]``: a filter expression for these primary keys."""
    return f"{KEY_FIELD} in [{', '.join(string_literal(k) for k in keys)}]"


def fetch_rows(
    client, collection: str, keys: Sequence[str], output_fields: Sequence[str] = (), **consistency
) -> dict[str, dict]:
    """key -> ``output_fields`` of the rows of ``keys`` the collection holds (``consistency``:
    ``consistency_level=...`` for the queries, default the collection's)."""
    found: dict[str, dict] = {}
    keys = list(keys)
    for start in range(0, len(keys), _KEYS_PER_QUERY):
        rows = client.query(
            collection,
            filter=keys_filter(keys[start : start + _KEYS_PER_QUERY]),
            output_fields=[KEY_FIELD, *output_fields],
            **consistency,
        )
        found.update({str(r[KEY_FIELD]): {f: r[f] for f in output_fields} for r in rows})
    return found


def delete_rows(client, collection: str, keys: Sequence[str]) -> None:
    """Delete the rows of ``keys`` (keys the collection lacks are ignored)."""
    for start in range(0, len(keys), _KEYS_PER_QUERY):
        client.delete(collection, filter=keys_filter(keys[start : start + _KEYS_PER_QUERY]))


def field_columns(
    schema_fields: Mapping[str, str], fields: Mapping[str, Sequence[Any]], n: int
) -> dict[str, list]:
    """Every scalar column of the schema as ``n`` values Milvus stores (missing: blanks)."""
    unknown = sorted(set(fields) - set(schema_fields))
    if unknown:
        raise SongsightError(f"unknown fields {unknown}; the collection has {sorted(schema_fields)}")  # fmt: skip
    out: dict[str, list] = {}
    for name, kind in schema_fields.items():
        values = list(fields.get(name, [None] * n))
        if len(values) != n:
            raise SongsightError(f"field {name!r} has {len(values)} values for {n} vectors")
        out[name] = [scalar_value(v, kind) for v in values]
    return out


def round_to_storage(arr: np.ndarray, dtype: type[np.floating]) -> np.ndarray:
    """float16 storage keeps float16-rounded values (in Milvus's float32 vector field), so
    scores match the exact index's over the same float16 rows."""
    if dtype is not np.float16:
        return arr
    with np.errstate(over="ignore"):
        rounded = arr.astype(np.float16)
    if not np.isfinite(rounded).all():
        raise SongsightError("vectors overflow float16 storage; store them as float32")
    return rounded.astype(np.float32)


def scalar_value(value: Any, kind: str) -> Any:
    """A field value as Milvus stores it: unknown strings are "", unknown ints -1."""
    import pandas as pd

    blank = value is None or (not isinstance(value, (list, tuple)) and bool(pd.isna(value)))
    if kind == "int":
        return -1 if blank else int(value)
    return "" if blank or not str(value).strip() else str(value)


def write_rows(
    client,
    collection: str,
    keys: Sequence[str],
    vectors: np.ndarray,
    columns: Mapping[str, Sequence[Any]],
    rows: Sequence[int],
    *,
    absent: bool = False,
) -> None:
    """Write ``rows`` (positions into ``keys``, `(N, D)` ``vectors`` and ``columns``).

    ``absent``: the caller knows no row of ``keys`` is in the collection and no other writer
    can add one meanwhile (the embedded file is locked to one process), so rows are inserted;
    otherwise upserted, since a Milvus server keeps duplicate primary keys on insert and two
    writers (Ray workers) may race on the same photo. Milvus Lite spends less CPU a row on an
    insert (~215 us) than on an upsert (~240 us); two batches in flight raised it to ~260-320
    us and were slower (benchmarks/milvus_ingest.py), so batches go one at a time.
    """
    write = client.insert if absent else client.upsert
    names = list(columns)
    for start in range(0, len(rows), _ROWS_PER_WRITE):
        # Vectors go as numpy rows: pymilvus packs them itself, no per-row list conversion.
        batch = rows[start : start + _ROWS_PER_WRITE]
        write(
            collection,
            [
                {KEY_FIELD: keys[i], VECTOR_FIELD: vectors[i], **{n: columns[n][i] for n in names}}
                for i in batch
            ],
        )
