"""The ONNX Runtime path of embedding jobs: torch-free features and pixels equal to the torch
encoders' own, the cached export and its provenance, the choice of runtime, and a CLI job that
never imports torch."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from songsight.encoders import ort_cache, runtime
from songsight.encoders.ort_audio import NumpyLogMel, OnnxAudioEncoder
from songsight.encoders.ort_images import OnnxImageEncoder, PixelTransform, supported
from songsight.errors import SongsightError
from tests.helpers import noise_pixels, tone

pytest.importorskip("onnxruntime", reason="the 'int8' extra: pip install 'songsight[int8]'")


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """A cache of this test's own: every export in it is made here."""
    monkeypatch.setenv("SONGSIGHT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)


# --- features and pixels against the torch encoders' own -------------------------------------


def test_numpy_log_mel_equals_the_torch_features(tiny_audio_encoder):
    torch_feats = tiny_audio_encoder.features
    mine = NumpyLogMel(torch_feats.describe(), torch_feats.mel_filters.numpy())
    n = torch_feats.max_samples
    rng = np.random.default_rng(0)
    waves = [
        tone(700, n / torch_feats.sample_rate_hz, torch_feats.sample_rate_hz),  # a whole window
        rng.standard_normal(n // 3).astype(np.float32) * 0.1,  # short: repeat-padded
        np.zeros(n, np.float32),  # silence: the 1e-10 floor
        rng.standard_normal(17).astype(np.float32),  # a few samples
    ]
    want = torch_feats(waves, "cpu").numpy()
    got = mine(waves)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)


def test_numpy_log_mel_refuses_float32_stft_settings(tiny_audio_encoder):
    described = {**tiny_audio_encoder.features.describe(), "stft_dtype": "float32"}
    with pytest.raises(ValueError, match="float64"):
        NumpyLogMel(described, tiny_audio_encoder.features.mel_filters.numpy())


@pytest.mark.parametrize("size_wh", [(500, 375), (375, 500), (224, 224), (301, 300), (40, 90)])
@pytest.mark.parametrize("resize_mode", ["shortest", "squash"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_pixels_equal_open_clips_transform(size_wh, resize_mode, interpolation):
    """At BioCLIP-2's 224 and the CLIP mean/std, against open_clip's own eval transform."""
    from dataclasses import asdict

    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = PreprocessCfg(size=224, resize_mode=resize_mode, interpolation=interpolation)
    reference = image_transform_v2(cfg, is_train=False)
    img = Image.fromarray(noise_pixels(3, size_wh))
    plain = json.loads(json.dumps(asdict(cfg)))
    assert supported(plain, "model")
    got = PixelTransform(plain)(img)
    np.testing.assert_allclose(got, reference(img).numpy(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("frames, width", [(1001, 1024), (201, 256), (7, 16), (256, 256)])
def test_time_stretch_taps_are_torchs_bicubic_interpolation(frames, width):
    import torch

    index, weight = ort_cache.time_stretch_taps(frames, width)
    x = torch.randn(3, 1, frames, 16, generator=torch.Generator().manual_seed(frames))
    want = torch.nn.functional.interpolate(x, (width, 16), mode="bicubic", align_corners=True)
    got = (x[:, :, index.reshape(-1)].reshape(3, 1, width, 4, 16) * weight[:, :, None]).sum(3)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_the_exported_tower_stretches_time_as_the_model_does(tiny_audio_encoder):
    """The tower the export traces (taps before the model) and CLAP's own forward (bicubic
    inside the model) give the same embedding; the tiny model stretches 201 frames to 256."""
    import torch

    feats = tiny_audio_encoder.features
    x = feats([np.asarray(tone(700, 2.0, 16_000, noise_amp=0.1, seed=s), np.float32) for s in range(3)], "cpu")  # fmt: skip
    model = tiny_audio_encoder.model
    encoder = model.audio_model.audio_encoder
    assert x.shape[2] < encoder.spec_size * encoder.freq_ratio  # the case the taps replace
    stretched = ort_cache.clap_audio_tower(model, tuple(x.shape[1:]))
    assert hasattr(stretched, "taps")
    with torch.no_grad():
        torch.testing.assert_close(stretched(x), ort_cache.clap_audio_tower(model)(x), atol=1e-5, rtol=1e-4)  # fmt: skip


def test_unsupported_preprocessing_is_named():
    assert not supported({"size": 224, "resize_mode": "longest", "mean": [0] * 3, "std": [1] * 3}, "model")  # fmt: skip
    assert not supported({"size": [224, 256], "resize_mode": "shortest"}, "model")
    assert supported({"size": 224, "resize_mode": "longest", "interpolation": "bicubic"}, "squash")


# --- the encoders, the cache, the choice ------------------------------------------------------


def test_audio_encoder_matches_torch_and_shares_its_store_rows(tiny_models, tiny_audio_encoder, fresh_cache, tmp_path):  # fmt: skip
    rate = 16_000
    paths = []
    for i, seconds in enumerate((0.7, 2.5, 9.0)):
        paths.append(tmp_path / f"c{i}.wav")
        sf.write(paths[-1], tone(500 + 300 * i, seconds, rate, noise_amp=0.05, seed=i), rate)
    enc = runtime.open_audio_encoder(tiny_models[0], device="cpu", batch_size=4)
    assert isinstance(enc, OnnxAudioEncoder)
    got, want = enc.embed_clips(paths), tiny_audio_encoder.embed_clips(paths)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.starts_s, w.starts_s)
        np.testing.assert_allclose(g.windows, w.windows, atol=1e-5)
        assert _cosines(g.windows, w.windows).min() > 0.99999
    mine, theirs = enc.provenance(), tiny_audio_encoder.provenance()
    assert mine.pop("runtime")["engine"] == "onnxruntime"
    assert mine == theirs  # the same store identity: runs on either runtime resume each other
    assert enc.windowing(1.0) == tiny_audio_encoder.windowing(1.0) == (1.0, 0.5)


def test_image_encoder_matches_torch_for_both_preprocessings(tiny_models, fresh_cache, tmp_path):
    from songsight.encoders.bioclip import BioCLIPEncoder

    photos = []
    for i, wh in enumerate([(500, 375), (60, 90), (33, 33)]):
        photos.append(tmp_path / f"p{i}.jpg")
        Image.fromarray(noise_pixels(i, wh)).save(photos[-1])
    for mode in ("model", "squash"):
        enc = runtime.open_image_encoder(
            tiny_models[1], device="cpu", preprocess=mode, batch_size=2
        )
        assert isinstance(enc, OnnxImageEncoder)
        torch_enc = BioCLIPEncoder(tiny_models[1], device="cpu", preprocess=mode, batch_size=2)
        np.testing.assert_allclose(enc.embed_images(photos), torch_enc.embed_images(photos), atol=1e-5)  # fmt: skip
        mine = json.loads(json.dumps(enc.provenance()))
        mine.pop("runtime")
        assert mine == json.loads(json.dumps(torch_enc.provenance()))


def test_the_export_is_made_once_then_read_without_torch_encoders(tiny_models, fresh_cache, monkeypatch):  # fmt: skip
    runtime.open_audio_encoder(tiny_models[0], device="cpu")
    files = sorted(p.name for p in fresh_cache.rglob("*") if p.is_file())
    assert files == ["clap_audio.json", "clap_audio.npz", "clap_audio.onnx", "clap_audio.onnx.data"]  # fmt: skip
    import songsight.encoders.biolingual as biolingual

    def no_torch_encoder(*a, **k):
        raise AssertionError("the cached export should have been used")

    monkeypatch.setattr(biolingual.BioLingualEncoder, "__init__", no_torch_encoder)
    assert isinstance(runtime.open_audio_encoder(tiny_models[0], device="cpu"), OnnxAudioEncoder)


def test_a_changed_model_or_a_corrupt_export_is_exported_again(tiny_models, fresh_cache, tmp_path, caplog):  # fmt: skip
    import shutil

    model = Path(shutil.copytree(tiny_models[0], tmp_path / "audio"))
    first = runtime.open_audio_encoder(model, device="cpu")
    onnx = next(fresh_cache.rglob("clap_audio.onnx"))
    config = model / "config.json"
    config.write_text(config.read_text() + "\n")  # the same model, rewritten: a new digest
    with caplog.at_level(logging.WARNING, logger="songsight.onnx"):
        again = runtime.open_audio_encoder(model, device="cpu")
    assert "stale" in caplog.text and isinstance(again, OnnxAudioEncoder)
    onnx.write_bytes(b"not an onnx model")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="songsight.onnx"):
        third = runtime.open_audio_encoder(model, device="cpu")
    assert "unreadable" in caplog.text and isinstance(third, OnnxAudioEncoder)
    wave = [(tone(800, 1.0, 16_000), 16_000)]
    np.testing.assert_allclose(first.embed_audio(wave), third.embed_audio(wave), atol=1e-6)


def test_a_failed_export_runs_on_torch_and_is_not_tried_again(tiny_models, fresh_cache, monkeypatch, caplog):  # fmt: skip
    from songsight.encoders.biolingual import BioLingualEncoder

    calls = []

    def broken(encoder):
        calls.append(1)
        raise RuntimeError("an operator with no ONNX export")

    monkeypatch.setattr(ort_cache, "build_audio", broken)
    with caplog.at_level(logging.WARNING, logger="songsight.onnx"):
        enc = runtime.open_audio_encoder(tiny_models[0], device="cpu")
    assert isinstance(enc, BioLingualEncoder) and "an operator with no ONNX export" in caplog.text
    assert isinstance(runtime.open_audio_encoder(tiny_models[0], device="cpu"), BioLingualEncoder)
    assert calls == [1]


def test_a_failed_int8_export_runs_torchs_int8_and_is_not_tried_again(tiny_models, fresh_cache, monkeypatch, caplog):  # fmt: skip
    """int8 audio exports from the fp32 tower; when that fails the job runs torch's int8 (the
    precision asked for, not the fp32 encoder it exported from), then and on later jobs."""
    from songsight.encoders.biolingual import BioLingualEncoder

    calls = []

    def broken(encoder):
        calls.append(encoder.precision)
        raise RuntimeError("no quantised export")

    monkeypatch.setattr(ort_cache, "build_audio_int8", broken)
    with caplog.at_level(logging.WARNING, logger="songsight.onnx"):
        enc = runtime.open_audio_encoder(tiny_models[0], device="cpu", precision="int8")
    assert isinstance(enc, BioLingualEncoder) and enc.precision == "int8"
    assert "no quantised export" in caplog.text
    again = runtime.open_audio_encoder(tiny_models[0], device="cpu", precision="int8")
    assert isinstance(again, BioLingualEncoder) and again.precision == "int8"
    assert calls == ["fp32"]


@pytest.mark.parametrize(
    ("asked", "device", "precision", "want"),
    [
        ("auto", "cpu", "auto", "onnxruntime"),
        ("auto", "cpu", "fp32", "onnxruntime"),
        ("auto", "cpu", "int8", "torch"),  # int8 has its own ONNX Runtime audio tower
        ("auto", "cuda", "auto", "torch"),
        ("auto", "cpu", "bf16", "torch"),
        ("torch", "cpu", "auto", "torch"),
        ("onnxruntime", None, "auto", "onnxruntime"),
    ],
)
def test_choose_runtime(asked, device, precision, want):
    assert runtime.choose_runtime(asked, device, precision) == want


def test_choose_runtime_without_onnxruntime_or_where_it_cannot_run(monkeypatch):
    with pytest.raises(SongsightError, match="fp32 on the CPU only.*precision int8"):
        runtime.choose_runtime("onnxruntime", "cpu", "int8")
    monkeypatch.setattr(runtime, "onnxruntime_available", lambda: False)
    assert runtime.choose_runtime("auto", "cpu", "auto") == "torch"
    with pytest.raises(SongsightError, match="songsight\\[int8\\]"):
        runtime.choose_runtime("onnxruntime", "cpu", "auto")
    monkeypatch.setattr(runtime, "onnxruntime_available", lambda: True)
    monkeypatch.setattr(runtime, "gpu_may_be_present", lambda: True)
    assert runtime.choose_runtime("auto", None, "auto") == "torch"  # torch chooses the device
    assert runtime.choose_runtime("auto", "cpu", "auto") == "onnxruntime"


def test_cli_job_starts_without_importing_torch(tiny_models, tmp_path):
    """What start-up is about: with the export cached, `songsight embed` never imports torch,
    transformers or open_clip (run in a fresh interpreter)."""
    sf.write(tmp_path / "a.wav", tone(900, 1.5, 16_000), 16_000)
    Image.fromarray(noise_pixels(1, (80, 60))).save(tmp_path / "p.jpg")
    script = (
        "import sys\nfrom songsight.cli import main\n"
        f"a = main(['embed', 'audio', {str(tmp_path / 'a.wav')!r}, '--audio-model', {str(tiny_models[0])!r}, "
        f"'--out', {str(tmp_path / 'a.parquet')!r}, '--quiet', '--overwrite'])\n"
        f"i = main(['embed', 'images', {str(tmp_path / 'p.jpg')!r}, '--image-model', {str(tiny_models[1])!r}, "
        f"'--out', {str(tmp_path / 'i.parquet')!r}, '--quiet', '--overwrite'])\n"
        "print(a, i, *(m in sys.modules for m in ('torch', 'transformers', 'open_clip')))\n"
    )  # fmt: skip
    env = {**os.environ, "SONGSIGHT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert first.stdout.split()[-5:] == ["0", "0", "True", "True", "True"], first.stderr  # exports
    second = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert second.stdout.split()[-5:] == ["0", "0", "False", "False", "False"], second.stderr


def test_no_export_on_a_machine_short_of_memory_or_disk(tiny_models, fresh_cache, monkeypatch, caplog):  # fmt: skip
    """The export holds ~4x the weights: a small machine stays on torch, and is not marked as
    failed, so a later job with room exports."""
    from songsight.encoders.biolingual import BioLingualEncoder

    monkeypatch.setattr(ort_cache, "_available_memory_bytes", lambda: 1 << 20)
    with caplog.at_level(logging.WARNING, logger="songsight.onnx"):
        enc = runtime.open_audio_encoder(tiny_models[0], device="cpu")
    assert isinstance(enc, BioLingualEncoder) and "free memory" in caplog.text
    assert not list(fresh_cache.rglob("*.json"))
    monkeypatch.setattr(ort_cache, "_available_memory_bytes", lambda: 64 << 30)

    class Full:
        free = 1 << 10

    monkeypatch.setattr("shutil.disk_usage", lambda path: Full)
    assert isinstance(runtime.open_audio_encoder(tiny_models[0], device="cpu"), BioLingualEncoder)
    monkeypatch.undo()
    monkeypatch.setenv("SONGSIGHT_CACHE", str(fresh_cache))
    assert isinstance(runtime.open_audio_encoder(tiny_models[0], device="cpu"), OnnxAudioEncoder)
