"""Options shared by several subcommands, and the default model ids they name.

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
