"""The distillation checkpoint's records: the readout it answers with, and resume checks."""

from __future__ import annotations

from pathlib import Path

from songsight.errors import ProvenanceMismatchError

STATE_FILE = "trainer_state.pt"


def default_readout() -> dict:
    """The readout of a run with nothing to validate on: the fused one, which answers species
    outside the distillation set through the cascade, at the middle fusion weight."""
    return {"method": "fused", "fusion_weight": 0.5, "chosen_on": None, "validation": {}}


def readout_record(val: dict, n_clips: int) -> dict:
    return {
        "method": val["val_readout"],
        "fusion_weight": val.get("val_fusion_weight", 0.5),
        "chosen_on": f"validation split ({n_clips} clips)",
        "validation": {k: v for k, v in val.items() if k not in ("val_readout",)},
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
