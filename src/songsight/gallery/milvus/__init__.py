"""A gallery searched through Milvus (moved here from index/gallery_milvus.py)."""

from songsight.gallery.milvus.sync import (
    DEFAULT_COLLECTION,
    EMBEDDED_FILE,
    SCALAR_FIELDS,
    RowWriter,
    check_backend,
    drop_embedded,
    forget_rows,
    milvus_config,
    open_milvus_index,
    probe,
    ray_sink,
    sync_milvus,
)

__all__ = [
    "DEFAULT_COLLECTION",
    "EMBEDDED_FILE",
    "SCALAR_FIELDS",
    "RowWriter",
    "check_backend",
    "drop_embedded",
    "forget_rows",
    "milvus_config",
    "open_milvus_index",
    "probe",
    "ray_sink",
    "sync_milvus",
]
