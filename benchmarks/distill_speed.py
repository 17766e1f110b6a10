"""Distillation training speed: the real trainer on the exact architectures at random init.

Runs `songsight.distill.train.distill` unchanged (DistillConfig defaults: all layers trained,
batch 32, bf16 autocast on CUDA, fp32 on CPU; but no validation split, so that only training
steps fall between the timed metrics rows) with BioLingual's shape
(``ClapModel(ClapConfig())``, 48 kHz / 10 s / 64 mels) as the student and BioCLIP-2's shape
(open_clip ``ViT-L-14``) as the teacher, both at random init (speed does not depend on the
weights; the builders are the shared harness's, `harness.models`). The training audio is a simulated world
exported in SSW60's layout: 10 s mono PCM16 WAVs at 22.05 kHz, as SSW60's ``audio_ml`` ships
them, decoded and resampled by the trainer itself.

The run stops after ``--epochs-timed`` epochs, so exactly one epoch end (with its ``best`` and
``last`` checkpoints) falls inside it. Phases are timed through the trainer's hooks
(`songsight.distill.hooks`: teacher load, teacher targets, student load, decoding, checkpoint
saves, the end of every step). Step time is the interval between consecutive step ends: each
is reported after the step's loss has been read back to the host and its metrics row written,
so in steady state the interval is one full step (decoded crops to log-mels, forward, backward,
optimiser). The first step (warm-up) and any interval holding a checkpoint save are left out of
the step statistics. The log-mel features of one batch are also timed on their own, on the device (where
the trainer computes them) and on the CPU, to show how much of a step they are.

From these it estimates the paper-scale run: 10 epochs x 2,597 SSW60 training clips (81 steps
of 32 per epoch, the last partial batch dropped) = steps x step time + decoding every clip once
+ a best and a last checkpoint per epoch (an upper bound: ``best`` is only written when the
loss improves) + loading both models and computing the teacher targets.

    python benchmarks/distill_speed.py --device cuda --out distill.json   # ~1-2 min on one GPU
    python benchmarks/distill_speed.py --quick --device cpu                # smoke run, ~1 min on 2 cores

``--work-dir`` keeps the models and the world (reused when present; `embed_throughput.py`
``--work-dir`` writes the same model folders, so one folder serves both scripts).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from harness.machine import describe, pick_device
from harness.models import build_bioclip2_shape, build_biolingual_shape
from harness.report import Progress, emit, work_folder
from harness.timing import best_s
from songsight.distill.hooks import DistillHooks

# SSW60's audio training split and the paper-scale schedule (docs/reproduce.md).
SSW60_TRAIN_CLIPS = 2_597
SSW60_SPECIES = 60
PAPER_EPOCHS = 10


class PhaseClock(DistillHooks):
    """Records the trainer's phases through its hooks (`songsight.distill.hooks`): set-up phase
    totals, every checkpoint's (start, end), the loop's start and the end of every step."""

    def __init__(self) -> None:
        self.phase_s: dict[str, float] = defaultdict(float)
        self.saves: list[tuple[float, float]] = []
        self.loop_start: float | None = None
        self.step_ends: list[float] = []

    def on_phase(self, name: str, seconds: float) -> None:
        self.phase_s[name] += seconds

    def on_loop_start(self, step: int) -> None:
        self.loop_start = time.perf_counter()

    def on_step(self, step: int, epoch: int, row: dict) -> None:
        self.step_ends.append(time.perf_counter())

    def on_checkpoint(self, name: str, epoch: int, step: int, seconds: float) -> None:
        end = time.perf_counter()
        self.saves.append((end - seconds, end))

    def total_s(self, name: str) -> float:
        return self.phase_s.get(name, 0.0)


def export_training_world(world_dir: Path, n_species: int, clips_per_species: int) -> Path:
    """SSW60-layout world with training clips only; returns the train manifest (path, label, split)."""
    import pandas as pd

    from songsight.data.manifest import save_manifest
    from songsight.data.ssw60 import SSW60
    from songsight.sim.export import export_world
    from songsight.sim.world import WorldConfig, build_world

    cfg = WorldConfig(
        seed=0,
        n_species=n_species,
        ssw_clips_train=clips_per_species,
        ssw_clips_test=0,
        nabirds_train=0,
        nabirds_test=0,
        inat_train=0,
        inat_val=0,
        inat_test=0,
        pretrain_calls=0,
        pretrain_photos=0,
        n_soundscapes=0,
        held_out_fraction=0.0,  # the paper-scale run distils every species
    )
    manifest = world_dir / "distill_train.csv"
    if not manifest.is_file():
        workers = min(16, os.cpu_count() or 1)
        export_world(build_world(cfg), world_dir, workers=workers, overwrite=True)
        audio = SSW60(world_dir, warn_missing=False).audio("train")
        save_manifest(
            pd.DataFrame({"path": audio["path"], "label": audio["label"], "split": "train"}),
            manifest,
        )
    return manifest


def step_stats(clock: PhaseClock) -> dict:
    """Step timings from the step ends: first step, then steady intervals without a save."""
    loop_start, ends, saves = clock.loop_start, clock.step_ends, clock.saves
    intervals, with_save = [], []
    for a, b in zip(ends, ends[1:], strict=False):
        (with_save if any(a <= s0 < b for s0, _ in saves) else intervals).append(b - a)
    return {
        "steps": len(ends),
        "first_step_s": ends[0] - loop_start if ends else None,
        "step_s": intervals,
        "step_mean_s": statistics.fmean(intervals) if intervals else None,
        "step_median_s": statistics.median(intervals) if intervals else None,
        "step_p90_s": float(np.percentile(intervals, 90)) if intervals else None,
        "intervals_with_save_s": with_save,
        "loop_s": ends[-1] - loop_start if ends else None,
    }


def time_features(
    audio_dir: Path, paths: list[str], batch_size: int, device: str = "cpu", repeats: int = 3
) -> float:
    """Best wall time (s) of the trainer's log-mel features for one batch, computed on ``device``."""
    from transformers import ClapFeatureExtractor

    from songsight.encoders.biolingual import ClapFeatures
    from songsight.inputs.audio import load_audio

    extractor = ClapFeatureExtractor.from_pretrained(audio_dir)
    features = ClapFeatures(extractor, fused_model=False)
    waves = [
        load_audio(paths[i % len(paths)], features.sample_rate_hz).waveform[: features.max_samples]
        for i in range(batch_size)
    ]
    features(waves, device)  # warm-up: copies the window and filters to the device
    return best_s(lambda: features(waves, device), repeats, device)


def estimate_paper_run(r: dict) -> dict:
    """Seconds for 10 epochs x 2,597 clips at the measured rates (no validation, as reproduce.md)."""
    steps_per_epoch = SSW60_TRAIN_CLIPS // r["batch_size"]
    steps = PAPER_EPOCHS * steps_per_epoch
    s = r["steps"]
    parts = {
        "train_steps_s": steps * s["step_mean_s"],
        "decode_s": SSW60_TRAIN_CLIPS * r["phases"]["decode_s"] / r["clips"],
        "checkpoints_s": PAPER_EPOCHS * r["phases"]["epoch_end_save_s"],
        "setup_s": r["phases"]["teacher_load_s"]
        + r["phases"]["teacher_targets_s"]
        + r["phases"]["student_load_s"]
        + max(0.0, s["first_step_s"] - s["step_mean_s"]),
    }
    return {
        "epochs": PAPER_EPOCHS,
        "clips": SSW60_TRAIN_CLIPS,
        "steps": steps,
        **parts,
        "total_s": sum(parts.values()),
    }


def run_benchmark(args) -> dict:
    import torch
    from transformers.utils import logging as hf_logging

    from songsight.config import DistillConfig
    from songsight.data.manifest import load_manifest
    from songsight.distill.plan import plan_run
    from songsight.distill.train import distill

    hf_logging.disable_progress_bar()
    progress = Progress()
    say = progress.say
    device = pick_device(args.device)

    with work_folder(args.work_dir, "songsight_distill_") as work:
        say(f"building models in {work} (reused when present)")
        t0 = time.perf_counter()
        audio_dir = build_biolingual_shape(work / "biolingual_shape")
        image_dir = build_bioclip2_shape(work / "bioclip2_shape")
        build_s = time.perf_counter() - t0
        say(f"exporting {args.species} species x {args.clips_per_species} training clips")
        t0 = time.perf_counter()
        world_dir = work / f"distill_world_{args.species}x{args.clips_per_species}"
        manifest = export_training_world(world_dir, args.species, args.clips_per_species)
        world_s = time.perf_counter() - t0

        # Training throughput only: no validation split (its passes would fall between the
        # metrics rows this script times steps by); the probe initialisation stays, before
        # the loop, and is timed as part of the set-up.
        cfg = DistillConfig(
            batch_size=args.batch_size or DistillConfig().batch_size, val_fraction=0.0
        )
        n_clips = args.species * args.clips_per_species
        steps_per_epoch = plan_run(n_clips, cfg).steps_per_epoch
        stop_after = args.epochs_timed * steps_per_epoch
        run_dir = work / "distill_run"
        shutil.rmtree(run_dir, ignore_errors=True)  # distill refuses a folder holding a run
        say(
            f"distilling on {device}: {n_clips} clips, batch {cfg.batch_size}, "
            f"{steps_per_epoch} steps/epoch, stopping after {stop_after} steps"
        )
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        clock = PhaseClock()
        t0 = time.perf_counter()
        summary = distill(
            manifest,
            world_dir / "taxa.csv",
            audio_dir,
            image_dir,
            run_dir,
            cfg,
            device=device,
            progress=False,
            stop_after_steps=stop_after,
            hooks=clock,
        )
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        distill_s = time.perf_counter() - t0
        peak_gib = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None

        say("timing one batch of log-mel features on the CPU and on the device")
        paths = [str(x) for x in load_manifest(manifest)["path"].head(cfg.batch_size)]
        features_s = time_features(audio_dir, paths, cfg.batch_size)
        features_dev_s = time_features(audio_dir, paths, cfg.batch_size, device)

        saves = clock.saves
        result = {
            "machine": describe(device),
            "config": cfg.to_dict(),
            "batch_size": cfg.batch_size,
            "clips": n_clips,
            "steps_per_epoch": steps_per_epoch,
            "summary": summary,
            "phases": {
                "build_models_s": build_s,
                "export_world_s": world_s,
                "distill_call_s": distill_s,
                "teacher_load_s": clock.total_s("teacher_load"),
                "teacher_targets_s": clock.total_s("teacher_targets"),
                "student_load_s": clock.total_s("student_load"),
                "decode_s": clock.total_s("decode"),
                "saves": [t1 - t0 for t0, t1 in saves],
                "epoch_end_save_s": sum(t1 - t0 for t0, t1 in saves),
                "features_cpu_batch_s": features_s,
                "features_device_batch_s": features_dev_s,
            },
            "steps": step_stats(clock),
            "peak_cuda_gib": peak_gib,
        }
        s = result["steps"]
        result["clips_per_s"] = cfg.batch_size / s["step_mean_s"] if s["step_mean_s"] else None
        result["estimate"] = estimate_paper_run(result) if s["step_mean_s"] else None
        result["elapsed_s"] = progress.elapsed_s()
        return result


def format_report(r: dict) -> str:
    m, p, s, e = r["machine"], r["phases"], r["steps"], r["estimate"]
    cfg = r["config"]
    lines = [
        f"songsight distillation speed  ({m['device']}: {m['name']}, torch {m['torch']}, "
        f"transformers {m['transformers']}, open_clip {m['open_clip']}, {m['threads']} threads)",
        f"config: train={cfg['train']}, batch {r['batch_size']}, precision {cfg['precision']}, "
        f"loss {cfg['loss']}; {r['clips']} clips (10 s, 22.05 kHz WAV), "
        f"{r['steps_per_epoch']} steps/epoch, {s['steps']} steps run",
        "",
        "phases (s):",
        f"  build models (random init, saved)  {p['build_models_s']:8.1f}",
        f"  export world                       {p['export_world_s']:8.1f}",
        f"  distill() call                     {p['distill_call_s']:8.1f}",
        f"    teacher load (ViT-L-14)          {p['teacher_load_s']:8.1f}",
        f"    teacher targets                  {p['teacher_targets_s']:8.1f}",
        f"    student load (ClapModel)         {p['student_load_s']:8.1f}",
        f"    decode + resample {r['clips']:5d} clips    {p['decode_s']:8.1f}"
        f"   ({1e3 * p['decode_s'] / r['clips']:.1f} ms/clip)",
        f"    epoch-end checkpoints ({len(p['saves'])})       {p['epoch_end_save_s']:8.1f}"
        f"   ({', '.join(f'{x:.1f}' for x in p['saves'])})",
        f"    training loop                    {s['loop_s']:8.1f}",
        "",
    ]
    if s["step_mean_s"] is None:
        lines.append("too few steps to time (need at least 2)")
        return "\n".join(lines)
    lines += [
        f"first step (warm-up): {s['first_step_s']:.3f} s",
        f"steady step, {len(s['step_s'])} intervals: mean {s['step_mean_s']:.3f} s, "
        f"median {s['step_median_s']:.3f} s, p90 {s['step_p90_s']:.3f} s",
        f"training throughput: {r['clips_per_s']:.1f} clips/s "
        f"({r['batch_size'] / s['step_median_s']:.1f} at the median step)",
        f"log-mel features of one batch (the trainer computes them on the device): "
        f"{r['machine'].get('device', 'device')} {p['features_device_batch_s']:.3f} s "
        f"({100 * p['features_device_batch_s'] / s['step_mean_s']:.0f}% of a step), "
        f"CPU {p['features_cpu_batch_s']:.3f} s",
    ]
    if r["peak_cuda_gib"] is not None:
        lines.append(f"peak CUDA memory allocated: {r['peak_cuda_gib']:.1f} GiB")
    lines += [
        "",
        f"estimate, {e['epochs']} epochs x {e['clips']} clips = {e['steps']} steps "
        "(no validation, as docs/reproduce.md runs it):",
        f"  training steps {e['train_steps_s']:8.0f} s",
        f"  decoding       {e['decode_s']:8.0f} s",
        f"  checkpoints    {e['checkpoints_s']:8.0f} s  (best + last every epoch: upper bound)",
        f"  setup          {e['setup_s']:8.0f} s",
        f"  total          {e['total_s']:8.0f} s = {e['total_s'] / 60:.1f} min",
        f"total benchmark time {r['elapsed_s']:.0f} s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument(
        "--species", type=int, default=SSW60_SPECIES, help="species in the world (default 60)"
    )
    parser.add_argument(
        "--clips-per-species",
        type=int,
        default=12,
        help="10 s training clips per species (default 12: 720 clips, 22 steps of 32 per epoch)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: DistillConfig's (32)"
    )
    parser.add_argument(
        "--epochs-timed",
        type=int,
        default=2,
        help="epochs run before stopping (default 2: one epoch end with its checkpoints)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny counts at batch 4: a smoke test")
    parser.add_argument("--out", default=None, help="write every figure as JSON here")
    parser.add_argument(
        "--work-dir",
        default=None,
        help="keep models and world here (reused when present); default: a temp dir, removed",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.species, args.clips_per_species, args.batch_size = 8, 1, 4

    result = run_benchmark(args)
    emit(format_report(result), result, args.out, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
