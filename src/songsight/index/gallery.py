"""A photo gallery: BioCLIP-2 embeddings of photos with their species, and a vector index.

A gallery is a folder::

    gallery.parquet   path, sha256, label, species, common_name, genus, family, order, embedding
                      (the embedding store of `songsight.index.store`, provenance in its schema)
    gallery.json      provenance: image model id, revision, preprocessing, package versions,
                      vector dtype, index kind, count
    index/            the HNSW index (`songsight.index.search` format, graph in graph.usearch),
                      only when the gallery is searched approximately
    errors.csv        path,error of the photos that could not be embedded (absent when none)

Photos are embedded by `songsight.embed.embed_image_files` into the store, which resumes by
content hash: a build that was interrupted, rerun, loses nothing, and `add` embeds only new
files. Metadata from a manifest is parked in ``pending-metadata.parquet`` before embedding and
joined onto the rows by path afterwards, so it survives an interruption too. Search is exact
by default; HNSW is built when asked (``ann=True``) or past `search.ANN_THRESHOLD` photos, and
its candidates are always re-scored exactly. Row numbers are the image ids; rows are only ever
appended, so ids stay valid as the gallery grows.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from songsight.encoders.loading import BIOCLIP2_ID
from songsight.errors import DataNotFoundError, ProvenanceMismatchError, SongsightError
from songsight.images import IMAGE_SUFFIXES

__all__ = [
    "METADATA_COLUMNS",
    "Gallery",
    "GalleryReport",
    "add_to_gallery",
    "build_gallery",
    "check_image_model",
    "read_gallery_manifest",
]

STORE_FILE = "gallery.parquet"
META_FILE = "gallery.json"
INDEX_DIR = "index"
ERRORS_FILE = "errors.csv"
PENDING_FILE = "pending-metadata.parquet"
FORMAT = "songsight-gallery"
FORMAT_VERSION = 1

# Per-photo metadata; ``species`` is the scientific name (a manifest may call it scientific_name).
METADATA_COLUMNS = ("label", "species", "common_name", "genus", "family", "order")
INDEX_KINDS = ("auto", "exact", "hnsw")
VECTOR_DTYPES = ("float32", "float16")
_PAREN = re.compile(r"\s*\(.*?\)\s*")


@dataclass
class GalleryReport:
    """What one build or add did."""

    gallery: Path
    n_files: int
    n_embedded: int
    n_skipped: int
    n_failed: int
    n_images: int
    index_kind: str

    @property
    def errors_path(self) -> Path:
        return self.gallery / ERRORS_FILE

    @property
    def exit_code(self) -> int:
        return 1 if self.n_failed else 0

    def summary(self) -> str:
        text = (
            f"{self.n_embedded} embedded, {self.n_skipped} already in the gallery, "
            f"{self.n_failed} failed of {self.n_files} files; {self.n_images} photos in "
            f"{self.gallery} ({self.index_kind} search)"
        )
        if self.n_failed:
            text += f"; errors in {self.errors_path}"
        return text


# --- manifests --------------------------------------------------------------------------------


def _blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    try:
        import pandas as pd

        if value is pd.NA:
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(value, str) and not value.strip()


def _text(value: Any) -> str | None:
    return None if _blank(value) else str(value).strip()


def _rank(value: Any) -> str | None:
    """SSW60 writes family as "Anatidae (Ducks, Geese, and Waterfowl)": keep the Latin name."""
    text = _text(value)
    return (_PAREN.sub(" ", text).strip() or None) if text else None


def read_gallery_manifest(manifest, species_csv: str | Path | None = None):
    """A photo manifest -> DataFrame of ``path`` (absolute) and `METADATA_COLUMNS`.

    ``manifest``: CSV/Parquet path or DataFrame with ``path`` and any of ``label``,
    ``species`` (or ``scientific_name``), ``common_name``, ``genus``, ``family``, ``order``.
    With ``species_csv`` (SSW60 ``taxa.csv`` columns) a ``label`` column is enough: the names
    and ranks come from the table, and a manifest's own non-empty cells win over it. A missing
    genus is taken from the first word of the scientific name. Unknown cells are None.
    """
    import pandas as pd

    from songsight.data.manifest import load_manifest, read_table
    from songsight.taxonomy import load_species_csv

    if isinstance(manifest, pd.DataFrame):
        df, root, name = manifest.copy(), None, "manifest"
    else:
        path = Path(manifest).expanduser()
        df, root, name = read_table(path), path.parent, str(path)
    df.columns = [str(c).strip() for c in df.columns]
    if "species" not in df.columns and "scientific_name" in df.columns:
        df = df.rename(columns={"scientific_name": "species"})
    has_label = "label" in df.columns
    # load_manifest validates paths and labels; a label-less manifest gets a placeholder.
    checked = load_manifest(df if has_label else df.assign(label=0), root=root)
    taxa = {}
    if species_csv is not None:
        if not has_label:
            raise DataNotFoundError(
                f"{name}: a species table was given but the manifest has no 'label' column "
                "to look the species up by"
            )
        taxa = {s.label: s for s in load_species_csv(species_csv)}
        unknown = sorted(set(int(v) for v in checked["label"]) - set(taxa))
        if unknown:
            raise DataNotFoundError(
                f"{name}: label(s) {unknown[:5]} are not in the species table {species_csv}"
            )
    rows = []
    for rec in checked.to_dict("records"):
        label = int(rec["label"]) if has_label else None
        sp = taxa.get(label) if label is not None else None
        species = _text(rec.get("species")) or (sp.scientific_name if sp else None)
        genus = _text(rec.get("genus")) or (sp.genus if sp else None)
        if genus is None and species:
            genus = species.split()[0]
        rows.append(
            {
                "path": rec["path"],
                "label": label,
                "species": species,
                "common_name": _text(rec.get("common_name")) or (sp.common_name if sp else None),
                "genus": genus,
                "family": _rank(rec.get("family")) or (sp.family or None if sp else None),
                "order": _rank(rec.get("order")) or (sp.order or None if sp else None),
            }
        )
    out = pd.DataFrame(rows, columns=["path", *METADATA_COLUMNS])
    out["label"] = out["label"].astype("Int64")
    return out


# --- provenance checks ------------------------------------------------------------------------


def _revision_kind(revision: str) -> str:
    return "folder" if str(revision).startswith("local-") else "hub"


def check_image_model(
    gallery_model: dict, other: dict, what: str = "this image model", strict: bool = True
) -> None:
    """Refuse to mix a gallery with vectors from another image model.

    ``gallery_model`` / ``other``: provenance dicts with ``model_id``, ``revision``, ``dim``.
    Revisions identify the weights (a Hub commit, or the content hash of a local folder).
    ``strict``: differing revisions always refuse; otherwise (a distilled student's teacher)
    a Hub commit and a folder hash cannot be compared and pass.
    """
    mine, theirs = str(gallery_model.get("revision") or ""), str(other.get("revision") or "")
    comparable = strict or _revision_kind(mine) == _revision_kind(theirs)
    if mine and theirs and comparable and mine != theirs:
        raise ProvenanceMismatchError(
            f"the gallery was built with image model {gallery_model.get('model_id')} at revision "
            f"{mine}, but {what} is {other.get('model_id')} at revision {theirs}: their vectors "
            "are not comparable. Use the gallery's image model, or build a new gallery with "
            f"--image-model {other.get('model_id')}."
        )
    d_mine, d_theirs = gallery_model.get("dim"), other.get("dim")
    if d_mine is not None and d_theirs is not None and int(d_mine) != int(d_theirs):
        raise ProvenanceMismatchError(
            f"the gallery holds {d_mine}-d vectors but {what} gives {d_theirs}-d vectors"
        )


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


def _read_errors(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return [(r["path"], r["error"]) for r in csv.DictReader(fh)]


def _write_errors(path: Path, rows: list[tuple[str, str]]) -> None:
    if not rows:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "error"])
        w.writerows(rows)
    os.replace(tmp, path)


# --- building -------------------------------------------------------------------------------


def _make_encoder(image_model, preprocess, device, batch_size, precision):
    if hasattr(image_model, "provenance") and hasattr(image_model, "iter_images"):
        return image_model  # an encoder object (tests, notebooks): used as it is
    from songsight.encoders.bioclip import BioCLIPEncoder

    return BioCLIPEncoder(
        image_model,
        device=device,
        batch_size=batch_size,
        preprocess=preprocess,
        precision=precision,
    )


def _spec_of(image_model) -> str | None:
    return None if hasattr(image_model, "provenance") else str(image_model)


def _collect_inputs(paths, manifest, species_csv):
    """(files to embed, metadata DataFrame or None, errors for manifest files that are absent)."""
    from songsight.data.manifest import check_files
    from songsight.embed import collect_files

    files = [f.absolute() for f in collect_files(list(paths), IMAGE_SUFFIXES)]
    meta, missing = None, []
    if manifest is not None:
        meta = read_gallery_manifest(manifest, species_csv)
        present, missing = check_files(meta)
        files += [Path(p) for p in present["path"]]
    elif species_csv is not None:
        raise DataNotFoundError(
            "a species table (--species) needs a manifest (--manifest) of photos"
        )
    seen: set[Path] = set()
    unique = [f for f in files if not (f in seen or seen.add(f))]
    return unique, meta, [(p, "file not found") for p in missing]


def _store_pending(directory: Path, meta) -> None:
    """Park manifest metadata before embedding (earlier parked rows kept; newer ones win)."""
    import pandas as pd

    if meta is None or meta.empty:
        return
    f = directory / PENDING_FILE
    if f.is_file():
        meta = pd.concat([pd.read_parquet(f), meta], ignore_index=True)
    meta = meta.drop_duplicates("path", keep="last").reset_index(drop=True)
    tmp = f.with_name(f.name + ".tmp")
    meta.to_parquet(tmp, index=False)
    os.replace(tmp, f)


def _attach_metadata(directory: Path) -> list[str]:
    """Join parked metadata onto the store's rows by path; returns the sha256 column.

    The store always ends with every `METADATA_COLUMNS` column (null where unknown) between
    ``sha256`` and ``embedding``; it is rewritten only when something changes.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    store, pending_file = directory / STORE_FILE, directory / PENDING_FILE
    schema = pq.read_schema(store)
    pending = pd.read_parquet(pending_file) if pending_file.is_file() else None
    missing_cols = [c for c in METADATA_COLUMNS if c not in schema.names]
    if pending is None and not missing_cols:
        return pq.read_table(store, columns=["sha256"]).column("sha256").to_pylist()
    table = pq.read_table(store)
    cur = table.select(["path"] + [c for c in METADATA_COLUMNS if c in schema.names]).to_pandas()
    for col in missing_cols:
        cur[col] = None
    if pending is not None and len(pending):
        upd = pending.drop_duplicates("path", keep="last").set_index("path")
        for col in METADATA_COLUMNS:
            new = cur["path"].map(upd[col])
            # A manifest's non-empty cells win; an empty one never erases what is known.
            cur[col] = new.where(new.notna(), cur[col])
    columns = {
        "label": pa.array([None if _blank(v) else int(v) for v in cur["label"]], type=pa.int64()),
        **{
            c: pa.array([_text(v) for v in cur[c]], type=pa.string())
            for c in METADATA_COLUMNS
            if c != "label"
        },
    }
    rest = [c for c in table.column_names if c not in METADATA_COLUMNS]
    ordered = {}
    for name in rest:
        if name == "embedding":
            ordered.update(columns)
        ordered[name] = table.column(name)
    out = pa.table(ordered).replace_schema_metadata(schema.metadata)
    tmp = store.with_name(store.name + ".tmp")
    pq.write_table(out, tmp)
    os.replace(tmp, store)
    pending_file.unlink(missing_ok=True)
    return out.column("sha256").to_pylist()


def _update_index(directory: Path, meta: dict, hashes: list[str]) -> str:
    """Bring ``index/`` in line with the store; returns the kind of search the gallery uses."""
    from songsight.index.search import ANN_THRESHOLD

    n = len(hashes)
    requested = meta["index"]["requested"]
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


def _start_meta(directory: Path, meta, prov, ann, vector_dtype, hnsw_options) -> dict:
    """A new gallery's ``gallery.json``, written before any photo (so an interrupted build can
    be resumed by `add` too); or the existing one, checked against the encoder's provenance."""
    from songsight.provenance import environment, package_version

    if meta is None:
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "image_model": prov,
            "environment": environment(),
            "songsight_version": package_version(),
            "vector_dtype": vector_dtype or "float32",
            "index": {
                "requested": "hnsw" if ann else "auto",
                "kind": "exact",
                "hnsw_options": hnsw_options or {},
            },
            "count": 0,
            "n_species": 0,
            "created_utc": _now(),
        }
        _write_json(directory / META_FILE, meta)
        return meta
    check_image_model(meta["image_model"], prov, "the image model given")
    had, now = meta["image_model"]["preprocessing"].get("choice"), prov["preprocessing"].get("choice")  # fmt: skip
    if had != now:
        raise ProvenanceMismatchError(
            f"the gallery's photos were preprocessed with {had!r}, the encoder given uses {now!r}"
        )
    if ann:
        meta["index"]["requested"] = "hnsw"
    if hnsw_options:
        meta["index"]["hnsw_options"] = hnsw_options
    return meta


def _merge_errors(directory: Path, files, missing_errors, run_errors_path: Path) -> list:
    """``errors.csv``: this run's failures, plus earlier ones for files neither retried now nor
    stored since. Returns this run's."""
    import pyarrow.parquet as pq

    run_errors = missing_errors + _read_errors(run_errors_path)
    run_errors_path.unlink(missing_ok=True)
    tried = {str(f) for f in files} | {p for p, _ in missing_errors}
    stored = set(pq.read_table(directory / STORE_FILE, columns=["path"]).column("path").to_pylist())
    earlier = [(p, e) for p, e in _read_errors(directory / ERRORS_FILE) if p not in tried | stored]
    _write_errors(directory / ERRORS_FILE, earlier + run_errors)
    return run_errors


def _update(
    directory: Path,
    paths: Iterable[str | Path],
    *,
    manifest,
    species_csv,
    image_model,
    creating: bool,
    ann: bool | None,
    vector_dtype: str | None,
    preprocess: str | None,
    device: str | None,
    batch_size: int,
    precision: str,
    engine: str,
    workers: int,
    hnsw_options: dict | None,
    progress: bool,
) -> GalleryReport:
    """Embed new photos into the gallery at ``directory`` (created if ``creating``)."""
    from songsight.encoders.loading import resolve_model
    from songsight.provenance import package_version

    paths = list(paths)
    if engine not in ("local", "ray"):
        raise SongsightError(f"engine must be 'local' or 'ray', not {engine!r}")
    meta = _read_json(directory)
    if meta is None and not creating:
        raise DataNotFoundError(
            f"no gallery at {directory} (no {META_FILE}); "
            f"create one with `songsight index build PATHS --gallery {directory}`"
        )
    if vector_dtype is not None and vector_dtype not in VECTOR_DTYPES:
        raise SongsightError(f"vector dtype must be one of {VECTOR_DTYPES}, not {vector_dtype!r}")
    if meta is not None:
        if vector_dtype is not None and vector_dtype != meta["vector_dtype"]:
            raise ProvenanceMismatchError(
                f"{directory} stores {meta['vector_dtype']} vectors; it cannot take "
                f"{vector_dtype} ones (build a new gallery, or drop --vector-dtype)"
            )
        stored = meta["image_model"]
        preprocess = stored["preprocessing"].get("choice", "model")
        if image_model is None:
            image_model = stored["model_id"]
        spec = _spec_of(image_model)
        if spec is not None:
            # Before loading any weights: the revision says whether it is the same model.
            check_image_model(stored, resolve_model(spec, "image").provenance(), spec)
            image_model = stored["model_id"]  # same weights: the gallery's own spelling
    if not paths and manifest is None:
        raise DataNotFoundError("nothing to index: give photo folders or files, or --manifest")
    files, pending, missing_errors = _collect_inputs(paths, manifest, species_csv)
    directory.mkdir(parents=True, exist_ok=True)
    image_model = image_model or BIOCLIP2_ID
    preprocess = preprocess or "model"
    encoder = None
    if engine == "local":
        encoder = _make_encoder(image_model, preprocess, device, batch_size, precision)
        prov = encoder.provenance()
    else:
        from songsight.scale import image_model_provenance

        if _spec_of(image_model) is None:
            raise SongsightError("engine='ray' needs a model id or folder, not an encoder object")
        prov = image_model_provenance(
            str(image_model), preprocess=preprocess, device=device, precision=precision
        )
    meta = _start_meta(directory, meta, prov, ann, vector_dtype, hnsw_options)
    _store_pending(directory, pending)
    store = directory / STORE_FILE
    if engine == "ray":
        from songsight.scale import embed_image_files_ray

        report = embed_image_files_ray(
            files,
            store,
            str(image_model),
            preprocess=preprocess,
            resume=True,
            progress=progress,
            vector_dtype=meta["vector_dtype"],
            concurrency=workers,
            batch_size=batch_size,
            device=device,
            precision=precision,
        )
    else:
        from songsight.embed import embed_image_files

        report = embed_image_files(
            files, store, encoder, resume=True, progress=progress, vector_dtype=meta["vector_dtype"]
        )
    hashes = _attach_metadata(directory)
    kind = _update_index(directory, meta, hashes)

    run_errors = _merge_errors(directory, files, missing_errors, report.errors_path)
    meta["index"]["kind"] = kind
    meta["count"] = len(hashes)
    meta["n_species"] = _count_species(directory)
    meta["updated_utc"] = _now()
    meta["songsight_version"] = package_version()
    _write_json(directory / META_FILE, meta)
    return GalleryReport(
        gallery=directory,
        n_files=len(files) + len(missing_errors),
        n_embedded=report.n_embedded,
        n_skipped=report.n_skipped,
        n_failed=len(run_errors),
        n_images=len(hashes),
        index_kind=kind,
    )


def _count_species(directory: Path) -> int:
    import pyarrow.parquet as pq

    col = pq.read_table(directory / STORE_FILE, columns=["species", "common_name"]).to_pandas()
    names = col["species"].where(col["species"].notna(), col["common_name"])
    return int(names.dropna().nunique())


def _clear(directory: Path) -> None:
    """Remove a gallery's own files (and nothing else) from ``directory``."""
    for name in (STORE_FILE, META_FILE, ERRORS_FILE, PENDING_FILE, "gallery.errors.csv"):
        (directory / name).unlink(missing_ok=True)
    for name in (STORE_FILE + ".parts", INDEX_DIR, INDEX_DIR + ".tmp", INDEX_DIR + ".old"):
        shutil.rmtree(directory / name, ignore_errors=True)


# --- the gallery ------------------------------------------------------------------------------


class Gallery:
    """An opened gallery: metadata per photo, the vector index and provenance.

    ``search(vectors (Q, D), k) -> (scores (Q, k) float32, ids (Q, k) int64)``, best first,
    padded with ``-inf`` / ``-1`` when the gallery has fewer than ``k`` photos.
    """

    def __init__(self, directory: Path, metadata, index, provenance: dict):
        self.directory = directory
        self.metadata = metadata  # pandas DataFrame: path, sha256, METADATA_COLUMNS; row = id
        self.index = index
        self.provenance = provenance
        self.report: GalleryReport | None = None  # what the last build or add did

    # --- making and opening ---------------------------------------------------------------
    @classmethod
    def build(
        cls,
        paths: Iterable[str | Path] = (),
        gallery_dir: str | Path = "gallery",
        image_model=BIOCLIP2_ID,
        *,
        manifest=None,
        species_csv: str | Path | None = None,
        ann: bool | None = None,
        vector_dtype: str = "float32",
        preprocess: str = "model",
        device: str | None = None,
        batch_size: int = 32,
        precision: str = "auto",
        engine: str = "local",
        workers: int = 2,
        hnsw_options: dict | None = None,
        overwrite: bool = False,
        progress: bool = True,
    ) -> Gallery:
        """Embed photos (folders, files and/or a manifest) into a gallery at ``gallery_dir``.

        Rerunning on an existing gallery resumes or extends it (same model and vector dtype
        only); ``overwrite`` starts again. ``ann``: True builds an HNSW index now, None
        builds it once the gallery passes `search.ANN_THRESHOLD` photos. ``image_model``: Hub
        id, folder, or a `BioCLIPEncoder`. ``engine="ray"`` embeds with Ray Data actors
        (``workers`` of them; see `songsight.scale`).
        """
        directory = Path(gallery_dir)
        if overwrite:
            _clear(directory)
        report = _update(
            directory,
            paths,
            manifest=manifest,
            species_csv=species_csv,
            image_model=image_model,
            creating=True,
            ann=ann,
            vector_dtype=vector_dtype,
            preprocess=preprocess,
            device=device,
            batch_size=batch_size,
            precision=precision,
            engine=engine,
            workers=workers,
            hnsw_options=hnsw_options,
            progress=progress,
        )
        gallery = cls.open(directory)
        gallery.report = report
        return gallery

    @classmethod
    def open(cls, gallery_dir: str | Path) -> Gallery:
        """Read a gallery folder: metadata into memory, the index loaded (or rebuilt if stale)."""
        import pyarrow.parquet as pq

        directory = Path(gallery_dir)
        meta = _read_json(directory)
        store = directory / STORE_FILE
        if meta is None:
            raise DataNotFoundError(
                f"no gallery at {directory} (no {META_FILE}); "
                f"build one with `songsight index build PATHS --gallery {directory}`"
            )
        if not store.is_file():
            raise DataNotFoundError(
                f"{directory}: the gallery build was interrupted before any photo was stored; "
                f"rerun `songsight index build ... --gallery {directory}` to resume it"
            )
        names = [c for c in pq.read_schema(store).names if c != "embedding"]
        table = pq.read_table(store, columns=names)
        import pandas as pd
        import pyarrow as pa

        metadata = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
        for col in METADATA_COLUMNS:
            if col not in metadata:
                metadata[col] = None
        hashes = metadata["sha256"].tolist()
        index = None
        if meta["index"].get("kind") == "hnsw":
            index = _load_valid_index(directory / INDEX_DIR, hashes)
            if index is not None and len(index) != len(hashes):
                index = None
            if index is None:
                # A graph older than the store (e.g. an add interrupted before the index
                # update): rebuild it in memory, correct if slower to open.
                index = _new_hnsw(meta, _read_vectors(directory))
        if index is None:
            from songsight.index.search import ExactIndex

            index = ExactIndex(int(meta["image_model"]["dim"]), meta["vector_dtype"])
            vectors = _read_vectors(directory)
            if len(vectors):
                index.add(vectors, np.arange(len(vectors), dtype=np.int64))
        return cls(directory, metadata, index, meta)

    def add(
        self,
        paths: Iterable[str | Path] = (),
        *,
        manifest=None,
        species_csv: str | Path | None = None,
        image_model=None,
        ann: bool | None = None,
        device: str | None = None,
        batch_size: int = 32,
        precision: str = "auto",
        engine: str = "local",
        workers: int = 2,
        progress: bool = True,
    ) -> GalleryReport:
        """Embed only the photos not in the gallery yet (by content hash) and update the index.

        ``image_model`` defaults to the gallery's own; another model is refused with
        `ProvenanceMismatchError`.
        """
        report = _update(
            self.directory,
            paths,
            manifest=manifest,
            species_csv=species_csv,
            image_model=image_model,
            creating=False,
            ann=ann,
            vector_dtype=None,
            preprocess=None,
            device=device,
            batch_size=batch_size,
            precision=precision,
            engine=engine,
            workers=workers,
            hnsw_options=None,
            progress=progress,
        )
        fresh = Gallery.open(self.directory)
        self.metadata, self.index, self.provenance = fresh.metadata, fresh.index, fresh.provenance
        self.report = report
        return report

    # --- reading ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.metadata)

    def __repr__(self) -> str:
        return (
            f"Gallery({str(self.directory)!r}, {len(self)} photos, "
            f"{self.provenance['index']['kind']} search)"
        )

    @property
    def dim(self) -> int:
        return int(self.provenance["image_model"]["dim"])

    @property
    def image_model(self) -> dict:
        """Provenance of the image model the photos were embedded with."""
        return self.provenance["image_model"]

    @property
    def has_species(self) -> bool:
        """Whether any photo has a species (scientific or common) name."""
        return bool(
            self.metadata["species"].notna().any() or self.metadata["common_name"].notna().any()
        )

    def search(self, vectors: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) unit-norm queries -> scores (Q, k) float32 and ids (Q, k) int64, best first."""
        return self.index.search(vectors, k)

    def _check_id(self, image_id: int) -> int:
        i = int(image_id)
        if not 0 <= i < len(self):
            raise DataNotFoundError(f"no image {image_id} in {self.directory} ({len(self)} photos)")
        return i

    def record(self, image_id: int) -> dict:
        """One photo's row: ``id``, ``path``, ``sha256`` and the metadata (None when unknown)."""
        row = self.metadata.iloc[self._check_id(image_id)]
        out: dict[str, Any] = {"id": int(image_id)}
        for key, value in row.items():
            if key == "label":
                out[key] = None if _blank(value) else int(value)
            else:
                out[key] = None if _blank(value) else value
        return out

    def image_path(self, image_id: int) -> Path:
        return Path(self.metadata["path"].iat[self._check_id(image_id)])

    def species_list(self):
        """The distinct species of the gallery as `Species`, sorted by label then name.

        Keyed by scientific name (the common name where that is all there is). Photos without
        a label get consecutive labels after the largest known one.
        """
        from songsight.taxonomy import Species

        md = self.metadata
        key = md["species"].where(md["species"].notna(), md["common_name"])
        seen: dict[str, dict] = {}
        for i in np.flatnonzero(key.notna().to_numpy()):
            name = key.iat[i]
            if name in seen:
                continue
            seen[name] = {
                c: (None if _blank(md[c].iat[i]) else md[c].iat[i]) for c in METADATA_COLUMNS
            }
        known = [int(v["label"]) for v in seen.values() if v["label"] is not None]
        next_label = max(known, default=-1) + 1
        out = []
        for name, v in seen.items():
            label = int(v["label"]) if v["label"] is not None else None
            if label is None:
                label, next_label = next_label, next_label + 1
            sci = v["species"] or name
            out.append(
                Species(
                    label=label,
                    scientific_name=sci,
                    common_name=v["common_name"] or sci,
                    order=v["order"] or "",
                    family=v["family"] or "",
                    genus=v["genus"] or sci.split()[0],
                )
            )
        return sorted(out, key=lambda s: (s.label, s.scientific_name))


# --- what the CLI calls ---------------------------------------------------------------------


def build_gallery(paths: Iterable[str | Path], gallery_dir: str | Path, **options) -> GalleryReport:
    """`songsight index build`: `Gallery.build` (same options) and return its report."""
    report = Gallery.build(paths, gallery_dir, **options).report
    assert report is not None
    return report


def add_to_gallery(
    paths: Iterable[str | Path],
    gallery_dir: str | Path,
    *,
    manifest=None,
    species_csv: str | Path | None = None,
    image_model=None,
    ann: bool | None = None,
    device: str | None = None,
    batch_size: int = 32,
    precision: str = "auto",
    engine: str = "local",
    workers: int = 2,
    progress: bool = True,
) -> GalleryReport:
    """`songsight index add`: embed new photos into an existing gallery (or finish an
    interrupted build), without loading the gallery's index first."""
    return _update(
        Path(gallery_dir),
        paths,
        manifest=manifest,
        species_csv=species_csv,
        image_model=image_model,
        creating=False,
        ann=ann,
        vector_dtype=None,
        preprocess=None,
        device=device,
        batch_size=batch_size,
        precision=precision,
        engine=engine,
        workers=workers,
        hnsw_options=None,
        progress=progress,
    )
