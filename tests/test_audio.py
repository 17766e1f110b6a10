"""Audio decoding, downmix, resampling, validation and windowing.

Files are written with soundfile (libsndfile >= 1.1 writes MP3 and OGG too), so every case
runs offline and in milliseconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from songsight.errors import InputFileError
from songsight.inputs.audio import (
    SILENCE_PEAK,
    load_audio,
    prepare_waveform,
    to_mono,
    window_bounds,
)
from tests.helpers import expect_input_error, peak_hz, tone

SR = 22_050


def _load_16k(path):
    return load_audio(path, 16_000)


FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


@pytest.mark.parametrize("ext", list(FORMATS))
def test_decodes_every_format(tmp_path, ext):
    wave = tone(440.0, 1.0, SR, 0.5)
    fmt, subtype = FORMATS[ext]
    path = tmp_path / f"tone.{ext}"
    sf.write(path, wave, SR, format=fmt, subtype=subtype)
    audio = load_audio(path, SR)
    assert audio.waveform.dtype == np.float32 and audio.waveform.ndim == 1
    assert audio.sample_rate_hz == SR and audio.source_rate_hz == SR and audio.source_channels == 1
    assert not audio.silent
    # Lossy codecs may add encoder delay/padding; a few ms at most.
    assert abs(len(audio.waveform) - len(wave)) <= 0.05 * SR
    assert abs(peak_hz(audio.waveform, SR) - 440.0) < 2.0
    if ext in ("wav", "flac"):  # lossless: equal to 16-bit quantisation
        np.testing.assert_allclose(audio.waveform, wave, atol=1.0 / 32768)


def test_stereo_downmix_is_channel_mean(tmp_path):
    rng = np.random.default_rng(0)
    stereo = (0.3 * rng.standard_normal((16_000, 2))).astype(np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 16_000, subtype="FLOAT")
    audio = load_audio(path, 16_000)
    assert audio.source_channels == 2
    np.testing.assert_array_equal(audio.waveform, stereo.mean(axis=1, dtype=np.float32))
    np.testing.assert_allclose(to_mono(stereo), stereo[:, 0] / 2 + stereo[:, 1] / 2, atol=1e-7)
    # An in-memory (T, C) array takes the same path.
    mem = prepare_waveform(stereo, 16_000, 16_000)
    np.testing.assert_array_equal(mem.waveform, audio.waveform)


def test_resample_keeps_frequency_and_length(tmp_path):
    wave = tone(1000.0, 2.0, SR, 0.5)
    path = tmp_path / "tone.wav"
    sf.write(path, wave, SR, subtype="FLOAT")
    audio = load_audio(path, 16_000)
    assert audio.sample_rate_hz == 16_000 and audio.source_rate_hz == SR
    assert len(audio.waveform) == 32_000
    assert audio.duration_s == pytest.approx(2.0)
    assert abs(peak_hz(audio.waveform, 16_000) - 1000.0) < 1.0
    # Amplitude survives (away from the edges, where the filter rings).
    mid = audio.waveform[2000:-2000]
    assert np.max(np.abs(mid)) == pytest.approx(0.5, abs=0.01)
    # Upsampling a bare array the same way.
    up = prepare_waveform(wave, SR, 48_000)
    assert len(up.waveform) == 96_000 and abs(peak_hz(up.waveform, 48_000) - 1000.0) < 1.0


def test_silent_file_loads_and_is_flagged(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(SR, np.float32), SR)
    audio = load_audio(path, 16_000)
    assert audio.silent and len(audio.waveform) == 16_000 and not np.any(audio.waveform)
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, tone(300.0, 0.5, SR, 100 * SILENCE_PEAK), SR, subtype="FLOAT")
    assert not load_audio(quiet, SR).silent


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3"])
def test_random_bytes_are_refused(tmp_path, ext):
    path = tmp_path / f"noise.{ext}"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    err = expect_input_error(_load_16k, path, "not a readable audio file|corrupt")
    assert "does not exist" not in err.reason  # the file exists; say what is wrong with it


def test_truncated_flac_is_refused(tmp_path):
    good = tmp_path / "good.flac"
    sf.write(good, tone(440.0, 1.0, SR, 0.5), SR, format="FLAC")
    bad = tmp_path / "cut.flac"
    bad.write_bytes(good.read_bytes()[:200])
    expect_input_error(_load_16k, bad, "corrupt|not a readable")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    expect_input_error(_load_16k, path, "empty file")


def test_zero_length_audio(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, np.float32), SR)
    assert path.stat().st_size > 0 and sf.info(path).frames == 0  # a valid header, no frames
    expect_input_error(_load_16k, path, "zero-length")


def test_nan_samples(tmp_path):
    wave = tone(440.0, 0.2, SR, 0.5)
    wave[100] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, wave, SR, subtype="FLOAT")
    expect_input_error(_load_16k, path, "NaN")


def test_text_file_is_not_audio(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("field notes: heard a wood thrush at dawn\n" * 20)
    err = expect_input_error(_load_16k, path, "not a readable audio file")
    assert str(path) not in err.reason  # the path is in the error once, not repeated


def test_missing_file(tmp_path):
    expect_input_error(_load_16k, tmp_path / "nowhere.wav", "not found")


def test_too_long_recording_is_refused(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(SR * 3, np.float32), SR)
    with pytest.raises(InputFileError, match="longer than"):
        load_audio(path, 16_000, max_duration_s=2.0)


@pytest.mark.parametrize(
    ("data", "rate", "match"),
    [
        (np.zeros(1000, np.int16), 16_000, "integer samples"),
        (np.arange(1000, dtype=np.int64), 16_000, "integer samples"),
        (np.full(1000, 128, np.uint8), 16_000, "integer samples"),
        (np.zeros(1000, complex), 16_000, "floating point"),
        (np.array(["a", "b"]), 16_000, "floating point"),
        (np.zeros(0, np.float32), 16_000, "zero-length"),
        (np.zeros((10, 2, 2), np.float32), 16_000, "shape"),
        (np.array([0.0, np.inf], np.float32), 16_000, "NaN or infinite"),
        (np.zeros(100, np.float32), 0, "sample rate"),
        (np.zeros(100, np.float32), 16_000.5, "sample rate"),
    ],
)
def test_bad_arrays(data, rate, match):
    with pytest.raises(InputFileError, match=match) as info:
        prepare_waveform(data, rate, 16_000, name="<clip 3>")
    assert info.value.path == "<clip 3>"


def test_float64_array_is_accepted():
    audio = prepare_waveform(
        tone(440.0, 0.5, 16_000, 0.5).astype(np.float64), np.int64(16_000), 16_000
    )
    assert audio.waveform.dtype == np.float32 and len(audio.waveform) == 8_000


def brute_windows(n: int, win: int, hop: int) -> list[tuple[int, int]]:
    """Reference: slide a window one hop at a time; cover a tail longer than a tenth of a window."""
    if n <= win:
        return [(0, n)]
    out = []
    start = 0
    while start + win <= n:
        out.append((start, start + win))
        start += hop
    if n - out[-1][1] > win / 10:
        out.append((n - win, n))
    return out


@pytest.mark.parametrize(
    ("window_s", "hop_s"), [(2.0, 1.0), (10.0, 5.0), (1.0, 0.25), (3.0, 3.0), (2.5, 0.7)]
)
def test_window_bounds_against_brute_force(window_s, hop_s):
    rate = 16_000
    win, hop = int(window_s * rate), int(round(hop_s * rate))
    for n in [1, win // 2, win - 1, win, win + 1, win + win // 10, win + win // 10 + 1,
              win + hop, 3 * win + 17, 7 * hop + win // 3]:  # fmt: skip
        got = window_bounds(n, rate, window_s, hop_s)
        assert got == brute_windows(n, win, hop), n
        # Properties the encoder relies on: in range, full windows, audio covered to the end.
        assert got[0][0] == 0 and all(0 <= a < b <= n for a, b in got)
        if n > win:
            assert all(b - a == win for a, b in got)
            assert n - got[-1][1] <= win / 10


def test_window_bounds_examples():
    # Short clip: one window holding all of it (the encoder pads).
    assert window_bounds(8_000, 16_000, 2.0, 1.0) == [(0, 8_000)]
    # 5.5 s at hop 1 s, window 2 s: starts 0..3 s, then a tail window ending at 5.5 s.
    assert window_bounds(88_000, 16_000, 2.0, 1.0) == [
        (0, 32_000), (16_000, 48_000), (32_000, 64_000), (48_000, 80_000), (56_000, 88_000)]  # fmt: skip
    # Exactly 4 s: no tail window.
    assert window_bounds(64_000, 16_000, 2.0, 1.0)[-1] == (32_000, 64_000)
    with pytest.raises(ValueError):
        window_bounds(100, 16_000, 0.0, 1.0)
