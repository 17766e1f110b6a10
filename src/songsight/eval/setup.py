"""What every task of one evaluation shares, set up once: the models, the prompt choices, the
species' text embeddings and the fitted mappings (`load_run`), held in an `EvalRun`.

The tasks themselves are `songsight.eval.tasks`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from songsight.encoders.prompts import embed_species_text
from songsight.errors import SongsightError
from songsight.eval.audio_to_image import (
    MAPPING_METHODS,
    chance_queries,
    fit_mappings,
    mapping_pairs,
)
from songsight.eval.config import (
    EvalConfig,
    check_teacher,
    checkpoint_prompts,
    select_methods,
    train_labels_of,
)
from songsight.eval.datasets import TRAIN
from songsight.eval.inputs import choose_templates, limit_rows, prompt_variants
from songsight.eval.report import format_selection
from songsight.taxonomy import Species


@dataclass
class EvalRun:
    """What every task of one run shares: config, models, species, their text embeddings."""

    cfg: EvalConfig
    species: list[Species]
    species_labels: np.ndarray  # (S,) int
    encoders: dict  # {"original": BioLingualEncoder, "distilled": DistilledEncoder?}
    image_encoder: object
    teacher_text: np.ndarray  # (S, D) image model's species embeddings
    audio_text: np.ndarray  # (S, d) BioLingual's species embeddings
    maps: dict
    train_labels: list[int]
    skipped: list[dict] = field(default_factory=list)
    hashes: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)

    def log(self, msg: str) -> None:
        if self.cfg.progress:
            print(f"songsight evaluate: {msg}", file=sys.stderr, flush=True)

    def subsets(self, labels: np.ndarray) -> dict[str, np.ndarray] | None:
        """``seen`` / ``heldout`` masks over ``labels`` when some species were held out, else None."""
        if np.isin(self.species_labels, self.train_labels).all():
            return None
        seen = np.isin(labels, self.train_labels)
        return {"seen": seen, "heldout": ~seen}

    def scored_sets(self, audio_by_model: dict) -> tuple[dict, dict]:
        """{model: (N, D) audio} and {model: (S, D) species text}: chance, original, mappings, distilled."""
        base = audio_by_model["original"]
        dim = self.teacher_text.shape[1]
        audio = {"chance": chance_queries(len(base), dim, self.cfg.seed), "original": base}
        text = {"chance": self.teacher_text, "original": self.audio_text}
        for name, mapping in self.maps.items():
            audio[name] = mapping.apply(base) if len(base) else np.zeros((0, dim), np.float32)
            text[name] = self.teacher_text
        if "distilled" in audio_by_model:
            audio["distilled"], text["distilled"] = audio_by_model["distilled"], self.teacher_text
        return audio, text


def load_encoders(cfg: EvalConfig):
    """(BioLingual, BioCLIP-2, the distilled encoder or None, BioLingual's text tower,
    BioCLIP-2's text tower), opened by `songsight.encoders.runtime` (the towers on ONNX
    Runtime where ``cfg.runtime`` allows, the text towers on torch, the same objects where
    torch runs both); the distilled checkpoint's teacher checked against the image model."""
    from songsight.encoders.runtime import (
        open_audio_encoder,
        open_distilled_encoder,
        open_image_encoder,
        open_torch_encoder,
    )

    if cfg.progress:
        print("songsight evaluate: loading models", file=sys.stderr, flush=True)
    opened = dict(device=cfg.device, precision=cfg.precision, runtime=cfg.runtime,
                  batch_size=cfg.batch_size, quiet=not cfg.progress)  # fmt: skip
    bl = open_audio_encoder(cfg.audio_model, **opened)
    bc = open_image_encoder(cfg.image_model, preprocess=cfg.preprocess, **opened)
    text = dict(device=bl.device, precision=cfg.precision)
    bl_text = bl if hasattr(bl, "embed_texts") else open_torch_encoder(cfg.audio_model, "audio", **text)  # fmt: skip
    bc_text = bc if hasattr(bc, "embed_texts") else open_torch_encoder(cfg.image_model, "image", **text)  # fmt: skip
    dist = None
    if cfg.distilled:
        dist = open_distilled_encoder(cfg.distilled, **opened)
        check_teacher(dist.meta, bc.provenance(), bl.provenance())
    return bl, bc, dist, bl_text, bc_text


def load_run(cfg: EvalConfig, data, tasks: list[str]) -> tuple[EvalRun, list[str], dict | None]:
    """(run, methods, template selection or None) for ``data`` (an `EvalData`).

    Resolves ``cfg``'s open prompt settings in place (so the results record them): the
    checkpoint's prompts, the audio templates chosen on the training recordings (never on
    the queries), BioLingual's own temperature for the cascade.
    """
    species = data.species
    if len(cfg.audio_candidates) > 1 and data.train is None:
        raise SongsightError(
            f"several --audio-templates are chosen between on the '{TRAIN}' recordings, and "
            f"{data.no_train}: give one"
        )
    bl, bc, dist, bl_text, bc_text = load_encoders(cfg)
    meta = dist.meta if dist else None
    ck_fmt, ck_tmpl = checkpoint_prompts(meta)
    cfg.prompt_format = cfg.prompt_format or ck_fmt or "taxon_com"
    cfg.templates = cfg.templates or ck_tmpl or "none"
    selection, choice_skipped = None, []
    if len(cfg.audio_candidates) > 1:  # chosen on the train split, never on the test queries
        val = limit_rows(data.train, cfg.limit_train, cfg.seed)
        selection = choose_templates(bl, species, cfg.audio_prompt_format, cfg.audio_candidates, val, choice_skipped, text_encoder=bl_text)  # fmt: skip
        if cfg.progress:
            print(format_selection(selection), file=sys.stderr, flush=True)
        cfg.audio_templates = selection["chosen"]
    if cfg.cascade_temperature is None:
        # BioLingual's own zero-shot posterior: softmax(logit_scale_a.exp() * cosine).
        cfg.cascade_temperature = float(
            1.0 / bl_text.model.logit_scale_a.detach().float().exp().cpu()
        )
    methods = select_methods(cfg, dist is not None)
    species_labels = np.array([s.label for s in species], dtype=np.int64)
    train_labels = train_labels_of(meta, species)

    teacher_text = embed_species_text(bc_text, species, cfg.prompt_format, cfg.templates)
    audio_text = embed_species_text(bl_text, species, cfg.audio_prompt_format, cfg.audio_templates)
    maps = {}
    wanted = [m for m in methods if m in MAPPING_METHODS]
    if wanted and ("retrieval" in tasks or "alignment" in tasks):
        variants = prompt_variants(bl_text, species, list(cfg.mapping_formats), cfg.audio_templates)
        x, y = mapping_pairs(variants, teacher_text, np.isin(species_labels, train_labels))
        maps = fit_mappings(
            x,
            y,
            wanted,
            ridge_alpha=cfg.ridge_alpha,
            mlp_hidden=cfg.mlp_hidden,
            mlp_epochs=cfg.mlp_epochs,
            seed=cfg.seed,
        )
    run = EvalRun(
        cfg,
        species,
        species_labels,
        {"original": bl, **({"distilled": dist} if dist else {})},
        bc,
        teacher_text,
        audio_text,
        maps,
        train_labels,
        skipped=choice_skipped,
    )
    return run, methods, selection
