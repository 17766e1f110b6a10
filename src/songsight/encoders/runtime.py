"""Which runtime runs an embedding job's tower: torch, or ONNX Runtime from a cached export.

``auto`` (the default) takes ONNX Runtime for fp32 on the CPU when it is installed (the
``int8`` extra): the job then starts without importing torch (0.5 s to the first embedding of
a clip instead of 4.9 s for the naive transformers loop on 2 cores; benchmarks/README.md,
``startup.py``). The first such
job for a model exports its tower once, with torch, into songsight's cache
(`songsight.encoders.ort_cache`; ~9 s for HTSAT, ~30 s for ViT-L); an export that
fails, or a cache that cannot be written, leaves the job on torch with one log line, and so does
a machine without room for the export (~4x the weights in memory, ~the weights on disk). Anything
else stays on torch: a GPU, bf16, int8 images (torch's int8 ViT matches ONNX Runtime's),
preprocessing the numpy transform does not reproduce. int8 *audio* takes ONNX Runtime where
fp32 would, from a tower exported and quantised once (`ort_cache.build_audio_int8`), so it
starts as fast as fp32 instead of importing torch. ``torch`` never exports.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from songsight.encoders.loading import check_model_folder, resolve_model
from songsight.encoders.ort_cache import onnxruntime_available
from songsight.errors import SongsightError, one_line

log = logging.getLogger("songsight.onnx")

RUNTIMES = ("auto", "torch", "onnxruntime")


def gpu_may_be_present() -> bool:
    """Without importing torch: whether this machine may have a device torch would choose
    over the CPU (an NVIDIA or ROCm driver, or macOS's MPS). False means surely not."""
    if sys.platform == "darwin":
        return True
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(Path(p).exists() for p in ("/proc/driver/nvidia", "/dev/nvidia0", "/dev/kfd"))


def choose_runtime(runtime: str, device: str | None, precision: str) -> str:
    """``"torch"`` or ``"onnxruntime"`` for a job; ``runtime="onnxruntime"`` asked for where it
    cannot run is one clear error."""
    if runtime not in RUNTIMES:
        raise SongsightError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
    if runtime == "torch":
        return "torch"
    blocker = None
    if precision not in ("auto", "fp32"):
        blocker = f"precision {precision}"
    elif device not in (None, "auto", "cpu"):
        blocker = f"device {device}"
    elif not onnxruntime_available():
        blocker = "ONNX Runtime not installed (pip install 'songsight[int8]')"
    elif runtime == "auto" and device in (None, "auto") and gpu_may_be_present():
        blocker = "a GPU may be present"
    if blocker is None:
        return "onnxruntime"
    if runtime == "onnxruntime":
        raise SongsightError(
            f"the onnxruntime runtime runs fp32 on the CPU only, not with {blocker}"
        )
    return "torch"


def _cpu_notice(device: str | None, quiet: bool) -> None:
    if device in (None, "auto") and not quiet:
        print("songsight: no CUDA device found, running on CPU (ONNX Runtime)", file=sys.stderr)


def _session(build):
    from songsight.encoders.ort_cache import new_session, session_threads

    return new_session(build.model, session_threads(), optimised=True)


def _exported(part: str, resolved, load_torch, build, fallback=None):
    """``part``'s cached build and its ONNX Runtime session, exporting it from the torch
    encoder when absent or unreadable: (build, session, None), or (None, None, the torch
    encoder) when the export fails (remembered, so later jobs go straight to torch).
    ``fallback``: what runs on torch instead, when not the encoder exported from."""
    fallback = fallback or load_torch
    from songsight.encoders.ort_cache import (
        export_blocker,
        failed_before,
        find_build,
        record_failure,
    )

    found = find_build(resolved, part)
    if found is not None:
        try:
            return found, _session(found), None
        except Exception as exc:  # a truncated or foreign file: exported again below
            log.warning("cached ONNX %s unreadable (%s); exporting again", found.model, one_line(exc))  # fmt: skip
    why = failed_before(resolved, part)
    if why is not None:
        log.info("%s's %s runs on torch: its ONNX export failed before (%s)", resolved.model_id, part, why)  # fmt: skip
        return None, None, fallback()
    why = export_blocker(resolved)
    if why is not None:  # not remembered: the next job, on a quieter machine, may export
        log.warning("%s runs on torch this time: %s", part, why)
        return None, None, fallback()
    log.warning("exporting %s's %s for ONNX Runtime (once; --runtime torch skips this)", resolved.model_id, part)  # fmt: skip
    torch_encoder = load_torch()
    try:
        made = build(torch_encoder)
        return made, _session(made), None
    except Exception as exc:  # the exporter, ONNX and the file system raise many types
        log.warning("ONNX export of %s failed (%s); running on torch", part, one_line(exc))
        record_failure(resolved, part, one_line(exc))
        if fallback is not load_torch:
            del torch_encoder  # the export's source, not what runs
            return None, None, fallback()
        return None, None, torch_encoder


def open_audio_encoder(
    model, *, device: str | None = None, precision: str = "auto", runtime: str = "auto",
    batch_size: int | None = None, window_s: float | None = None, hop_s: float | None = None,
    quiet: bool = False,
):  # fmt: skip
    """A BioLingual audio encoder for an embedding job: `OnnxAudioEncoder` or, per
    `choose_runtime`, the torch `BioLingualEncoder`. Both give the same store rows."""
    windows = dict(batch_size=batch_size, window_s=window_s, hop_s=hop_s)

    def load_torch(dev=device):
        from songsight.encoders.base import choose_device
        from songsight.encoders.biolingual import BioLingualEncoder

        dev = choose_device(dev, quiet=quiet)
        return BioLingualEncoder(resolved, device=dev, precision=precision, **windows)

    resolved = resolve_model(str(model), "audio")
    # int8 audio runs on ONNX Runtime where fp32 would: its tower exported and quantised once
    int8 = precision == "int8"
    if choose_runtime(runtime, device, "fp32" if int8 else precision) == "torch":
        return load_torch()
    check_model_folder(resolved.path, "audio")
    from songsight.encoders.ort_audio import OnnxAudioEncoder
    from songsight.encoders.ort_cache import build_audio, build_audio_int8

    def load_fp32():
        from songsight.encoders.biolingual import BioLingualEncoder

        return BioLingualEncoder(resolved, device="cpu", precision="fp32", **windows)

    part, builder = ("clap_audio_int8", build_audio_int8) if int8 else ("clap_audio", build_audio)
    fallback = (lambda: load_torch("cpu")) if int8 else None  # torch, at the precision asked
    build, session, torch_encoder = _exported(part, resolved, load_fp32, builder, fallback)
    if build is None:
        return torch_encoder
    _cpu_notice(device, quiet)
    return OnnxAudioEncoder(build, resolved, session, **windows)


def open_image_encoder(
    model, *, device: str | None = None, precision: str = "auto", runtime: str = "auto",
    batch_size: int | None = None, preprocess: str = "model", quiet: bool = False,
):  # fmt: skip
    """A BioCLIP-2 image encoder for an embedding job: `OnnxImageEncoder` or, per
    `choose_runtime` and the checkpoint's preprocessing, the torch `BioCLIPEncoder`."""

    def load_torch(dev=device, mode=preprocess):
        from songsight.encoders.base import choose_device
        from songsight.encoders.bioclip import BioCLIPEncoder

        dev = choose_device(dev, quiet=quiet)
        return BioCLIPEncoder(resolved, dev, batch_size, mode, precision=precision)

    resolved = resolve_model(str(model), "image")
    if choose_runtime(runtime, device, precision) == "torch":
        return load_torch()
    check_model_folder(resolved.path, "image")
    from songsight.encoders.ort_cache import build_images
    from songsight.encoders.ort_images import OnnxImageEncoder, supported

    load_model_mode = lambda: load_torch("cpu", "model")  # noqa: E731 - the export's own
    build, session, torch_encoder = _exported("open_clip_visual", resolved, load_model_mode, build_images)  # fmt: skip
    if build is None or not supported(build.info["preprocess_cfg"], preprocess):
        if runtime == "onnxruntime" and build is not None:
            raise SongsightError(f"{resolved.model_id}'s preprocessing runs on torch only")
        if torch_encoder is not None and preprocess == "model":
            return torch_encoder
        return load_torch("cpu")
    _cpu_notice(device, quiet)
    return OnnxImageEncoder(
        build, resolved, session, batch_size=batch_size or 32, preprocess=preprocess
    )


def open_distilled_encoder(
    checkpoint, *, fused_with=None, device: str | None = None, precision: str = "auto",
    runtime: str = "auto", batch_size: int | None = None, window_s: float | None = None,
    hop_s: float | None = None, quiet: bool = False,
):  # fmt: skip
    """A distilled checkpoint's audio encoder, per `choose_runtime`: `OnnxDistilledEncoder`
    (its tower from a cached export, its head in numpy) or the torch `DistilledEncoder`; both
    answer alike. ``fused_with``: the BioLingual it was distilled from, run beside it for the
    ``fused`` readout (`OnnxFusedEncoder` / `FusedAudioEncoder`)."""
    from songsight.encoders.distilled import checkpoint_model, find_checkpoint

    ckpt = find_checkpoint(checkpoint)
    resolved = checkpoint_model(ckpt)
    windows = dict(window_s=window_s, hop_s=hop_s)

    def load_torch(dev=device):
        from songsight.encoders.base import choose_device
        from songsight.encoders.distilled import DistilledEncoder, FusedAudioEncoder

        dev = choose_device(dev, quiet=quiet)
        enc = DistilledEncoder(ckpt, device=dev, batch_size=batch_size or 16, precision=precision, **windows)  # fmt: skip
        return enc if fused_with is None else FusedAudioEncoder(enc, fused_with)

    if choose_runtime(runtime, device, precision) == "torch":
        return load_torch()
    check_model_folder(resolved.path, "audio")
    from songsight.encoders.ort_cache import build_audio
    from songsight.encoders.ort_distilled import OnnxDistilledEncoder, OnnxFusedEncoder

    def tower():  # the checkpoint's tower alone, as BioLingual's is exported
        from songsight.encoders.biolingual import BioLingualEncoder

        return BioLingualEncoder(resolved, device="cpu", precision=precision)

    build, session, torch_encoder = _exported(
        "clap_audio", resolved, tower, build_audio, fallback=lambda: load_torch("cpu")
    )
    if build is None:
        return torch_encoder
    _cpu_notice(device, quiet)
    enc = OnnxDistilledEncoder(build, resolved, ckpt, session, batch_size=batch_size or 16, **windows)  # fmt: skip
    if fused_with is None:
        return enc
    base = open_audio_encoder(
        fused_with, device="cpu", precision=precision, runtime=runtime,
        batch_size=batch_size or 16, quiet=True, **windows,
    )  # fmt: skip
    if base.sample_rate_hz != enc.sample_rate_hz:
        raise SongsightError(
            f"the base model {fused_with} reads {base.sample_rate_hz} Hz audio and the distilled "
            f"one {enc.sample_rate_hz} Hz: it is not the model it was distilled from"
        )
    return OnnxFusedEncoder(enc, base)


def open_torch_encoder(model, kind: str, *, device: str | None = None, quiet: bool = True,
                       **options):  # fmt: skip
    """A model's whole torch encoder, ``kind`` ``audio`` (`BioLingualEncoder`) or ``image``
    (`BioCLIPEncoder`), with its text tower: for what only torch does (training, the Ray
    workers, text). Songsight runs text towers only to embed species names, which a gallery
    caches (`songsight.retrieval.species_text`), so a search on a CPU with ONNX Runtime needs
    them once per model and prompts, not per search. ``options``: the encoder's own
    (``batch_size``, ``precision``, ``preprocess``, ``window_s``, ``hop_s`` ...)."""
    from songsight.encoders.base import choose_device

    dev = choose_device(device, quiet=quiet)
    if kind == "audio":
        from songsight.encoders.biolingual import BioLingualEncoder

        return BioLingualEncoder(model, device=dev, **options)
    if kind == "image":
        from songsight.encoders.bioclip import BioCLIPEncoder

        return BioCLIPEncoder(model, device=dev, **options)
    raise ValueError(f"kind must be 'audio' or 'image', not {kind!r}")
