"""Searching a gallery with recordings: distilled and cascade answers against brute force,
per-window results of long files (streamed), bad inputs, and the output formats."""

from __future__ import annotations

import csv
import json
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from songsight.encoders.base import l2_normalize
from songsight.errors import ProvenanceMismatchError, SongsightError
from songsight.gallery import Gallery
from songsight.index.store import load_embeddings
from songsight.inputs.audio import load_audio, window_bounds
from songsight.inputs.stream import iter_windows
from songsight.retrieval.job import run_search
from songsight.retrieval.results import WindowResult
from songsight.retrieval.rollup import softmax_rollup
from songsight.retrieval.searcher import Searcher
from songsight.retrieval.writers import (
    RAVEN_COLUMNS,
    results_to_records,
    write_raven,
    write_results,
)
from songsight.taxonomy import Species, write_species_csv
from tests.helpers import brute_force_one, warble, write_csv, write_noise_photo

RATE = 16_000  # the tiny CLAP's rate; its window is 2 s
TAXA = [
    Species(0, "Branta canadensis", "Canada Goose", order="Anseriformes", family="Anatidae"),
    Species(1, "Branta hutchinsii", "Cackling Goose", order="Anseriformes", family="Anatidae"),
    Species(2, "Aix sponsa", "Wood Duck", order="Anseriformes", family="Anatidae"),
    Species(3, "Junco hyemalis", "Dark-eyed Junco", order="Passeriformes", family="Passerellidae"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_models, tiny_image_encoder):
    """A gallery of 4 species x 3 photos (with taxonomy), one without species, recordings."""
    root = tmp_path_factory.mktemp("world")
    rows = []
    for s in TAXA:
        for j in range(3):
            p = write_noise_photo(
                root / "photos" / f"{s.label}_{j}.png", 10 * s.label + j, (20, 20)
            )
            rows.append({"path": str(p), "label": s.label})
    write_species_csv(TAXA, root / "taxa.csv")
    write_csv(root / "photos.csv", rows)
    gallery = Gallery.build(
        [], root / "gallery", tiny_image_encoder, manifest=root / "photos.csv",
        species_csv=root / "taxa.csv", progress=False,
    )  # fmt: skip
    Gallery.build([root / "photos"], root / "bare", tiny_image_encoder, progress=False)

    rec = root / "rec"
    rec.mkdir()
    sf.write(rec / "short.wav", warble(700, 1.5), RATE)
    sf.write(
        rec / "calls.ogg", warble(1200, 5.3, 22_050, seed=1), 22_050, format="OGG", subtype="VORBIS"
    )
    sf.write(
        rec / "calls.mp3", warble(2500, 4.2, seed=2), RATE, format="MP3", subtype="MPEG_LAYER_III"
    )
    stereo = np.stack([warble(900, 3.0, 48_000, seed=3), warble(400, 3.0, 48_000, seed=4)], axis=1)
    sf.write(rec / "stereo.flac", stereo, 48_000)
    (rec / "notes.wav").write_text("not audio")
    return {"root": root, "gallery": gallery, "rec": rec, "models": tiny_models}


@pytest.fixture(scope="module")
def checkpoint(world, tiny_models, tiny_image_encoder):
    """A distilled checkpoint (random head) saved as the trainer saves one."""
    return _checkpoint(world["root"] / "distilled", tiny_models[0], tiny_image_encoder.provenance())


def _checkpoint(out: Path, audio_dir: Path, teacher: dict, extra: dict | None = None) -> Path:
    import torch
    from transformers import ClapFeatureExtractor

    from songsight.encoders.biolingual import load_clap
    from songsight.encoders.distilled import save_checkpoint
    from songsight.encoders.heads import build_head

    clap, _, tokenizer, resolved = load_clap(audio_dir)
    torch.manual_seed(0)
    head = build_head(32, int(teacher["dim"]))
    meta = {
        "kind": "songsight-distilled",
        "audio_model": resolved.provenance(),
        "image_model": {k: teacher[k] for k in ("model_id", "revision", "dim", "source")},
        "head": {"in_dim": 32, "out_dim": int(teacher["dim"]), "kind": "linear", "hidden": None},
        "prompts": {"prompt_format": "taxon_com", "templates": "none"},
        **(extra or {}),
    }
    extractor = ClapFeatureExtractor.from_pretrained(resolved.path)
    return save_checkpoint(out, clap, extractor, tokenizer, head, meta)


def long_recording(seconds: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """Hours are cheap: a 7.3 s stretch of calls tiled (7.3 s keeps windows from repeating)."""
    pattern = warble(1300, 7.3, rate, seed=seed)
    return np.resize(pattern, int(seconds * rate))


def _check_against_reference(results, reference, gallery_vectors, path, k, to_query):
    """Results of one recording == brute force over the gallery for the reference clips."""
    mine = [r for r in results if r.path == str(path)]
    ref = reference
    windows = len(ref.windows)
    assert [r.window for r in mine] == [None] + (list(range(windows)) if windows > 1 else [])
    assert mine[0].start_s == 0.0 and mine[0].end_s == pytest.approx(ref.duration_s)
    queries = to_query(np.concatenate([ref.clip[None], ref.windows]))
    for r in mine:
        if r.window is not None:
            assert (r.start_s, r.end_s) == pytest.approx((ref.starts_s[r.window], ref.ends_s[r.window]))  # fmt: skip
        ids, scores = brute_force_one(gallery_vectors, queries[0 if r.window is None else r.window + 1], k)  # fmt: skip
        assert [h.image_id for h in r.hits] == ids
        np.testing.assert_allclose([h.score for h in r.hits], scores, atol=1e-4)


def test_distilled_search_equals_brute_force(world, checkpoint):
    from songsight.encoders.distilled import DistilledEncoder

    searcher = Searcher(world["gallery"], model=checkpoint, device="cpu")
    assert searcher.answered_by == "distilled"
    rec = world["rec"]
    paths = [rec / "short.wav", rec / "calls.ogg", rec / "calls.mp3", rec / "stereo.flac"]
    results = searcher.search(paths, k=4)
    assert all(r.answered_by == "distilled" and r.error is None for r in results)
    # Reference: the encoder's own whole-file decoding and windowing, brute-force search.
    encoder = DistilledEncoder(checkpoint, device="cpu")
    refs = encoder.embed_clips(paths)
    _, vectors, _ = load_embeddings(world["root"] / "gallery" / "gallery.parquet")
    for path, ref in zip(paths, refs, strict=True):
        _check_against_reference(results, ref, vectors, path, 4, lambda x: x)
    # Short file: the clip alone. 5.3 s at 2 s windows, 1 s hop: 4 windows + the end-aligned one.
    assert sum(r.path == str(paths[0]) for r in results) == 1
    ogg = [r for r in results if r.path == str(paths[1])]
    spans = [t for r in ogg[1:] for t in (r.start_s, r.end_s)]
    assert spans == pytest.approx([0, 2, 1, 3, 2, 4, 3, 5, 3.3, 5.3], abs=1e-3)
    hit = ogg[0].hits[0]
    record = world["gallery"].record(hit.image_id)
    assert hit.image == record["path"] and hit.label == record["label"]
    assert hit.species == record["species"]


def test_readout_methods_query_as_defined(world, checkpoint, tiny_models, tiny_image_encoder):
    """--method: the checkpoint's recorded readout by default; distilled_proto and fused query
    with the teacher text their posteriors pick (recomputed here from the public encoders);
    fused names species outside the distillation set through BioLingual's own answer."""
    from songsight.baselines.cascade import species_probabilities
    from songsight.encoders.biolingual import BioLingualEncoder
    from songsight.encoders.distilled import DistilledEncoder
    from songsight.encoders.prompts import embed_prompt_average
    from songsight.readout import readout_queries
    from songsight.taxonomy import build_prompts

    trained = [t.scientific_name for t in TAXA[:2]]
    extra = {
        "logit_scale": 20.0,
        "readout": {"method": "fused", "fusion_weight": 0.5},
        "train_species": trained,
        "cascade": {"audio_prompt_format": "com", "audio_templates": "sound", "temperature": 0.1},
    }
    ckpt = _checkpoint(
        world["root"] / "readout", tiny_models[0], tiny_image_encoder.provenance(), extra
    )
    gallery = world["gallery"]
    paths = [world["rec"] / "short.wav", world["rec"] / "calls.ogg"]
    species = gallery.species_list()
    image_text = tiny_image_encoder.embed_species(species, "taxon_com", "none")
    base = BioLingualEncoder(tiny_models[0], device="cpu")
    audio_text = embed_prompt_average(base, build_prompts(species, "com", "sound"))
    seen = np.array([s.scientific_name in trained for s in species])
    distilled = DistilledEncoder(ckpt, device="cpu").embed_clips(paths)
    original = base.embed_clips(paths)
    _, vectors, _ = load_embeddings(gallery.directory / "gallery.parquet")
    assert Searcher(gallery, model=ckpt, device="cpu").answered_by == "fused"
    for method in ("distilled_proto", "fused"):
        searcher = Searcher(gallery, model=ckpt, device="cpu", method=method)
        assert searcher.answered_by == method
        results = searcher.search(paths, k=4)
        assert {r.answered_by for r in results} == {method}
        for path, d, o in zip(paths, distilled, original, strict=True):
            (clip,) = [r for r in results if r.path == str(path) and r.window is None]
            p_c = species_probabilities(o.clip[None], audio_text, 0.1)
            query = readout_queries(
                method, d.clip[None], image_text, logit_scale=20.0, p_cascade=p_c, seen=seen,
                weight=0.5,
            )[0]  # fmt: skip
            ids, _ = brute_force_one(vectors, query, 4)
            assert [h.image_id for h in clip.hits] == ids
            if method == "fused" and not seen[p_c[0].argmax()]:  # the cascade's own answer
                np.testing.assert_allclose(query, image_text[p_c[0].argmax()], atol=1e-6)
    # A recorded distilled_proto cannot name the gallery's other species: fused answers then.
    for species_trained, expected in (
        (trained, "fused"),
        ([t.scientific_name for t in TAXA], "distilled_proto"),
    ):
        proto = {
            **extra,
            "readout": {"method": "distilled_proto"},
            "train_species": species_trained,
        }
        path = _checkpoint(
            world["root"] / f"proto-{expected}",
            tiny_models[0],
            tiny_image_encoder.provenance(),
            proto,
        )
        assert Searcher(gallery, model=path, device="cpu").answered_by == expected
    # Photos without species names: the raw embedding is all that can search them.
    bare = Gallery.open(world["root"] / "bare")
    assert Searcher(bare, model=ckpt, device="cpu").answered_by == "distilled"
    with pytest.raises(SongsightError, match="no species names"):
        Searcher(bare, model=ckpt, device="cpu", method="fused")
    cascade = Searcher(gallery, model=ckpt, device="cpu", method="cascade")
    assert cascade.answered_by == "cascade: top1"
    with pytest.raises(SongsightError, match="needs a distilled model"):
        Searcher(gallery, device="cpu", method="fused")
    with pytest.raises(SongsightError, match="no logit scale"):
        Searcher(gallery, model=checkpoint, device="cpu", method="fused")


def test_species_rollup_is_softmax_mass_per_taxon(world, checkpoint):
    searcher = Searcher(world["gallery"], model=checkpoint, device="cpu", rollup_temperature=0.05)
    (result,) = searcher.search([world["rec"] / "short.wav"], k=3)
    gallery = world["gallery"]
    # Reference: every photo is in the top rollup_k here; softmax over all, summed by a loop.
    _, vectors, _ = load_embeddings(gallery.directory / "gallery.parquet")
    from songsight.encoders.distilled import DistilledEncoder

    clip = DistilledEncoder(checkpoint, device="cpu").embed_audio([world["rec"] / "short.wav"])[0]
    scores = vectors.astype(np.float64) @ clip
    weights = [math.exp(s / 0.05) for s in scores]
    total = sum(weights)
    expected: dict[tuple[str, str], float] = {}
    for i, w in enumerate(weights):
        rec = gallery.record(i)
        for rank in ("species", "genus", "family"):
            key = (rank, rec[rank])
            expected[key] = expected.get(key, 0.0) + w / total
    got = {(s.rank, s.name): s.score for s in result.species}
    assert {k for k in got if k[0] == "species"} == {k for k in expected if k[0] == "species"}
    for key, value in got.items():
        assert value == pytest.approx(expected[key], abs=1e-5)
    species = [s for s in result.species if s.rank == "species"]
    assert [s.score for s in species] == sorted((s.score for s in species), reverse=True)
    assert sum(s.score for s in species) == pytest.approx(1.0, abs=1e-5)
    goose = next(s for s in species if s.name == "Branta canadensis")
    assert goose.label == 0 and goose.common_name == "Canada Goose"
    assert all(s.label is None for s in result.species if s.rank != "species")


def test_softmax_rollup_against_loop():
    rng = np.random.default_rng(0)
    scores = rng.uniform(-0.2, 0.4, 30).astype(np.float32)
    scores[-4:] = -np.inf  # padding
    groups = rng.integers(-1, 5, 30)
    got = softmax_rollup(scores, groups, 6, temperature=0.03)
    valid = [i for i in range(30) if np.isfinite(scores[i])]
    top = max(float(scores[i]) for i in valid)
    w = {i: math.exp((float(scores[i]) - top) / 0.03) for i in valid}
    z = sum(w.values())
    for g in range(6):
        assert got[g] == pytest.approx(sum(w[i] for i in valid if groups[i] == g) / z, abs=1e-9)
    assert got.sum() <= 1 + 1e-9
    assert softmax_rollup(np.full(3, -np.inf), np.zeros(3, int), 2, 0.1).tolist() == [0, 0]


def test_cascade_answers_through_species_text(world, tiny_models):
    from songsight.baselines.cascade import cascade_queries
    from songsight.encoders.bioclip import BioCLIPEncoder
    from songsight.encoders.biolingual import BioLingualEncoder
    from songsight.prompt_templates import TEMPLATE_SETS

    gallery = world["gallery"]
    searcher = Searcher(gallery, audio_model=tiny_models[0], device="cpu")
    assert searcher.answered_by == "cascade: top1"
    rec = world["rec"]
    paths = [rec / "calls.mp3", rec / "short.wav"]
    results = searcher.search(paths, k=5)
    assert {r.answered_by for r in results} == {"cascade: top1"}
    # Reference, built independently: species prompts through both text towers.
    audio, image = BioLingualEncoder(tiny_models[0], device="cpu"), BioCLIPEncoder(tiny_models[1], device="cpu")  # fmt: skip
    species = sorted(TAXA, key=lambda s: s.label)
    prompts = [t.format(s.common_name) for s in species for t in TEMPLATE_SETS["sound"]]
    audio_text = l2_normalize(audio.embed_texts(prompts).reshape(4, 4, -1).mean(1))
    image_text = image.embed_species(species, "taxon_com", "none")
    temperature = float(1 / audio.model.logit_scale_a.exp())
    _, vectors, _ = load_embeddings(gallery.directory / "gallery.parquet")
    for path, ref in zip(paths, audio.embed_clips(paths), strict=True):
        _check_against_reference(
            results, ref, vectors, path, 5,
            lambda x: cascade_queries(x, audio_text, image_text, temperature, "top1"),
        )  # fmt: skip
    weighted = Searcher(gallery, audio_model=tiny_models[0], device="cpu", cascade_mode="weighted")
    assert weighted.answered_by == "cascade: weighted"
    assert weighted.search([paths[1]], k=2)[0].answered_by == "cascade: weighted"


def test_cascade_needs_species_and_models_must_match(world, tiny_models, tmp_path):
    from songsight.sim.tiny_models import build_tiny_open_clip

    with pytest.raises(SongsightError, match="no species names"):
        Searcher(world["root"] / "bare", audio_model=tiny_models[0], device="cpu")
    other_image = build_tiny_open_clip(tmp_path / "other", seed=5)
    with pytest.raises(ProvenanceMismatchError, match="revision"):
        Searcher(
            world["gallery"], audio_model=tiny_models[0], image_model=other_image, device="cpu"
        )
    from songsight.encoders.bioclip import BioCLIPEncoder

    teacher = BioCLIPEncoder(other_image, device="cpu").provenance()
    ckpt = _checkpoint(tmp_path / "wrong-teacher", tiny_models[0], teacher)
    with pytest.raises(ProvenanceMismatchError, match="teacher"):
        Searcher(world["gallery"], model=ckpt, device="cpu")


def test_bad_recordings_never_abort(world, checkpoint):
    searcher = Searcher(world["gallery"], model=checkpoint, device="cpu")
    rec = world["rec"]
    nan = np.full(RATE, np.nan, np.float32)
    inputs = [
        rec / "notes.wav",
        rec / "missing.wav",
        (nan, RATE),
        (warble(800, 3.0, 8_000), 8_000),
        rec / "short.wav",
        (np.zeros(0, np.float32), RATE),
    ]
    results = searcher.search(inputs, k=2)
    errors = {r.path: r.error for r in results if r.error}
    assert "not a readable audio file" in errors[str(rec / "notes.wav")]
    assert errors[str(rec / "missing.wav")] == "file not found"
    assert "NaN" in errors["<array 2>"] and "zero-length" in errors["<array 5>"]
    good = [r for r in results if r.error is None]
    assert {r.path for r in good} == {"<array 3>", str(rec / "short.wav")}
    assert [r.path for r in results if r.window is None] == [
        str(rec / "notes.wav"), str(rec / "missing.wav"), "<array 2>", "<array 3>",
        str(rec / "short.wav"), "<array 5>",
    ]  # fmt: skip
    # The in-memory recording gives the same answer as the same audio on disk.
    sf.write(rec / "array3.wav", warble(800, 3.0, 8_000), 8_000, subtype="FLOAT")
    disk = searcher.search([rec / "array3.wav"], k=2)
    memory = [r for r in results if r.path == "<array 3>"]
    assert [[h.image_id for h in r.hits] for r in disk] == [[h.image_id for h in r.hits] for r in memory]  # fmt: skip
    with pytest.raises(SongsightError, match="window_s"):
        searcher.search([rec / "short.wav"], window_s=5.0)
    with pytest.raises(SongsightError, match="k must"):
        searcher.search([rec / "short.wav"], k=0)


def test_long_recording_streams_in_bounded_memory(tmp_path):
    """A 10-minute file: windows exactly as window_bounds cuts the fully decoded file, while
    the decoder holds one block, not the recording (tracemalloc sees numpy's buffers)."""
    minutes = 10
    path = tmp_path / "soundscape.wav"
    sf.write(path, long_recording(60 * minutes, seed=7), RATE, subtype="FLOAT")
    full = load_audio(path, RATE).waveform
    expected = window_bounds(len(full), RATE, 2.0, 1.5)

    tracemalloc.start()
    got = []
    for a, b, samples in iter_windows(path, RATE, 2.0, 1.5, block_s=10.0):
        got.append((a, b))
        if a % 60_000 == 0 or b == len(full):  # spot checks, without keeping every window
            np.testing.assert_array_equal(samples, full[a:b])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert got == expected and got[-1][1] == len(full)
    # A few copies of one 10 s block (640 kB) in flight, not the 38 MB of the recording.
    assert peak < 8 * 10 * RATE * 4

    # Resampled on the fly: the streaming resampler gives what resampling at once gives.
    path48 = tmp_path / "hi.flac"
    sf.write(path48, warble(3000, 37.3, 48_000, seed=8), 48_000)
    full = load_audio(path48, RATE).waveform
    got = list(iter_windows(path48, RATE, 2.0, 2.0, block_s=3.3))
    assert [(a, b) for a, b, _ in got] == window_bounds(len(full), RATE, 2.0, 2.0)
    for a, b, samples in got:
        np.testing.assert_allclose(samples, full[a:b], atol=1e-6)


def test_long_file_per_window_results(world, checkpoint, tmp_path):
    searcher = Searcher(world["gallery"], model=checkpoint, device="cpu", batch_size=16)
    path = tmp_path / "ten_minutes.wav"
    sf.write(path, long_recording(600.5, seed=9), RATE)
    results = searcher.search([path], k=3, window_s=2.0, hop_s=30.0)
    bounds = window_bounds(int(600.5 * RATE), RATE, 2.0, 30.0)
    assert len(results) == 1 + len(bounds) == 22
    assert (results[0].window, results[0].start_s, results[0].end_s) == (None, 0.0, 600.5)
    assert [(r.window, r.start_s, r.end_s) for r in results[1:]] == [
        (w, a / RATE, b / RATE) for w, (a, b) in enumerate(bounds)
    ]
    assert results[-1].start_s == pytest.approx(598.5) and all(len(r.hits) == 3 for r in results)
    # One window checked end to end against the encoder on that stretch alone.
    from songsight.encoders.distilled import DistilledEncoder

    audio = load_audio(path, RATE).waveform
    a, b = bounds[13]
    emb = DistilledEncoder(checkpoint, device="cpu").embed_audio([(audio[a:b], RATE)])[0]
    _, vectors, _ = load_embeddings(world["root"] / "gallery" / "gallery.parquet")
    ids, _ = brute_force_one(vectors, emb, 3)
    assert [h.image_id for h in results[14].hits] == ids


def _sample_results() -> list[WindowResult]:
    from songsight.retrieval.results import Hit, SpeciesScore

    hits = [Hit(3, "/p/a.jpg", 0.31, "Aix sponsa", 2, "Wood Duck"), Hit(0, "/p/b.jpg", 0.2)]
    species = [SpeciesScore("Aix sponsa", 0.8, "species", 2, "Wood Duck"), SpeciesScore("Aix", 0.8, "genus")]  # fmt: skip
    return [
        WindowResult("/r/long.wav", 0.0, 25.0, hits, species, None, None, "distilled"),
        WindowResult("/r/long.wav", 0.0, 10.0, hits[:1], species, 0, None, "distilled"),
        WindowResult("/r/long.wav", 5.0, 15.0, hits[1:], [], 1, None, "distilled"),
        WindowResult("/r/bad.wav", 0.0, 0.0, [], [], None, "file not found", "distilled"),
        WindowResult("/r/sub/short.wav", 0.0, 3.0, hits, species, None, None, "distilled"),
        WindowResult("/r/other/short.wav", 0.0, 4.0, [], [], None, None, "distilled"),
    ]


def test_json_contract_and_writers(tmp_path, capsys):
    results = _sample_results()
    records = results_to_records(results)
    assert len(records) == 6
    assert set(records[0]) == {
        "path",
        "start_s",
        "end_s",
        "window",
        "answered_by",
        "flags",
        "hits",
        "species",
    }
    assert records[0]["hits"][0] == {
        "image_id": 3, "image": "/p/a.jpg", "score": 0.31, "species": "Aix sponsa", "label": 2,
        "common_name": "Wood Duck",
    }  # fmt: skip
    assert records[0]["hits"][1] == {"image_id": 0, "image": "/p/b.jpg", "score": 0.2}
    assert records[0]["species"][0] == {
        "name": "Aix sponsa", "score": 0.8, "rank": "species", "label": 2, "common_name": "Wood Duck"
    }  # fmt: skip
    assert records[1]["window"] == 0 and records[3]["error"] == "file not found"

    write_results(results, "json", tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(records))
    write_results(results, "json")
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(records))
    write_results(results, "parquet", tmp_path / "r.parquet", {"answered_by": "distilled"})
    table = pq.read_table(tmp_path / "r.parquet")
    back = table.to_pylist()
    assert [r["path"] for r in back] == [r["path"] for r in records]
    assert back[0]["hits"][0]["image"] == "/p/a.jpg" and back[3]["error"] == "file not found"
    assert b"songsight" in table.schema.metadata
    write_results(results, "csv", tmp_path / "r.csv")
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert len(rows) == 2 + 1 + 1 + 1 + 2 + 1  # one row per hit, one per result without hits
    assert rows[0]["top_species"] == "Aix sponsa" and rows[0]["rank"] == "1"
    write_results(results, "table")
    text = capsys.readouterr().out
    assert "== /r/long.wav" in text and "ERROR: file not found" in text and "Aix sponsa" in text
    with pytest.raises(SongsightError, match="--out"):
        write_results(results, "parquet")
    with pytest.raises(SongsightError, match="format"):
        write_results(results, "xml")


def test_raven_selection_tables(tmp_path):
    written = write_raven(_sample_results(), tmp_path / "raven", high_freq_hz=24_000)
    assert [p.name for p in written] == [
        "long.selections.txt", "short.selections.txt", "short_2.selections.txt",
    ]  # fmt: skip
    lines = written[0].read_text().splitlines()
    assert lines[0].split("\t") == list(RAVEN_COLUMNS) == [
        "Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
        "High Freq (Hz)", "Begin Path", "File Offset (s)", "Species", "Score", "Flags",
    ]  # fmt: skip
    assert lines[1].split("\t") == ["1", "Spectrogram 1", "1", "0.000", "10.000", "0.0", "24000.0", "/r/long.wav", "0.000", "Aix sponsa", "0.8000", ""]  # fmt: skip
    # A window without species names falls back to the best photo's (unknown) species.
    assert lines[2].split("\t")[3:] == ["5.000", "15.000", "0.0", "24000.0", "/r/long.wav", "5.000", "", "0.2000", ""]  # fmt: skip
    assert len(lines) == 3
    single = written[1].read_text().splitlines()
    assert single[1].split("\t")[3:5] == ["0.000", "3.000"]


def test_run_search_writes_and_reports(world, checkpoint, tmp_path, capsys):
    rec = world["rec"]
    code = run_search(
        [rec / "calls.mp3", rec / "missing.wav"], world["root"] / "gallery", model=checkpoint,
        k=2, fmt="json", out=tmp_path / "out.json", raven=tmp_path / "raven", device="cpu",
        progress=False,
    )  # fmt: skip
    assert code == 1 and "missing.wav: file not found" in capsys.readouterr().err
    records = json.loads((tmp_path / "out.json").read_text())
    assert records[-1]["error"] == "file not found"
    assert {r["answered_by"] for r in records} == {"distilled"}
    table = (tmp_path / "raven" / "calls.selections.txt").read_text().splitlines()
    assert len(table) == 1 + sum(r["window"] is not None for r in records)
    assert table[1].split("\t")[6] == f"{RATE / 2:.1f}"
    code = run_search([rec], world["root"] / "gallery", model=checkpoint, k=1, fmt="csv", device="cpu", progress=False)  # fmt: skip
    out = capsys.readouterr()
    assert code == 1 and "notes.wav" in out.err and "short.wav" in out.out  # folder walked


def test_search_cli_takes_the_cascades_prompts(world, tmp_path):
    """`search --audio-templates TEMPLATE --prompt-format sci`: the cascade asks each model with
    them, and the results' provenance records the template strings."""
    from songsight.cli import main

    out = tmp_path / "r.parquet"
    rc = main([
        "search", str(world["rec"] / "short.wav"), "--gallery", str(world["gallery"].directory),
        "--audio-model", str(world["models"][0]), "--audio-templates", "the sound of {common_lower}",
        "--prompt-format", "sci", "--format", "parquet", "--out", str(out), "--quiet",
        "--device", "cpu",
    ])  # fmt: skip
    assert rc == 0
    prov = json.loads(pq.read_table(out).schema.metadata[b"songsight"])
    assert prov["prompt_format"] == "sci"
    assert "the sound of {common_lower}" in json.dumps(prov["audio_templates"])
