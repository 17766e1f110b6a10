"""``songsight distill``: BioCLIP-2's species text distilled into BioLingual's audio encoder,
configured by one ``--flag`` per `DistillConfig` field over an optional ``--config`` file."""

from __future__ import annotations

import argparse
from pathlib import Path

from songsight.cli.common import add_audio_model, add_device, add_image_model


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
