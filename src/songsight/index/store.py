"""Parquet embedding store with provenance, written crash-safe and resumable.

Layout while writing: ``FILE.parquet.parts/part-NNNNN.parquet`` (each part written to a temporary
name and renamed, so a kill never leaves a half part) plus ``provenance.json``. `close` merges
any earlier ``FILE.parquet`` and the parts into a new ``FILE.parquet`` atomically. A resumed
run reads the content hashes already stored (final file and parts) and skips those inputs.

Provenance (model ids, revisions, preprocessing, package versions) is kept in the Parquet
schema metadata under ``songsight``; resuming or appending with different provenance is
refused with `ProvenanceMismatchError`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from songsight.errors import DataNotFoundError, SongsightError
from songsight.provenance import check_same

META_KEY = b"songsight"
# Provenance keys that must agree for rows to share one store.
# "quantization" is absent for fp32 and bf16 (close enough to share a store), set for int8.
IDENTITY_KEYS = (
    "encoder", "kind", "model_id", "revision", "dim", "preprocessing", "vector_dtype",
    "quantization",
)  # fmt: skip


def _parts_dir(path: Path) -> Path:
    return path.with_name(path.name + ".parts")


def read_provenance(path: str | Path) -> dict:
    """The provenance dict stored in a Parquet file's schema metadata."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    if META_KEY not in meta:
        raise DataNotFoundError(
            f"{path} has no songsight provenance: it was not written by songsight"
        )
    return json.loads(meta[META_KEY])


def read_store(path: str | Path, columns: list[str] | None = None):
    """(pyarrow Table, provenance) of a finished store; a store with unmerged parts is refused."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        hint = (
            " (an interrupted run left parts: rerun with --resume to finish it)"
            if _parts_dir(path).is_dir()
            else ""
        )
        raise DataNotFoundError(f"embedding store not found: {path}{hint}")
    return pq.read_table(path, columns=columns), read_provenance(path)


def load_embeddings(path: str | Path):
    """(metadata DataFrame without the vectors, (N, D) float32 vectors, provenance)."""
    table, prov = read_store(path)
    vectors = vectors_from_column(table.column("embedding"))
    meta = table.drop_columns(["embedding"]).to_pandas()
    return meta, vectors, prov


def vectors_from_column(column) -> np.ndarray:
    """A (fixed-size) list column -> (N, D) float32 without a Python loop."""
    import pyarrow as pa

    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(col) == 0:
        return np.zeros((0, 0), np.float32)
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(col), -1).astype(np.float32, copy=False)


def audio_rows(
    path: str,
    sha256: str,
    windows: np.ndarray,
    starts_s,
    ends_s,
    duration_s: float,
    silent: bool,
) -> list[dict]:
    """An audio store's rows for one recording: one per window ``(W, D)``, in window order.

    Columns ``path``, ``sha256``, ``window``, ``start_s``, ``end_s``, ``duration_s``,
    ``silent``, ``embedding``; a recording's clip vector is the re-normalised mean of its rows.
    """
    return [
        {"path": path, "sha256": sha256, "window": w, "start_s": float(starts_s[w]),
         "end_s": float(ends_s[w]), "duration_s": float(duration_s), "silent": bool(silent),
         "embedding": windows[w]}
        for w in range(len(windows))
    ]  # fmt: skip


def image_rows(path: str, sha256: str, vector: np.ndarray) -> list[dict]:
    """An image store's row for one photo: ``path``, ``sha256``, ``embedding``."""
    return [{"path": path, "sha256": sha256, "embedding": vector}]


class EmbeddingWriter:
    """Append rows (dicts of scalars + an ``embedding`` vector) to a Parquet store.

    Rows of one input file must be added in one `add` call, so a file is either wholly
    stored or not at all. ``flush_rows`` bounds memory and what a kill can lose.
    """

    def __init__(
        self,
        path: str | Path,
        provenance: dict,
        resume: bool = False,
        overwrite: bool = False,
        flush_rows: int = 2048,
        vector_dtype: str = "float32",
    ):
        self.path = Path(path)
        self.parts = _parts_dir(self.path)
        # Round-trip through JSON now, so tuples become lists as they will be once stored, and a
        # resumed run compares like with like (a (224, 224) size must equal the stored [224, 224]).
        self.provenance = json.loads(
            json.dumps({**provenance, "vector_dtype": vector_dtype}, sort_keys=True, default=str)
        )
        self.flush_rows = flush_rows
        self.vector_dtype = vector_dtype
        self._rows: list[dict] = []
        self._n_parts = 0
        exists = self.path.exists() or self.parts.exists()
        if exists and overwrite:
            self.path.unlink(missing_ok=True)
            shutil.rmtree(self.parts, ignore_errors=True)
        elif exists and not resume:
            raise SongsightError(
                f"{self.path} already exists (or an interrupted run left {self.parts.name}); "
                "pass --resume to continue it or --overwrite to start again"
            )
        self.done_hashes = self._existing_hashes() if resume else set()
        self.parts.mkdir(parents=True, exist_ok=True)
        prov_file = self.parts / "provenance.json"
        if not prov_file.exists():
            _atomic_write_text(prov_file, json.dumps(self.provenance, sort_keys=True, default=str))
        self._n_parts = len(list(self.parts.glob("part-*.parquet")))

    def _existing_hashes(self) -> set[str]:
        import pyarrow.parquet as pq

        hashes: set[str] = set()
        if self.path.is_file():
            check_same(str(self.path), self.provenance, read_provenance(self.path), IDENTITY_KEYS)
            hashes.update(pq.read_table(self.path, columns=["sha256"]).column("sha256").to_pylist())
        prov_file = self.parts / "provenance.json"
        if prov_file.is_file():
            check_same(
                str(self.parts), self.provenance, json.loads(prov_file.read_text()), IDENTITY_KEYS
            )
        for part in sorted(self.parts.glob("part-*.parquet")):
            hashes.update(pq.read_table(part, columns=["sha256"]).column("sha256").to_pylist())
        return hashes

    def add(self, rows: list[dict]) -> None:
        self._rows.extend(rows)
        if len(self._rows) >= self.flush_rows:
            self.flush()

    def _table(self, rows: list[dict]):
        import pyarrow as pa

        vecs = np.stack([np.asarray(r["embedding"]) for r in rows]).astype(self.vector_dtype)
        value_type = pa.float16() if self.vector_dtype == "float16" else pa.float32()
        emb = pa.FixedSizeListArray.from_arrays(
            pa.array(vecs.reshape(-1), type=value_type), vecs.shape[1]
        )
        cols = {k: [r[k] for r in rows] for k in rows[0] if k != "embedding"}
        table = pa.table({**{k: pa.array(v) for k, v in cols.items()}, "embedding": emb})
        meta = {META_KEY: json.dumps(self.provenance, sort_keys=True, default=str).encode()}
        return table.replace_schema_metadata(meta)

    def flush(self) -> None:
        """Write buffered rows as one new part (atomic rename)."""
        import pyarrow.parquet as pq

        if not self._rows:
            return
        table = self._table(self._rows)
        final = self.parts / f"part-{self._n_parts:05d}.parquet"
        tmp = final.with_suffix(".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        self._n_parts += 1
        self._rows.clear()

    def close(self) -> int:
        """Flush, merge earlier file + parts into ``path`` atomically; returns the row count."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.flush()
        tables = []
        if self.path.is_file():
            tables.append(pq.read_table(self.path))
        tables += [pq.read_table(p) for p in sorted(self.parts.glob("part-*.parquet"))]
        meta = {META_KEY: json.dumps(self.provenance, sort_keys=True, default=str).encode()}
        if tables:
            table = pa.concat_tables(
                [t.replace_schema_metadata(None) for t in tables], promote_options="permissive"
            )
        else:
            value_type = pa.float16() if self.vector_dtype == "float16" else pa.float32()
            table = pa.table(
                {
                    "path": pa.array([], pa.string()),
                    "sha256": pa.array([], pa.string()),
                    "embedding": pa.array(
                        [], pa.list_(value_type, int(self.provenance.get("dim") or 1))
                    ),
                }
            )
        table = table.replace_schema_metadata(meta)
        tmp = self.path.with_name(self.path.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, self.path)
        shutil.rmtree(self.parts, ignore_errors=True)
        return table.num_rows


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
