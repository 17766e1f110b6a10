"""The distilled checkpoint's readouts in an evaluation: what they need from the checkpoint
(`readout_inputs`), which one it answers with by default (`recorded_readout`), and their
species posteriors for the alignment tasks (`readout_posteriors`), as a search computes them.
"""

from __future__ import annotations

import warnings

import numpy as np

from songsight.eval.setup import EvalRun

__all__ = ["readout_inputs", "readout_posteriors", "recorded_readout"]


def readout_inputs(run: EvalRun) -> dict | None:
    """What the distilled checkpoint's readouts need: its learned logit scale, the fusion
    weight its validation chose, and which species it was distilled on (None without one)."""
    dist = run.encoders.get("distilled")
    if dist is None:
        return None
    meta = dist.meta
    if "logit_scale" not in meta:
        warnings.warn(
            "the distilled checkpoint records no logit scale (made before readouts existed): "
            "distilled_proto and fused are left out",
            stacklevel=3,
        )
        return None
    recorded = meta.get("readout") or {}
    prior = recorded.get("fusion_prior")
    if prior:
        floor = min(prior.values())
        prior = np.array([prior.get(s.scientific_name, floor) for s in run.species], np.float32)
    return {
        "logit_scale": float(meta["logit_scale"]),
        "fusion_weight": float(recorded.get("fusion_weight", 0.5)),
        "fusion_gate": recorded.get("fusion_gate", "hard"),
        "fusion_prior": prior,
        "seen": np.isin(run.species_labels, run.train_labels),
    }


def recorded_readout(run: EvalRun) -> dict | None:
    """The readout the distilled checkpoint answers with by default, and how it was chosen;
    a fused readout at weight 0 answers as the cascade and says so (``answers_as``)."""
    dist = run.encoders.get("distilled")
    recorded = (dist.meta.get("readout") or {}) if dist is not None else {}
    if not recorded.get("method"):
        return None
    out = {k: recorded.get(k) for k in ("method", "fusion_weight", "fusion_gate", "chosen_on")}
    fused_off = recorded["method"] == "fused" and float(recorded.get("fusion_weight", 0.5)) == 0
    out["answers_as"] = "cascade_top1" if fused_off else recorded["method"]
    return out


def readout_posteriors(run: EvalRun, audio_by_model: dict) -> dict[str, np.ndarray]:
    """The product's readouts as species scores for the alignment tasks: ``distilled_proto``
    and ``fused`` posteriors (N, S) of the same recordings (or windows), as search answers."""
    from songsight.baselines.cascade import species_probabilities
    from songsight.readout import readout_posterior

    readout = readout_inputs(run)
    dist, base = audio_by_model.get("distilled"), audio_by_model.get("original")
    if readout is None or dist is None or base is None or len(dist) != len(base):
        return {}
    common = {"logit_scale": readout["logit_scale"]}
    p_cascade = species_probabilities(base, run.audio_text, run.cfg.cascade_temperature)
    return {
        "distilled_proto": readout_posterior("distilled_proto", dist, run.teacher_text, **common),
        "fused": readout_posterior(
            "fused", dist, run.teacher_text, **common, p_cascade=p_cascade, seen=readout["seen"],
            weight=readout["fusion_weight"], gate=readout["fusion_gate"],
            prior=readout["fusion_prior"],
        ),
    }  # fmt: skip
