"""The gallery: what a user builds and keeps (moved here from index/, jobs/ and retrieval/)."""

from songsight.gallery.gallery import (
    METADATA_COLUMNS,
    Gallery,
    GalleryReport,
    add_to_gallery,
    build_gallery,
    read_gallery_manifest,
)

__all__ = [
    "METADATA_COLUMNS",
    "Gallery",
    "GalleryReport",
    "add_to_gallery",
    "build_gallery",
    "read_gallery_manifest",
]
