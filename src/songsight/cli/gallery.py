"""The photo gallery: ``songsight index build|add``, ``search`` and ``serve``."""

from __future__ import annotations

import argparse

from songsight.cli.common import IMAGE_DEFAULT, add_audio_model, add_device, add_engine, positive
from songsight.cli.milvus import add_index_edits, add_milvus, milvus_target, run_index_edit


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="the web page: upload or record a bird, see photos of its species"
    )
    p.add_argument("--gallery", required=True, metavar="DIR")
    p.add_argument("--host", default="127.0.0.1", help="default: this machine only")
    p.add_argument("--port", type=positive(int), default=8000)
    p.add_argument(
        "--model",
        metavar="DIR",
        default=None,
        help="distilled checkpoint (default: zero-shot cascade)",
    )
    add_audio_model(p)
    p.add_argument(
        "--image-model", default=None, metavar="ID_OR_DIR", help="default: the gallery's own"
    )
    add_device(p)
    p.add_argument("--max-upload-mb", type=positive(float), default=20.0)
    p.add_argument("--timeout-s", type=positive(float), default=120.0)
    p.add_argument(
        "--workers", type=positive(int), default=1, help="searches at once; more get 503"
    )
    p.add_argument("--max-duration-s", type=positive(float), default=600.0)


def run_serve(args: argparse.Namespace) -> int:
    from songsight.serve import serve

    serve(args.gallery, args.host, args.port, model=args.model, audio_model=args.audio_model,
          image_model=args.image_model, device=args.device, max_upload_mb=args.max_upload_mb,
          request_timeout_s=args.timeout_s, max_concurrency=args.workers,
          max_duration_s=args.max_duration_s)  # fmt: skip
    return 0


def add_index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build or extend a photo gallery to search with recordings")
    isub = p.add_subparsers(dest="index_command", metavar="{build,add,remove,move}", required=True)
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
            help="path and optional label, species (or scientific_name), common_name, genus, family, order",
        )
        q.add_argument(
            "--species", metavar="TAXA_CSV", help="species table naming a manifest's label column"
        )
        q.add_argument(
            "--image-model",
            default=IMAGE_DEFAULT if build else None,
            metavar="ID_OR_DIR",
            help=f"open_clip model (default {IMAGE_DEFAULT})"
            if build
            else "default: the gallery's own; another model is refused",
        )
        q.add_argument(
            "--ann",
            action="store_true",
            help="build an HNSW index now (default: exact, HNSW past 200,000 photos; re-ranked exactly)",
        )
        if build:
            q.add_argument("--vector-dtype", choices=("float32", "float16"), default="float32")
            q.add_argument("--preprocess", choices=("model", "squash"), default="model")
            q.add_argument("--overwrite", action="store_true", help="start the gallery again")
        add_engine(q)
        q.add_argument("--batch-size", type=positive(int), default=32)
        q.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
        q.add_argument("--quiet", action="store_true", help="no progress bar")
        add_device(q)
        add_milvus(q)
    add_index_edits(isub)


def run_index(args: argparse.Namespace) -> int:
    from songsight.index.gallery import add_to_gallery, build_gallery

    if args.index_command in ("remove", "move"):
        return run_index_edit(args)
    common = dict(manifest=args.manifest, species_csv=args.species, image_model=args.image_model,
                  ann=args.ann or None, device=args.device, batch_size=args.batch_size,
                  precision=args.precision, engine=args.engine, workers=args.workers,
                  progress=not args.quiet, milvus=milvus_target(args))  # fmt: skip
    if args.index_command == "build":
        report = build_gallery(args.paths, args.gallery, vector_dtype=args.vector_dtype,
                               preprocess=args.preprocess, overwrite=args.overwrite, **common)  # fmt: skip
    else:
        report = add_to_gallery(args.paths, args.gallery, **common)
    print(report.summary())
    return report.exit_code


def add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="find the photos (and species) of the birds in recordings")
    p.add_argument("recordings", nargs="+", metavar="RECORDINGS", help="audio files or folders")
    p.add_argument("--gallery", required=True, metavar="DIR")
    p.add_argument(
        "--model",
        metavar="DISTILLED_DIR",
        help="distilled checkpoint; without it the zero-shot cascade answers",
    )
    add_audio_model(p)
    p.add_argument(
        "--image-model",
        default=None,
        metavar="ID_OR_DIR",
        help="cascade only (default: the gallery's own)",
    )
    p.add_argument("--cascade", choices=("top1", "weighted"), default="top1")
    p.add_argument("--k", type=positive(int), default=10)
    p.add_argument("--window-s", type=positive(float), default=None)
    p.add_argument("--hop-s", type=positive(float), default=None)
    p.add_argument("--format", choices=("table", "csv", "json", "parquet"), default="table")
    p.add_argument("--out", metavar="FILE", help="default stdout; parquet needs it")
    p.add_argument(
        "--raven", metavar="DIR", help="also write one Raven selection table per recording"
    )
    p.add_argument("--batch-size", type=positive(int), default=16)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--quiet", action="store_true")
    add_device(p)


def run_search(args: argparse.Namespace) -> int:
    from songsight import retrieval

    return retrieval.run_search(args.recordings, args.gallery, model=args.model, audio_model=args.audio_model,
                                image_model=args.image_model, k=args.k, window_s=args.window_s, hop_s=args.hop_s,
                                fmt=args.format, out=args.out, raven=args.raven, device=args.device,
                                cascade_mode=args.cascade, batch_size=args.batch_size, precision=args.precision,
                                progress=not args.quiet)  # fmt: skip
