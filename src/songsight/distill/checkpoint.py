"""The distillation checkpoint: its provenance record, the readout it answers with, writing the
``best``/``last`` folders with the trainer's state, and resuming from ``last``."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from songsight.data.manifest import manifest_sha256
from songsight.encoders.distilled import save_checkpoint
from songsight.errors import ProvenanceMismatchError, SongsightError
from songsight.provenance import environment

STATE_FILE = "trainer_state.pt"


def default_readout() -> dict:
    """The readout of a run with nothing to validate on: the fused one, which answers species
    outside the distillation set through the cascade, at the middle fusion weight."""
    return {
        "method": "fused",
        "fusion_weight": 0.5,
        "fusion_gate": "hard",
        "chosen_on": None,
        "validation": {},
    }


def readout_record(val: dict, counts: dict, names: list[str]) -> dict:
    """The checkpoint's readout: chosen on validation, or the default when validation was too
    small to choose (``val_readout_default`` says why); ``counts`` of the validation clips;
    ``names``: the scientific names of the species table's rows (the poe gate's prior is
    recorded by name, so a gallery of other species can look it up)."""
    why = val.get("val_readout_default")
    return {
        "method": val["val_readout"],
        "fusion_weight": val.get("val_fusion_weight", 0.5),
        "fusion_gate": val.get("val_fusion_gate", "hard"),
        **(
            {"fusion_prior": dict(zip(names, val["val_fusion_prior"], strict=True))}
            if "val_fusion_prior" in val
            else {}
        ),
        "chosen_on": (
            f"nothing: the default, since validation is too small ({why})"
            if why
            else f"validation split ({counts['clips']} clips)"
        ),
        "validation_counts": counts,
        "validation": {
            k: v for k, v in val.items() if k not in ("val_readout", "val_fusion_prior")
        },
    }


def check_resumable(out: Path, saved: dict, now: dict) -> None:
    """Refuse to resume a run whose settings differ, naming each differing setting."""
    for key in ("config", "train_manifest_sha256", "audio_model", "image_model"):
        if saved.get(key) == now.get(key):
            continue
        if key == "config":
            diff = [
                f"{k}: {saved[key].get(k)!r} then, {now[key].get(k)!r} now"
                for k in sorted(set(saved[key]) | set(now[key]))
                if saved[key].get(k) != now[key].get(k)
            ]
            what = "settings differ (" + "; ".join(diff) + ")"
        elif key == "train_manifest_sha256":
            what = "training manifest's content differs"
        else:
            what = f"{key.replace('_', ' ')} differs ({saved[key].get('model_id')} then, " + (
                f"{now[key].get('model_id')} now)"
            )
        raise ProvenanceMismatchError(
            f"cannot resume {out}: its {what}. Use the same settings, or a new --out."
        )


def run_meta(cfg, audio_res, teacher_prov: dict, target_info: dict, species, train_labels,
             train_df, species_csv, split_info: dict, plan, st, out_dim: int,
             head_note: dict | str) -> dict:  # fmt: skip
    """The provenance every checkpoint of a run carries (``st``: `songsight.distill.models.Student`);
    a resume is refused when its config, training manifest or models differ."""
    by_label = {s.label: i for i, s in enumerate(species)}
    return {
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
            "in_dim": int(st.clap.config.projection_dim),
            "out_dim": int(out_dim),
            "kind": head_kind(st.head),
            "hidden": cfg.head_hidden,
            "n_species": len(species),
            "init": head_note,
        },
        "cascade": {
            "audio_prompt_format": cfg.audio_prompt_format,
            "audio_templates": cfg.audio_templates,
            "temperature": st.cascade_temperature,
        },
        "window_s": st.window_s,
    }


def head_kind(head) -> str:
    """``linear``, ``mlp`` or ``cascade``: what a checkpoint needs to build ``head`` again."""
    from torch import nn

    if isinstance(head, nn.Linear):
        return "linear"
    return "cascade" if hasattr(head, "species_logits") else "mlp"


def _no_best() -> dict:
    return {"metric": None, "value": -math.inf, "stale": 0, "readout": None}


@dataclass
class TrainState:
    """Where a run is: the epoch and micro-batch the loop starts from, optimiser steps taken, and
    the best validation so far (``stale``: validations since it last improved)."""

    start_epoch: int = 0
    start_micro: int = 0
    step: int = 0
    best: dict = field(default_factory=_no_best)


def has_checkpoint(out: Path) -> bool:
    """Whether ``out`` holds a checkpoint a run can resume from (``last`` with its state)."""
    return (out / "last" / STATE_FILE).is_file()


def saved_head_kind(out: Path) -> str:
    """The head kind of the run saved in ``out/last`` (``linear``, ``mlp`` or ``cascade``)."""
    import json

    from songsight.encoders.loading import DISTILLED_MARKER

    return json.loads((out / "last" / DISTILLED_MARKER).read_text())["head"]["kind"]


def start_or_resume(out: Path, resume: bool) -> tuple[bool, str | None]:
    """(whether the run in ``out`` resumes, a note to print or None), decided before any model
    loads: it resumes when ``resume`` is asked and a checkpoint was saved. A fresh run into a
    folder that holds one is refused; a resume with nothing saved yet starts exactly as a
    fresh run does (the same probe, the same plan), and the note says so."""
    if resume:
        if has_checkpoint(out):
            return True, None
        return (
            False,
            f"nothing to resume in {out} (no checkpoint was saved yet): starting a fresh run",
        )
    if (out / "last").exists():
        raise SongsightError(
            f"{out} already holds a run; pass --resume to continue it or choose a new --out"
        )
    return False, None


def resume_state(run, resuming: bool) -> TrainState:
    """The state to start from (``run``: `songsight.distill.setup.DistillRun`): when
    ``resuming`` (see `start_or_resume`), ``last``'s saved state, loaded into the run's module,
    optimiser, schedule and RNGs after checking the settings match; else a fresh state."""
    import torch

    if not resuming:
        return TrainState()
    state = torch.load(run.out / "last" / STATE_FILE, map_location="cpu", weights_only=False)
    check_resumable(run.out, state["meta"], run.meta)
    # The head's starting fit ran in the interrupted run, not in this one: keep its record.
    run.meta["head"]["init"] = state["meta"]["head"]["init"]
    run.module.load_state_dict(state["module"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_cpu"])
    if torch.cuda.is_available() and state.get("rng_cuda") is not None:
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return TrainState(state["epoch"], state["micro"], state["step"], state["best"])


def save_state(run, state: TrainState, name: str, epoch: int, micro: int) -> float:
    """Write checkpoint ``name`` (``best`` or ``last``; ``last`` with the trainer's state, to
    resume at ``epoch``, ``micro``) on rank 0; returns the seconds it took (0 on other ranks)."""
    import torch

    if not run.is_main:
        return 0.0
    t0 = time.perf_counter()
    module, best = run.module, state.best
    trainer_state = {
        "module": module.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "epoch": epoch,
        "micro": micro,
        "step": state.step,
        "best": best,
        "meta": run.meta,
    }
    save_checkpoint(
        run.out / name,
        run.st.clap,
        run.st.extractor,
        run.st.tokenizer,
        module.student.head,
        {
            **run.meta,
            "step": state.step,
            "epoch": epoch,
            "best": best,
            "logit_scale": float(module.logit_scale().detach().cpu()),
            "readout": best["readout"] or default_readout(),
        },
        extra={STATE_FILE: trainer_state} if name == "last" else None,
        targets=(np.array([s.label for s in run.species]), run.all_targets),
    )
    return time.perf_counter() - t0
