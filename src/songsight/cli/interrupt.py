"""What Ctrl-C leaves behind, per command, and the exact command line that carries on.

`interrupted_message` is printed by `songsight.cli.main` when a command is interrupted. Each
command keeps something different (an embedding store's finished parts, a gallery's embedded
photos, the last distillation checkpoint, nothing at all) and continues differently (``embed``
and ``distill`` need ``--resume``; ``index build`` resumes by itself and must not be told
``--overwrite`` again), so the message is built from the command line that was interrupted.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

__all__ = ["interrupted_message"]


def _is_flag(token: str, flag: str) -> bool:
    """Whether ``token`` is ``flag`` or an abbreviation argparse would take for it."""
    name = token.split("=", 1)[0]
    return len(name) > 4 and flag.startswith(name)


def _command(argv: list[str], drop: str | None = None, add: str | None = None) -> str:
    tokens = [t for t in argv if drop is None or not _is_flag(t, drop)]
    if add is not None and not any(_is_flag(t, add) for t in tokens):
        tokens.append(add)
    return shlex.join(["songsight", *tokens])


def _embedded_so_far(out: Path) -> str:
    """What an interrupted ``embed`` kept, as it is on disk now (a part is written every
    couple of thousand rows, so the first ones may not have reached it yet)."""
    parts = out.with_name(out.name + ".parts")
    if any(parts.glob("part-*.parquet")):
        return f"the files embedded so far are kept in {parts} (merged into {out} when the run finishes)"  # fmt: skip
    if out.is_file():
        return f"{out} is kept as it was; no new file was embedded yet"
    return "no file was embedded and saved yet"


def interrupted_message(args: argparse.Namespace, argv: list[str]) -> str:
    """One paragraph for stderr: what was kept, and the command that continues."""
    command = getattr(args, "command", None)
    same = _command(argv)
    if command == "embed":
        kept = _embedded_so_far(Path(args.out))
        todo = f"continue with: {_command(argv, drop='--overwrite', add='--resume')}"
    elif command == "index" and args.index_command in ("build", "add"):
        kept = f"the photos embedded so far are kept in {args.gallery}"
        todo = f"continue with (a rerun skips them): {_command(argv, drop='--overwrite')}"
    elif command == "index":
        kept = f"{args.gallery} was not changed"
        todo = f"run it again: {same}"
    elif command == "distill":
        kept = f"the last saved checkpoint is kept in {args.out}/last (if one was saved)"
        todo = f"continue with: {_command(argv, add='--resume')}"
    elif command == "search":
        kept = "nothing was written: results are written when the search finishes"
        todo = f"run it again: {same}"
    elif command == "data":
        kept = "the part of the archive already downloaded is kept"
        todo = f"continue with (the download resumes): {same}"
    elif command == "demo":
        kept = f"the steps already finished are kept (cached) in {args.out}"
        todo = f"continue with (finished steps are not redone): {same}"
    elif command == "download":
        kept = "the files already downloaded are kept in the Hub cache"
        todo = f"continue with: {same}"
    elif command == "serve":
        return "songsight: stopped"
    else:
        kept = "nothing was written"
        todo = f"run it again: {same}"
    return f"songsight: interrupted; {kept}; {todo}"
