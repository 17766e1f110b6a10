"""Quantised int8 weights cached with their provenance (`songsight.encoders.int8_cache`).

The reference is a fresh quantisation of the same weights: a cached load must give exactly its
embeddings and provenance, and must not quantise again. A cache whose provenance no longer
matches (weights changed, another torch) is rebuilt with a log line. The cache lives in
songsight's cache directory; the model folder is never written.
"""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest

from songsight.encoders import int8_cache


@pytest.fixture
def audio_model(tiny_models, tmp_path):
    """A private copy of the tiny CLAP folder (the session's is shared with other tests)."""
    return shutil.copytree(tiny_models[0], tmp_path / "clap")


@pytest.fixture
def clips(tiny_audio_encoder) -> list:
    rng = np.random.default_rng(3)
    rate = tiny_audio_encoder.sample_rate_hz
    return [(0.3 * rng.standard_normal(int(rate * s)).astype(np.float32), rate) for s in (1, 2)]


@pytest.fixture
def quantise_calls(monkeypatch) -> list:
    """Counts real quantisations (the cache's only way to build int8 weights)."""
    calls = []
    real = int8_cache.quantize_int8

    def counting(module):
        calls.append(type(module).__name__)
        return real(module)

    monkeypatch.setattr(int8_cache, "quantize_int8", counting)
    return calls


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    """songsight's cache directory inside the test's own folder, never the user's."""
    monkeypatch.setenv("SONGSIGHT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "int8"


def audio_int8(model_dir):
    from songsight.encoders.biolingual import BioLingualEncoder

    return BioLingualEncoder(model_dir, device="cpu", batch_size=4, precision="int8")


def test_second_load_reads_the_cache_and_matches_a_fresh_quantisation(
    audio_model, clips, quantise_calls, user_cache
):
    files_before = sorted(os.listdir(audio_model))
    first = audio_int8(audio_model)  # quantises and writes the cache
    assert quantise_calls == ["ClapModel"]
    assert sorted(os.listdir(audio_model)) == files_before, "the model folder was written"
    (meta_path,) = user_cache.glob("*/clap.json")
    meta = meta_path.read_text()
    for field in ("model_id", "revision", "weights_digest", "torch", "engine", "scheme"):
        assert f'"{field}"' in meta
    second = audio_int8(audio_model)
    assert quantise_calls == ["ClapModel"], "the second load quantised again"
    assert np.array_equal(second.embed_audio(clips), first.embed_audio(clips))
    texts = ["Turdus merula", "a robin singing"]
    assert np.array_equal(second.embed_texts(texts), first.embed_texts(texts))
    assert second.provenance() == first.provenance()  # stores cannot tell them apart


def test_image_tower_cache_matches_a_fresh_quantisation(tiny_models, tmp_path, quantise_calls):
    from PIL import Image

    from songsight.encoders.bioclip import BioCLIPEncoder

    model = shutil.copytree(tiny_models[1], tmp_path / "clip")
    photo = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), np.uint8)).save(photo)
    first = BioCLIPEncoder(model, device="cpu", precision="int8")
    second = BioCLIPEncoder(model, device="cpu", precision="int8")
    assert len(quantise_calls) == 1
    assert np.array_equal(second.embed_images([photo]), first.embed_images([photo]))
    assert second.provenance() == first.provenance()


def test_changed_weights_rebuild_the_cache(audio_model, clips, quantise_calls, caplog):
    import torch
    from safetensors.torch import load_file, save_file

    from songsight.encoders.int8 import quantize_int8

    before = audio_int8(audio_model).embed_audio(clips)
    weights = audio_model / "model.safetensors"
    state = load_file(weights)
    name = next(k for k in state if k.startswith("audio_projection") and k.endswith("weight"))
    state[name] = state[name] * 0.5 + 0.01
    save_file(state, weights)
    with caplog.at_level(logging.WARNING, logger="songsight.int8"):
        rebuilt = audio_int8(audio_model)
    assert len(quantise_calls) == 2 and "stale" in caplog.text and "weights_digest" in caplog.text
    got = rebuilt.embed_audio(clips)
    assert not np.allclose(got, before)
    # The reference: the new weights quantised afresh, no cache involved.
    from songsight.encoders.biolingual import BioLingualEncoder

    fresh = BioLingualEncoder(audio_model, device="cpu", batch_size=4)
    fresh.model, _ = quantize_int8(fresh.model)
    np.testing.assert_array_equal(got, fresh.embed_audio(clips))
    assert torch.backends.quantized.engine in ("x86", "fbgemm")


def test_another_torch_version_rebuilds_the_cache(audio_model, quantise_calls, caplog, monkeypatch):
    import torch

    audio_int8(audio_model)
    monkeypatch.setattr(torch, "__version__", "99.0.0")
    with caplog.at_level(logging.WARNING, logger="songsight.int8"):
        audio_int8(audio_model)
    assert len(quantise_calls) == 2 and "torch" in caplog.text and "99.0.0" in caplog.text
    audio_int8(audio_model)  # the rebuilt cache now matches this "torch"
    assert len(quantise_calls) == 2


def test_a_read_only_model_folder_is_cached_all_the_same(
    audio_model, clips, quantise_calls, user_cache
):
    # A Hub snapshot or a shared mount: nothing is written beside the weights, so a folder
    # that cannot be written loads from the cache like any other.
    mode = audio_model.stat().st_mode
    audio_model.chmod(0o555)
    try:
        first = audio_int8(audio_model)
        second = audio_int8(audio_model)
    finally:
        audio_model.chmod(mode)
    assert len(quantise_calls) == 1 and len(list(user_cache.glob("*/clap.pt"))) == 1
    assert np.array_equal(second.embed_audio(clips), first.embed_audio(clips))


def test_a_corrupt_cache_file_is_rebuilt(audio_model, clips, quantise_calls, caplog, user_cache):
    first = audio_int8(audio_model).embed_audio(clips)
    (weights,) = user_cache.glob("*/clap.pt")
    weights.write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING, logger="songsight.int8"):
        again = audio_int8(audio_model)
    assert len(quantise_calls) == 2 and "unreadable" in caplog.text
    assert np.array_equal(again.embed_audio(clips), first)
