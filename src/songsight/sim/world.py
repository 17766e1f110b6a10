"""The simulated world: a species tree, names, and hierarchically drawn traits.

`build_world(WorldConfig(...))` returns a `World`: ``K`` species (`songsight.taxonomy.Species`)
in a tree of orders (``-iformes``), families (``-idae``) and genera, each with `VisualTraits`
and `AcousticTraits`. Traits are drawn in a latent space, one Gaussian step per level
(order -> family -> genus -> species) and squashed into each trait's range, so relatives look
and sound alike. Each tree node has its own random stream (`item_rng`), per purpose, so visual
and acoustic traits are independent given the tree, and nothing depends on generation order.

Difficulty knobs (calibrate so no method sits at chance or at ceiling):

* ``visual_spread`` / ``acoustic_spread``: latent standard deviation added at the order,
  family, genus and species level. A larger species entry separates siblings; a smaller one
  makes congeners near-identical. Categorical traits (plumage pattern, call contour) switch
  at a level with probability ``min(1, 0.4 * spread)``.
* ``snr_db_range``, ``distractors_per_10s``, ``distractor_db_range``, ``call_jitter``: how
  hard the calls are (see `songsight.sim.calls`).
* ``photo_jitter``, ``clutter``: pose / lighting variation and background clutter
  (see `songsight.sim.photos`).
* ``photo_partial_rate``, ``call_generic_rate``, ``call_wrong_rate``: caption noise (see
  `songsight.sim.captions`).
* ``held_out_fraction``: species kept out of distillation, for generalisation tests.

Calibration at the defaults (60 species, seed 0): a logistic regression on the mean log
spectrum of the 10 s test clips reaches about 0.5 top-1, on 16x16 pixels about 0.47 (NABirds
style) and 0.12 (iNat style); chance is 0.017. Stronger models should land between these and ceiling.

Common names are built from plumage words ("Rusty-crowned Warbler"), so a visual knob may
rename species (and their codes); scientific names and the tree never depend on traits.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from songsight.errors import ProvenanceMismatchError, SongsightError
from songsight.taxonomy import Species

N_LEVELS = 4  # order, family, genus, species


def purpose_id(purpose: str) -> int:
    """A stable 64-bit integer for a purpose string (``hash()`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(purpose.encode(), digest_size=8).digest(), "little")


def item_rng(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """The random stream of one (purpose, key...) item, e.g. ``("ssw_audio/train", label, i)``.

    Derived with `numpy.random.SeedSequence`, so each item is reproducible on its own and items
    can be rendered in any order or in parallel.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, purpose_id(purpose), *keys]))


@dataclass
class WorldConfig:
    """Everything that determines a simulated world and its export; same config, same bytes."""

    seed: int = 0
    n_species: int = 60
    n_orders: int = 5
    families_per_order: int = 3
    genera_per_family: int = 2
    # SSW60-layout export, counts per species and split.
    ssw_clips_train: int = 40
    ssw_clips_test: int = 20
    ssw_clip_s: float = 10.0
    nabirds_train: int = 30
    nabirds_test: int = 30
    inat_train: int = 30
    inat_val: int = 5
    inat_test: int = 30
    # Caption sets for pretraining the stand-in models, per species.
    pretrain_calls: int = 60
    pretrain_photos: int = 60
    image_size: int = 64
    sample_rate_hz: int = 22_050
    clip_s_range: tuple[float, float] = (1.0, 15.0)
    n_soundscapes: int = 4
    soundscape_s: float = 60.0
    soundscape_events_per_min: float = 14.0
    # Difficulty knobs (module docstring).
    visual_spread: tuple[float, float, float, float] = (1.1, 0.7, 0.5, 0.5)
    acoustic_spread: tuple[float, float, float, float] = (1.1, 0.7, 0.5, 0.5)
    snr_db_range: tuple[float, float] = (-5.0, 20.0)
    distractors_per_10s: float = 2.0
    distractor_db_range: tuple[float, float] = (-24.0, -6.0)
    call_jitter: float = 1.0
    photo_jitter: float = 1.0
    clutter: float = 1.0
    photo_partial_rate: float = 0.3
    call_generic_rate: float = 0.15
    call_wrong_rate: float = 0.05
    held_out_fraction: float = 0.2

    def __post_init__(self) -> None:
        for name in ("clip_s_range", "snr_db_range", "distractor_db_range"):
            setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        for name in ("visual_spread", "acoustic_spread"):
            setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        counts = [getattr(self, f.name) for f in fields(self) if f.type in ("int", int)]
        rates = (self.photo_partial_rate, self.call_generic_rate, self.call_wrong_rate)
        rules = (
            (min(counts) >= 0 and self.n_species >= 2, "counts >= 0 and n_species >= 2"),
            (min(self.n_orders, self.families_per_order, self.genera_per_family) >= 1,
             "n_orders, families_per_order, genera_per_family >= 1"),
            (all(len(getattr(self, n)) == N_LEVELS and min(getattr(self, n)) >= 0
                 for n in ("visual_spread", "acoustic_spread")),
             f"visual_spread / acoustic_spread: {N_LEVELS} values >= 0 (order, family, genus, species)"),
            (0 < self.clip_s_range[0] <= self.clip_s_range[1] and self.ssw_clip_s > 0
             and self.soundscape_s >= 2, "0 < clip_s_range low <= high, ssw_clip_s > 0, soundscape_s >= 2"),
            (0 <= self.held_out_fraction < 1, "held_out_fraction in [0, 1)"),
            (min(rates) >= 0 and max(rates) <= 1 and rates[1] + rates[2] <= 1,
             "caption rates in [0, 1], call_generic_rate + call_wrong_rate <= 1"),
            (self.image_size >= 16 and self.sample_rate_hz >= 8_000,
             "image_size >= 16 and sample_rate_hz >= 8000"),
        )  # fmt: skip
        broken = [rule for ok, rule in rules if not ok]
        if broken:
            raise SongsightError(f"invalid WorldConfig: needs {'; '.join(broken)}")

    @classmethod
    def quick(cls, seed: int = 0, **overrides) -> WorldConfig:
        """A small world for tests and smoke runs: 12 species, a few items each (export < 5 s)."""
        small = dict(
            n_species=12, n_orders=2, families_per_order=2, genera_per_family=2,
            ssw_clips_train=8, ssw_clips_test=4, nabirds_train=8, nabirds_test=8,
            inat_train=6, inat_val=2, inat_test=6, pretrain_calls=6, pretrain_photos=6,
            n_soundscapes=1, soundscape_s=30.0,
        )  # fmt: skip
        small.update(overrides)
        return cls(seed=seed, **small)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> WorldConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SongsightError(f"unknown WorldConfig key(s): {', '.join(unknown)}")
        return cls(**d)


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


# ---- names -------------------------------------------------------------------------------

_ONSETS = "b c d f g l m n p r s t v th ph ch tr pr cr gl st".split()
_VOWELS = "a e i o u a e o ae y".split()
_FINALS = "r l n t c d th m s".split()
_GENUS_ENDINGS = "us a ix is ops ura ella ornis".split()
_EPITHET_ENDINGS = "ensis us a i atus icus ora ella oides ii".split()
_NOUNS = (
    "Warbler Finch Thrush Wren Tanager Sparrow Vireo Flycatcher Tit Lark Swallow Pipit Bunting "
    "Grosbeak Oriole Jay Dove Woodpecker Kingfisher Cuckoo Nightjar Plover Sandpiper Rail Owl "
    "Hawk Heron Duck Quail Swift Hummingbird Shrike Starling Babbler Bulbul Nuthatch Creeper "
    "Kinglet Waxwing Tyrannulet Antbird Manakin Sunbird Honeyeater Pitta Robin Chat Barbet Trogon"
).split()
_FAMILY_ADJ = ("New World", "Old World", "Typical", "Forest", "Marsh", "Tree", "Ground", "Reed")
_GEO = "Northern Southern Eastern Western Mountain Lowland Island Desert Pacific Atlantic".split()
# Plumage colour words, nearest in RGB wins.
COLOUR_WORDS: dict[str, tuple[float, float, float]] = {
    "Rusty": (0.72, 0.33, 0.15), "Olive": (0.5, 0.5, 0.2), "Slaty": (0.35, 0.4, 0.48),
    "Golden": (0.9, 0.7, 0.15), "Crimson": (0.75, 0.1, 0.15), "Azure": (0.2, 0.5, 0.9),
    "Ashy": (0.65, 0.65, 0.65), "Sooty": (0.12, 0.12, 0.14), "Snowy": (0.95, 0.95, 0.95),
    "Buff": (0.85, 0.75, 0.55), "Chestnut": (0.5, 0.22, 0.12), "Lemon": (0.95, 0.92, 0.3),
    "Rosy": (0.92, 0.55, 0.65), "Cinnamon": (0.78, 0.5, 0.3), "Emerald": (0.1, 0.6, 0.3),
    "Violet": (0.5, 0.3, 0.75), "Teal": (0.1, 0.5, 0.5), "Dusky": (0.3, 0.25, 0.3),
    "Lime": (0.6, 0.85, 0.2), "Indigo": (0.2, 0.15, 0.5), "Scarlet": (0.95, 0.2, 0.1),
    "Cobalt": (0.1, 0.25, 0.7), "Tawny": (0.8, 0.6, 0.3), "Mossy": (0.3, 0.45, 0.2),
}  # fmt: skip
_PATTERN_WORDS = {p: p.capitalize() for p in ("spotted", "streaked", "barred", "masked")}


def colour_word(rgb: tuple[float, float, float]) -> str:
    """The nearest plumage colour word ("Rusty", "Olive" ...) to an RGB triple in 0..1."""
    names = list(COLOUR_WORDS)
    ref = np.array([COLOUR_WORDS[n] for n in names])
    return names[int(np.argmin(((ref - np.asarray(rgb)) ** 2).sum(1)))]


def _plural(noun: str) -> str:
    if noun.endswith(("ch", "sh", "s", "x")):
        return noun + "es"
    return noun + "s"


def _stem(rng: np.random.Generator, n_syllables: int) -> str:
    syl = [
        _ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
        for _ in range(n_syllables)
    ]
    return "".join(syl) + _FINALS[rng.integers(len(_FINALS))]


def _unique(make, used: set[str]) -> str:
    for _ in range(1000):
        name = make()
        if name not in used:
            used.add(name)
            return name
    raise SongsightError(
        "could not draw a unique name; the world is too large for the name generator"
    )


def _name_candidates(v: VisualTraits) -> list[str]:
    """Common-name modifiers for a species, most salient first."""
    out = []
    if v.pattern == "capped":
        out.append(f"{colour_word(v.pattern_rgb)}-capped")
    elif v.pattern in _PATTERN_WORDS:
        out += [_PATTERN_WORDS[v.pattern], f"{colour_word(v.pattern_rgb)}-{v.pattern}"]
    out += [
        f"{colour_word(v.head_rgb)}-crowned",
        colour_word(v.body_rgb),
        f"{colour_word(v.wing_rgb)}-winged",
        f"{colour_word(v.belly_rgb)}-bellied",
    ]
    if v.beak_length > 1.0:
        out.append("Long-billed")
    if v.beak_depth > 0.65:
        out.append("Thick-billed")
    if v.tail_length > 0.75:
        out.append("Long-tailed")
    size_word = "Little" if v.size < 0.7 else "Great" if v.size > 0.88 else None
    out.append(size_word or f"{colour_word(v.beak_rgb)}-billed")
    return out


def species_code(common_name: str, used: set[str]) -> str:
    """An eBird-like 6-letter code ("Canada Goose" -> "cangoo"), a digit appended on clashes."""
    words = [w for w in common_name.lower().replace("-", " ").split() if w]
    takes = {1: (6,), 2: (3, 3), 3: (1, 1, 4)}.get(len(words), (1,) * (len(words) - 1) + (3,))
    base = "".join(w[:n] for w, n in zip(words, takes, strict=True))
    code, k = base, 2
    while code in used:
        code, k = f"{base}{k}", k + 1
    used.add(code)
    return code


# ---- the world ----------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """A built world: species by label (0..K-1, taxonomic order) with their traits."""

    config: WorldConfig
    species: tuple[Species, ...]
    visual: tuple[VisualTraits, ...]
    acoustic: tuple[AcousticTraits, ...]
    paths: tuple[tuple[int, int, int, int], ...]  # (order, family, genus, species) tree indices
    held_out: tuple[int, ...]  # labels kept out of distillation
    family_descriptions: dict[str, str] = field(default_factory=dict)

    @property
    def n_species(self) -> int:
        return len(self.species)

    @property
    def distill_labels(self) -> tuple[int, ...]:
        """Labels the distillation may train on (all but `held_out`)."""
        return tuple(s.label for s in self.species if s.label not in set(self.held_out))

    def family_with_description(self, label: int) -> str:
        """SSW60's family column form: "Toravidae (Marsh Warblers)"."""
        fam = self.species[label].family
        return f"{fam} ({self.family_descriptions[fam]})"

    def to_dict(self) -> dict:
        """JSON-ready: config, species (taxonomy, traits, tree path) and held-out labels."""
        species = []
        for s, v, a, p in zip(self.species, self.visual, self.acoustic, self.paths, strict=True):
            d = {k: val for k, val in s.to_dict().items() if k != "extra"}
            d.update(s.extra)
            d["family_description"] = self.family_descriptions[s.family]
            d.update(
                tree_path=list(p),
                held_out=s.label in self.held_out,
                visual=asdict(v),
                acoustic=asdict(a),
            )
            species.append(d)
        return {
            "format": "songsight.sim.world/1",
            "config": self.config.to_dict(),
            "species": species,
            "held_out_labels": list(self.held_out),
        }


def _tree(cfg: WorldConfig) -> np.ndarray:
    """Species per genus, (orders, families per order, genera per family) int."""
    rng = item_rng(cfg.seed, "tree")
    shape = (cfg.n_orders, cfg.families_per_order, cfg.genera_per_family)
    n_genera = int(np.prod(shape))
    if cfg.n_species >= n_genera:
        # Every genus gets one species; the rest go unevenly, as in real trees.
        extra = rng.multinomial(cfg.n_species - n_genera, rng.dirichlet(np.full(n_genera, 1.5)))
        return (1 + extra).reshape(shape)
    counts = np.zeros(n_genera, int)
    counts[rng.choice(n_genera, cfg.n_species, replace=False)] = 1
    return counts.reshape(shape)


def _higher_taxa(counts: np.ndarray, rng: np.random.Generator) -> tuple[list, dict[str, str]]:
    """Per species (tree path, genus, family, order, family noun), and family descriptions.

    Families and orders take their type genus's stem, as Corvus -> Corvidae, Corviformes.
    """
    used: set[str] = set()
    nouns = [_NOUNS[i] for i in rng.permutation(len(_NOUNS))]
    rows, descriptions, n_families = [], {}, 0
    for o, f, g in zip(*np.nonzero(counts), strict=True):
        if not rows or rows[-1][0][:2] != (o, f):  # a new family
            noun = nouns[n_families % len(nouns)]
            n_families += 1
            new_family = True
        stem = _unique(lambda: _stem(rng, int(rng.integers(1, 3))).capitalize(), used)
        genus = stem + _GENUS_ENDINGS[rng.integers(len(_GENUS_ENDINGS))]
        if new_family:
            family = stem + "idae"
            adj = _FAMILY_ADJ[rng.integers(len(_FAMILY_ADJ))]
            forms = (f"{adj} {_plural(noun)}", f"{_plural(noun)} and Allies", _plural(noun))
            descriptions[family] = forms[int(rng.integers(3))]
            new_family = False
        if not rows or rows[-1][0][0] != o:
            order = stem + "iformes"
        for s in range(counts[o, f, g]):
            rows.append(((int(o), int(f), int(g), s), genus, family, order, noun))
    return rows, descriptions


def _common_name(v: VisualTraits, noun: str, used: set[str]) -> str:
    """The first free "<plumage word> <noun>", else with a place word in front."""
    candidates = [f"{m} {noun}" for m in _name_candidates(v)]
    for name in candidates + [f"{geo} {c}" for geo in _GEO for c in candidates]:
        if name not in used:
            used.add(name)
            return name
    raise SongsightError("could not give every species a unique common name; use fewer species")


def build_world(cfg: WorldConfig) -> World:
    """Draw the species tree, names, ids and traits of ``cfg`` (deterministic in ``cfg``)."""
    names_rng = item_rng(cfg.seed, "names")
    rows, descriptions = _higher_taxa(_tree(cfg), names_rng)
    paths = tuple(r[0] for r in rows)
    visual = tuple(draw_visual(cfg.seed, p, cfg.visual_spread) for p in paths)
    acoustic = tuple(draw_acoustic(cfg.seed, p, cfg.acoustic_spread) for p in paths)

    k = len(rows)
    ids_rng = item_rng(cfg.seed, "ids")
    inat_ids = np.sort(ids_rng.choice(np.arange(1_000, 1_500_000), k, replace=False))
    inat2021 = np.sort(ids_rng.choice(10_000, k, replace=False))
    nabirds_pool = ids_rng.permutation(1_011)
    nab_at = np.concatenate([[0], np.cumsum(ids_rng.integers(1, 4, size=k))])

    species, epithets, commons, codes = [], set(), set(), set()
    for label, ((_, genus, family, order, noun), v) in enumerate(zip(rows, visual, strict=True)):
        epithet = _unique(
            lambda: (
                _stem(names_rng, int(names_rng.integers(1, 3))).lower()
                + _EPITHET_ENDINGS[names_rng.integers(len(_EPITHET_ENDINGS))]
            ),
            epithets,
        )
        common = _common_name(v, noun, commons)
        nabirds = sorted(int(x) for x in nabirds_pool[nab_at[label] : nab_at[label + 1]])
        extra = {
            "inat_taxon_id": int(inat_ids[label]),
            "inat2021_label": int(inat2021[label]),
            "nabirds_labels": " ".join(map(str, nabirds)),
        }
        species.append(
            Species(
                label=label, scientific_name=f"{genus} {epithet}", common_name=common,
                order=order, family=family, genus=genus, code=species_code(common, codes),
                extra=extra,
            )
        )  # fmt: skip

    n_held = int(round(cfg.held_out_fraction * k))
    if cfg.held_out_fraction > 0:
        n_held = min(max(n_held, 1), k - 1)
    held = item_rng(cfg.seed, "held_out").choice(k, n_held, replace=False)
    held_out = tuple(sorted(int(x) for x in held))
    return World(cfg, tuple(species), visual, acoustic, paths, held_out, descriptions)


def load_world(path: str | Path) -> World:
    """Rebuild the world recorded in a ``world.json`` and check it matches what was written."""
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    world = build_world(WorldConfig.from_dict(record["config"]))
    written = [(s["label"], s["scientific_name"], s["common_name"]) for s in record["species"]]
    rebuilt = [(s.label, s.scientific_name, s.common_name) for s in world.species]
    if written != rebuilt or list(world.held_out) != record["held_out_labels"]:
        raise ProvenanceMismatchError(
            f"{path}: its species differ from the world its config builds; it was written by "
            "another songsight.sim version. Export the world again."
        )
    return world
