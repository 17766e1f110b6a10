"""Readouts: how a distilled encoder's output becomes an image query, alone or with the cascade.

The distilled encoder puts a recording in the teacher's (BioCLIP-2's) space. Three ways to
query photos with it, each a method of its own in evaluation and search:

- ``distilled``: the embedding itself (the paper's method as it stands);
- ``distilled_proto``: the embedding read out as a posterior over the teacher's species text
  embeddings (the prototypes it was trained towards), and the teacher text of the most
  probable species queries the photos: a cascade through the distilled encoder. It lands
  exactly on a target when the species is right, where the raw embedding may sit between
  photos of several species;
- ``fused``: the distilled posterior and the zero-shot cascade's (BioLingual's own posterior)
  combined so that species the distilled model never saw are answered by the cascade, through
  a gate (`fuse_posteriors`): the cascade's answer (``hard``), its mass on those species
  (``soft``), or a product of experts (``poe``). Among the distilled species the answer comes
  from ``p_distilled^w * p_cascade^(1 - w)``: ``w = 0`` is the cascade, ``w = 1`` the distilled
  posterior. The gate and the weight are chosen on a validation split whose species include
  some held out of training (`songsight.distill.plan`), and recorded in the checkpoint.

Pure numpy functions: arrays in, arrays out; no models, files or CLI.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from songsight.baselines.cascade import queries_from_probabilities, species_probabilities
from songsight.encoders.base import l2_normalize

READOUTS = ("distilled", "distilled_proto", "fused")
# Candidate fusion weights tried on validation (0 reproduces the cascade exactly).
FUSION_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
# How the fused readout leaves species the model never learnt to the cascade (`fuse_posteriors`).
FUSION_GATES = ("hard", "soft", "poe")


def prototype_posterior(
    distilled_emb: np.ndarray, species_text_emb: np.ndarray, logit_scale: float
) -> np.ndarray:
    """(N, S) float32: ``softmax(logit_scale * distilled . text)`` per recording.

    ``distilled_emb`` (N, D) and ``species_text_emb`` (S, D), unit norm; ``logit_scale`` the
    multiplier the distillation learned (``1 / temperature``).
    """
    return species_probabilities(distilled_emb, species_text_emb, 1.0 / float(logit_scale))


def fuse_posteriors(
    p_distilled: np.ndarray,
    p_cascade: np.ndarray,
    seen: Sequence[bool],
    weight: float,
    gate: str = "hard",
    prior: np.ndarray | None = None,
) -> np.ndarray:
    """(N, S) float32 fused species posterior (rows sum to 1); see the module docstring.

    ``p_distilled`` and ``p_cascade`` (N, S) posteriors over the same species columns;
    ``seen`` (S,) True for the species the encoder was distilled on; ``weight`` in [0, 1];
    ``gate`` (`FUSION_GATES`) how species the distilled model never learnt are answered:

    - ``hard``: by the cascade's arg-max: rows whose cascade answer was not distilled keep the
      cascade's posterior, the others become ``p_distilled^w * p_cascade^(1-w)`` over the
      distilled species only;
    - ``soft``: by the cascade's mass on them: they keep the cascade's probabilities, and the
      rest of each row, ``1 -`` that mass, is shared among the distilled species as in ``hard``;
    - ``poe``: a product of experts, ``p_cascade * (p_distilled / prior)^w`` over every
      species, where ``prior`` (S,) is the distilled posterior's mean over clips of the
      species it learnt (`species_prior`): the distilled model's likelihood ratio, about 1 for
      species it never learnt, so that those keep the cascade's say.
    """
    pd_ = np.asarray(p_distilled, dtype=np.float64)
    pc = np.asarray(p_cascade, dtype=np.float64)
    seen = np.asarray(seen, dtype=bool)
    if pd_.shape != pc.shape or pd_.ndim != 2 or seen.shape != (pd_.shape[1],):
        raise ValueError(
            f"need two (N, S) posteriors and (S,) seen, got {pd_.shape}, {pc.shape}, {seen.shape}"
        )
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    if gate not in FUSION_GATES:
        raise ValueError(f"gate must be one of {FUSION_GATES}, got {gate!r}")
    tiny = np.finfo(np.float64).tiny
    if gate == "poe":
        if prior is None:
            raise ValueError("the poe gate needs the distilled posterior's prior")
        log_p = np.log(np.maximum(pc, tiny)) + weight * (
            np.log(np.maximum(pd_, tiny)) - np.log(np.maximum(np.asarray(prior, np.float64), tiny))
        )
        log_p -= log_p.max(axis=1, keepdims=True)
        q = np.exp(log_p)
        return (q / q.sum(axis=1, keepdims=True)).astype(np.float32)
    out = pc.copy()
    if not seen.any() or len(pc) == 0:
        return out.astype(np.float32)
    rows = seen[pc.argmax(axis=1)] if gate == "hard" else np.ones(len(pc), bool)
    log_q = weight * np.log(np.maximum(pd_[rows][:, seen], tiny)) + (1 - weight) * np.log(
        np.maximum(pc[rows][:, seen], tiny)
    )
    log_q -= log_q.max(axis=1, keepdims=True)
    q = np.exp(log_q)
    q /= q.sum(axis=1, keepdims=True)
    if gate == "hard":
        fused = np.zeros((int(rows.sum()), pc.shape[1]))
        fused[:, seen] = q
    else:
        fused = pc[rows].copy()
        fused[:, seen] = q * pc[rows][:, seen].sum(axis=1, keepdims=True)
    out[rows] = fused
    return out.astype(np.float32)


def species_prior(p_distilled: np.ndarray) -> np.ndarray:
    """(S,) float32: the distilled posterior's mean over clips (for the ``poe`` gate): clips
    of the species the model learnt, so that no species it never learnt sets its own."""
    return np.asarray(p_distilled, np.float64).mean(axis=0).astype(np.float32)


def readout_queries(
    readout: str, distilled_emb: np.ndarray, species_text_emb: np.ndarray, **posterior_args
) -> np.ndarray:
    """(N, D) float32 unit-norm image queries for ``readout`` (one of `READOUTS`).

    ``species_text_emb`` (S, D): the teacher's text embedding of every candidate species;
    ``posterior_args`` (``logit_scale``, and for ``fused`` ``p_cascade``, ``seen``,
    ``weight``) as `readout_posterior` takes them. The posterior readouts query with the text
    of their most probable species.
    """
    if readout == "distilled":
        return l2_normalize(np.asarray(distilled_emb, dtype=np.float32))
    posterior = readout_posterior(readout, distilled_emb, species_text_emb, **posterior_args)
    return queries_from_probabilities(posterior, species_text_emb, "top1")


def readout_posterior(
    readout: str,
    distilled_emb: np.ndarray,
    species_text_emb: np.ndarray,
    *,
    logit_scale: float,
    p_cascade: np.ndarray | None = None,
    seen: Sequence[bool] | None = None,
    weight: float = 0.5,
    gate: str = "hard",
    prior: np.ndarray | None = None,
) -> np.ndarray:
    """(N, S) species posterior of ``distilled_proto`` or ``fused``.

    ``logit_scale``: the distillation's learned multiplier; ``p_cascade`` (N, S) and ``seen``
    (S,) bool: the cascade's posterior and the distilled species, for ``fused`` only;
    ``weight``, ``gate`` and ``prior``: the fusion's (see `fuse_posteriors`).
    """
    p_dist = prototype_posterior(distilled_emb, species_text_emb, logit_scale)
    if readout == "distilled_proto":
        return p_dist
    if readout == "fused":
        if p_cascade is None or seen is None:
            raise ValueError("the fused readout needs the cascade's posterior and the seen mask")
        return fuse_posteriors(p_dist, p_cascade, seen, weight, gate, prior)
    raise ValueError(f"no species posterior for readout {readout!r}; choose from {READOUTS[1:]}")
