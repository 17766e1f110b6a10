"""Calls, songs and soundscapes rendered from a species' acoustic traits (float32 audio).

A song is phrases of notes. Each note is a chirp whose pitch follows the species' contour
(up, down, flat, u, n) between ``f_low_hz`` and ``f_high_hz``, with harmonics and, when
``trill_depth`` is large, a trill (amplitude and frequency modulation at ``trill_rate_hz``).
Each recording draws an individual: a small pitch shift, tempo and note-count change.

Difficulty knobs (`songsight.sim.world.WorldConfig`):

* ``snr_db_range``: focal song power (over its notes) to background power, drawn per clip.
  The background mixes white, pink and brown noise, with wind gusts in about a third of clips.
* ``distractors_per_10s``: mean number of other-species-like phrases (from the prior, no
  species of the world) per 10 s, at ``distractor_db_range`` relative to the focal song;
  broadband clicks come at half that rate.
* ``call_jitter``: scales every within-species variation (pitch, tempo, note count, timing).

Everything is vectorised numpy; a 10 s clip takes a few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from songsight.sim.world import AcousticTraits, World, item_rng, random_acoustic

_BANK_S = 45.0  # noise bank length; clips take random slices of it
_MIN_HZ = 150.0


@dataclass(frozen=True)
class Notes:
    """A note sequence, each field (M,) float64: onset, duration, pitch range, amplitude."""

    onset_s: np.ndarray
    dur_s: np.ndarray
    f_low_hz: np.ndarray
    f_high_hz: np.ndarray
    amp: np.ndarray

    @property
    def extent_s(self) -> tuple[float, float]:
        """(first onset, last offset) in seconds; (0, 0) when empty."""
        if len(self.onset_s) == 0:
            return 0.0, 0.0
        return float(self.onset_s.min()), float((self.onset_s + self.dur_s).max())


def song_notes(
    traits: AcousticTraits,
    rng: np.random.Generator,
    duration_s: float,
    jitter: float = 1.0,
    *,
    start_s: float | None = None,
    max_phrases: int | None = None,
) -> Notes:
    """Phrases of one individual filling ``duration_s``.

    ``start_s=None`` starts at a random point, possibly mid-phrase (as a clip cut from a longer
    recording); otherwise the first phrase starts there. Notes may run past ``duration_s``.
    """
    j = float(jitter)
    shift_oct = rng.normal(0.0, 0.05 * j)
    tempo = float(np.exp(rng.normal(0.0, 0.08 * j)))
    count = max(1, traits.note_count + int(np.rint(rng.normal(0.0, 0.6 * j))))
    phrase_gap_s = traits.phrase_gap_s * tempo * float(np.exp(rng.normal(0.0, 0.3 * j)))
    phrase_s = count * (traits.note_s + traits.gap_s) * tempo
    if start_s is None:
        t = rng.uniform(-0.6 * phrase_s, max(0.0, min(phrase_gap_s, 0.3 * duration_s)))
    else:
        t = float(start_s)
    parts: list[tuple[np.ndarray, ...]] = []
    while t < duration_s and (max_phrases is None or len(parts) < max_phrases):
        n = max(1, count + int(rng.random() < 0.3 * j) * int(rng.choice((-1, 1))))
        k = np.arange(n)
        pos = k / max(n - 1, 1) - 0.5
        drift = shift_oct + traits.pitch_step_oct * pos + rng.normal(0.0, 0.02 * j, n)
        dur = traits.note_s * tempo * np.exp(rng.normal(0.0, 0.08 * j, n))
        gap = traits.gap_s * tempo * traits.gap_ratio**k * np.exp(rng.normal(0.0, 0.1 * j, n))
        onset = t + np.concatenate([[0.0], np.cumsum(dur + gap)[:-1]])
        amp = np.exp(rng.normal(0.0, 0.1 * j, n) + rng.normal(0.0, 0.15 * j))
        scale = 2.0**drift
        parts.append((onset, dur, traits.f_low_hz * scale, traits.f_high_hz * scale, amp))
        t = onset[-1] + dur[-1] + phrase_gap_s * float(np.exp(rng.normal(0.0, 0.15 * j)))
    if not parts:
        return Notes(*(np.zeros(0) for _ in range(5)))
    onset, dur, f_lo, f_hi, amp = (np.concatenate(c) for c in zip(*parts, strict=True))
    return Notes(onset, dur, f_lo, f_hi, amp)


def _contour(name: str, u: np.ndarray) -> np.ndarray:
    """Pitch position 0..1 (f_low..f_high) along a note, ``u`` in 0..1."""
    if name == "up":
        return u
    if name == "down":
        return 1.0 - u
    if name == "u":
        return (2.0 * u - 1.0) ** 2
    if name == "n":
        return 1.0 - (2.0 * u - 1.0) ** 2
    return np.full_like(u, 0.5)


def synth_notes(
    notes: Notes, traits: AcousticTraits, n_samples: int, sample_rate_hz: int
) -> np.ndarray:
    """Render ``notes`` with the species' contour, trill and harmonics: (n_samples,) float32.

    Parts of notes outside ``[0, n_samples)`` are dropped.
    """
    sr = float(sample_rate_hz)
    start = np.rint(notes.onset_s * sr).astype(np.int64)
    lens = np.maximum(np.rint(notes.dur_s * sr).astype(np.int64), 16)
    keep = (start < n_samples) & (start + lens > 0)
    if not keep.any():
        return np.zeros(n_samples, np.float32)
    start, lens = start[keep], lens[keep]
    nyq_cap = 0.45 * sr
    f_lo = np.clip(notes.f_low_hz[keep], _MIN_HZ, nyq_cap)
    f_hi = np.clip(notes.f_high_hz[keep], _MIN_HZ, nyq_cap)
    amp = notes.amp[keep]
    note_id = np.repeat(np.arange(len(lens)), lens)
    first = np.cumsum(lens) - lens
    local = np.arange(int(lens.sum())) - first[note_id]
    # float32 everywhere but the phase sum: a 10 s clip is ~1e5 note samples.
    f32 = np.float32
    u = local.astype(f32) * (1.0 / (lens - 1)).astype(f32)[note_id]
    log_f = np.log(f_lo).astype(f32)[note_id] + np.log(f_hi / f_lo).astype(f32)[note_id] * _contour(
        traits.contour, u
    )
    trill = traits.trill_depth if traits.trill_depth >= 0.3 else 0.0
    if trill:
        wobble = np.sin(f32(2.0 * np.pi * traits.trill_rate_hz / sr) * local.astype(f32))
        log_f += f32(0.12 * np.log(2.0) * trill) * wobble
        np.minimum(log_f, f32(np.log(nyq_cap)), out=log_f)
    phase = np.cumsum(np.exp(log_f), dtype=np.float64)
    phase *= 2.0 * np.pi / sr
    phase = np.mod(phase, 2.0 * np.pi).astype(f32)
    env = np.sin(f32(np.pi) * u)
    env *= amp.astype(f32)[note_id]
    if trill:
        env *= f32(1.0 - trill / 2) + f32(trill / 2) * wobble
    sig = np.sin(phase)
    f_top = np.maximum(f_lo, f_hi)
    for h in range(2, traits.harmonics + 1):
        gain = (traits.harmonic_decay ** (h - 1) * (h * f_top < nyq_cap)).astype(f32)[note_id]
        sig += gain * np.sin(f32(h) * phase)
    idx = np.repeat(start, lens) + local
    sig *= env
    if start[0] < 0 or idx[-1] >= n_samples:
        inside = (idx >= 0) & (idx < n_samples)
        idx, sig = idx[inside], sig[inside]
    out = np.bincount(idx, weights=sig, minlength=n_samples)
    return out.astype(np.float32)


@lru_cache(maxsize=4)
def _noise_bank(seed: int, sample_rate_hz: int) -> np.ndarray:
    """(3, bank) float32 unit-RMS white, pink and brown noise, high-passed at 50 Hz."""
    n = int(_BANK_S * sample_rate_hz)
    rng = item_rng(seed, "noise_bank")
    f = np.fft.rfftfreq(n, 1.0 / sample_rate_hz)
    spec = rng.standard_normal((3, len(f))) + 1j * rng.standard_normal((3, len(f)))
    f_safe = np.maximum(f, 50.0)
    spec *= np.stack([np.ones_like(f), f_safe**-0.5, f_safe**-1.0]) * (f >= 50.0)
    bank = np.fft.irfft(spec, n, axis=1)
    bank /= np.sqrt(np.mean(bank**2, axis=1, keepdims=True))
    return bank.astype(np.float32)


def _coloured_noise(
    rng: np.random.Generator, n: int, sample_rate_hz: int, beta: float
) -> np.ndarray:
    """Unit-RMS 1/f**beta noise by FFT, (n,) float32 (for lengths past the bank)."""
    f = np.fft.rfftfreq(n, 1.0 / sample_rate_hz)
    spec = (
        (rng.standard_normal(len(f)) + 1j * rng.standard_normal(len(f)))
        * np.maximum(f, 50.0) ** (-beta / 2)
        * (f >= 50.0)
    )
    x = np.fft.irfft(spec, n)
    return (x / np.sqrt(np.mean(x**2))).astype(np.float32)


def background(
    rng: np.random.Generator, n: int, seed: int, sample_rate_hz: int, click_rate_hz: float = 0.1
) -> np.ndarray:
    """Unit-RMS background: a random mix of white, pink and brown noise, wind gusts in about a
    third of recordings, broadband clicks at ``click_rate_hz``. (n,) float32."""
    weights = rng.dirichlet((0.6, 1.0, 1.0)).astype(np.float32)
    bank = _noise_bank(seed, sample_rate_hz)
    fits = n <= bank.shape[1]
    noise = np.zeros(n, np.float32)
    for row, beta in enumerate((0.0, 1.0, 2.0)):
        if fits:
            # A random slice of the bank, maybe reversed, is a fresh sample of the same colour.
            at = int(rng.integers(0, bank.shape[1] - n + 1))
            part = bank[row, at : at + n][:: 1 if rng.random() < 0.5 else -1]
        else:
            part = _coloured_noise(rng, n, sample_rate_hz, beta)
        noise += weights[row] * part
    if rng.random() < 0.35:
        # Wind: brown noise under a slow gust envelope (built at 1/64 rate; steps are inaudible).
        knots = rng.random(int(n / sample_rate_hz * 2) + 2) ** 2
        coarse = np.interp(
            np.linspace(0, len(knots) - 1, n // 64 + 1), np.arange(len(knots)), knots
        )
        gust = np.repeat(coarse.astype(np.float32), 64)[:n]
        if fits:
            at = int(rng.integers(0, bank.shape[1] - n + 1))
            brown = bank[2, at : at + n]
        else:
            brown = _coloured_noise(rng, n, sample_rate_hz, 2.0)
        noise += np.float32(rng.uniform(0.5, 2.0)) * gust * brown
    for _ in range(rng.poisson(click_rate_hz * n / sample_rate_hz)):
        length = int(rng.integers(32, 256))
        at = int(rng.integers(0, max(1, n - length)))
        burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / 5))
        noise[at : at + length] += float(rng.uniform(2.0, 8.0)) * burst[: n - at].astype(np.float32)
    # RMS from every 7th sample: exact enough for an SNR, a seventh of the cost.
    noise *= np.float32(1.0 / (np.sqrt(np.mean(np.square(noise[::7], dtype=np.float64))) + 1e-12))
    return noise


def _add_distractors(
    out: np.ndarray, rng: np.random.Generator, world: World, ref_power: float
) -> None:
    """Add other-species-like phrases from the prior, in place, relative to ``ref_power``."""
    cfg, sr = world.config, world.config.sample_rate_hz
    n = len(out)
    for _ in range(rng.poisson(cfg.distractors_per_10s * n / sr / 10.0)):
        traits = random_acoustic(rng, cfg.acoustic_spread)
        notes = song_notes(traits, rng, 3.0, cfg.call_jitter, start_s=0.0, max_phrases=1)
        length = min(n, int(np.ceil(notes.extent_s[1] * sr)) + 1)
        sig = synth_notes(notes, traits, length, sr)
        power = _active_power(sig)
        if power == 0.0:
            continue
        gain = np.sqrt(ref_power * 10 ** (rng.uniform(*cfg.distractor_db_range) / 10) / power)
        at = int(rng.integers(0, n - length + 1))
        out[at : at + length] += np.float32(gain) * sig


def _active_power(sig: np.ndarray) -> float:
    active = sig[sig != 0]
    return float(np.mean(active**2)) if len(active) else 0.0


def render_call(
    world: World, label: int, rng: np.random.Generator, duration_s: float
) -> np.ndarray:
    """One focal recording of species ``label``: (round(duration_s * sr),) float32 in [-1, 1].

    Song at a random SNR over background noise, distractor phrases and clicks, then a random
    recording gain (peak 0.3..0.9).
    """
    cfg, sr = world.config, world.config.sample_rate_hz
    n = int(round(duration_s * sr))
    traits = world.acoustic[label]
    notes = song_notes(traits, rng, duration_s, cfg.call_jitter)
    song = synth_notes(notes, traits, n, sr)
    power = _active_power(song) or 1e-6
    snr_db = rng.uniform(*cfg.snr_db_range)
    click_hz = cfg.distractors_per_10s / 20.0
    mix = song + np.float32(np.sqrt(power / 10 ** (snr_db / 10))) * background(
        rng, n, cfg.seed, sr, click_hz
    )
    _add_distractors(mix, rng, world, power)
    peak = float(np.abs(mix).max()) or 1.0
    return (mix * np.float32(rng.uniform(0.3, 0.9) / peak)).astype(np.float32)


def render_soundscape(
    world: World, rng: np.random.Generator, duration_s: float
) -> tuple[np.ndarray, list[tuple[float, float, int]]]:
    """A long multi-species recording and its events.

    Returns ((round(duration_s * sr),) float32, [(start_s, end_s, label), ...] sorted), each
    event spanning one bout from its first note onset to its last note offset. A few species
    (3..8) are present; bouts of 1.5..8 s arrive at ``soundscape_events_per_min``, each at an
    SNR drawn from ``snr_db_range``; they may overlap.
    """
    cfg, sr = world.config, world.config.sample_rate_hz
    n = int(round(duration_s * sr))
    noise_rms = 0.02
    out = np.float32(noise_rms) * background(rng, n, cfg.seed, sr, cfg.distractors_per_10s / 20.0)
    present = rng.choice(
        world.n_species, size=min(world.n_species, int(rng.integers(3, 9))), replace=False
    )
    events = []
    for _ in range(max(1, rng.poisson(cfg.soundscape_events_per_min * duration_s / 60.0))):
        label = int(present[rng.integers(len(present))])
        traits = world.acoustic[label]
        bout_s = min(float(rng.uniform(1.5, 8.0)), duration_s)
        at_s = float(rng.uniform(0.0, duration_s - bout_s))
        notes = song_notes(traits, rng, bout_s, cfg.call_jitter, start_s=0.0)
        notes = Notes(notes.onset_s + at_s, notes.dur_s, notes.f_low_hz, notes.f_high_hz, notes.amp)
        lo, hi = int(at_s * sr), min(n, int(np.ceil(notes.extent_s[1] * sr)) + 1)
        shifted = Notes(
            notes.onset_s - lo / sr, notes.dur_s, notes.f_low_hz, notes.f_high_hz, notes.amp
        )
        sig = synth_notes(shifted, traits, hi - lo, sr)
        power = _active_power(sig)
        if power == 0.0:
            continue
        snr_db = rng.uniform(*cfg.snr_db_range)
        out[lo:hi] += np.float32(np.sqrt(noise_rms**2 * 10 ** (snr_db / 10) / power)) * sig
        start, end = notes.extent_s
        events.append((round(start, 3), round(min(end, duration_s), 3), label))
    _add_distractors(out, rng, world, noise_rms**2 * 10 ** (np.mean(cfg.snr_db_range) / 10))
    peak = float(np.abs(out).max()) or 1.0
    return (out * np.float32(0.9 / peak)).astype(np.float32), sorted(events)
