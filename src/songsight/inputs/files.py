"""Input files on disk: which files a job takes, their content hash, and the one ``errors.csv``.

Every job that reads many files (``songsight embed``, the Ray job, gallery builds) reports the
files it could not use the same way: a CSV of ``path,error`` beside its output, absent when
nothing failed, so a user greps one format whatever made it.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from songsight.errors import DataNotFoundError

ERRORS_HEADER = ("path", "error")


def collect_files(paths: Iterable[str | Path], suffixes: Sequence[str]) -> list[Path]:
    """Files named directly (whatever their suffix) plus media files under folders, recursively.

    Order is stable (sorted within each folder, duplicates dropped) so reruns line up.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes)
        elif p.exists():
            found = [p]
        else:
            raise DataNotFoundError(f"no such file or folder: {p}")
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes: the key by which stores resume and skip duplicates."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def errors_path_for(out: str | Path) -> Path:
    """``X.errors.csv`` beside a store ``X.parquet`` (or ``X``)."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".parquet") + ".errors.csv")


def read_errors(path: Path) -> list[tuple[str, str]]:
    """The ``(path, error)`` rows of an errors file; none when it does not exist."""
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return [(r["path"], r["error"]) for r in csv.DictReader(fh)]


def write_errors(path: Path, rows: Sequence[tuple[str, str]]) -> None:
    """Replace ``path`` with these rows in one step (a crash leaves the old file or the new
    one, never half of one); no rows removes the file."""
    if not rows:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(ERRORS_HEADER)
        w.writerows(rows)
    os.replace(tmp, path)


class ErrorLog:
    """An errors file written as a job goes: rewritten per run, flushed per line, so the
    failures found before an interruption are on disk. Removed at `close` when empty."""

    def __init__(self, path: Path, initial: Iterable[tuple[str, str]] = ()):
        self.path = path
        self.count = 0
        self._fh = path.open("w", newline="", encoding="utf-8")
        self._w = csv.writer(self._fh)
        self._w.writerow(ERRORS_HEADER)
        for row in initial:
            self.write(*row)

    def write(self, path: str, error: str) -> None:
        self._w.writerow([path, error])
        self._fh.flush()
        self.count += 1

    def close(self) -> None:
        self._fh.close()
        if self.count == 0:
            self.path.unlink(missing_ok=True)
