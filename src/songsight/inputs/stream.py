"""Recordings streamed into analysis windows, and the windows embedded in batches.

`iter_windows` decodes a file block by block with a streaming resampler, so an hour-long
soundscape costs the memory of one block and one window, not of the hour. `_embed_recordings`
batches windows across recordings for an encoder and yields each recording's embeddings once
all its windows are in (what `songsight.retrieval.searcher.Searcher` searches with).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from songsight.errors import InputFileError, require_file
from songsight.inputs.audio import _short

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
        raise InputFileError(name, f"not a readable audio file ({_short(exc)})") from None
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
                    name, f"corrupt audio, decoding failed ({_short(exc)})"
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
    buf_start = next_start = n = n_source = 0
    peak = 0.0
    resampler = None

    def feed(chunk: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
        nonlocal buf, buf_start, next_start, n
        buf = np.concatenate([buf, chunk]) if len(buf) else chunk
        n += len(chunk)
        while next_start + win <= n:
            a = next_start - buf_start
            yield next_start, next_start + win, buf[a : a + win].copy()
            next_start += hop
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
    if n < win:
        yield 0, n, buf[:n].copy()  # the one short window; the encoder pads it
    elif n > win:
        last_end = ((n - win) // hop) * hop + win
        if n - last_end > 0.1 * win:  # as window_bounds: end-aligned last window
            a = n - win - buf_start
            yield n - win, n, buf[a : a + win].copy()


@dataclass
class _Embedded:
    windows: np.ndarray  # (W, D) unit norm
    starts_s: np.ndarray
    ends_s: np.ndarray
    duration_s: float
    silent: bool
    window_silent: np.ndarray  # (W,) bool: the window's peak is under `audio.SILENCE_PEAK`


def _embed_recordings(
    encoder, sources: Sequence, window_s: float, hop_s: float, block_s: float = BLOCK_S
) -> Iterator[tuple[int, _Embedded | InputFileError]]:
    """Embed each source's windows, batching windows across sources; yields in source order."""
    from songsight.inputs.audio import SILENCE_PEAK

    batch: list[np.ndarray] = []
    owners: list[int] = []
    live: dict[int, dict] = {}
    waiting: list[tuple[int, dict | InputFileError]] = []

    def run_batch() -> None:
        if batch:
            emb = encoder._forward(batch)
            for j, owner in enumerate(owners):
                live[owner]["emb"].append(emb[j])
            batch.clear()
            owners.clear()

    def flush() -> Iterator[tuple[int, _Embedded | InputFileError]]:
        # Called with an empty batch: every waiting recording has all its windows embedded.
        for i, acc in waiting:
            if isinstance(acc, InputFileError):
                yield i, acc
                continue
            live.pop(i, None)
            sr = acc["info"].sample_rate_hz
            yield (
                i,
                _Embedded(
                    np.stack(acc["emb"]).astype(np.float32),
                    np.asarray(acc["starts"], np.float64) / sr,
                    np.asarray(acc["ends"], np.float64) / sr,
                    acc["info"].duration_s,
                    acc["info"].silent,
                    np.asarray(acc["peaks"], np.float64) < SILENCE_PEAK,
                ),
            )
        waiting.clear()

    for i, src in enumerate(sources):
        acc = {"info": DecodeInfo(), "starts": [], "ends": [], "emb": [], "peaks": []}
        live[i] = acc
        try:
            for a, b, samples in iter_windows(
                src, encoder.sample_rate_hz, window_s, hop_s, acc["info"], block_s
            ):
                acc["starts"].append(a)
                acc["ends"].append(b)
                acc["peaks"].append(float(np.abs(samples).max()) if len(samples) else 0.0)
                batch.append(samples)
                owners.append(i)
                if len(batch) >= encoder.batch_size:
                    run_batch()
                    yield from flush()
        except InputFileError as exc:
            keep = [j for j, owner in enumerate(owners) if owner != i]
            batch[:] = [batch[j] for j in keep]
            owners[:] = [owners[j] for j in keep]
            live.pop(i, None)
            waiting.append((i, exc))
        else:
            waiting.append((i, acc))
        if not batch:
            yield from flush()
    run_batch()
    yield from flush()
