"""The query side of a search: recordings -> queries in a gallery's image space.

Two ways, each checked against the gallery's image model:

- `load_distilled_query_encoder`: the distilled audio encoder (`songsight.encoders.distilled`),
  whose outputs live in its BioCLIP-2 teacher's space, so they query the photos as they are.
- `build_cascade_query_encoder`: zero-shot, no training. BioLingual scores the recording
  against the gallery's species names (its own text space), and BioCLIP-2's text embedding of
  the answer (or the probability-weighted mix) queries the photos
  (`songsight.baselines.cascade`). This needs a gallery whose photos carry species names.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from songsight.encoders.loading import BIOLINGUAL_ID
from songsight.errors import SongsightError

if TYPE_CHECKING:
    from songsight.encoders.biolingual import BioLingualEncoder
    from songsight.index.gallery import Gallery

__all__ = ["QueryEncoder", "build_cascade_query_encoder", "load_distilled_query_encoder"]


@dataclass
class QueryEncoder:
    """An audio encoder and the map from its embeddings to the gallery's image space.

    ``answered_by``: ``"distilled"``, ``"cascade: top1"`` or ``"cascade: weighted"``.
    ``cascade``: for the cascade, the species text embeddings (S, D_audio) in BioLingual's space
    and (S, D_gallery) in BioCLIP-2's, unit norm, same species rows, and the softmax temperature.
    ``info``: what else the results' provenance records about it. ``species_names``: the
    cascade's species, one per row of its text embeddings (the gallery's names).
    """

    encoder: BioLingualEncoder  # or its `DistilledEncoder` subclass
    answered_by: str
    cascade: tuple[np.ndarray, np.ndarray, float] | None = None
    cascade_mode: str = "top1"
    info: dict[str, Any] = field(default_factory=dict)
    species_names: list[str] | None = None

    def queries(
        self, audio_emb: np.ndarray, allowed_species: Collection[str] | None = None
    ) -> np.ndarray:
        """(Q, D_audio) recording embeddings -> (Q, D_gallery) queries.

        ``allowed_species``: the cascade chooses among these species only (a species list);
        the distilled model's queries do not depend on it.
        """
        if self.cascade is None:
            return audio_emb
        from songsight.baselines.cascade import cascade_queries

        audio_text, image_text, temperature = self.cascade
        if allowed_species is not None and self.species_names is not None:
            rows = [i for i, n in enumerate(self.species_names) if n in allowed_species]
            if rows:
                audio_text, image_text = audio_text[rows], image_text[rows]
        return cascade_queries(audio_emb, audio_text, image_text, temperature, self.cascade_mode)


def load_distilled_query_encoder(
    gallery: Gallery,
    model: str | Path,
    device: str | None = None,
    *,
    batch_size: int = 16,
    precision: str = "auto",
) -> QueryEncoder:
    """The distilled checkpoint ``model``, once its teacher is checked to be ``gallery``'s
    image model (a mismatch is refused; a Hub commit against a local folder only warns)."""
    from songsight.encoders.distilled import DistilledEncoder, read_meta
    from songsight.index.gallery import check_image_model
    from songsight.index.gallery_format import _revision_kind

    meta = read_meta(model)
    teacher = dict(meta.get("image_model") or {})
    teacher.setdefault("dim", (meta.get("head") or {}).get("out_dim"))
    check_image_model(gallery.image_model, teacher, "the distilled model's teacher", strict=False)
    mine = gallery.image_model.get("revision")
    if _revision_kind(teacher.get("revision")) != _revision_kind(mine):
        warnings.warn(
            f"cannot verify that the distilled model's teacher ({teacher.get('model_id')}) "
            f"is the gallery's image model ({gallery.image_model.get('model_id')}): "
            "one is a Hub commit, the other a local folder",
            stacklevel=3,  # at whoever built the Searcher that called this
        )
    encoder = DistilledEncoder(model, device=device, batch_size=batch_size, precision=precision)
    return QueryEncoder(encoder, "distilled")


def build_cascade_query_encoder(
    gallery: Gallery,
    audio_model: str | Path = BIOLINGUAL_ID,
    image_model: str | Path | None = None,
    device: str | None = None,
    *,
    cascade_mode: str = "top1",
    cascade_temperature: float | None = None,
    batch_size: int = 16,
    precision: str = "auto",
    prompt_format: str | None = None,
    templates: str | None = None,
    audio_prompt_format: str = "com",
    audio_templates: str = "sound",
) -> QueryEncoder:
    """The zero-shot cascade over ``gallery``'s species: BioLingual (``audio_model``) names the
    species, the gallery's image model (or ``image_model``, which must be the same weights)
    embeds the names as BioCLIP-2 text. ``cascade_temperature`` defaults to BioLingual's own
    zero-shot posterior; ``prompt_format`` / ``templates`` build the BioCLIP-2 species text
    (default ``taxon_com`` / ``none``), ``audio_prompt_format`` / ``audio_templates`` the
    BioLingual one (templates: a set name, a template string with fields or a file, as
    `songsight.taxonomy.resolve_templates` takes)."""
    if cascade_mode not in ("top1", "weighted"):
        raise SongsightError(f"cascade mode must be top1 or weighted, not {cascade_mode!r}")
    if not gallery.has_species:
        raise SongsightError(
            f"the gallery {gallery.directory} has no species names, so the "
            "zero-shot cascade (audio -> species -> photos) has nothing to name; rebuild "
            "it with --manifest (a species or label column, with --species TAXA_CSV), "
            "or search with a distilled model (--model DIR)"
        )
    from songsight.encoders.base import embed_prompt_average
    from songsight.encoders.bioclip import BioCLIPEncoder
    from songsight.encoders.biolingual import BioLingualEncoder
    from songsight.encoders.loading import resolve_model
    from songsight.index.gallery import check_image_model
    from songsight.taxonomy import build_prompts, resolve_templates

    stored = gallery.image_model
    if image_model is not None:
        check_image_model(
            stored, resolve_model(str(image_model), "image").provenance(), str(image_model)
        )
    encoder = BioLingualEncoder(
        audio_model, device=device, batch_size=batch_size, precision=precision
    )
    text_model = BioCLIPEncoder(
        str(image_model or stored["model_id"]),
        device=encoder.device,
        preprocess=stored["preprocessing"].get("choice", "model"),
        precision=precision,
    )
    check_image_model(stored, text_model.provenance(), "the image model given")
    species = gallery.species_list()
    prompt_format = prompt_format or "taxon_com"
    image_tmpl, audio_tmpl = (
        resolve_templates(templates or "none"),
        resolve_templates(audio_templates),
    )
    image_text = text_model.embed_species(species, prompt_format, image_tmpl)
    del text_model  # only the species' text embeddings are needed from here on
    audio_text = embed_prompt_average(
        encoder, build_prompts(species, audio_prompt_format, audio_tmpl)
    )
    if cascade_temperature is None:
        # BioLingual's own zero-shot posterior: softmax(exp(logit_scale_a) * cosine).
        scale = encoder.model.logit_scale_a.detach().float().exp().cpu()
        cascade_temperature = float(1.0 / scale)
    info = {
        "cascade_temperature": float(cascade_temperature),
        "prompt_format": prompt_format,
        "templates": image_tmpl.provenance(),
        "audio_prompt_format": audio_prompt_format,
        "audio_templates": audio_tmpl.provenance(),
        "n_species": len(species),
    }
    return QueryEncoder(
        encoder,
        f"cascade: {cascade_mode}",
        (audio_text, image_text, float(cascade_temperature)),
        cascade_mode,
        info,
        [s.scientific_name for s in species],
    )
