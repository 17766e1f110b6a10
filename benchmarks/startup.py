"""Start-up: from process start to the first embedding, songsight vs the loops users write.

Each path runs in a fresh Python process (nothing imported, the model files in the page cache
after the first round) and reports, on the wall clock shared with this parent, when its
imports were done, when the model was loaded and when the first file's embedding was out; the
parent counts from the moment it started the process. Paths, one file each:

- ``songsight embed audio`` / ``embed images``: the real CLI (``python -m songsight.cli``),
  timed from spawn to exit, embedding written to Parquet included;
- ``songsight audio`` / ``songsight images``: the encoder an embedding job opens
  (`songsight.encoders.runtime`, ``--runtime``: by default ONNX Runtime from the cached export,
  which the untimed first CLI run makes), called directly, with phases; ``(torch)`` the same
  with ``runtime="torch"``;
- ``naive audio``: ``ClapFeatureExtractor`` + ``ClapModel.from_pretrained`` + soundfile/soxr +
  ``get_audio_features`` (as `embed_throughput.naive_audio`);
- ``naive images``: ``open_clip.create_model_and_transforms("local-dir:...")`` +
  ``encode_image`` (what pybioclip does: it loads through the same open_clip call);
- ``pybioclip``: ``bioclip embed`` on the same folder, when pybioclip is installed.

Models are the exact architectures at random init saved in their real formats
(`embed_throughput.build_biolingual_shape` / `build_bioclip2_shape`). Rounds are interleaved
and each path's best kept; the load average is printed beside each figure.

    python benchmarks/startup.py              # 3 rounds: ~5 min on 2 cores
    python benchmarks/startup.py --rounds 1
    python benchmarks/startup.py --files 24 --rounds 1   # end to end on 24 files
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from harness.inputs import write_clips, write_photos
from harness.machine import load
from harness.models import build_bioclip2_shape, build_biolingual_shape

TARGET_FRACTION_OF_PEER = 0.5  # the issue: start-up at most half of each peer's
# End to end on 24 files, fp32: at least 1.3x the naive loop (audio), as fast as pybioclip (images).
TARGET_E2E_AUDIO = 1.3
TARGET_E2E_IMAGES = 1.0

# Each child prints one JSON line: wall-clock times (time.time()) of its phases.
# The encoder an embedding job opens (`songsight.encoders.runtime`), on the runtime asked for.
SONGSIGHT_CHILD = """
import time, json, os, sys
from songsight.encoders.runtime import {factory}
t_import = time.time()
enc = {factory}(sys.argv[1], device="cpu", precision=sys.argv[3], runtime=sys.argv[4], quiet=True)
t_load = time.time()
enc.{method}(sys.argv[2].split(os.pathsep))
print(json.dumps({{"import": t_import, "load": t_load, "first": time.time(),
                  "torch_imported": "torch" in sys.modules}}))
"""
CHILD = {
    "songsight audio": SONGSIGHT_CHILD.format(factory="open_audio_encoder", method="embed_audio"),
    "songsight images": SONGSIGHT_CHILD.format(factory="open_image_encoder", method="embed_images"),
    "naive audio": """
import time, json, os, sys
import soundfile as sf, soxr, torch
from transformers import ClapFeatureExtractor, ClapModel
t_import = time.time()
extractor = ClapFeatureExtractor.from_pretrained(sys.argv[1])
model = ClapModel.from_pretrained(sys.argv[1]).eval()
t_load = time.time()
for path in sys.argv[2].split(os.pathsep):  # one file at a time, as people write it
    audio, rate = sf.read(path, dtype="float32")
    audio = soxr.resample(audio, rate, 48000)
    with torch.inference_mode():
        inputs = extractor(audio, sampling_rate=48000, return_tensors="pt")
        model.get_audio_features(**inputs)
print(json.dumps({"import": t_import, "load": t_load, "first": time.time()}))
""",
    "naive images": """
import time, json, os, sys
import open_clip, torch
from PIL import Image
t_import = time.time()
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + sys.argv[1])
model.eval()
t_load = time.time()
for path in sys.argv[2].split(os.pathsep):
    with torch.inference_mode():
        model.encode_image(preprocess(Image.open(path).convert("RGB")).unsqueeze(0))
print(json.dumps({"import": t_import, "load": t_load, "first": time.time()}))
""",
}


def run_child(
    name: str, model: Path, items: list[Path], precision: str, runtime: str = "auto"
) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    child = CHILD[name.split(" (")[0]]
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", child, str(model), os.pathsep.join(map(str, items)), precision,
         runtime],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:]}
    phases = json.loads(proc.stdout.strip().splitlines()[-1])
    out = {k: phases[k] - t0 for k in ("import", "load", "first")}
    if "torch_imported" in phases:
        out["torch"] = phases["torch_imported"]
    return out


def run_cli(argv: list[str]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.time()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return {"first": time.time() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", default="fp32", choices=("fp32", "int8"))
    p.add_argument("--work-dir", help="keep the models and inputs here (reused when present)")
    p.add_argument("--skip", choices=("audio", "images"), help="leave one tower out")
    p.add_argument("--out", help="write every figure to this JSON file")
    p.add_argument(
        "--runtime", default="auto", choices=("auto", "torch", "onnxruntime"),
        help="the songsight paths' runtime (songsight.encoders.runtime); torch is also timed",
    )  # fmt: skip
    p.add_argument(
        "--files", type=int, default=1,
        help="files each path embeds (1: start-up; 24: the issue's end-to-end comparison)",
    )  # fmt: skip
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="songsight-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    audio_model, image_model = build_biolingual_shape(work / "biolingual"), None
    clips = write_clips(work / f"audio{args.files}", args.files)
    photos = write_photos(work / f"images{args.files}", args.files)
    if args.skip != "images":
        image_model = build_bioclip2_shape(work / "bioclip2")
    cli = [sys.executable, "-m", "songsight.cli", "embed"]
    paths: dict[str, object] = {}
    towers = (("audio", clips, "--audio-model", audio_model, "a.parquet"),
              ("images", photos, "--image-model", image_model, "i.parquet"))  # fmt: skip
    for kind, items, flag, model, out in towers:
        if args.skip == kind:
            continue
        options = [flag, str(model), "--device", "cpu", "--precision", args.precision,
                   "--runtime", args.runtime, "--out", str(work / out), "--overwrite", "--quiet"]  # fmt: skip
        argv = cli + [kind, *map(str, items)] + options
        # Untimed, on one file: a first run exports the tower for ONNX Runtime once (not
        # start-up); with the export cached it costs one start.
        subprocess.run(cli + [kind, str(items[0])] + options, capture_output=True, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
        paths[f"songsight embed {kind} (CLI)"] = partial(run_cli, argv)
        paths[f"songsight {kind}"] = partial(run_child, f"songsight {kind}", model, items,
                                             args.precision, args.runtime)  # fmt: skip
        if args.runtime != "torch":
            paths[f"songsight {kind} (torch)"] = partial(
                run_child, f"songsight {kind}", model, items, args.precision, "torch"
            )  # fmt: skip
        paths[f"naive {kind}"] = partial(run_child, f"naive {kind}", model, items, "fp32")
    if args.skip != "images":
        # pybioclip's script sits beside this interpreter when it is installed in its venv.
        here = str(Path(sys.executable).parent)
        bioclip = shutil.which("bioclip", path=here + os.pathsep + os.environ.get("PATH", ""))
        if bioclip:
            paths["pybioclip bioclip embed"] = lambda: run_cli(
                [bioclip, "embed", "--device", "cpu", "--model", f"local-dir:{image_model}",
                 "--batch-size", "8", "--output", str(work / "pybioclip.json"),
                 *map(str, photos)]
            )  # fmt: skip
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name, fn in paths.items():
            r = fn()
            r["load_avg"] = load()
            if "error" in r:
                best.setdefault(name, r)  # a success in another round is kept
            elif r["first"] < best.get(name, {}).get("first", float("inf")):
                best[name] = r
    what = "first embedding" if args.files == 1 else f"{args.files} files embedded"
    print(f"\nprocess start -> {what}, best of {args.rounds} (seconds, {args.precision})")
    for name, r in best.items():
        if "error" in r:
            print(f"  {name:<30} FAILED: {r['error']}  ({r['load_avg']})")
            continue
        phases = (
            f"  (imports {r['import']:.1f}, model loaded {r['load']:.1f}"
            + (", torch imported" if r.get("torch") else ", no torch" if "torch" in r else "")
            + ")"
            if "load" in r
            else ""
        )
        print(f"  {name:<30} {r['first']:6.1f} s{phases}  ({r['load_avg']})")
    if args.files == 1:  # each peer against its like: a loop against a loop, a CLI against a CLI
        pairs = [("songsight audio", "naive audio"), ("songsight images", "naive images"),
                 ("songsight embed images (CLI)", "pybioclip bioclip embed")]  # fmt: skip
        for own_name, peer_name in pairs:
            own, peer = best.get(own_name), best.get(peer_name)
            if own and peer and "first" in own and "first" in peer:
                ratio = own["first"] / peer["first"]
                verdict = "met" if ratio <= TARGET_FRACTION_OF_PEER else "NOT met"
                print(f"  {own_name} / {peer_name} = {ratio:.2f} (target <= "
                      f"{TARGET_FRACTION_OF_PEER}: {verdict})")  # fmt: skip
    else:  # the end-to-end targets: the CLI against each tower's peer
        for kind, peer_name, target in (("audio", "naive audio", TARGET_E2E_AUDIO),
                                        ("images", "pybioclip bioclip embed", TARGET_E2E_IMAGES)):  # fmt: skip
            own, peer = best.get(f"songsight embed {kind} (CLI)"), best.get(peer_name)
            if own and peer and "first" in own and "first" in peer:
                speedup = peer["first"] / own["first"]
                verdict = "met" if speedup >= target else "NOT met"
                print(f"  {kind}: {peer_name} / songsight embed {kind} = x{speedup:.2f} "
                      f"(target >= {target}: {verdict})")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(best, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
