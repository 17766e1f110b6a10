"""The exported CLAP audio tower with the model's own bicubic Resize against the gathered taps.

`songsight.encoders.ort_cache.clap_audio_tower` stretches a clip's 1,001 log-mel frames to
HTSAT's 1,024 with 4 gathered taps a step before the model (`time_stretch_taps`), where the
model itself calls ``F.interpolate(mode="bicubic")``, which ONNX Runtime runs as a cubic Resize.
This script exports both forms of the exact BioLingual architecture at random init
(``ClapModel(ClapConfig())``, `harness.models`), makes each one's product builds (fp32:
ONNX Runtime's extended optimisations; int8: `quantize_onnx_int8` then the same), and times the
four in one process on ONNX Runtime, interleaved over ``--rounds`` (best kept), as the slope
between ``k`` and ``3k`` batches of random features; printed with the load average, the max
cosine of each embedding to the Resize form's fp32 one and the int8 / fp32 ratio of each form.

    python benchmarks/audio_tower.py                 # batch 8, k 1, 3 rounds: ~6 min on 2 cores
    python benchmarks/audio_tower.py --quick         # tiny models: a smoke run of the script
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

import numpy as np

from harness.graphs import product_graphs
from harness.machine import load
from harness.report import work_folder
from harness.timing import interleaved_slopes


def build(model, shape: tuple, taps: bool, folder: Path) -> dict[str, Path]:
    """The fp32 and int8 graphs of one form (``taps``: the time stretch before the model;
    else the model's own interpolate), as the product's cache holds them."""
    import torch

    from songsight.encoders.ort_cache import clap_audio_tower, export_onnx, quiet_export

    folder.mkdir(parents=True, exist_ok=True)
    tower = clap_audio_tower(model, shape if taps else None)
    with quiet_export():
        export_onnx(tower, torch.zeros(2, *shape), folder / "raw.onnx")
    return product_graphs(folder / "raw.onnx")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--k", type=int, default=1, help="batches of the short run (the long: 3k)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keep", default=None, help="keep the models and graphs in this folder")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also ONNX Runtime's kernel profile of each graph: time per operator type over "
        "3 batches (the resampling's share: Resize, or Gather + Mul + ReduceSum)",
    )
    p.add_argument("--quick", action="store_true", help="tiny models, 1 round")
    args = p.parse_args(argv)

    import onnxruntime as ort
    from transformers import ClapModel

    from songsight.encoders.ort_cache import new_session

    with work_folder(args.keep, "songsight-audio-tower-") as work:
        if args.quick:
            from songsight.testing import build_tiny_models

            model_dir, args.rounds = build_tiny_models(work / "tiny")[0], 1
        else:
            from harness.models import build_biolingual_shape

            model_dir = build_biolingual_shape(work / "biolingual")
        model = ClapModel.from_pretrained(model_dir).eval()
        enc = model.audio_model.audio_encoder
        # What the feature extractor gives the tower: 10 s at 48 kHz, hop 480 -> 1,001 frames.
        from transformers import ClapFeatureExtractor

        fe = ClapFeatureExtractor.from_pretrained(model_dir)
        frames = fe.nb_max_samples // fe.hop_length + 1
        shape = (1, frames, int(fe.feature_size))
        width = int(enc.spec_size * enc.freq_ratio)
        print(
            f"features {shape}, HTSAT input {width} frames; onnxruntime {ort.__version__}, "
            f"{args.threads} threads, batch {args.batch_size}, slope between {args.k} and "
            f"{3 * args.k} batches, best of {args.rounds}",
            flush=True,
        )
        graphs = {}
        for form in ("resize", "taps"):
            t0 = time.perf_counter()
            for precision, path in build(model, shape, form == "taps", work / form).items():
                graphs[f"{form} {precision}"] = path
            print(f"  built {form}: {time.perf_counter() - t0:.1f} s  ({load()})", flush=True)
        del model
        sessions = {name: new_session(path, args.threads, optimised=True) for name, path in graphs.items()}  # fmt: skip
        rng = np.random.default_rng(0)
        x = rng.standard_normal((args.batch_size, *shape)).astype(np.float32)
        outs = {n: s.run(None, {s.get_inputs()[0].name: x})[0] for n, s in sessions.items()}
        runs = {n: partial(s.run, None, {s.get_inputs()[0].name: x}) for n, s in sessions.items()}
        per_batch = interleaved_slopes(runs, args.k, args.rounds)
        per_clip = {n: t / args.batch_size for n, t in per_batch.items()}
        ref = outs["resize fp32"] / np.linalg.norm(outs["resize fp32"], axis=1, keepdims=True)
        for name in sessions:
            precision = name.split()[1]
            got = outs[name] / np.linalg.norm(outs[name], axis=1, keepdims=True)
            print(
                f"  {name:12s} {per_clip[name] * 1e3:7.1f} ms a clip  "
                f"x{per_clip[f'resize {precision}'] / per_clip[name]:.2f} over resize {precision}  "
                f"cosine to resize fp32 min {float((got * ref).sum(1).min()):.6f}  ({load()})",
                flush=True,
            )
        for form in ("resize", "taps"):
            ratio = per_clip[f"{form} fp32"] / per_clip[f"{form} int8"]
            print(f"  {form}: int8 x{ratio:.2f} over fp32", flush=True)
        if args.profile:
            for name, path in graphs.items():
                print(f"  {name}: {kernel_profile(path, x, args.threads, work / 'profiles')}")


def kernel_profile(path: Path, x: np.ndarray, threads: int, folder: Path) -> str:
    """Kernel time per operator type (ms a batch, mean of 3 runs after a warm-up run), the
    resampling's operators and every type over 3% of the total, the largest first."""
    import json

    import onnxruntime as ort

    folder.mkdir(parents=True, exist_ok=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.enable_profiling, options.profile_file_prefix = True, str(folder / path.parent.name)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    for _ in range(4):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    per_op: dict[str, float] = {}
    for e in events:  # kernels of the last 3 runs (the first warms up)
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= runs[1]:
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1e3 / 3
    total = sum(per_op.values())
    top = sorted(per_op.items(), key=lambda kv: -kv[1])
    shown = [f"{op} {ms:.1f} ({100 * ms / total:.1f}%)" for op, ms in top if op in _RESAMPLING or ms >= 0.03 * total]  # fmt: skip
    return f"kernels {total:.0f} ms a batch: " + ", ".join(shown)


_RESAMPLING = ("Resize", "Gather", "ReduceSum")


if __name__ == "__main__":
    main()
