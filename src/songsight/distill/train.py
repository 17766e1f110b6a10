"""The distillation loop: BioLingual's audio encoder learns to land on BioCLIP-2's species text.

One function, `distill`, runs a whole training job: a validation split carved from the
training manifest and a run length sized to the data (`songsight.distill.plan`), teacher
targets (cached, computed once), student set-up (`DistillConfig.train` decides what learns,
the head starts as a linear probe), AdamW with warmup + cosine, clipping, accumulation, bf16
autocast on GPU, validation of every readout each epoch with early stopping, atomic best/last
checkpoints (best by the validation score, never the training loss), exact resume, a CSV
metrics log and a progress bar. Under ``torchrun`` it runs
DDP (NCCL on GPU, gloo on CPU): each rank takes an interleaved slice of every global batch,
and the batch-level loss gathers embeddings across ranks with gradients.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path

import numpy as np

from songsight.config import DistillConfig
from songsight.data.manifest import load_manifest, manifest_sha256
from songsight.distill.checkpoint import (
    STATE_FILE,
    check_resumable,
    default_readout,
    readout_record,
)
from songsight.distill.data import AudioCrops, epoch_order, spec_mask
from songsight.distill.monitor import METRICS_FILE, MetricsLog, Validator
from songsight.distill.plan import cache_fits, plan_run
from songsight.distill.probe_init import fit_probe_head, probe_rows
from songsight.distill.setup import (
    dist_env,
    embed_base,
    freeze_batchnorm,
    say,
    select_trainable,
    training_data,
    warmup_cosine,
)
from songsight.distill.targets import teacher_targets
from songsight.encoders.base import autocast_dtype, l2_normalize
from songsight.encoders.distilled import build_head, make_student, save_checkpoint
from songsight.errors import DataNotFoundError, SongsightError
from songsight.provenance import environment
from songsight.taxonomy import load_species_csv


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
    a split column has them). Validation: ``val_manifest`` if given, else the manifest's
    ``split == "val"`` rows, else ``cfg.val_fraction`` of each species' recordings carved from
    the training rows. ``val_gallery``: image manifest (path, label) for audio-to-image mAP;
    without it readouts are scored against the teacher's species text embeddings.
    ``stop_after_steps`` ends the run early (as a kill would, but cleanly) for tests of resume.
    """
    import torch
    import torch.distributed as dist
    from transformers import ClapFeatureExtractor

    from songsight.distill.loss import DistillationLoss, LogitScale
    from songsight.encoders.bioclip import BioCLIPEncoder
    from songsight.encoders.biolingual import BioLingualEncoder
    from songsight.encoders.loading import resolve_model
    from songsight.eval.inputs import species_text

    cfg = config or DistillConfig()
    rank, world, local_rank = dist_env()
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
        dist.init_process_group(backend)
    if device in (None, "auto"):
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        if device == "cpu" and rank == 0 and progress:
            say("no CUDA device found, training on CPU")
    is_main = rank == 0
    out = Path(out_dir)

    # --- data and species --------------------------------------------------------------------
    species = load_species_csv(species_csv)
    by_label = {s.label: i for i, s in enumerate(species)}
    train_df, val_df, split_info = training_data(
        train_manifest, val_manifest, species, species_csv, cfg
    )
    train_labels = sorted(set(int(x) for x in train_df["label"]))
    train_index = {lab: i for i, lab in enumerate(train_labels)}
    plan = plan_run(len(train_df), cfg, world)
    if is_main:
        for note in plan.notes:
            say(note)
        if val_df is None:
            say(
                "no validation clips (too few recordings per species to carve a split, or "
                "--val-fraction 0): the last checkpoint is kept and the readout is the default"
            )

    # --- models -------------------------------------------------------------------------------
    audio_res = resolve_model(str(audio_model), "audio")
    teacher = BioCLIPEncoder(image_model, device=device if device.startswith("cuda") else "cpu")
    all_targets, target_info = teacher_targets(
        teacher, species, cfg.prompt_format, cfg.templates, cache_dir
    )
    teacher_prov = teacher.provenance()
    gallery = None
    if val_gallery is not None:
        gdf = load_manifest(val_gallery, species=species)
        gallery = (teacher.embed_images(list(gdf["path"])), gdf["label"].to_numpy())
    del teacher  # the teacher never runs in the loop
    all_targets_t = torch.from_numpy(all_targets).to(device)
    # The class-level loss's candidates: every species of the table (the default) or only the
    # trained ones. The names of species without audio are negatives that cost nothing, and
    # without them nothing keeps a clip away from those species' targets: in the simulated
    # world, a probe's zero-shot top-1 over all 60 species was 53% with the 48 trained ones as
    # candidates and 75% with all 60 (on the trained species alone, 75% either way).
    rows_of = by_label if cfg.candidates == "all" else train_index
    train_targets = (
        all_targets_t
        if cfg.candidates == "all"
        else torch.from_numpy(all_targets[[by_label[lab] for lab in train_labels]]).to(device)
    )

    torch.manual_seed(cfg.seed)  # before the head is initialised: same seed, same run
    # Loaded once, as an encoder: its text side gives the cascade's species embeddings (the
    # text tower never trains), its audio tower and projection become the student.
    base_encoder = BioLingualEncoder(audio_res, device=device)
    clap, features, tokenizer = base_encoder.model, base_encoder.features, base_encoder.tokenizer
    extractor = ClapFeatureExtractor.from_pretrained(audio_res.path)
    window_s = cfg.window_s or features.max_samples / features.sample_rate_hz
    audio_text = species_text(base_encoder, species, cfg.audio_prompt_format, cfg.audio_templates)
    cascade_temperature = float(1.0 / clap.logit_scale_a.detach().float().exp().cpu())
    head = build_head(
        int(clap.config.projection_dim), all_targets.shape[1], cfg.head, cfg.head_hidden
    ).to(device)
    student = make_student(clap, head).eval()

    cache_audio = cfg.cache_audio
    if cache_audio is None:
        cache_audio = cache_fits(list(train_df["path"]), features.sample_rate_hz, cfg.seed)
        if not cache_audio and is_main:
            say("the training audio would not fit in memory: decoding it as it is used")
    data = AudioCrops(
        list(train_df["path"]),
        [rows_of[int(x)] for x in train_df["label"]],
        features.sample_rate_hz,
        window_s,
        cache_audio,
        cfg.gain_db,
        cfg.noise_prob,
        cfg.noise_snr_db,
        cfg.mix_prob,
    )
    bad = data.check() if cache_audio else []
    if bad:
        raise DataNotFoundError(
            f"{len(bad)} training file(s) cannot be decoded, e.g. {bad[0][0]}: {bad[0][1]}. "
            "Fix or drop them from the manifest."
        )

    validator = None
    if val_df is not None:
        validator = Validator(
            val_df, features, window_s, all_targets_t, by_label, train_labels, gallery, device,
            autocast_dtype(cfg.precision, device), cascade=(audio_text, cascade_temperature),
        )  # fmt: skip
        validator.prepare(student)  # the untouched model: the cascade's view of the clips
    logit_scale = LogitScale(
        cfg.init_temperature, learnable=cfg.learn_temperature, max_scale=1.0 / cfg.min_temperature
    ).to(device)
    loss_fn = DistillationLoss(
        cfg.loss,
        cfg.preserve_weight,
        cfg.preserve_kind,
        cfg.positives,
        target_weight=cfg.target_weight,
        target_kind=cfg.target_kind,
    )
    head_note: dict | str = cfg.head_init
    if cfg.head_init == "probe" and cfg.head == "linear" and not resume:
        rows = probe_rows(data.labels, cfg.seed)
        base = embed_base(student, data, rows, features, device, plan.batch_size)
        head_note = fit_probe_head(
            head, logit_scale, DistillationLoss("class", target_weight=cfg.target_weight,
            target_kind=cfg.target_kind), base, data.labels[rows], train_targets, cfg.seed,
        )  # fmt: skip
        head_note["kind"] = "probe"
    elif cfg.head_init == "probe" and cfg.head != "linear":
        head_note = "random (the probe initialisation needs the linear head)"
    select_trainable(student, clap, cfg)
    original = None
    if cfg.preserve_weight > 0 and cfg.train != "head":
        original = (
            copy.deepcopy(make_student(clap, torch.nn.Identity())).eval().requires_grad_(False)
        )

    class TrainModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.student = student
            self.logit_scale = logit_scale

        def forward(self, feats):
            emb, base = self.student(feats)
            return emb, base, self.logit_scale()

    module = TrainModule().to(device)
    model = module
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[local_rank] if device.startswith("cuda") else None
        )
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
    autocast = autocast_dtype(cfg.precision, device)

    meta = {
        "kind": "songsight-distilled",
        "config": cfg.to_dict(),
        "environment": environment(),
        "audio_model": audio_res.provenance(),
        "image_model": {k: teacher_prov[k] for k in ("model_id", "revision", "dim", "source")},
        "prompts": target_info,
        "train_labels": train_labels,
        "train_species": [species[by_label[lab]].scientific_name for lab in train_labels],
        "train_manifest_sha256": manifest_sha256(train_df),
        "species_csv": str(species_csv),
        "validation": split_info,
        "plan": plan.to_dict(),
        "head": {
            "in_dim": int(clap.config.projection_dim),
            "out_dim": int(all_targets.shape[1]),
            "kind": cfg.head,
            "hidden": cfg.head_hidden,
            "init": head_note,
        },
        "cascade": {
            "audio_prompt_format": cfg.audio_prompt_format,
            "audio_templates": cfg.audio_templates,
            "temperature": cascade_temperature,
        },
        "window_s": window_s,
    }

    # --- resume -------------------------------------------------------------------------------
    start_epoch, start_micro, step = 0, 0, 0
    best = {"metric": None, "value": -math.inf, "stale": 0, "readout": None}
    state_path = out / "last" / STATE_FILE
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        check_resumable(out, state["meta"], meta)
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
            {
                **meta,
                "step": step,
                "epoch": epoch,
                "best": best,
                "logit_scale": float(module.logit_scale().detach().cpu()),
                "readout": best["readout"] or default_readout(),
            },
            extra={STATE_FILE: state} if name == "last" else None,
            targets=(np.array([s.label for s in species]), all_targets),
        )

    def validate() -> dict:
        if validator is None:
            return {}
        module.eval()
        res = validator(module.student, float(module.logit_scale().detach().cpu()))
        module.train()
        freeze_batchnorm(module)
        return res

    # --- loop ---------------------------------------------------------------------------------
    from tqdm.auto import tqdm

    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    log = (
        MetricsLog(out / METRICS_FILE, keep_until_step=step if resume else -1) if is_main else None
    )
    bar = tqdm(
        total=plan.total_steps,
        initial=step,
        desc="distilling",
        unit="step",
        disable=not (progress and is_main),
        file=sys.stderr,
        dynamic_ncols=True,
    )
    batch_size = plan.batch_size
    local_bs = batch_size // world

    def consider(val: dict, epoch: int) -> None:
        """Keep the checkpoint if its validation score is the best so far."""
        nonlocal best
        if log:
            log.write({"step": step, "epoch": epoch, **val})
        if val["val_score"] > best["value"]:
            best = {
                "metric": "val_score",
                "value": float(val["val_score"]),
                "epoch": epoch,
                "step": step,
                "stale": 0,
                "readout": readout_record(val, len(validator.labels)),
            }
            save("best", epoch + 1, 0)
        else:
            best = {**best, "stale": best["stale"] + 1}

    if step == 0 and validator is not None:
        # The starting point (the probe-initialised head) is a candidate too: fine-tuning that
        # makes validation worse is never kept.
        consider(validate(), -1)
    module.train()
    freeze_batchnorm(module)
    t0, seen_items, stopped, early, comps = time.time(), 0, False, False, {"total": math.inf}
    for epoch in range(start_epoch, plan.epochs):
        order = epoch_order(len(data), cfg.seed, epoch)
        n_micro = plan.steps_per_epoch * cfg.grad_accum
        for micro in range(start_micro if epoch == start_epoch else 0, n_micro):
            batch = order[micro * batch_size : (micro + 1) * batch_size][
                rank * local_bs : (rank + 1) * local_bs
            ]
            waves = [data.crop(int(i), cfg.seed, epoch) for i in batch]
            feats = features(waves, device)
            if cfg.spec_masks:
                feats = spec_mask(feats, cfg.spec_masks, [cfg.seed, epoch, micro, rank])
            labels = torch.from_numpy(data.labels[batch]).to(device)
            with torch.autocast(device.split(":")[0], dtype=autocast, enabled=autocast is not None):
                emb, base, scale = model(feats)
            emb, base = l2_normalize(emb.float()), l2_normalize(base.float())
            orig = None
            if original is not None:
                with torch.no_grad():
                    orig = l2_normalize(original(feats)[1].float())
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
        due = (epoch + 1) % cfg.val_every_epochs == 0 or epoch + 1 == plan.epochs
        val = validate() if due else {}
        if val:
            consider(val, epoch)
        early = bool(val) and cfg.patience > 0 and best["stale"] >= cfg.patience
        if early or (validator is None and epoch + 1 == plan.epochs):
            if validator is None:  # nothing to choose on: the final weights are the best
                best = {**best, "metric": "final", "epoch": epoch, "step": step}
                save("best", epoch + 1, 0)
            save("last", epoch + 1, 0)
            if early and is_main and progress:
                say(f"no better validation for {cfg.patience} epochs: stopping at step {step}")
            break
        save("last", epoch + 1, 0)
    bar.close()
    if world > 1:
        dist.barrier()
    return {
        "out": str(out),
        "steps": step,
        "best": {k: v for k, v in best.items() if k != "stale"},
        "stopped_early": stopped or early,
        "train_species": len(train_labels),
        "clips": len(data),
        "val_clips": 0 if val_df is None else len(val_df),
        "plan": plan.to_dict(),
    }
