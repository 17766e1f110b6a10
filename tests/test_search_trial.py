"""The field trial's search items: what a fused readout at weight 0 says, one rule for
--audio-model beside --model, calibration per method, Raven tables that name their recording,
and a progress bar that moves within a long recording.

Reuses the tiny world of `tests.test_retrieval` (4 species x 3 photos, tiny real models).
"""

from __future__ import annotations

import csv
import json
import shutil
import warnings

import numpy as np
import pytest
import soundfile as sf

from songsight.cli import main
from songsight.encoders.windows import embed_windows
from songsight.errors import SongsightError
from songsight.index.store import load_embeddings
from songsight.retrieval.results import Hit, SpeciesScore, WindowResult
from songsight.retrieval.searcher import Searcher
from songsight.retrieval.writers import RAVEN_COLUMNS, format_table, results_to_records, write_raven
from tests import test_retrieval as _base
from tests.helpers import warble
from tests.test_retrieval import RATE, TAXA, _checkpoint, long_recording

world, checkpoint = _base.world, _base.checkpoint

TRAINED = [t.scientific_name for t in TAXA[:2]]
READOUT_META = {
    "logit_scale": 20.0,
    "train_species": TRAINED,
    "cascade": {"audio_prompt_format": "com", "audio_templates": "sound", "temperature": 0.1},
}


def _readout_checkpoint(world, name, tiny_models, tiny_image_encoder, readout, **extra):
    meta = {**READOUT_META, "readout": readout, **extra}
    return _checkpoint(world["root"] / name, tiny_models[0], tiny_image_encoder.provenance(), meta)


# ---- item 1: a fused readout at weight 0 is the cascade, and says so --------------------------


def test_fused_at_weight_zero_answers_and_says_cascade(world, tiny_models, tiny_image_encoder):
    from songsight.baselines.cascade import species_probabilities
    from songsight.encoders.biolingual import BioLingualEncoder
    from songsight.encoders.distilled import DistilledEncoder
    from songsight.encoders.prompts import embed_prompt_average
    from songsight.readout import readout_queries
    from songsight.taxonomy import build_prompts
    from tests.helpers import brute_force_one

    ckpt = _readout_checkpoint(
        world, "fused0", tiny_models, tiny_image_encoder, {"method": "fused", "fusion_weight": 0.0}
    )
    gallery = world["gallery"]
    paths = [world["rec"] / "short.wav", world["rec"] / "calls.ogg"]
    cascade = Searcher(gallery, model=ckpt, device="cpu", method="cascade").search(paths, k=4)
    for method in (None, "fused"):  # the checkpoint's own readout, and asked for
        searcher = Searcher(gallery, model=ckpt, device="cpu", method=method)
        assert searcher.answered_by == "cascade: top1"
        assert searcher.provenance["answered_by"] == "cascade: top1"
        assert "fusion weight 0" in searcher.provenance["fused_as_cascade"]
        results = searcher.search(paths, k=4)
        assert [[h.image_id for h in r.hits] for r in results] == [
            [h.image_id for h in r.hits] for r in cascade
        ]
        records = results_to_records(results)
        assert {r["answered_by"] for r in records} == {"cascade: top1"}
        assert "(answered by cascade: top1)" in format_table(results)
        assert "fused" not in format_table(results)
    # It is the fused readout's own answer at weight 0 (reference from the public encoders).
    species = gallery.species_list()
    image_text = tiny_image_encoder.embed_species(species, "taxon_com", "none")
    base = BioLingualEncoder(tiny_models[0], device="cpu")
    audio_text = embed_prompt_average(base, build_prompts(species, "com", "sound"))
    seen = np.array([s.scientific_name in TRAINED for s in species])
    (d,) = DistilledEncoder(ckpt, device="cpu").embed_clips(paths[:1])
    (o,) = base.embed_clips(paths[:1])
    p_c = species_probabilities(o.clip[None], audio_text, 0.1)
    query = readout_queries(
        "fused", d.clip[None], image_text, logit_scale=20.0, p_cascade=p_c, seen=seen, weight=0.0
    )[0]
    _, vectors, _ = load_embeddings(gallery.directory / "gallery.parquet")
    ids, _ = brute_force_one(vectors, query, 4)
    assert [h.image_id for h in cascade[0].hits] == ids
    # A weight that can change the answer is still fused.
    half = _readout_checkpoint(
        world, "fused5", tiny_models, tiny_image_encoder, {"method": "fused", "fusion_weight": 0.5}
    )
    assert Searcher(gallery, model=half, device="cpu").answered_by == "fused"


# ---- item 2: --audio-model beside --model, one rule --------------------------------------------


def test_audio_model_beside_model_is_taken_exactly_when_the_method_runs_the_base(
    world, tiny_models, tiny_image_encoder, tmp_path
):
    """The checkpoint's BioLingual has moved: --audio-model says where it is now, for the
    methods that run it, whether the method was asked for or is the checkpoint's own."""
    moved = {"model_id": str(tmp_path / "moved-away"), "revision": "local-x", "source": "local"}
    gallery = world["gallery"]
    fused = _readout_checkpoint(
        world, "moved-fused", tiny_models, tiny_image_encoder,
        {"method": "fused", "fusion_weight": 0.5}, audio_model=moved,
    )  # fmt: skip
    base = tiny_models[0]
    with pytest.raises(SongsightError, match="moved-away"):
        Searcher(gallery, model=fused, device="cpu")  # the base is not where it was
    # The checkpoint's default (fused) and the explicit methods that run the base: accepted.
    for method, answered_by in ((None, "fused"), ("fused", "fused"), ("cascade", "cascade: top1")):
        searcher = Searcher(gallery, model=fused, audio_model=base, device="cpu", method=method)
        assert searcher.answered_by == answered_by
        assert searcher.search(world["rec"] / "short.wav", k=2)[0].hits
    # The methods that do not run it would ignore it: refused, asked for or the default.
    for method in ("distilled", "distilled_proto"):
        with pytest.raises(SongsightError, match=f"'{method}' \\(asked for\\).*--audio-model"):
            Searcher(gallery, model=fused, audio_model=base, device="cpu", method=method)
    # An explicit method is judged before anything loads (there is no checkpoint here).
    with pytest.raises(SongsightError, match="'distilled' \\(asked for\\)"):
        Searcher(gallery, model=tmp_path / "nowhere", audio_model=base, method="distilled")
    plain = _checkpoint(world["root"] / "plain-moved", base, tiny_image_encoder.provenance())
    with pytest.raises(SongsightError, match="'distilled' \\(the method .* answers"):
        Searcher(gallery, model=plain, audio_model=base, device="cpu")
    # A gallery without species names is searched with distilled whatever was recorded.
    with pytest.raises(SongsightError, match="'distilled' \\(the method"):
        Searcher(world["root"] / "bare", model=fused, audio_model=base, device="cpu")
    # A recorded distilled_proto that this gallery turns into fused takes the base.
    proto = _readout_checkpoint(
        world, "moved-proto", tiny_models, tiny_image_encoder, {"method": "distilled_proto"},
        audio_model=moved,
    )  # fmt: skip
    assert Searcher(gallery, model=proto, audio_model=base, device="cpu").answered_by == "fused"
    with pytest.raises(SongsightError, match="--image-model"):
        Searcher(gallery, model=fused, image_model=tiny_models[1], device="cpu")


# ---- item 3: calibration is per method, and a search says which it has -------------------------


def _calibration_recordings(tmp_path):
    rec = tmp_path / "val"
    rec.mkdir()
    rows = []
    for i in range(8):
        sf.write(rec / f"v{i}.wav", warble(500 + 300 * i, 1.5, seed=i), RATE)
        rows.append({"path": f"val/v{i}.wav", "label": TAXA[i % 4].label})
    with (tmp_path / "val.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label"])
        w.writeheader()
        w.writerows(rows)
    return tmp_path / "val.csv"


def test_a_search_calibrated_only_for_another_method_says_so(
    world, tiny_models, tiny_image_encoder, tmp_path
):
    from songsight.retrieval.calibrate import calibrate

    gallery_dir = tmp_path / "gallery"
    shutil.copytree(world["root"] / "gallery", gallery_dir)
    ckpt = _readout_checkpoint(
        world, "calib-fused", tiny_models, tiny_image_encoder,
        {"method": "fused", "fusion_weight": 0.5},
    )  # fmt: skip
    report = calibrate(gallery_dir, _calibration_recordings(tmp_path), ckpt, split=None,
                       device="cpu", progress=False)  # fmt: skip
    assert report.answered_by == "fused"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its own calibration: nothing to say
        own = Searcher(gallery_dir, model=ckpt, device="cpu")
    assert own.provenance["rollup"]["temperature_source"] == "calibrated"
    assert "note" not in own.provenance["rollup"]
    # Another method of the same model: the default temperature, and a warning naming both.
    with pytest.warns(UserWarning, match="calibrated for fused, not for distilled") as caught:
        other = Searcher(gallery_dir, model=ckpt, device="cpu", method="distilled")
    assert len(caught) == 1
    note = other.provenance["rollup"]["note"]
    assert other.provenance["rollup"]["temperature_source"].startswith("default")
    assert f"index calibrate --gallery {gallery_dir} --recordings VAL.csv --model {ckpt} --method distilled" in note  # fmt: skip
    # ... which the command line takes: that calibration is then the search's own.
    assert main(["index", "calibrate", "--gallery", str(gallery_dir), "--recordings",
                 str(tmp_path / "val.csv"), "--split", "", "--model", str(ckpt),
                 "--method", "distilled", "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = Searcher(gallery_dir, model=ckpt, device="cpu", method="distilled")
    assert again.provenance["rollup"]["temperature_source"] == "calibrated"
    # Another model (the zero-shot cascade): named with its model, and the CLI that calibrates it.
    with pytest.warns(UserWarning, match=f"calibrated for .*fused with {ckpt}") as caught:
        cascade = Searcher(gallery_dir, audio_model=tiny_models[0], device="cpu")
    assert (
        f"songsight index calibrate --gallery {gallery_dir} --recordings VAL.csv"
        in (cascade.provenance["rollup"]["note"])
    )
    # Calibrations record the model's revision, which is what "this model" means.
    entries = json.loads((gallery_dir / "gallery.json").read_text())["calibration"].values()
    assert len(entries) == 2  # fused, then distilled
    assert all(e["revision"] == own.encoder.provenance()["revision"] for e in entries)
    # A gallery calibrated for nothing, and a temperature given, say nothing.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Searcher(world["gallery"], model=ckpt, device="cpu", method="distilled")
        Searcher(gallery_dir, model=ckpt, device="cpu", method="distilled", rollup_temperature=0.1)


# ---- item 4: Raven tables name their recording; silent windows have no score ------------------


def test_raven_tables_name_their_recording_and_leave_silent_scores_empty(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    duck = SpeciesScore("Aix sponsa", 0.8, "species", 2, "Wood Duck")
    hit = Hit(3, "/p/a.jpg", 0.31, "Aix sponsa", 2, "Wood Duck")
    results = [
        WindowResult("/r/site1/rec1.wav", 0.0, 25.0, [hit], [duck], None, None, "distilled"),
        WindowResult("/r/site1/rec1.wav", 0.0, 10.0, [hit], [duck], 0, None, "distilled"),
        WindowResult("/r/site1/rec1.wav", 5.0, 15.0, [], [], 1, None, "distilled", ["silent"]),
        WindowResult("site2/rec1.wav", 0.0, 3.0, [], [], None, None, "distilled", ["silent"]),
        WindowResult("<array 2>", 0.0, 4.0, [hit], [duck], None, None, "distilled"),
    ]
    written = write_raven(results, tmp_path / "raven", high_freq_hz=8000)
    assert [p.name for p in written] == [
        "rec1.selections.txt", "rec1_2.selections.txt", "array_2.selections.txt",
    ]  # fmt: skip
    tables = [list(csv.DictReader(p.open(), delimiter="\t")) for p in written]
    assert list(tables[0][0]) == list(RAVEN_COLUMNS)
    assert {"Begin Path", "File Offset (s)"} <= set(RAVEN_COLUMNS)
    # The colliding names are traced to their recordings (relative paths made absolute).
    assert [row["Begin Path"] for row in tables[0]] == ["/r/site1/rec1.wav"] * 2
    assert tables[1][0]["Begin Path"] == str(tmp_path / "site2" / "rec1.wav")
    assert tables[2][0]["Begin Path"] == "<array 2>"
    assert [row["File Offset (s)"] for row in tables[0]] == ["0.000", "5.000"]
    # A silent window: no species, an empty score and its flag, never nan.
    assert tables[0][0]["Score"] == "0.8000" and tables[0][0]["Flags"] == ""
    for silent in (tables[0][1], tables[1][0]):
        assert (silent["Species"], silent["Score"], silent["Flags"]) == ("", "", "silent")
    assert not any("nan" in p.read_text().lower() for p in written)


# ---- item 5: the progress bar moves within a long recording -----------------------------------


def test_window_hook_reports_each_recording_as_it_is_embedded(tmp_path):
    path = tmp_path / "seven.wav"
    sf.write(path, warble(900, 7.0), RATE)
    calls: list[tuple[int, float]] = []

    def forward(windows):
        return np.ones((len(windows), 4), np.float32) / 2

    sources = [path, (warble(700, 3.0), RATE)]
    out = dict(
        embed_windows(forward, sources, RATE, 2.0, 1.0, batch_size=3,
                      on_progress=lambda i, s: calls.append((i, s)))
    )  # fmt: skip
    for i, duration in ((0, 7.0), (1, 3.0)):
        seconds = [s for j, s in calls if j == i]
        assert seconds == sorted(seconds) and seconds[-1] == pytest.approx(duration)
        assert seconds[-1] == pytest.approx(out[i].duration_s)
    assert len([s for j, s in calls if j == 0]) >= 2  # the 7 s file moved before it was done


class _Bar:
    """Stands in for tqdm: records the total and every step."""

    made: list[_Bar] = []

    def __init__(self, total=None, **_):
        self.total, self.first_total, self.n, self.steps = total, total, 0.0, []
        _Bar.made.append(self)

    def update(self, n=1):
        self.n += n
        self.steps.append(n)

    def close(self):
        pass


def test_search_progress_moves_by_seconds_of_audio(world, checkpoint, tmp_path, monkeypatch):
    import soundfile
    import tqdm.auto

    long = tmp_path / "long.wav"
    sf.write(long, long_recording(60.0, seed=3), RATE)
    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    searcher = Searcher(world["gallery"], model=checkpoint, device="cpu", batch_size=4)
    _Bar.made.clear()
    searcher.search([long], k=1, progress=True)
    (bar,) = _Bar.made
    assert bar.first_total == pytest.approx(60.0)
    assert len(bar.steps) >= 10 and max(bar.steps) < 60.0  # by window, not by recording
    assert bar.n == pytest.approx(60.0)
    # Arrays, unreadable files and a file whose header cannot be read cheaply.
    real_info = soundfile.info

    def info(path, *args, **kwargs):
        if str(path).endswith("calls.ogg"):
            raise RuntimeError("no header")
        return real_info(path, *args, **kwargs)

    monkeypatch.setattr(soundfile, "info", info)
    rec = world["rec"]
    sources = [rec / "short.wav", (warble(800, 3.0), RATE), rec / "notes.wav",
               rec / "missing.wav", rec / "calls.ogg"]  # fmt: skip
    _Bar.made.clear()
    results = searcher.search(sources, k=1, progress=True)
    (bar,) = _Bar.made
    assert bar.first_total == pytest.approx(1.5 + 3.0)  # what the headers and arrays say
    heard = sum(r.end_s for r in results if r.window is None and r.error is None)
    assert heard == pytest.approx(1.5 + 3.0 + 5.3, abs=0.01)
    assert bar.n == pytest.approx(heard) and bar.total == pytest.approx(heard)


def test_search_progress_with_real_tqdm(world, checkpoint, capsys):
    searcher = Searcher(world["gallery"], model=checkpoint, device="cpu")
    searcher.search([world["rec"] / "calls.ogg", world["rec"] / "missing.wav"], progress=True)
    err = capsys.readouterr().err
    assert "s of audio" in err and "5/5 s" in err
