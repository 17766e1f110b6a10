"""Training audio: decode once, crop at random inside longer clips, augment, batch.

Randomness per item is derived from (seed, epoch, item index), not from a running generator,
so a resumed run draws exactly the crops and noise the uninterrupted run would have drawn.
"""

from __future__ import annotations

import numpy as np

from songsight.errors import InputFileError
from songsight.inputs.audio import load_audio


class AudioCrops:
    """Clips of a manifest as mono waveforms at the model's rate; `crop` draws a training window."""

    def __init__(
        self,
        paths: list[str],
        labels: list[int],
        sample_rate_hz: int,
        window_s: float,
        cache: bool = True,
        gain_db: float = 0.0,
        noise_prob: float = 0.0,
        noise_snr_db: tuple[float, float] = (10.0, 30.0),
        mix_prob: float = 0.0,
    ):
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.sample_rate_hz = sample_rate_hz
        self.window = int(round(window_s * sample_rate_hz))
        self.cache = {} if cache else None
        self.gain_db = gain_db
        self.noise_prob = noise_prob
        self.noise_snr_db = noise_snr_db
        self.mix_prob = mix_prob
        self._same: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def check(self, progress: bool = False) -> list[tuple[str, str]]:
        """Decode every file once (filling the cache); returns (path, reason) of the unusable
        ones. ``progress``: a bar by file on stderr."""
        import sys

        from tqdm.auto import tqdm

        bad = []
        bar = tqdm(range(len(self)), desc="decoding training audio", unit="file",
                   disable=not progress, file=sys.stderr, leave=False)  # fmt: skip
        for i in bar:
            try:
                self.waveform(i)
            except InputFileError as exc:
                bad.append((exc.path, exc.reason))
        return bad

    def waveform(self, i: int) -> np.ndarray:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        wave = load_audio(self.paths[i], self.sample_rate_hz).waveform
        if self.cache is not None:
            self.cache[i] = wave
        return wave

    def _window(self, wave: np.ndarray, rng) -> np.ndarray:
        """A random window of ``wave`` (all of it when shorter), as a float32 copy."""
        if len(wave) > self.window:
            start = int(rng.integers(0, len(wave) - self.window + 1))
            wave = wave[start : start + self.window]
        return wave.astype(np.float32, copy=True)

    def _same_species(self, i: int) -> np.ndarray:
        label = int(self.labels[i])
        if label not in self._same:
            self._same[label] = np.flatnonzero(self.labels == label)
        same = self._same[label]
        return same[same != i]

    def crop(self, i: int, seed: int, epoch: int) -> np.ndarray:
        """A window from clip ``i`` with mixing, gain and noise, reproducible from (seed, epoch, i)."""
        rng = np.random.default_rng([seed, epoch, i])
        wave = self._window(self.waveform(i), rng)
        if self.mix_prob > 0 and rng.random() < self.mix_prob:
            # Another recording of the same species underneath, 0-12 dB quieter: two birds of
            # one species calling at once, a common sight in the field and free labels here.
            others = self._same_species(i)
            if len(others):
                other = self._window(self.waveform(int(rng.choice(others))), rng)
                n = min(len(wave), len(other))
                wave[:n] += other[:n] * np.float32(10 ** (-rng.uniform(0.0, 12.0) / 20))
        if self.gain_db > 0:
            wave *= np.float32(10 ** (rng.uniform(-self.gain_db, self.gain_db) / 20))
        if self.noise_prob > 0 and rng.random() < self.noise_prob:
            power = float(np.mean(wave**2)) + 1e-12
            snr_db = rng.uniform(*self.noise_snr_db)
            wave += rng.standard_normal(len(wave)).astype(np.float32) * np.float32(
                np.sqrt(power / 10 ** (snr_db / 10))
            )
        return wave


def spec_mask(feats, n_masks: int, seed: list[int], max_fraction: float = 0.1):
    """SpecAugment-style masking (Park et al. 2019): ``n_masks`` time bands and ``n_masks``
    mel bands, each up to ``max_fraction`` of its axis, set to each example's mean.

    ``feats`` (B, C, frames, mels) log-mels; a new tensor is returned. Bands are drawn from
    ``seed`` (a list of ints), so a resumed run masks as the uninterrupted one did.
    """
    rng = np.random.default_rng(seed)
    out = feats.clone()
    b, _, n_t, n_f = feats.shape
    fill = feats.mean(dim=(1, 2, 3), keepdim=True)
    for k in range(b):
        for axis, size in ((2, n_t), (3, n_f)):
            for _ in range(n_masks):
                width = int(rng.integers(0, max(1, int(size * max_fraction)) + 1))
                start = int(rng.integers(0, size - width + 1))
                index = [k, slice(None), slice(None), slice(None)]
                index[axis] = slice(start, start + width)
                out[tuple(index)] = fill[k, 0, 0, 0]
    return out


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The item order of one epoch (same on every rank; ranks take interleaved slices of each batch)."""
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)
