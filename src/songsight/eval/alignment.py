"""Audio-text alignment (zero-shot species classification) and audio discriminability (probes).

Each model is scored in its own text space: BioLingual audio against BioLingual's text
embeddings of the species prompts, the distilled audio (and mapped BioLingual audio) against
BioCLIP-2's. Arrays in, dicts of plain floats out; no models, files or CLI here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from songsight.eval.audio_to_image import label_rows
from songsight.eval.metrics import classwise_auroc, classwise_map, topk_accuracy
from songsight.eval.probe import knn_accuracy, linear_probe
from songsight.eval.statistics import paired_difference

ZERO_SHOT_KS = (1, 5)


def zero_shot(
    audio_emb: np.ndarray,
    labels: Sequence[int],
    species_emb: np.ndarray,
    species_labels: Sequence[int],
    mask: np.ndarray | None = None,
) -> dict[str, float | int]:
    """Top-k zero-shot accuracy of unit (N, D) audio against (S, D) species text embeddings.

    ``labels`` (N,) true species, ``species_labels`` (S,) the rows of ``species_emb``;
    ``mask`` (N,) bool restricts the recordings scored (the classes stay all S).
    Returns ``{"top1", "top5", "n"}`` (k above S counts as S).
    """
    scores = np.asarray(audio_emb, dtype=np.float32) @ np.asarray(species_emb, np.float32).T
    return zero_shot_scores(scores, labels, species_labels, mask)


def zero_shot_scores(
    scores: np.ndarray,
    labels: Sequence[int],
    species_labels: Sequence[int],
    mask: np.ndarray | None = None,
) -> dict[str, float | int]:
    """`zero_shot` from (N, S) species scores (cosines, or a readout's posterior)."""
    scores = np.asarray(scores, dtype=np.float32)
    rows = label_rows(labels, species_labels)
    if mask is not None:
        scores, rows = scores[np.asarray(mask, bool)], rows[np.asarray(mask, bool)]
    out: dict[str, float | int] = {
        f"top{k}": topk_accuracy(scores, rows, k) if len(rows) else float("nan")
        for k in ZERO_SHOT_KS
    }
    out["n"] = int(len(rows))
    return out


def window_targets(
    starts_s: np.ndarray,
    ends_s: np.ndarray,
    intervals: Sequence[tuple[float, float, int]],
    species_labels: Sequence[int],
) -> np.ndarray:
    """(W, S) bool: species whose annotated interval overlaps each window [start, end).

    ``intervals``: (start_s, end_s, label) annotations of one recording; an interval that only
    touches a window's edge does not count. Labels outside ``species_labels`` are ignored.
    """
    index = {int(s): i for i, s in enumerate(species_labels)}
    starts = np.asarray(starts_s, dtype=np.float64)
    ends = np.asarray(ends_s, dtype=np.float64)
    out = np.zeros((len(starts), len(index)), dtype=bool)
    for a, b, label in intervals:
        col = index.get(int(label))
        if col is not None:
            out[:, col] |= (starts < b) & (ends > a)
    return out


def soundscape_scores(window_emb: np.ndarray, targets: np.ndarray, species_emb: np.ndarray) -> dict:
    """Class-wise mAP and AUROC of windows scored against species text embeddings.

    ``window_emb`` (W, D) unit; ``targets`` (W, S) bool; ``species_emb`` (S, D) unit. Classes
    with no positive window (and for AUROC no negative one) are skipped, and counted.
    """
    return soundscape_from_scores(window_species_scores(window_emb, species_emb), targets)


def window_species_scores(window_emb: np.ndarray, species_emb: np.ndarray) -> np.ndarray:
    """(W, S) cosines of unit windows (W, D) against unit species text embeddings (S, D)."""
    return np.asarray(window_emb, dtype=np.float32) @ np.asarray(species_emb, dtype=np.float32).T


def soundscape_from_scores(scores: np.ndarray, targets: np.ndarray) -> dict:
    """`soundscape_scores` from (W, S) species scores (cosines, or a readout's posterior)."""
    cmap = classwise_map(scores, targets)
    auroc = classwise_auroc(scores, targets)
    return {
        "map": cmap.mean,
        "auroc": auroc.mean,
        "n_windows": int(len(targets)),
        "n_classes_scored": int(targets.shape[1] - len(cmap.skipped)),
        "n_classes_auroc": int(targets.shape[1] - len(auroc.skipped)),
    }


def soundscape_versus(
    scores: Mapping[str, np.ndarray],
    targets: Mapping[str, np.ndarray],
    reference: str,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict]:
    """{method: {diff, ci_low, ci_high, n}}: each method's class-wise mAP minus
    ``reference``'s, species by species, with a paired bootstrap interval over the species
    (both methods resampled together), as fractions. ``scores`` {method: (W, S)} window
    scores, ``targets`` {method: (W, S) bool} of those windows; a species without a positive
    window for either method is left out of both (``n`` counts the species compared)."""
    ref = classwise_map(scores[reference], targets[reference]).per_class
    return {
        method: paired_difference(
            classwise_map(values, targets[method]).per_class, ref, n_boot, seed
        )
        for method, values in scores.items()
        if method != reference
    }


def discriminability(
    train_x: np.ndarray,
    train_y: Sequence[int],
    test_x: np.ndarray,
    test_y: Sequence[int],
    *,
    seed: int = 0,
    knn_k: int = 5,
) -> dict[str, float]:
    """Linear probe (accuracy, macro-F1) and k-NN accuracy, train split -> test split."""
    probe = linear_probe(train_x, train_y, test_x, test_y, seed=seed)
    return {
        "probe_accuracy": probe["accuracy"],
        "probe_macro_f1": probe["macro_f1"],
        "knn_accuracy": knn_accuracy(train_x, train_y, test_x, test_y, k=knn_k),
    }


def zero_shot_all(
    audio: Mapping[str, np.ndarray],
    text: Mapping[str, np.ndarray],
    labels: Sequence[int],
    species_labels: Sequence[int],
    subsets: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict, dict]:
    """`zero_shot` for each model: audio {model: (N, D)} against text {model: (S, D)}.

    Returns ``({model: scores}, {subset: {model: scores}})``.
    """
    overall = {m: zero_shot(a, labels, text[m], species_labels) for m, a in audio.items()}
    by_subset = {
        name: {m: zero_shot(a, labels, text[m], species_labels, mask) for m, a in audio.items()}
        for name, mask in (subsets or {}).items()
    }
    return overall, by_subset
