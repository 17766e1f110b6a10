"""The gallery: what a user builds and keeps, behind one interface.

A gallery is a folder of BioCLIP-2 embeddings of photos with their species, and the index
they are searched with (its layout: `songsight.gallery.gallery`). Everything outside this
package (the CLI, the server, the Python API, the search) uses the names below::

    Gallery.build(paths, "gallery/", manifest=..., species_csv=...)  # or build_gallery
    gallery = Gallery("gallery/")        # open: metadata, index, provenance
    gallery.search(vectors, k)           # (Q, D) -> scores, ids; ids are store rows
    gallery.record(i), gallery.image_path(i), gallery.species_list()
    gallery.add(paths), gallery.remove(items), gallery.check(prune=True), gallery.move(milvus)

The upkeep is also a function of the folder, for callers that need not open the gallery
(the CLI): `add_to_gallery`, `remove_from_gallery`, `check_gallery`, `move_gallery`.

One module per job: ``format.py`` (the files, ``gallery.json``), ``manifest.py`` (photo
manifests and the metadata a photo keeps), ``dedupe.py`` (moved photos and copies, by
content), ``build.py`` (embedding photos in), ``index.py`` (the index beside the store, kept
in step by one hook), ``edit.py`` (remove, move), ``check.py`` (photos gone from disk),
``calibration.py`` (fitted roll-up temperatures), ``gallery.py`` (the `Gallery`) and
``milvus/`` (a gallery searched through a Milvus collection).
"""

from songsight.gallery.build import GalleryReport, add_to_gallery
from songsight.gallery.calibration import calibrations, record_calibration, recorded_calibration
from songsight.gallery.check import CheckReport, check_gallery, missing_note, missing_photos
from songsight.gallery.edit import RemoveReport, move_gallery, remove_from_gallery
from songsight.gallery.format import FEW_PHOTOS, FORMAT, FORMAT_VERSION, META_FILE, STORE_FILE
from songsight.gallery.gallery import Gallery, build_gallery
from songsight.gallery.manifest import METADATA_COLUMNS, read_gallery_manifest

__all__ = [
    "FEW_PHOTOS",
    "FORMAT",
    "FORMAT_VERSION",
    "METADATA_COLUMNS",
    "META_FILE",
    "STORE_FILE",
    "CheckReport",
    "Gallery",
    "GalleryReport",
    "RemoveReport",
    "add_to_gallery",
    "build_gallery",
    "calibrations",
    "check_gallery",
    "missing_note",
    "missing_photos",
    "move_gallery",
    "read_gallery_manifest",
    "record_calibration",
    "recorded_calibration",
    "remove_from_gallery",
]
