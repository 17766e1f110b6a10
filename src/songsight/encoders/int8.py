"""int8 on CPU: dynamic quantisation of a tower's ``nn.Linear`` layers (torch, fbgemm/x86).

Weights are stored int8 per output channel; activations are quantised per batch on the fly,
so no calibration data is needed and the result depends only on the weights. Chosen first
because it needs no new dependency and no export step. Measured since against ONNX Runtime's and
OpenVINO's int8 (benchmarks/int8_engines.py, one run on a loaded 2-core machine): on HTSAT the
three were within noise of each other; on ViT-L, ONNX Runtime's int8 ran about 3x this one
(it also quantises the attention in-projection), so it is the candidate to adopt for images
(benchmarks/README.md). Cosine to fp32 was >= 0.9996 for all. Only ``nn.Linear`` modules are
quantised: convolutions (HTSAT's patch embedding, ViT's patch projection) and open_clip's
attention in-projection (a bare parameter inside ``nn.MultiheadAttention``) stay fp32.
"""

from __future__ import annotations

import warnings

from songsight.errors import SongsightError

PRECISIONS = ("auto", "fp32", "bf16", "int8")
SCHEME = "dynamic int8, nn.Linear weights per output channel"


def check_int8_device(device: str) -> None:
    if not device.startswith("cpu"):
        raise SongsightError(
            f"--precision int8 runs on the CPU only (its kernels are fbgemm/x86); got device "
            f"{device!r}: use --device cpu, or bf16 on a GPU"
        )


def select_engine() -> str:
    """Set torch's quantised engine to x86 (or fbgemm) and return it; refuse builds without."""
    import torch

    engines = torch.backends.quantized.supported_engines
    engine = "x86" if "x86" in engines else "fbgemm" if "fbgemm" in engines else None
    if engine is None:
        raise SongsightError(
            f"--precision int8 needs torch's x86/fbgemm int8 kernels; this build has {engines}"
        )
    torch.backends.quantized.engine = engine
    return engine


def quantization_scheme() -> dict:
    """What `quantize_int8` does here: recorded in stores and in cached weights' provenance."""
    return {"scheme": SCHEME, "engine": select_engine()}


def quantize_int8(module):
    """``module`` with every ``nn.Linear`` replaced by a dynamically quantised int8 one
    (in place, also returned). Returns ``(module, info)``; ``info`` goes into provenance."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    engine = select_engine()
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in module.modules())
    with warnings.catch_warnings():
        # torch >= 2.10 marks its quantised tensor types deprecated (pytorch#184982); they
        # still run, and the benchmark says when they stop being worth it.
        warnings.filterwarnings("ignore", message=".*quantize_per_channel.*", category=UserWarning)
        warnings.filterwarnings(
            "ignore", message=".*torch.ao.quantization.*", category=DeprecationWarning
        )
        quantize_dynamic(
            module, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True
        )
    info = {
        "scheme": SCHEME,
        "engine": engine,
        "linear_layers": n_linear,
        "torch": torch.__version__.split("+")[0],
    }
    return module, info
