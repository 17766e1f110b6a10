"""Pretrain the teacher stand-in (BioCLIP-2's role): a tiny open_clip CLIP on photo-caption pairs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from songsight.prompt_templates import TEMPLATE_SETS
from songsight.sim.recipes import (
    TEACHER_PROMPTS,
    VAL_FRACTION,
    holdout_mask,
    optimizer_step,
    read_pairs,
    species_of,
    warmup_cosine,
    zero_shot_accuracy,
)
from songsight.testing import TinyClipSpec


def augment_photos(x, rng: np.random.Generator, shift_px: int):
    """Random horizontal flips and shifts of up to ``shift_px`` (reflect-padded): (B, 3, H, W)."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = x.shape
    padded = F.pad(x, (shift_px,) * 4, mode="reflect")
    dy, dx = rng.integers(0, 2 * shift_px + 1, (2, b))
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    flip = torch.from_numpy(rng.random(b) < 0.5)
    out[flip] = out[flip].flip(-1)
    return out


def pretrain_teacher(
    pretrain_dir: str | Path,
    out_dir: str | Path,
    spec: TinyClipSpec,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
    shift_px: int = 4,
) -> dict:
    """Train a tiny open_clip CLIP on photo-caption pairs; write it to ``out_dir`` (open_clip layout).

    Symmetric InfoNCE (`batch_level_infonce`, same-species pairs positive) with a learnable
    `LogitScale`, AdamW, warmup + cosine, flip/shift augmentation. Returns zero-shot accuracy
    of held-out photos against the species' ``taxon_com`` embeddings (and on training photos).
    """
    import torch

    from songsight.distill.loss import LogitScale, batch_level_infonce
    from songsight.encoders.base import l2_normalize
    from songsight.encoders.bioclip import load_open_clip
    from songsight.images import load_image
    from songsight.testing import build_tiny_open_clip

    t0, c0 = time.perf_counter(), time.process_time()
    pretrain_dir, out = Path(pretrain_dir), Path(out_dir)
    paths, captions, labels = read_pairs(pretrain_dir, "photos")
    species = species_of(pretrain_dir, labels)
    held = holdout_mask(labels, VAL_FRACTION, seed)
    build_tiny_open_clip(out, spec, seed=seed)
    # Train on exactly what BioCLIPEncoder feeds the model: its transform, its tokenizer.
    net, transform, tokenizer, _, _ = load_open_clip(out)
    images = torch.stack([transform(load_image(p)) for p in paths])
    tokens, lab = tokenizer(captions), torch.from_numpy(labels)
    scale = LogitScale()
    opt = torch.optim.AdamW([*net.parameters(), *scale.parameters()], lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, steps)
    train = np.flatnonzero(~held)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net.train()
    for _ in range(steps):
        b = torch.from_numpy(rng.choice(train, min(batch_size, len(train)), replace=False))
        img = l2_normalize(net.encode_image(augment_photos(images[b], rng, shift_px)))
        txt = l2_normalize(net.encode_text(tokens[b]))
        optimizer_step(opt, sched, batch_level_infonce(img, txt, lab[b], scale()))
    net.eval()
    with torch.no_grad():
        net.logit_scale.copy_(scale().log())
        # Token rows no training caption used hold only their random init: zero them, so the
        # 49,408-row table compresses to the rows that mean something.
        unused = torch.ones(net.token_embedding.weight.shape[0], dtype=torch.bool)
        unused[tokens[torch.from_numpy(train)].unique()] = False
        net.token_embedding.weight[unused] = 0.0
        img_emb = torch.cat(
            [
                l2_normalize(net.encode_image(images[i : i + 512]))
                for i in range(0, len(images), 512)
            ]
        ).numpy()
        fmt, tmpl = TEACHER_PROMPTS
        prompts = [t.format(s.prompt(fmt)) for s in species for t in TEMPLATE_SETS[tmpl]]
        cls = l2_normalize(net.encode_text(tokenizer(prompts))).reshape(
            len(species), -1, net.text_projection.shape[1]
        )
        cls = l2_normalize(cls.mean(1)).numpy()
    build_tiny_open_clip(out, spec, model=net)
    return {
        "zero_shot_acc": zero_shot_accuracy(img_emb[held], cls, labels[held]),
        "train_zero_shot_acc": zero_shot_accuracy(img_emb[~held], cls, labels[~held]),
        "chance": 1.0 / len(species), "n_held_out": int(held.sum()), "n_train": int((~held).sum()),
        "prompts": list(TEACHER_PROMPTS), "logit_scale": float(scale().detach()),
        "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
    }  # fmt: skip
