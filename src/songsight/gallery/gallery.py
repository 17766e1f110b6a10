"""A photo gallery: BioCLIP-2 embeddings of photos with their species, and a vector index.

A gallery is a folder::

    gallery.parquet   path, sha256, label, species, common_name, genus, family, order,
                      species_code, kingdom, phylum, class, embedding
                      (the embedding store of `songsight.index.store`, provenance in its schema)
    gallery.json      provenance: image model id, revision, preprocessing, package versions,
                      vector dtype, index kind, count
    index/            the HNSW index (`songsight.index.search` format, graph in graph.usearch),
                      only when the gallery is searched approximately
    errors.csv        path,error of the photos that could not be embedded (absent when none)

Photos are embedded by `songsight.jobs.embed.embed_image_files` into the store, which resumes by
content hash: a build that was interrupted, rerun, loses nothing, and `add` embeds only new
files. Metadata from a manifest is parked in ``pending-metadata.parquet`` before embedding and
joined onto the rows by path afterwards, so it survives an interruption too. Search is exact
by default; HNSW is built when asked (``ann=True``) or past `search.ANN_THRESHOLD` photos, and
its candidates are always re-scored exactly. Row numbers are the image ids; rows are only ever
appended, so ids stay valid as the gallery grows.

The package is split by job: `songsight.gallery.manifest` reads photo manifests,
`songsight.gallery.format` owns the files on disk, `songsight.gallery.index` the index kept
beside the store, and `songsight.gallery.build` embeds photos into the folder; this module
is the `Gallery` that opens and searches it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from songsight.errors import DataNotFoundError
from songsight.gallery.build import GalleryReport, add_to_gallery, update_gallery
from songsight.gallery.check import CheckReport, check_gallery
from songsight.gallery.edit import RemoveReport, move_gallery, remove_from_gallery
from songsight.gallery.format import META_FILE, STORE_FILE, confirm_removal, read_meta, stored_paths
from songsight.gallery.index import clear_gallery, open_index
from songsight.gallery.manifest import (
    MANIFEST_COLUMNS,
    METADATA_COLUMNS,
    RANK_COLUMNS,
    is_blank,
    rank_cell,
)
from songsight.outputs import claim

# Store column -> `Species` field, for the ranks above order.
_RANK_FIELDS = {"kingdom": "kingdom", "phylum": "phylum", "class": "class_"}

__all__ = ["Gallery", "build_gallery"]


class Gallery:
    """An opened gallery: metadata per photo, the vector index and provenance.

    ``Gallery("gallery/")`` (or `Gallery.open`) opens a folder that `Gallery.build` or
    ``songsight index build`` made. ``search(vectors (Q, D), k) -> (scores (Q, k) float32,
    ids (Q, k) int64)``, best first, padded with ``-inf`` / ``-1`` when the gallery has fewer
    than ``k`` photos.
    """

    def __init__(self, directory: str | Path, metadata=None, index=None, provenance=None):
        if metadata is None:
            opened = type(self).open(directory)
            metadata, index, provenance = opened.metadata, opened.index, opened.provenance
            directory = opened.directory
        self.directory = Path(directory)
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
        image_model=None,
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
        milvus: dict | None = None,
        overwrite: bool = False,
        yes: bool = False,
        progress: bool = True,
        runtime: str = "auto",
        quiet: bool = False,
    ) -> Gallery:
        """Embed photos (folders, files and/or a manifest) into a gallery at ``gallery_dir``.

        Rerunning on an existing gallery resumes or extends it (same model and vector dtype
        only); ``overwrite`` starts again (on a gallery of more than `FEW_PHOTOS` photos,
        only with ``yes``: it removes them all). ``ann``: True builds an HNSW index now, None
        builds it once the gallery passes `search.ANN_THRESHOLD` photos. ``image_model``: Hub
        id, folder, or a `BioCLIPEncoder`; default the gallery's own when it exists, else
        BioCLIP-2 (`BIOCLIP2_ID`). ``engine="ray"`` embeds with Ray Data actors
        (``workers`` of them; see `songsight.jobs.ray`). ``milvus``: search through Milvus
        instead, `songsight.gallery.milvus.milvus_config`'s arguments (server URI or the
        embedded file, collection).
        """
        directory = Path(gallery_dir)
        with claim(directory, folder=True, what="--gallery"):
            if overwrite:
                held = stored_paths(directory)
                confirm_removal(directory, held, len(held), "--overwrite", yes)
                clear_gallery(directory)
            report = update_gallery(
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
                milvus=milvus,
                progress=progress,
                runtime=runtime,
                quiet=quiet,
            )
        gallery = cls.open(directory)
        gallery.report = report
        return gallery

    @classmethod
    def open(cls, gallery_dir: str | Path) -> Gallery:
        """Read a gallery folder: metadata into memory, the index loaded (or rebuilt if stale)."""
        import pyarrow.parquet as pq

        directory = Path(gallery_dir)
        meta = read_meta(directory)
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
        return cls(directory, metadata, open_index(directory, meta, metadata), meta)

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
        runtime: str = "auto",
        quiet: bool = False,
    ) -> GalleryReport:
        """Embed only the photos not in the gallery yet (by content hash) and update the index.

        ``image_model`` defaults to the gallery's own; another model is refused with
        `ProvenanceMismatchError`.
        """
        report = add_to_gallery(
            paths,
            self.directory,
            manifest=manifest,
            species_csv=species_csv,
            image_model=image_model,
            ann=ann,
            device=device,
            batch_size=batch_size,
            precision=precision,
            engine=engine,
            workers=workers,
            progress=progress,
            runtime=runtime,
            quiet=quiet,
        )
        self._reopen()
        self.report = report
        return report

    def remove(self, items: Iterable[str | Path], *, yes: bool = False,
               progress: bool = True) -> RemoveReport:  # fmt: skip
        """Remove photos by path or sha256 (`remove_from_gallery`); the photos after them get
        new ids."""
        report = remove_from_gallery(items, self.directory, progress=progress, yes=yes)
        self._reopen()
        return report

    def check(self, prune: bool = False, yes: bool = False) -> CheckReport:
        """The photos whose file is gone; ``prune`` removes them (`check_gallery`)."""
        report = check_gallery(self.directory, prune=prune, yes=yes)
        self._reopen()
        return report

    def move(self, milvus: dict | None = None, progress: bool = True) -> str:
        """Search through the Milvus collection ``milvus`` describes, or with None through
        songsight's own index (`move_gallery`); returns the kind of search."""
        kind = move_gallery(self.directory, milvus, progress=progress)
        self._reopen()
        return kind

    def _reopen(self) -> None:
        fresh = Gallery.open(self.directory)
        self.metadata, self.index, self.provenance = fresh.metadata, fresh.index, fresh.provenance

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

    def search(
        self, vectors: np.ndarray, k: int = 10, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) unit-norm queries -> scores (Q, k) float32 and ids (Q, k) int64, best first.

        ``allowed_ids``: only these photo ids may be returned (a species list), pushed down to
        the index.
        """
        if allowed_ids is None:
            return self.index.search(vectors, k)
        return self.index.search(vectors, k, allowed_ids=allowed_ids)

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
                out[key] = None if is_blank(value) else int(value)
            else:
                out[key] = None if is_blank(value) else value
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
                c: (None if is_blank(md[c].iat[i]) else md[c].iat[i]) for c in MANIFEST_COLUMNS
            } | {c: rank_cell(md[c].iat[i]) for c in RANK_COLUMNS}
        known = [int(v["label"]) for v in seen.values() if v["label"] is not None]
        next_label = max(known, default=-1) + 1
        out = []
        for name, v in seen.items():
            label = int(v["label"]) if v["label"] is not None else None
            if label is None:
                label, next_label = next_label, next_label + 1
            sci = v["species"] or name
            # The species table's ranks where the store holds them ("" a blank one); a gallery
            # stored before it kept them reads as Species' defaults (Animalia, Chordata, Aves).
            ranks = {f: v[c] for c, f in _RANK_FIELDS.items() if v[c] is not None}
            out.append(
                Species(
                    label=label,
                    scientific_name=sci,
                    common_name=v["common_name"] or sci,
                    order=v["order"] or "",
                    family=v["family"] or "",
                    genus=v["genus"] or sci.split()[0],
                    code=v["species_code"] or "",
                    **ranks,
                )
            )
        return sorted(out, key=lambda s: (s.label, s.scientific_name))


# --- what the CLI calls ---------------------------------------------------------------------


def build_gallery(paths: Iterable[str | Path], gallery_dir: str | Path, **options) -> GalleryReport:
    """`songsight index build`: `Gallery.build` (same options) and return its report."""
    report = Gallery.build(paths, gallery_dir, **options).report
    assert report is not None
    return report
