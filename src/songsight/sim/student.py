"""Pretrain the student stand-in (BioLingual's role): a tiny transformers ClapModel on calls.

A tiny HTSAT trained end to end against its text tower stays at chance, so it learns in two
stages, as CLAP's HTSAT was first an AudioSet classifier: (1) the audio tower with a linear
species head (cross-entropy), then (2) with the audio tower frozen, both projections and the
text tower contrastively.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from songsight.sim.recipes import (
    STUDENT_PROMPTS,
    VAL_FRACTION,
    holdout_mask,
    optimizer_step,
    read_pairs,
    species_of,
    warmup_cosine,
    zero_shot_accuracy,
)
from songsight.sim.tiny_models import TinyClapSpec
from songsight.taxonomy import build_prompts


def call_windows(paths: list[Path], features, window_s: float, hop_s: float):
    """Log-mels of every window `BioLingualEncoder` cuts from each clip.

    Returns ((W, 1, frames, mels) float32 tensor, (W,) int64 clip index of each window).
    """
    import torch

    from songsight.inputs.audio import load_audio, window_bounds

    waves, owner = [], []
    for i, p in enumerate(paths):
        wave = load_audio(p, features.sample_rate_hz).waveform
        for a, b in window_bounds(len(wave), features.sample_rate_hz, window_s, hop_s):
            waves.append(wave[a:b])
            owner.append(i)
    feats = torch.cat([features(waves[i : i + 128]) for i in range(0, len(waves), 128)])
    return feats, np.array(owner, np.int64)


def pretrain_student(
    pretrain_dir: str | Path,
    out_dir: str | Path,
    spec: TinyClapSpec,
    steps: tuple[int, int],
    lr: tuple[float, float],
    batch_size: int,
    seed: int = 0,
) -> dict:
    """Train a tiny ClapModel on call-caption pairs; write it to ``out_dir`` (BioLingual's layout).

    Stage 1 (``steps[0]`` at ``lr[0]``): the HTSAT audio tower and a linear species head, by
    cross-entropy on analysis windows; its input BatchNorm is set from the training windows
    and frozen. Stage 2 (``steps[1]`` at ``lr[1]``): the audio tower frozen (its pooled
    outputs computed once); audio and text projections and the text tower by symmetric InfoNCE
    (`batch_level_infonce`) with a learnable `LogitScale`. Returns held-out zero-shot accuracy
    of clips against the species' common names through the ``sound`` templates.
    """
    import torch
    from torch import nn
    from transformers.utils import logging as hf_logging

    from songsight.distill.loss import LogitScale, batch_level_infonce
    from songsight.encoders.base import l2_normalize
    from songsight.encoders.biolingual import load_clap
    from songsight.encoders.prompts import mean_of_prompts
    from songsight.encoders.windows import resolve_windows
    from songsight.sim.tiny_models import build_tiny_clap, build_tokenizer

    hf_logging.disable_progress_bar()  # save_pretrained's per-shard bar, as load_clap does
    t0, c0 = time.perf_counter(), time.process_time()
    pretrain_dir, out = Path(pretrain_dir), Path(out_dir)
    paths, captions, labels = read_pairs(pretrain_dir, "calls")
    species = species_of(pretrain_dir, labels)
    held = holdout_mask(labels, VAL_FRACTION, seed)
    tok = build_tokenizer(captions, spec.vocab_size, spec.max_text_tokens)
    build_tiny_clap(out, spec, seed=seed, tokenizer=tok)
    # Train on exactly what BioLingualEncoder feeds the model: its windows, its log-mels.
    clap, features, tokenizer, _ = load_clap(out)
    window_s, hop_s = resolve_windows(None, None, features.max_samples / features.sample_rate_hz)
    feats, owner = call_windows(paths, features, window_s, hop_s)
    wlab, train = torch.from_numpy(labels[owner]), np.flatnonzero(~held[owner])
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    audio = clap.audio_model
    bn = audio.audio_encoder.batch_norm
    with torch.no_grad():
        x = feats[torch.from_numpy(train), 0]  # (W, frames, mels)
        bn.running_mean.copy_(x.mean(dim=(0, 1)))
        bn.running_var.copy_(x.var(dim=(0, 1)))
    head = nn.Linear(audio.config.hidden_size, len(species))
    bn.requires_grad_(False)
    params = [p for p in [*audio.parameters(), *head.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr[0], weight_decay=0.01)
    sched = warmup_cosine(opt, steps[0])
    audio.train()
    bn.eval()
    for _ in range(steps[0]):
        b = torch.from_numpy(rng.choice(train, min(batch_size, len(train)), replace=False))
        logits = head(audio(input_features=feats[b]).pooler_output)
        optimizer_step(opt, sched, nn.functional.cross_entropy(logits, wlab[b]))
    audio.eval().requires_grad_(False)
    with torch.no_grad():
        pooled = torch.cat(
            [
                audio(input_features=feats[i : i + 256]).pooler_output
                for i in range(0, len(feats), 256)
            ]
        )
    text = tokenizer(captions, padding=True, truncation=True, return_tensors="pt")
    parts = (clap.audio_projection, clap.text_model, clap.text_projection)
    scale = LogitScale()
    opt = torch.optim.AdamW(
        [*(p for m in parts for p in m.parameters()), *scale.parameters()],
        lr=lr[1],
        weight_decay=0.01,
    )
    sched = warmup_cosine(opt, steps[1])
    for m in parts:
        m.train()
    clip_of = torch.from_numpy(owner)
    for _ in range(steps[1]):
        b = torch.from_numpy(rng.choice(train, min(batch_size, len(train)), replace=False))
        a = l2_normalize(clap.audio_projection(pooled[b]))
        c = clip_of[b]
        t = clap.text_model(
            input_ids=text["input_ids"][c], attention_mask=text["attention_mask"][c]
        ).pooler_output
        optimizer_step(
            opt,
            sched,
            batch_level_infonce(a, l2_normalize(clap.text_projection(t)), wlab[b], scale()),
        )
    clap.eval()
    with torch.no_grad():
        clap.logit_scale_a.copy_(scale().log())
        clap.logit_scale_t.copy_(scale().log())
        win = l2_normalize(clap.audio_projection(pooled)).numpy()
        fmt, tmpl = STUDENT_PROMPTS
        enc = tokenizer(
            [p for row in build_prompts(species, fmt, tmpl) for p in row],
            padding=True,
            truncation=True,
            return_tensors="pt",
        )
        cls = l2_normalize(clap.text_projection(clap.text_model(**enc).pooler_output))
        cls = mean_of_prompts(cls, len(species)).numpy()
    clip = np.zeros((len(paths), win.shape[1]), np.float32)
    np.add.at(clip, owner, win)  # the encoder's clip embedding: mean of unit window embeddings
    clip = l2_normalize(clip)
    build_tiny_clap(out, spec, model=clap, tokenizer=tokenizer)
    return {
        "zero_shot_acc": zero_shot_accuracy(clip[held], cls, labels[held]),
        "train_zero_shot_acc": zero_shot_accuracy(clip[~held], cls, labels[~held]),
        "chance": 1.0 / len(species), "n_held_out": int(held.sum()), "n_train": int((~held).sum()),
        "prompts": list(STUDENT_PROMPTS), "logit_scale": float(scale().detach()), "window_s": window_s,
        "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
    }  # fmt: skip
