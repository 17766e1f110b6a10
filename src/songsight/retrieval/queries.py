"""The query side of a search: recordings -> queries in a gallery's image space.

Two ways, each checked against the gallery's image model:

- `load_distilled_query_encoder`: the distilled audio encoder (`songsight.encoders.distilled`),
  whose outputs live in its BioCLIP-2 teacher's space, read out by one of its methods
  (`songsight.readout`): ``distilled`` (the embedding queries the photos as it is),
  ``distilled_proto`` (the teacher text of its most probable gallery species) or ``fused``
  (with BioLingual's own posterior, so that species never distilled are named by the cascade);
  the default is the method the checkpoint's validation chose. A ``fused`` readout at fusion
  weight 0, which cannot change the cascade's answer, is run, and reported, as the cascade
  itself (see `load_distilled_query_encoder`);
- `build_cascade_query_encoder`: zero-shot, no training. BioLingual scores the recording
  against the gallery's species names (its own text space), and BioCLIP-2's text embedding of
  the answer (or the probability-weighted mix) queries the photos
  (`songsight.baselines.cascade`). This needs a gallery whose photos carry species names.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from songsight.encoders.loading import BIOLINGUAL_ID
from songsight.errors import SongsightError
from songsight.retrieval.methods import (
    SEARCH_METHODS,
    check_audio_model,
    default_method,
    fused_as_cascade,
)

if TYPE_CHECKING:
    from songsight.encoders.biolingual import BioLingualEncoder
    from songsight.gallery import Gallery

__all__ = ["QueryEncoder", "build_cascade_query_encoder", "load_distilled_query_encoder"]


@dataclass
class QueryEncoder:
    """An audio encoder and the map from its embeddings to the gallery's image space.

    ``answered_by``: ``"distilled"``, ``"distilled_proto"``, ``"fused"``, ``"cascade: top1"``
    or ``"cascade: weighted"``: what computes the queries, whatever method was asked for.
    ``method``: the distilled model's method asked for or chosen (None without a distilled
    model); ``default_method``: the one it answers with when none is asked.
    ``cascade``: for the cascade, the species text embeddings (S, D_audio) in BioLingual's space
    and (S, D_gallery) in BioCLIP-2's, unit norm, same species rows, and the softmax temperature.
    ``info``: what else the results' provenance records about it. ``species_names``: the
    cascade's species, one per row of its text embeddings (the gallery's names).
    ``readout``: for ``distilled_proto`` / ``fused``, ``{"method", "logit_scale", "weight",
    "seen" (S,) bool, "dim"}``; the fused encoder's embeddings are ``[distilled | BioLingual]``,
    split at ``dim``, and ``cascade`` then holds the species text of both spaces.
    """

    encoder: BioLingualEncoder  # or its `DistilledEncoder` subclass
    answered_by: str
    cascade: tuple[np.ndarray | None, np.ndarray, float] | None = None
    cascade_mode: str = "top1"
    info: dict[str, Any] = field(default_factory=dict)
    species_names: list[str] | None = None
    readout: dict[str, Any] | None = None
    method: str | None = None
    default_method: str | None = None

    def queries(
        self, audio_emb: np.ndarray, allowed_species: Collection[str] | None = None
    ) -> np.ndarray:
        """(Q, D_audio) recording embeddings -> (Q, D_gallery) queries.

        ``allowed_species``: the cascade chooses among these species only (a species list);
        the distilled model's queries do not depend on it.
        """
        if self.cascade is None:
            return audio_emb
        from songsight.baselines.cascade import cascade_queries, species_probabilities
        from songsight.readout import readout_queries

        audio_text, image_text, temperature = self.cascade
        rows = slice(None)
        if allowed_species is not None and self.species_names is not None:
            kept = [i for i, n in enumerate(self.species_names) if n in allowed_species]
            rows = kept or rows
        image_text = image_text[rows]
        if self.readout is None:
            return cascade_queries(
                audio_emb, audio_text[rows], image_text, temperature, self.cascade_mode
            )
        r = self.readout
        dim = r["dim"]
        p_cascade = None
        if r["method"] == "fused":
            base = audio_emb[:, dim:]
            p_cascade = species_probabilities(base, audio_text[rows], temperature)
        return readout_queries(
            r["method"], audio_emb[:, :dim], image_text, logit_scale=r["logit_scale"],
            p_cascade=p_cascade, seen=r["seen"][rows], weight=r["weight"], gate=r["gate"],
            prior=None if r["prior"] is None else r["prior"][rows],
        )  # fmt: skip


def load_distilled_query_encoder(
    gallery: Gallery,
    model: str | Path,
    device: str | None = None,
    *,
    method: str | None = None,
    audio_model: str | Path | None = None,
    batch_size: int = 16,
    precision: str = "auto",
    runtime: str = "auto",
    quiet: bool = False,
) -> QueryEncoder:
    """The distilled checkpoint ``model``, once its teacher is checked to be ``gallery``'s
    image model (a mismatch is refused; a Hub commit against a local folder only warns).

    ``method``: ``distilled``, ``distilled_proto``, ``fused`` or ``cascade`` (the zero-shot
    cascade through the checkpoint's own base model); default `default_method`. ``fused`` and
    ``cascade`` load the BioLingual the checkpoint was distilled from; ``audio_model`` says
    where it is (e.g. a moved folder) and is refused with the other methods, whether they were
    asked for or chosen by the checkpoint, since they would silently ignore it.

    A ``fused`` readout that cannot change the cascade's answer (fusion weight 0:
    `_fused_as_cascade`) is run as the cascade through the checkpoint's base and answers as
    ``"cascade: top1"``, the cascade's own label rather than a new one: every output then says
    what computed the queries, its results group and compare with the cascade's under one
    label, and no distilled forward pass runs for nothing. Its ``info`` says why
    (``fused_as_cascade``)."""
    from songsight.encoders.distilled import read_meta
    from songsight.encoders.runtime import open_distilled_encoder
    from songsight.provenance import check_image_model

    if method is not None and method not in SEARCH_METHODS:
        raise SongsightError(f"unknown method {method!r}; choose from {', '.join(SEARCH_METHODS)}")
    meta = read_meta(model)
    teacher = dict(meta.get("image_model") or {})
    teacher.setdefault("dim", (meta.get("head") or {}).get("out_dim"))
    check_image_model(gallery.image_model, teacher, "the distilled model's teacher", strict=False)
    default = default_method(meta, gallery)
    asked, method = method, method or default
    if method not in SEARCH_METHODS:
        raise SongsightError(
            f"the distilled checkpoint {model} records the unknown readout {method!r}; choose "
            f"one with --method ({', '.join(SEARCH_METHODS)})"
        )
    check_audio_model(audio_model, method, asked is not None, model)
    base_model = audio_model or (meta.get("audio_model") or {}).get("model_id") or BIOLINGUAL_ID
    prompts = meta.get("prompts") or {}
    cascade = meta.get("cascade") or {}
    trained = {str(n).lower() for n in meta.get("train_species") or []}
    recorded = meta.get("readout") or {}
    weight = float(recorded.get("fusion_weight", 0.5))
    as_cascade = fused_as_cascade(weight) if method == "fused" else None
    if method == "cascade" or as_cascade is not None:
        query = build_cascade_query_encoder(
            gallery, base_model, None, device, batch_size=batch_size, precision=precision,
            prompt_format=prompts.get("prompt_format"),
            templates=prompts.get("template_strings") or prompts.get("templates"),
            audio_prompt_format=cascade.get("audio_prompt_format", "com"),
            audio_templates=cascade.get("audio_templates", "sound"),
            cascade_temperature=cascade.get("temperature"), runtime=runtime, quiet=quiet,
        )  # fmt: skip
        query.info["distilled_checkpoint"] = str(model)
        if as_cascade is not None:
            query.info["fused_as_cascade"] = as_cascade
        query.method, query.default_method = method, default
        return query
    opened = dict(device=device, batch_size=batch_size, precision=precision, runtime=runtime, quiet=quiet)  # fmt: skip
    if method == "distilled":
        encoder = open_distilled_encoder(model, **opened)
        return QueryEncoder(encoder, "distilled", method=method, default_method=default)
    if "logit_scale" not in meta:
        raise SongsightError(
            f"the distilled checkpoint {model} records no logit scale (it predates readouts), "
            f"so it cannot answer with {method!r}; use --method distilled or retrain it"
        )
    _need_species(gallery, method)
    encoder = open_distilled_encoder(
        model, fused_with=None if method == "distilled_proto" else base_model, **opened
    )
    dist_dim = getattr(encoder, "distilled_dim", encoder.dim)
    species, image_text, audio_text, _ = _species_text(
        gallery, base_model if method == "fused" else None, None, precision,
        prompts.get("prompt_format") or "taxon_com",
        prompts.get("template_strings") or prompts.get("templates") or "none",
        cascade.get("audio_prompt_format", "com"), cascade.get("audio_templates", "sound"),
        device,
    )  # fmt: skip
    seen = np.array([s.scientific_name.lower() in trained for s in species], bool)
    temperature = float(cascade.get("temperature") or 1.0)
    readout = {
        "method": method,
        "logit_scale": float(meta["logit_scale"]),
        "weight": weight,
        "gate": recorded.get("fusion_gate", "hard"),
        "prior": _prior(recorded.get("fusion_prior"), species),
        "seen": seen,
        "dim": dist_dim,
    }
    info = {
        "method": method,
        "fusion_weight": weight if method == "fused" else None,
        "fusion_gate": readout["gate"] if method == "fused" else None,
        "distilled_species_in_gallery": int(seen.sum()),
        "n_species": len(species),
    }
    return QueryEncoder(
        encoder, method, (audio_text, image_text, temperature), "top1", info,
        [s.scientific_name for s in species], readout, method, default,
    )  # fmt: skip


def _prior(by_name: dict | None, species) -> np.ndarray | None:
    """The poe gate's prior (`songsight.readout.species_prior`) for the gallery's
    ``species``, from the checkpoint's record by name; a species the checkpoint's table did
    not hold was never learnt, and gets the smallest prior recorded."""
    if not by_name:
        return None
    floor = min(by_name.values())
    return np.array([by_name.get(s.scientific_name, floor) for s in species], np.float32)


def _need_species(gallery: Gallery, what: str) -> None:
    if not gallery.has_species:
        raise SongsightError(
            f"the gallery {gallery.directory} has no species names, so {what} (audio -> "
            "species -> photos) has nothing to name; rebuild it with --manifest (a species or "
            "label column, with --species TAXA_CSV), or search with --method distilled"
        )


def _species_text(
    gallery: Gallery,
    audio_model: str | Path | None,
    image_model: str | Path | None,
    precision: str,
    prompt_format: str,
    templates,
    audio_prompt_format: str,
    audio_templates,
    device: str | None = None,
    audio_encoder=None,
) -> tuple[list, np.ndarray, np.ndarray | None, float | None]:
    """The gallery's species, their text in its image model's space (S, D) and, given a
    BioLingual ``audio_model``, in BioLingual's space (S, d) with its zero-shot temperature:
    read from the gallery's cache (`songsight.retrieval.species_text`), else embedded by the
    text towers, which are dropped after. ``audio_encoder``: a torch BioLingual for
    ``audio_model`` already loaded, used rather than a second one."""
    from songsight.encoders.loading import resolve_model
    from songsight.encoders.runtime import open_torch_encoder
    from songsight.prompt_templates import resolve_templates
    from songsight.retrieval.species_text import cached_species_text

    stored = gallery.image_model
    species = gallery.species_list()
    image_text, _ = cached_species_text(
        gallery.directory, "image", stored, species, prompt_format, resolve_templates(templates),
        lambda: open_torch_encoder(str(image_model or stored["model_id"]), "image", device=device, precision=precision),
    )  # fmt: skip
    if audio_model is None:
        return species, image_text, None, None
    model = resolve_model(str(audio_model), "audio").provenance()
    audio_text, extras = cached_species_text(
        gallery.directory, "audio", model, species, audio_prompt_format,
        resolve_templates(audio_templates),
        lambda: audio_encoder if hasattr(audio_encoder, "embed_texts") else open_torch_encoder(audio_model, "audio", device=device, precision=precision),
    )  # fmt: skip
    return species, image_text, audio_text, extras.get("temperature")


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
    runtime: str = "auto",
    quiet: bool = False,
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
    _need_species(gallery, "the zero-shot cascade")
    from songsight.encoders.loading import resolve_model
    from songsight.encoders.runtime import open_audio_encoder
    from songsight.prompt_templates import resolve_templates
    from songsight.provenance import check_image_model

    stored = gallery.image_model
    if image_model is not None:
        check_image_model(
            stored, resolve_model(str(image_model), "image").provenance(), str(image_model)
        )
    encoder = open_audio_encoder(
        audio_model, device=device, batch_size=batch_size, precision=precision,
        runtime=runtime, quiet=quiet,
    )  # fmt: skip
    prompt_format = prompt_format or "taxon_com"
    image_tmpl, audio_tmpl = (
        resolve_templates(templates or "none"),
        resolve_templates(audio_templates),
    )
    species, image_text, audio_text, own_temperature = _species_text(
        gallery, audio_model, image_model, precision, prompt_format, image_tmpl,
        audio_prompt_format, audio_tmpl, device, audio_encoder=encoder,
    )  # fmt: skip
    if cascade_temperature is None:
        # BioLingual's own zero-shot posterior: softmax(exp(logit_scale_a) * cosine).
        cascade_temperature = own_temperature
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
