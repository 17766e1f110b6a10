"""The distillation loop: BioLingual's audio encoder learns to land on BioCLIP-2's species text.

One function, `distill`, runs a whole training job: teacher targets (cached, computed once),
student set-up (`DistillConfig.train` decides what learns), AdamW with warmup + cosine,
clipping, accumulation, bf16 autocast on GPU, validation each epoch, atomic best/last
checkpoints, exact resume, a CSV metrics log and a progress bar. Under ``torchrun`` it runs
DDP (NCCL on GPU, gloo on CPU): each rank takes an interleaved slice of every global batch,
and the batch-level loss gathers embeddings across ranks with gradients.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from songsight.config import DistillConfig
from songsight.data.manifest import load_manifest, manifest_sha256
from songsight.distill.data import AudioCrops, epoch_order
from songsight.distill.monitor import METRICS_FILE, MetricsLog, Validator
from songsight.distill.targets import teacher_targets
from songsight.encoders.base import autocast_dtype, l2_normalize
from songsight.encoders.distilled import build_head, make_student, save_checkpoint
from songsight.errors import DataNotFoundError, ProvenanceMismatchError, SongsightError
from songsight.provenance import environment
from songsight.taxonomy import load_species_csv

STATE_FILE = "trainer_state.pt"


def _dist_env() -> tuple[int, int, int]:
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def _select_trainable(student, clap, cfg: DistillConfig) -> None:
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


def _freeze_batchnorm(module) -> None:
    """HTSAT's input BatchNorm stays in eval mode: small per-device batches would otherwise
    replace its statistics, and DDP ranks would normalise differently from one process."""
    from torch import nn

    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _load_split(manifest, split: str | None):
    df = load_manifest(manifest)
    if split and "split" in df.columns and (df["split"] == split).any():
        df = df[df["split"] == split].reset_index(drop=True)
    if df.empty:
        raise DataNotFoundError(
            f"{manifest}: no rows to use" + (f" in split {split!r}" if split else "")
        )
    return df


def distill(
    train_manifest,
    species_csv,
    audio_model,
    image_model,
    out_dir,
    config: DistillConfig | None = None,
    val_manifest=None,
    val_gallery=None,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    cache_dir=None,
    stop_after_steps: int | None = None,
) -> dict:
    """Train a distilled audio encoder; returns a summary dict (paths, best metric, steps).

    ``train_manifest``: CSV/Parquet with ``path``, ``label`` (rows with ``split == "train"`` if
    a split column has them). ``val_manifest``: audio for validation (zero-shot accuracy
    against the teacher text of every species in ``species_csv``). ``val_gallery``: image
    manifest (path, label) for audio-to-image mAP. ``stop_after_steps`` ends the run early
    (as a kill would, but cleanly) for tests of resume.
    """
    import torch
    import torch.distributed as dist
    from transformers import ClapFeatureExtractor

    from songsight.distill.loss import DistillationLoss, LogitScale
    from songsight.encoders.bioclip import BioCLIPEncoder
    from songsight.encoders.biolingual import load_clap
    from songsight.encoders.loading import resolve_model

    cfg = config or DistillConfig()
    rank, world, local_rank = _dist_env()
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
        dist.init_process_group(backend)
    if device in (None, "auto"):
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        if device == "cpu" and rank == 0:
            print("songsight: no CUDA device found, training on CPU", file=sys.stderr)
    is_main = rank == 0
    out = Path(out_dir)
    if cfg.batch_size % world:
        raise SongsightError(f"batch size {cfg.batch_size} must be divisible by the {world} ranks")

    # --- data and species --------------------------------------------------------------------
    species = load_species_csv(species_csv)
    by_label = {s.label: i for i, s in enumerate(species)}
    train_df = _load_split(train_manifest, "train")
    unknown = sorted(set(train_df["label"]) - set(by_label))
    if unknown:
        raise DataNotFoundError(f"{train_manifest}: labels {unknown[:5]} are not in {species_csv}")
    train_labels = sorted(set(int(x) for x in train_df["label"]))
    train_index = {lab: i for i, lab in enumerate(train_labels)}

    # --- models -------------------------------------------------------------------------------
    audio_res = resolve_model(str(audio_model), "audio")
    teacher = BioCLIPEncoder(image_model, device=device if device.startswith("cuda") else "cpu")
    all_targets, target_info = teacher_targets(
        teacher, species, cfg.prompt_format, cfg.templates, cache_dir
    )
    teacher_prov = teacher.provenance()
    gallery = None
    if val_gallery is not None:
        gdf = load_manifest(val_gallery)
        gallery = (teacher.embed_images(list(gdf["path"])), gdf["label"].to_numpy())
    del teacher  # the teacher never runs in the loop
    train_targets = torch.from_numpy(all_targets[[by_label[lab] for lab in train_labels]]).to(
        device
    )
    all_targets_t = torch.from_numpy(all_targets).to(device)

    torch.manual_seed(cfg.seed)  # before the head is initialised: same seed, same run
    clap, features, tokenizer, _ = load_clap(audio_res, device)
    extractor = ClapFeatureExtractor.from_pretrained(audio_res.path)
    window_s = cfg.window_s or features.max_samples / features.sample_rate_hz
    head = build_head(
        int(clap.config.projection_dim), all_targets.shape[1], cfg.head, cfg.head_hidden
    ).to(device)
    student = make_student(clap, head)
    _select_trainable(student, clap, cfg)
    original = None
    if cfg.preserve_weight > 0 and cfg.train != "head":
        original = (
            copy.deepcopy(make_student(clap, torch.nn.Identity())).eval().requires_grad_(False)
        )

    class TrainModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.student = student
            self.logit_scale = LogitScale(cfg.init_temperature, learnable=cfg.learn_temperature)

        def forward(self, feats):
            emb, base = self.student(feats)
            return emb, base, self.logit_scale()

    module = TrainModule().to(device)
    model = module
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[local_rank] if device.startswith("cuda") else None
        )
    loss_fn = DistillationLoss(cfg.loss, cfg.preserve_weight, cfg.preserve_kind, cfg.positives)

    head_params = list(module.student.head.parameters()) + list(module.logit_scale.parameters())
    head_ids = {id(p) for p in head_params}
    backbone = [p for p in module.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": [p for p in head_params if p.requires_grad], "lr": cfg.head_lr}]
    if backbone:
        groups.append({"params": backbone, "lr": cfg.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)

    data = AudioCrops(
        list(train_df["path"]),
        [train_index[int(x)] for x in train_df["label"]],
        features.sample_rate_hz,
        window_s,
        cfg.cache_audio,
        cfg.gain_db,
        cfg.noise_prob,
        cfg.noise_snr_db,
    )
    bad = data.check() if cfg.cache_audio else []
    if bad:
        raise DataNotFoundError(
            f"{len(bad)} training file(s) cannot be decoded, e.g. {bad[0][0]}: {bad[0][1]}. "
            "Fix or drop them from the manifest."
        )
    steps_per_epoch = len(data) // cfg.batch_size // cfg.grad_accum
    if steps_per_epoch < 1:
        raise SongsightError(
            f"{len(data)} training clips are fewer than one batch of {cfg.batch_size * cfg.grad_accum}"
        )
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(cfg.warmup_steps, total_steps)
    )
    autocast = autocast_dtype(cfg.precision, device)

    meta = {
        "kind": "songsight-distilled",
        "config": cfg.to_dict(),
        "environment": environment(),
        "audio_model": audio_res.provenance(),
        "image_model": {k: teacher_prov[k] for k in ("model_id", "revision", "dim", "source")},
        "prompts": target_info,
        "train_labels": train_labels,
        "train_manifest_sha256": manifest_sha256(train_df),
        "species_csv": str(species_csv),
        "head": {
            "in_dim": int(clap.config.projection_dim),
            "out_dim": int(all_targets.shape[1]),
            "kind": cfg.head,
            "hidden": cfg.head_hidden,
        },
        "window_s": window_s,
    }

    # --- resume -------------------------------------------------------------------------------
    start_epoch, start_micro, step, best = 0, 0, 0, {"metric": None, "value": -math.inf}
    state_path = out / "last" / STATE_FILE
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        for key in ("config", "train_manifest_sha256", "audio_model", "image_model"):
            if state["meta"][key] != meta[key]:
                raise ProvenanceMismatchError(
                    f"cannot resume {out}: its {key} differs from this run's. "
                    "Use the same settings, or a new --out."
                )
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if torch.cuda.is_available() and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        start_epoch, start_micro, step, best = (
            state["epoch"],
            state["micro"],
            state["step"],
            state["best"],
        )
    elif not resume and (out / "last").exists():
        raise SongsightError(
            f"{out} already holds a run; pass --resume to continue it or choose a new --out"
        )

    def save(name: str, epoch: int, micro: int):
        if not is_main:
            return
        state = {
            "module": module.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "epoch": epoch,
            "micro": micro,
            "step": step,
            "best": best,
            "meta": meta,
        }
        save_checkpoint(
            out / name,
            clap,
            extractor,
            tokenizer,
            module.student.head,
            {**meta, "step": step, "epoch": epoch, "best": best},
            extra={STATE_FILE: state} if name == "last" else None,
            targets=(np.array([s.label for s in species]), all_targets),
        )

    # --- validation ---------------------------------------------------------------------------
    validator = None
    if val_manifest is not None:
        validator = Validator(
            _load_split(val_manifest, None), features, window_s, all_targets_t, by_label,
            train_labels, gallery, device, autocast,
        )  # fmt: skip

    def validate() -> dict:
        if validator is None:
            return {}
        module.eval()
        res = validator(module.student)
        module.train()
        _freeze_batchnorm(module)
        return res

    # --- loop ---------------------------------------------------------------------------------
    from tqdm.auto import tqdm

    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    log = (
        MetricsLog(out / METRICS_FILE, keep_until_step=step if resume else -1) if is_main else None
    )
    bar = tqdm(
        total=total_steps,
        initial=step,
        desc="distilling",
        unit="step",
        disable=not (progress and is_main),
        file=sys.stderr,
        dynamic_ncols=True,
    )
    local_bs = cfg.batch_size // world
    module.train()
    _freeze_batchnorm(module)
    t0, seen_items, stopped, comps = time.time(), 0, False, {"total": math.inf}
    for epoch in range(start_epoch, cfg.epochs):
        order = epoch_order(len(data), cfg.seed, epoch)
        n_micro = steps_per_epoch * cfg.grad_accum
        for micro in range(start_micro if epoch == start_epoch else 0, n_micro):
            batch = order[micro * cfg.batch_size : (micro + 1) * cfg.batch_size][
                rank * local_bs : (rank + 1) * local_bs
            ]
            waves = [data.crop(int(i), cfg.seed, epoch) for i in batch]
            labels = torch.from_numpy(data.labels[batch]).to(device)
            with torch.autocast(device.split(":")[0], dtype=autocast, enabled=autocast is not None):
                emb, base, scale = model(features(waves, device))
            emb, base = l2_normalize(emb.float()), l2_normalize(base.float())
            orig = None
            if original is not None:
                with torch.no_grad():
                    orig = l2_normalize(original(features(waves, device))[1].float())
            loss, comps = loss_fn(emb, labels, train_targets, scale, base, orig)
            (loss / cfg.grad_accum).backward()
            seen_items += len(batch) * world
            if (micro + 1) % cfg.grad_accum:
                continue
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{comps['total']:.3f}", T=f"{1 / comps['logit_scale']:.3f}")
            if log:
                log.write(
                    {
                        "step": step,
                        "epoch": epoch,
                        **comps,
                        "lr": scheduler.get_last_lr()[-1],
                        "items_per_s": seen_items / max(1e-9, time.time() - t0),
                    }
                )
            last_of_epoch = micro + 1 == n_micro
            if cfg.save_every_steps and step % cfg.save_every_steps == 0 and not last_of_epoch:
                save("last", epoch, micro + 1)
            if stop_after_steps is not None and step >= stop_after_steps:
                stopped = True
                break
        if stopped:
            break
        val = (
            validate() if (epoch + 1) % cfg.val_every_epochs == 0 or epoch + 1 == cfg.epochs else {}
        )
        metric = (
            "val_map" if "val_map" in val else "val_zero_shot_top1" if val else "neg_train_loss"
        )
        value = val.get(metric, -comps["total"])
        if log:
            log.write({"step": step, "epoch": epoch, **val})
        if value > best["value"]:
            best = {"metric": metric, "value": float(value), "epoch": epoch, "step": step}
            save("best", epoch + 1, 0)
        save("last", epoch + 1, 0)
    bar.close()
    if world > 1:
        dist.barrier()
    return {
        "out": str(out),
        "steps": step,
        "best": best,
        "stopped_early": stopped,
        "train_species": len(train_labels),
        "clips": len(data),
    }
