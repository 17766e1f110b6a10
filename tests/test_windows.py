"""The one window pipeline (`songsight.encoders.windows`) against a whole-file reference."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import soundfile as sf

from songsight.encoders.biolingual import BioLingualEncoder
from songsight.errors import InputFileError
from songsight.inputs.audio import load_audio, window_bounds

RATE = 16_000  # the tiny CLAP's rate; its window is 2 s


def _noise_file(path, seconds: float, rate: int, seed: int):
    wave = 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))
    sf.write(
        path, wave.astype(np.float32), rate, subtype="FLOAT" if path.suffix == ".wav" else None
    )
    return path


@pytest.mark.parametrize("window_s,hop_s", [(None, None), (1.0, 0.3), (1.5, None)])
def test_streamed_windows_equal_the_whole_file_reference(tiny_models, tmp_path, window_s, hop_s):
    """Every window embedding equals the encoder's forward of the same samples cut from the
    fully decoded file by `window_bounds`, across files sharing batches, after resampling."""
    enc = BioLingualEncoder(tiny_models[0], device="cpu", batch_size=3, decode_threads=2)
    paths = [
        _noise_file(tmp_path / "a.wav", 7.3, 22_050, 0),  # resampled, end-aligned last window
        _noise_file(tmp_path / "b.flac", 0.7, RATE, 1),  # shorter than a window
        _noise_file(tmp_path / "c.wav", 4.0, 48_000, 2),
    ]
    win, hop = enc.windowing(window_s, hop_s)
    if window_s == 1.5:
        assert hop == 0.75  # another window than the model's steps by half of it
    got = dict(enc.embed_windows(paths, window_s, hop_s))
    for i, path in enumerate(paths):
        audio = load_audio(path, RATE)
        bounds = window_bounds(len(audio.waveform), RATE, win, hop)
        ref = enc._forward([audio.waveform[a:b] for a, b in bounds])
        res = got[i]
        np.testing.assert_allclose(res.windows, ref, atol=2e-5)
        np.testing.assert_allclose(res.starts_s, [a / RATE for a, _ in bounds])
        np.testing.assert_allclose(res.ends_s, [b / RATE for _, b in bounds])
        mean = ref.mean(axis=0)
        np.testing.assert_allclose(res.clip, mean / np.linalg.norm(mean), atol=2e-5)
        assert res.duration_s == pytest.approx(audio.duration_s)


def test_a_file_that_fails_midway_drops_only_its_own_windows(tiny_models, tmp_path):
    """A recording whose decoding breaks after some windows yields its error; the windows it
    had put in a shared batch are dropped, and its neighbours' embeddings are unchanged."""
    enc = BioLingualEncoder(tiny_models[0], device="cpu", batch_size=4)
    good_a = _noise_file(tmp_path / "a.wav", 5.0, RATE, 3)
    good_b = _noise_file(tmp_path / "b.wav", 3.0, RATE, 4)
    wave = 0.1 * np.random.default_rng(5).standard_normal(RATE * 60).astype(np.float32)
    wave[RATE * 40] = np.nan  # the 41st second: after the first decoded block
    broken = tmp_path / "broken.wav"
    sf.write(broken, wave, RATE, subtype="FLOAT")
    alone = dict(enc.embed_windows([good_a, good_b]))
    got = dict(enc.embed_windows([good_a, broken, good_b]))
    assert isinstance(got[1], InputFileError) and "NaN" in got[1].reason
    np.testing.assert_allclose(got[0].windows, alone[0].windows, atol=1e-6)
    np.testing.assert_allclose(got[2].windows, alone[1].windows, atol=1e-6)


def test_stopping_early_releases_the_decoders(tiny_models, tmp_path):
    """A consumer that stops after the first recording leaves no decode thread behind."""
    enc = BioLingualEncoder(tiny_models[0], device="cpu", batch_size=2, decode_threads=3)
    paths = [_noise_file(tmp_path / f"{i}.wav", 12.0, RATE, i) for i in range(6)]
    stream = enc.embed_windows(paths)
    first_index, first = next(stream)
    assert first_index == 0 and len(first.windows) > 1
    stream.close()
    deadline = time.monotonic() + 10.0
    while any(t.name.startswith("decode") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "decode threads still running after close()"
        time.sleep(0.05)
