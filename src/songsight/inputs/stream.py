"""Recordings streamed into analysis windows.

`iter_windows` decodes a file block by block with a streaming resampler, so an hour-long
soundscape costs the memory of one block and one window, not of the hour. Windows are cut by
the one rule, `songsight.inputs.audio.window_bounds`; `songsight.encoders.windows` embeds them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from songsight.errors import InputFileError, require_file
from songsight.inputs.audio import short_error

__all__ = ["BLOCK_S", "DecodeInfo", "iter_windows"]

BLOCK_S = 30.0  # decode this much audio at a time


@dataclass
class DecodeInfo:
    """Filled in while `iter_windows` runs: what the recording turned out to be."""

    n_samples: int = 0  # at the target rate
    sample_rate_hz: int = 0
    source_rate_hz: int = 0
    silent: bool = False

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sample_rate_hz if self.sample_rate_hz else 0.0


def _file_blocks(path: Path, block_s: float, info: DecodeInfo) -> Iterator[np.ndarray]:
    """(T, C) float32 blocks of a file at its own rate; `InputFileError` when unusable."""
    import soundfile as sf

    name = require_file(path)
    try:
        fh = sf.SoundFile(name)
    except Exception as exc:
        raise InputFileError(name, f"not a readable audio file ({short_error(exc)})") from None
    with fh:
        info.source_rate_hz = int(fh.samplerate)
        blocks = fh.blocks(
            blocksize=max(1, int(block_s * fh.samplerate)), dtype="float32", always_2d=True
        )
        while True:
            try:
                block = next(blocks)
            except StopIteration:
                return
            except Exception as exc:
                raise InputFileError(
                    name, f"corrupt audio, decoding failed ({short_error(exc)})"
                ) from None
            yield block


def iter_windows(
    source,
    sample_rate_hz: int,
    window_s: float,
    hop_s: float,
    info: DecodeInfo | None = None,
    block_s: float = BLOCK_S,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, end, samples)`` of each analysis window, cut as `audio.window_bounds` cuts.

    ``source``: a file path, decoded ``block_s`` at a time, downmixed and resampled to
    ``sample_rate_hz`` by a streaming soxr resampler (which gives the same samples as resampling
    the whole file at once); memory holds one block plus one window whatever the duration. Or
    a ``(waveform, rate)`` tuple, already in memory. Sample indices are at ``sample_rate_hz``.
    ``info`` is filled in as decoding goes (duration and silence are known at the end). Raises
    `InputFileError` (possibly after some windows) for unusable audio.
    """
    from songsight.inputs.audio import SILENCE_PEAK, prepare_waveform, to_mono, window_bounds

    info = info if info is not None else DecodeInfo()
    info.sample_rate_hz = int(sample_rate_hz)
    win = int(round(window_s * sample_rate_hz))
    hop = int(round(hop_s * sample_rate_hz))
    if win <= 0 or hop <= 0:
        raise ValueError("window_s and hop_s must be positive")
    if isinstance(source, tuple):
        wave, rate = source
        audio = prepare_waveform(wave, rate, int(sample_rate_hz), "<array>")
        info.source_rate_hz, info.silent = audio.source_rate_hz, audio.silent
        info.n_samples = len(audio.waveform)
        for a, b in window_bounds(len(audio.waveform), int(sample_rate_hz), window_s, hop_s):
            yield a, b, audio.waveform[a:b]
        return

    import soxr

    path = Path(source)
    buf = np.zeros(0, np.float32)
    buf_start = next_start = n = n_source = n_cut = 0
    peak = 0.0
    resampler = None

    def feed(chunk: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
        nonlocal buf, buf_start, next_start, n, n_cut
        buf = np.concatenate([buf, chunk]) if len(buf) else chunk
        n += len(chunk)
        while next_start + win <= n:
            a = next_start - buf_start
            yield next_start, next_start + win, buf[a : a + win].copy()
            next_start += hop
            n_cut += 1
        # Keep what a later full window or the final end-aligned window can still need.
        keep_from = max(buf_start, min(next_start, n - win))
        buf, buf_start = buf[keep_from - buf_start :], keep_from

    for block in _file_blocks(path, block_s, info):
        mono = to_mono(block)
        if not np.isfinite(mono).all():
            raise InputFileError(str(path), "audio contains NaN or infinite samples")
        if len(mono):
            peak = max(peak, float(mono.max()), -float(mono.min()))
        n_source += len(mono)
        if info.source_rate_hz != sample_rate_hz and resampler is None:
            resampler = soxr.ResampleStream(
                info.source_rate_hz, int(sample_rate_hz), 1, dtype="float32", quality="HQ"
            )
        yield from feed(resampler.resample_chunk(mono) if resampler else mono)
    if resampler is not None:
        yield from feed(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    if n_source == 0 or n == 0:
        raise InputFileError(str(path), "zero-length audio (no samples)")
    info.n_samples, info.silent = n, peak < SILENCE_PEAK
    # The windows the stream has cut are the first ones of the rule's list (every hop while a
    # whole window fits); what the rule adds once the length is known (the one short window,
    # the end-aligned last one) is still in the buffer.
    for a, b in window_bounds(n, int(sample_rate_hz), window_s, hop_s)[n_cut:]:
        yield a, b, buf[a - buf_start : b - buf_start].copy()
