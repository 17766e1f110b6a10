"""Every job on the model factory: the CLI commands a user runs, timed side by side, fresh processes.

Issue 19's comparisons, each pair interleaved round by round in one run (best of ``--rounds``):

- ``index build`` of N photos against ``embed images`` of the same photos (both embed every
  photo through `songsight.encoders.runtime`; the build also hashes, dedupes and writes the
  gallery);
- ``search CLIP --gallery G --model DISTILLED`` against ``embed audio CLIP`` (one 10 s clip),
  and whether the search process imported torch (``SONGSIGHT_REPORT_MODULES``-free: the child
  is run under ``python -X importtime`` and its log read);
- ``embed audio`` of 8 clips in ``--precision int8`` against fp32 (end to end, the start
  included), and the steady rate of each as the slope between 8 and ``--clips`` clips;
- in this process, the numpy log-mels both precisions compute before their tower
  (`songsight.encoders.ort_audio.NumpyLogMel`, float64 STFT), per 10 s window as the slope
  between 8 and 32 windows: the share of a clip int8 cannot speed up.

Models are the exact architectures at random init (`harness.models`: ``ClapModel(ClapConfig())``
for BioLingual, open_clip ``ViT-L-14`` for BioCLIP-2); the distilled checkpoint is that CLAP with
a linear 512 -> 768 head, saved as `songsight.encoders.distilled.save_checkpoint` writes one.
Speed does not depend on the weights. An untimed first round exports each tower to ONNX
Runtime once (songsight's cache) and caches the gallery's species text, as a user's first run
does. The load average is printed beside every figure: read them on a quiet machine.

    python benchmarks/fast_runtime.py                # 12 photos, 8 and 24 clips, 2 rounds: ~15 min
    python benchmarks/fast_runtime.py --quick        # tiny models: a smoke run of the script
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness.inputs import _world, write_clips, write_photos
from harness.machine import load
from harness.report import emit, work_folder

CLI = [sys.executable, "-m", "songsight.cli"]


def run_cli(args: list[str], env: dict) -> tuple[float, str]:
    """(wall seconds from spawn to exit, stderr) of one songsight command; a failure raises."""
    t0 = time.perf_counter()
    proc = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"songsight {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")  # fmt: skip
    return wall, proc.stderr


def imported_torch(args: list[str], env: dict) -> bool:
    """Whether a fresh ``songsight`` process running ``args`` imports torch (-X importtime)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "songsight.cli", *args],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    return any(line.rstrip().endswith("| torch") for line in proc.stderr.splitlines())


def log_mel_s_per_window(audio: Path, rounds: int) -> float:
    """Seconds a 10 s window of the model's log-mels costs (best of ``rounds``, slope between 8
    and 32 windows, this process's threads)."""
    import numpy as np
    from transformers import ClapFeatureExtractor

    from songsight.encoders.biolingual import ClapFeatures
    from songsight.encoders.ort_audio import NumpyLogMel

    torch_feats = ClapFeatures(ClapFeatureExtractor.from_pretrained(audio), fused_model=False)
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(torch_feats.max_samples).astype(np.float32) for _ in range(32)]  # fmt: skip
    features = NumpyLogMel(torch_feats.describe(), torch_feats.mel_filters.numpy())
    features(waves[:2])  # warm
    best = {}
    for _ in range(rounds):
        for n in (8, 32):
            t0 = time.perf_counter()
            features(waves[:n])
            best[n] = min(best.get(n, np.inf), time.perf_counter() - t0)
    return (best[32] - best[8]) / 24


def make_models(work: Path, quick: bool) -> tuple[Path, Path, Path]:
    """(BioLingual-shaped folder, BioCLIP-2-shaped folder, distilled checkpoint)."""
    import torch
    from transformers import ClapFeatureExtractor

    from songsight.encoders.biolingual import load_clap
    from songsight.encoders.distilled import save_checkpoint
    from songsight.encoders.heads import build_head
    from songsight.encoders.loading import resolve_model

    if quick:
        from songsight.testing import build_tiny_models

        audio, image = build_tiny_models(work / "tiny")
    else:
        from harness.models import build_bioclip2_shape, build_biolingual_shape

        audio = build_biolingual_shape(work / "biolingual")
        image = build_bioclip2_shape(work / "bioclip2")
    ckpt = work / "distilled"
    if not (ckpt / "head.safetensors").is_file():
        clap, _, tokenizer, resolved = load_clap(audio)
        image_res = resolve_model(str(image), "image")
        import json

        import open_clip  # noqa: F401 - the image width, from the model's config

        cfg = json.loads((Path(image) / "open_clip_config.json").read_text())["model_cfg"]
        torch.manual_seed(0)
        in_dim, out_dim = clap.config.projection_dim, cfg["embed_dim"]
        meta = {
            "head": {"in_dim": in_dim, "out_dim": out_dim, "kind": "linear"},
            "image_model": image_res.provenance(),
            "audio_model": resolved.provenance(),
            "train_labels": list(range(12)),
            "logit_scale": 20.0,
            "readout": {"method": "distilled"},
        }
        extractor = ClapFeatureExtractor.from_pretrained(audio)
        save_checkpoint(ckpt, clap, extractor, tokenizer, build_head(in_dim, out_dim), meta)
    return Path(audio), Path(image), ckpt


def manifest(photos: list[Path], out: Path) -> Path:
    """The photos labelled with the benchmark world's species (a gallery needs names)."""
    import pandas as pd

    species = _world(0).species
    rows = [{"path": str(p), "species": species[i % len(species)].scientific_name} for i, p in enumerate(photos)]  # fmt: skip
    pd.DataFrame(rows).to_csv(out, index=False)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=12)
    ap.add_argument("--clips", type=int, default=24, help="the larger clip count of the int8 slope")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny models: checks the script only")
    ap.add_argument("--keep", default=None, help="keep the work folder (models, exports) here")
    ap.add_argument("--out", default=None, help="also write every figure as JSON")
    args = ap.parse_args(argv)

    with work_folder(args.keep, "songsight-fast-runtime-") as work:
        env = {**os.environ, "SONGSIGHT_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1"}
        audio, image, ckpt = make_models(work, args.quick)
        photos = write_photos(work / "photos", args.photos)
        clips = write_clips(work / "clips", max(args.clips, 8))
        table = manifest(photos, work / "photos.csv")
        one = str(clips[0])
        gallery = work / "gallery"
        for old in (gallery, work / "out"):  # a kept work folder: models and exports only
            shutil.rmtree(old, ignore_errors=True)
        run_cli(["index", "build", "--gallery", str(gallery), "--manifest", str(table),
                 "--image-model", str(image), "--quiet"], env)  # fmt: skip

        def cmd(name: str, r: int) -> list[str]:
            out = work / "out" / f"{name}-{r}"
            out.parent.mkdir(exist_ok=True)
            return {
                "embed images": ["embed", "images", *map(str, photos), "--image-model", str(image), "--out", f"{out}.parquet", "--quiet"],  # fmt: skip
                "index build": ["index", "build", "--gallery", str(out), "--manifest", str(table), "--image-model", str(image), "--quiet"],  # fmt: skip
                "embed audio": ["embed", "audio", one, "--audio-model", str(audio), "--out", f"{out}.parquet", "--quiet"],  # fmt: skip
                "search": ["search", one, "--gallery", str(gallery), "--model", str(ckpt), "--out", f"{out}.csv", "--quiet"],  # fmt: skip
                "fp32 8 clips": ["embed", "audio", *map(str, clips[:8]), "--audio-model", str(audio), "--out", f"{out}.parquet", "--quiet"],  # fmt: skip
                "int8 8 clips": ["embed", "audio", *map(str, clips[:8]), "--audio-model", str(audio), "--precision", "int8", "--out", f"{out}.parquet", "--quiet"],  # fmt: skip
                f"fp32 {args.clips} clips": ["embed", "audio", *map(str, clips[: args.clips]), "--audio-model", str(audio), "--out", f"{out}.parquet", "--quiet"],  # fmt: skip
                f"int8 {args.clips} clips": ["embed", "audio", *map(str, clips[: args.clips]), "--audio-model", str(audio), "--precision", "int8", "--out", f"{out}.parquet", "--quiet"],  # fmt: skip
            }[name]

        names = ["embed images", "index build", "embed audio", "search", "fp32 8 clips",
                 "int8 8 clips", f"fp32 {args.clips} clips", f"int8 {args.clips} clips"]  # fmt: skip
        print(f"# untimed first round (exports, species text cache) | {load()}", flush=True)
        for name in names:
            run_cli(cmd(name, -1), env)
        best: dict[str, float] = {}
        for r in range(args.rounds):
            for name in names:
                wall, _ = run_cli(cmd(name, r), env)
                best[name] = min(best.get(name, wall), wall)
                print(f"round {r}: {name:<16} {wall:7.2f} s | {load()}", flush=True)
        torch_in_search = imported_torch(cmd("search", 99), env)
        log_mels = log_mel_s_per_window(audio, max(args.rounds, 3))
        n = args.clips
        slope = {p: (best[f"{p} {n} clips"] - best[f"{p} 8 clips"]) / (n - 8) for p in ("fp32", "int8")}  # fmt: skip
        result = {
            "best_s": best,
            "index_build_over_embed_images": best["index build"] / best["embed images"],
            "search_over_embed_audio": best["search"] / best["embed audio"],
            "search_imports_torch": torch_in_search,
            "int8_over_fp32_8_clips": best["int8 8 clips"] / best["fp32 8 clips"],
            "steady_s_per_clip": slope,
            "steady_int8_speedup": slope["fp32"] / slope["int8"] if slope["int8"] > 0 else None,
            "log_mel_s_per_window": log_mels,
            "models": "tiny" if args.quick else "exact architectures at random init",
            "load": load(),
        }
        report = "\n".join([
            f"models: {result['models']}; {args.photos} photos, clips 8 and {n}; best of {args.rounds} rounds | {load()}",  # fmt: skip
            f"index build / embed images ({args.photos} photos): {best['index build']:.2f} / {best['embed images']:.2f} s = x{result['index_build_over_embed_images']:.2f} (target <= 1.05)",  # fmt: skip
            f"search --model / embed audio (one clip): {best['search']:.2f} / {best['embed audio']:.2f} s = x{result['search_over_embed_audio']:.2f} (target <= 2.5); search imported torch: {torch_in_search}",  # fmt: skip
            f"int8 / fp32, 8 clips end to end: {best['int8 8 clips']:.2f} / {best['fp32 8 clips']:.2f} s = x{result['int8_over_fp32_8_clips']:.2f} (target <= 1.0)",  # fmt: skip
            f"steady s/clip (slope 8 -> {n}): fp32 {slope['fp32']:.3f}, int8 {slope['int8']:.3f}: int8 x{result['steady_int8_speedup'] or float('nan'):.2f} (target >= 1.6)",  # fmt: skip
            f"of which log-mels (both precisions, slope 8 -> 32 windows, in process): {log_mels:.4f} s/window | {load()}",  # fmt: skip
        ])
        emit(report, result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
