"""songsight command line: parse, then call one library function per subcommand.

Heavy imports (torch, transformers, open_clip) happen after parsing so ``--help`` is instant.
Deliberate errors print one line and exit 2 (nothing could run) or 1 (some inputs failed).

Each command group owns its subparsers and handlers: ``embed`` (download, embed),
``train`` (demo, evaluate, report, data, distill) and ``gallery`` (serve, index, search);
options several commands share live in ``common``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from songsight.cli import embed, gallery, train
from songsight.cli.common import AUDIO_DEFAULT, IMAGE_DEFAULT

__all__ = ["AUDIO_DEFAULT", "IMAGE_DEFAULT", "build_parser", "main"]

# name -> (add its subparser, run it); in the order ``songsight --help`` lists them.
_COMMANDS: dict[
    str,
    tuple[
        Callable[[argparse._SubParsersAction], None],
        Callable[[argparse.Namespace], int],
    ],
] = {
    "download": (embed.add_download, embed.run_download),
    "embed": (embed.add_embed, embed.run_embed),
    "demo": (train.add_demo, train.run_demo),
    "evaluate": (train.add_evaluate, train.run_evaluate),
    "report": (train.add_report, train.run_report),
    "serve": (gallery.add_serve, gallery.run_serve),
    "index": (gallery.add_index, gallery.run_index),
    "search": (gallery.add_search, gallery.run_search),
    "data": (train.add_data, train.run_data),
    "distill": (train.add_distill, train.run_distill),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="songsight",
        description="Hear a bird, see it: retrieve photos of the species singing in a recording.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add, _ in _COMMANDS.values():
        add(sub)
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command not in _COMMANDS:
        raise AssertionError(f"unhandled command {args.command}")
    _, run = _COMMANDS[args.command]
    return run(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from songsight.provenance import package_version

        print(f"songsight {package_version()}")
        return 0
    if not args.command:
        parser.print_help()
        return 2
    from songsight.errors import SongsightError

    try:
        return _run(args)
    except SongsightError as exc:
        print(f"songsight: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        from songsight.cli.interrupt import interrupted_message

        print(interrupted_message(args, sys.argv[1:] if argv is None else argv), file=sys.stderr)
        return 130
