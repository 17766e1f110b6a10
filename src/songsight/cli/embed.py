"""``songsight download`` and ``songsight embed audio|images``: models in, embeddings out."""

from __future__ import annotations

import argparse

from songsight.cli.common import (
    AUDIO_DEFAULT,
    IMAGE_DEFAULT,
    add_audio_model,
    add_device,
    add_engine,
    add_image_model,
    add_precision_runtime,
    positive,
)


def add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download", help="fetch BioLingual and BioCLIP-2 into the Hub cache for offline use"
    )
    p.add_argument("--audio-model", default=AUDIO_DEFAULT, metavar="ID")
    p.add_argument("--image-model", default=IMAGE_DEFAULT, metavar="ID")
    p.add_argument("--revision", default=None, help="pin a Hub revision (branch, tag or commit)")
    p.add_argument("--cache-dir", default=None)


def run_download(args: argparse.Namespace) -> int:
    from songsight.encoders.loading import download_models

    for m in download_models(args.audio_model, args.image_model, args.revision, args.cache_dir):
        print(f"{m.model_id}: revision {m.revision} at {m.path}")
    return 0


def add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed recordings or photos into a Parquet file")
    esub = p.add_subparsers(dest="modality", metavar="{audio,images}", required=True)
    for name in ("audio", "images"):
        q = esub.add_parser(name, help=f"embed {name} files (folders are walked recursively)")
        q.add_argument("paths", nargs="+", metavar="PATHS")
        q.add_argument("--out", required=True, metavar="FILE.parquet")
        q.add_argument(
            "--resume", action="store_true", help="skip files already in --out (by content hash)"
        )
        q.add_argument("--overwrite", action="store_true", help="replace an existing --out")
        q.add_argument(
            "--batch-size", type=positive(int), default=None,
            help="default: 16 windows / 32 photos on a CPU, 64 / 256 on a GPU",
        )  # fmt: skip
        q.add_argument("--quiet", action="store_true", help="no progress bar")
        add_device(q)
        add_engine(q)
        add_precision_runtime(q, ray=True)
        if name == "audio":
            add_audio_model(q)
            q.add_argument(
                "--window-s",
                type=positive(float),
                default=None,
                help="analysis window (default: the model's, 10 s)",
            )
            q.add_argument(
                "--hop-s",
                type=positive(float),
                default=None,
                help="hop between windows (default: half a window)",
            )
        else:
            add_image_model(q)
            q.add_argument(
                "--preprocess",
                choices=("model", "squash"),
                default="model",
                help="model: the checkpoint's own resize+centre-crop (default); squash: resize without crop",
            )


def run_embed(args: argparse.Namespace) -> int:
    from songsight.jobs.embed import claim_store

    if args.engine == "ray" and args.runtime == "onnxruntime":
        from songsight.errors import SongsightError

        raise SongsightError("--runtime onnxruntime runs --engine local jobs; Ray's workers run torch")  # fmt: skip
    # --out judged and claimed before any model loads; the job takes the claim over.
    with claim_store(args.out, args.resume, args.overwrite):
        return _run_embed_ray(args) if args.engine == "ray" else _run_embed_local(args)


def _run_embed_local(args: argparse.Namespace) -> int:
    from songsight.encoders.runtime import open_audio_encoder, open_image_encoder
    from songsight.jobs import embed

    choice = dict(device=args.device, precision=args.precision, runtime=args.runtime, quiet=args.quiet)  # fmt: skip
    if args.modality == "audio":
        try:
            enc = open_audio_encoder(
                args.audio_model,
                batch_size=args.batch_size,
                window_s=args.window_s,
                hop_s=args.hop_s,
                **choice,
            )
        except ValueError as exc:  # e.g. a --window-s longer than the model's: a bad argument
            from songsight.errors import SongsightError

            raise SongsightError(str(exc)) from None
        report = embed.embed_audio_files(
            args.paths,
            args.out,
            enc,
            args.window_s,
            args.hop_s,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    else:
        enc = open_image_encoder(
            args.image_model, batch_size=args.batch_size, preprocess=args.preprocess, **choice
        )
        report = embed.embed_image_files(
            args.paths,
            args.out,
            enc,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    print(report.summary())
    return report.exit_code


def _run_embed_ray(args: argparse.Namespace) -> int:
    from songsight.jobs import ray as scale

    common = dict(resume=args.resume, overwrite=args.overwrite, progress=not args.quiet,
                  concurrency=args.workers, device=args.device, precision=args.precision)  # fmt: skip
    if args.modality == "audio":
        report = scale.embed_audio_files_ray(args.paths, args.out, args.audio_model, window_s=args.window_s,
                                             hop_s=args.hop_s, batch_size=args.batch_size or 16, **common)  # fmt: skip
    else:
        report = scale.embed_image_files_ray(args.paths, args.out, args.image_model, preprocess=args.preprocess,
                                             batch_size=args.batch_size or 32, **common)  # fmt: skip
    print(report.summary())
    return report.exit_code
