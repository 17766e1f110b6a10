"""What a job writes: claimed before any work, one writer at a time, replaced whole.

Every job that writes (``embed``, ``index``, ``search``, ``distill``, ``evaluate``, ``report``,
``demo``) claims each of its outputs with `claim` before its first model loads. A claim

- makes the output's folder and proves it writable, so an unwritable ``--out`` fails in the
  first second, not after the work;
- refuses an output that exists when the job would not continue or replace it, with the
  job's own advice;
- takes a lock beside the output (``.NAME.lock`` for a file, ``DIR/.songsight.lock`` for a
  folder) holding the holder's pid, host, command and start time, so that a second job
  writing the same output stops at once with one line naming the first. The lock is an
  advisory ``flock``: the kernel drops it when its process dies, so a killed job never leaves
  a stale lock behind.

`replace_atomically` and `write_text_atomically` write a finished file under a temporary
name of the writer's own and rename it into place: a reader, or a crash, sees the old file
or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from songsight.errors import SongsightError

__all__ = [
    "Claim",
    "OutputBusyError",
    "claim",
    "lock_path_for",
    "replace_atomically",
    "write_text_atomically",
]

FOLDER_LOCK = ".songsight.lock"


class OutputBusyError(SongsightError):
    """Another running job is writing the same output."""


def lock_path_for(path: str | Path, folder: bool = False) -> Path:
    """Where the lock of an output lives: inside a folder, beside a file."""
    path = Path(path)
    return path / FOLDER_LOCK if folder else path.with_name(f".{path.name}.lock")


def _describe_holder(lock: Path) -> str:
    try:
        info = json.loads(lock.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another songsight job"
    host = (
        f" on {info['host']}" if info.get("host") and info["host"] != socket.gethostname() else ""
    )
    return (
        f"another songsight job (pid {info.get('pid')}{host}, since {info.get('started_utc')}: "
        f"{info.get('command')})"
    )


def _cannot_write(path: Path, exc: OSError, what: str) -> SongsightError:
    reason = exc.strerror or type(exc).__name__
    return SongsightError(f"cannot write {what} {path}: {reason.lower()}")


class Claim:
    """A held output (see `claim`); `release` (or leaving its ``with`` block) lets it go."""

    _held: dict[Path, Claim] = {}  # per process: a job's own nested claims share one lock

    def __init__(self, path: Path, lock: Path, fd: int | None, made_folder: bool = False):
        self.path, self.lock, self._fd, self._depth = path, lock, fd, 1
        self._made_folder = made_folder  # the claim made the lock's folder: gone if left empty

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        self._depth -= 1
        if self._depth > 0 or self._fd is None:
            return
        Claim._held.pop(self.lock, None)
        try:  # unlinked while still held: a job that opened the old file retries on a new one
            os.unlink(self.lock)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
        if self._made_folder:
            try:  # a job that stopped before writing anything leaves no empty folder behind
                os.rmdir(self.lock.parent)
            except OSError:
                pass


def _lock_file(lock: Path) -> int | None:
    """An fd holding ``lock`` exclusively, or None when another process holds it."""
    import fcntl

    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:  # the holder before us may have unlinked the file we opened: lock the live one
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def claim(
    path: str | Path,
    *,
    folder: bool = False,
    what: str = "output",
    exists: str | None = None,
) -> Claim:
    """Claim ``path`` for this job: its folder made and shown writable, and the lock taken.

    ``folder``: the output is a folder (a gallery, a run, Raven tables), else a file.
    ``exists``: when given and ``path`` already exists, the job refuses with this advice
    (e.g. "pass --overwrite to replace it"); None when the job continues or replaces it.
    Raises `OutputBusyError` when another job holds the output, `SongsightError` when it
    cannot be written. Use it as a context manager, or call `Claim.release`.
    """
    path = Path(os.path.abspath(path))
    if folder and path.exists() and not path.is_dir():
        raise SongsightError(f"{what} {path} is a file, not a folder")
    if not folder and path.is_dir():
        raise SongsightError(f"{what} {path} is a folder; give a file name")
    lock = lock_path_for(path, folder)
    held = Claim._held.get(lock)
    if held is not None:
        held._depth += 1
        return held
    made_folder = not lock.parent.exists()
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = _lock_file(lock)
    except OSError as exc:
        raise _cannot_write(lock.parent, exc, f"{what} in") from None
    if fd is None:
        raise OutputBusyError(
            f"{path} is being written by {_describe_holder(lock)}; wait for it to finish, "
            "or write somewhere else"
        )
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    held = Claim(path, lock, fd, made_folder)
    if exists is not None and path.exists():  # checked under the lock: no writer can race it
        held.release()
        raise SongsightError(f"{path} already exists; {exists}")
    Claim._held[lock] = held
    return held


@contextmanager
def replace_atomically(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write the whole file to; renamed onto ``path`` when
    the block ends without an error, removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomically(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) in one step."""
    with replace_atomically(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
