"""What a distillation run does with the data it is given: validation split and run length.

Both follow the data, so that the same defaults serve a handful of clips and a million:

- `split_train_val` carves a validation split from the training manifest, stratified by
  species and grouped (rows of one recording never sit on both sides);
- `plan_run` sizes the batch (never larger than the data), the number of epochs (enough for
  ``min_steps`` optimiser steps, at most ``max_epochs``) and the warmup (a fraction of the run).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from songsight.config import DistillConfig

# Columns that name the recording a row comes from, looked for in this order when the config
# names none; rows of one file (segments with start_s/end_s) are always kept together.
GROUP_COLUMNS = ("recording_id", "recording", "group")
# A species needs this many groups before one of them goes to validation.
MIN_GROUPS_FOR_VAL = 3
# Gate species: when the species table names species without training audio, this share of
# the trained species (at least 2, from 10 trained species on) is held out of training and
# validated on whole, so that how the fused readout answers species it never learnt (its
# gate) is chosen on data like the test's held-out species rather than guessed.
GATE_FRACTION = 0.1
MIN_TRAINED_FOR_GATE = 10
# Readouts (and the fusion's gate) are chosen on validation only with at least this many
# clips of each validation species: on fewer, the choice is noise (4 clips once chose a
# readout worse than the cascade) and the run keeps the stated default
# (`songsight.distill.checkpoint.default_readout`); gate species would then cost training
# data for nothing, so none are held out.
MIN_READOUT_CLIPS_PER_SPECIES = 5


def gate_species_count(n_trained: int, table_has_untrained: bool, val_per_species: int) -> int:
    """How many trained species a carved validation split holds out of training whole:
    none unless the table has species without training audio, at least
    `MIN_TRAINED_FOR_GATE` species train, and the carved split will be large enough to choose
    a readout on (``val_per_species``: the fewest validation clips a species will get)."""
    if (
        not table_has_untrained
        or n_trained < MIN_TRAINED_FOR_GATE
        or val_per_species < MIN_READOUT_CLIPS_PER_SPECIES
    ):
        return 0
    return max(2, int(round(GATE_FRACTION * n_trained)))


def carved_val_per_species(df: pd.DataFrame, val_fraction: float, group_column: str | None = None) -> int:  # fmt: skip
    """The fewest validation groups (recordings) `split_train_val` will carve from a species
    (0 when some species is too small to give any)."""
    keys, _ = group_keys(df, group_column)
    labels = df["label"].to_numpy()
    fewest = None
    for label in set(labels.tolist()):
        groups = len(set(keys[labels == label].tolist()))
        n = max(1, int(round(val_fraction * groups))) if groups >= MIN_GROUPS_FOR_VAL else 0
        fewest = n if fewest is None else min(fewest, n)
    return 0 if fewest is None or val_fraction <= 0 else fewest


def group_keys(df: pd.DataFrame, group_column: str | None = None) -> tuple[np.ndarray, str]:
    """(N,) group key per row and the column it came from (``path`` when none is named)."""
    if group_column is not None:
        if group_column not in df.columns:
            raise ValueError(f"group column {group_column!r} is not in the manifest")
        return df[group_column].astype(str).to_numpy(), group_column
    for col in GROUP_COLUMNS:
        if col in df.columns:
            return df[col].astype(str).to_numpy(), col
    return df["path"].astype(str).to_numpy(), "path"


def split_train_val(
    df: pd.DataFrame,
    val_fraction: float,
    seed: int,
    group_column: str | None = None,
    max_val_clips: int | None = None,
    gate_species: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Split a training manifest into (train, val, info), stratified by ``label``.

    ``gate_species`` species (seeded, among those with at least `MIN_GROUPS_FOR_VAL` groups)
    go to validation whole (see `GATE_FRACTION`). Each other species with at least
    `MIN_GROUPS_FOR_VAL` groups sends ``round(val_fraction * groups)`` of them (at least one)
    to validation; species with fewer stay whole in training. Past ``max_val_clips`` clips,
    groups go back to training (species in turn) until it fits. ``info`` records the group
    column, the counts, the species with no validation clip and the gate species.
    """
    keys, used = group_keys(df, group_column)
    rng = np.random.default_rng([seed, 0x5A1])
    val_rows = np.zeros(len(df), bool)
    short = []
    labels = df["label"].to_numpy()
    eligible = [
        lab for lab in sorted(set(labels.tolist()))
        if len(set(keys[labels == lab].tolist())) >= MIN_GROUPS_FOR_VAL
    ]  # fmt: skip
    gate = sorted(
        int(x) for x in np.random.default_rng([seed, 0x6A7E]).permutation(eligible)[:gate_species]
    ) if val_fraction > 0 else []  # fmt: skip
    val_rows[np.isin(labels, gate)] = True
    for label in sorted(set(labels.tolist()) - set(gate)):
        rows = np.flatnonzero(labels == label)
        groups = sorted(set(keys[rows].tolist()))
        n_val = int(round(val_fraction * len(groups)))
        if val_fraction > 0 and len(groups) >= MIN_GROUPS_FOR_VAL:
            n_val = max(1, min(n_val, len(groups) - 1))
        else:
            n_val = 0
        if n_val == 0:
            short.append(int(label))
            continue
        chosen = set(rng.choice(groups, size=n_val, replace=False).tolist())
        val_rows[rows] = np.isin(keys[rows], list(chosen))
    if max_val_clips is not None and val_rows.sum() > max_val_clips:
        # Keep whole groups, species taken in turn, while they fit; the rest trains.
        groups = pd.DataFrame({"key": keys[val_rows], "label": labels[val_rows]})
        sizes = groups["key"].value_counts()
        groups = groups.drop_duplicates("key").sample(frac=1.0, random_state=seed)
        groups = groups.assign(turn=groups.groupby("label").cumcount()).sort_values(
            "turn", kind="stable"
        )
        fits = sizes.loc[groups["key"]].cumsum().to_numpy() <= max_val_clips
        kept = groups["key"].to_numpy()[fits] if fits.any() else groups["key"].to_numpy()[:1]
        val_rows &= np.isin(keys, kept) | np.isin(labels, gate)
    train, val = df.loc[~val_rows].reset_index(drop=True), df.loc[val_rows].reset_index(drop=True)
    info = {
        "group_column": used,
        "val_fraction": val_fraction,
        "train_clips": len(train),
        "val_clips": len(val),
        "species_without_val": short,
        "gate_species": gate,
    }
    return train, val, info


@dataclass
class RunPlan:
    """Batch, epochs, steps and warmup of a run, and why (``notes``)."""

    batch_size: int
    epochs: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    notes: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def plan_run(n_clips: int, cfg: DistillConfig, world_size: int = 1) -> RunPlan:
    """Size a run for ``n_clips`` training clips (see the module docstring).

    A batch larger than the data shrinks to the data (rounded down to a multiple of the ranks);
    ``cfg.epochs`` None runs ``ceil(min_steps / steps_per_epoch)`` epochs, at most
    ``max_epochs``; early stopping on validation may end it sooner, never before ``min_steps``.
    """
    if n_clips < world_size:
        raise ValueError(f"{n_clips} training clips cannot be shared by {world_size} ranks")
    notes = []
    per_step = cfg.batch_size * cfg.grad_accum
    batch = cfg.batch_size
    if n_clips < per_step:
        batch = max(world_size, (n_clips // cfg.grad_accum) // world_size * world_size)
        notes.append(
            f"{n_clips} training clips are fewer than a batch of {per_step}: training with "
            f"batches of {batch} (set --batch-size to choose)"
        )
    steps_per_epoch = max(1, n_clips // (batch * cfg.grad_accum))
    if cfg.epochs is None:
        epochs = min(cfg.max_epochs, max(1, math.ceil(cfg.min_steps / steps_per_epoch)))
        total = epochs * steps_per_epoch
        why = (
            f"at least {cfg.min_steps:,} steps"
            if total >= cfg.min_steps
            else f"fewer than the {cfg.min_steps:,} steps asked: at most {cfg.max_epochs} epochs"
        )
        notes.append(
            f"{_count(epochs, 'epoch')} of {_count(steps_per_epoch, 'step')}, {total:,} steps "
            f"in all ({why}; --epochs and --max-epochs to choose)"
        )
    else:
        epochs = cfg.epochs
    total = steps_per_epoch * epochs
    warmup = (
        cfg.warmup_steps
        if cfg.warmup_steps is not None
        else max(1, int(round(cfg.warmup_fraction * total)))
    )
    return RunPlan(batch, epochs, steps_per_epoch, total, min(warmup, total), notes)


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")


# Decoded training audio kept in memory at most (float32 at the model's rate): 4 GiB, or a
# quarter of the machine's memory when that is less.
CACHE_BUDGET_BYTES = 4 * 2**30


def cache_fits(paths: list[str], sample_rate_hz: int, seed: int, sample: int = 200) -> bool:
    """Whether the decoded clips (float32 at ``sample_rate_hz``) fit the cache budget,
    estimated from the headers of at most ``sample`` files (unreadable ones count as 10 s)."""
    import soundfile as sf

    try:
        total_mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total_mem = 4 * CACHE_BUDGET_BYTES
    budget = min(CACHE_BUDGET_BYTES, total_mem // 4)
    if not paths:
        return True
    rng = np.random.default_rng([seed, 0xCAC4E])
    picked = rng.choice(len(paths), size=min(sample, len(paths)), replace=False)
    seconds = []
    for i in picked:
        try:
            seconds.append(sf.info(paths[int(i)]).duration)
        except Exception:  # an unreadable file is reported when it is decoded
            seconds.append(10.0)
    return float(np.mean(seconds)) * len(paths) * sample_rate_hz * 4 <= budget
