"""A gallery's Milvus collection: where it is, opening it, and what it holds per photo.

With ``--backend milvus`` a gallery's vectors are also rows of a Milvus collection (an
embedded Milvus Lite file, ``DIR/milvus.db``, unless ``gallery.json`` names a server URI),
keyed by sha256, with ``path``, ``label``, ``species``, ``common_name``, ``genus``,
``family``, ``taxon_order``, ``species_code`` and the image model's ``model_id`` /
``model_revision`` as scalar fields (`SCALAR_FIELDS`). Searches map sha256 keys back to store
row numbers, the gallery's ids. Keeping the collection in step with the store is
`songsight.gallery.milvus.sync`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from songsight.errors import ProvenanceMismatchError, SongsightError
from songsight.gallery.manifest import MANIFEST_COLUMNS, is_blank
from songsight.index.milvus.collection import MilvusIndex
from songsight.index.milvus.connect import import_pymilvus, release_embedded
from songsight.index.milvus.options import MilvusSettings, species_filter, string_literal

__all__ = [
    "DEFAULT_COLLECTION",
    "EMBEDDED_FILE",
    "FIELD_OF",
    "SCALAR_FIELDS",
    "check_backend",
    "drop_embedded",
    "milvus_config",
    "open_collection",
    "open_milvus_index",
    "probe",
]

EMBEDDED_FILE = "milvus.db"
DEFAULT_COLLECTION = "songsight_gallery"
# Store column -> collection field ("order" is a word of Milvus's expression language). The
# ranks above order are not fields: they are read from the store, and collections made before
# the store kept them stay as they are.
FIELD_OF = {c: ("taxon_order" if c == "order" else c) for c in ("path", *MANIFEST_COLUMNS)}
SCALAR_FIELDS = {
    **{f: ("int" if c == "label" else "str") for c, f in FIELD_OF.items()},
    "model_id": "str",
    "model_revision": "str",
}
_COLLECTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


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


def open_collection(
    directory: Path, meta: dict, hashes: list[str] | None = None, species: list | None = None
) -> MilvusIndex:
    """The gallery's collection (``meta``'s ``index.milvus``), refused when it holds photos
    of another image model; ``hashes``: the store's, row = id; ``species``: the store's
    ``species`` column, for searches by species pushed down as one expression."""
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
    open_collection(directory, meta).close()


def open_milvus_index(directory: Path, meta: dict, metadata) -> MilvusIndex:
    """The gallery's collection, searching by store row number: ``metadata`` is the gallery's
    table (``sha256`` and ``species`` per row, row = id)."""
    species = [None if is_blank(v) else str(v) for v in metadata["species"]]
    return open_collection(directory, meta, list(metadata["sha256"]), species)


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
