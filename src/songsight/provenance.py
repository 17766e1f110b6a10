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


def revision_kind(revision: str | None) -> str:
    """``folder`` for the content hash of a local model folder (``local-...``), else ``hub``."""
    return "folder" if str(revision or "").startswith("local-") else "hub"


def check_image_model(
    reference: dict,
    other: dict,
    what: str = "this image model",
    strict: bool = True,
    *,
    reference_name: str = "the gallery",
    hint: str | None = None,
) -> None:
    """Refuse vectors of another image model: the one place that compares image models.

    ``reference`` / ``other``: provenance dicts with ``model_id``, ``revision``, ``dim``;
    ``reference_name`` names the side ``reference`` belongs to (a gallery, an evaluation),
    ``what`` the other (an image model given, a distilled model's teacher). Revisions
    identify the weights (a Hub commit, or the content hash of a local folder). ``strict``:
    differing revisions always refuse; otherwise (a distilled model's teacher) a Hub commit
    and a folder hash cannot be compared: that passes with a warning.
    """
    mine, theirs = str(reference.get("revision") or ""), str(other.get("revision") or "")
    comparable = strict or revision_kind(mine) == revision_kind(theirs)
    if mine and theirs and comparable and mine != theirs:
        if hint is None:
            hint = (
                f"Use the gallery's image model, or build a new gallery with "
                f"--image-model {other.get('model_id')}."
            )
        raise ProvenanceMismatchError(
            f"{reference_name} uses image model {reference.get('model_id')} at revision {mine}, "
            f"but {what} is {other.get('model_id')} at revision {theirs}: their vectors are not "
            f"comparable. {hint}"
        )
    d_mine, d_theirs = reference.get("dim"), other.get("dim")
    if d_mine is not None and d_theirs is not None and int(d_mine) != int(d_theirs):
        raise ProvenanceMismatchError(
            f"{reference_name} holds {d_mine}-d vectors but {what} gives {d_theirs}-d vectors"
        )
    if mine and theirs and not comparable:
        import warnings

        warnings.warn(
            f"cannot verify that {what} ({other.get('model_id')}) is the image model of "
            f"{reference_name} ({reference.get('model_id')}): one is a Hub commit, the other "
            "a local folder",
            stacklevel=3,
        )
