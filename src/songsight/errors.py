"""The few exception types songsight raises on purpose.

Each carries a message written for the person at the terminal: what is wrong and what to do.
The CLI turns them into one line on stderr and an exit code, never a traceback.
"""

from __future__ import annotations

from pathlib import Path


class SongsightError(Exception):
    """Base of every deliberate songsight error."""

    exit_code = 2


class ModelNotFoundError(SongsightError):
    """A model could not be resolved from the Hub id, local directory or cache."""


class DataNotFoundError(SongsightError):
    """A dataset, manifest or required column is missing."""


class ProvenanceMismatchError(SongsightError):
    """An artefact was made by other models or settings than the ones asked to use it."""


class WindowError(SongsightError, ValueError):
    """An analysis window or hop the model cannot use (longer than its window, not positive)."""


class InputFileError(SongsightError):
    """One input file cannot be used (corrupt, empty, NaN, not media...).

    Raised per file; batch code records it and carries on with the other files.
    """

    exit_code = 1

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (whitespace collapsed, cut at ``limit`` characters),
    or its type name when it has none: for the one-line errors the CLI prints."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def require_file(path: str | Path) -> str:
    """``str(path)`` of an input file; `InputFileError` when it is missing or empty (0 bytes).

    The first check of every decoder (audio, streamed audio, photos), so all say it alike.
    """
    path, name = Path(path), str(path)
    if not path.is_file():
        raise InputFileError(name, "file not found")
    if path.stat().st_size == 0:
        raise InputFileError(name, "empty file (0 bytes)")
    return name
