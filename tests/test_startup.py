"""Start-up: open_clip's random init, which the checkpoint overwrites, is skipped.

The reference is the checkpoint file itself: after `load_open_clip` every tensor of the model
equals the file's (so nothing was left at a skipped init), and torch's init functions were
not called while loading and work again afterwards.
"""

from __future__ import annotations

import torch


def test_open_clip_loads_without_random_init(tiny_models, monkeypatch):
    from safetensors.torch import load_file

    from songsight.encoders.bioclip import load_open_clip

    calls = []
    real_normal = torch.nn.init.normal_

    def counting_normal(tensor, *args, **kwargs):
        calls.append(tuple(tensor.shape))
        return real_normal(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "normal_", counting_normal)
    net = load_open_clip(tiny_models[1])[0]
    assert calls == [], "open_clip's random init ran before the checkpoint was loaded"
    saved = load_file(next(tiny_models[1].glob("*.safetensors")))
    state = net.state_dict()
    assert set(saved) <= set(state)
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name
    # The context put torch's init back: it initialises again.
    t = torch.zeros(64)
    torch.nn.init.normal_(t)
    assert calls == [(64,)] and t.std() > 0.5
