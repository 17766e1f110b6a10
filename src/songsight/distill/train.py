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

Its parts: `songsight.distill.setup` (and `.models`) builds the run, `songsight.distill.loop`
trains it, `songsight.distill.checkpoint` writes and resumes it, and `songsight.distill.hooks`
lets a caller watch it (timings, validation figures) without changing it.
"""

from __future__ import annotations

from pathlib import Path

from songsight.config import DistillConfig
from songsight.distill.hooks import DistillHooks


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
    hooks: DistillHooks | None = None,
) -> dict:
    """Train a distilled audio encoder; returns a summary dict (paths, best metric, steps).

    ``train_manifest``: CSV/Parquet with ``path``, ``label`` (rows with ``split == "train"`` if
    a split column has them). Validation: ``val_manifest`` if given, else the manifest's
    ``split == "val"`` rows, else ``cfg.val_fraction`` of each species' recordings carved from
    the training rows. ``val_gallery``: image manifest (path, label) for audio-to-image mAP;
    without it readouts are scored against the teacher's species text embeddings.
    ``stop_after_steps`` ends the run early (as a kill would, but cleanly) for tests of resume.
    ``hooks``: a `songsight.distill.hooks.DistillHooks` told of each phase, step, validation
    and checkpoint (for benchmarks and monitors; it cannot change the run).
    """
    from contextlib import nullcontext

    from songsight.distill.checkpoint import resume_state, start_or_resume
    from songsight.distill.loop import Trainer
    from songsight.distill.setup import build_run, dist_env, say
    from songsight.outputs import claim

    hooks = hooks or DistillHooks()
    # The run folder is claimed (writable, one writer) and judged (a run to resume, or none
    # to overwrite) before any model loads; only rank 0 writes it.
    is_main = dist_env()[0] == 0
    with claim(out_dir, folder=True, what="--out") if is_main else nullcontext():
        resuming, note = start_or_resume(Path(out_dir), resume)
        if note and is_main:
            say(note)
        run = build_run(
            train_manifest, species_csv, audio_model, image_model, out_dir,
            config or DistillConfig(), val_manifest, val_gallery, resuming, device, progress,
            cache_dir, hooks,
        )  # fmt: skip
        trainer = Trainer(
            run, resume_state(run, resuming), hooks, progress, resuming, stop_after_steps
        )
        trainer.fit()
        return trainer.summary(run.val_clips)
