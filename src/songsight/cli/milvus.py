"""Where a gallery is searched: the ``--backend milvus`` options of ``songsight index
build|add|move``, and the ``milvus`` argument of the gallery functions they make."""

from __future__ import annotations

import argparse


def add_milvus(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=("local", "milvus"),
        default=None,
        help="local: songsight's own index (default for a new gallery); milvus: a Milvus "
        "collection, embedded in DIR/milvus.db or on --milvus-uri (pip install 'songsight[milvus]')",
    )
    p.add_argument(
        "--milvus-uri",
        metavar="URI",
        help="a Milvus server, e.g. http://host:19530, its token (if any) in $MILVUS_TOKEN "
        "(default: the embedded file)",
    )
    p.add_argument(
        "--collection", metavar="NAME", help="Milvus collection (default songsight_gallery)"
    )
    p.add_argument(
        "--milvus-index",
        metavar="TYPE",
        help="auto (default: FLAT up to 200,000 photos, then HNSW; DISKANN past 20M on a server), "
        "FLAT, HNSW, HNSW_SQ, IVF_FLAT, IVF_SQ8, DISKANN or AUTOINDEX",
    )
    p.add_argument(
        "--milvus-option",
        action="append",
        default=[],
        metavar="NAME=INT",
        help="index or search knob, repeatable: flat_threshold, diskann_threshold, hnsw_m, "
        "hnsw_ef_construction, hnsw_ef, ivf_nlist, ivf_nprobe, diskann_search_list, "
        "rerank_factor, min_candidates",
    )


def milvus_target(args: argparse.Namespace) -> dict | None:
    """The ``milvus`` argument of the gallery functions, from the options above (or None)."""
    from songsight.errors import SongsightError

    given = [
        flag
        for flag, value in (
            ("--milvus-uri", args.milvus_uri),
            ("--collection", args.collection),
            ("--milvus-index", args.milvus_index),
            ("--milvus-option", args.milvus_option),
        )
        if value
    ]
    if args.backend != "milvus":
        if given:
            raise SongsightError(f"{', '.join(given)} need --backend milvus")
        return None
    settings: dict = {}
    if args.milvus_index:
        settings["index_type"] = args.milvus_index
    for option in args.milvus_option:
        name, _, value = option.partition("=")
        try:
            settings[name.strip()] = int(value)
        except ValueError:
            raise SongsightError(f"--milvus-option takes NAME=INTEGER, got {option!r}") from None
    return {"uri": args.milvus_uri, "collection": args.collection, "settings": settings}
