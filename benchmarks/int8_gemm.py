"""How fast can int8 make the audio tower on this CPU? Its linear layers alone, fp32 against int8.

Issue 19 asks ``--precision int8`` for >= 1.6x fp32's steady rate; the product's int8 audio
tower (ONNX Runtime dynamic quantisation, `ort_cache.quantize_onnx_int8`) reads x1.2-1.5. int8
only changes the MatMuls of the linear layers, so their own int8 / fp32 ratio bounds what any
int8 graph can gain. This script builds, for every linear layer of HTSAT (shapes read from
transformers' ``ClapAudioConfig()``, BioLingual's architecture: per block the query, key and
value projections from one input, the attention's output, the MLP's two layers; each stage's
patch merging), a one-layer ONNX graph with random weights, quantises it as the product does and
optimises both as the product's cache does, and times fp32 and int8 on ONNX Runtime interleaved
(slope between ``k`` and ``3k`` runs of a batch of clips, ``k`` runs lasting at least
``--min-s``, best of the rounds). It prints each
shape's ratio, the linear layers' total per clip in each precision and their ratio, a square
1024^3 GEMM as the kernels' own ratio, and with ``--tower`` the product's exported tower timed
in the same run, beside what its fp32 time would become if only its linear layers changed, to
their int8 time (Amdahl's estimate from the layers timed alone).

    python benchmarks/int8_gemm.py --tower      # batch 8: ~6 min on 2 cores
    python benchmarks/int8_gemm.py --quick      # small shapes, 1 round: a smoke run
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from harness.graphs import product_graphs
from harness.machine import load, processor_name
from harness.report import work_folder
from harness.timing import calls_lasting, interleaved_slopes


@dataclass(frozen=True)
class Linear:
    """``outputs`` MatMuls (each K -> N, with bias) of one input of ``tokens`` rows a clip,
    found ``count`` times in the tower."""

    name: str
    tokens: int
    k: int
    n: int
    outputs: int
    count: int
    bias: bool = True


def htsat_linears(config) -> list[Linear]:
    """Every linear layer of HTSAT's Swin stages, from a ``ClapAudioConfig``."""
    side = config.spec_size // config.patch_stride[0]
    dim, out = config.patch_embeds_hidden_size, []
    for stage, depth in enumerate(config.depths):
        tokens, hidden = (side >> stage) ** 2, int(config.mlp_ratio * dim)
        out += [
            Linear(f"s{stage} query/key/value", tokens, dim, dim, 3, depth),
            Linear(f"s{stage} attention out", tokens, dim, dim, 1, depth),
            Linear(f"s{stage} mlp up", tokens, dim, hidden, 1, depth),
            Linear(f"s{stage} mlp down", tokens, hidden, dim, 1, depth),
        ]
        if stage < len(config.depths) - 1:
            out.append(Linear(f"s{stage} merge", tokens // 4, 4 * dim, 2 * dim, 1, 1, bias=False))
            dim *= 2
    return out


def layer_graph(layer: Linear, rows: int, path: Path, rng: np.random.Generator) -> Path:
    """A one-input ONNX graph of ``layer`` over ``rows`` rows, random weights (scale 0.02),
    saved to ``path`` (returned)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, outs = [], [], []
    for i in range(layer.outputs):
        w = (rng.standard_normal((layer.k, layer.n)) * 0.02).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        product = f"p{i}" if layer.bias else f"y{i}"
        nodes.append(helper.make_node("MatMul", ["x", f"w{i}"], [product]))
        if layer.bias:
            inits.append(numpy_helper.from_array(np.zeros(layer.n, np.float32) + 0.01, f"b{i}"))
            nodes.append(helper.make_node("Add", [product, f"b{i}"], [f"y{i}"]))
        outs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [rows, layer.n]))
    graph = helper.make_graph(
        nodes, layer.name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, layer.k])],
        outs, inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=8, help="clips a run")
    p.add_argument("--min-s", type=float, default=0.3, help="the short run's least seconds")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tower", action="store_true", help="also the product's exported tower")
    p.add_argument("--keep", default=None, help="keep the graphs in this folder")
    p.add_argument("--quick", action="store_true", help="shapes of a tiny config, 1 round")
    args = p.parse_args(argv)

    import onnxruntime as ort
    from transformers import ClapAudioConfig

    from songsight.encoders.ort_cache import new_session

    config = ClapAudioConfig()
    if args.quick:
        config = ClapAudioConfig(spec_size=64, patch_embeds_hidden_size=16, depths=[1, 1])
        args.rounds, args.min_s = 1, 0.02
    layers = htsat_linears(config)
    print(
        f"{processor_name()}; onnxruntime {ort.__version__}, {args.threads} threads, batch "
        f"{args.batch_size} clips, slope between k and 3k runs (k runs >= {args.min_s} s), best of "
        f"{args.rounds}  ({load()})",
        flush=True,
    )
    rng = np.random.default_rng(0)
    with work_folder(args.keep, "songsight-int8-gemm-") as work:
        square = Linear("square 1024^3 GEMM", 1024, 1024, 1024, 1, 1, bias=False)
        rows = {layer: layer.tokens * args.batch_size for layer in layers}
        rows[square] = square.tokens
        per_run: dict[Linear, dict[str, float]] = {}
        for i, layer in enumerate([square, *layers]):
            graphs = product_graphs(layer_graph(layer, rows[layer], work / f"l{i}.onnx", rng))
            sessions = {prec: new_session(path, args.threads, optimised=True) for prec, path in graphs.items()}  # fmt: skip
            x = rng.standard_normal((rows[layer], layer.k)).astype(np.float32)
            runs = {n: partial(s.run, None, {"x": x}) for n, s in sessions.items()}
            per_run[layer] = interleaved_slopes(runs, calls_lasting(runs, args.min_s), args.rounds)
            t = per_run[layer]
            scale = 1e3 if layer is square else 1e3 / args.batch_size
            unit = "ms a run" if layer is square else "ms a clip, each"
            print(
                f"  {layer.name:24s} {rows[layer]:6d} x {layer.k:4d} -> {layer.outputs} x {layer.n:4d}  "
                f"fp32 {t['fp32'] * scale:7.2f}  int8 {t['int8'] * scale:7.2f} {unit}  "
                f"x{t['fp32'] / t['int8']:.2f}  ({load()})",
                flush=True,
            )
        totals = {
            prec: sum(per_run[la][prec] * la.count for la in layers) / args.batch_size
            for prec in ("fp32", "int8")
        }
        ratio = totals["fp32"] / totals["int8"]
        print(
            f"linear layers of the tower: fp32 {totals['fp32'] * 1e3:.1f}, int8 "
            f"{totals['int8'] * 1e3:.1f} ms a clip: int8 x{ratio:.2f}  ({load()})",
            flush=True,
        )
        if args.tower:
            tower = _tower_per_clip(work, args, quick=args.quick)
            rest = tower["fp32"] - totals["fp32"]
            amdahl = tower["fp32"] / (rest + totals["int8"])
            print(
                f"tower: fp32 {tower['fp32'] * 1e3:.1f}, int8 {tower['int8'] * 1e3:.1f} ms a clip "
                f"(x{tower['fp32'] / tower['int8']:.2f}); its linear layers timed alone: "
                f"{100 * totals['fp32'] / tower['fp32']:.0f}% of fp32; if only they changed, "
                f"by their ratio: x{amdahl:.2f}  ({load()})",
                flush=True,
            )


def _tower_per_clip(work: Path, args, quick: bool) -> dict[str, float]:
    """The product's exported audio tower (taps form), fp32 and int8, seconds a clip."""
    from transformers import ClapFeatureExtractor, ClapModel

    from audio_tower import build
    from songsight.encoders.ort_cache import new_session

    if quick:
        from songsight.testing import build_tiny_models

        model_dir = build_tiny_models(work / "tiny")[0]
    else:
        from harness.models import build_biolingual_shape

        model_dir = build_biolingual_shape(work / "biolingual")
    model = ClapModel.from_pretrained(model_dir).eval()
    fe = ClapFeatureExtractor.from_pretrained(model_dir)
    shape = (1, fe.nb_max_samples // fe.hop_length + 1, int(fe.feature_size))
    graphs = build(model, shape, True, work / "tower")
    del model
    sessions = {prec: new_session(path, args.threads, optimised=True) for prec, path in graphs.items()}  # fmt: skip
    x = np.random.default_rng(1).standard_normal((args.batch_size, *shape)).astype(np.float32)
    runs = {n: partial(s.run, None, {s.get_inputs()[0].name: x}) for n, s in sessions.items()}
    t = interleaved_slopes(runs, calls_lasting(runs, 2 * args.min_s), args.rounds)
    return {n: v / args.batch_size for n, v in t.items()}


if __name__ == "__main__":
    main()
