"""The exact published architectures at random init, saved in their real on-disk formats.

Speed does not depend on the weights, so these stand in for BioLingual and BioCLIP-2 without
a download. Each builder returns at once when its folder already holds the model.
"""

from __future__ import annotations

import json
from pathlib import Path

MODEL_RATE_HZ = 48_000  # BioLingual's preprocessor


def build_biolingual_shape(out: Path, seed: int = 0) -> Path:
    """``ClapModel(ClapConfig())`` at random init + BioLingual's feature extractor, as ``save_pretrained``."""
    import torch
    from transformers import ClapConfig, ClapModel

    from songsight.sim.tiny_models import TinyClapSpec, build_tiny_clap

    if (out / "preprocessor_config.json").is_file():
        return out
    torch.manual_seed(seed)
    model = ClapModel(ClapConfig()).eval()
    # A spec only to get the feature extractor BioLingual ships; the model itself is the default config.
    spec = TinyClapSpec(
        sample_rate_hz=MODEL_RATE_HZ,
        window_s=10,
        n_mels=64,
        n_fft=1024,
        hop_length=480,
        frequency_min_hz=50.0,
        frequency_max_hz=14_000.0,
        padding="repeatpad",
    )
    build_tiny_clap(out, spec, model=model)
    # The helper's spec file would describe a tiny model, not this one.
    (out / "songsight_tiny_spec.json").unlink(missing_ok=True)
    return out


def build_bioclip2_shape(out: Path, seed: int = 0) -> Path:
    """open_clip ``ViT-L-14`` at random init in BioCLIP-2's Hub layout (config JSON + safetensors)."""
    import open_clip
    import torch

    from songsight.sim.tiny_models import TinyClipSpec, build_tiny_open_clip, tiny_open_clip_config

    if (out / "open_clip_model.safetensors").is_file():
        return out
    torch.manual_seed(seed)
    model_cfg = open_clip.get_model_config("ViT-L-14")
    model = open_clip.CLIP(**model_cfg).eval()
    build_tiny_open_clip(out, model=model)
    del model
    # BioCLIP-2's preprocessing: CLIP mean/std, bicubic, shortest side to 224 then centre crop.
    cfg = {
        "model_cfg": model_cfg,
        "preprocess_cfg": tiny_open_clip_config(TinyClipSpec())["preprocess_cfg"],
    }
    (out / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    return out
