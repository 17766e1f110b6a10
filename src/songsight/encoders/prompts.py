"""Species -> prompts -> text embeddings -> mean -> renormalise, once, for every caller.

CLIP's zero-shot classifier: each species' name goes through every template, the prompts are
embedded, and a species' vector is the re-normalised mean of its prompts' unit vectors. The
teacher targets, the cascade, the evaluation, the searcher and the simulated world's
stand-ins all build their species vectors here, so a template or name format means the same
vector wherever it is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from songsight.encoders.base import l2_normalize
from songsight.prompt_templates import Templates
from songsight.taxonomy import Species, build_prompts


def mean_of_prompts(emb, n_species: int):
    """(S*T, D) unit prompt embeddings, species-major -> (S, D) unit: each species' mean,
    re-normalised. numpy in, float32 numpy out; a torch tensor in, a tensor out."""
    return l2_normalize(emb.reshape(n_species, -1, emb.shape[-1]).mean(1))


def embed_prompt_average(encoder, prompts: Sequence[Sequence[str]]) -> np.ndarray:
    """(S, D) unit norm: each row's prompts embedded by ``encoder.embed_texts``, averaged and
    re-normalised. ``prompts``: (S, T), T the same for every row."""
    n_rows = len(prompts)
    emb = encoder.embed_texts([p for row in prompts for p in row])
    return emb[:0] if n_rows == 0 else mean_of_prompts(emb, n_rows)


def embed_species_text(
    encoder,
    species: Sequence[Species],
    prompt_format: str = "taxon_com",
    templates: str | Sequence[str] | Templates = "none",
) -> np.ndarray:
    """(S, D) unit norm: each species' name in ``prompt_format`` through every template
    (anything `songsight.taxonomy.resolve_templates` takes), embedded by ``encoder``'s text
    tower, averaged and re-normalised."""
    return embed_prompt_average(encoder, build_prompts(species, prompt_format, templates))
