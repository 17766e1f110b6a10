"""What a distillation run sets up before its loop: ranks, data, trainable parts, schedule.

Pure helpers of `songsight.distill.train.distill`; the loop itself lives there.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

from songsight.config import DistillConfig
from songsight.data.manifest import load_manifest
from songsight.distill.data import AudioCrops
from songsight.distill.plan import split_train_val
from songsight.errors import DataNotFoundError


def dist_env() -> tuple[int, int, int]:
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def select_trainable(student, clap, cfg: DistillConfig) -> None:
    """Freeze everything, then unfreeze what ``cfg.train`` names (the head always learns)."""
    student.requires_grad_(False)
    student.head.requires_grad_(True)
    if cfg.train in ("projection", "top-k-blocks", "all"):
        student.audio_projection.requires_grad_(True)
    if cfg.train == "all":
        student.audio_model.requires_grad_(True)
    elif cfg.train == "top-k-blocks":
        enc = student.audio_model.audio_encoder
        for layer in list(enc.layers)[-cfg.top_k_blocks :]:
            layer.requires_grad_(True)
        enc.norm.requires_grad_(True)


def freeze_batchnorm(module) -> None:
    """HTSAT's input BatchNorm stays in eval mode: small per-device batches would otherwise
    replace its statistics, and DDP ranks would normalise differently from one process."""
    from torch import nn

    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def warmup_cosine(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def load_split(manifest, split: str | None, species=None):
    df = load_manifest(manifest, species=species)
    if split and "split" in df.columns and (df["split"] == split).any():
        df = df[df["split"] == split].reset_index(drop=True)
    if df.empty:
        raise DataNotFoundError(
            f"{manifest}: no rows to use" + (f" in split {split!r}" if split else "")
        )
    return df


def say(msg: str) -> None:
    print(f"songsight distill: {msg}", file=sys.stderr, flush=True)


def training_data(train_manifest, val_manifest, species, species_csv, cfg: DistillConfig):
    """(train rows, validation rows or None, split info): a given --val manifest, else the
    manifest's own ``val`` rows, else a split carved from the training rows. Labels may be
    integers or species names and codes of ``species``."""
    by_label = {s.label: i for i, s in enumerate(species)}
    full = load_manifest(train_manifest, species=species)
    train_df = load_split(train_manifest, "train", species)
    unknown = sorted(set(train_df["label"]) - set(by_label))
    if unknown:
        raise DataNotFoundError(f"{train_manifest}: labels {unknown[:5]} are not in {species_csv}")
    if val_manifest is not None:
        return train_df, load_split(val_manifest, None, species), {"source": str(val_manifest)}
    if "split" in full.columns and (full["split"] == "val").any():
        val_df = full[full["split"] == "val"].reset_index(drop=True)
        return train_df, val_df, {"source": "the manifest's val rows"}
    train_df, val_df, info = split_train_val(
        train_df, cfg.val_fraction, cfg.seed, cfg.group_column, cfg.val_max_clips
    )
    return train_df, (val_df if len(val_df) else None), {"source": "carved", **info}


def embed_base(student, data: AudioCrops, rows: np.ndarray, features, device: str, batch: int):
    """(len(rows), d) unnormalised base audio embeddings of clips (their first window, no
    augmentation), as the head receives them."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(rows), batch):
            waves = [data.waveform(int(j))[: data.window] for j in rows[i : i + batch]]
            out.append(student(features(waves, device))[1].float().cpu().numpy())
    return np.concatenate(out)
