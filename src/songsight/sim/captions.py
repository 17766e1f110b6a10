"""Caption text for the simulated photos and calls, in two deliberately different styles.

* Photos (the teacher's side, BioCLIP-2-like): TreeOfLife-style taxonomic strings, mostly the
  full ``taxon_com`` form ("Animalia Chordata Aves Cresiformes Cresidae Cresus vocraeda with
  common name Spotted Chat"); a share ``photo_partial_rate`` is partial (``sci``, ``com``,
  ``taxon`` or ``sci_com`` alone), sometimes wrapped as "a photo of ...".
* Calls (the student's side, BioLingual-like): AnimalSpeak-style sentences about a sound
  ("Spotted Chat song", "call of the Spotted Chat, a rising whistle"), whose sound words
  (`sound_words`) follow the species' acoustic traits. A share ``call_generic_rate`` names no
  species ("a bird singing") and ``call_wrong_rate`` names a wrong one; the row's label stays
  the true species, so these are caption noise, as in crawled archives.

Call captions never hold a taxonomic rank string or "with common name"; photo captions never
hold a sound word.
"""

from __future__ import annotations

import numpy as np

from songsight.sim.world import AcousticTraits, World
from songsight.taxonomy import Species

PHOTO_PARTIAL_FORMATS = ("sci", "com", "taxon", "sci_com")
_CALL_TEMPLATES = (
    "{com} song",
    "song of the {com}",
    "call of the {com}",
    "{com} calling",
    "a {com} singing",
    "the sound of a {com}",
    "{com} vocalization",
    "{sci} song",
    "{com} ({sci}) call",
)
_GENERIC = (
    "a bird singing",
    "bird call",
    "birdsong in the forest",
    "a bird chirping",
    "songbird vocalizing",
    "bird sounds with background noise",
    "dawn chorus",
)
SOUND_WORDS = (
    "trill", "buzzy trill", "chip", "chips", "whistle", "warble", "rising", "falling",
    "high-pitched", "low-pitched", "repeated notes", "chirp", "slurred", "rattle",
)  # fmt: skip


def sound_words(a: AcousticTraits) -> tuple[str, ...]:
    """The sound words that describe a species' song, most telling first (at least one)."""
    words = []
    short = a.note_s < 0.06
    trill = a.trill_depth >= 0.3
    if short and a.note_count >= 6 and a.gap_s < 0.08:
        words.append("rattle" if a.harmonics >= 3 else "trill")
    if trill and a.trill_rate_hz >= 30:
        words.append("buzzy trill")
    if short and a.note_count <= 3:
        words.append("chip" if a.note_count == 1 else "chips")
    if a.note_s >= 0.12 and a.harmonics <= 2 and not trill:
        words.append("whistle")
    if a.contour in ("u", "n") and a.note_count >= 4:
        words.append("warble")
    # Net pitch movement over a phrase: the drift plus half of each note's sweep.
    sweep = {"up": 0.5, "down": -0.5}.get(a.contour, 0.0) * a.bandwidth_oct
    if a.pitch_step_oct + sweep > 0.35:
        words.append("rising")
    elif a.pitch_step_oct + sweep < -0.35:
        words.append("falling")
    if a.note_s >= 0.15 and a.contour in ("u", "n"):
        words.append("slurred")
    if a.centre_hz >= 5_000:
        words.append("high-pitched")
    elif a.centre_hz <= 2_000:
        words.append("low-pitched")
    if a.note_count >= 8 and "trill" not in words and "rattle" not in words:
        words.append("repeated notes")
    return tuple(words) or ("chirp",)


def photo_caption(species: Species, rng: np.random.Generator, partial_rate: float) -> str:
    """A TreeOfLife-like caption: ``taxon_com`` or, with ``partial_rate``, a partial form."""
    if rng.random() < partial_rate:
        text = species.prompt(PHOTO_PARTIAL_FORMATS[int(rng.integers(len(PHOTO_PARTIAL_FORMATS)))])
    else:
        text = species.prompt("taxon_com")
    return f"a photo of {text}." if rng.random() < 0.25 else text


def call_caption(world: World, label: int, rng: np.random.Generator) -> tuple[str, int | None]:
    """An AnimalSpeak-like caption for a recording of ``label``, and the label it names.

    The named label is ``label`` itself, another species (share ``call_wrong_rate``) or None
    for a generic caption (share ``call_generic_rate``).
    """
    cfg = world.config
    roll = rng.random()
    if roll < cfg.call_generic_rate:
        return _GENERIC[int(rng.integers(len(_GENERIC)))], None
    named = label
    if roll < cfg.call_generic_rate + cfg.call_wrong_rate:
        named = int((label + rng.integers(1, world.n_species)) % world.n_species)
    sp = world.species[named]
    text = _CALL_TEMPLATES[int(rng.integers(len(_CALL_TEMPLATES)))].format(
        com=sp.common_name, sci=sp.scientific_name
    )
    words = sound_words(world.acoustic[named])
    k = int(rng.integers(0, min(2, len(words)) + 1))
    if k:
        picked = [words[i] for i in sorted(rng.choice(len(words), k, replace=False))]
        text += f", {_describe(picked)}"
    return text, named


def _describe(words: list[str]) -> str:
    """["rising", "whistle"] -> "a rising whistle"; ["chip", "high-pitched"] -> "chip, high-pitched"."""
    adjectives = {"rising", "falling", "high-pitched", "low-pitched", "slurred"}
    adj = [w for w in words if w in adjectives]
    nouns = [w for w in words if w not in adjectives]
    if nouns:
        phrase = " ".join(adj + nouns[:1])
        rest = nouns[1:]
        return ", ".join([("an " if phrase[0] in "aeiou" else "a ") + phrase, *rest])
    return " and ".join(adj)
