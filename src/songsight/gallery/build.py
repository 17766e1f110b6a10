"""Building and extending a gallery: collect the photos, embed them (resumably), join their
metadata, bring the index up to date, and record provenance and errors.

`add_to_gallery` (and `Gallery.build` / `Gallery.add` in `songsight.gallery.gallery`) run
`update_gallery`; `GalleryReport` says what one run did.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from songsight.encoders.loading import BIOCLIP2_ID
from songsight.errors import DataNotFoundError, ProvenanceMismatchError, SongsightError
from songsight.gallery.dedupe import (
    contradictions,
    hash_files,
    leave_out_removed,
    merge_names,
    rewrite_paths,
    sort_photos,
    stored_photos,
)
from songsight.gallery.format import (
    ERRORS_FILE,
    FORMAT,
    FORMAT_VERSION,
    META_FILE,
    STORE_FILE,
    VECTOR_DTYPES,
    read_meta,
    record_update,
    utc_now,
    write_meta,
)
from songsight.gallery.index import update_index
from songsight.gallery.manifest import (
    attach_metadata,
    read_gallery_manifest,
    store_pending,
)
from songsight.inputs.files import read_errors, write_errors
from songsight.inputs.images import IMAGE_SUFFIXES
from songsight.outputs import claim
from songsight.provenance import check_image_model

__all__ = ["GalleryReport", "add_to_gallery", "update_gallery"]


@dataclass
class GalleryReport:
    """What one build or add did; ``notes``: moved photos, copies, manifest columns unused."""

    gallery: Path
    n_files: int
    n_embedded: int
    n_skipped: int
    n_failed: int
    n_images: int
    index_kind: str
    n_moved: int = 0
    n_copies: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def errors_path(self) -> Path:
        return self.gallery / ERRORS_FILE

    @property
    def exit_code(self) -> int:
        return 1 if self.n_failed or not self.n_images else 0

    def summary(self) -> str:
        text = (
            f"{self.n_embedded} embedded, {self.n_skipped} already in the gallery, "
            f"{self.n_failed} failed of {self.n_files} files; {self.n_images} photos in "
            f"{self.gallery} ({self.index_kind} search)"
        )
        if self.n_failed:
            text += f"; errors in {self.errors_path}"
        if not self.n_images:
            text += "\nthe gallery holds no photos yet: nothing can be searched"
        return "\n".join([text, *self.notes])


# --- building -------------------------------------------------------------------------------


def _make_encoder(image_model, preprocess, device, batch_size, precision, runtime="auto",
                  quiet=False):  # fmt: skip
    """The photos' encoder: one given as an object (tests, notebooks) as it is, else opened
    by `songsight.encoders.runtime.open_image_encoder` (ONNX Runtime on a CPU when it can,
    as ``songsight embed images``: a gallery's photos embed as fast as an embedding job's)."""
    if hasattr(image_model, "provenance") and hasattr(image_model, "iter_images"):
        return image_model
    from songsight.encoders.runtime import open_image_encoder

    return open_image_encoder(
        image_model, device=device, precision=precision, runtime=runtime,
        batch_size=batch_size, preprocess=preprocess, quiet=quiet,
    )  # fmt: skip


def _spec_of(image_model) -> str | None:
    return None if hasattr(image_model, "provenance") else str(image_model)


def _collect_inputs(paths, manifest, species_csv):
    """(files to embed, metadata DataFrame or None, errors for manifest files that are absent,
    the files given by name: a file path, or a manifest row, rather than found in a folder)."""
    from songsight.data.manifest import check_files
    from songsight.inputs.files import collect_files

    files = [Path(os.path.abspath(f)) for f in collect_files(list(paths), IMAGE_SUFFIXES)]
    named = {Path(os.path.abspath(p)) for p in paths if not Path(p).is_dir()}
    meta, missing = None, []
    if manifest is not None:
        meta = read_gallery_manifest(manifest, species_csv)
        present, missing = check_files(meta)
        files += [Path(p) for p in present["path"]]
        named |= {Path(p) for p in present["path"]}
    elif species_csv is not None:
        raise DataNotFoundError(
            "a species table (--species) needs a manifest (--manifest) of photos"
        )
    seen: set[Path] = set()
    unique = [f for f in files if not (f in seen or seen.add(f))]
    return unique, meta, [(p, "file not found") for p in missing], named


def _start_meta(directory: Path, meta, prov, ann, vector_dtype, hnsw_options, milvus=None) -> dict:
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
            "created_utc": utc_now(),
        }
        if milvus is not None:
            meta["index"] = {"requested": "milvus", "kind": "milvus", "milvus": milvus}
        write_meta(directory, meta)
        return meta
    if milvus is not None or meta["index"].get("milvus"):
        from songsight.gallery.milvus.collection import check_backend

        check_backend(directory, meta, milvus, ann)
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

    run_errors = missing_errors + read_errors(run_errors_path)
    run_errors_path.unlink(missing_ok=True)
    tried = {str(f) for f in files} | {p for p, _ in missing_errors}
    stored = set(pq.read_table(directory / STORE_FILE, columns=["path"]).column("path").to_pylist())
    earlier = [(p, e) for p, e in read_errors(directory / ERRORS_FILE) if p not in tried | stored]
    write_errors(directory / ERRORS_FILE, earlier + run_errors)
    return run_errors


def _existing_model(directory: Path, meta: dict, image_model, vector_dtype: str | None):
    """(image model, preprocessing) for adding to an existing gallery: its own, or one given
    that the revision shows to be the same weights (checked before any weights load)."""
    from songsight.encoders.loading import resolve_model

    if vector_dtype is not None and vector_dtype != meta["vector_dtype"]:
        raise ProvenanceMismatchError(
            f"{directory} stores {meta['vector_dtype']} vectors; it cannot take "
            f"{vector_dtype} ones (build a new gallery, or drop --vector-dtype)"
        )
    stored = meta["image_model"]
    if image_model is None:
        image_model = stored["model_id"]
    spec = _spec_of(image_model)
    if spec is not None:
        check_image_model(stored, resolve_model(spec, "image").provenance(), spec)
        image_model = stored["model_id"]  # same weights: the gallery's own spelling
    return image_model, stored["preprocessing"].get("choice", "model")


def _image_model(engine, image_model, preprocess, device, batch_size, precision, runtime,
                 quiet):  # fmt: skip
    """(the local encoder or None for Ray, the image model's provenance)."""
    if engine == "local":
        encoder = _make_encoder(
            image_model, preprocess, device, batch_size, precision, runtime, quiet
        )
        return encoder, encoder.provenance()
    from songsight.jobs.ray import image_model_provenance

    if _spec_of(image_model) is None:
        raise SongsightError("engine='ray' needs a model id or folder, not an encoder object")
    prov = image_model_provenance(
        str(image_model), preprocess=preprocess, device=device, precision=precision
    )
    return None, prov


def _embed_photos(directory, meta, files, encoder, image_model, pending, options):
    """Embed ``files`` into the gallery's store, locally or on Ray (which, for a Milvus
    gallery, writes straight into the collection); returns (EmbedReport, Milvus holder)."""
    store = directory / STORE_FILE
    if encoder is not None:
        from songsight.jobs.embed import embed_image_files

        report = embed_image_files(
            files, store, encoder, resume=True, progress=options["progress"],
            vector_dtype=meta["vector_dtype"],
        )  # fmt: skip
        return report, None
    from songsight.jobs.ray import embed_image_files_ray

    sink = holder = None
    if meta["index"]["requested"] == "milvus":
        from songsight.gallery.milvus.workers import ray_sink

        sink, holder = ray_sink(directory, meta, pending)
    report = embed_image_files_ray(
        files, store, str(image_model), preprocess=options["preprocess"], resume=True,
        progress=options["progress"], vector_dtype=meta["vector_dtype"],
        concurrency=options["workers"], batch_size=options["batch_size"],
        device=options["device"], precision=options["precision"], milvus=sink,
    )  # fmt: skip
    return report, holder


def update_gallery(
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
    milvus: dict | None = None,
    runtime: str = "auto",
    quiet: bool = False,
) -> GalleryReport:
    """Embed new photos into the gallery at ``directory`` (created if ``creating``), which
    this job claims first (`songsight.outputs.claim`): one writer at a time, and a folder
    that cannot be written is said before any photo is read."""
    if engine not in ("local", "ray"):
        raise SongsightError(f"engine must be 'local' or 'ray', not {engine!r}")
    if read_meta(directory) is None and not creating:
        raise DataNotFoundError(
            f"no gallery at {directory} (no {META_FILE}); "
            f"create one with `songsight index build PATHS --gallery {directory}`"
        )
    with claim(directory, folder=True, what="--gallery"):
        return _update_claimed(
            directory, list(paths), manifest=manifest, species_csv=species_csv,
            image_model=image_model, ann=ann, vector_dtype=vector_dtype, preprocess=preprocess,
            device=device, batch_size=batch_size, precision=precision, engine=engine,
            workers=workers, hnsw_options=hnsw_options, progress=progress, milvus=milvus,
            runtime=runtime, quiet=quiet,
        )  # fmt: skip


def _update_claimed(directory: Path, paths: list, *, manifest, species_csv, image_model, ann,
                    vector_dtype, preprocess, device, batch_size, precision, engine, workers,
                    hnsw_options, progress, milvus, runtime, quiet) -> GalleryReport:  # fmt: skip
    meta = read_meta(directory)
    if vector_dtype is not None and vector_dtype not in VECTOR_DTYPES:
        raise SongsightError(f"vector dtype must be one of {VECTOR_DTYPES}, not {vector_dtype!r}")
    if meta is not None:
        image_model, preprocess = _existing_model(directory, meta, image_model, vector_dtype)
    if not paths and manifest is None:
        raise DataNotFoundError("nothing to index: give photo folders or files, or --manifest")
    files, pending, missing_errors, named = _collect_inputs(paths, manifest, species_csv)
    if not files and not missing_errors:
        where = ", ".join(map(str, paths)) or str(manifest)
        raise DataNotFoundError(
            f"no photos found in {where} (looked for {' '.join(IMAGE_SUFFIXES)}, in folders "
            "recursively); nothing to index"
        )
    notes = []
    if pending is not None and pending.attrs.get("ignored_columns"):
        notes.append(f"manifest columns not used: {', '.join(pending.attrs['ignored_columns'])}")
    hashes_of, n_given = hash_files(files), len(files)
    files, held_back = leave_out_removed(meta, files, hashes_of, named)
    if held_back:
        notes.append(held_back)
    sorted_ = sort_photos(files, hashes_of, stored_photos(directory))
    rewrite_paths(directory, sorted_.moved)
    pending, conflicts = merge_names(pending, sorted_.copies)
    notes += sorted_.notes() + conflicts + contradictions(directory, pending)
    directory.mkdir(parents=True, exist_ok=True)
    image_model = image_model or BIOCLIP2_ID
    preprocess = preprocess or "model"
    encoder, prov = _image_model(
        engine, image_model, preprocess, device, batch_size, precision, runtime, quiet
    )
    if milvus is not None:
        from songsight.gallery.milvus.collection import milvus_config

        milvus = milvus_config(**milvus)
    meta = _start_meta(directory, meta, prov, ann, vector_dtype, hnsw_options, milvus)
    if meta["index"]["requested"] == "milvus":
        from songsight.gallery.milvus.collection import probe

        probe(directory, meta)  # a held file, a server out of reach: before any embedding
    store_pending(directory, pending)
    options = dict(progress=progress, preprocess=preprocess, workers=workers,
                   batch_size=batch_size, device=device, precision=precision)  # fmt: skip
    report, holder = _embed_photos(
        directory, meta, sorted_.embed, encoder, image_model, pending, options
    )
    hashes = attach_metadata(directory)
    kind = update_index(directory, meta, hashes, progress=progress)
    if holder is not None:
        holder.close()  # after the sync: an embedded file served the workers through it

    run_errors = _merge_errors(directory, files, missing_errors, report.errors_path)
    record_update(directory, meta, kind, len(hashes))
    return GalleryReport(
        gallery=directory,
        n_files=n_given + len(missing_errors),
        n_embedded=report.n_embedded,
        n_skipped=report.n_skipped + sorted_.unchanged + len(sorted_.moved) + n_given - len(files),
        n_failed=len(run_errors),
        n_images=len(hashes),
        index_kind=kind,
        n_moved=len(sorted_.moved),
        n_copies=len(sorted_.copies),
        notes=notes,
    )


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
    milvus: dict | None = None,
    runtime: str = "auto",
    quiet: bool = False,
) -> GalleryReport:
    """`songsight index add`: embed new photos into an existing gallery (or finish an
    interrupted build), without loading the gallery's index first. ``milvus``, if given,
    must name the gallery's own collection."""
    return update_gallery(
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
        milvus=milvus,
        runtime=runtime,
        quiet=quiet,
    )
