"""The head's starting point: a linear probe from the untouched audio embeddings to the targets.

Fine-tuning a pretrained encoder under a randomly initialised head distorts its features before
the head has learnt anything useful (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained
Features and Underperform Out-of-Distribution"; their remedy, LP-FT, fits the head first). The
distillation head is linear: it starts from the closed-form ridge regression of the original
512-d audio embeddings onto their species' teacher text embeddings, then (with the temperature)
minimises the distillation loss itself on those frozen embeddings, which costs seconds: the
embeddings are computed once and the backbone does not run.

Why the second step: regression onto the targets is a poor classifier (in the simulated world,
zero-shot top-1 on validation 51% after the ridge fit vs 73% after the loss fit, 2,000 steps,
from cached embeddings; the untouched model's own zero-shot is 69%), and fine-tuning the whole
encoder from a weak head spent its steps, and the features, catching up.
"""

from __future__ import annotations

import numpy as np

# Clips embedded for the fit at most: a 512 -> 768 linear map is determined long before this,
# and a million-clip manifest must not cost a full extra pass.
PROBE_MAX_CLIPS = 20_000
RIDGE_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
PROBE_STEPS = 2000
PROBE_BATCH = 256
PROBE_LR = 3e-2


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


def fit_probe_head(
    head,
    logit_scale,
    loss_fn,
    base_emb: np.ndarray,
    labels: np.ndarray,
    class_text_emb,
    seed: int,
    steps: int = PROBE_STEPS,
    fit_head: bool = True,
    columns=None,
) -> dict:
    """Fit ``head`` (and the learnable ``logit_scale``) on frozen embeddings, in place.

    ``base_emb`` (N, d) frozen base embeddings; ``labels`` (N,) rows of ``class_text_emb``
    (C, D) (a tensor on the head's device); ``loss_fn`` a class-level `DistillationLoss` with
    the run's target term (no preservation term: the backbone is frozen here). A linear head
    starts from the ridge fit; then ``steps`` AdamW steps of ``PROBE_BATCH`` clips with a
    cosine schedule train the head (unless ``fit_head`` is False: then only the temperature,
    for a head that starts where it should, the cascade). Returns a summary for the
    checkpoint.
    """
    import math

    import torch

    from songsight.encoders.base import l2_normalize

    device = class_text_emb.device
    if fit_head and isinstance(head, torch.nn.Linear):
        w, b = fit_probe(base_emb, class_text_emb.cpu().numpy()[labels])
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(w))
            head.bias.copy_(torch.from_numpy(b))
    x = torch.from_numpy(np.asarray(base_emb, np.float32)).to(device)
    y = torch.from_numpy(np.asarray(labels, np.int64)).to(device)
    params = [*(head.parameters() if fit_head else ()), *logit_scale.parameters()]
    opt = torch.optim.AdamW(params, lr=PROBE_LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(1.0, s / max(1, steps))))
    )
    gen = torch.Generator().manual_seed(int(seed))
    loss = torch.zeros(())
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(PROBE_BATCH, len(x)),), generator=gen).to(device)
        emb = l2_normalize(head(x[idx]))
        logits = head.species_logits(x[idx]) if hasattr(head, "species_logits") else None
        if logits is not None and columns is not None:
            logits = logits[:, columns]
        loss, _ = loss_fn(emb, y[idx], class_text_emb, logit_scale(), species_logits=logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return {
        "clips": len(x),
        "steps": steps,
        "final_loss": float(loss.detach()),
        "logit_scale": float(logit_scale().detach()),
    }
