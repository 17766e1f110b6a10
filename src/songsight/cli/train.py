"""Experiments: ``songsight demo``, ``evaluate``, ``report``, ``data ssw60`` and ``distill``."""

from __future__ import annotations

import argparse
from pathlib import Path

from songsight.cli.common import (
    add_audio_model,
    add_device,
    add_image_model,
    add_precision_runtime,
    positive,
)


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole job offline in a simulated world (build, pretrain, distil, evaluate)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a 12-species world, for tests and smoke runs (< 1 min)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--species", type=int, default=None, help="number of species (default 60, quick 12)"
    )
    p.add_argument("--out", default="songsight-demo", metavar="DIR")


def run_demo(args: argparse.Namespace) -> int:
    from songsight.sim.demo import run_demo as run_sim_demo

    run_sim_demo(args.out, seed=args.seed, species=args.species, quick=args.quick)
    return 0


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


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="merge several RESULTS.json into one Markdown table")
    p.add_argument("results", nargs="+", metavar="RESULTS.json")
    p.add_argument("--names", help="comma list of run names")
    p.add_argument(
        "--out", help="write the Markdown here instead of printing it (HTML tables: FILE.html)"
    )


def run_report(args: argparse.Namespace) -> int:
    from songsight.eval.report import merge_reports
    from songsight.eval.report_html import merge_reports_html
    from songsight.outputs import claim, write_text_atomically

    names = [x.strip() for x in args.names.split(",")] if args.names else None
    html = bool(args.out) and Path(args.out).suffix.lower() in (".html", ".htm")
    if not args.out:
        print(merge_reports(args.results, names))
        return 0
    with claim(args.out, what="--out"):
        text = (merge_reports_html if html else merge_reports)(args.results, names)
        write_text_atomically(args.out, text)
    return 0


def add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="datasets: download and verify")
    dsub = p.add_subparsers(dest="dataset", metavar="{ssw60}", required=True)
    q = dsub.add_parser(
        "ssw60", help="download (resumable, md5-checked) and extract SSW60, or verify it"
    )
    q.add_argument("dir", metavar="DIR")
    q.add_argument("--url", default=None, help="archive URL (default: the official one)")
    q.add_argument("--quiet", action="store_true")


def run_data(args: argparse.Namespace) -> int:
    from songsight.data.download import DEFAULT_URL, fetch_ssw60, format_ssw60_report

    report = fetch_ssw60(args.dir, url=args.url or DEFAULT_URL, progress=not args.quiet)
    print(format_ssw60_report(report))
    return 0


def add_distill(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill", help="distil BioCLIP-2 species text embeddings into BioLingual's audio encoder"
    )
    p.add_argument(
        "--train",
        required=True,
        metavar="MANIFEST",
        help="CSV/Parquet with path, label (and split)",
    )
    p.add_argument(
        "--species",
        required=True,
        metavar="TAXA_CSV",
        help="the species table the labels refer to: scientific_name and common_name, "
        "optionally label, species_code, order, family ... (SSW60's taxa.csv reads as it is)",
    )
    add_audio_model(p)
    add_image_model(p)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument(
        "--val", metavar="MANIFEST", help="validation audio (zero-shot species accuracy each epoch)"
    )
    p.add_argument(
        "--val-gallery",
        metavar="MANIFEST",
        help="validation images (path, label) for audio-to-image mAP",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from DIR/last exactly (optimizer, schedule, RNG)",
    )
    p.add_argument(
        "--config", metavar="JSON", help="a DistillConfig as JSON; flags below override it"
    )
    p.add_argument(
        "--cache-dir", help="where teacher targets are cached (default ~/.cache/songsight/targets)"
    )
    p.add_argument("--quiet", action="store_true")
    add_device(p)
    from songsight.config import DistillConfig

    _distill_flags(p, DistillConfig())


def run_distill(args: argparse.Namespace) -> int:
    import json

    from songsight.config import DistillConfig
    from songsight.distill.train import distill
    from songsight.errors import SongsightError

    try:  # a bad --config file or flag value is the user's to fix: one line, exit 2
        base = (
            DistillConfig.from_dict(json.loads(Path(args.config).read_text(encoding="utf-8")))
            if args.config
            else DistillConfig()
        )
        config = _config_from_flags(base, args)
    except (ValueError, TypeError, AttributeError) as exc:
        where = f"--config {args.config}" if args.config else "the distillation flags"
        raise SongsightError(f"{where}: {exc}") from None
    summary = distill(
        args.train,
        args.species,
        args.audio_model,
        args.image_model,
        args.out,
        config,
        val_manifest=args.val,
        val_gallery=args.val_gallery,
        resume=args.resume,
        device=args.device,
        progress=not args.quiet,
        cache_dir=args.cache_dir,
    )
    print(json.dumps(summary, indent=1))
    return 0


def _distill_flags(parser, defaults) -> None:
    """One ``--flag`` per DistillConfig field (``train`` is ``--train-mode`` beside the manifest).

    Defaults are None so that only flags given on the command line override ``--config``.
    """
    from dataclasses import fields

    from songsight.config import HEAD_INITS, HEADS, NONE_DEFAULTS, TRAIN_CHOICES, DistillConfig

    for f in fields(DistillConfig):
        flag = "--train-mode" if f.name == "train" else "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        kw: dict = {
            "default": None,
            "dest": f"cfg_{f.name}",
            "help": NONE_DEFAULTS.get(f.name, f"(default {value})")
            if value is None
            else f"(default {value})",
            "metavar": f.name.upper(),
        }
        if f.name == "train":
            kw["choices"] = TRAIN_CHOICES
        elif f.name == "head_init":
            kw["choices"] = HEAD_INITS
        elif f.name == "head":
            kw["choices"] = HEADS
        elif f.name == "templates":
            kw["metavar"] = "SET|TEMPLATE|FILE"
            kw["help"] = (
                "teacher prompt templates: a set (none, photo, openai, sound), a template with "
                "fields such as '{scientific} with common name {common}', or a file of them, one "
                f"a line (default {value})"
            )
        if isinstance(value, bool):
            kw["type"] = lambda v: v.lower() in ("1", "true", "yes", "on")
            kw["metavar"] = "BOOL"
        elif isinstance(value, tuple):
            kw.update(nargs=2, type=float)
        elif isinstance(value, (int, float)):
            kw["type"] = type(value)
        elif f.name == "cache_audio":
            kw["type"] = lambda v: v.lower() in ("1", "true", "yes", "on")
            kw["metavar"] = "BOOL"
        elif f.name in ("head_hidden", "epochs", "warmup_steps"):
            kw["type"] = int
        elif f.name == "window_s":
            kw["type"] = float
        parser.add_argument(flag, **kw)


def _config_from_flags(base, args):
    from dataclasses import fields

    from songsight.config import DistillConfig

    d = base.to_dict()
    for f in fields(DistillConfig):
        v = getattr(args, f"cfg_{f.name}", None)
        if v is not None:
            d[f.name] = v
    return DistillConfig.from_dict(d)
