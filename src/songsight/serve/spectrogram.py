"""The spectrogram image the web page draws under a recording's timeline."""

from __future__ import annotations

import io

import numpy as np

__all__ = ["spectrogram_png"]


def spectrogram_png(
    waveform: np.ndarray, sample_rate_hz: int, max_hz: float = 12_000.0, width_px: int = 1200
) -> tuple[bytes, float]:
    """(T,) float32 -> (PNG bytes, top frequency in Hz) of a log-power spectrogram.

    No margins or axes: time runs over the full width and 0 Hz is the bottom row, so the page
    can lay windows over it by fraction of duration. Frames (Hann, 50% overlap) are max-pooled
    to at most ``width_px`` columns so a short call in a long recording still shows.
    """
    from matplotlib import colormaps
    from PIL import Image

    n_fft = 1024 if sample_rate_hz >= 32_000 else 512
    hop = n_fft // 2
    x = np.asarray(waveform, dtype=np.float32)
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    top_hz = min(max_hz, sample_rate_hz / 2)
    n_bins = int(top_hz * n_fft / sample_rate_hz) + 1
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    window = np.hanning(n_fft).astype(np.float32)
    power = np.empty((len(frames), n_bins), dtype=np.float32)
    for i in range(0, len(frames), 2048):  # chunks keep the complex FFT output small
        spec = np.fft.rfft(frames[i : i + 2048] * window, axis=1)[:, :n_bins]
        power[i : i + 2048] = spec.real**2 + spec.imag**2
    n_cols = min(width_px, len(power))
    starts = (np.arange(n_cols) * len(power)) // n_cols
    pooled = np.maximum.reduceat(power, starts, axis=0)
    db = 10 * np.log10(pooled + 1e-12)
    top = float(db.max())
    # The median is mostly background, so starting the colour scale there makes calls stand
    # out; 80 dB below the peak bounds it for clean recordings.
    floor = max(top - 80.0, float(np.median(db)))
    span = max(top - floor, 1e-6)
    level = np.clip((db - floor) / span, 0, 1) if top > -100 else np.zeros_like(db)
    rgb = (colormaps["magma"](level.T[::-1])[..., :3] * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue(), float((n_bins - 1) * sample_rate_hz / n_fft)
