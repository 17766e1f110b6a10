"""Plain helpers shared by the tests: signals, vectors, references, files. Fixtures live in
conftest.py; these are functions a test calls."""

from __future__ import annotations

import csv
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from songsight.errors import InputFileError

# ---- signals -----------------------------------------------------------------------------------


def tone(
    freq_hz: float | Sequence[float],
    seconds: float,
    rate_hz: int = 16_000,
    amp: float = 0.3,
    *,
    vibrato: float = 0.0,
    noise_amp: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """(int(seconds * rate_hz),) float32: ``amp * sin(2 pi f t (1 + vibrato sin t))`` plus white
    noise of standard deviation ``noise_amp`` (drawn from ``seed``).

    A sequence of frequencies gives each one for ``seconds`` in turn, concatenated.
    """
    if not np.isscalar(freq_hz):
        return np.concatenate(
            [
                tone(f, seconds, rate_hz, amp, vibrato=vibrato, noise_amp=noise_amp, seed=seed)
                for f in freq_hz
            ]  # fmt: skip
        )
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    wave = amp * np.sin(2 * np.pi * freq_hz * t * (1 + vibrato * np.sin(t)))
    if noise_amp:
        wave = wave + noise_amp * np.random.default_rng(seed).standard_normal(len(t))
    return wave.astype(np.float32)


def warble(freq_hz: float, seconds: float, rate_hz: int = 16_000, seed: int = 0) -> np.ndarray:
    """A bird-ish call: `tone` at amplitude 0.3 with a slow 10% vibrato and noise of 0.02."""
    return tone(freq_hz, seconds, rate_hz, 0.3, vibrato=0.1, noise_amp=0.02, seed=seed)


def peak_hz(wave: np.ndarray, rate_hz: int, hann: bool = True) -> float:
    """Frequency (Hz) of the largest magnitude bin of ``wave``'s spectrum, Hann-windowed or not."""
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave)) if hann else wave))
    return float(np.fft.rfftfreq(len(wave), 1.0 / rate_hz)[int(np.argmax(spec))])


# ---- vectors and exact references ----------------------------------------------------------------


def unit_rows(
    n: int, dim: int, seed: int | np.random.Generator, dtype: type = np.float32
) -> np.ndarray:
    """(n, dim) Gaussian rows scaled to unit norm; ``seed`` may be a running generator."""
    x = np.random.default_rng(seed).standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def clustered(n: int, dim: int, n_clusters: int, seed: int, spread: float = 0.6) -> np.ndarray:
    """`(n, dim)` float32 unit vectors around `n_clusters` random unit centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, n_clusters, n)
    x = centres[labels] + spread * rng.standard_normal((n, dim)) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(gallery, queries, k: int, ids=None) -> tuple[np.ndarray, np.ndarray]:
    """Reference top-k: float64 dot products, one query at a time, sorted by (-score, id).

    ``ids`` default to the row numbers. Returns (scores (Q, k) float64, ids (Q, k) int64),
    padded with -inf / -1 when the gallery holds fewer than k.
    """
    ids = np.arange(len(gallery)) if ids is None else ids
    out_scores, out_ids = [], []
    for q in np.asarray(queries, np.float64):
        scores = [float(np.dot(q, g)) for g in np.asarray(gallery, np.float64)]
        order = sorted(range(len(ids)), key=lambda j: (-scores[j], ids[j]))[:k]
        pad = k - len(order)
        out_scores.append([scores[j] for j in order] + [-np.inf] * pad)
        out_ids.append([int(ids[j]) for j in order] + [-1] * pad)
    return np.array(out_scores), np.array(out_ids, np.int64)


def brute_force_one(gallery, query, k: int) -> tuple[list[int], list[float]]:
    """`brute_force` for one (D,) query: (row numbers, scores) as lists, without padding."""
    scores, ids = brute_force(gallery, np.asarray(query)[None], min(k, len(gallery)))
    return ids[0].tolist(), scores[0].tolist()


def recall(found_ids: np.ndarray, true_ids: np.ndarray) -> float:
    """Mean over queries of the share of the true ids found; -1 (padding) never counts."""
    hits = [
        len(set(f) & set(t) - {-1}) / max(len(set(t) - {-1}), 1)
        for f, t in zip(found_ids, true_ids, strict=True)
    ]
    return float(np.mean(hits))


# ---- files ---------------------------------------------------------------------------------------


def noise_pixels(seed: int | np.random.Generator, size_wh: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) uint8 uniform noise; ``seed`` may be a running generator."""
    w, h = size_wh
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_noise_photo(
    path: Path, seed: int | np.random.Generator, size_wh: tuple[int, int] = (16, 16)
) -> Path:
    """A noise image saved at ``path`` (format from the suffix), folders made; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(noise_pixels(seed, size_wh)).save(path)
    return path


def random_photos(folder: Path, n: int, seed: int) -> list[Path]:
    """``n`` 16x16 noise PNGs ``p{seed}_{i:03d}.png``, distinct per (seed, i)."""
    return [write_noise_photo(folder / f"p{seed}_{i:03d}.png", seed * 1000 + i) for i in range(n)]


def write_csv(path: Path, rows: Sequence, header: Sequence[str] | None = None) -> Path:
    """Rows as dicts (header: the first row's keys) or as sequences under ``header``; UTF-8,
    folders made; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if header is None:
        header = list(rows[0])
        rows = [[row[c] for c in header] for row in rows]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def expect_input_error(load: Callable[[Path], object], path: Path, match: str) -> InputFileError:
    """``load(path)`` raises InputFileError matching ``match``, naming ``path``, with a readable
    one-line reason (not a repr or a traceback); returns the error."""
    with pytest.raises(InputFileError, match=match) as info:
        load(path)
    err = info.value
    assert err.path == str(path)
    assert err.reason and "\n" not in err.reason and "Traceback" not in err.reason
    return err


class FakeGallery:
    """What the server and the browser tests need of a `Gallery`: length and photo paths."""

    def __init__(self, paths: list[Path], labels: list[int]):
        self.paths, self.labels = paths, labels

    def __len__(self) -> int:
        return len(self.paths)

    def image_path(self, image_id: int) -> Path:
        return self.paths[image_id]


# ---- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def must_not_run(name: str) -> Callable[..., None]:
    """A stand-in that fails the test if called: monkeypatch it over work that must not happen."""

    def called(*args, **kwargs) -> None:
        pytest.fail(f"{name} ran, but there was nothing to do")

    return called


def interrupt_after(monkeypatch, owner: type, method: str, n_items: int, seen: list | None = None):
    """Make the generator method ``owner.method(self, sources, ...)`` raise KeyboardInterrupt
    after ``n_items`` items (a Ctrl-C mid-run); ``seen`` collects the sources it is given.
    Returns the original method."""
    original = getattr(owner, method)

    def interrupted(self, sources, *args, **kwargs):
        if seen is not None:
            seen.extend(map(str, sources))
        for k, item in enumerate(original(self, sources, *args, **kwargs)):
            if k == n_items:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(owner, method, interrupted)
    return original
