"""Ways of embedding files, each a timed `Runner`: songsight's file jobs and the per-file loops
users write today, and the peak memory of a songsight job in a fresh process.

Runners load their model and run one untimed warm-up at construction; ``run()`` embeds every
file and returns (N, D) vectors in file order, so paths can be checked against each other
(`max_cosine_gap`, `row_cosines`).
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from .memory import reset_peak, status_kib
from .models import MODEL_RATE_HZ
from .timing import Runner, count_flops, param_bytes


def vectors_in_order(store, files) -> np.ndarray:
    """The store's vectors in the order of ``files`` (a job writes them in its own order)."""
    from songsight.index.store import load_embeddings

    meta, vectors, _ = load_embeddings(store)
    by_path = dict(zip(meta["path"], vectors, strict=True))
    return np.stack([by_path[str(f)] for f in files])


def songsight_audio(
    files: list[Path], model_dir: Path, work: Path, precision: str, device: str, batch_size: int
) -> Runner:
    """``embed_audio_files`` into a Parquet store, read back for the equality check."""
    from songsight.encoders.biolingual import BioLingualEncoder
    from songsight.jobs.embed import embed_audio_files

    enc = BioLingualEncoder(model_dir, device=device, precision=precision, batch_size=batch_size)
    # One full batch untimed: bf16 kernels are generated per shape on first use, and a long
    # job runs full batches.
    warmup = work / "warmup.parquet"
    embed_audio_files(files[:batch_size], warmup, enc, overwrite=True, progress=False)
    out = work / f"audio_{precision}.parquet"

    def run() -> np.ndarray:
        embed_audio_files(files, out, enc, overwrite=True, progress=False)
        return vectors_in_order(out, files)

    silence = enc.features([np.zeros(enc.features.max_samples)], device)
    info = {
        "flops_per_item": count_flops(enc._embed_features, silence),
        "model_bytes": param_bytes(enc.model),
    }
    return Runner(run, min(batch_size, len(files)), info)


def naive_audio(files: list[Path], model_dir: Path, device: str) -> Runner:
    """Per file: soundfile.read -> soxr to 48 kHz -> ClapFeatureExtractor -> get_audio_features."""
    import soundfile as sf
    import soxr
    import torch
    from transformers import ClapFeatureExtractor, ClapModel

    extractor = ClapFeatureExtractor.from_pretrained(model_dir)
    model = ClapModel.from_pretrained(model_dir).eval().to(device)

    def embed(paths) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for p in paths:
                audio, rate_hz = sf.read(p, dtype="float32")
                audio = soxr.resample(audio, rate_hz, MODEL_RATE_HZ)
                inputs = extractor(audio, sampling_rate=MODEL_RATE_HZ, return_tensors="pt")
                emb = model.get_audio_features(**inputs.to(device)).pooler_output
                out.append(emb[0].float().cpu().numpy())
        return np.stack(out)

    embed(files[:2])
    return Runner(lambda: embed(files), 1)


def songsight_images(
    files: list[Path], model_dir: Path, work: Path, precision: str, device: str, batch_size: int
) -> Runner:
    """``embed_image_files`` into a Parquet store, read back for the equality check."""
    import torch

    from songsight.encoders.bioclip import BioCLIPEncoder
    from songsight.jobs.embed import embed_image_files

    enc = BioCLIPEncoder(model_dir, device=device, precision=precision, batch_size=batch_size)
    embed_image_files(files[:1], work / "warmup.parquet", enc, overwrite=True, progress=False)
    out = work / f"images_{precision}.parquet"

    def run() -> np.ndarray:
        embed_image_files(files, out, enc, overwrite=True, progress=False)
        return vectors_in_order(out, files)

    # bf16 casts the tower's weights (no autocast), so the input must match them.
    weight_dtype = next(enc._model.parameters()).dtype
    blank = torch.zeros(1, 3, 224, 224, device=device, dtype=weight_dtype)
    info = {
        "flops_per_item": count_flops(enc._model.encode_image, blank),
        "model_bytes": param_bytes(enc._model),
    }
    return Runner(run, min(batch_size, len(files)), info)


def naive_images(files: list[Path], model_dir: Path, device: str) -> Runner:
    """Per image: PIL.Image.open -> open_clip preprocess -> encode_image at batch 1."""
    import open_clip
    import torch
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(
        f"local-dir:{model_dir}", device=device
    )
    model.eval()

    def embed(paths) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for p in paths:
                x = preprocess(Image.open(p)).unsqueeze(0).to(device)
                out.append(model.encode_image(x)[0].float().cpu().numpy())
        return np.stack(out)

    embed(files[:1])
    return Runner(lambda: embed(files), 1)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) cosine of each row of ``a`` to the same row of ``b``."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def max_cosine_gap(a: np.ndarray, b: np.ndarray) -> float:
    """max over rows of 1 - cos(a_i, b_i): both paths must compute the same embeddings."""
    return float(np.max(1.0 - row_cosines(a, b)))


# --- memory: each job in a fresh process ----------------------------------------------------------
def run_memory_child(
    kind: str, model_dir: str, list_file: str, out: str, batch_size: int, device: str
) -> None:
    """In a subprocess: load the encoder, reset the RSS high-water mark, run one job, print JSON.

    Peaks come from /proc (VmHWM), not ``getrusage``: a child's ``ru_maxrss`` keeps the
    high-water mark of the parent's memory image it was forked from (kept across exec), so
    every child would report the benchmark process's own multi-GB peak.
    """
    from songsight.jobs.embed import embed_audio_files, embed_image_files

    files = Path(list_file).read_text().split("\n")
    if kind == "audio":
        from songsight.encoders.biolingual import BioLingualEncoder

        enc = BioLingualEncoder(model_dir, device=device, precision="fp32", batch_size=batch_size)
    else:
        from songsight.encoders.bioclip import BioCLIPEncoder

        enc = BioCLIPEncoder(model_dir, device=device, precision="fp32", batch_size=batch_size)
    gc.collect()
    loaded_kib, load_peak_kib = status_kib("VmRSS"), status_kib("VmHWM")
    job_peak_known = reset_peak()
    job = embed_audio_files if kind == "audio" else embed_image_files
    job(files, out, enc, overwrite=True, progress=False)
    end_peak_kib = status_kib("VmHWM")
    print(
        json.dumps(
            {
                "n_files": len(files),
                "rss_loaded_kib": loaded_kib,
                "job_peak_kib": end_peak_kib if job_peak_known else None,
                "peak_kib": max(load_peak_kib, end_peak_kib),
            }
        )
    )


def measure_memory(
    script: str,
    kind: str,
    model_dir: Path,
    files: list[Path],
    work: Path,
    batch_size: int,
    device: str,
) -> dict:
    """Run ``script --memory-child ...`` (whose main calls `run_memory_child`) in a fresh process
    and return what it printed: RSS after loading, the job's peak and the process's peak."""
    list_file = work / f"{kind}_{len(files)}.txt"
    list_file.write_text("\n".join(map(str, files)))
    cmd = [
        sys.executable,
        script,
        "--memory-child",
        kind,
        str(model_dir),
        str(list_file),
        str(work / f"mem_{kind}_{len(files)}.parquet"),
        str(batch_size),
        "--device",
        device,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
