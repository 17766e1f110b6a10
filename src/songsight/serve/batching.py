"""The server's wait queue: searches admitted up to a bound, then run in micro-batches.

A request takes a place before its body is read (`SearchQueue.try_admit`); with every place
taken the server answers 503 with ``Retry-After`` at once instead of reading an upload that
would only wait. An admitted upload waits in the queue as its temp file on disk (not decoded,
not in memory). A worker thread takes the oldest waiting search plus every waiting search with
the same options, waits up to ``batch_wait_s`` for more while the batch is short, decodes them
and runs them through **one** ``searcher.search`` call, so their windows share the encoder's
forward passes (`songsight.encoders.windows.embed_windows` batches windows across recordings).
Each request then gets exactly its own results: the searcher names in-memory recordings
``<array i>`` in the order given, and a batch that raises is rerun one search at a time so each
request gets its own error.

``max_batch_audio_s`` bounds the audio one batch decodes (a lone long recording still runs);
a search whose client has given up (504) is skipped if it has not started.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("songsight.serve")

DEFAULT_MAX_QUEUE = 64
DEFAULT_MAX_BATCH = 8
DEFAULT_BATCH_WAIT_MS = 5.0
DEFAULT_MAX_BATCH_AUDIO_S = 300.0
RETRY_AFTER_S = 5  # before any search has been timed
MAX_RETRY_AFTER_S = 60


@dataclass
class SearchJob:
    """One admitted search: its upload on disk and its `Searcher.search` arguments."""

    path: Path
    k: int
    window_s: float | None
    hop_s: float | None
    options: dict
    future: Future = field(default_factory=Future)
    duration_s: float | None = None  # from the file header, read by the worker

    @property
    def key(self) -> tuple:
        """Searches with equal keys can share one `Searcher.search` call."""
        species = self.options.get("species")
        names = None if species is None else tuple(getattr(species, "names", species))
        return (self.k, self.window_s, self.hop_s, self.options.get("min_score"), names)


@dataclass
class QueueStats:
    batches: int = 0
    searches: int = 0
    largest_batch: int = 0
    seconds_per_search: float | None = None  # moving average over recent batches


class SearchQueue:
    """Admission, the bounded wait queue and the batch workers over one searcher.

    ``decode(path) -> audio`` (with ``.waveform``, ``.sample_rate_hz``) and
    ``finish(audio, results) -> value`` run in the worker for each search; the job's future gets
    ``value`` or the exception. ``max_queue``: the most searches admitted at once (uploading,
    waiting or running). ``workers`` threads each run one batch at a time.
    """

    def __init__(
        self,
        searcher,
        decode: Callable[[Path], Any],
        finish: Callable[[Any, list], Any],
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_batch: int = DEFAULT_MAX_BATCH,
        batch_wait_s: float = DEFAULT_BATCH_WAIT_MS / 1000,
        max_batch_audio_s: float = DEFAULT_MAX_BATCH_AUDIO_S,
        workers: int = 1,
    ):
        if max_queue < 1 or max_batch < 1 or workers < 1 or batch_wait_s < 0:
            raise ValueError("max_queue, max_batch and workers must be >= 1, batch_wait_s >= 0")
        self.searcher, self._decode, self._finish = searcher, decode, finish
        self.max_queue, self.max_batch, self.workers = max_queue, max_batch, workers
        self.batch_wait_s, self.max_batch_audio_s = batch_wait_s, max_batch_audio_s
        self.stats = QueueStats()
        self._waiting: deque[SearchJob] = deque()
        self._admitted = self._running = 0
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._closed = False

    # ---- admission (event loop side) ---------------------------------------------------------
    @property
    def admitted(self) -> int:
        return self._admitted

    @property
    def depth(self) -> int:
        """Searches waiting for a worker (uploads already on disk)."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        return self._running

    @property
    def full(self) -> bool:
        return self._admitted >= self.max_queue

    def try_admit(self) -> bool:
        """Take a place in the queue; False when every place is taken (answer 503)."""
        with self._cond:
            if self._admitted >= self.max_queue:
                return False
            self._admitted += 1
            return True

    def release(self) -> None:
        """Give back a place taken by `try_admit` for a request that was never submitted."""
        with self._cond:
            self._admitted = max(self._admitted - 1, 0)

    def retry_after_s(self) -> int:
        """Seconds until a place is likely free: the queue's length at the recent pace."""
        per = self.stats.seconds_per_search
        if per is None:
            return RETRY_AFTER_S
        wait = self._admitted * per / (self.workers * max(self.stats.largest_batch, 1) ** 0.5)
        return int(min(max(math.ceil(wait), 1), MAX_RETRY_AFTER_S))

    def submit(self, job: SearchJob) -> Future:
        """Queue an admitted search; its place is given back when it is done or skipped."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the search queue is closed")
            self._waiting.append(job)
            if len(self._threads) < self.workers:  # started on first use, not per app built
                thread = threading.Thread(
                    target=self._work, name=f"songsight-search-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            self._cond.notify()
        return job.future

    def close(self) -> None:
        """Stop the workers after their current batch; waiting searches are dropped."""
        with self._cond:
            self._closed = True
            dropped = list(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
        for job in dropped:
            job.future.cancel()
            self._done(job, ran=False)

    # ---- workers ------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            started = time.monotonic()
            try:
                self._run(batch)
            except BaseException:  # never lose a worker: each job has its answer already
                log.exception("a search batch failed")
            finally:
                self._timed(len(batch), time.monotonic() - started)
                for job in batch:
                    self._done(job, ran=True)

    def _next_batch(self) -> list[SearchJob] | None:
        with self._cond:
            batch: list[SearchJob] = []
            while not batch:  # the first job may turn out cancelled
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return None
                batch = self._take(self._waiting.popleft(), [])
            deadline = time.monotonic() + self.batch_wait_s
            while len(batch) < self.max_batch and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
                batch = self._take(None, batch)
            self._running += len(batch)
        return batch

    def _take(self, first: SearchJob | None, batch: list[SearchJob]) -> list[SearchJob]:
        """Add ``first`` then waiting jobs with the batch's key, oldest first, up to the
        limits; jobs whose clients gave up are dropped here. Holds the lock."""
        candidates = [first] if first is not None else []
        key = batch[0].key if batch else (first.key if first is not None else None)
        keep: deque[SearchJob] = deque()
        for job in self._waiting:
            if job.key == key and len(batch) + len(candidates) < self.max_batch:
                candidates.append(job)
            else:
                keep.append(job)
        self._waiting = keep
        audio_s = sum(job.duration_s or 0.0 for job in batch)
        put_back: list[SearchJob] = []
        for job in candidates:
            if job.future.cancelled():  # its client gave up (504) before it started
                self._drop(job)
                continue
            if job.duration_s is None:
                job.duration_s = _header_duration_s(job.path)
            if batch and audio_s + (job.duration_s or 0.0) > self.max_batch_audio_s:
                put_back.append(job)  # the next batch's
                continue
            if not job.future.set_running_or_notify_cancel():
                self._drop(job)
                continue
            audio_s += job.duration_s or 0.0
            batch.append(job)
        self._waiting.extendleft(reversed(put_back))
        return batch

    def _drop(self, job: SearchJob) -> None:
        self._admitted = max(self._admitted - 1, 0)
        job.path.unlink(missing_ok=True)

    def _run(self, batch: list[SearchJob]) -> None:
        decoded = []
        for job in batch:
            try:
                decoded.append((job, self._decode(job.path)))
            except BaseException as exc:
                job.future.set_exception(exc)
        if not decoded:
            return
        head = decoded[0][0]
        kwargs = {"k": head.k, "window_s": head.window_s, "hop_s": head.hop_s, **head.options}
        recordings = [(audio.waveform, audio.sample_rate_hz) for _, audio in decoded]
        try:
            results = self.searcher.search(recordings, **kwargs)
            per_job = _split(results, len(decoded))
        except BaseException as exc:
            if len(decoded) == 1:
                decoded[0][0].future.set_exception(exc)
                return
            per_job = None  # rerun one at a time, so each request gets its own error
        with self._cond:
            self.stats.batches += 1
            self.stats.searches += len(decoded)
            self.stats.largest_batch = max(self.stats.largest_batch, len(decoded))
        for i, (job, audio) in enumerate(decoded):
            try:
                if per_job is None:
                    mine = self.searcher.search([recordings[i]], **kwargs)
                else:
                    mine = per_job[i]
                job.future.set_result(self._finish(audio, mine))
            except BaseException as exc:
                job.future.set_exception(exc)

    def _timed(self, n: int, seconds: float) -> None:
        with self._cond:
            per = seconds / max(n, 1)
            old = self.stats.seconds_per_search
            self.stats.seconds_per_search = per if old is None else 0.7 * old + 0.3 * per

    def _done(self, job: SearchJob, ran: bool) -> None:
        with self._cond:
            self._admitted = max(self._admitted - 1, 0)
            if ran:
                self._running = max(self._running - 1, 0)
        job.path.unlink(missing_ok=True)


def _header_duration_s(path: Path) -> float | None:
    import soundfile as sf

    try:
        return float(sf.info(str(path)).duration)
    except Exception:  # decoding will say what is wrong with it
        return None


def _split(results: list, n: int) -> list[list]:
    """Results of ``n`` in-memory recordings, per recording: the searcher names the i-th
    ``<array i>``; results come in recording order."""
    names = {f"<array {i}>": i for i in range(n)}
    out: list[list] = [[] for _ in range(n)]
    for result in results:
        i = names.get(getattr(result, "path", None))
        if i is None:
            raise ValueError(f"a batched result names no recording: {result.path!r}")
        out[i].append(result)
    return out
