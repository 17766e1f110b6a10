"""torch.profiler tables of one batch of each model, and why bf16 is slow for ViT-L on CPU."""

from __future__ import annotations

import gc
import time
from pathlib import Path

from .timing import sync


def profile_tables(
    audio_dir: Path,
    image_dir: Path,
    clips: list[Path],
    photos: list[Path],
    device: str,
    audio_batch: int,
    image_batch: int,
    rows: int = 12,
) -> tuple[dict[str, str], dict[str, float]]:
    """Top ops by self time (grouped by input shapes) for one HTSAT batch (fp32, bf16), the log-mel
    features of that batch, one ViT-L batch (fp32) and one ViT-L block under bf16 autocast.

    The last shows why songsight's ``precision="bf16"`` is slow for images on CPU: under
    autocast ``nn.MultiheadAttention`` leaves its fused fast path, its slow path feeds ``linear``
    a transposed (tokens, batch, width) bf16 view, and CPU matmul then broadcasts the weight
    over all 257 tokens (one [257, 1024, 3072] ``copy_`` per block). Returns the tables and
    the block's wall time in ms for fp32, bf16 autocast and bf16 weights without autocast.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if device.startswith("cuda") else []
    )
    sort = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"

    def table(fn) -> str:
        fn()  # warm-up outside the profile
        with profile(activities=activities, record_shapes=True) as prof:
            fn()
            sync(device)
        return prof.key_averages(group_by_input_shape=True).table(
            sort_by=sort, row_limit=rows, max_name_column_width=30, max_shapes_column_width=64
        )

    tables = _profile_audio(table, audio_dir, clips, device, audio_batch)
    gc.collect()
    image_tables, block_ms = _profile_images(table, image_dir, photos, device, image_batch)
    gc.collect()
    return {**tables, **image_tables}, block_ms


def _profile_audio(
    table, audio_dir: Path, clips: list[Path], device: str, audio_batch: int
) -> dict[str, str]:
    import torch

    from songsight.encoders.biolingual import BioLingualEncoder
    from songsight.inputs.audio import load_audio

    tables = {}
    audio_enc = BioLingualEncoder(audio_dir, device=device, precision="fp32")
    waves = [
        load_audio(clips[i % len(clips)], audio_enc.sample_rate_hz).waveform
        for i in range(audio_batch)
    ]
    feats = audio_enc.features(waves, device)
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):

        def htsat(dtype=dtype):
            with (
                torch.inference_mode(),
                torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None),
            ):
                audio_enc._embed_features(feats)

        tables[f"HTSAT batch {audio_batch} {name}"] = table(htsat)
    tables[f"ClapFeatures (log-mel) batch {audio_batch}"] = table(
        lambda: audio_enc.features(waves, device)
    )
    return tables


def _profile_images(
    table, image_dir: Path, photos: list[Path], device: str, image_batch: int
) -> tuple[dict[str, str], dict[str, float]]:
    import copy

    import torch

    from songsight.encoders.bioclip import BioCLIPEncoder

    tables = {}
    image_enc = BioCLIPEncoder(image_dir, device=device, precision="fp32")
    x = torch.stack([image_enc._prepare(photos[i % len(photos)]) for i in range(image_batch)]).to(
        device
    )

    def vit():
        with torch.inference_mode():
            image_enc._model.encode_image(x)

    tables[f"ViT-L/14 batch {image_batch} fp32"] = table(vit)

    # Block 0 alone, fed what it gets inside encode_image under bf16 autocast: a bf16 (B, 257, 1024).
    block = image_enc._model.visual.transformer.resblocks[0]
    tokens = torch.randn(image_batch, 257, block.ln_1.normalized_shape[0], device=device)

    def block_autocast():
        with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
            block(tokens.to(torch.bfloat16))

    tables[
        f"ViT-L/14 one block, batch {image_batch}, bf16 autocast (songsight precision='bf16')"
    ] = table(block_autocast)
    block_bf16 = copy.deepcopy(block).to(torch.bfloat16)
    block_ms = {}
    for name, fn in (
        ("fp32", lambda: block(tokens)),
        ("bf16 autocast", block_autocast),
        ("bf16 weights, no autocast", lambda: block_bf16(tokens.to(torch.bfloat16))),
    ):
        with torch.inference_mode():
            fn()
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
        block_ms[name] = 1e3 * (time.perf_counter() - t0)
    return tables, block_ms
