"""Teacher targets: BioCLIP-2 text embeddings of species prompts, computed once and cached.

The cache key is the teacher's model id and revision, its preprocessing-independent text side,
and the exact prompt strings, so a change of model, revision, format or templates never reuses
stale targets. The teacher never runs inside the training loop.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from songsight.config import cache_dir
from songsight.prompt_templates import resolve_templates
from songsight.provenance import stable_hash
from songsight.taxonomy import Species, build_prompts


def default_cache_dir() -> Path:
    return cache_dir("targets")


def species_prompts(species: list[Species], prompt_format: str, templates: str) -> list[list[str]]:
    """``templates``: a set name, a template string with fields or a templates file."""
    return build_prompts(species, prompt_format, templates)


def teacher_targets(
    teacher,
    species: list[Species],
    prompt_format: str = "taxon_com",
    templates: str = "none",
    cache_dir: str | Path | None = None,
) -> tuple[np.ndarray, dict]:
    """(S, D) unit-norm teacher embeddings of the species prompts, and their provenance.

    ``teacher`` is a `BioCLIPEncoder` (anything with ``embed_species`` and ``provenance``).
    """
    prov = teacher.provenance()
    resolved = resolve_templates(templates)  # a file is read once, here
    prompts = species_prompts(species, prompt_format, resolved)
    key = {"model_id": prov["model_id"], "revision": prov["revision"], "prompts": prompts}
    info = {
        "teacher": {k: prov[k] for k in ("model_id", "revision", "dim")},
        "prompt_format": prompt_format,
        "templates": templates,
        # The strings themselves: a templates file may be gone when the checkpoint is used.
        "template_strings": list(resolved.templates),
        "prompts_sha256": stable_hash(prompts),
        "cache_key": stable_hash(key),
    }
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    path = cache / f"{info['cache_key']}.npy"
    if path.is_file():
        emb = np.load(path)
        if emb.shape == (len(species), prov["dim"]):
            return emb.astype(np.float32), {**info, "cached": True}
    emb = teacher.embed_species(species, prompt_format, resolved)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npy")
    np.save(tmp, emb)
    os.replace(tmp, path)
    return emb, {**info, "cached": False}
