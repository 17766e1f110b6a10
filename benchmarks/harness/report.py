"""A benchmark's work folder, progress lines and output: JSON beside the printed report."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def work_folder(keep: str | Path | None, prefix: str) -> Iterator[Path]:
    """``keep`` (made if missing, kept afterwards: models and inputs are reused from it), or a
    fresh temporary folder removed afterwards."""
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


class Progress:
    """``say(msg)`` prints ``[    12 s] msg`` to stderr: seconds since the benchmark started."""

    def __init__(self) -> None:
        self.t_start = time.perf_counter()

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.t_start

    def say(self, msg: str) -> None:
        print(f"[{self.elapsed_s():6.0f} s] {msg}", file=sys.stderr, flush=True)


def write_json(path: str | Path, result, **dumps) -> None:
    """Every figure as JSON (``dumps`` passed to `json.dumps`, e.g. ``default=str``)."""
    Path(path).write_text(json.dumps(result, indent=1, **dumps))


def emit(report: str, result, out: str | Path | None, **dumps) -> None:
    """Write ``result`` to ``out`` first (a long run's figures survive any printing problem),
    then print ``report`` and, with ``out``, where the figures went."""
    if out:
        write_json(out, result, **dumps)
    print(report)
    if out:
        print(f"\nwrote {out}")
