"""ONNX graphs as the product's cache holds them (`songsight.encoders.ort_cache`)."""

from __future__ import annotations

from pathlib import Path


def product_graphs(raw: Path) -> dict[str, Path]:
    """``raw`` (an exported fp32 graph) made into the product's two builds, beside it: fp32 with
    ONNX Runtime's extended optimisations; int8 quantised (`quantize_onnx_int8`), then the same."""
    from songsight.encoders.ort_cache import optimise_graph, quantize_onnx_int8, quiet_export

    fp32, int8_raw, int8 = (raw.with_name(f"{raw.stem}_{s}.onnx") for s in ("fp32", "int8raw", "int8"))  # fmt: skip
    with quiet_export():
        optimise_graph(raw, fp32)
        quantize_onnx_int8(raw, int8_raw)
        optimise_graph(int8_raw, int8)
    return {"fp32": fp32, "int8": int8}
