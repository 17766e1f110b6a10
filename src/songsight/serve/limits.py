"""The server's limits (upload size and length, deadline, workers, queue, batching) and their
defaults: checked once when the app is built, and reported by ``GET /api/health``."""

from __future__ import annotations

from dataclasses import dataclass

from songsight.errors import SongsightError
from songsight.serve.batching import DEFAULT_BATCH_WAIT_MS, DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE

DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_REQUEST_TIMEOUT_S = 120.0
DEFAULT_MAX_CONCURRENCY = 1  # one model forward at a time: CPU threads would only compete
DEFAULT_MAX_DURATION_S = 600.0
MAX_K = 100


@dataclass(frozen=True)
class ServeLimits:
    """What one server accepts; `songsight.serve.app.create_app` documents each."""

    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_duration_s: float = DEFAULT_MAX_DURATION_S
    max_queue: int = DEFAULT_MAX_QUEUE
    max_batch: int = DEFAULT_MAX_BATCH
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS

    def __post_init__(self) -> None:
        if (
            min(self.max_concurrency, self.max_queue, self.max_batch) < 1
            or min(self.max_upload_mb, self.request_timeout_s, self.max_duration_s) <= 0
            or self.batch_wait_ms < 0
        ):
            raise SongsightError(
                "serve limits must be positive (upload, timeout, workers, queue, batch, duration)"
            )

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 1e6)

    def report(self) -> dict:
        """The limits as ``GET /api/health`` lists them (with the largest ``k``)."""
        return {
            "max_upload_mb": self.max_upload_mb,
            "max_duration_s": self.max_duration_s,
            "request_timeout_s": self.request_timeout_s,
            "max_concurrency": self.max_concurrency,
            "max_queue": self.max_queue,
            "max_batch": self.max_batch,
            "batch_wait_ms": self.batch_wait_ms,
            "max_k": MAX_K,
        }
