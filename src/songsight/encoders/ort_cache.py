"""fp32 towers for ONNX Runtime: exported once per model, cached with provenance, read without torch.

Why: start-up. On a CPU, `songsight embed` spent ~4 of its ~4.7 s to the first embedding
importing torch and transformers (benchmarks/README.md, ``startup.py``); ONNX Runtime imports
in ~0.1 s and runs HTSAT and ViT-L in fp32 about as fast as torch does (``int8_engines.py``).
So an fp32 job on the CPU reads a cached export and never imports torch
(`songsight.encoders.runtime` decides); the export is made once, with torch, the first time a
model is used that way.

An entry (``onnx/<key>/`` in songsight's cache, keyed by model id and path like the int8 cache,
never inside the model folder) holds for each part (``clap_audio``, ``open_clip_visual``):

- ``<part>.onnx``: the tower, features or pixels in, unnormalised embedding out, dynamic batch;
- ``<part>.npz``: arrays its torch-free preprocessing needs (the mel filter bank);
- ``<part>.json``: what it was built from (model id, revision, a digest of the model folder's
  files, this format's version) and what the torch encoder recorded (dim, preprocessing).
  Written last, so a crash never leaves a JSON naming a partial build.

Reading an entry needs json, numpy and the model folder's file stats. A stale or unreadable
entry is built again, with a log line.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from songsight.encoders.int8_cache import (
    cache_dir_for,
    mismatch,
    read_provenance,
    weights_digest,
    write_atomically,
)
from songsight.encoders.loading import ResolvedModel
from songsight.errors import one_line

log = logging.getLogger("songsight.onnx")

# Bump when the export or what the JSON records changes; 2: pre-optimised; 3: weights in .data;
# 4: CLAP's bicubic time stretch as gathered taps (`time_stretch_taps`).
FORMAT_VERSION = 4
OPSET = 17


def onnxruntime_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def session_threads() -> int:
    """Cores this process may use (what torch would take on its own)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def new_session(path: Path, threads: int, optimised: bool = False):
    """An ONNX Runtime CPU session over ``path`` on ``threads`` threads.

    ``optimised``: the file already holds ONNX Runtime's graph optimisations (`save_build`
    stores them), so only the cheap basic level runs at load. Optimising ViT-L's graph took
    most of its session's ~2.4 s at every start."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    if optimised:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def optimise_graph(src: Path, dst: Path) -> None:
    """``src`` with ONNX Runtime's extended graph optimisations (attention, layer-norm and
    GELU fusions) applied, saved to ``dst`` with its weights beside it in ``dst.name + .data``
    (a session reads those faster than weights inside the protobuf: ViT-L 1.4-2.0 s vs 2.4 s).
    Not the 'all' level: its layout changes depend on the CPU, and the cache must stay valid if
    the folder moves to another machine."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(dst)
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", f"{dst.name}.data"
    )
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
    )
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def quiet_export():
    """The exporter's progress bar (stderr) and the quantiser's notes (root logger warnings
    that print whole tensor types) are not the user's business; errors still raise."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def export_onnx(tower, example, path: Path) -> None:
    """``tower`` (eval mode) to ONNX at ``path``: one input, one output, dynamic batch axis."""
    import torch

    # MultiheadAttention's fused inference path (aten::_native_multi_head_attention) has no
    # ONNX export; the plain path computes the same attention.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
            torch.backends.mha.set_fastpath_enabled(False)
            torch.onnx.export(
                tower, (example,), str(path), input_names=["features"], output_names=["embedding"],
                dynamic_axes={"features": {0: "batch"}, "embedding": {0: "batch"}},
                opset_version=OPSET, dynamo=False,
            )  # fmt: skip
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


# --- the cache entry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Build:
    """One cached tower: the ``.onnx`` path, its preprocessing arrays and its recorded info."""

    model: Path
    arrays: dict
    info: dict


def entry_dir(resolved: ResolvedModel) -> Path:
    return cache_dir_for(resolved, "onnx")


def identity(resolved: ResolvedModel, part: str) -> dict:
    """What a build of ``part`` of ``resolved`` must have been made from."""
    return {
        "format_version": FORMAT_VERSION,
        "part": part,
        "opset": OPSET,
        # Optimised graphs may use ONNX Runtime's own operators: another version exports again.
        "onnxruntime": _onnxruntime_version(),
        **resolved.provenance(),
        "weights_digest": weights_digest(Path(resolved.path)),
    }


def _onnxruntime_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        return "none"


def find_build(resolved: ResolvedModel, part: str) -> Build | None:
    """The cached build of ``part`` when it matches the model's files now, else None (a
    stale or unreadable entry says why in a log line)."""
    folder = entry_dir(resolved)
    meta, model, arrays = (folder / f"{part}{s}" for s in (".json", ".onnx", ".npz"))
    if not meta.is_file():
        return None
    try:
        saved = json.loads(meta.read_text())
        want = identity(resolved, part)
        if saved.get("identity") != want:
            log.warning("ONNX cache %s is stale (%s); exporting again", meta, mismatch(saved.get("identity"), want))  # fmt: skip
            return None
        with np.load(arrays, allow_pickle=False) as npz:
            return Build(model, {k: npz[k] for k in npz.files}, saved["info"])
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ONNX cache %s unreadable (%s); exporting again", folder, one_line(exc))
        return None


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".pth"))  # fmt: skip


def _available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def export_blocker(resolved: ResolvedModel) -> str | None:
    """Why exporting now would be unwise, or None. The export held ~4x the weights in memory
    (ViT-L: 6.3 GB peak for 1.6 GB of weights; HTSAT + RoBERTa 1.7 GB for 0.6 GB) and writes
    about the tower's weights to the cache: a small machine keeps running on torch instead of
    being pushed into swap or a full disk by a default."""
    weights = _weights_bytes(Path(resolved.path))
    need_memory, need_disk = 4 * weights + (512 << 20), 2 * weights + (256 << 20)
    available = _available_memory_bytes()
    if available is not None and available < need_memory:
        return f"the export needs ~{need_memory / 2**30:.1f} GiB of free memory, {available / 2**30:.1f} GiB available"  # fmt: skip
    folder = entry_dir(resolved)
    probe = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if probe is not None:
        import shutil

        free = shutil.disk_usage(probe).free
        if free < need_disk:
            return f"the export needs ~{need_disk / 2**30:.1f} GiB of disk in {folder}, {free / 2**30:.1f} GiB free"  # fmt: skip
    return None


def failed_before(resolved: ResolvedModel, part: str) -> str | None:
    """Why exporting ``part`` of this very model failed before, or None: a model that cannot
    be exported is not tried again at every job (delete the cache entry to retry)."""
    saved = read_provenance(entry_dir(resolved) / f"{part}.failed.json") or {}
    return saved.get("error") if saved.get("identity") == identity(resolved, part) else None


def record_failure(resolved: ResolvedModel, part: str, error: str) -> None:
    try:
        folder = entry_dir(resolved)
        folder.mkdir(parents=True, exist_ok=True)
        record = {"identity": identity(resolved, part), "error": error}
        (folder / f"{part}.failed.json").write_text(json.dumps(record, indent=1))
    except OSError:
        pass  # nothing to remember it in: the next job tries again


def save_build(resolved: ResolvedModel, part: str, export, arrays: dict, info: dict) -> Build:
    """Export (``export(path)``) and cache ``part``; the JSON last. Raises OSError when the
    cache cannot be written (the caller then runs on torch)."""
    folder = entry_dir(resolved)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{part}.json").unlink(missing_ok=True)  # stale provenance must not outlive its files

    def write_npz(path):
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    write_atomically(folder, f"{part}.npz", write_npz)

    # The model names its weights file, so both are made under their own names in a private
    # folder, then moved in (weights first); the JSON, written last, makes them valid.
    with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as tmp, quiet_export():
        export(Path(tmp) / "raw.onnx")
        optimise_graph(Path(tmp) / "raw.onnx", Path(tmp) / f"{part}.onnx")
        for name in (f"{part}.onnx.data", f"{part}.onnx"):
            if (Path(tmp) / name).exists():  # no weights file when every tensor is tiny
                os.replace(Path(tmp) / name, folder / name)
    record = {"identity": identity(resolved, part), "info": info}
    write_atomically(folder, f"{part}.json", lambda p: Path(p).write_text(json.dumps(record, indent=1)))  # fmt: skip
    return Build(folder / f"{part}.onnx", dict(arrays), info)


# --- building (torch) ---------------------------------------------------------------------------


def time_stretch_taps(frames: int, width: int):
    """(width, 4) int64 indices and float32 weights that resample ``frames`` time steps to
    ``width`` exactly as CLAP's ``reshape_mel2img`` does (``F.interpolate``, bicubic,
    ``align_corners=True``): each output step is 4 weighted input steps. Read off torch's own
    interpolation of an identity, so the taps are torch's, border clamping included."""
    import torch

    eye = torch.eye(frames).reshape(1, 1, frames, frames)
    dense = torch.nn.functional.interpolate(eye, (width, frames), mode="bicubic", align_corners=True)[0, 0]  # fmt: skip
    index = torch.argsort(-dense.abs(), dim=1, stable=True)[:, :4].sort(dim=1).values
    return index, torch.gather(dense, 1, index)


def clap_audio_tower(clap, features_shape: tuple[int, ...] | None = None):
    """CLAP's audio side as one module: features -> projected (unnormalised) embedding.

    With ``features_shape`` (channels, frames, mel bins), a clip shorter than HTSAT's input
    (BioLingual: 1,001 frames for 1,024) is stretched in time by 4 gathered taps a step
    (`time_stretch_taps`) before the model, which then skips its own bicubic ``interpolate``:
    ONNX Runtime's cubic Resize took ~7% of the exported tower's time (profiled on HTSAT), the
    taps a fraction of that. The model's batch norm is per mel bin and the taps of a step sum
    to 1, so stretching before it gives the same features (to float rounding)."""
    import torch

    encoder = clap.audio_model.audio_encoder
    width, height = int(encoder.spec_size * encoder.freq_ratio), encoder.spec_size // encoder.freq_ratio  # fmt: skip
    stretch = features_shape is not None and features_shape[1] < width and features_shape[2] == height  # fmt: skip

    class ClapAudioTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.audio_model, self.audio_projection = clap.audio_model, clap.audio_projection
            if stretch:
                index, weight = time_stretch_taps(int(features_shape[1]), width)
                self.register_buffer("taps", index.reshape(-1), persistent=False)
                self.register_buffer("tap_weights", weight[:, :, None], persistent=False)

        def forward(self, features):
            if stretch:
                b, c, _, f = features.shape
                taps = features.index_select(2, self.taps).reshape(b, c, width, 4, f)
                features = (taps * self.tap_weights).sum(3)
            pooled = self.audio_model(input_features=features).pooler_output
            return self.audio_projection(pooled)

    return ClapAudioTower().eval()


def build_audio(encoder) -> Build:
    """Export a torch `BioLingualEncoder`'s audio tower (fp32) and cache it."""
    feats = encoder.features
    example = feats([np.zeros(feats.max_samples, np.float32)] * 2, "cpu")
    info = {"dim": encoder.dim, "features": feats.describe(), "torch_export": _torch_version()}
    return save_build(
        encoder.resolved, "clap_audio",
        lambda path: export_onnx(clap_audio_tower(encoder.model, example.shape[1:]), example, path),
        {"mel_filters": feats.mel_filters.numpy()}, info,
    )  # fmt: skip


INT8_SCHEME = "onnxruntime dynamic int8, MatMul weights per output channel, uint8 activations"


def quantize_onnx_int8(fp32: Path, int8: Path) -> None:
    """``fp32``'s graph with its MatMul weights int8 per output channel (`INT8_SCHEME`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(fp32, int8, per_channel=True, weight_type=QuantType.QInt8)


def build_audio_int8(encoder) -> Build:
    """Export a torch fp32 `BioLingualEncoder`'s audio tower, quantise it int8 and cache it:
    ``songsight embed --precision int8`` then runs on ONNX Runtime without torch, as fp32 does."""
    import onnxruntime

    feats = encoder.features
    example = feats([np.zeros(feats.max_samples, np.float32)] * 2, "cpu")
    quantization = {
        "scheme": INT8_SCHEME, "engine": "onnxruntime", "onnxruntime": onnxruntime.__version__,
        "opset": OPSET, "input": [int(x) for x in example.shape[1:]],
    }  # fmt: skip
    info = {
        "dim": encoder.dim, "features": feats.describe(), "torch_export": _torch_version(),
        "precision": "int8", "quantization": quantization,
    }  # fmt: skip

    def export(path: Path) -> None:
        fp32 = path.with_name("fp32.onnx")
        export_onnx(clap_audio_tower(encoder.model, example.shape[1:]), example, fp32)
        quantize_onnx_int8(fp32, path)

    return save_build(
        encoder.resolved,
        "clap_audio_int8",
        export,
        {"mel_filters": feats.mel_filters.numpy()},
        info,
    )


def build_images(encoder) -> Build:
    """Export a torch `BioCLIPEncoder`'s image tower (fp32) and cache it."""
    import dataclasses

    import torch

    cfg = encoder.preprocess_cfg
    if encoder.preprocess != "model":
        raise ValueError("the export records the checkpoint's own preprocessing")
    height, width = (cfg.size, cfg.size) if isinstance(cfg.size, int) else cfg.size
    example = torch.zeros(2, 3, int(height), int(width))
    info = {
        "dim": encoder.dim,
        "preprocess_cfg": json.loads(json.dumps(dataclasses.asdict(cfg))),
        "torch_export": _torch_version(),
    }
    return save_build(
        encoder.resolved, "open_clip_visual",
        lambda path: export_onnx(encoder._frozen().visual, example, path), {}, info,
    )  # fmt: skip


def _torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]
