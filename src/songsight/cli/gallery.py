"""The photo gallery: ``songsight index build|add|check|calibrate``, ``search`` and ``serve``."""

from __future__ import annotations

import argparse

from songsight.cli.common import (
    AUDIO_DEFAULT,
    IMAGE_DEFAULT,
    add_device,
    add_engine,
    add_precision_runtime,
    add_yes,
    port,
    positive,
)
from songsight.cli.milvus import add_index_edits, add_milvus, milvus_target, run_index_edit


def _add_query_models(p: argparse.ArgumentParser) -> None:
    """--model, or the cascade's --audio-model / --image-model (refused together)."""
    p.add_argument(
        "--model",
        metavar="DISTILLED_DIR",
        default=None,
        help="distilled checkpoint; without it the zero-shot cascade answers",
    )
    p.add_argument(
        "--audio-model",
        default=None,
        metavar="ID_OR_DIR",
        help=f"cascade only: BioLingual-style CLAP model (default {AUDIO_DEFAULT})",
    )
    p.add_argument(
        "--image-model",
        default=None,
        metavar="ID_OR_DIR",
        help="cascade only (default: the gallery's own)",
    )


def _add_method(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--method",
        choices=("distilled", "distilled_proto", "fused", "cascade"),
        default=None,
        help="with --model: how it answers (default: the method its validation chose; "
        "fused names species it was not distilled on through the cascade)",
    )


def _add_cascade_prompts(p: argparse.ArgumentParser) -> None:
    """How the zero-shot cascade (no --model) asks each model for its species' text."""
    from songsight.prompt_templates import PROMPT_FORMATS

    p.add_argument("--prompt-format", choices=PROMPT_FORMATS, default=None,
                   help="cascade: the image model's species text (default taxon_com)")  # fmt: skip
    p.add_argument(
        "--templates",
        default=None,
        metavar="SET|TEMPLATE|FILE",
        help="cascade: image-model prompt templates: a set name, a template with fields such "
        "as '{scientific} with common name {common}', or a file of them (default none)",
    )
    p.add_argument("--audio-prompt-format", choices=PROMPT_FORMATS, default=None,
                   help="cascade: BioLingual's species text (default com)")  # fmt: skip
    p.add_argument(
        "--audio-templates",
        default=None,
        metavar="SET|TEMPLATE|FILE",
        help="cascade: BioLingual prompt templates, as --templates, e.g. the caption style your "
        "model was taught ('the sound of {article} {common_lower}') (default sound)",
    )


def _cascade_prompts(args: argparse.Namespace) -> dict:
    return {
        "prompt_format": args.prompt_format,
        "templates": args.templates,
        "audio_prompt_format": args.audio_prompt_format,
        "audio_templates": args.audio_templates,
    }


def _add_species_list(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--species-list",
        metavar="FILE",
        help="answer only with these species: scientific or common names or codes, one a line "
        "(entries not in the gallery are listed and skipped)",
    )


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a probability, in [0, 1]; got {text}")
    return value


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="the web page: upload or record a bird, see photos of its species"
    )
    p.add_argument("--gallery", required=True, metavar="DIR")
    p.add_argument("--host", default="127.0.0.1", help="default: this machine only")
    p.add_argument("--port", type=port, default=8000)
    _add_query_models(p)
    _add_method(p)
    _add_cascade_prompts(p)
    _add_species_list(p)
    add_device(p)
    p.add_argument(
        "--max-upload-mb", type=positive(float), default=20.0, help="largest upload (default 20)"
    )
    p.add_argument(
        "--timeout-s", type=positive(float), default=120.0, help="per search (default 120)"
    )
    add_precision_runtime(p)
    p.add_argument(
        "--workers", type=positive(int), default=1, help="batches searched at once (default 1)"
    )
    p.add_argument(
        "--queue", type=positive(int), default=64,
        help="searches admitted at once, waiting or running; one more gets 503 (default 64)",
    )  # fmt: skip
    p.add_argument(
        "--batch", type=positive(int), default=8,
        help="most searches sharing one forward pass (default 8; 1: one at a time)",
    )  # fmt: skip
    p.add_argument(
        "--batch-wait-ms", type=positive(float), default=5.0,
        help="how long a short batch waits for more searches (default 5)",
    )  # fmt: skip
    p.add_argument(
        "--max-duration-s",
        type=positive(float),
        default=600.0,
        help="longest recording accepted (default 600)",
    )


def run_serve(args: argparse.Namespace) -> int:
    from songsight.serve import serve

    serve(args.gallery, args.host, args.port, model=args.model, audio_model=args.audio_model,
          image_model=args.image_model, device=args.device, max_upload_mb=args.max_upload_mb,
          request_timeout_s=args.timeout_s, max_concurrency=args.workers,
          max_duration_s=args.max_duration_s, species_list=args.species_list,
          method=args.method, max_queue=args.queue, max_batch=args.batch,
          batch_wait_ms=args.batch_wait_ms, precision=args.precision, runtime=args.runtime,
          **_cascade_prompts(args))  # fmt: skip
    return 0


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
    add_index_edits(isub)


def _add_cascade_mode(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "--cascade",
        choices=("top1", "weighted"),
        default="top1",
        help="zero-shot cascade: top1 queries with the text of BioLingual's most probable "
        "species; weighted with every species' text weighted by its probability (default top1)",
    )


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
    _add_query_models(q)
    _add_method(q)
    _add_cascade_mode(q)
    q.add_argument("--batch-size", type=positive(int), default=16)
    add_precision_runtime(q)
    q.add_argument("--quiet", action="store_true")
    add_device(q)


def run_index(args: argparse.Namespace) -> int:
    if args.index_command in ("remove", "move"):
        return run_index_edit(args)
    if args.index_command == "check":
        from songsight.index.gallery_check import check_gallery

        report = check_gallery(args.gallery, prune=args.prune, yes=args.yes)
        print(report.summary())
        return report.exit_code
    if args.index_command == "calibrate":
        from songsight.retrieval.calibration import calibrate

        result = calibrate(args.gallery, args.recordings, args.model, split=args.split or None,
                           progress=not args.quiet, audio_model=args.audio_model,
                           image_model=args.image_model, device=args.device,
                           cascade_mode=args.cascade, batch_size=args.batch_size,
                           precision=args.precision, method=args.method, runtime=args.runtime,
                           quiet=args.quiet)  # fmt: skip
        print(result.summary())
        return 0
    from songsight.retrieval.gallery import add_to_gallery, build_gallery

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


def add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="find the photos (and species) of the birds in recordings")
    p.add_argument("recordings", nargs="+", metavar="RECORDINGS", help="audio files or folders")
    p.add_argument("--gallery", required=True, metavar="DIR")
    _add_query_models(p)
    _add_method(p)
    _add_cascade_prompts(p)
    _add_cascade_mode(p)
    p.add_argument("--k", type=positive(int), default=10, help="photos per result (default 10)")
    p.add_argument("--window-s", type=positive(float), default=None)
    p.add_argument("--hop-s", type=positive(float), default=None)
    p.add_argument(
        "--min-score",
        type=_probability,
        default=0.0,
        metavar="P",
        help="keep species of probability >= P, and only the windows that detect one "
        "(every format and --raven)",
    )
    _add_species_list(p)
    p.add_argument("--format", choices=("table", "csv", "json", "parquet"), default="table")
    p.add_argument("--out", metavar="FILE", help="default stdout; parquet needs it")
    p.add_argument(
        "--raven", metavar="DIR", help="also write one Raven selection table per recording"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out (and Raven tables)"
    )
    p.add_argument("--batch-size", type=positive(int), default=16)
    add_precision_runtime(p)
    p.add_argument("--quiet", action="store_true")
    add_device(p)


def run_search(args: argparse.Namespace) -> int:
    from songsight.retrieval.job import run_search

    return run_search(args.recordings, args.gallery, model=args.model, audio_model=args.audio_model,
                                image_model=args.image_model, k=args.k, window_s=args.window_s, hop_s=args.hop_s,
                                fmt=args.format, out=args.out, raven=args.raven, overwrite=args.overwrite,
                                min_score=args.min_score, species_list=args.species_list,
                                device=args.device, cascade_mode=args.cascade,
                                batch_size=args.batch_size, precision=args.precision,
                                progress=not args.quiet, method=args.method, runtime=args.runtime,
                                **_cascade_prompts(args))  # fmt: skip
