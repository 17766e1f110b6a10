"""The head's starting point: a linear probe from the untouched audio embeddings to the targets.

Fine-tuning a pretrained encoder under a randomly initialised head distorts its features before
the head has learnt anything useful (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained
Features and Underperform Out-of-Distribution"; their remedy, LP-FT, fits the head first). The
distillation head is linear, so its probe has a closed form: ridge regression of the original
512-d audio embeddings onto their species' teacher text embeddings.
"""

from __future__ import annotations

import numpy as np

# Clips embedded for the fit at most: a 512 -> 768 linear map is determined long before this,
# and a million-clip manifest must not cost a full extra pass.
PROBE_MAX_CLIPS = 20_000
RIDGE_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def probe_rows(labels: np.ndarray, seed: int, max_clips: int = PROBE_MAX_CLIPS) -> np.ndarray:
    """Indices of at most ``max_clips`` clips for the fit, species taken in turn (seeded)."""
    labels = np.asarray(labels)
    if len(labels) <= max_clips:
        return np.arange(len(labels))
    rng = np.random.default_rng([seed, 0x9B0BE])
    order = rng.permutation(len(labels))
    turn = np.zeros(len(labels), np.int64)
    counts: dict[int, int] = {}
    for i in order:
        turn[i] = counts.get(int(labels[i]), 0)
        counts[int(labels[i])] = turn[i] + 1
    return np.sort(order[np.argsort(turn[order], kind="stable")[:max_clips]])


def fit_probe(base_emb: np.ndarray, target_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ridge fit ``base_emb @ W.T + b ~= target_emb``; returns (W (D, d), b (D,)) float32.

    ``base_emb`` (N, d): the model's audio embeddings as the head receives them (before
    normalisation); ``target_emb`` (N, D): each clip's species target. The ridge penalty is
    chosen by generalised cross-validation (scikit-learn's ``RidgeCV``) among `RIDGE_ALPHAS`,
    scaled by the inputs' mean squared norm so that it means the same whatever their scale.
    """
    from sklearn.linear_model import RidgeCV

    x = np.asarray(base_emb, dtype=np.float64)
    y = np.asarray(target_emb, dtype=np.float64)
    scale = float(np.mean(np.sum((x - x.mean(0)) ** 2, axis=1))) or 1.0
    ridge = RidgeCV(alphas=[a * scale for a in RIDGE_ALPHAS]).fit(x, y)
    return ridge.coef_.astype(np.float32), ridge.intercept_.astype(np.float32)
