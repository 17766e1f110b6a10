"""Dataclasses for what gets built, with to/from dict so artefacts can record them.

Defaults carry a reason where the paper is silent (its body and hyper-parameters are not
public): they follow BioLingual's public training script (lr 1e-4, repeat-pad, random
crops) and CLIP's contrastive conventions (learnable temperature from 0.07).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

TRAIN_CHOICES = ("head", "projection", "top-k-blocks", "all")
HEADS = ("auto", "linear", "mlp", "cascade")
LOSSES = ("auto", "class", "batch", "species")
HEAD_INITS = ("probe", "random")
# What a None default means, for --help.
NONE_DEFAULTS = {
    "epochs": "(default: from the data size, at least --min-steps steps, at most --max-epochs)",
    "warmup_steps": "(default: --warmup-fraction of the run)",
    "group_column": "(default: a recording_id, recording or group column, else the file)",
    "window_s": "(default: the model's window)",
    "head_hidden": "(default: the wider of the two sides)",
    "cache_audio": "(default: when the decoded clips fit in 4 GiB or a quarter of the memory)",
}


@dataclass
class DistillConfig:
    """Everything that decides a distillation run (recorded in every checkpoint).

    Defaults are for the data a user brings, from a handful of clips to a million: the run's
    length, warmup and validation split follow the data size (`songsight.distill.plan`), and
    the checkpoint kept is the one a validation split carved from the training manifest liked
    best. The objective's defaults were chosen on that validation split in the simulated world
    (docs/simulation.md, "Choosing the recipe").
    """

    # what learns
    train: str = "all"  # head | projection | top-k-blocks | all
    top_k_blocks: int = 1  # HTSAT stages unfrozen (from the top) with train=top-k-blocks
    # auto: the starting head validation likes best of a linear probe, the zero-shot cascade
    # as a head, and that cascade head fitted (`songsight.distill.models.init_head`);
    # linear | mlp | cascade: that head only
    head: str = "auto"
    head_hidden: int | None = None
    # probe: fitted on the untouched embeddings before fine-tuning (LP-FT, Kumar et al. 2022:
    # a random head distorts the features); random: PyTorch's default initialisation (a
    # cascade head then starts as the cascade itself)
    head_init: str = "probe"
    # targets
    prompt_format: str = "taxon_com"  # BioCLIP's richest text form: taxonomy + common name
    templates: str = "none"  # the bare species string, as TreeOfLife captions are written
    # how the cascade asks BioLingual (the fused readout, validated during training); the same
    # defaults as `songsight evaluate`: common name through the AnimalSpeak-style templates
    audio_prompt_format: str = "com"
    audio_templates: str = "sound"
    # loss
    # class: cross-entropy of the output over the candidates' texts; batch: symmetric in-batch;
    # species: cross-entropy of a cascade head's own species logits; auto: species for a
    # cascade head, class for the others
    loss: str = "auto"
    candidates: str = "all"  # class loss: every species of the table (all) or the trained ones
    positives: str = "exclusive"  # batch loss: same-species columns excluded from negatives
    init_temperature: float = 0.07
    learn_temperature: bool = True
    min_temperature: float = 0.01  # floor of a learned temperature (CLIP's cap of 100)
    target_weight: float = 1.0  # pull each clip onto its species' teacher text (see loss.py)
    target_kind: str = "cosine"
    preserve_weight: float = 0.0  # >0 keeps the 512-d audio embedding near the original
    preserve_kind: str = "cosine"
    # optimisation
    epochs: int | None = None  # None: from the data size (min_steps, max_epochs), early stopping
    # optimiser steps a run takes at least (planned when epochs is None; early stopping never
    # ends a run sooner)
    min_steps: int = 1000
    max_epochs: int = 100
    # validations without improvement before stopping, once min_steps are done (0: never)
    patience: int = 5
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-4  # BioLingual's own fine-tuning rate
    head_lr: float = 1e-3  # the new head starts from scratch and needs a larger step
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05  # of the run's steps
    warmup_steps: int | None = None  # overrides warmup_fraction when set
    grad_clip: float = 1.0
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    seed: int = 0
    # validation
    val_fraction: float = 0.15  # of each species' clips (recordings), when no --val is given
    val_max_clips: int = 2000  # a larger carved split gives its surplus back to training
    group_column: str | None = None  # clips sharing a value stay on one side of the split
    # data
    window_s: float | None = None  # crop length; default the model's window (10 s)
    gain_db: float = 6.0  # random gain in [-gain_db, +gain_db]
    noise_prob: float = 0.0  # chance of adding white noise to a crop
    noise_snr_db: tuple[float, float] = (10.0, 30.0)
    mix_prob: float = 0.0  # chance of mixing in another clip of the same species
    spec_masks: int = 0  # SpecAugment: time and frequency masks per crop (each up to 10%)
    # keep decoded, resampled clips in memory; None: when they fit CACHE_BUDGET (estimated
    # from a sample of file headers), so a million-clip manifest decodes on the fly instead
    cache_audio: bool | None = None
    # bookkeeping
    save_every_steps: int = 0  # 0: at the end of each epoch only
    val_every_epochs: int = 1
    # after the last step, try weights between the starting point and the last ones on
    # validation (WiSE-FT, `songsight.distill.interpolation`) and keep one that beats the best
    interpolate: bool = True

    def __post_init__(self):
        if self.train not in TRAIN_CHOICES:
            raise ValueError(f"train must be one of {TRAIN_CHOICES}, not {self.train!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, not {self.loss!r}")
        if self.candidates not in ("all", "train"):
            raise ValueError(f"candidates must be 'all' or 'train', not {self.candidates!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, not {self.head!r}")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {HEAD_INITS}, not {self.head_init!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), not {self.val_fraction}")
        if not 0.0 < self.min_temperature <= self.init_temperature:
            raise ValueError(
                f"need 0 < min_temperature <= init_temperature, got {self.min_temperature} "
                f"and {self.init_temperature}"
            )
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1 (or None for automatic), not {self.epochs}")
        self.noise_snr_db = tuple(self.noise_snr_db)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DistillConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown DistillConfig keys: {sorted(unknown)}")
        return cls(**d)


def cache_dir(*parts: str) -> Path:
    """Where songsight keeps what it can rebuild (teacher targets, int8 weights, crash logs):
    ``$SONGSIGHT_CACHE``, else ``$XDG_CACHE_HOME/songsight``, else ``~/.cache/songsight``."""
    base = os.environ.get("SONGSIGHT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "songsight"
    )
    return Path(base, *parts)
