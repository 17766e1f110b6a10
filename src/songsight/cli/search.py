"""``songsight search``: the photos and species of the birds in recordings, from a gallery."""

from __future__ import annotations

import argparse

from songsight.cli.common import (
    add_cascade_mode,
    add_cascade_prompts,
    add_device,
    add_method,
    add_precision_runtime,
    add_query_models,
    add_species_list,
    cascade_prompts,
    positive,
)


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a probability, in [0, 1]; got {text}")
    return value


def add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="find the photos (and species) of the birds in recordings")
    p.add_argument("recordings", nargs="+", metavar="RECORDINGS", help="audio files or folders")
    p.add_argument("--gallery", required=True, metavar="DIR")
    add_query_models(p)
    add_method(p)
    add_cascade_prompts(p)
    add_cascade_mode(p)
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
    add_species_list(p)
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
                                **cascade_prompts(args))  # fmt: skip
