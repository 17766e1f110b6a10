"""Species text embeddings for a gallery's searches, computed once and kept with the gallery.

A search that names species (the cascade, the ``distilled_proto`` and ``fused`` readouts)
needs every gallery species' text in the image model's space and, for the cascade's side, in
BioLingual's. Those depend only on the model and the prompt strings, so the first search
computes them with the text tower (`songsight.encoders.runtime.open_torch_encoder`) and keeps
them in ``GALLERY/species_text/{role}-{key}.npz``, keyed by the model's id and revision and
the exact prompts; later searches read them and load no text tower (with ONNX Runtime for
the audio, a search then needs no torch at all). A folder that cannot be written only means
the next search computes them again (a log line says so).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from songsight.provenance import stable_hash
from songsight.taxonomy import Species, build_prompts

__all__ = ["TEXT_DIR", "cached_species_text"]

TEXT_DIR = "species_text"
log = logging.getLogger("songsight.search")


def cached_species_text(
    directory: str | Path,
    role: str,
    model: dict,
    species: Sequence[Species],
    prompt_format: str,
    templates,
    load_encoder: Callable[[], object],
) -> tuple[np.ndarray, dict]:
    """((S, D) unit-norm species text embeddings, extras) for ``role`` (``image`` or
    ``audio``), from the gallery's cache or computed by ``load_encoder()``'s text tower (as
    `songsight.encoders.prompts.embed_species_text` does) and cached. ``model``: the text
    model's provenance (its ``model_id`` and ``revision`` key the cache). ``extras`` holds,
    for the audio side, BioLingual's own zero-shot ``temperature``."""
    prompts = build_prompts(species, prompt_format, templates)
    key = stable_hash(
        {"role": role, "model": [model.get("model_id"), model.get("revision")], "prompts": prompts}
    )
    path = Path(directory) / TEXT_DIR / f"{role}-{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return z["embeddings"].astype(np.float32), json.loads(str(z["extras"]))
        except (OSError, ValueError, KeyError) as exc:  # a torn or foreign file: made again
            log.info("species text cache %s unreadable (%s); computing it again", path, exc)
    from songsight.encoders.prompts import embed_species_text

    encoder = load_encoder()
    emb = embed_species_text(encoder, species, prompt_format, templates)
    extras = {}
    if role == "audio":
        extras["temperature"] = float(1.0 / encoder.model.logit_scale_a.detach().float().exp().cpu())  # fmt: skip
    _save(path, emb, extras)
    return emb, extras


def _save(path: Path, emb: np.ndarray, extras: dict) -> None:
    from songsight.outputs import replace_atomically

    try:
        with replace_atomically(path) as tmp, tmp.open("wb") as fh:
            np.savez(fh, embeddings=emb.astype(np.float32), extras=json.dumps(extras))
    except OSError as exc:
        log.info("species text not cached in %s (%s): later searches compute it again", path.parent, exc)  # fmt: skip
