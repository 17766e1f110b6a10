"""Species traits: plumage and shape (`VisualTraits`) and song (`AcousticTraits`).

Traits are drawn in a latent space, one Gaussian step per tree level (order -> family ->
genus -> species), each from its own `songsight.sim.rng.item_rng` stream, and squashed into
each trait's range (`VISUAL_SPEC`, `ACOUSTIC_SPEC`), so relatives look and sound alike while
visual and acoustic traits stay independent given the tree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from songsight.sim.rng import item_rng

N_LEVELS = 4  # order, family, genus, species

# Trait specs: name -> (dims, low, high, log scale). Values are low..high through a sigmoid.
VISUAL_SPEC: dict[str, tuple[int, float, float, bool]] = {
    "body_rgb": (3, 0.03, 0.97, False),
    "belly_rgb": (3, 0.03, 0.97, False),
    "wing_rgb": (3, 0.03, 0.97, False),
    "head_rgb": (3, 0.03, 0.97, False),
    "beak_rgb": (3, 0.03, 0.97, False),
    "pattern_rgb": (3, 0.03, 0.97, False),
    "body_aspect": (1, 1.25, 2.2, False),  # body length / height
    "head_ratio": (1, 0.45, 0.85, False),  # head diameter / body height
    "beak_length": (1, 0.3, 1.6, True),  # / head radius
    "beak_depth": (1, 0.2, 0.85, False),  # base height / head radius
    "tail_length": (1, 0.15, 1.0, False),  # / body length
    "size": (1, 0.55, 1.0, False),  # fraction of the frame
}
PATTERNS = ("plain", "spotted", "streaked", "barred", "capped", "masked")

ACOUSTIC_SPEC: dict[str, tuple[int, float, float, bool]] = {
    "centre_hz": (1, 1_200.0, 7_000.0, True),
    "bandwidth_oct": (1, 0.05, 1.5, False),  # f_high / f_low in octaves
    "note_s": (1, 0.02, 0.45, True),
    "gap_s": (1, 0.015, 0.35, True),
    "note_count": (1, 1.0, 16.0, True),  # notes per phrase, rounded
    "trill_rate_hz": (1, 6.0, 70.0, True),  # AM / FM rate inside a note
    "trill_depth": (1, 0.0, 1.0, False),  # < 0.3 reads as a pure tone
    "harmonics": (1, 1.0, 4.0, False),  # rounded
    "harmonic_decay": (1, 0.15, 0.8, False),  # amplitude ratio between harmonics
    "phrase_gap_s": (1, 0.4, 3.0, True),
    "pitch_step_oct": (1, -0.8, 0.8, False),  # pitch drift across a phrase
    "gap_ratio": (1, 0.9, 1.1, True),  # gap growth per note (rhythm: <1 accelerates)
}
CONTOURS = ("up", "down", "flat", "u", "n")
_INT_TRAITS = ("note_count", "harmonics")


@dataclass(frozen=True)
class VisualTraits:
    """Plumage and shape; colours are RGB in 0..1, shapes are ratios (see `VISUAL_SPEC`)."""

    pattern: str
    body_rgb: tuple[float, float, float]
    belly_rgb: tuple[float, float, float]
    wing_rgb: tuple[float, float, float]
    head_rgb: tuple[float, float, float]
    beak_rgb: tuple[float, float, float]
    pattern_rgb: tuple[float, float, float]
    body_aspect: float
    head_ratio: float
    beak_length: float
    beak_depth: float
    tail_length: float
    size: float

    def vector(self) -> np.ndarray:
        """(27 + 6,) float64: every trait scaled to 0..1, then the pattern one-hot."""
        return _trait_vector(self, VISUAL_SPEC, PATTERNS.index(self.pattern), len(PATTERNS))


@dataclass(frozen=True)
class AcousticTraits:
    """Song parameters (see `ACOUSTIC_SPEC`); ``contour`` shapes each note's pitch track."""

    contour: str
    centre_hz: float
    bandwidth_oct: float
    note_s: float
    gap_s: float
    note_count: int
    trill_rate_hz: float
    trill_depth: float
    harmonics: int
    harmonic_decay: float
    phrase_gap_s: float
    pitch_step_oct: float
    gap_ratio: float

    @property
    def f_low_hz(self) -> float:
        return self.centre_hz * 2.0 ** (-self.bandwidth_oct / 2)

    @property
    def f_high_hz(self) -> float:
        return self.centre_hz * 2.0 ** (self.bandwidth_oct / 2)

    def vector(self) -> np.ndarray:
        """(12 + 5,) float64: every trait scaled to 0..1, then the contour one-hot."""
        return _trait_vector(self, ACOUSTIC_SPEC, CONTOURS.index(self.contour), len(CONTOURS))


def _scale01(value: np.ndarray, lo: float, hi: float, log: bool) -> np.ndarray:
    if log:
        return (np.log(value) - np.log(lo)) / (np.log(hi) - np.log(lo))
    return (value - lo) / (hi - lo)


def _trait_vector(traits, spec, category: int, n_categories: int) -> np.ndarray:
    parts = [
        _scale01(np.atleast_1d(np.asarray(getattr(traits, k), float)), lo, hi, log)
        for k, (_, lo, hi, log) in spec.items()
    ]
    parts.append(np.eye(n_categories)[category])
    return np.concatenate(parts)


def _decode(z: np.ndarray, spec: dict) -> dict:
    """Latent (D,) -> trait values: a sigmoid into each trait's range (log-spaced where set)."""
    u = 1.0 / (1.0 + np.exp(-z))
    values, at = {}, 0
    for name, (d, lo, hi, log) in spec.items():
        x = (
            np.exp(np.log(lo) + (np.log(hi) - np.log(lo)) * u[at : at + d])
            if log
            else lo + (hi - lo) * u[at : at + d]
        )
        if name in _INT_TRAITS:
            values[name] = int(np.rint(x[0]))
        else:
            values[name] = tuple(round(float(v), 6) for v in x) if d > 1 else round(float(x[0]), 6)
        at += d
    return values


def _draw_traits(
    seed: int, stream: str, path: tuple[int, ...], spec: dict, spread: tuple, n_categories: int
) -> tuple[dict, int]:
    """Hierarchical draw: each tree node on ``path`` adds its own Gaussian step to the latent."""
    dim = sum(d for d, *_ in spec.values())
    z = np.zeros(dim)
    category = 0
    for level in range(N_LEVELS):
        rng = item_rng(seed, stream, level, *path[: level + 1])
        z += spread[level] * rng.standard_normal(dim)
        switch, new = rng.random(), int(rng.integers(n_categories))
        if level == 0 or switch < min(1.0, 0.4 * spread[level]):
            category = new
    return _decode(z, spec), category


def draw_visual(seed: int, path: tuple[int, int, int, int], spread: tuple) -> VisualTraits:
    """Visual traits of the species at tree ``path`` (order, family, genus, species indices)."""
    values, cat = _draw_traits(seed, "visual", path, VISUAL_SPEC, spread, len(PATTERNS))
    return VisualTraits(pattern=PATTERNS[cat], **values)


def draw_acoustic(seed: int, path: tuple[int, int, int, int], spread: tuple) -> AcousticTraits:
    """Acoustic traits of the species at tree ``path``; a stream apart from `draw_visual`'s."""
    values, cat = _draw_traits(seed, "acoustic", path, ACOUSTIC_SPEC, spread, len(CONTOURS))
    return AcousticTraits(contour=CONTOURS[cat], **values)


def random_acoustic(rng: np.random.Generator, spread: tuple) -> AcousticTraits:
    """A species-like song from the prior, belonging to no species (background distractors)."""
    dim = sum(d for d, *_ in ACOUSTIC_SPEC.values())
    z = float(np.sqrt(np.sum(np.square(spread)))) * rng.standard_normal(dim)
    return AcousticTraits(
        contour=CONTOURS[int(rng.integers(len(CONTOURS)))], **_decode(z, ACOUSTIC_SPEC)
    )
