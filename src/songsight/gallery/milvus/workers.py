"""Ray workers writing photos straight into a gallery's Milvus collection.

`ray_sink` is what `songsight.jobs.ray.embed_image_files_ray` is given as its ``milvus``
sink: where the collection is, the photos' known metadata, and the ``writer`` class each
worker builds with the sink (`RowWriter`), so the Ray job needs not know the gallery.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from songsight.gallery.manifest import MANIFEST_COLUMNS
from songsight.gallery.milvus.collection import FIELD_OF, SCALAR_FIELDS, open_collection
from songsight.index.milvus.collection import MilvusIndex

__all__ = ["RowWriter", "ray_sink"]


def ray_sink(directory: Path, meta: dict, pending=None) -> tuple[dict, MilvusIndex]:
    """What Ray workers need to write photos straight into the gallery's collection
    (`RowWriter`), and the driver's open index, to close once the job is over: for the
    embedded file it is the server the workers write through (on this machine).

    ``pending``: the manifest metadata parked for this run (DataFrame with ``path`` and
    `MANIFEST_COLUMNS`), written with each photo so the rows arrive complete.
    """
    index = open_collection(directory, meta)
    index.ensure_collection()
    uri = index.uri
    if index.embedded:
        from milvus_lite.server_manager import server_manager_instance

        uri = server_manager_instance.start_and_get_uri(str(index.uri))  # this one, reused
    by_path = {}
    if pending is not None and len(pending):
        for rec in pending.drop_duplicates("path", keep="last").to_dict("records"):
            by_path[str(rec["path"])] = {FIELD_OF[c]: rec.get(c) for c in MANIFEST_COLUMNS}
    model = meta["image_model"]
    sink = {
        "uri": uri,
        "collection": index.collection,
        "dim": index.dim,
        "storage_dtype": index.storage_dtype,
        "settings": meta["index"]["milvus"].get("settings") or {},
        "fields_by_path": by_path,
        "model_id": model["model_id"],
        "model_revision": model.get("revision") or "",
        "writer": RowWriter,  # built on each worker with this sink
    }
    return sink, index


class RowWriter:
    """One Ray worker's connection: writes embedded photos into the collection by sha256
    (photos it already holds are skipped), leaving the index type to the driver."""

    def __init__(self, sink: dict):
        self.sink = sink
        self.index = MilvusIndex(
            sink["dim"], sink["uri"], sink["collection"], storage_dtype=sink["storage_dtype"],
            scalar_fields=SCALAR_FIELDS, settings=sink["settings"], manage_index=False,
        )  # fmt: skip

    def write(self, paths: list[str], hashes: list[str], vectors: np.ndarray) -> None:
        """``vectors (N, D)`` of the photos at ``paths`` with content ``hashes``."""
        first = {h: i for i, h in reversed(list(enumerate(hashes)))}  # a photo stored twice
        rows = sorted(first.values())
        if not rows:
            return
        known = self.sink["fields_by_path"]
        model = {k: self.sink[k] for k in ("model_id", "model_revision")}

        def value(name: str, r: int):
            if name == "path":
                return paths[r]
            return model[name] if name in model else known.get(paths[r], {}).get(name)

        fields = {name: [value(name, r) for r in rows] for name in SCALAR_FIELDS}
        self.index.add(vectors[rows], keys=[hashes[r] for r in rows], fields=fields)
