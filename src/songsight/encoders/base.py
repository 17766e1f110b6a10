"""Encoder protocols and the small pieces every encoder shares.

Every ``embed_*`` returns float32 (N, D) unit-norm rows; `l2_normalize` is the one place
that normalises, and encoders call it on their way out.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from songsight.errors import InputFileError


def l2_normalize(x, eps: float = 1e-12):
    """Unit-normalise rows of a numpy array or torch tensor (float32 out for numpy)."""
    if isinstance(x, np.ndarray):
        x = x.astype(np.float32, copy=False)
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)
    import torch

    return torch.nn.functional.normalize(x, dim=-1, eps=eps)


def choose_device(device: str | None = None, quiet: bool = False) -> str:
    """``cuda`` when present (or what was asked); a loud notice on stderr when it falls back to CPU."""
    import torch

    if device and device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            from songsight.errors import SongsightError

            raise SongsightError(
                f"device {device!r} was asked for but CUDA is not available on this machine"
            )
        return device
    if torch.cuda.is_available():
        return "cuda"
    if not quiet:
        print(
            "songsight: no CUDA device found, running on CPU (slower; pass --device to choose)",
            file=sys.stderr,
        )
    return "cpu"


def warn_truncated(encoder, cut: Sequence[str], limit_tokens: int) -> None:
    """Warn, once per encoder, that prompts longer than its text tower takes were cut.

    ``cut``: the texts of the current call that were cut to ``limit_tokens`` tokens. Later
    calls stay quiet, so a species list of long names warns once, not once per name.
    """
    if not cut or getattr(encoder, "_warned_truncation", False):
        return
    import warnings

    encoder._warned_truncation = True
    example = cut[0] if len(cut[0]) <= 60 else cut[0][:57] + "..."
    warnings.warn(
        f"{len(cut)} text(s) longer than the {getattr(encoder, 'name', 'text')} text tower's "
        f"{limit_tokens} tokens were cut to fit (e.g. {example!r}); only their start is embedded. "
        "Later cuts by this model are not reported.",
        stacklevel=3,
    )


def autocast_dtype(precision: str, device: str):
    """The reduced precision to run in (bf16), or None for fp32 activations (fp32, int8).

    ``auto``: bf16 on CUDA, fp32 on CPU (exact, and what tests compare against). ``bf16`` on a
    CPU with AMX runs the HTSAT forward about 1.9x faster alone, but end to end it measured no
    faster than fp32 under load (benchmarks/embed_throughput.py); measure on your machine.
    """
    import torch

    if precision not in ("auto", "fp32", "bf16", "int8"):
        raise ValueError(f"precision must be auto, fp32, bf16 or int8, not {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.startswith("cuda")):
        return torch.bfloat16
    return None


@dataclass
class ClipEmbedding:
    """One recording's embeddings: per window and the clip-level mean.

    ``windows`` (W, D) float32 unit norm; ``starts_s``/``ends_s`` (W,) window times in the
    recording; ``clip`` (D,) the re-normalised mean of the windows; ``window_silent`` (W,) bool,
    the window's peak is under `songsight.inputs.audio.SILENCE_PEAK`. ``pool``: how an encoder
    whose clip vector is not the mean of its windows forms it from a (W,) bool mask of windows
    (None: all of them); None for the mean.
    """

    windows: np.ndarray
    starts_s: np.ndarray
    ends_s: np.ndarray
    clip: np.ndarray
    duration_s: float
    silent: bool = False
    flags: list[str] = field(default_factory=list)
    window_silent: np.ndarray | None = None
    pool: Callable[[np.ndarray | None], np.ndarray] | None = None

    def heard_clip(self) -> np.ndarray:
        """(D,) unit norm: the clip vector of the windows that are not silent (all when every
        one is)."""
        heard = None
        if self.window_silent is not None and (~self.window_silent).any():
            heard = ~self.window_silent
        if self.pool is not None:
            return self.pool(heard)
        windows = self.windows if heard is None else self.windows[heard]
        return l2_normalize(windows.mean(axis=0, keepdims=True))[0]


@runtime_checkable
class AudioEncoder(Protocol):
    """Anything that turns recordings into unit vectors of a fixed space."""

    dim: int
    sample_rate_hz: int
    window_s: float

    def provenance(self) -> dict: ...

    def embed_audio(self, sources: Sequence, sample_rate_hz: int | None = None) -> np.ndarray:
        """(N, D) float32 unit norm, one clip-level vector per source."""

    def embed_windows(
        self, sources: Sequence, window_s: float | None = None, hop_s: float | None = None
    ) -> Iterator[tuple[int, ClipEmbedding | InputFileError]]:
        """``(index, ClipEmbedding or InputFileError)`` per source, in order; a bad source
        does not stop the others."""

    def embed_clips(
        self, sources: Sequence, window_s: float | None = None, hop_s: float | None = None
    ) -> list[ClipEmbedding]:
        """Per-window embeddings with times, plus the clip mean, per source."""


@runtime_checkable
class TextEncoder(Protocol):
    dim: int

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32 unit norm."""


@runtime_checkable
class ImageEncoder(Protocol):
    dim: int

    def provenance(self) -> dict: ...

    def embed_images(self, images: Sequence) -> np.ndarray:
        """(N, D) float32 unit norm from paths or PIL images."""
