"""The simulated world: tree, traits, renderers, captions and the SSW60-layout export."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import re
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from songsight.data.manifest import load_manifest, load_soundscape_manifest
from songsight.data.ssw60 import (
    AUDIO_COLUMNS,
    INAT_COLUMNS,
    NABIRDS_COLUMNS,
    SSW60,
    TAXA_COLUMNS,
)
from songsight.errors import SongsightError
from songsight.sim.calls import Notes, render_call, render_soundscape, synth_notes
from songsight.sim.captions import (
    PHOTO_PARTIAL_FORMATS,
    SOUND_WORDS,
    call_caption,
    photo_caption,
    sound_words,
)
from songsight.sim.export import export_world
from songsight.sim.photos import render_photo
from songsight.sim.world import (
    AcousticTraits,
    WorldConfig,
    build_world,
    item_rng,
    load_world,
)
from songsight.taxonomy import load_species_csv
from tests.helpers import peak_hz

SR = 22_050


def tiny(**overrides) -> WorldConfig:
    """The smallest world that still has every output: 4 species, a handful of items."""
    small = dict(
        n_species=4, n_orders=2, families_per_order=1, genera_per_family=2,
        ssw_clips_train=2, ssw_clips_test=1, nabirds_train=2, nabirds_test=1,
        inat_train=1, inat_val=1, inat_test=1, pretrain_calls=2, pretrain_photos=2,
        soundscape_s=8.0,
    )  # fmt: skip
    small.update(overrides)
    return WorldConfig.quick(**small)


def file_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def read_wav(path: Path) -> tuple[np.ndarray, int, int, int]:
    """(samples float32, rate, channels, sample width) via the stdlib reader."""
    with wave.open(str(path)) as fh:
        raw = fh.readframes(fh.getnframes())
        params = fh.getframerate(), fh.getnchannels(), fh.getsampwidth()
    return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0, *params


@pytest.fixture(scope="module")
def quick_dir(tmp_path_factory) -> Path:
    # 16 training clips per species so a linear probe has something to learn from.
    cfg = WorldConfig.quick(seed=0, ssw_clips_train=16)
    return export_world(build_world(cfg), tmp_path_factory.mktemp("quick") / "ssw60")


# ---- config and world -----------------------------------------------------------------------


def test_config_round_trips_through_json_and_refuses_nonsense():
    cfg = WorldConfig(seed=3, snr_db_range=(0, 10))
    back = WorldConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.snr_db_range == (0.0, 10.0)
    with pytest.raises(SongsightError, match="unknown WorldConfig key"):
        WorldConfig.from_dict({**cfg.to_dict(), "colour": 1})
    bad = [
        {"n_species": 1},
        {"seed": -1},
        {"visual_spread": (1.0, 0.5)},
        {"clip_s_range": (5.0, 1.0)},
        {"held_out_fraction": 1.0},
        {"call_generic_rate": 0.7, "call_wrong_rate": 0.4},
        {"ssw_clips_test": -2},
    ]
    for kw in bad:
        with pytest.raises(SongsightError, match="invalid WorldConfig"):
            WorldConfig(**kw)


def test_world_tree_names_and_ids():
    world = build_world(WorldConfig())
    sp = world.species
    assert [s.label for s in sp] == list(range(60)) and world.n_species == 60
    for field in ("scientific_name", "common_name", "code"):
        assert len({getattr(s, field) for s in sp}) == 60, field
    for s in sp:
        genus, epithet = s.scientific_name.split()
        assert genus == s.genus and genus[0].isupper() and epithet.islower()
        assert s.family.endswith("idae") and s.order.endswith("iformes")
        assert re.fullmatch(r"[a-z]{2,6}\d*", s.code)
        assert world.family_with_description(s.label).startswith(f"{s.family} (")
        assert s.common_name.split()[-1] in world.family_descriptions[s.family]
    # A genus sits in one family, a family in one order; labels follow the tree.
    assert len({(s.genus, s.family) for s in sp}) == len({s.genus for s in sp})
    assert len({(s.family, s.order) for s in sp}) == len({s.family for s in sp})
    assert list(world.paths) == sorted(world.paths)
    assert len({s.order for s in sp}) == 5 and len({s.family for s in sp}) == 15
    assert len({s.extra["inat_taxon_id"] for s in sp}) == 60
    assert len(world.held_out) == 12 and set(world.distill_labels).isdisjoint(world.held_out)
    # Deterministic in the config, different for another seed.
    assert build_world(WorldConfig()) == world
    other = build_world(WorldConfig(seed=1))
    assert [s.scientific_name for s in other.species] != [s.scientific_name for s in sp]


def test_small_worlds_and_tree_shapes():
    # Fewer species than genera: every species still gets a full taxonomy.
    world = build_world(WorldConfig(n_species=3, n_orders=4, families_per_order=3))
    assert world.n_species == 3 and all(s.family and s.order for s in world.species)
    world = build_world(WorldConfig(n_species=200, held_out_fraction=0.0))
    assert world.n_species == 200 and world.held_out == ()
    assert len({s.common_name for s in world.species}) == 200


def _mean_pair_distance(world, vectors, relation) -> float:
    dists = [
        np.linalg.norm(vectors[i] - vectors[j])
        for i, j in itertools.combinations(range(world.n_species), 2)
        if relation(world.species[i], world.species[j])
    ]
    assert dists, "no pairs for this relation"
    return float(np.mean(dists))


@pytest.mark.parametrize("kind", ["visual", "acoustic"])
def test_relatives_look_and_sound_alike(kind):
    for seed in (0, 1, 2):
        world = build_world(WorldConfig(seed=seed))
        vec = np.stack([t.vector() for t in getattr(world, kind)])
        same_genus = _mean_pair_distance(world, vec, lambda a, b: a.genus == b.genus)
        same_family = _mean_pair_distance(
            world, vec, lambda a, b: a.family == b.family and a.genus != b.genus
        )
        other_order = _mean_pair_distance(world, vec, lambda a, b: a.order != b.order)
        assert same_genus < same_family < other_order, (seed, kind)
        assert same_genus < 0.75 * other_order


def test_species_spread_knob_separates_siblings():
    def sibling_distance(spread):
        cfg = WorldConfig(acoustic_spread=(1.1, 0.7, 0.5, spread))
        world = build_world(cfg)
        vec = np.stack([t.vector() for t in world.acoustic])
        return _mean_pair_distance(world, vec, lambda a, b: a.genus == b.genus)

    assert sibling_distance(0.05) < 0.5 * sibling_distance(0.8)


def test_visual_and_acoustic_traits_come_from_separate_streams():
    base = build_world(WorldConfig())
    vis = build_world(WorldConfig(visual_spread=(2.0, 0.1, 0.1, 0.9)))
    aco = build_world(WorldConfig(acoustic_spread=(0.3, 1.5, 0.2, 0.1)))
    assert vis.acoustic == base.acoustic and vis.visual != base.visual
    assert aco.visual == base.visual and aco.acoustic != base.acoustic
    # Common names come from plumage words; scientific names and the tree never move.
    assert [s.common_name for s in aco.species] == [s.common_name for s in base.species]
    for w in (vis, aco):
        assert [s.scientific_name for s in w.species] == [s.scientific_name for s in base.species]
        assert w.held_out == base.held_out and w.paths == base.paths


def test_item_rng_depends_on_key_not_on_call_order():
    a = [item_rng(7, "x", i).random() for i in range(5)]
    b = [item_rng(7, "x", i).random() for i in reversed(range(5))][::-1]
    assert a == b and len(set(a)) == 5
    assert item_rng(7, "x", 1).random() != item_rng(7, "y", 1).random()
    assert item_rng(7, "x", 1).random() != item_rng(8, "x", 1).random()


# ---- calls ---------------------------------------------------------------------------------


def test_synth_notes_places_a_tone_where_asked():
    base = build_world(WorldConfig()).acoustic[0]
    traits = dataclasses.replace(base, contour="flat", trill_depth=0.0, harmonics=1)
    notes = Notes(
        onset_s=np.array([0.5]),
        dur_s=np.array([0.1]),
        f_low_hz=np.array([2_000.0]),
        f_high_hz=np.array([4_500.0]),
        amp=np.array([1.0]),
    )
    x = synth_notes(notes, traits, SR, SR)
    assert x.shape == (SR,) and x.dtype == np.float32
    on = np.flatnonzero(x)
    assert on.min() >= int(0.5 * SR) and on.max() < int(0.6 * SR) + 1
    # A flat note sits at the geometric mean of its range.
    assert peak_hz(x, SR, hann=False) == pytest.approx(np.sqrt(2_000.0 * 4_500.0), rel=0.02)
    # Notes hanging over either edge are cut, not wrapped.
    edge = dataclasses.replace(notes, onset_s=np.array([-0.05]))
    assert np.flatnonzero(synth_notes(edge, traits, SR, SR)).max() < int(0.05 * SR) + 1


def test_calls_carry_the_species_pitch():
    cfg = WorldConfig(snr_db_range=(40.0, 40.0), distractors_per_10s=0.0)
    world = build_world(cfg)
    for label in range(0, 60, 7):
        x = render_call(world, label, item_rng(0, "t", label), 3.0)
        assert x.shape == (3 * SR,) and x.dtype == np.float32
        assert np.isfinite(x).all() and 0.29 < np.abs(x).max() <= 0.9 + 1e-6
        a = world.acoustic[label]
        # The fundamental dominates; allow the individual's pitch shift and the trill.
        assert a.f_low_hz / 1.4 < peak_hz(x, SR, hann=False) < min(a.f_high_hz * 1.4, SR / 2), label


def test_calls_are_deterministic_per_key_and_vary_between_individuals():
    world = build_world(WorldConfig.quick())
    x1 = render_call(world, 3, item_rng(0, "k", 3, 0), 2.5)
    x2 = render_call(world, 3, item_rng(0, "k", 3, 0), 2.5)
    x3 = render_call(world, 3, item_rng(0, "k", 3, 1), 2.5)
    assert np.array_equal(x1, x2) and not np.array_equal(x1, x3)
    # Short clips still hold song.
    cfg = WorldConfig.quick(snr_db_range=(30.0, 30.0), distractors_per_10s=0.0)
    short = build_world(cfg)
    for i in range(10):
        clip = render_call(short, i % 12, item_rng(0, "short", i), 1.0)
        assert clip.shape == (SR,) and np.abs(clip).max() > 0.2


def test_soundscape_events_mark_where_the_songs_are():
    cfg = WorldConfig.quick(snr_db_range=(25.0, 25.0), distractors_per_10s=0.0)
    world = build_world(cfg)
    audio, events = render_soundscape(world, item_rng(0, "ss"), 30.0)
    assert audio.shape == (30 * SR,) and audio.dtype == np.float32
    assert events == sorted(events) and len(events) >= 1
    inside = np.zeros(len(audio), bool)
    for start, end, label in events:
        assert 0 <= start < end <= 30.0 and 0 <= label < world.n_species
        inside[int(start * SR) : int(end * SR)] = True
    rms_in = np.sqrt(np.mean(audio[inside] ** 2))
    rms_out = np.sqrt(np.mean(audio[~inside] ** 2)) if (~inside).any() else 0.0
    assert rms_in > 3 * rms_out


# ---- photos --------------------------------------------------------------------------------


def test_photos_show_the_species_colours():
    cfg = WorldConfig(image_size=128, clutter=0.0, photo_jitter=0.0)
    world = build_world(cfg)
    for label in (0, 17, 42):
        img = render_photo(world, label, item_rng(0, "ph", label), "nabirds")
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8
        v = world.visual[label]
        flat = img.reshape(-1, 3).astype(float)
        for part in ("head_rgb", "wing_rgb"):
            target = np.asarray(getattr(v, part)) * 255
            close = np.abs(flat - target).max(1) <= 4
            assert close.sum() >= 10, (label, part)


def test_photos_are_deterministic_and_styles_differ():
    world = build_world(WorldConfig.quick())
    a = render_photo(world, 2, item_rng(0, "p", 2), "inat")
    assert np.array_equal(a, render_photo(world, 2, item_rng(0, "p", 2), "inat"))
    assert not np.array_equal(a, render_photo(world, 2, item_rng(0, "p", 3), "inat"))
    assert a.shape == (64, 64, 3)
    with pytest.raises(KeyError):
        render_photo(world, 2, item_rng(0, "p", 2), "flickr")


# ---- captions ------------------------------------------------------------------------------


def _traits(**kw) -> AcousticTraits:
    base = dict(
        contour="flat", centre_hz=3_000.0, bandwidth_oct=0.3, note_s=0.1, gap_s=0.1,
        note_count=4, trill_rate_hz=10.0, trill_depth=0.0, harmonics=2, harmonic_decay=0.4,
        phrase_gap_s=1.0, pitch_step_oct=0.0, gap_ratio=1.0,
    )  # fmt: skip
    base.update(kw)
    return AcousticTraits(**base)


def test_sound_words_follow_the_traits():
    assert "trill" in sound_words(_traits(note_s=0.03, gap_s=0.03, note_count=12))
    assert "whistle" in sound_words(_traits(note_s=0.3, harmonics=1, note_count=2))
    assert "chip" in sound_words(_traits(note_s=0.03, note_count=1))
    assert "buzzy trill" in sound_words(_traits(trill_depth=0.8, trill_rate_hz=50.0))
    assert "high-pitched" in sound_words(_traits(centre_hz=6_500.0))
    assert "low-pitched" in sound_words(_traits(centre_hz=1_500.0))
    assert "rising" in sound_words(_traits(contour="up", bandwidth_oct=1.2))
    falling = sound_words(_traits(contour="up", bandwidth_oct=0.4, pitch_step_oct=-0.7))
    assert "falling" in falling and "rising" not in falling
    assert sound_words(_traits()) == ("chirp",)
    assert set(sound_words(_traits(note_s=0.03, note_count=12, gap_s=0.02))) <= set(SOUND_WORDS)


def test_photo_captions_are_tree_of_life_strings():
    world = build_world(WorldConfig.quick())
    sp = world.species[5]
    full = [photo_caption(sp, item_rng(0, "c", i), 0.0) for i in range(40)]
    assert all(sp.prompt("taxon_com") in c for c in full)
    assert any(c.startswith("a photo of ") for c in full)
    partial = {photo_caption(sp, item_rng(0, "c", i), 1.0) for i in range(80)}
    allowed = {sp.prompt(f) for f in PHOTO_PARTIAL_FORMATS}
    stripped = {c.removeprefix("a photo of ").removesuffix(".") for c in partial}
    assert stripped == allowed


def test_call_captions_differ_in_style_and_carry_the_configured_noise():
    world = build_world(WorldConfig.quick())
    rows = [
        (label, *call_caption(world, label, item_rng(0, "cc", label, i)))
        for label in range(12)
        for i in range(60)
    ]
    photo_caps = [
        photo_caption(s, item_rng(0, "pc", s.label, i), 0.3)
        for s in world.species
        for i in range(20)
    ]
    for _, text, _ in rows:
        assert "with common name" not in text and "Animalia" not in text
    for text in photo_caps:
        assert not any(re.search(rf"\b{w}\b", text) for w in SOUND_WORDS)
    generic = [r for r in rows if r[2] is None]
    wrong = [r for r in rows if r[2] is not None and r[2] != r[0]]
    n = len(rows)  # 720 draws: generic 0.15 and wrong 0.05 within ~4 standard errors
    assert abs(len(generic) / n - 0.15) < 4 * np.sqrt(0.15 * 0.85 / n)
    assert abs(len(wrong) / n - 0.05) < 4 * np.sqrt(0.05 * 0.95 / n)
    for _, text, named in rows:
        if named is None:
            continue
        sp = world.species[named]
        assert sp.common_name in text or sp.scientific_name in text
        described = text.split(",", 1)[1] if "," in text else ""
        words = set(re.findall(r"[a-z-]+", described))
        allowed = {w for phrase in sound_words(world.acoustic[named]) for w in phrase.split()}
        assert words <= allowed | {"a", "an", "and"}, text
    always_wrong = build_world(WorldConfig.quick(call_generic_rate=0.0, call_wrong_rate=1.0))
    for i in range(30):
        _, named = call_caption(always_wrong, i % 12, item_rng(1, "w", i))
        assert named is not None and named != i % 12


# ---- export --------------------------------------------------------------------------------


def test_export_writes_ssw60s_layout(quick_dir):
    world = load_world(quick_dir / "world.json")
    cfg = world.config
    cols, taxa = read_csv(quick_dir / "taxa.csv")
    assert tuple(cols) == TAXA_COLUMNS and len(taxa) == 12
    assert all(re.fullmatch(r"[A-Z][a-z]+idae \(.+\)", r["family"]) for r in taxa)
    assert [s.common_name for s in load_species_csv(quick_dir / "taxa.csv")] == [
        s.common_name for s in world.species
    ]

    cols, audio = read_csv(quick_dir / "audio_ml.csv")
    assert tuple(cols) == AUDIO_COLUMNS
    assert len(audio) == 12 * (16 + 4)
    assert {r["split"] for r in audio} == {"train", "test"}
    assert len({r["asset_id"] for r in audio}) == len(audio)
    for r in audio[:5] + audio[-5:]:
        assert re.fullmatch(r"[1-9]\d{7,8}", r["asset_id"])
        x, rate, channels, width = read_wav(quick_dir / "audio_ml" / f"{r['asset_id']}.wav")
        assert (rate, channels, width, len(x)) == (SR, 1, 2, 220_500)
        assert (r["samplerate"], r["channels"], r["samples"]) == ("22050", "1", "220500")
        assert float(r["duration_seconds"]) == 10.0

    for source, columns, pattern, splits in (
        ("nabirds", NABIRDS_COLUMNS, r"[0-9a-f]{32}", {"train", "test"}),
        ("inat", INAT_COLUMNS, r"[1-9]\d{4,6}", {"train", "val", "test"}),
    ):
        cols, rows = read_csv(quick_dir / f"images_{source}.csv")
        assert tuple(cols) == columns and {r["split"] for r in rows} == splits
        assert len({r["asset_id"] for r in rows}) == len(rows)
        for r in rows[:3]:
            assert re.fullmatch(pattern, r["asset_id"])
            with Image.open(quick_dir / f"images_{source}" / f"{r['asset_id']}.jpg") as im:
                assert im.format == "JPEG" and im.mode == "RGB"
                assert (im.height, im.width, 3) == (int(r["height"]), int(r["width"]), 3)
    assert {r["license_id"] for r in read_csv(quick_dir / "images_inat.csv")[1]} <= {
        str(i) for i in range(1, 8)
    }

    # The project's own loader reads the export with no missing files.
    ds = SSW60(quick_dir)
    assert ds.missing == [] and len(ds.species) == 12
    assert len(ds.audio("test")) == 12 * 4
    assert len(ds.images("nabirds", "train")) == 12 * cfg.nabirds_train
    assert len(ds.images("inat", "val")) == 12 * cfg.inat_val

    record = json.loads((quick_dir / "world.json").read_text())
    assert record["held_out_labels"] == list(world.held_out)
    assert len(record["species"]) == 12 and "visual" in record["species"][0]
    assert "config_hash" in record


def test_export_soundscapes_and_pretrain_sets(quick_dir):
    cfg = load_world(quick_dir / "world.json").config
    ss = load_soundscape_manifest(quick_dir / "soundscapes.csv")
    assert len(ss) >= 1 and (ss["end_s"] > ss["start_s"]).all()
    assert (ss["end_s"] <= cfg.soundscape_s).all()
    for path in set(ss["path"]):
        x, rate, _, _ = read_wav(Path(path))
        assert rate == SR and len(x) == int(cfg.soundscape_s * SR)

    photos = load_manifest(quick_dir / "pretrain" / "photos.csv")
    calls = load_manifest(quick_dir / "pretrain" / "calls.csv")
    assert list(photos.columns[:3]) == ["path", "caption", "label"]
    assert len(photos) == 12 * cfg.pretrain_photos and len(calls) == 12 * cfg.pretrain_calls
    assert sorted(set(calls["label"])) == list(range(12))
    assert (calls["caption"].str.len() > 0).all() and (photos["caption"].str.len() > 0).all()
    durations = [len(read_wav(Path(p))[0]) / SR for p in calls["path"]]
    assert min(durations) >= 1.0 - 1e-3 and max(durations) <= 15.0 + 1e-3
    assert len({round(d, 2) for d in durations}) > len(durations) // 2
    # The pretraining sets never repeat an evaluation item.
    hashes = file_hashes(quick_dir)
    eval_hashes = {h for p, h in hashes.items() if not p.startswith("pretrain/")}
    pre_hashes = {h for p, h in hashes.items() if p.startswith("pretrain/")}
    assert eval_hashes.isdisjoint(pre_hashes)


def test_export_refuses_to_overwrite_unless_asked(tmp_path):
    world = build_world(tiny())
    out = export_world(world, tmp_path / "w")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SongsightError, match="already holds"):
        export_world(world, out)
    export_world(world, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_export_is_byte_identical_per_seed_and_differs_across_seeds(tmp_path):
    a = file_hashes(export_world(build_world(tiny(seed=5)), tmp_path / "a"))
    b = file_hashes(export_world(build_world(tiny(seed=5)), tmp_path / "b", workers=2))
    c = file_hashes(export_world(build_world(tiny(seed=6)), tmp_path / "c"))
    assert a == b
    assert a["taxa.csv"] != c["taxa.csv"]
    media = [p for p in a if p.endswith((".wav", ".jpg"))]
    assert set(a[p] for p in media).isdisjoint(c[p] for p in c if p.endswith((".wav", ".jpg")))


def _split_hashes(hashes: dict[str, str]) -> tuple[dict, dict]:
    audio = {p: h for p, h in hashes.items() if p.endswith(".wav")}
    for name in ("audio_ml.csv", "soundscapes.csv"):
        audio[name] = hashes[name]
    images = {p: h for p, h in hashes.items() if p.endswith(".jpg")}
    for name in ("images_nabirds.csv", "images_inat.csv"):
        images[name] = hashes[name]
    return audio, images


def test_visual_knobs_never_change_audio_and_acoustic_knobs_never_change_photos(tmp_path):
    base = _split_hashes(file_hashes(export_world(build_world(tiny()), tmp_path / "base")))
    visual = tiny(visual_spread=(2.0, 1.0, 1.0, 1.0), photo_jitter=0.3, clutter=2.0)
    vis = _split_hashes(file_hashes(export_world(build_world(visual), tmp_path / "vis")))
    acoustic = tiny(acoustic_spread=(0.5, 0.5, 0.5, 0.5), snr_db_range=(10, 12), call_jitter=2.0)
    aco = _split_hashes(file_hashes(export_world(build_world(acoustic), tmp_path / "aco")))
    assert vis[0] == base[0] and vis[1] != base[1]
    assert aco[1] == base[1] and aco[0] != base[0]


# ---- the data carry species signal ---------------------------------------------------------


def _probe(x_train, y_train, x_test, y_test) -> float:
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    return float(clf.fit(x_train, y_train).score(x_test, y_test))


def test_a_linear_probe_separates_species_well_above_chance(quick_dir):
    chance = 1 / 12
    _, audio = read_csv(quick_dir / "audio_ml.csv")

    def log_spectrum(row):
        x = read_wav(quick_dir / "audio_ml" / f"{row['asset_id']}.wav")[0]
        frames = x[: len(x) // 256 * 256].reshape(-1, 256) * np.hanning(256)
        return np.log(np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-8).mean(0)

    feats = np.stack([log_spectrum(r) for r in audio])
    labels = np.array([int(r["label"]) for r in audio])
    train = np.array([r["split"] == "train" for r in audio])
    acc = _probe(feats[train], labels[train], feats[~train], labels[~train])
    assert acc > 3 * chance, acc

    _, photos = read_csv(quick_dir / "images_nabirds.csv")
    pixels = np.stack(
        [
            np.asarray(
                Image.open(quick_dir / "images_nabirds" / f"{r['asset_id']}.jpg").resize(
                    (8, 8), Image.BOX
                ),
                np.float32,
            ).ravel()
            for r in photos
        ]
    )
    labels = np.array([int(r["label"]) for r in photos])
    train = np.array([r["split"] == "train" for r in photos])
    acc = _probe(pixels[train], labels[train], pixels[~train], labels[~train])
    assert acc > 3 * chance, acc
