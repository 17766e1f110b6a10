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

Traits live in `songsight.sim.traits`, names in `songsight.sim.names`, the per-item random
streams in `songsight.sim.rng`; this module holds the config and puts the world together.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from songsight.errors import ProvenanceMismatchError, SongsightError
from songsight.sim.names import common_name_for, higher_taxa, new_epithet, species_code
from songsight.sim.rng import item_rng
from songsight.sim.traits import (
    N_LEVELS,
    AcousticTraits,
    VisualTraits,
    draw_acoustic,
    draw_visual,
)
from songsight.sim.traits import random_acoustic as random_acoustic  # re-exported
from songsight.taxonomy import Species


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
            inat_train=6, inat_val=2, inat_test=6, pretrain_calls=30, pretrain_photos=30,
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


def build_world(cfg: WorldConfig) -> World:
    """Draw the species tree, names, ids and traits of ``cfg`` (deterministic in ``cfg``)."""
    names_rng = item_rng(cfg.seed, "names")
    rows, descriptions = higher_taxa(_tree(cfg), names_rng)
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
        epithet = new_epithet(names_rng, epithets)
        common = common_name_for(v, noun, commons)
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
