"""``songsight evaluate``: score every method on SSW60 or a user's labelled recordings and
photos (retrieval, probes, zero-shot alignment, baselines)."""

from __future__ import annotations

import argparse

from songsight.cli.common import (
    add_audio_model,
    add_device,
    add_image_model,
    add_precision_runtime,
    positive,
)


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    from songsight.prompt_templates import PROMPT_FORMATS, TEMPLATE_SETS

    p = sub.add_parser(
        "evaluate",
        help="score on SSW60 or your own labelled recordings and photos: retrieval, probes, "
        "zero-shot alignment, baselines",
        description="Score songsight: audio-to-image retrieval of every method, probes, "
        "zero-shot alignment and baselines, written to RESULTS.json / .md / .html and figures. "
        "The data is SSW60 (--ssw60) or your own labelled recordings and photos (--audio, "
        "--photos and --species together), scored the same way.",
    )
    data = p.add_argument_group(
        "data (--ssw60, or --audio, --photos and --species)",
        "Manifests are CSV or Parquet with path and label columns; a label is an integer of "
        "the species table or a species' scientific name, common name or code.",
    )
    data.add_argument("--ssw60", metavar="ROOT", help="extracted SSW60 folder (or its parent)")
    data.add_argument(
        "--audio",
        metavar="MANIFEST",
        help="your labelled recordings; with a split column its 'test' rows are the queries and "
        "its 'train' rows train the probes; without one every row is a query and the probes "
        "are skipped (noted in the results)",
    )
    data.add_argument(
        "--photos",
        metavar="MANIFEST",
        help="your labelled photos, the gallery: its 'test' rows when it has a split column, "
        "else every row; a source column, where given, is scored part by part",
    )
    data.add_argument(
        "--species",
        metavar="TAXA_CSV",
        help="the species table the labels refer to: scientific_name and common_name, "
        "optionally label, species_code, order, family ... (SSW60's taxa.csv reads as it is)",
    )
    add_audio_model(p)
    add_image_model(p)
    p.add_argument(
        "--distilled", metavar="DIR", help="a distilled checkpoint (songsight distill --out)"
    )
    p.add_argument(
        "--methods", metavar="LIST", help="comma list; chance and oracle are always added"
    )
    p.add_argument(
        "--tasks", metavar="LIST", help="comma list of retrieval,discriminability,alignment"
    )
    p.add_argument("--out", default="RESULTS.json", metavar="RESULTS.json")
    p.add_argument(
        "--save-embeddings", metavar="DIR", help="write gallery and query embeddings as Parquet"
    )
    p.add_argument(
        "--soundscapes", metavar="MANIFEST", help="path,start_s,end_s,label rows (BirdSet style)"
    )
    p.add_argument(
        "--focal", metavar="MANIFEST", help="focal clips for zero-shot (default: the queries)"
    )
    p.add_argument(
        "--gallery",
        choices=("all", "nabirds", "inat"),
        default="all",
        help="SSW60 only: which images are the gallery (default all)",
    )
    sets = ", ".join(TEMPLATE_SETS)
    p.add_argument("--prompt-format", choices=PROMPT_FORMATS, default=None)
    p.add_argument(
        "--templates",
        default=None,
        metavar="SET|TEMPLATE|FILE",
        help=f"image-model species prompts: a set ({sets}), a template with fields such as "
        "'a photo of {common}' or '{scientific} with common name {common}', or a file of "
        "templates, one a line (default: the distilled checkpoint's, else none)",
    )
    p.add_argument("--audio-prompt-format", choices=PROMPT_FORMATS, default="com")
    p.add_argument(
        "--audio-templates",
        nargs="+",
        default=["sound"],
        metavar="SET|TEMPLATE|FILE",
        help="BioLingual species prompts, as --templates (e.g. 'the sound of {article} "
        "{common_lower}'); several candidates: each one's zero-shot top-1 on the train split "
        "is printed and the best is used (default sound)",
    )
    p.add_argument("--cascade-temperature", type=positive(float), default=None)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    add_device(p)
    p.add_argument("--batch-size", type=positive(int), default=16)
    add_precision_runtime(p)
    p.add_argument("--limit-queries", type=positive(int))
    p.add_argument("--limit-train", type=positive(int))
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--quiet", action="store_true")


def run_evaluate(args: argparse.Namespace) -> int:
    from songsight.eval.report import format_summary
    from songsight.eval.tasks import run_evaluation

    def split(v):
        return [x.strip() for x in v.split(",") if x.strip()] if v else None

    res = run_evaluation(
        args.ssw60, args.out, audio=args.audio, photos=args.photos, species=args.species,
        audio_model=args.audio_model, image_model=args.image_model,
        distilled=args.distilled, methods=split(args.methods), tasks=split(args.tasks),
        save_embeddings=args.save_embeddings, soundscapes=args.soundscapes, focal=args.focal,
        gallery=args.gallery, prompt_format=args.prompt_format, templates=args.templates,
        audio_prompt_format=args.audio_prompt_format, audio_templates=args.audio_templates,
        cascade_temperature=args.cascade_temperature, bootstrap=args.bootstrap, seed=args.seed,
        device=args.device, batch_size=args.batch_size, precision=args.precision, runtime=args.runtime,
        limit_queries=args.limit_queries, limit_train=args.limit_train,
        figures=not args.no_figures, progress=not args.quiet,
    )  # fmt: skip
    print(format_summary(res))
    return 0
