"""Audio input: decode, downmix, resample, validate, and cut into windows.

Everything here works on float32 mono numpy arrays; no model knowledge beyond the target
``sample_rate_hz`` an encoder asks for. Decoding uses libsndfile (wav, flac, ogg, mp3 in
libsndfile >= 1.1) and resampling uses soxr's high-quality mode.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from songsight.errors import InputFileError, require_file

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")

# Peak amplitude under which a whole file counts as silent (about -90 dBFS): it is still
# embedded, but flagged, because a silent file usually means a broken recorder or export.
SILENCE_PEAK = 3e-5

# A cap on decoded length protects memory: 6 h at 48 kHz float32 is ~4 GB.
MAX_DURATION_S = 6 * 3600.0


@dataclass
class Audio:
    """A decoded recording: ``waveform`` (T,) float32 mono at ``sample_rate_hz``."""

    waveform: np.ndarray
    sample_rate_hz: int
    source_rate_hz: int
    source_channels: int
    silent: bool

    @property
    def duration_s(self) -> float:
        return len(self.waveform) / self.sample_rate_hz


def to_mono(data: np.ndarray) -> np.ndarray:
    """(T,) or (T, C) -> (T,) float32 by averaging channels."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        data = data.mean(axis=1, dtype=np.float32)
    elif data.ndim != 1:
        raise ValueError(f"audio must be (T,) or (T, C), got shape {data.shape}")
    return np.ascontiguousarray(data)


def resample(waveform: np.ndarray, from_rate_hz: int, to_rate_hz: int) -> np.ndarray:
    """Resample (T,) float32 with soxr (HQ); identity when the rates match."""
    if from_rate_hz == to_rate_hz:
        return waveform.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(waveform, from_rate_hz, to_rate_hz, quality="HQ").astype(
        np.float32, copy=False
    )


def prepare_waveform(
    data: np.ndarray, sample_rate_hz: int, target_rate_hz: int, name: str = "<array>"
) -> Audio:
    """Validate an in-memory waveform, downmix and resample it. Raises `InputFileError`."""
    if not isinstance(sample_rate_hz, (int, np.integer)) or sample_rate_hz <= 0:
        raise InputFileError(name, f"invalid sample rate {sample_rate_hz!r}")
    arr = np.asarray(data)
    if arr.dtype.kind in "iu":
        # The scale of integer samples is ambiguous (int16 PCM, int32, uint8 offset, counts);
        # guessing it silently would give wrong levels, so ask for float in [-1, 1].
        raise InputFileError(
            name,
            f"integer samples (dtype {arr.dtype}): pass float audio in [-1, 1], "
            "e.g. x / 32768 for 16-bit PCM",
        )
    if arr.dtype.kind != "f":
        raise InputFileError(name, f"audio samples must be floating point, got dtype {arr.dtype}")
    channels = 1 if arr.ndim == 1 else arr.shape[1] if arr.ndim == 2 else -1
    if channels < 0:
        raise InputFileError(
            name, f"audio must be (samples,) or (samples, channels), got shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise InputFileError(name, "zero-length audio (no samples)")
    mono = to_mono(arr)
    if not np.isfinite(mono).all():
        raise InputFileError(name, "audio contains NaN or infinite samples")
    wave = resample(mono, int(sample_rate_hz), target_rate_hz)
    silent = bool(np.max(np.abs(mono)) < SILENCE_PEAK)
    return Audio(wave, target_rate_hz, int(sample_rate_hz), channels, silent)


def load_audio(
    path: str | Path, target_rate_hz: int, max_duration_s: float = MAX_DURATION_S
) -> Audio:
    """Decode a file to mono float32 at ``target_rate_hz``.

    Raises `InputFileError` with a readable reason for: missing, empty, non-audio or corrupt
    files, zero-length or NaN content, and recordings longer than ``max_duration_s``.
    """
    import soundfile as sf

    path = Path(path)
    name = require_file(path)
    try:
        info = sf.info(str(path))
    except Exception as exc:  # libsndfile says "Format not recognised" and the like
        raise InputFileError(name, f"not a readable audio file ({short_error(exc)})") from None
    if info.frames <= 0 and info.format not in ("MPEG", "OGG"):
        raise InputFileError(name, "zero-length audio (no samples)")
    if info.duration > max_duration_s:
        raise InputFileError(
            name,
            f"recording is {info.duration:.0f} s, longer than the {max_duration_s:.0f} s limit",
        )
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise InputFileError(name, f"corrupt audio, decoding failed ({short_error(exc)})") from None
    return prepare_waveform(data, int(rate), target_rate_hz, name)


def short_error(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    # libsndfile prefixes "Error opening '<path>': " (the path is already in the error) and
    # says "File does not exist ..." for undecodable MP3 data in a file that does exist.
    text = re.sub(r"^Error opening .*?: ", "", lines[-1])
    if "does not exist" in text:
        text = "format not recognised or data corrupt"
    return text[:200]


def window_bounds(
    n_samples: int, sample_rate_hz: int, window_s: float, hop_s: float
) -> list[tuple[int, int]]:
    """Sample ranges [start, end) of analysis windows covering a recording.

    A recording no longer than one window gives one window (the encoder pads it). Longer ones
    get windows every ``hop_s``; the last window is placed so it ends at the recording's end
    (when at least a tenth of a window would otherwise be left out), so no audio is dropped
    and no window is mostly padding.
    """
    if window_s <= 0 or hop_s <= 0:
        raise ValueError("window_s and hop_s must be positive")
    win = int(round(window_s * sample_rate_hz))
    hop = int(round(hop_s * sample_rate_hz))
    if n_samples <= win:
        return [(0, n_samples)]
    n_full = 1 + (n_samples - win) // hop
    bounds = [(i * hop, i * hop + win) for i in range(n_full)]
    tail = n_samples - bounds[-1][1]
    if tail > 0.1 * win:
        bounds.append((n_samples - win, n_samples))
    return bounds
