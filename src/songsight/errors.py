"""The few exception types songsight raises on purpose.

Each carries a message written for the person at the terminal: what is wrong and what to do.
The CLI turns them into one line on stderr and an exit code, never a traceback.
"""

from __future__ import annotations


class SongsightError(Exception):
    """Base of every deliberate songsight error."""

    exit_code = 2


class ModelNotFoundError(SongsightError):
    """A model could not be resolved from the Hub id, local directory or cache."""


class DataNotFoundError(SongsightError):
    """A dataset, manifest or required column is missing."""


class ProvenanceMismatchError(SongsightError):
    """An artefact was made by other models or settings than the ones asked to use it."""


class InputFileError(SongsightError):
    """One input file cannot be used (corrupt, empty, NaN, not media...).

    Raised per file; batch code records it and carries on with the other files.
    """

    exit_code = 1

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")
