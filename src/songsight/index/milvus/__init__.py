"""Vector search in a Milvus collection, behind `songsight.index.search.VectorIndex`.

`MilvusIndex` (``collection.py``) is the backend: an embedded Milvus Lite file or a server.
Beside it, one job per module: ``connect.py`` (pymilvus, clients, server versions, a lost
server said in one line), ``options.py`` (settings, index types and parameters, filter
expressions), ``rows.py`` (the schema and rows by primary key), ``search.py`` (candidates
and the exact re-rank) and ``vector_index.py`` (declaring the collection's index and waiting
for a server to build it). pymilvus is imported on first use, not here.

A gallery searched through Milvus keeps its collection in step with its store through
`songsight.gallery.milvus`.
"""

from songsight.index.milvus.collection import MilvusIndex

__all__ = ["MilvusIndex"]
