"""What a search answers a field user: flags for no usable signal, calibrated probabilities and
--min-score in every format, species lists, and the Python API's single path.

Reuses the tiny world of `tests.test_retrieval` (4 species x 3 photos, tiny real models).
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from songsight.errors import DataNotFoundError, SongsightError
from songsight.gallery import Gallery
from songsight.index.store import load_embeddings
from songsight.retrieval.job import run_search
from songsight.retrieval.results import keep_detections
from songsight.retrieval.rollup import ROLLUP_TEMPERATURE, fit_temperature, rollup_nll
from songsight.retrieval.searcher import Searcher, search
from songsight.retrieval.writers import RAVEN_COLUMNS, format_table, write_raven
from tests import test_retrieval as _base
from tests.helpers import brute_force_one, warble
from tests.test_retrieval import RATE, TAXA

# The tiny world and distilled checkpoint of the retrieval tests, shared as fixtures.
world, checkpoint = _base.world, _base.checkpoint

ALL_FORMATS = ("table", "csv", "json", "parquet")


def _read(fmt: str, path) -> object:
    if fmt == "json":
        return json.loads(path.read_text())
    if fmt == "csv":
        return list(csv.DictReader(path.open()))
    if fmt == "parquet":
        return pq.read_table(path).to_pylist()
    return path.read_text()


@pytest.fixture(scope="module")
def odd(world):
    """A silent file, a 50 ms click, and a 7 s file whose middle is digital silence."""
    rec = world["root"] / "odd"
    rec.mkdir(exist_ok=True)
    sf.write(rec / "silent.wav", np.zeros(3 * RATE, np.float32), RATE)
    sf.write(rec / "click.wav", warble(1500, 0.05), RATE)
    gap = np.concatenate(
        [warble(900, 2.0), np.zeros(3 * RATE, np.float32), warble(900, 2.0, seed=4)]
    )
    sf.write(rec / "gap.wav", gap, RATE)
    return rec


# ---- item 3: no usable signal ------------------------------------------------------------------


def test_silent_and_too_short_are_flagged_everywhere_and_named_nothing(world, checkpoint, odd, tmp_path):  # fmt: skip
    paths = [odd / "silent.wav", odd / "click.wav", world["rec"] / "short.wav"]
    outputs = {}
    for fmt in ALL_FORMATS:
        out = tmp_path / f"r.{fmt}"
        code = run_search(
            paths, world["root"] / "gallery", model=checkpoint, k=3, fmt=fmt, out=out,
            raven=tmp_path / f"raven-{fmt}", device="cpu", progress=False,
        )  # fmt: skip
        assert code == 0  # flagged recordings are answered (with nothing), not failures
        outputs[fmt] = _read(fmt, out)
    for records in (outputs["json"], outputs["parquet"]):
        clips = [r for r in records if r["window"] is None]
        assert [r["flags"] for r in clips] == [["silent"], ["too_short"], []]
        # Every window of the silent file is flagged too, and nothing flagged names anything.
        assert {tuple(r["flags"]) for r in records if r["path"] == str(paths[0])} == {("silent",)}
        for r in records:
            assert bool(r["flags"]) == (not r["hits"]) == (not r["species"])
    rows = {r["path"]: r for r in outputs["csv"] if r["window"] == ""}
    assert rows[str(paths[0])]["flags"] == "silent" and rows[str(paths[0])]["top_species"] == ""
    assert rows[str(paths[1])]["flags"] == "too_short" and rows[str(paths[1])]["image"] == ""
    table = outputs["table"]
    assert "SILENT" in table and "TOO SHORT" in table
    raven = (tmp_path / "raven-json" / "silent.selections.txt").read_text().splitlines()
    assert raven[0].endswith("Flags") and raven[1].split("\t")[-1] == "silent"
    row = dict(zip(raven[0].split("\t"), raven[1].split("\t"), strict=True))
    assert row["Species"] == row["Score"] == ""  # no species, and no score (never nan)
    assert row["Begin Path"] == str(paths[0].absolute())


def test_silent_windows_of_a_long_recording_are_flagged(world, checkpoint, odd):
    searcher = Searcher(world["gallery"], model=checkpoint, device="cpu")
    results = searcher.search(odd / "gap.wav", k=2, hop_s=1.0)
    windows = [r for r in results if r.window is not None]
    silent = [r for r in windows if r.flags == ["silent"]]
    # 7 s at 2 s windows, 1 s hop: the windows wholly inside 2-5 s are silent.
    assert [(r.start_s, r.end_s) for r in silent] == [(2.0, 4.0), (3.0, 5.0)]
    assert all(not r.hits and not r.species for r in silent)
    assert all(r.hits and r.species for r in windows if not r.flags)
    assert results[0].flags == [] and results[0].species


# ---- item 4: calibrated probabilities and --min-score -------------------------------------------


def test_fit_temperature_recovers_the_generating_temperature():
    """Queries whose true species is drawn from the roll-up at T0: the NLL fit finds T0, and
    agrees with scipy's bounded minimiser on the same objective."""
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng(0)
    q, k, n_species, t0 = 600, 40, 8, 0.03
    scores = np.sort(rng.uniform(0.1, 0.4, (q, k)), axis=1)[:, ::-1]
    groups = rng.integers(-1, n_species, (q, k))
    true = np.empty(q, np.int64)
    for i in range(q):
        w = np.exp((scores[i] - scores[i].max()) / t0)
        w /= w.sum()
        mass = np.array([w[groups[i] == c].sum() for c in range(n_species)])
        true[i] = rng.choice(n_species, p=mass / mass.sum())
    fitted = fit_temperature(scores, groups, true)
    assert fitted == pytest.approx(t0, rel=0.25)
    ref = minimize_scalar(
        lambda lt: rollup_nll(scores, groups, true, math.exp(lt)),
        bounds=(math.log(1e-4), 0.0),
        method="bounded",
        options={"xatol": 1e-6},
    )
    assert rollup_nll(scores, groups, true, fitted) <= ref.fun + 1e-6
    assert fitted == pytest.approx(math.exp(ref.x), rel=0.02)


def test_calibration_is_fitted_recorded_and_used(world, checkpoint, tmp_path):
    import shutil

    from songsight.retrieval.calibrate import calibrate
    from songsight.retrieval.calibration import model_key

    gallery_dir = tmp_path / "gallery"
    shutil.copytree(world["root"] / "gallery", gallery_dir)
    rec = tmp_path / "val"
    rec.mkdir()
    rows = []
    for i in range(8):
        sf.write(rec / f"v{i}.wav", warble(500 + 300 * i, 1.5, seed=i), RATE)
        s = TAXA[i % 4]
        # Labels as integers, scientific and common names; one test row to be left out.
        label = [s.label, s.scientific_name, s.common_name.upper(), s.label][i % 4]
        rows.append({"path": f"val/v{i}.wav", "label": label, "split": "val"})
    rows.append({"path": "val/v0.wav", "label": 0, "split": "test"})
    with (tmp_path / "val.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    report = calibrate(gallery_dir, tmp_path / "val.csv", checkpoint, device="cpu", progress=False)
    assert report.n_queries == 8 and report.n_skipped == 0
    assert report.nll <= report.nll_default + 1e-9  # the fit is never worse than the default
    searcher = Searcher(gallery_dir, model=checkpoint, device="cpu")
    recorded = json.loads((gallery_dir / "gallery.json").read_text())["calibration"]
    entry = recorded[model_key(searcher)]
    assert entry["temperature"] == pytest.approx(report.temperature) and entry["n_queries"] == 8
    assert searcher.rollup_temperature == pytest.approx(report.temperature)
    assert searcher.provenance["rollup"]["temperature_source"] == "calibrated"
    # The probabilities follow the recorded temperature (reference: softmax over the photos).
    (result,) = searcher.search(rec / "v1.wav", k=1)
    _, vectors, _ = load_embeddings(gallery_dir / "gallery.parquet")
    from songsight.encoders.distilled import DistilledEncoder

    clip = DistilledEncoder(checkpoint, device="cpu").embed_audio([rec / "v1.wav"])[0]
    s = vectors.astype(np.float64) @ clip
    w = np.exp((s - s.max()) / report.temperature)
    top = max(result.species, key=lambda x: x.score if x.rank == "species" else -1)
    rows_of = [i for i in range(len(s)) if world["gallery"].record(i)["species"] == top.name]
    assert top.score == pytest.approx(w[rows_of].sum() / w.sum(), abs=1e-5)
    # The cascade (another model) is not calibrated by it; an uncalibrated searcher says so.
    plain = Searcher(world["gallery"], model=checkpoint, device="cpu")
    assert plain.rollup_temperature == ROLLUP_TEMPERATURE
    assert plain.provenance["rollup"]["temperature_source"].startswith("default")


def test_min_score_is_honoured_by_every_format_and_raven(world, checkpoint, tmp_path):
    long = world["rec"] / "calls.ogg"  # 5.3 s: the clip and 5 windows
    everything = Searcher(world["gallery"], model=checkpoint, device="cpu")
    results = everything.search([long], k=2)
    tops = sorted(
        max(s.score for s in r.species if s.rank == "species")
        for r in results
        if r.window is not None
    )
    threshold = (tops[1] + tops[2]) / 2  # between the 2nd and 3rd best window
    kept_windows = sum(t >= threshold for t in tops)
    assert 0 < kept_windows < len(tops)
    kept = keep_detections(results, threshold)
    assert [r.window for r in kept][0] is None and len(kept) == 1 + kept_windows
    assert all(s.score >= threshold for r in kept for s in r.species)
    for fmt in ALL_FORMATS:
        out = tmp_path / f"m.{fmt}"
        run_search(
            [long], world["root"] / "gallery", model=checkpoint, k=2, fmt=fmt, out=out,
            min_score=threshold, raven=tmp_path / f"rv-{fmt}", device="cpu", progress=False,
        )  # fmt: skip
        got = _read(fmt, out)
        if fmt in ("json", "parquet"):
            assert len(got) == 1 + kept_windows
            assert all(s["score"] >= threshold for r in got for s in r["species"])
        elif fmt == "csv":
            assert {r["window"] for r in got} - {""} and len(
                {r["window"] for r in got}
            ) == 1 + kept_windows
        else:
            assert got.count("\n   [") == kept_windows
        raven = (tmp_path / f"rv-{fmt}" / "calls.selections.txt").read_text().splitlines()[1:]
        assert len(raven) == kept_windows and all(
            float(x.split("\t")[RAVEN_COLUMNS.index("Score")]) >= threshold for x in raven
        )
    # Without min-score every window is a selection, as before.
    write_raven(results, tmp_path / "all", 8000.0)
    assert len((tmp_path / "all" / "calls.selections.txt").read_text().splitlines()) == 1 + len(
        tops
    )
    with pytest.raises(SongsightError, match="probability"):
        everything.search([long], min_score=1.5)


# ---- issue 10 item 4: species lists ------------------------------------------------------------


def test_species_list_restricts_photos_rollup_and_cascade(world, checkpoint, tiny_models, tmp_path):
    from songsight.baselines.cascade import cascade_queries

    listing = tmp_path / "region.txt"
    listing.write_text(
        "# my patch\ncackling goose\nAix sponsa_Wood Duck\n\nTurdus migratorius\n", encoding="utf-8"
    )
    searcher = Searcher(world["gallery"], model=checkpoint, device="cpu", species_list=listing)
    assert searcher.species.names == ("Aix sponsa", "Branta hutchinsii")
    assert searcher.species.unknown == ("Turdus migratorius",)
    assert "Turdus migratorius" in searcher.species.warning()
    allowed = {1, 2}  # labels of the two species
    results = searcher.search([world["rec"] / "calls.mp3"], k=6)
    _, vectors, _ = load_embeddings(world["root"] / "gallery" / "gallery.parquet")
    rows = [i for i in range(len(vectors)) if world["gallery"].record(i)["label"] in allowed]
    from songsight.encoders.distilled import DistilledEncoder

    clip = (
        DistilledEncoder(checkpoint, device="cpu").embed_clips([world["rec"] / "calls.mp3"])[0].clip
    )
    ref_ids, _ = brute_force_one(vectors[rows], clip, 6)
    assert [h.image_id for h in results[0].hits] == [rows[j] for j in ref_ids]
    for r in results:
        assert {h.label for h in r.hits} <= allowed
        assert {s.name for s in r.species if s.rank == "species"} <= set(searcher.species.names)
        assert sum(s.score for s in r.species if s.rank == "species") == pytest.approx(1.0)
    # Per search, by names; the default searcher answers with every species.
    assert Searcher(world["gallery"], model=checkpoint, device="cpu").species is None
    one = searcher.search([world["rec"] / "short.wav"], k=3, species=["Dark-eyed Junco"])
    assert {h.label for h in one[0].hits} == {3}
    with pytest.raises(DataNotFoundError, match="none of its"):
        searcher.species_filter(["Corvus corax"])
    # The cascade chooses among the listed species only.
    cascade = Searcher(world["gallery"], audio_model=tiny_models[0], device="cpu")
    only = cascade.species_filter(["Wood Duck"])
    (res,) = cascade.search([world["rec"] / "short.wav"], k=3, species=only)
    audio_text, image_text, temperature = cascade._query.cascade
    row = cascade._query.species_names.index("Aix sponsa")
    emb = cascade.encoder.embed_clips([world["rec"] / "short.wav"])[0].clip[None]
    query = cascade_queries(emb, audio_text[[row]], image_text[[row]], temperature, "top1")
    duck_rows = [i for i in range(len(vectors)) if world["gallery"].record(i)["label"] == 2]
    ids, _ = brute_force_one(vectors[duck_rows], query[0], 3)
    assert [h.image_id for h in res.hits] == [duck_rows[j] for j in ids]


# ---- items 5 and 7: the table, outputs, models, the Python API --------------------------------


def test_python_api_takes_one_path_and_gallery_opens_by_name(world, checkpoint):
    one = search(str(world["rec"] / "short.wav"), world["root"] / "gallery", model=checkpoint, k=2, device="cpu")  # fmt: skip
    assert len(one) == 1 and one[0].error is None and one[0].path == str(world["rec"] / "short.wav")
    gallery = Gallery(str(world["root"] / "gallery"))
    assert (
        len(gallery) == len(world["gallery"])
        and gallery.image_model == world["gallery"].image_model
    )
    assert (
        Searcher(gallery, model=checkpoint, device="cpu")
        .search(world["rec"] / "short.wav", k=1)[0]
        .hits
    )


def test_table_shows_every_photo_asked_for(world, checkpoint):
    results = search(
        [world["rec"] / "short.wav"], world["gallery"], model=checkpoint, k=9, device="cpu"
    )
    text = format_table(results)
    assert sum(h.image in text for h in results[0].hits) == 9
    assert "   9. " in text


def test_outputs_are_not_overwritten_and_models_not_ignored(
    world, checkpoint, tiny_models, tmp_path
):
    out = tmp_path / "r.json"
    out.write_text("precious")
    args = dict(model=checkpoint, k=1, fmt="json", out=out, device="cpu", progress=False)
    with pytest.raises(SongsightError, match="--overwrite"):
        run_search([world["rec"] / "short.wav"], world["root"] / "gallery", **args)
    assert out.read_text() == "precious"
    assert (
        run_search([world["rec"] / "short.wav"], world["root"] / "gallery", overwrite=True, **args)
        == 0
    )
    assert json.loads(out.read_text())[0]["hits"]
    (tmp_path / "rv").mkdir()
    (tmp_path / "rv" / "short.selections.txt").write_text("mine")
    with pytest.raises(SongsightError, match="short.selections.txt"):
        run_search([world["rec"] / "short.wav"], world["root"] / "gallery", model=checkpoint,
                   raven=tmp_path / "rv", device="cpu", progress=False)  # fmt: skip
    for extra in ({"audio_model": tiny_models[0]}, {"image_model": tiny_models[1]}):
        with pytest.raises(SongsightError, match="cascade"):
            Searcher(world["gallery"], model=checkpoint, device="cpu", **extra)
