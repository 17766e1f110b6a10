"""Names for the simulated species: Latin-looking genera, families and orders, epithets,
common names from plumage words ("Rusty-crowned Warbler") and eBird-like codes."""

from __future__ import annotations

import numpy as np

from songsight.errors import SongsightError
from songsight.sim.traits import VisualTraits

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


def new_epithet(rng: np.random.Generator, used: set[str]) -> str:
    """A species epithet ("...ensis", "...atus") not yet in ``used`` (and added to it)."""
    return _unique(
        lambda: (
            _stem(rng, int(rng.integers(1, 3))).lower()
            + _EPITHET_ENDINGS[rng.integers(len(_EPITHET_ENDINGS))]
        ),
        used,
    )


def higher_taxa(counts: np.ndarray, rng: np.random.Generator) -> tuple[list, dict[str, str]]:
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


def common_name_for(v: VisualTraits, noun: str, used: set[str]) -> str:
    """The first free "<plumage word> <noun>", else with a place word in front."""
    candidates = [f"{m} {noun}" for m in _name_candidates(v)]
    for name in candidates + [f"{geo} {c}" for geo in _GEO for c in candidates]:
        if name not in used:
            used.add(name)
            return name
    raise SongsightError("could not give every species a unique common name; use fewer species")
