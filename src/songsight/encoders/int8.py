"""int8 on CPU: dynamic quantisation of a tower's ``nn.Linear`` layers (torch, fbgemm/x86).

Weights are stored int8 per output channel; activations are quantised per batch on the fly,
so no calibration data is needed and the result depends only on the weights. Chosen first
because it needs no new dependency and no export step. Measured since against ONNX Runtime's and
OpenVINO's int8 (benchmarks/int8_engines.py, benchmarks/README.md). On ViT-L the first
measurement had ONNX Runtime's int8 at about 3x this one: ``quantize_dynamic`` skipped every
``nn.MultiheadAttention`` (its in-projection is a bare parameter and its out-projection a
``NonDynamicallyQuantizableLinear``), a third of the tower's matmul FLOPs, which ONNX Runtime
does quantise. So before quantising, `songsight.encoders.attention.unpack_attention` replaces
each ``nn.MultiheadAttention`` by a ``LinearAttention``, the same computation on two plain
``nn.Linear`` (in- and out-projection) and ``scaled_dot_product_attention``; every projection
is then int8. Convolutions (HTSAT's and ViT's patch embeddings) stay fp32.
"""

from __future__ import annotations

import warnings

from songsight.errors import SongsightError

PRECISIONS = ("auto", "fp32", "bf16", "int8")
SCHEME = "dynamic int8, nn.Linear weights per output channel, attention projections unpacked"


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
    from songsight.encoders.attention import unpack_attention

    n_attention = unpack_attention(module)
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
        "attention_unpacked": n_attention,
        "torch": torch.__version__.split("+")[0],
    }
    return module, info
