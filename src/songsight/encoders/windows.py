"""The one loop that turns recordings into window embeddings, for every audio encoder.

Recordings are cut by `songsight.inputs.stream.iter_windows` (streamed block by block, so an
hour-long soundscape costs one block and one batch of windows, not the hour) while the model
runs: ``decode_threads`` threads decode the next recordings into small bounded queues. Windows
of several recordings share a forward pass; each recording's `ClipEmbedding` is yielded, in
input order, once all its windows are embedded. Embedding jobs, evaluation, the searcher and
the web server all come through here (via an encoder's ``embed_windows``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from songsight.encoders.base import ClipEmbedding, l2_normalize
from songsight.errors import InputFileError
from songsight.inputs.audio import SILENCE_PEAK
from songsight.inputs.stream import BLOCK_S, DecodeInfo, iter_windows

DEFAULT_HOP_FRACTION = 0.5  # default hop: half a window, so every call is whole in some window
_END = object()  # a recording's queue: windows, then _END (or the error that stopped it)
_PUT_TIMEOUT_S = 0.2  # how often a blocked decoder looks whether the consumer has gone


def resolve_windows(
    window_s: float | None, hop_s: float | None, model_window_s: float
) -> tuple[float, float]:
    """(window_s, hop_s): the one window rule. The window defaults to the model's, the hop to
    half the window (`DEFAULT_HOP_FRACTION`); a window past the model's, or a window or hop
    that is not positive, raises `WindowError`."""
    from songsight.errors import WindowError

    window = float(window_s) if window_s else float(model_window_s)
    hop = float(hop_s) if hop_s else window * DEFAULT_HOP_FRACTION
    if window > model_window_s + 1e-9:
        raise WindowError(f"window_s={window:g} exceeds the model's {model_window_s:g} s window")
    if not (window > 0 and hop > 0):
        raise WindowError(f"window_s and hop_s must be > 0; got {window:g} and {hop:g}")
    return window, hop


def _decode_into(source, sample_rate_hz, window_s, hop_s, block_s, out, stop) -> None:
    """Producer: one recording's windows into ``out``, then its `DecodeInfo`, then `_END`."""

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=_PUT_TIMEOUT_S)
                return True
            except queue.Full:
                continue
        return False

    info = DecodeInfo()
    try:
        for window in iter_windows(source, sample_rate_hz, window_s, hop_s, info, block_s):
            if not put(window):
                return
        put(info)
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises
        put(exc)
    put(_END)


def _clip_embedding(acc: dict) -> ClipEmbedding:
    info: DecodeInfo = acc["info"]
    sr = info.sample_rate_hz
    windows = np.stack(acc["emb"]).astype(np.float32)
    return ClipEmbedding(
        windows=windows,
        starts_s=np.asarray(acc["starts"], np.float64) / sr,
        ends_s=np.asarray(acc["ends"], np.float64) / sr,
        clip=l2_normalize(windows.mean(axis=0, keepdims=True))[0],
        duration_s=info.duration_s,
        silent=info.silent,
        flags=["silent"] if info.silent else [],
        window_silent=np.asarray(acc["peaks"], np.float64) < SILENCE_PEAK,
    )


def embed_windows(
    forward: Callable[[list[np.ndarray]], np.ndarray],
    sources: Sequence,
    sample_rate_hz: int,
    window_s: float,
    hop_s: float,
    batch_size: int,
    decode_threads: int = 1,
    block_s: float = BLOCK_S,
    on_progress: Callable[[int, float], None] | None = None,
) -> Iterator[tuple[int, ClipEmbedding | InputFileError]]:
    """``(index, ClipEmbedding)`` or ``(index, InputFileError)`` per source, in source order.

    ``forward``: windows (each (T,) float32 at ``sample_rate_hz``, T <= the window) -> (W, D)
    float32 unit norm. ``sources``: paths or ``(waveform, rate)`` tuples. ``window_s`` and
    ``hop_s`` are used as given (resolve them with the encoder's ``windowing`` first). A source
    that fails part-way yields its error and none of its windows; the others go on.
    ``on_progress(index, seconds)``: called after each model batch for every source with
    windows in it, ``seconds`` the end of its last window embedded so far: a long recording
    reports as it goes, not only once it is yielded.
    """
    sources = list(sources)
    ahead = max(1, decode_threads) + 1  # recordings decoding or decoded ahead of the model
    per_queue = max(batch_size, 8)  # windows a decoder may hold before the model takes them
    stop = threading.Event()
    queues: dict[int, queue.Queue] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, decode_threads), thread_name_prefix="decode")

    def start(i: int) -> None:
        if i < len(sources):
            queues[i] = queue.Queue(per_queue)
            pool.submit(
                _decode_into, sources[i], sample_rate_hz, window_s, hop_s, block_s, queues[i], stop
            )

    batch: list[np.ndarray] = []
    owners: list[int] = []
    live: dict[int, dict] = {}
    waiting: list[tuple[int, dict | InputFileError]] = []

    def run_batch() -> None:
        if batch:
            emb = forward(batch)
            for j, owner in enumerate(owners):
                live[owner]["emb"].append(emb[j])
            if on_progress is not None:
                for owner in dict.fromkeys(owners):
                    # Window ends never decrease (`window_bounds`): the last one embedded is
                    # how far into the recording the model has got.
                    acc = live[owner]
                    on_progress(owner, acc["ends"][len(acc["emb"]) - 1] / sample_rate_hz)
            batch.clear()
            owners.clear()

    def finished() -> Iterator[tuple[int, ClipEmbedding | InputFileError]]:
        # Only called with an empty batch: every waiting recording is fully embedded.
        for i, acc in waiting:
            live.pop(i, None)
            yield i, acc if isinstance(acc, InputFileError) else _clip_embedding(acc)
        waiting.clear()

    try:
        for i in range(min(ahead, len(sources))):
            start(i)
        for i in range(len(sources)):
            acc = {"info": None, "starts": [], "ends": [], "emb": [], "peaks": []}
            live[i] = acc
            q = queues.pop(i)
            start(i + ahead)
            error: BaseException | None = None
            while (item := q.get()) is not _END:
                if isinstance(item, DecodeInfo):
                    acc["info"] = item
                elif isinstance(item, BaseException):
                    error = item
                else:
                    a, b, samples = item
                    acc["starts"].append(a)
                    acc["ends"].append(b)
                    acc["peaks"].append(float(np.abs(samples).max()) if len(samples) else 0.0)
                    batch.append(samples)
                    owners.append(i)
                    if len(batch) >= batch_size:
                        run_batch()
                        yield from finished()
            if error is not None and not isinstance(error, InputFileError):
                raise error
            if error is not None:
                keep = [j for j, owner in enumerate(owners) if owner != i]
                batch[:] = [batch[j] for j in keep]
                owners[:] = [owners[j] for j in keep]
                live.pop(i, None)
                waiting.append((i, error))
            else:
                waiting.append((i, acc))
            if not batch:
                yield from finished()
        run_batch()
        yield from finished()
    finally:
        stop.set()  # decoders blocked on a full queue give up; nothing new starts
        pool.shutdown(wait=False, cancel_futures=True)


class WindowedAudioEncoder:
    """What every BioLingual-style audio encoder shares, whatever runs its model: the window
    rule, the batching loop, clip means and the provenance of a store's rows.

    A subclass sets ``features`` (``sample_rate_hz``, ``max_samples``, ``describe()``),
    ``resolved``, ``dim``, ``precision``, ``quantization`` and ``device``, calls `set_windows`,
    and implements ``_forward(windows) -> (N, D) float32 unit norm``.
    """

    name = "biolingual"
    runtime: dict | None = None  # set by encoders not run by torch (ONNX Runtime)

    def set_windows(self, features, window_s, hop_s, batch_size, decode_threads) -> None:
        """``window_s`` defaults to the model's own window (10 s for BioLingual), ``hop_s`` to
        half of it; ``batch_size`` to 16 windows on a CPU, 64 on a GPU. ``decode_threads``:
        files decoded and resampled at once ahead of the model. Default: 1 on CPU (the model
        needs the cores), up to 8 on a GPU, where one decode thread was the bottleneck (benchmarks/README.md: 77 clips/s on an H200, the process
        using ~33% of its cores). The gain from more threads there has not been measured yet."""
        import os

        self.sample_rate_hz = features.sample_rate_hz
        self.model_window_s = features.max_samples / self.sample_rate_hz
        self.window_s, self.hop_s = resolve_windows(window_s, hop_s, self.model_window_s)
        on_gpu = not str(self.device).startswith("cpu")
        self.batch_size = batch_size or (64 if on_gpu else 16)
        if decode_threads is None:
            cores = os.cpu_count() or 2
            decode_threads = 1 if self.device == "cpu" else min(8, max(1, cores // 2))
        self.decode_threads = max(1, int(decode_threads))

    def provenance(self) -> dict:
        return {
            "encoder": self.name,
            "kind": "audio",
            **self.resolved.provenance(),
            "dim": self.dim,
            "precision": self.precision,
            **({"quantization": self.quantization} if self.quantization else {}),
            **({"runtime": self.runtime} if self.runtime else {}),
            "preprocessing": {
                **self.features.describe(),
                "window_s": self.window_s,
                "hop_s": self.hop_s,
            },
        }

    def windowing(self, window_s: float | None = None, hop_s: float | None = None):
        """The (window_s, hop_s) a request means, the one rule every caller uses.

        ``window_s`` defaults to this encoder's window; ``hop_s`` to this encoder's hop when
        the window is its own, else to half the window asked for (so a 5 s window steps by
        2.5 s whoever asks). Raises `WindowError` for a window past the model's or a
        window or hop that is not positive.
        """
        if not window_s or float(window_s) == self.window_s:
            window_s, hop_s = self.window_s, hop_s or self.hop_s
        return resolve_windows(window_s, hop_s, self.model_window_s)

    def embed_windows(
        self,
        sources: Sequence,
        window_s: float | None = None,
        hop_s: float | None = None,
        *,
        on_progress: Callable[[int, float], None] | None = None,
    ) -> Iterator[tuple[int, ClipEmbedding | InputFileError]]:
        """Embed sources in order, yielding ``(index, ClipEmbedding)`` or ``(index, InputFileError)``.

        Sources are paths or ``(waveform, sample_rate_hz)`` tuples, cut by `windowing`'s rule.
        Windows of several files share a model batch; the next files decode in
        ``decode_threads`` threads while the model works (`songsight.encoders.windows`).
        ``on_progress(index, seconds)``: after each model batch, the seconds of each recording
        in it embedded so far (for a progress bar that moves within a long recording).
        """
        window_s, hop_s = self.windowing(window_s, hop_s)
        return embed_windows(
            self._forward, sources, self.sample_rate_hz, window_s, hop_s,
            self.batch_size, self.decode_threads, on_progress=on_progress,
        )  # fmt: skip

    def embed_clips(
        self, sources: Sequence, window_s: float | None = None, hop_s: float | None = None
    ) -> list[ClipEmbedding]:
        """Per-window embeddings (with start/end times) and the clip mean, one per source.

        Raises `InputFileError` for the first unusable source; use `embed_windows` to carry on.
        """
        results: list[ClipEmbedding | None] = [None] * len(sources)
        for i, res in self.embed_windows(sources, window_s, hop_s):
            if isinstance(res, InputFileError):
                raise res
            results[i] = res
        return results  # type: ignore[return-value]

    def embed_audio(self, sources: Sequence, sample_rate_hz: int | None = None) -> np.ndarray:
        """(N, D) float32 unit norm: the clip-level embedding of each source.

        ``sources``: paths, ``(waveform, rate)`` tuples, or bare waveforms with ``sample_rate_hz``.
        """
        items = [(s, sample_rate_hz) if isinstance(s, np.ndarray) else s for s in sources]
        if any(isinstance(s, tuple) and s[1] is None for s in items):
            raise ValueError("bare waveforms need sample_rate_hz")
        clips = self.embed_clips(items)
        return np.stack([c.clip for c in clips]) if clips else np.zeros((0, self.dim), np.float32)
