"""int8 engines side by side on CPU, per tower: torch dynamic int8 vs ONNX Runtime vs OpenVINO.

The towers are the exact published architectures at random init, built as
`embed_throughput.py` builds them and loaded through songsight's encoders: BioLingual's HTSAT
audio tower + projection (``ClapModel(ClapConfig())``, log-mel features of 10 s 22.05 kHz WAVs
from disk) and BioCLIP-2's ViT-L/14 visual tower (open_clip ``ViT-L-14``, ~500x375 JPEGs from
disk through the model's transform). Only the tower's forward is timed, on tensors prepared
beforehand, so decoding and preprocessing (the same for every engine) do not hide the
difference between engines.

Engines, each built from the same fp32 tower:

- ``torch fp32``: songsight's fp32 path.
- ``torch int8``: ``songsight.encoders.int8.quantize_int8`` (dynamic, ``nn.Linear`` only, after
  ``nn.MultiheadAttention`` is unpacked into ``nn.Linear``): songsight's image engine.
- ``ort fp32`` / ``ort int8``: ``torch.onnx.export`` (static batch; songsight's own export,
  ``songsight.encoders.int8_onnx``, has a dynamic one), then
  ``onnxruntime.quantization.quantize_dynamic`` (int8 weights per channel, uint8 activations
  quantised per batch: every MatMul with a constant weight, attention in-projections
  included): ``ort int8`` is songsight's audio engine.
- ``ort int8 all-matmul``: ``ort int8`` with the MatMuls between two activations (attention
  scores and their weighted sum) quantised too (``MatMulConstBOnly`` off).
- ``ort int8 static``: ``quantize_static`` in QDQ form (int8 weights per channel, uint8
  activations with ranges calibrated beforehand on the benchmark's own inputs, after ONNX
  Runtime's ``quant_pre_process``): no per-batch quantisation at run time.
- ``openvino fp32`` / ``openvino int8``: the same ONNX file read by OpenVINO, compiled for CPU
  with f32 inference precision (it would otherwise pick bf16 on CPUs that have it);
  int8 is ``nncf.compress_weights`` (int8 weights per channel) with the CPU plugin's dynamic
  activation quantisation.

Printed per engine: the time to build it (export, quantise, compile), steady items/s as the
slope between two batch counts (``k`` and ``2k`` batches, so the first batch's set-up cancels;
engines interleaved over ``--rounds``, best kept),
the ratio to torch fp32, and the cosine of its embeddings to torch fp32's (median, 1st
percentile), each with the load average at that moment. A failing export or engine prints its
error in one line and the run goes on.

    python benchmarks/int8_engines.py                 # 16 clips, 8 images, batch 8: ~15 min on 2 cores
    python benchmarks/int8_engines.py --quick         # 4 clips, 2 images, batch 2
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from harness.embed_paths import row_cosines as cosines
from harness.inputs import write_clips, write_photos
from harness.machine import load
from harness.models import build_bioclip2_shape, build_biolingual_shape
from int8_quality import TARGET_MEDIAN_COS, TARGET_P1_COS, TARGET_SPEEDUP

ENGINES = (
    "torch fp32", "torch int8", "ort fp32", "ort int8", "openvino fp32", "openvino int8",
    "ort int8 all-matmul", "ort int8 static",
)  # fmt: skip


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:400]}"


# --- towers and their inputs ---------------------------------------------------------------------
def audio_tower(model_dir: Path, files: list[Path], batch_size: int):
    """(HTSAT + projection as one module, [(B, 1, frames, mels) float32 tensors])."""
    import torch

    from songsight.encoders.biolingual import BioLingualEncoder
    from songsight.inputs.audio import load_audio

    enc = BioLingualEncoder(model_dir, device="cpu", precision="fp32")

    class AudioTower(torch.nn.Module):
        def __init__(self, clap):
            super().__init__()
            self.audio_model, self.audio_projection = clap.audio_model, clap.audio_projection

        def forward(self, feats):
            return self.audio_projection(self.audio_model(input_features=feats).pooler_output)

    waves = [load_audio(f, enc.sample_rate_hz).waveform[: enc.features.max_samples] for f in files]
    batches = [
        enc.features(waves[i : i + batch_size], "cpu").float()
        for i in range(0, len(waves), batch_size)
    ]
    return AudioTower(enc.model).eval(), batches


def image_tower(model_dir: Path, files: list[Path], batch_size: int):
    """(open_clip's visual tower, [(B, 3, 224, 224) float32 tensors])."""
    import torch

    from songsight.encoders.bioclip import BioCLIPEncoder
    from songsight.inputs.images import load_image

    enc = BioCLIPEncoder(model_dir, device="cpu", precision="fp32")
    pixels = [enc.transform(load_image(f)) for f in files]
    batches = [torch.stack(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]
    return enc._model.visual.eval(), batches


# --- engines: each returns a function (B, ...) tensor -> (B, D) float32 numpy ---------------------
def torch_engine(tower, int8: bool) -> Callable:
    import torch

    from songsight.encoders.int8 import quantize_int8

    module = quantize_int8(copy.deepcopy(tower))[0] if int8 else tower

    def run(x):
        with torch.inference_mode():
            return module(x).float().numpy()

    return run


def export_onnx(tower, example, path: Path) -> str:
    """Export with the TorchScript exporter, falling back to the dynamo one; returns which."""
    import torch

    errors = []
    for dynamo in (False, True):
        try:
            with torch.inference_mode(False), torch.no_grad():
                torch.onnx.export(
                    tower, (example,), str(path), input_names=["x"], output_names=["emb"],
                    opset_version=17 if not dynamo else 18, dynamo=dynamo,
                )  # fmt: skip
            if errors:  # the first exporter failed: say why beside the one that worked
                print(f"  {path.name}: {errors[0]}", flush=True)
            return "dynamo" if dynamo else "torchscript"
        except Exception as exc:  # each exporter raises its own types
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {one_line(exc)}")
    raise RuntimeError("; ".join(errors))


def ort_engine(onnx_path: Path, int8: str, work: Path, calibration: list) -> Callable:
    """``int8``: "" (fp32), "dynamic", "all-matmul" or "static" (see the module docstring);
    ``calibration``: the input batches a static build calibrates its ranges on."""
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    path = work / f"{onnx_path.stem}_ort_int8_{int8}.onnx"
    if int8 in ("dynamic", "all-matmul"):
        quantize_dynamic(
            onnx_path, path, per_channel=True, weight_type=QuantType.QInt8,
            use_external_data_format=True,
            extra_options={"MatMulConstBOnly": int8 == "dynamic"},
        )  # fmt: skip
    elif int8 == "static":
        from onnxruntime.quantization import CalibrationDataReader
        from onnxruntime.quantization.shape_inference import quant_pre_process

        prepared = work / f"{onnx_path.stem}_prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared), save_as_external_data=True)
        name = ort.InferenceSession(str(onnx_path)).get_inputs()[0].name

        class Batches(CalibrationDataReader):
            def __init__(self):
                self.left = iter(calibration)

            def get_next(self):
                batch = next(self.left, None)
                return None if batch is None else {name: batch.numpy()}

        quantize_static(
            prepared, path, Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            use_external_data_format=True,
        )  # fmt: skip
    else:
        path = onnx_path
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0].astype(np.float32)


def openvino_engine(onnx_path: Path, int8: bool) -> Callable:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(onnx_path))
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    if int8:
        import nncf

        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM)
        # Quantise activations per batch too (weights-only int8 would dequantise to f32).
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = "32"
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    return lambda x: np.asarray(request.infer([x.numpy()])[0], np.float32).copy()


# --- timing -----------------------------------------------------------------------------------------
def steady_rate(fn: Callable, batches: list, k: int) -> tuple[float, np.ndarray]:
    """Items/s as the slope between ``k`` and ``2k`` batches (after one untimed batch), and
    the embeddings of every input from the first pass."""
    fn(batches[0])
    size = len(batches[0])

    def timed(n: int) -> tuple[float, list]:
        t0 = time.perf_counter()
        outs = [fn(batches[i % len(batches)]) for i in range(n)]
        return time.perf_counter() - t0, outs

    t_k, outs = timed(k)
    t_2k, _ = timed(2 * k)
    return k * size / max(t_2k - t_k, 1e-9), np.concatenate(outs[: len(batches)])


def build_engine(engine: str, tower, batches: list, work: Path, name: str) -> tuple[Callable, dict]:  # fmt: skip
    """The engine's function and what building it took (seconds, which exporter)."""
    example = batches[0]
    t0 = time.perf_counter()
    info: dict = {}
    if engine.startswith("torch"):
        fn = torch_engine(tower, engine.endswith("int8"))
    else:
        onnx_path = work / f"{name}.onnx"
        if not onnx_path.is_file():
            info["exporter"] = export_onnx(tower, example, onnx_path)
            info["export_s"] = time.perf_counter() - t0
        if engine.startswith("ort"):
            variant = engine.removeprefix("ort fp32").removeprefix("ort int8").strip()
            int8 = "" if engine == "ort fp32" else (variant or "dynamic")
            fn = ort_engine(onnx_path, int8, work, batches)
        else:
            fn = openvino_engine(onnx_path, engine.endswith("int8"))
    info["build_s"] = time.perf_counter() - t0
    return fn, info


def measure_tower(name: str, tower, batches: list, work: Path, k: int, engines, rounds: int):
    """Build every engine, then time them in interleaved rounds (A B C A B C) so a burst of
    load from other processes hits all alike; each engine's best round is kept."""
    rows: dict[str, dict] = {}
    fns: dict[str, Callable] = {}
    for engine in engines:
        rows[engine] = {"tower": name, "engine": engine}
        try:
            fns[engine], info = build_engine(engine, tower, batches, work, name)
            rows[engine].update(info)
        except Exception as exc:  # one engine failing must not hide the others
            rows[engine].update(error=one_line(exc), load_avg=load())
            print(format_row(rows[engine]), flush=True)
    reference = None
    for round_ in range(rounds):
        for engine, fn in fns.items():
            row = rows[engine]
            rate, emb = steady_rate(fn, batches, k)
            if round_ == 0:
                reference = emb if reference is None else reference  # torch fp32 comes first
                cos = cosines(reference, emb)
                row.update(cos_median=float(np.median(cos)), cos_p1=float(np.percentile(cos, 1)))
            if rate > row.get("rate", 0.0):
                row.update(rate=rate, load_avg=load())
    base = rows[engines[0]].get("rate")
    for engine in fns:
        rows[engine]["vs_torch_fp32"] = rows[engine]["rate"] / base
        print(format_row(rows[engine]), flush=True)
    fns.clear()
    gc.collect()
    return list(rows.values())


def format_row(r: dict) -> str:
    head = f"  {r['engine']:<14}"
    if "error" in r:
        return f"{head} FAILED: {r['error']}  ({r['load_avg']})"
    target = ""
    if r["engine"].endswith("int8"):
        ok = (r["vs_torch_fp32"] >= TARGET_SPEEDUP and r["cos_median"] >= TARGET_MEDIAN_COS
              and r["cos_p1"] >= TARGET_P1_COS)  # fmt: skip
        target = "  targets met" if ok else "  targets NOT met"
    return (
        f"{head} build {r['build_s']:6.1f} s  {r['rate']:7.2f}/s  x{r['vs_torch_fp32']:.2f}  "
        f"cos median {r['cos_median']:.5f} p1 {r['cos_p1']:.5f}{target}  ({r['load_avg']})"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--k", type=int, default=2, help="slope between k and 2k batches")
    p.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds, best kept")
    p.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    p.add_argument("--skip", choices=("audio", "images"), help="leave one tower out")
    p.add_argument("--work-dir", help="keep the models, inputs and ONNX files here")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", help="write every figure to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.clips, args.images, args.batch_size, args.k, args.rounds = 4, 2, 2, 1, 1
    engines = ["torch fp32"] + [e for e in args.engines if e != "torch fp32"]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    versions = {"torch": torch.__version__}
    for mod in ("onnxruntime", "openvino", "nncf"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception as exc:  # a missing engine is reported, not fatal
            versions[mod] = f"unavailable ({one_line(exc)})"
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="songsight-int8-engines-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{versions}, {torch.get_num_threads()} threads; work in {work}  ({load()})", flush=True)
    towers = {
        "audio": ("BioLingual HTSAT + projection", audio_tower, build_biolingual_shape,
                  "biolingual", write_clips, args.clips),
        "images": ("BioCLIP-2 ViT-L/14 visual", image_tower, build_bioclip2_shape,
                   "bioclip2", write_photos, args.images),
    }  # fmt: skip
    rows = []
    for key, (title, make, build, folder, write, n) in towers.items():
        if args.skip == key:
            continue
        n = max(args.batch_size, n - n % args.batch_size)  # whole batches: static export shape
        tower, batches = make(build(work / folder), write(work / key, n), args.batch_size)
        print(f"\n== {title}: {n} items from disk, batch {args.batch_size}, slope between "
              f"{args.k} and {2 * args.k} batches", flush=True)  # fmt: skip
        rows += measure_tower(key, tower, batches, work, args.k, engines, args.rounds)
        del tower, batches
        gc.collect()
    print("\nThe machine is shared: read each figure with the load average beside it.")
    if args.out:
        Path(args.out).write_text(json.dumps({"versions": versions, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
