"""Dataclasses for what gets built, with to/from dict so artefacts can record them.

Defaults carry a reason where the paper is silent (its body and hyper-parameters are not
public): they follow BioLingual's public training script (lr 1e-4, repeat-pad, random
crops) and CLIP's contrastive conventions (learnable temperature from 0.07).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

TRAIN_CHOICES = ("head", "projection", "top-k-blocks", "all")


@dataclass
class DistillConfig:
    """Everything that decides a distillation run (recorded in every checkpoint)."""

    # what learns
    train: str = "all"  # head | projection | top-k-blocks | all
    top_k_blocks: int = 1  # HTSAT stages unfrozen (from the top) with train=top-k-blocks
    head: str = "linear"  # linear | mlp
    head_hidden: int | None = None
    # targets
    prompt_format: str = "taxon_com"  # BioCLIP's richest text form: taxonomy + common name
    templates: str = "none"  # the bare species string, as TreeOfLife captions are written
    # loss
    loss: str = "class"  # class: all training species are candidates; batch: symmetric in-batch
    positives: str = "exclusive"  # batch loss: same-species columns excluded from negatives
    init_temperature: float = 0.07
    learn_temperature: bool = True
    preserve_weight: float = 0.0  # >0 keeps the 512-d audio embedding near the original
    preserve_kind: str = "cosine"
    # optimisation
    epochs: int = 10
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-4  # BioLingual's own fine-tuning rate
    head_lr: float = 1e-3  # the new head starts from scratch and needs a larger step
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    seed: int = 0
    # data
    window_s: float | None = None  # crop length; default the model's window (10 s)
    gain_db: float = 0.0  # random gain in [-gain_db, +gain_db]
    noise_prob: float = 0.0  # chance of adding white noise to a crop
    noise_snr_db: tuple[float, float] = (10.0, 30.0)
    cache_audio: bool = True  # keep decoded, resampled clips in memory (small data sets)
    # bookkeeping
    save_every_steps: int = 0  # 0: at the end of each epoch only
    val_every_epochs: int = 1

    def __post_init__(self):
        if self.train not in TRAIN_CHOICES:
            raise ValueError(f"train must be one of {TRAIN_CHOICES}, not {self.train!r}")
        if self.loss not in ("class", "batch"):
            raise ValueError(f"loss must be 'class' or 'batch', not {self.loss!r}")
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


def distill_flags(parser, defaults: DistillConfig) -> None:
    """One ``--flag`` per DistillConfig field (``train`` is ``--train-mode`` beside the manifest).

    Defaults are None so that only flags given on the command line override ``--config``.
    """
    for f in fields(DistillConfig):
        flag = "--train-mode" if f.name == "train" else "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        kw: dict = {
            "default": None,
            "dest": f"cfg_{f.name}",
            "help": f"(default {value})",
            "metavar": f.name.upper(),
        }
        if f.name == "train":
            kw["choices"] = TRAIN_CHOICES
        elif f.name == "templates":
            kw["metavar"] = "SET|TEMPLATE|FILE"
            kw["help"] = (
                "teacher prompt templates: a set (none, photo, openai, sound), a template with "
                "fields such as '{scientific} with common name {common}', or a file of them, one "
                f"a line (default {value})"
            )
        if isinstance(value, bool):
            kw["type"] = lambda v: v.lower() in ("1", "true", "yes", "on")
            kw["metavar"] = "BOOL"
        elif isinstance(value, tuple):
            kw.update(nargs=2, type=float)
        elif isinstance(value, (int, float)):
            kw["type"] = type(value)
        elif f.name == "head_hidden":
            kw["type"] = int
        elif f.name == "window_s":
            kw["type"] = float
        parser.add_argument(flag, **kw)


def config_from_flags(base: DistillConfig, args) -> DistillConfig:
    d = base.to_dict()
    for f in fields(DistillConfig):
        v = getattr(args, f"cfg_{f.name}", None)
        if v is not None:
            d[f.name] = v
    return DistillConfig.from_dict(d)
