"""``songsight index build|add|check|calibrate|remove|move``: build, extend and keep a photo
gallery (``--backend milvus`` and its options are in `songsight.cli.milvus`)."""

from __future__ import annotations

import argparse

from songsight.cli.common import (
    IMAGE_DEFAULT,
    add_cascade_mode,
    add_device,
    add_engine,
    add_method,
    add_precision_runtime,
    add_query_models,
    add_yes,
    positive,
)
from songsight.cli.milvus import add_milvus, milvus_target


def add_index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build or extend a photo gallery to search with recordings")
    isub = p.add_subparsers(
        dest="index_command", metavar="{build,add,check,calibrate,remove,move}", required=True
    )
    _add_check(isub)
    _add_calibrate(isub)
    for name in ("build", "add"):
        build = name == "build"
        q = isub.add_parser(
            name,
            help="create (or resume) a gallery" if build else "add new photos (by content hash)",
        )
        q.add_argument(
            "paths", nargs="*", metavar="PATHS", help="photo files or folders (walked recursively)"
        )
        q.add_argument("--gallery", required=True, metavar="DIR")
        q.add_argument(
            "--manifest",
            metavar="CSV",
            help="path and optional label (an integer or a species name), species (or "
            "scientific_name), common_name, species_code, genus, family, order; relative paths "
            "are taken from the manifest's folder",
        )
        q.add_argument(
            "--species", metavar="TAXA_CSV", help="species table naming a manifest's label column"
        )
        q.add_argument(
            "--image-model",
            default=None,
            metavar="ID_OR_DIR",
            help=f"open_clip model (default: the gallery's own, {IMAGE_DEFAULT} for a new one)"
            if build
            else "default: the gallery's own; another model is refused",
        )
        q.add_argument(
            "--ann",
            action="store_true",
            help="build an HNSW index now (default: exact, HNSW past 200,000 photos; re-ranked exactly)",
        )
        if build:
            q.add_argument(
                "--vector-dtype", choices=("float32", "float16"), default="float32",
                help="how the photos' vectors are stored: float16 halves the gallery's size "
                "(answers re-ranked from it; default float32)",
            )  # fmt: skip
            q.add_argument(
                "--preprocess", choices=("model", "squash"), default="model",
                help="model: the image model's own transform (open_clip: resize the short side, "
                "centre-crop); squash: resize the whole photo to the model's size, no crop, "
                "as pybioclip does (default model)",
            )  # fmt: skip
            q.add_argument(
                "--overwrite", action="store_true",
                help="start the gallery again (removes its photos: with --yes when it holds any)",
            )  # fmt: skip
            add_yes(q)
        add_engine(q)
        q.add_argument("--batch-size", type=positive(int), default=32)
        add_precision_runtime(q)
        q.add_argument("--quiet", action="store_true", help="no progress bar")
        add_device(q)
        add_milvus(q)
    _add_edits(isub)


def _add_check(isub) -> None:
    q = isub.add_parser(
        "check", help="list the gallery's photos whose file is gone (moved or deleted)"
    )
    q.add_argument("--gallery", required=True, metavar="DIR")
    q.add_argument(
        "--prune",
        action="store_true",
        help="remove them from the gallery (the photos after them get new ids)",
    )
    add_yes(q)


def _add_calibrate(isub) -> None:
    q = isub.add_parser(
        "calibrate",
        help="fit the species scores' temperature on labelled validation recordings",
    )
    q.add_argument("--gallery", required=True, metavar="DIR")
    q.add_argument(
        "--recordings",
        required=True,
        metavar="MANIFEST",
        help="CSV/Parquet: path and the species (label, species or common_name)",
    )
    q.add_argument(
        "--split", default="val", help="rows of this split, if the manifest has one (default val)"
    )
    add_query_models(q)
    add_method(q)
    add_cascade_mode(q)
    q.add_argument("--batch-size", type=positive(int), default=16)
    add_precision_runtime(q)
    q.add_argument("--quiet", action="store_true")
    add_device(q)


def _add_edits(isub: argparse._SubParsersAction) -> None:
    """``index remove`` and ``index move``: they change a gallery without embedding."""
    q = isub.add_parser(
        "remove", help="remove photos (by path or sha256); the others are renumbered"
    )
    q.add_argument("items", nargs="+", metavar="PATH_OR_SHA256")
    q.add_argument("--gallery", required=True, metavar="DIR")
    add_yes(q, "them")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q = isub.add_parser(
        "move",
        help="search the gallery through another backend (e.g. a Milvus server), filled from "
        "its store without embedding again",
    )
    q.add_argument("--gallery", required=True, metavar="DIR")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    add_milvus(q)


def run_index(args: argparse.Namespace) -> int:
    if args.index_command == "remove":
        from songsight.gallery import remove_from_gallery

        report = remove_from_gallery(
            args.items, args.gallery, progress=not args.quiet, yes=args.yes
        )
        print(report.summary())
        return report.exit_code
    if args.index_command == "move":
        from songsight.gallery import move_gallery

        kind = move_gallery(args.gallery, milvus_target(args), progress=not args.quiet)
        print(f"{args.gallery} is now searched through {kind}")
        return 0
    if args.index_command == "check":
        from songsight.gallery import check_gallery

        report = check_gallery(args.gallery, prune=args.prune, yes=args.yes)
        print(report.summary())
        return report.exit_code
    if args.index_command == "calibrate":
        from songsight.retrieval.calibrate import calibrate

        result = calibrate(args.gallery, args.recordings, args.model, split=args.split or None,
                           progress=not args.quiet, audio_model=args.audio_model,
                           image_model=args.image_model, device=args.device,
                           cascade_mode=args.cascade, batch_size=args.batch_size,
                           precision=args.precision, method=args.method, runtime=args.runtime,
                           quiet=args.quiet)  # fmt: skip
        print(result.summary())
        return 0
    from songsight.gallery import add_to_gallery, build_gallery

    common = dict(manifest=args.manifest, species_csv=args.species, image_model=args.image_model,
                  ann=args.ann or None, batch_size=args.batch_size,
                  device=args.device, quiet=args.quiet, runtime=args.runtime,
                  precision=args.precision, engine=args.engine, workers=args.workers,
                  progress=not args.quiet, milvus=milvus_target(args))  # fmt: skip
    if args.index_command == "build":
        report = build_gallery(args.paths, args.gallery, vector_dtype=args.vector_dtype,
                               preprocess=args.preprocess, overwrite=args.overwrite,
                               yes=args.yes, **common)  # fmt: skip
    else:
        report = add_to_gallery(args.paths, args.gallery, **common)
    print(report.summary())
    return report.exit_code
