"""int8 on CPU vs songsight's own fp32, per tower: steady throughput and cosine to fp32.

Both towers are the exact published architectures at random init, built, fed and timed by the
shared harness (`harness/`: the builders, runners and interleaved timing `embed_throughput.py`
uses):
BioLingual's ``ClapModel(ClapConfig())`` fed 10 s 22.05 kHz WAVs from disk, BioCLIP-2's open_clip
``ViT-L-14`` fed ~500x375 JPEGs. The int8 path is ``precision="int8"``
(`songsight.encoders.int8`: torch dynamic quantisation of every ``nn.Linear``, fbgemm/x86).

Printed per tower: items/s for fp32 and int8 (best of ``--rounds`` interleaved passes), the
ratio, the seconds the quantisation adds to loading, and the cosine of each int8 embedding to
its fp32 one (median and 1st percentile), each beside the load average at that moment. Random
weights are a fair test of speed and a rough one of quality: trained weights have outliers that
random ones lack, so rerun the cosines on the real models before relying on them.

    python benchmarks/int8_quality.py                # 16 clips, 8 images: ~6 min on 2 cores
    python benchmarks/int8_quality.py --quick        # 4 clips, 2 images
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from harness.embed_paths import row_cosines, songsight_audio, songsight_images
from harness.inputs import write_clips, write_photos
from harness.machine import load
from harness.models import build_bioclip2_shape, build_biolingual_shape
from harness.report import work_folder, write_json
from harness.timing import time_rounds

TARGET_SPEEDUP = 1.6
TARGET_MEDIAN_COS = 0.99
TARGET_P1_COS = 0.98


def tower(name, runner, files, model_dir, work, batch_size, rounds) -> dict:
    runners, load_s = {}, {}
    # An empty songsight cache in the work folder: the first int8 load quantises and caches,
    # and nothing is left in the user's own cache.
    os.environ["SONGSIGHT_CACHE"] = str(work / f"cache-{model_dir.name}")
    for precision in ("fp32", "int8"):
        t0 = time.perf_counter()
        runners[precision] = runner(files, model_dir, work, precision, "cpu", batch_size)
        load_s[precision] = time.perf_counter() - t0  # load, quantise, one warm-up batch
    t0 = time.perf_counter()
    runner(files, model_dir, work, "int8", "cpu", batch_size)  # reads the cache just written
    load_s["int8 cached"] = time.perf_counter() - t0
    timed = time_rounds(runners, len(files), rounds)
    cos = row_cosines(timed["fp32"]["embeddings"], timed["int8"]["embeddings"])
    out = {
        "tower": name,
        "n": len(files),
        "fp32_per_s": timed["fp32"]["rate"],
        "int8_per_s": timed["int8"]["rate"],
        "speedup": timed["int8"]["rate"] / timed["fp32"]["rate"],
        "cpu_share": {p: timed[p]["cpu_share"] for p in timed},
        "load_s": load_s,
        "cos_median": float(np.median(cos)),
        "cos_p1": float(np.percentile(cos, 1)),
        "cos_min": float(cos.min()),
        "load": load(),
    }
    print(format_row(out), flush=True)
    return out


def format_row(r: dict) -> str:
    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    return (
        f"\n== {r['tower']} ({r['n']} items from disk, CPU)\n"
        f"  fp32 {r['fp32_per_s']:.2f}/s, int8 {r['int8_per_s']:.2f}/s: x{r['speedup']:.2f} "
        f"(target >= {TARGET_SPEEDUP}: {verdict(r['speedup'] >= TARGET_SPEEDUP)}; cpu share "
        f"fp32 {r['cpu_share']['fp32']:.2f}, int8 {r['cpu_share']['int8']:.2f})  ({r['load']})\n"
        f"  cosine to fp32: median {r['cos_median']:.5f} (target >= {TARGET_MEDIAN_COS}: "
        f"{verdict(r['cos_median'] >= TARGET_MEDIAN_COS)}), 1st percentile {r['cos_p1']:.5f} "
        f"(target >= {TARGET_P1_COS}: {verdict(r['cos_p1'] >= TARGET_P1_COS)}), min "
        f"{r['cos_min']:.5f}\n"
        f"  load + warm-up: fp32 {r['load_s']['fp32']:.1f} s, int8 {r['load_s']['int8']:.1f} s "
        f"(quantising and caching), int8 from the cache {r['load_s']['int8 cached']:.1f} s  "
        f"({r['load']})"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--work-dir", help="keep the models and inputs here (reused when present)")
    p.add_argument("--skip", choices=("audio", "images"), help="leave one tower out")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", help="write every figure to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.clips, args.images, args.rounds = 4, 2, 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with work_folder(args.work_dir, "songsight-int8-") as work:
        results = run(args, work)
    print("\nThe machine is shared: rerun on a quiet one before quoting these figures.")
    if args.out:
        write_json(args.out, results)
    return 0


def run(args, work) -> list[dict]:
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, engine "
          f"{torch.backends.quantized.supported_engines}; work in {work}  ({load()})", flush=True)  # fmt: skip
    towers = {
        "audio": ("BioLingual audio (HTSAT-tiny)", songsight_audio, build_biolingual_shape,
                  "biolingual", write_clips, args.clips),
        "images": ("BioCLIP-2 images (ViT-L/14)", songsight_images, build_bioclip2_shape,
                   "bioclip2", write_photos, args.images),
    }  # fmt: skip
    results = []
    for key, (name, runner, build, folder, write, n) in towers.items():
        if args.skip == key:
            continue
        model = build(work / folder)
        files = write(work / key, n)
        batch_size = min(args.batch_size, n)
        results.append(tower(name, runner, files, model, work, batch_size, args.rounds))
    return results


if __name__ == "__main__":
    sys.exit(main())
