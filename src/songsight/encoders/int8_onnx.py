"""int8 audio towers through ONNX Runtime, exported and quantised once, cached with provenance.

Why: on HTSAT, torch's dynamic int8 ran only x1.43 its fp32 on a quiet 2-core machine, and
ONNX Runtime's dynamic int8 x2.45 (OpenVINO's x2.26; `benchmarks/int8_engines.py`,
benchmarks/README.md). On ViT-L torch's int8, once its attention is unpacked
(`songsight.encoders.attention`), matches ONNX Runtime's, so images stay on torch.

What: the audio tower (HTSAT and its projection: features in, embedding out) is exported with
torch's TorchScript ONNX exporter with a dynamic batch axis, quantised by
``onnxruntime.quantization.quantize_dynamic`` (int8 weights per output channel, activations
quantised per batch; no calibration data) and run by an ``InferenceSession`` on the CPU. The
``.onnx`` lives in songsight's int8 cache beside the torch builds (`songsight.encoders.
int8_cache`, the same provenance JSON with engine ``onnxruntime``); a mismatch rebuilds it.
``onnxruntime`` and ``onnx`` are the ``int8`` extra: without them the tower falls back to
torch's int8 and says so once.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from songsight.encoders.int8_cache import (
    cache_dir_for,
    expected_provenance,
    mismatch,
    read_provenance,
    save_build,
)
from songsight.encoders.loading import ResolvedModel
from songsight.encoders.ort_cache import (
    INT8_SCHEME,
    OPSET,
    clap_audio_tower,
    export_onnx,
    new_session,
    onnxruntime_available,
    quantize_onnx_int8,
    quiet_export,
)
from songsight.errors import one_line

log = logging.getLogger("songsight.int8")


def onnx_scheme(example) -> dict:
    """The engine and scheme, recorded in provenance (cache and stores)."""
    import onnxruntime

    return {
        "scheme": INT8_SCHEME,
        "engine": "onnxruntime",
        "onnxruntime": onnxruntime.__version__,
        "opset": OPSET,
        "input": [int(x) for x in example.shape[1:]],  # the batch axis is dynamic
    }


class OnnxTower:
    """``(B, ...)`` torch features -> ``(B, D)`` float32 torch tensor, run by ONNX Runtime."""

    def __init__(self, path: Path, threads: int):
        self.session = new_session(path, threads)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, feats):
        import torch

        x = np.ascontiguousarray(feats.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.session.run(None, {self.input: x})[0])


def load_or_build_onnx_int8(tower, example, resolved: ResolvedModel, part: str, threads: int):
    """`OnnxTower` running ``tower`` quantised int8, and the info for provenance.

    Read from the cache when its provenance matches; otherwise exported from ``tower`` (fp32,
    eval mode) on ``example`` (a batch of real-shaped features), quantised and cached. A cache
    that cannot be written costs only the cache (logged).
    """
    scheme = onnx_scheme(example)
    folder = cache_dir_for(resolved)
    want = expected_provenance(tower, resolved, part, scheme)
    model, meta = folder / f"{part}.onnx", folder / f"{part}.json"
    info = {**scheme, "torch": want["torch"].split("+")[0]}
    if meta.is_file():
        saved = read_provenance(meta)
        if saved == want and model.is_file():
            try:
                return OnnxTower(model, threads), info
            except Exception as exc:  # a truncated or foreign file: built again below
                log.warning("int8 cache %s unreadable (%s); building again", model, one_line(exc))
        else:
            log.warning("int8 cache %s is stale (%s); building again", meta, mismatch(saved, want))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        work = folder
    except OSError as exc:  # an unwritable cache: build in the system's temp, cache nothing
        log.warning("int8 cache: cannot create %s (%s); not cached", folder, exc)
        work = None
    log.info("int8: exporting and quantising %s's audio tower for ONNX Runtime (once)", resolved.model_id)  # fmt: skip
    with tempfile.TemporaryDirectory(dir=work, prefix=".build-") as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        with quiet_export():
            export_onnx(tower, example, fp32)
            quantize_onnx_int8(fp32, int8)
        if work is None:
            return OnnxTower(int8, threads), info
        try:
            meta.unlink(missing_ok=True)  # stale provenance must not outlive what it named
            save_build(folder, part, ".onnx", lambda path: Path(path).write_bytes(int8.read_bytes()), want)  # fmt: skip
        except OSError as exc:
            log.warning("int8 cache: could not write %s (%s); not cached", folder, exc)
            return OnnxTower(int8, threads), info
    return OnnxTower(model, threads), info


_said_fallback = False


def int8_audio_tower(clap, features, resolved: ResolvedModel):
    """(`OnnxTower`, info) for CLAP's audio tower, or (None, None) when ONNX Runtime is not
    installed or the export fails: the caller then keeps torch's int8 (logged, once)."""
    global _said_fallback
    if not onnxruntime_available():
        if not _said_fallback:
            log.warning(
                "int8 audio runs on torch's kernels: ONNX Runtime's ran HTSAT ~1.7x faster "
                "(benchmarks/README.md); pip install 'songsight[int8]' to use it"
            )
            _said_fallback = True
        return None, None
    import torch

    example = features([np.zeros(features.max_samples, np.float32)] * 2, "cpu")
    try:
        return load_or_build_onnx_int8(
            clap_audio_tower(clap), example, resolved, "clap_audio_onnx", torch.get_num_threads()
        )
    except Exception as exc:  # the exporter and ONNX Runtime raise many types
        log.warning("ONNX Runtime int8 of the audio tower failed (%s); using torch's int8", one_line(exc))  # fmt: skip
        return None, None
