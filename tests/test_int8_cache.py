"""Quantised int8 weights cached with their provenance (`songsight.encoders.int8_cache`).

The reference is a fresh quantisation of the same weights: a cached load must give exactly its
embeddings and provenance, and must not quantise again. A cache whose provenance no longer
matches (weights changed, another torch) is rebuilt with a log line. The cache lives in
songsight's cache directory; the model folder is never written.
"""

from __future__ import annotations

import json
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


@pytest.fixture(autouse=True)
def torch_engine_only(request, monkeypatch):
    """The torch cache's tests compare with torch's own quantisation: ONNX Runtime's audio
    tower (tested at the end, with the ``exports`` fixture) is switched off for them."""
    from songsight.encoders import int8_onnx

    if "exports" not in request.fixturenames:
        monkeypatch.setattr(int8_onnx, "onnxruntime_available", lambda: False)
        monkeypatch.setattr(int8_onnx, "_said_fallback", True)


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


# --- the audio tower on ONNX Runtime (`songsight.encoders.int8_onnx`) ------------------------
def _has_onnxruntime() -> bool:
    from songsight.encoders.int8_onnx import onnxruntime_available

    return onnxruntime_available()


needs_onnxruntime = pytest.mark.skipif(
    not _has_onnxruntime(), reason="ONNX Runtime is the 'int8' extra: pip install 'songsight[int8]'"
)


@pytest.fixture
def exports(monkeypatch) -> list:
    """Counts ONNX exports (the ONNX Runtime cache's only way to build)."""
    from songsight.encoders import int8_onnx

    calls = []
    real = int8_onnx.export_onnx

    def counting(tower, example, path):
        calls.append(tuple(example.shape))
        return real(tower, example, path)

    monkeypatch.setattr(int8_onnx, "export_onnx", counting)
    return calls


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@needs_onnxruntime
def test_int8_audio_tower_runs_on_onnxruntime_built_once(
    audio_model, clips, tiny_audio_encoder, exports, user_cache, caplog
):
    first = audio_int8(audio_model)
    tower = first.quantization["audio_tower"]
    assert tower["engine"] == "onnxruntime" and exports == [(2, *tower["input"])]
    # Exported on a batch of 2; batches of 1 and of 4 + 1 windows run (the batch axis is dynamic).
    five = clips * 2 + clips[:1]
    for batch in (clips[:1], five):
        got, want = first.embed_audio(batch), tiny_audio_encoder.embed_audio(batch)
        assert cosines(got, want).min() >= 0.98
    second = audio_int8(audio_model)
    assert len(exports) == 1  # read from the cache
    np.testing.assert_array_equal(second.embed_audio(five), first.embed_audio(five))
    assert second.provenance() == first.provenance()

    # Built by another ONNX Runtime: stale, rebuilt with a line that says why.
    meta = next(user_cache.glob("*/clap_audio_onnx.json"))
    saved = json.loads(meta.read_text())
    meta.write_text(json.dumps({**saved, "onnxruntime": "0.1"}))
    with caplog.at_level(logging.WARNING, logger="songsight.int8"):
        audio_int8(audio_model)
    assert len(exports) == 2 and "onnxruntime '0.1' -> " in caplog.text
    # A corrupt build is rebuilt too.
    meta.with_suffix(".onnx").write_bytes(b"not an onnx model")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="songsight.int8"):
        again = audio_int8(audio_model)
    assert len(exports) == 3 and "unreadable" in caplog.text
    np.testing.assert_array_equal(again.embed_audio(five), first.embed_audio(five))


def test_without_onnxruntime_int8_audio_stays_on_torch_and_says_so(
    audio_model, clips, tiny_audio_encoder, monkeypatch, caplog
):
    from songsight.encoders import int8_onnx

    monkeypatch.setattr(int8_onnx, "onnxruntime_available", lambda: False)
    monkeypatch.setattr(int8_onnx, "_said_fallback", False)
    with caplog.at_level(logging.WARNING, logger="songsight.int8"):
        encoder = audio_int8(audio_model)
    assert "pip install 'songsight[int8]'" in caplog.text
    assert "audio_tower" not in encoder.quantization and encoder.quantization["engine"] in ("x86", "fbgemm")  # fmt: skip
    got, want = encoder.embed_audio(clips), tiny_audio_encoder.embed_audio(clips)
    assert cosines(got, want).min() >= 0.98


@needs_onnxruntime
def test_an_unwritable_cache_still_runs_onnxruntime_and_says_why(
    audio_model, clips, tiny_audio_encoder, exports, monkeypatch, tmp_path, caplog
):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("SONGSIGHT_CACHE", str(blocker / "cache"))
    with caplog.at_level(logging.WARNING, logger="songsight.int8"):
        encoder = audio_int8(audio_model)
    assert encoder.quantization["audio_tower"]["engine"] == "onnxruntime" and len(exports) == 1
    assert "cannot create" in caplog.text
    got, want = encoder.embed_audio(clips), tiny_audio_encoder.embed_audio(clips)
    assert cosines(got, want).min() >= 0.98
