"""Tiny models of the real architectures, saved in the real on-disk formats.

The builders live in `songsight.sim.tiny_models`; this module is their command line:
``python -m songsight.testing tiny-models OUT_DIR`` writes ``OUT_DIR/audio`` (a transformers
``ClapModel`` folder laid out as BioLingual's) and ``OUT_DIR/image`` (an open_clip folder laid
out as BioCLIP-2's). Both load through `songsight.encoders.loading` like the real models.
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from songsight.sim.tiny_models import build_tiny_clap, build_tiny_open_clip


def build_tiny_models(out_dir: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Both tiny models under ``out_dir/audio`` and ``out_dir/image``."""
    out = Path(out_dir)
    return build_tiny_clap(out / "audio", seed=seed), build_tiny_open_clip(out / "image", seed=seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m songsight.testing", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser(
        "tiny-models", help="write tiny audio (transformers) and image (open_clip) models"
    )
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    audio, image = build_tiny_models(args.out_dir, args.seed)
    print(f"audio model: {audio}\nimage model: {image}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
