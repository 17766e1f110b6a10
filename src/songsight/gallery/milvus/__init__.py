"""A gallery searched through Milvus: its collection, kept in step with its store.

The collection itself is a `songsight.index.milvus.MilvusIndex` (the `VectorIndex` backend);
here is what a gallery adds to it: where its collection is and what it holds per photo
(``collection.py``: `milvus_config`, `open_milvus_index`, `probe`, `drop_embedded`), the sync
after every change of the store (``sync.py``: `sync_milvus`, `forget_rows`, called only by
`songsight.gallery.index.update_index`) and the Ray workers that write photos straight into
it (``workers.py``: `ray_sink`).
"""

from songsight.gallery.milvus.collection import (
    DEFAULT_COLLECTION,
    EMBEDDED_FILE,
    SCALAR_FIELDS,
    check_backend,
    drop_embedded,
    milvus_config,
    open_milvus_index,
    probe,
)
from songsight.gallery.milvus.sync import forget_rows, sync_milvus
from songsight.gallery.milvus.workers import RowWriter, ray_sink

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
