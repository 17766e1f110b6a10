"""Options shared by several subcommands, and the default model ids they name.

``search``, ``serve`` and ``index calibrate`` share the query options: the distilled model
or the zero-shot cascade, its method, prompts and species list.

Only argparse here: nothing heavy is imported, so ``songsight --help`` stays instant.
"""

from __future__ import annotations

import argparse

AUDIO_DEFAULT = "davidrrobinson/BioLingual"
IMAGE_DEFAULT = "hf-hub:imageomics/bioclip-2"


def _number(kind, text: str):
    """``kind(text)``, or the argparse error that says what was wrong with the text."""
    try:
        return kind(text)
    except ValueError:
        pass
    if kind is int:
        try:
            float(text)
        except ValueError:
            pass
        else:  # "2.5", "1e3": a number, just not a whole one
            raise argparse.ArgumentTypeError(f"needs a whole number, got {text!r}")
    raise argparse.ArgumentTypeError(f"not a number: {text!r}")


def positive(kind):
    """An argparse type that accepts only numbers above zero (a clean exit 2 otherwise)."""

    def parse(text: str):
        value = _number(kind, text)
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be a finite number above zero, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def port(text: str) -> int:
    """An argparse type for a TCP port: a whole number from 1 to 65535 (exit 2 otherwise)."""
    value = _number(int, text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a whole number from 1 to 65535, got {text}")
    return value


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", default="auto", help="cuda, cuda:N, cpu or auto (default: CUDA when present)"
    )


def add_audio_model(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--audio-model",
        default=AUDIO_DEFAULT,
        metavar="ID_OR_DIR",
        help=f"BioLingual-style CLAP model: Hub id or local folder (default {AUDIO_DEFAULT})",
    )


def add_image_model(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--image-model",
        default=IMAGE_DEFAULT,
        metavar="ID_OR_DIR",
        help=f"BioCLIP-2-style open_clip model: Hub id or local folder (default {IMAGE_DEFAULT})",
    )


def add_engine(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="ray: Ray Data model workers over many files/machines (pip install 'songsight[scale]')",
    )
    p.add_argument(
        "--workers", type=positive(int), default=2, help="model workers for --engine ray"
    )


def add_yes(p: argparse.ArgumentParser, what: str = "the photos") -> None:
    """``--yes``: a command that would remove many photos, or all, shows them and stops without it."""
    p.add_argument(
        "--yes",
        action="store_true",
        help=f"remove {what} without stopping to show them first (needed when more than 5 "
        "photos, or all of them, would go)",
    )


def add_precision_runtime(p: argparse.ArgumentParser, ray: bool = False) -> None:
    """``--precision`` and ``--runtime``: how every command that encodes runs its models."""
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "int8"),
        default="auto",
        help="auto: bf16 on CUDA, fp32 on CPU; int8: CPU only, quantised Linear layers",
    )
    p.add_argument(
        "--runtime",
        choices=("auto", "torch", "onnxruntime"),
        default="auto",
        help="auto: ONNX Runtime for fp32 on a CPU when installed (starts without torch; a "
        "model's tower is exported once into songsight's cache), else torch"
        + (". --engine ray: torch" if ray else ""),
    )


def add_query_models(p: argparse.ArgumentParser) -> None:
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


def add_method(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--method",
        choices=("distilled", "distilled_proto", "fused", "cascade"),
        default=None,
        help="with --model: how it answers (default: the method its validation chose; "
        "fused names species it was not distilled on through the cascade)",
    )


def add_cascade_prompts(p: argparse.ArgumentParser) -> None:
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


def cascade_prompts(args: argparse.Namespace) -> dict:
    """The options of `add_cascade_prompts` as keyword arguments of the search functions."""
    return {
        "prompt_format": args.prompt_format,
        "templates": args.templates,
        "audio_prompt_format": args.audio_prompt_format,
        "audio_templates": args.audio_templates,
    }


def add_cascade_mode(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "--cascade",
        choices=("top1", "weighted"),
        default="top1",
        help="zero-shot cascade: top1 queries with the text of BioLingual's most probable "
        "species; weighted with every species' text weighted by its probability (default top1)",
    )


def add_species_list(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--species-list",
        metavar="FILE",
        help="answer only with these species: scientific or common names or codes, one a line "
        "(entries not in the gallery are listed and skipped)",
    )
