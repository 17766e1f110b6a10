"""Resolve a model spec (Hub id, pinned revision, local directory or Hub cache) to local files.

This is the only module that talks to the Hugging Face Hub. Encoder classes receive the
resolved directory and never download. ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``)
restricts resolution to the local cache. A model that cannot be found, or a folder that is not
a usable model (`check_model_folder`: either layout transformers writes for CLAP, open_clip
folders with weights), raises `ModelNotFoundError` with what is missing and what fixes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from songsight.errors import ModelNotFoundError

BIOLINGUAL_ID = "davidrrobinson/BioLingual"
BIOCLIP2_ID = "hf-hub:imageomics/bioclip-2"

# Files each kind of model needs; anything else in the Hub repo is not fetched.
AUDIO_FILES = [
    "config.json",
    "*.safetensors",
    "*.index.json",
    "pytorch_model*.bin",
    "preprocessor_config.json",
    "tokenizer*",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "processor_config.json",
]
IMAGE_FILES = [
    "open_clip_config.json",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "*.txt.gz",
    "tokenizer*",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
]

# Marker files that identify what a local directory holds.
AUDIO_MARKER = "preprocessor_config.json"
IMAGE_MARKER = "open_clip_config.json"
DISTILLED_MARKER = "songsight_distilled.json"
# transformers >= 4.5x's ClapProcessor.save_pretrained nests the feature extractor in here
# instead of writing AUDIO_MARKER.
PROCESSOR_CONFIG = "processor_config.json"
AUDIO_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# What open_clip's local-dir loader looks for; without one it builds a random-init model and
# only logs a warning, so songsight refuses such a folder instead.
IMAGE_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")


@dataclass(frozen=True)
class ResolvedModel:
    """A model's local files and where they came from."""

    path: Path
    model_id: str
    revision: str
    source: str  # "local", "hub-cache" or "hub"

    def provenance(self) -> dict[str, str]:
        return {"model_id": self.model_id, "revision": self.revision, "source": self.source}


def is_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def dir_revision(path: Path) -> str:
    """A content id for a local model directory: sha256 over its config files and weight sizes."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if not f.is_file():
            continue
        h.update(f.name.encode())
        if f.suffix == ".json" or f.name.endswith(".txt"):
            h.update(f.read_bytes())
        else:
            # Hash weights by content in 1 MiB slices at start and end plus size: cheap for
            # multi-GB files, and any retrained checkpoint differs there.
            size = f.stat().st_size
            h.update(str(size).encode())
            with f.open("rb") as fh:
                h.update(fh.read(1 << 20))
                if size > 2 << 20:
                    fh.seek(-(1 << 20), os.SEEK_END)
                    h.update(fh.read(1 << 20))
    return "local-" + h.hexdigest()[:12]


def _read_json(path: Path) -> dict | None:
    """The JSON object in ``path``; None when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def has_feature_extractor_config(path: Path) -> bool:
    """True when ``path`` holds CLAP audio preprocessing as either transformers layout writes it:
    ``preprocessor_config.json`` (BioLingual's Hub repo, ``ClapFeatureExtractor.save_pretrained``)
    or ``processor_config.json`` with a nested ``feature_extractor`` (``ClapProcessor.save_pretrained``
    of the pinned transformers)."""
    if (path / AUDIO_MARKER).is_file():
        return True
    processor = _read_json(path / PROCESSOR_CONFIG)
    return isinstance((processor or {}).get("feature_extractor"), dict)


def _audio_folder_problem(path: Path) -> str | None:
    if not has_feature_extractor_config(path):
        hint = (
            " (it holds an open_clip model: pass it as the image model)"
            if (path / IMAGE_MARKER).is_file()
            else ""
        )
        return (
            f"it has no {AUDIO_MARKER}, nor a {PROCESSOR_CONFIG} holding a feature_extractor "
            f"(the model's audio preprocessing){hint}"
        )
    config = _read_json(path / "config.json")
    if config is None:
        return "it has no readable config.json (the transformers model config)"
    if config.get("model_type", "clap") != "clap":
        return f"its config.json describes a {config['model_type']!r} model, not a CLAP (ClapModel)"
    if not any((path / name).is_file() for name in AUDIO_WEIGHTS):
        return f"it has no weights ({' or '.join(AUDIO_WEIGHTS[::2])})"
    if not (path / "tokenizer.json").is_file() and not (
        (path / "vocab.json").is_file() and (path / "merges.txt").is_file()
    ):
        return "it has no tokenizer (tokenizer.json, or vocab.json and merges.txt)"
    return None


def _image_folder_problem(path: Path) -> str | None:
    if not (path / IMAGE_MARKER).is_file():
        hint = (
            " (it holds a transformers model: pass it as the audio model if it is a CLAP)"
            if (path / "config.json").is_file()
            else ""
        )
        return f"it has no {IMAGE_MARKER}{hint}"
    if "model_cfg" not in (_read_json(path / IMAGE_MARKER) or {}):
        return f"its {IMAGE_MARKER} is not an open_clip config (no model_cfg object)"
    files = [f for f in path.iterdir() if f.is_file()]
    if not any(f.suffix in IMAGE_WEIGHT_SUFFIXES for f in files):
        others = [f.name for f in files if f.suffix in (".pt", ".ckpt")]
        found = (
            f"; found {', '.join(sorted(others))}: if it is this model's state dict, rename it "
            "open_clip_pytorch_model.bin"
            if others
            else ""
        )
        return (
            "it has no weights open_clip reads (open_clip_model.safetensors or "
            f"open_clip_pytorch_model.bin; any *.safetensors, *.bin or *.pth){found}"
        )
    return None


def _folder_problem(path: Path, kind: str) -> str | None:
    """Why ``path`` cannot be loaded as a ``kind`` model, or None when it can."""
    return _audio_folder_problem(path) if kind == "audio" else _image_folder_problem(path)


def _what(kind: str) -> str:
    return (
        "audio-text (BioLingual-style CLAP)"
        if kind == "audio"
        else "image-text (BioCLIP-2-style open_clip)"
    )


def check_model_folder(path: str | Path, kind: str) -> None:
    """Raise `ModelNotFoundError` (one line: what is missing) unless ``path`` holds a usable
    ``kind`` model: ``audio`` a transformers CLAP folder in either processor layout, ``image``
    an open_clip folder (``open_clip_config.json`` and weights)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelNotFoundError(f"model folder not found: {path}")
    problem = _folder_problem(path, kind)
    if problem:
        raise ModelNotFoundError(f"{path} is not a usable {_what(kind)} model folder: {problem}.")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _hub_id(spec: str) -> str:
    return spec[len("hf-hub:") :] if spec.startswith("hf-hub:") else spec


def _fix_command(kind: str, spec: str, download: bool = False) -> str:
    flag = "--audio-model" if kind == "audio" else "--image-model"
    if download:  # `songsight download` itself: telling it to run itself would help nobody
        return (
            "Check this machine's connection to the Hub (proxy: HTTPS_PROXY; mirror: "
            f"HF_ENDPOINT) and run it again, or fetch the model elsewhere and pass {flag} "
            "/path/to/local/model"
        )
    return (
        f"Run `songsight download {flag} {spec}` on a machine with internet access "
        f"(then copy ~/.cache/huggingface/hub, or set HF_HOME), or pass {flag} /path/to/local/model"
    )


def resolve_model(
    spec: str,
    kind: str,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    download: bool = False,
) -> ResolvedModel:
    """Find a model's files locally, downloading only when ``download`` is true.

    ``spec`` is a directory (``kind`` says which marker file it must hold: ``audio`` -> a
    transformers CLAP folder, ``image`` -> an open_clip folder) or a Hub id, optionally with
    an ``hf-hub:`` prefix. Without ``download``, Hub ids come from the local cache only, so a
    run never reaches the network by surprise; ``songsight download`` is the one place that does.
    """
    if kind not in ("audio", "image"):
        raise ValueError(f"kind must be 'audio' or 'image', not {kind!r}")
    marker = AUDIO_MARKER if kind == "audio" else IMAGE_MARKER
    what = _what(kind)
    local = Path(spec).expanduser()
    if local.is_dir():
        check_model_folder(local, kind)
        return ResolvedModel(local.resolve(), str(local.resolve()), dir_revision(local), "local")
    if not spec.startswith("hf-hub:") and not _HUB_ID.match(spec):
        example = BIOLINGUAL_ID if kind == "audio" else BIOCLIP2_ID
        raise ModelNotFoundError(
            f"model folder not found: {spec}. Pass an existing folder holding {marker}, "
            f"or a Hub id such as {example}."
        )

    repo_id = _hub_id(spec)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    patterns = AUDIO_FILES if kind == "audio" else IMAGE_FILES
    offline = is_offline() or not download
    try:
        path = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=offline,
                allow_patterns=patterns,
            )
        )
    except (LocalEntryNotFoundError, FileNotFoundError):
        reason = "is not in the local Hugging Face cache" + (
            " (offline mode is on)" if is_offline() else ""
        )
        if download and not is_offline():
            reason = "could not be downloaded: the Hub was not reachable"
        rev = f" at revision {revision}" if revision else ""
        raise ModelNotFoundError(
            f"the {what} model {repo_id}{rev} {reason}. {_fix_command(kind, spec, download)}."
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"no Hub repository {repo_id!r} (or it is private/gated). Check the id. {_fix_command(kind, spec, download)}."
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"could not fetch {repo_id}: {str(exc).splitlines()[0][:200]}. {_fix_command(kind, spec, download)}."
        ) from None
    problem = _folder_problem(path, kind)
    if problem:
        raise ModelNotFoundError(
            f"{repo_id} is not a usable {what} model: {problem}. {_fix_command(kind, spec, download)}."
        )
    return ResolvedModel(path, spec, path.name, "hub" if download else "hub-cache")


def download_models(
    audio_model: str = BIOLINGUAL_ID,
    image_model: str = BIOCLIP2_ID,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
) -> list[ResolvedModel]:
    """Fetch both models into the Hub cache for later offline use (``songsight download``)."""
    if is_offline():
        raise ModelNotFoundError(
            "cannot download: HF_HUB_OFFLINE is set. Unset it on a machine with internet access."
        )
    return [
        resolve_model(audio_model, "audio", revision, cache_dir, download=True),
        resolve_model(image_model, "image", revision, cache_dir, download=True),
    ]
