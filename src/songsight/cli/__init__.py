"""songsight command line: parse, then call one library function per subcommand.

Heavy imports (torch, transformers, open_clip) happen after parsing so ``--help`` is instant.
Deliberate errors print one line and exit 2 (nothing could run) or 1 (some inputs failed); so
do files that cannot be read or written and running out of memory. Anything else is a bug:
one line naming the log file that holds its traceback, exit 3 (``--debug`` prints the
traceback instead).

Each command has a module of its name that owns its subparsers and handlers (``embed``
holds ``download`` too); options several commands share live in ``common``, the Milvus
options in ``milvus``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from songsight.cli import data, demo, distill, embed, evaluate, index, report, search, serve
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
    "demo": (demo.add_demo, demo.run_demo),
    "evaluate": (evaluate.add_evaluate, evaluate.run_evaluate),
    "report": (report.add_report, report.run_report),
    "serve": (serve.add_serve, serve.run_serve),
    "index": (index.add_index, index.run_index),
    "search": (search.add_search, search.run_search),
    "data": (data.add_data, data.run_data),
    "distill": (distill.add_distill, distill.run_distill),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="songsight",
        description="Hear a bird, see it: retrieve photos of the species singing in a recording.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add, _ in _COMMANDS.values():
        add(sub)
    _add_debug_everywhere(parser)
    return parser


DEBUG_HELP = "on an unexpected error, print the traceback instead of writing it to a log file"
EXIT_BUG = 3


def _add_debug_everywhere(parser: argparse.ArgumentParser) -> None:
    """``--debug`` after any (sub)command too, where people type it; SUPPRESS keeps a
    subcommand from resetting a ``--debug`` given before it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.add_argument(
                    "--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP
                )
                _add_debug_everywhere(child)


def crash_log_dir() -> Path:
    """``$SONGSIGHT_LOG_DIR``, else ``logs`` in songsight's cache (`songsight.config.cache_dir`)."""
    if os.environ.get("SONGSIGHT_LOG_DIR"):
        return Path(os.environ["SONGSIGHT_LOG_DIR"])
    from songsight.config import cache_dir

    return cache_dir("logs")


def _write_crash_log(argv: list[str]) -> Path:
    """The current exception's traceback, the command line and versions, in a new log file."""
    import platform
    import tempfile
    import time
    import traceback

    from songsight.provenance import package_version

    text = (
        f"songsight {package_version()}, Python {platform.python_version()}, {platform.platform()}\n"
        f"command: songsight {' '.join(argv)}\n\n{traceback.format_exc()}"
    )
    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (crash_log_dir(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text, encoding="utf-8")
            return folder / name
        except OSError:
            continue
    raise OSError("no writable folder for the log")


def _expected(exc: BaseException) -> str | None:
    """The one-line message of an error that is the environment's, not a bug: a file that
    cannot be read or written, memory run out. None for anything else."""
    from songsight.errors import one_line

    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return f"out of memory ({one_line(exc, 160)}); try a smaller --batch-size"
    return None


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """songsight's own warnings as the one-line notes the CLI prints (``songsight: ...``);
    other libraries' in Python's usual form."""
    import warnings

    if "songsight" in Path(filename).parts:
        print(f"songsight: {message}", file=file or sys.stderr)
    else:
        print(warnings.formatwarning(message, category, filename, lineno, line), end="",
              file=file or sys.stderr)  # fmt: skip


def _quiet_broken_pipe() -> int:
    """The reader of our output went away (``songsight search ... | head``): stop quietly,
    with stdout pointed at nothing so Python's own flush at exit does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141  # 128 + SIGPIPE, as a shell tool killed by the broken pipe would report


def _run(args: argparse.Namespace) -> int:
    if args.command not in _COMMANDS:
        raise AssertionError(f"unhandled command {args.command}")
    _, run = _COMMANDS[args.command]
    return run(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.version:
        from songsight.provenance import package_version

        print(f"songsight {package_version()}")
        return 0
    if not args.command:
        parser.print_help()
        return 2
    import warnings

    from songsight.errors import SongsightError, one_line

    shown, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        return _run(args)
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except SongsightError as exc:
        if args.debug:
            import traceback

            traceback.print_exc()
        print(f"songsight: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        from songsight.cli.interrupt import interrupted_message

        print(interrupted_message(args, sys.argv[1:] if argv is None else argv), file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, or an error songsight does not know yet
        if args.debug:
            import traceback

            traceback.print_exc()
        message = _expected(exc)
        if message is not None:
            print(f"songsight: error: {message}", file=sys.stderr)
            return 2
        if args.debug:
            return EXIT_BUG
        what = f"{type(exc).__name__}: {one_line(exc, 200)}"
        try:
            where = f"the traceback is in {_write_crash_log(argv)}"
        except OSError:
            where = "no log file could be written"
        print(
            f"songsight: internal error ({what}); {where}. Rerun with --debug to print it, "
            "and please report it.",
            file=sys.stderr,
        )
        return EXIT_BUG
    finally:
        warnings.showwarning = shown
