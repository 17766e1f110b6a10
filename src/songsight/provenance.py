"""Provenance records that travel with every artefact, and the check that refuses a mismatch."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from typing import Any

from songsight.errors import ProvenanceMismatchError


def package_version(name: str = "songsight") -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def environment() -> dict[str, str]:
    """Versions of the packages whose behaviour shapes an embedding."""
    return {
        "songsight": package_version("songsight"),
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
        "open_clip_torch": package_version("open_clip_torch"),
        "python": platform.python_version(),
    }


def stable_hash(obj: Any) -> str:
    """sha256 of a JSON-serialisable object with sorted keys (short, 16 hex digits)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def check_same(what: str, expected: dict, found: dict, keys: tuple[str, ...]) -> None:
    """Raise `ProvenanceMismatchError` if ``found`` differs from ``expected`` on any of ``keys``."""
    diffs = [
        f"{k}: artefact has {found.get(k)!r}, now {expected.get(k)!r}"
        for k in keys
        if found.get(k) != expected.get(k)
    ]
    if diffs:
        raise ProvenanceMismatchError(
            f"{what} was made with different settings and cannot be mixed with this run ("
            + "; ".join(diffs)
            + "). Use a new output, or the same model and settings as before."
        )
