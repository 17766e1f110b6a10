"""What a distillation run sets up before its loop: ranks, data, schedule, and `build_run`,
which assembles them with the models (`songsight.distill.models`) into a `DistillRun`.

The loop is `songsight.distill.loop`; `songsight.distill.train.distill` runs both.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from songsight.config import DistillConfig
from songsight.data.manifest import load_manifest
from songsight.distill.data import AudioCrops
from songsight.distill.hooks import DistillHooks, timed_phase
from songsight.distill.models import (
    Student,
    build_loss,
    build_temperature,
    init_head,
    load_student,
    load_teacher,
    loss_candidates,
    wrap_trainable,
)
from songsight.distill.monitor import Validator
from songsight.distill.plan import (
    RunPlan,
    cache_fits,
    carved_val_per_species,
    gate_species_count,
    plan_run,
    split_train_val,
)
from songsight.encoders.base import autocast_dtype
from songsight.errors import DataNotFoundError
from songsight.taxonomy import load_species_csv


def dist_env() -> tuple[int, int, int]:
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


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
    trained = set(int(x) for x in train_df["label"])
    gate = gate_species_count(
        len(trained), bool(set(by_label) - trained),
        carved_val_per_species(train_df, cfg.val_fraction, cfg.group_column),
    )  # fmt: skip
    train_df, val_df, info = split_train_val(
        train_df, cfg.val_fraction, cfg.seed, cfg.group_column, cfg.val_max_clips, gate
    )
    return train_df, (val_df if len(val_df) else None), {"source": "carved", **info}


def init_ranks(device: str | None, progress: bool) -> tuple[int, int, int, str]:
    """(rank, world size, local rank, device): joins the process group under ``torchrun`` (NCCL
    on GPU, gloo on CPU) and picks the device when none is given (``None`` or ``"auto"``)."""
    import torch
    import torch.distributed as dist

    rank, world, local_rank = dist_env()
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
        dist.init_process_group(backend)
    if device in (None, "auto"):
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        if device == "cpu" and rank == 0 and progress:
            say("no CUDA device found, training on CPU")
    return rank, world, local_rank, device


def load_crops(train_df, rows: list[int], features, window_s: float, cfg: DistillConfig,
               is_main: bool, hooks: DistillHooks, progress: bool = False) -> AudioCrops:  # fmt: skip
    """The training clips as augmented crops (``rows``: each clip's target row), decoded into
    memory up front when they fit; a clip that cannot be decoded is a one-line error."""
    cache_audio = cfg.cache_audio
    if cache_audio is None:
        cache_audio = cache_fits(list(train_df["path"]), features.sample_rate_hz, cfg.seed)
        if not cache_audio and is_main:
            say("the training audio would not fit in memory: decoding it as it is used")
    data = AudioCrops(
        list(train_df["path"]),
        rows,
        features.sample_rate_hz,
        window_s,
        cache_audio,
        cfg.gain_db,
        cfg.noise_prob,
        cfg.noise_snr_db,
        cfg.mix_prob,
    )
    bad = []
    if cache_audio:
        with timed_phase(hooks, "decode"):
            bad = data.check(progress=progress and is_main)
    if bad:
        raise DataNotFoundError(
            f"{len(bad)} training file(s) cannot be decoded, e.g. {bad[0][0]}: {bad[0][1]}. "
            "Fix or drop them from the manifest."
        )
    return data


def build_optimizer(module, cfg: DistillConfig, plan: RunPlan):
    """(AdamW, warmup-cosine LambdaLR): the head and the temperature at ``head_lr``, whatever
    else learns at ``lr``."""
    import torch

    head_params = list(module.student.head.parameters()) + list(module.logit_scale.parameters())
    head_ids = {id(p) for p in head_params}
    backbone = [p for p in module.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": [p for p in head_params if p.requires_grad], "lr": cfg.head_lr}]
    if backbone:
        groups.append({"params": backbone, "lr": cfg.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(plan.warmup_steps, plan.total_steps)
    )
    return optimizer, scheduler


def load_inputs(train_manifest, species_csv, val_manifest, cfg: DistillConfig, world: int,
                is_main: bool):  # fmt: skip
    """(species, train rows, validation rows or None, split record, trained labels, run plan),
    saying on rank 0 what the plan changed and when there is nothing to validate on."""
    species = load_species_csv(species_csv)
    train_df, val_df, split_info = training_data(
        train_manifest, val_manifest, species, species_csv, cfg
    )
    train_labels = sorted(set(int(x) for x in train_df["label"]))
    plan = plan_run(len(train_df), cfg, world)
    if is_main:
        for note in plan.notes:
            say(note)
        if val_df is None:
            say(
                "no validation clips (too few recordings per species to carve a split, or "
                "--val-fraction 0): the last checkpoint is kept and the readout is the default"
            )
    return species, train_df, val_df, split_info, train_labels, plan


@dataclass
class DistillRun:
    """What `build_run` sets up for the loop (`songsight.distill.loop.Trainer`)."""

    cfg: DistillConfig
    out: Path
    device: str
    rank: int
    world: int
    local_rank: int
    species: list
    train_labels: list[int]
    plan: RunPlan
    data: AudioCrops
    val_clips: int
    all_targets: np.ndarray  # (S, D) teacher species targets, row i for species[i], unit rows
    train_targets: Any  # (C, D) tensor on the device: the class-level loss's candidates
    candidate_rows: Any  # the candidates' rows among every species (tensor), or None: all
    st: Student
    module: Any  # TrainModule: the student and the temperature
    model: Any  # module, or its DDP wrapper
    original: Any  # frozen untouched base model for the preservation loss, or None
    loss_fn: Any
    optimizer: Any
    scheduler: Any
    autocast: Any  # torch dtype for autocast, or None
    validator: Validator | None
    meta: dict  # provenance, written into every checkpoint (`checkpoint.run_meta`)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def build_run(train_manifest, species_csv, audio_model, image_model, out_dir, cfg: DistillConfig,
              val_manifest, val_gallery, resume: bool, device: str | None, progress: bool,
              cache_dir, hooks: DistillHooks) -> DistillRun:  # fmt: skip
    """Everything `songsight.distill.train.distill` sets up before its loop (arguments as
    there). The order is part of the recipe: the seed is set after the teacher has run and
    before the student loads, so that a seed gives one run."""
    import torch

    from songsight.distill.checkpoint import run_meta, saved_head_kind
    from songsight.encoders.loading import resolve_model

    rank, world, local_rank, device = init_ranks(device, progress)
    species, train_df, val_df, split_info, train_labels, plan = load_inputs(
        train_manifest, species_csv, val_manifest, cfg, world, rank == 0
    )
    # Set-up takes a minute or more before the first step: each phase says what it does.
    tell = say if rank == 0 and progress else (lambda _: None)
    by_label = {s.label: i for i, s in enumerate(species)}
    audio_res = resolve_model(str(audio_model), "audio")
    tell(f"teacher {image_model}: the species' text targets" + (
        " and the validation photos" if val_gallery is not None else ""))  # fmt: skip
    all_targets, target_info, teacher_prov, gallery = load_teacher(
        image_model, species, cfg, device, cache_dir, val_gallery, hooks
    )
    rows_of, train_targets, candidate_rows = loss_candidates(
        all_targets, by_label, train_labels, cfg, device
    )

    torch.manual_seed(cfg.seed)  # before the head is initialised: same seed, same run
    tell(f"student {audio_model}: loading it and its text view of {len(species)} species")
    st = load_student(audio_res, species, cfg, all_targets.shape[1], device, hooks)
    rows = [rows_of[int(x)] for x in train_df["label"]]
    data = load_crops(train_df, rows, st.features, st.window_s, cfg, rank == 0, hooks, progress)
    autocast = autocast_dtype(cfg.precision, device)
    validator = None
    if val_df is not None:
        tell(f"embedding {len(val_df)} validation clips with the untouched student")
        validator = Validator(
            val_df, st.features, st.window_s, torch.from_numpy(all_targets).to(device), by_label,
            train_labels, gallery, device, autocast, cascade=(st.audio_text, st.cascade_temperature),
        )  # fmt: skip
        validator.prepare(st.student)  # the untouched model: the cascade's view of the clips
        if rank == 0 and not validator.can_choose_readout():
            from songsight.distill.checkpoint import default_readout

            d = default_readout()
            say(
                f"{validator.too_small()}: the run answers with the default readout, "
                f"{d['method']} at fusion weight {d['fusion_weight']} (give more validation "
                "clips, e.g. --val MANIFEST, to let validation choose)"
            )
    logit_scale = build_temperature(cfg, device)
    if not resume:
        tell("fitting the head's starting point on the untouched embeddings")
    head_note = init_head(
        st, logit_scale, data, train_targets, all_targets, cfg, plan.batch_size, device,
        saved_head_kind(Path(out_dir)) if resume else None, validator, candidate_rows,
    )  # fmt: skip
    loss_fn = build_loss(cfg, st.head)
    module, model, original = wrap_trainable(st, logit_scale, cfg, device, world, local_rank)
    optimizer, scheduler = build_optimizer(module, cfg, plan)
    meta = run_meta(
        cfg, audio_res, teacher_prov, target_info, species, train_labels, train_df, species_csv,
        split_info, plan, st, all_targets.shape[1], head_note,
    )  # fmt: skip
    return DistillRun(
        cfg=cfg, out=Path(out_dir), device=device, rank=rank, world=world,
        local_rank=local_rank, species=species, train_labels=train_labels, plan=plan, data=data,
        val_clips=0 if val_df is None else len(val_df), all_targets=all_targets,
        train_targets=train_targets, candidate_rows=candidate_rows, st=st, module=module, model=model, original=original,
        loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler, autocast=autocast,
        validator=validator, meta=meta,
    )  # fmt: skip
