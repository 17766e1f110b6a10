"""`benchmarks/int8_gemm.py` times HTSAT's linear layers alone: its list of them must be the
model's own (shapes and counts read from a forward pass of a small ClapAudioModel)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("depths", [(1, 1), (2, 1, 2)])
def test_int8_gemm_lists_every_linear_layer_of_htsat(monkeypatch, depths):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    int8_gemm = __import__("int8_gemm")
    config = transformers.ClapAudioConfig(
        spec_size=64, patch_embeds_hidden_size=16, depths=list(depths),
        num_attention_heads=[2] * len(depths), window_size=4,
    )  # fmt: skip
    model = transformers.ClapAudioModel(config).eval()
    batch, seen = 2, Counter()

    def hook(module, inputs, output):
        x = inputs[0]
        rows = x.numel() // x.shape[-1] // batch
        seen[(rows, module.in_features, module.out_features, module.bias is not None)] += 1

    for module in model.audio_encoder.layers.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(hook)
    enc = model.audio_encoder
    width, height = enc.spec_size * enc.freq_ratio, enc.spec_size // enc.freq_ratio
    with torch.no_grad():
        model(input_features=torch.randn(batch, 1, width, height))
    listed = Counter()
    for layer in int8_gemm.htsat_linears(config):
        listed[(layer.tokens, layer.k, layer.n, layer.bias)] += layer.outputs * layer.count
    assert listed == seen
    sys.modules.pop("int8_gemm", None)
