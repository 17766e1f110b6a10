"""What the distillation trainer reports: per-epoch validation and the metrics CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from songsight.distill.data import AudioCrops
from songsight.distill.plan import MIN_READOUT_CLIPS_PER_SPECIES
from songsight.encoders.base import l2_normalize
from songsight.encoders.windows import resolve_windows
from songsight.inputs.audio import window_bounds

METRICS_FILE = "metrics.csv"
# A fusion may answer the species the run never learnt (gate species) at most this much worse
# than the cascade does (mAP, on validation); see `Validator._best_fusion`.
UNSEEN_TOLERANCE = 0.01


def clip_weights(labels: np.ndarray, train_labels, n_species: int) -> np.ndarray:
    """(N,) weights of validation clips: clips of species the run does not train on (gate
    species) weigh, together, the share of the species table that the model will meet without
    having trained on them (the table's untrained species and the gate species), the others
    the rest, so that validation judges readouts on the mix a search of the whole table meets,
    not on however many clips the gate species happen to have."""
    labels = np.asarray(labels)
    unseen = ~np.isin(labels, list(train_labels))
    if not unseen.any() or unseen.all():
        return np.ones(len(labels))
    share = (n_species - len(set(train_labels))) / n_species
    return np.where(unseen, share / unseen.sum(), (1 - share) / (~unseen).sum())


class Validator:
    """Validation of a student each epoch: zero-shot top-1, and each readout's retrieval score.

    ``targets``: (S, D) teacher text embeddings on ``device``, row ``by_label[label]``;
    ``gallery``: ((G, D) image embeddings, (G,) labels) or None; ``cascade``: (BioLingual's
    (S, d) species text embeddings, its temperature) for the cascade and the fused readout, or
    None. A clip's embedding is the normalised mean of its unit window embeddings (windows of
    ``window_s``, half overlap), as the encoder computes it at inference.

    Each readout (`songsight.readout`) is scored by audio-to-image mAP over the
    gallery when one is given, else by mAP against the teacher's species text embeddings
    (one "photo" per species), and then only the posterior readouts (``distilled_proto``,
    ``fused``) are candidates. ``val_score`` is the best candidate's score: the trainer keeps
    the checkpoint with the highest one.
    """

    def __init__(
        self, val_df, features, window_s: float, targets, by_label: dict, train_labels,
        gallery, device: str, autocast, cascade=None,
    ):  # fmt: skip
        self.crops = AudioCrops(
            list(val_df["path"]), list(val_df["label"]), features.sample_rate_hz, window_s, True
        )
        self.labels = val_df["label"].to_numpy()
        self.features = features
        self.window_s, self.hop_s = resolve_windows(
            window_s, None, features.max_samples / features.sample_rate_hz
        )
        self.targets, self.by_label, self.train_labels = targets, by_label, train_labels
        self.species_emb = targets.cpu().numpy()  # (S, D): scored against on the host
        self.gallery, self.device, self.autocast = gallery, device, autocast
        self.cascade = cascade
        self.p_cascade = None  # (N, S) the cascade's posterior, from the original model
        self.species_labels = np.array(sorted(by_label, key=by_label.get))
        self.seen = np.isin(self.species_labels, train_labels)
        self.weights = clip_weights(self.labels, train_labels, len(by_label))
        per_species = np.unique(self.labels, return_counts=True)[1]
        self.counts = {
            "clips": int(len(self.labels)),
            "species": int(len(per_species)),
            "min_clips_per_species": int(per_species.min()) if len(per_species) else 0,
        }

    def can_choose_readout(self) -> bool:
        """Whether validation is large enough to choose a readout and its fusion weight."""
        return self.counts["min_clips_per_species"] >= MIN_READOUT_CLIPS_PER_SPECIES

    def too_small(self) -> str:
        c = self.counts
        return (
            f"{c['clips']} validation clip(s) of {c['species']} species, as few as "
            f"{c['min_clips_per_species']} of one; readouts are chosen with at least "
            f"{MIN_READOUT_CLIPS_PER_SPECIES} of each"
        )

    def embed(self, student, output: int = 0) -> np.ndarray:
        """(N, D) clip embeddings of the validation clips: the student's head output
        (``output=0``), read from the clip's audio embedding as the encoder does at inference
        (`songsight.encoders.distilled.clip_input`), or its base 512-d audio embedding
        (``output=1``)."""
        import torch

        from songsight.encoders.heads import clip_input

        sr, embs = self.features.sample_rate_hz, []
        with torch.inference_mode():
            for i in range(len(self.crops)):
                wave = self.crops.waveform(i)
                bounds = window_bounds(len(wave), sr, self.window_s, self.hop_s)
                wins = [wave[a:b] for a, b in bounds]
                with torch.autocast(
                    self.device.split(":")[0],
                    dtype=self.autocast,
                    enabled=self.autocast is not None,
                ):
                    base = student(self.features(wins, self.device))[1].float()
                    clip = student.head(clip_input(base)) if output == 0 else l2_normalize(base).mean(0, keepdim=True)  # fmt: skip
                embs.append(l2_normalize(clip.float()))
        return torch.cat(embs).cpu().numpy()

    def prepare(self, student) -> None:
        """Embed the clips with the untouched model (before any step): the cascade's input."""
        from songsight.baselines.cascade import species_probabilities

        if self.cascade is not None and self.p_cascade is None:
            audio_text, temperature = self.cascade
            self.p_cascade = species_probabilities(self.embed(student, 1), audio_text, temperature)

    def _ap(self, queries: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """(N,) average precision of each clip's query (NaN without a relevant item)."""
        from songsight.eval.metrics import retrieval_metrics

        if self.gallery is not None:
            return retrieval_metrics(queries @ self.gallery[0].T, self.labels, self.gallery[1], ks=())["ap"]  # fmt: skip
        n = len(self.species_emb)
        return retrieval_metrics(queries @ self.species_emb.T, idx, np.arange(n), ks=())["ap"]

    def _score(self, queries: np.ndarray, idx: np.ndarray, part: str | None = None) -> float:
        """mAP of the queries, each clip weighted by `clip_weights`; ``part``: ``unseen`` for
        the clips of species the run does not learn only (unweighted)."""
        ap = self._ap(queries, idx)
        ok = ~np.isnan(ap)
        if part == "unseen":
            ok &= ~np.isin(self.labels, self.train_labels)
            return float(ap[ok].mean()) if ok.any() else float("nan")
        return float(np.average(ap[ok], weights=self.weights[ok])) if ok.any() else float("nan")

    def __call__(self, student, logit_scale: float) -> dict:
        """Metrics of ``student`` (already in eval mode) on the validation clips."""
        from songsight.eval.metrics import topk_accuracy
        from songsight.readout import readout_queries

        emb = self.embed(student)
        species_emb = self.species_emb
        labels = self.labels
        idx = np.array([self.by_label[int(x)] for x in labels])
        scores = emb @ species_emb.T
        res = {"val_zero_shot_top1": topk_accuracy(scores, idx, 1)}
        seen = np.isin(labels, self.train_labels)
        if seen.any() and not seen.all():
            res["val_zero_shot_top1_seen"] = topk_accuracy(scores[seen], idx[seen], 1)
            res["val_zero_shot_top1_heldout"] = topk_accuracy(scores[~seen], idx[~seen], 1)
        res.update(self._where_it_lands(emb, idx))
        readouts = {}
        for name in ("distilled", "distilled_proto"):
            q = readout_queries(name, emb, species_emb, logit_scale=logit_scale)
            readouts[name] = self._score(q, idx)
        if self.p_cascade is not None:
            res["val_cascade"] = self._score(species_emb[self.p_cascade.argmax(1)], idx)
            readouts["fused"], fusion = self._best_fusion(emb, idx, logit_scale)
            res.update(fusion)
        for name, value in readouts.items():
            res[f"val_{name}"] = value
        if seen.any() and not seen.all() and self.p_cascade is not None:
            res.update(self._unseen(emb, idx, res))
        candidates = self._candidates(readouts, seen)
        if self.can_choose_readout():
            best = max(candidates, key=candidates.get)
        else:  # too few clips to choose: the stated default, judged as it will answer
            best = self._default(readouts, res)
        res["val_readout"], res["val_score"] = best, readouts[best]
        if self.gallery is not None:
            res["val_map"] = readouts["distilled"]
        return res

    def _where_it_lands(self, emb: np.ndarray, idx: np.ndarray) -> dict:
        """The raw embedding's mean cosine, over clips of the species the run learns, to its
        own species' teacher text and, with photos, to the (normalised) centroid of its
        species' photos: whether it lands on them (`songsight.eval.metrics.landing`)."""
        from songsight.eval.statistics import landing

        learnt = np.isin(self.labels, self.train_labels)
        photos = self.gallery if self.gallery is not None else (None, None)
        out = landing(emb[learnt], self.labels[learnt], self.species_emb, self.species_labels, *photos)  # fmt: skip
        return {f"val_{k}": v for k, v in out.items()}

    def _best_fusion(self, emb, idx, logit_scale: float) -> tuple[float, dict]:
        """(score, record) of the best fused readout over every gate and weight; ties go to
        the larger weight (the distilled side). When validation holds clips of species the
        run does not learn (gate species), only fusions that answer those within
        `UNSEEN_TOLERANCE` of the cascade are candidates: fusion is for the species the model
        learnt, and may not buy them with the others (on the simulated world a product of
        experts that did lost 7.7 points of held-out mAP on test for 2.6 overall). The poe
        gate's prior is the distilled posterior's mean over the clips of the species the run
        learns."""
        from songsight.readout import (
            FUSION_GATES,
            FUSION_WEIGHTS,
            prototype_posterior,
            species_prior,
        )

        # The prior is the posterior's mean over clips of the species the run learns: a gate
        # species' own clips must not set its prior, as a held-out species has none there.
        learnt = np.isin(self.labels, self.train_labels)
        self._scale = logit_scale
        self.prior = species_prior(prototype_posterior(emb[learnt], self.species_emb, logit_scale))
        scored, unseen = {}, {}
        for gate in FUSION_GATES:
            for w in FUSION_WEIGHTS:
                q = self._fused_queries(emb, logit_scale, gate, w)
                scored[(gate, w)] = self._score(q, idx)
                if not learnt.all():
                    unseen[(gate, w)] = self._score(q, idx, "unseen")
        allowed = list(scored)
        if unseen:
            floor = self._score(self.species_emb[self.p_cascade.argmax(1)], idx, "unseen")
            allowed = [k for k in scored if k[1] == 0.0 or unseen[k] >= floor - UNSEEN_TOLERANCE]
        gate, w = max(allowed, key=lambda k: (scored[k], k[1]))
        self.fusions = scored
        record = {
            "val_fusion_weight": w,
            "val_fusion_gate": gate,
            "val_fusion_grid": {
                f"{g} {x}": [round(v, 6)] + ([round(unseen[(g, x)], 6)] if unseen else [])
                for (g, x), v in scored.items()
            },
        }
        if gate == "poe":
            record["val_fusion_prior"] = [round(float(x), 8) for x in self.prior]
        return scored[(gate, w)], record

    def _unseen(self, emb, idx, res: dict) -> dict:
        """mAP on the clips of species the run does not learn (gate species) of the cascade, the
        raw embedding and the chosen fusion: how each answers species it never learnt."""
        queries = {
            "cascade": self.species_emb[self.p_cascade.argmax(1)],
            "distilled": l2_normalize(emb),
            "fused": self._fused_queries(emb, self._scale, res["val_fusion_gate"], res["val_fusion_weight"]),
        }  # fmt: skip
        return {f"val_{name}_unseen": self._score(q, idx, "unseen") for name, q in queries.items()}

    def _fused_queries(self, emb, logit_scale: float, gate: str, weight: float) -> np.ndarray:
        from songsight.readout import readout_queries

        return readout_queries(
            "fused", emb, self.species_emb, logit_scale=logit_scale, p_cascade=self.p_cascade,
            seen=self.seen, weight=weight, gate=gate, prior=self.prior,
        )  # fmt: skip

    def _candidates(self, readouts: dict, seen: np.ndarray) -> dict:
        # Without photos, the raw embedding cannot be judged as an image query: its rank of
        # the species' text credits near misses that land between photos of several species.
        # The posterior readouts query with a species' text, which the text score does judge.
        candidates = dict(readouts)
        if self.gallery is None:
            candidates.pop("distilled")
        if not self.seen.all() and seen.all() and "fused" in candidates:
            # Species of the table without training audio, and none among the validation
            # clips (no gate species: too few trained): distilled_proto never names them and
            # validation cannot see that cost (in the simulated world it once chose it, whose
            # held-out mAP on test was then 4.7 against the cascade's 89.7).
            candidates.pop("distilled_proto", None)
        return candidates

    def _default(self, readouts: dict, res: dict) -> str:
        """The stated default readout (`songsight.distill.checkpoint.default_readout`), its
        score recorded as it will answer."""
        from songsight.distill.checkpoint import default_readout

        default = default_readout()
        best = default["method"] if default["method"] in readouts else "distilled_proto"
        if best == "fused":
            w, gate = default["fusion_weight"], default["fusion_gate"]
            readouts["fused"] = res["val_fused"] = self.fusions[(gate, w)]
            res.update(val_fusion_weight=w, val_fusion_gate=gate)
            res.pop("val_fusion_prior", None)
        res["val_readout_default"] = self.too_small()
        return best


class MetricsLog:
    """metrics.csv: one row per optimiser step and one per validation, appended as they come."""

    COLUMNS = (
        "step",
        "epoch",
        "total",
        "contrastive",
        "calibration",
        "target",
        "preserve",
        "logit_scale",
        "lr",
        "items_per_s",
        "interpolation",
        "val_zero_shot_top1",
        "val_zero_shot_top1_seen",
        "val_zero_shot_top1_heldout",
        "val_map",
        "val_distilled",
        "val_distilled_proto",
        "val_fused",
        "val_fusion_weight",
        "val_fusion_gate",
        "val_cos_text",
        "val_cos_photos",
        "val_cascade",
        "val_cascade_unseen",
        "val_distilled_unseen",
        "val_fused_unseen",
        "val_readout",
        "val_score",
    )

    def __init__(self, path: Path, keep_until_step: int):
        kept = []
        # A resumed run drops the rows past its checkpoint, and the interpolations' rows, which
        # it validates again after its last step (`songsight.distill.loop.Trainer._interpolate`).
        if keep_until_step >= 0 and path.is_file():
            with path.open(newline="") as fh:
                kept = [
                    r
                    for r in csv.DictReader(fh)
                    if int(r["step"]) <= keep_until_step and not r.get("interpolation")
                ]
        self._fh = path.open("w", newline="")
        self._w = csv.DictWriter(self._fh, fieldnames=self.COLUMNS, extrasaction="ignore")
        self._w.writeheader()
        self._w.writerows(kept)
        self._fh.flush()

    def write(self, row: dict) -> None:
        self._w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self._fh.flush()
