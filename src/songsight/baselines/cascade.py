"""Zero-shot cascade: audio -> species (BioLingual) -> species text embedding (BioCLIP-2).

BioLingual classifies a recording against the species' prompt embeddings in its own
512-d text space; the species answer is then looked up in BioCLIP-2's 768-d text space,
where it can query images. No training: the only knob is the softmax temperature.
Inputs are float32 numpy arrays, unit norm along the last axis (as the encoders return them).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from songsight.encoders.base import l2_normalize

CascadeMode = Literal["top1", "weighted"]


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {x.shape}")
    return x


def species_probabilities(
    audio_emb: np.ndarray, biolingual_species_text_emb: np.ndarray, temperature: float
) -> np.ndarray:
    """BioLingual's zero-shot species posterior per clip.

    ``audio_emb`` (N, 512) and ``biolingual_species_text_emb`` (S, 512), unit norm.
    Returns (N, S) float32, each row ``softmax(audio . text / temperature)``.
    """
    audio = _as_matrix(audio_emb, "audio_emb")
    text = _as_matrix(biolingual_species_text_emb, "biolingual_species_text_emb")
    if audio.shape[1] != text.shape[1]:
        raise ValueError(f"audio_emb {audio.shape} and species text {text.shape} differ in width")
    if text.shape[0] == 0:
        raise ValueError("biolingual_species_text_emb has no species")
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    logits = (audio @ text.T) / np.float32(temperature)
    logits -= logits.max(axis=1, keepdims=True)  # exp cannot overflow after the shift
    weights = np.exp(logits)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def queries_from_probabilities(
    probabilities: np.ndarray, bioclip_species_text_emb: np.ndarray, mode: CascadeMode = "top1"
) -> np.ndarray:
    """Turn species probabilities (N, S) into BioCLIP-2 queries (N, 768) float32, unit norm.

    ``"top1"``: the BioCLIP-2 text embedding of the most probable species (the first one on
    ties). ``"weighted"``: the probability-weighted mean of all species' BioCLIP-2 text
    embeddings, re-normalised. ``bioclip_species_text_emb`` (S, 768) is unit norm, rows in
    the same species order as the probabilities' columns.
    """
    probs = _as_matrix(probabilities, "probabilities")
    bioclip = _as_matrix(bioclip_species_text_emb, "bioclip_species_text_emb")
    if probs.shape[1] != bioclip.shape[0]:
        raise ValueError(
            f"{probs.shape[1]} species probabilities but {bioclip.shape[0]} BioCLIP-2 species embeddings"
        )
    if mode == "top1":
        return bioclip[probs.argmax(axis=1)].copy()
    if mode == "weighted":
        # A convex mix of unit vectors has norm 0 only if they cancel exactly; such rows stay 0.
        return l2_normalize(probs @ bioclip)
    raise ValueError(f"mode must be 'top1' or 'weighted', got {mode!r}")


def cascade_queries(
    audio_emb: np.ndarray,
    biolingual_species_text_emb: np.ndarray,
    bioclip_species_text_emb: np.ndarray,
    temperature: float,
    mode: CascadeMode = "top1",
) -> np.ndarray:
    """BioCLIP-2 image queries for recordings, through BioLingual's species answer.

    ``audio_emb`` (N, 512), ``biolingual_species_text_emb`` (S, 512) and
    ``bioclip_species_text_emb`` (S, 768), unit norm, species rows in the same order.
    Returns (N, 768) float32, unit norm. ``temperature`` only matters for ``"weighted"``.
    Use :func:`species_probabilities` for the species answers themselves.
    """
    if (
        np.asarray(biolingual_species_text_emb).shape[0]
        != np.asarray(bioclip_species_text_emb).shape[0]
    ):
        raise ValueError(
            "the BioLingual and BioCLIP-2 species embeddings need the same species rows"
        )
    probs = species_probabilities(audio_emb, biolingual_species_text_emb, temperature)
    return queries_from_probabilities(probs, bioclip_species_text_emb, mode)
