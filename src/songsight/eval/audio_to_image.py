"""Audio-to-image retrieval: one query vector per recording for each method, then scores.

Every method turns the test recordings into (Q, D) unit vectors in the image model's
(BioCLIP-2's) space, scored by cosine against the (G, D) image gallery:

- ``chance``: seeded random unit vectors (the floor);
- ``cascade_top1`` / ``cascade_weighted``: BioLingual's zero-shot species answer, looked up in
  BioCLIP-2's text space (`songsight.baselines.cascade`); zero-shot, so over every species,
  held out of distillation or not;
- ``map_ridge`` / ``map_procrustes`` / ``map_mlp``: BioLingual audio through a map fitted from
  BioLingual's text space to BioCLIP-2's (`songsight.baselines.text_mapping`) on the training
  species' prompts only;
- ``distilled``: the distilled encoder's own output;
- ``distilled_proto`` / ``fused``: the distilled output read out as a posterior over the
  teacher's species text, alone or fused with the cascade's so that species outside the
  distillation set are answered by the cascade (`songsight.readout`); the fusion
  weight is the one the checkpoint's validation chose;
- ``oracle``: BioCLIP-2's text embedding of the true species (the ceiling).

Arrays in, dicts of plain floats out; no models, files or CLI here.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from songsight.baselines.cascade import cascade_queries, species_probabilities
from songsight.baselines.text_mapping import TextMapping, fit_mlp, fit_procrustes, fit_ridge
from songsight.encoders.base import l2_normalize
from songsight.eval.metrics import per_class_ap, retrieval_metrics
from songsight.eval.statistics import paired_difference, summarize
from songsight.readout import readout_queries

RETRIEVAL_METHODS = (
    "chance", "cascade_top1", "cascade_weighted", "map_ridge", "map_procrustes", "map_mlp",
    "distilled", "distilled_proto", "fused", "oracle",
)  # fmt: skip
DISTILLED_METHODS = ("distilled", "distilled_proto", "fused")
MAPPING_METHODS = ("map_ridge", "map_procrustes", "map_mlp")
# Methods every table carries whatever was asked: the floor and the ceiling.
ALWAYS = ("chance", "oracle")
TABLE_METRICS = ("map", "recall@1", "recall@5", "recall@10", "precision@10", "ndcg@10", "mrr")
KS = (1, 5, 10)


def chance_queries(n: int, dim: int, seed: int) -> np.ndarray:
    """(n, dim) float32 unit vectors drawn uniformly on the sphere from ``seed``."""
    return l2_normalize(np.random.default_rng(seed).standard_normal((n, dim)))


def label_rows(labels: Sequence[int], species_labels: Sequence[int]) -> np.ndarray:
    """Row index of each label in ``species_labels`` ((N,) int); unknown labels raise."""
    index = {int(s): i for i, s in enumerate(species_labels)}
    try:
        return np.array([index[int(v)] for v in labels], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"label {exc.args[0]} is not among the species") from None


def oracle_queries(
    labels: Sequence[int], species_labels: Sequence[int], species_emb: np.ndarray
) -> np.ndarray:
    """(N, D): the image model's text embedding of each recording's true species."""
    return np.asarray(species_emb, dtype=np.float32)[label_rows(labels, species_labels)].copy()


def mapping_pairs(
    variant_emb: np.ndarray, target_emb: np.ndarray, keep: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Training pairs for a text map: every prompt variant of a species -> its target.

    ``variant_emb`` (S, V, d_in): each species' prompt variants (forms x templates) in
    BioLingual's text space; ``target_emb`` (S, d_out): the species' embedding in the image
    model's text space (the vector the oracle queries with). ``keep`` (S,) bool selects the
    training species. Returns X (P, d_in), Y (P, d_out) with P = kept species x V.
    """
    variant_emb = np.asarray(variant_emb, dtype=np.float32)
    target_emb = np.asarray(target_emb, dtype=np.float32)
    if variant_emb.ndim != 3 or variant_emb.shape[0] != target_emb.shape[0]:
        raise ValueError(
            f"need variants (S, V, d) and targets (S, d), got {variant_emb.shape} and {target_emb.shape}"
        )
    keep = np.ones(len(target_emb), bool) if keep is None else np.asarray(keep, bool)
    n_variants = variant_emb.shape[1]
    x = variant_emb[keep].reshape(-1, variant_emb.shape[2])
    y = np.repeat(target_emb[keep], n_variants, axis=0)
    return x, y


def fit_mappings(
    x: np.ndarray,
    y: np.ndarray,
    kinds: Sequence[str],
    *,
    ridge_alpha: float = 1.0,
    mlp_hidden: int = 1024,
    mlp_epochs: int = 200,
    seed: int = 0,
) -> dict[str, TextMapping]:
    """Fit each asked map (``map_ridge``, ``map_procrustes``, ``map_mlp``) on (P, d_in) -> (P, d_out).

    A map whose fit is impossible here (Procrustes with d_in > d_out) is left out with a warning.
    """
    out: dict[str, TextMapping] = {}
    for kind in kinds:
        if kind == "map_ridge":
            out[kind] = fit_ridge(x, y, alpha=ridge_alpha)
        elif kind == "map_procrustes":
            if x.shape[1] > y.shape[1]:
                warnings.warn(
                    f"map_procrustes skipped: needs d_in <= d_out, got {x.shape[1]} > {y.shape[1]}",
                    stacklevel=2,
                )
                continue
            out[kind] = fit_procrustes(x, y)
        elif kind == "map_mlp":
            out[kind] = fit_mlp(x, y, hidden=mlp_hidden, epochs=mlp_epochs, seed=seed)
        else:
            raise ValueError(f"unknown mapping {kind!r}; choose from {MAPPING_METHODS}")
    return out


def build_queries(
    methods: Sequence[str],
    *,
    labels: Sequence[int],
    species_labels: Sequence[int],
    teacher_species_emb: np.ndarray,
    audio_emb: np.ndarray | None = None,
    audio_species_emb: np.ndarray | None = None,
    cascade_temperature: float = 0.07,
    mappings: Mapping[str, TextMapping] | None = None,
    distilled_emb: np.ndarray | None = None,
    readout: dict | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """(Q, D) float32 unit-norm queries in the image model's space, one array per method.

    ``labels`` (Q,) true species of the recordings (used by the oracle only); ``species_labels``
    (S,) the rows of ``teacher_species_emb`` (S, D) and ``audio_species_emb`` (S, d_audio)
    (BioLingual text of each species); ``audio_emb`` (Q, d_audio) BioLingual audio;
    ``distilled_emb`` (Q, D); ``readout`` {``logit_scale``, ``fusion_weight``, ``seen`` (S,)
    bool} from the distilled checkpoint, for ``distilled_proto`` and ``fused``. A method whose
    inputs are absent is left out.
    """
    n, dim = len(labels), int(np.asarray(teacher_species_emb).shape[1])
    mappings = mappings or {}
    out: dict[str, np.ndarray] = {}
    for m in methods:
        if m == "chance":
            out[m] = chance_queries(n, dim, seed)
        elif m == "oracle":
            out[m] = oracle_queries(labels, species_labels, teacher_species_emb)
        elif (
            m in ("cascade_top1", "cascade_weighted")
            and audio_emb is not None
            and audio_species_emb is not None
        ):
            out[m] = cascade_queries(
                audio_emb,
                audio_species_emb,
                teacher_species_emb,
                cascade_temperature,
                mode=m.removeprefix("cascade_"),
            )  # type: ignore[arg-type]
        elif m in MAPPING_METHODS and m in mappings and audio_emb is not None:
            out[m] = mappings[m].apply(audio_emb)
        elif m == "distilled" and distilled_emb is not None:
            out[m] = l2_normalize(distilled_emb)
        elif m == "distilled_proto" and distilled_emb is not None and readout is not None:
            out[m] = readout_queries(
                m, distilled_emb, teacher_species_emb, logit_scale=readout["logit_scale"]
            )
        elif (
            m == "fused"
            and distilled_emb is not None
            and readout is not None
            and audio_emb is not None
            and audio_species_emb is not None
        ):
            out[m] = readout_queries(
                m,
                distilled_emb,
                teacher_species_emb,
                logit_scale=readout["logit_scale"],
                p_cascade=species_probabilities(audio_emb, audio_species_emb, cascade_temperature),
                seen=readout["seen"],
                weight=readout["fusion_weight"],
                gate=readout.get("fusion_gate", "hard"),
                prior=readout.get("fusion_prior"),
            )
        elif m not in RETRIEVAL_METHODS:
            raise ValueError(f"unknown retrieval method {m!r}; choose from {RETRIEVAL_METHODS}")
    return out


def per_query_metrics(
    similarity: np.ndarray, query_labels: Sequence, gallery_labels: Sequence
) -> dict[str, np.ndarray]:
    """(Q,) arrays of the table metrics (``map`` is each query's AP) from a (Q, G) similarity."""
    raw = retrieval_metrics(similarity, np.asarray(query_labels), np.asarray(gallery_labels), ks=KS)
    return {m: raw["ap" if m == "map" else m] for m in TABLE_METRICS}


def summarise(
    per_query: Mapping[str, np.ndarray], n_boot: int, seed: int, mask: np.ndarray | None = None
) -> tuple[dict[str, float], dict[str, dict]]:
    """Means and bootstrap CIs of per-query metrics, over the queries in ``mask`` (default all).

    Returns ``({metric: mean}, {metric: {"mean", "ci_low", "ci_high", "n"}})``.
    """
    chosen = {
        k: np.asarray(v)[mask] if mask is not None else np.asarray(v) for k, v in per_query.items()
    }
    ci = summarize(chosen, n_boot=n_boot, seed=seed)
    return {k: v["mean"] for k, v in ci.items()}, ci


def score_retrieval(
    queries: Mapping[str, np.ndarray],
    query_labels: Sequence[int],
    gallery: np.ndarray,
    gallery_labels: Sequence[int],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    galleries: Mapping[str, np.ndarray] | None = None,
    subsets: Mapping[str, np.ndarray] | None = None,
) -> dict:
    """Audio-to-image and image-to-audio scores of every method.

    ``queries`` {method: (Q, D)}; ``gallery`` (G, D); labels are species ids. ``galleries``
    {name: (G,) bool} names parts of the gallery to score separately (e.g. NABirds, iNat);
    ``subsets`` {name: (Q,) bool} splits the queries (e.g. seen / held-out species) over the
    whole gallery. Returns the ``retrieval`` section of RESULTS.json plus ``_similarity``
    {method: (Q, G)} for figures (callers drop it before writing).
    """
    q_labels = np.asarray(query_labels)
    g_labels = np.asarray(gallery_labels)
    gallery = np.asarray(gallery, dtype=np.float32)
    res: dict = {
        key: {}
        for key in (
            "audio_to_image",
            "audio_to_image_ci",
            "audio_to_image_per_species",
            "audio_to_image_by_gallery",
            "audio_to_image_by_gallery_ci",
            "image_to_audio",
            "image_to_audio_ci",
        )
    }
    if subsets:
        res["audio_to_image_by_subset"] = {name: {} for name in subsets}
        res["audio_to_image_by_subset_ci"] = {name: {} for name in subsets}
    sims: dict[str, np.ndarray] = {}
    ap: dict[str, np.ndarray] = {}  # each method's per-query AP, for the paired differences
    for method, q in queries.items():
        sim = np.asarray(q, dtype=np.float32) @ gallery.T
        sims[method] = sim
        per_query = per_query_metrics(sim, q_labels, g_labels)
        ap[method] = per_query["map"]
        res["audio_to_image"][method], res["audio_to_image_ci"][method] = summarise(
            per_query, n_boot, seed
        )
        res["audio_to_image_per_species"][method] = {
            str(k): v for k, v in per_class_ap(per_query["map"], q_labels).items()
        }
        for name, mask in (subsets or {}).items():
            mean, ci = summarise(per_query, n_boot, seed, np.asarray(mask, bool))
            res["audio_to_image_by_subset"][name][method] = mean
            res["audio_to_image_by_subset_ci"][name][method] = ci
        for name, g_mask in (galleries or {}).items():
            g_mask = np.asarray(g_mask, bool)
            if g_mask.all():  # the whole gallery: already scored above (sorting is the cost)
                mean, ci = res["audio_to_image"][method], res["audio_to_image_ci"][method]
            else:
                part = per_query_metrics(sim[:, g_mask], q_labels, g_labels[g_mask])
                mean, ci = summarise(part, n_boot, seed)
            res["audio_to_image_by_gallery"].setdefault(name, {})[method] = mean
            res["audio_to_image_by_gallery_ci"].setdefault(name, {})[method] = ci
        reverse = per_query_metrics(sim.T, g_labels, q_labels)
        res["image_to_audio"][method], res["image_to_audio_ci"][method] = summarise(
            reverse, n_boot, seed
        )
    if REFERENCE in ap:
        res.update(_versus_reference(ap, subsets or {}, n_boot, seed))
    res["_similarity"] = sims
    return res


# The zero-shot cascade every method is compared with, query by query.
REFERENCE = "cascade_top1"


def _versus_reference(ap: dict, subsets: Mapping, n_boot: int, seed: int) -> dict:
    """``audio_to_image_vs_cascade`` {method: {diff, ci_low, ci_high, n}}: mAP minus the
    cascade's over the same queries, with a paired bootstrap interval (the same resamples for
    both methods), as fractions like every other figure; and the same per subset of queries
    (``..._by_subset``)."""
    ref = ap[REFERENCE]
    out: dict = {"audio_to_image_vs_cascade": {}}
    for method, values in ap.items():
        if method != REFERENCE:
            out["audio_to_image_vs_cascade"][method] = paired_difference(values, ref, n_boot, seed)
    if subsets:
        out["audio_to_image_vs_cascade_by_subset"] = {
            name: {
                m: paired_difference(v[np.asarray(mask, bool)], ref[np.asarray(mask, bool)], n_boot, seed)  # fmt: skip
                for m, v in ap.items() if m != REFERENCE
            }
            for name, mask in subsets.items()
        }  # fmt: skip
    return out
