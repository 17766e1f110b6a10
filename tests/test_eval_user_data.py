"""``songsight evaluate --audio --photos --species``: a user's own recordings and photos, scored
exactly as SSW60 is.

The user's data is the fake SSW60's files copied into another layout, labelled by species
name, with and without a split column; the same queries and gallery through ``--ssw60`` must
give the same numbers. Runs are kept small (four species, 2 s clips, three methods, a short
bootstrap, no figures) and share one tiny-model session.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from songsight.cli import main
from tests.ssw60_fixture import make_fake_ssw60

N_SPECIES = 4
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _copy_as_user_data(ssw: Path, dest: Path) -> SimpleNamespace:
    """The fake SSW60's files in a layout of the user's own: recordings by common name, photos
    numbered, a renamed species table; manifests with relative paths and species names.

    Rows keep SSW60's order (audio_ml.csv, then NABirds, then iNat), so that the same rows
    selected by split are the same queries and gallery in the same order.
    """
    from songsight.data.ssw60 import SSW60

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = SSW60(ssw)
    names = {s.label: s for s in data.species}
    audio, photos = [], []
    for row in data.audio().itertuples():
        rel = f"recordings/{names[row.label].common_name}/{row.asset_id}.wav"
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(row.path, dest / rel)
        audio.append({"path": rel, "label": names[row.label].common_name, "split": row.split})
    listed = pd.concat(
        [pd.read_csv(ssw / f"images_{s}.csv", dtype=str).assign(source=s) for s in ("nabirds", "inat")]
    )  # fmt: skip
    (dest / "pictures").mkdir(parents=True, exist_ok=True)
    absent = []
    for k, row in enumerate(listed.itertuples()):
        rel = f"pictures/img_{k:03d}.jpg"
        src = ssw / f"images_{row.source}" / f"{row.asset_id}.jpg"
        if src.is_file():
            shutil.copy(src, dest / rel)
        else:  # the one NABirds image SSW60 lists but does not ship stays absent
            absent.append(str(dest / rel))
        photos.append({"path": rel, "label": names[int(row.label)].scientific_name,
                       "split": row.split, "source": row.source})  # fmt: skip
    shutil.copy(ssw / "taxa.csv", dest / "birds.csv")
    audio, photos = pd.DataFrame(audio), pd.DataFrame(photos)
    audio.to_csv(dest / "recordings.csv", index=False)
    photos.to_csv(dest / "photos.csv", index=False)
    # Without split columns: only the test rows, every one used.
    audio.loc[audio["split"] == "test", ["path", "label"]].to_csv(dest / "queries.csv", index=False)
    test_photos = photos.loc[photos["split"] == "test", ["path", "label"]]
    test_photos.to_csv(dest / "gallery.csv", index=False)
    return SimpleNamespace(root=dest, audio=audio, photos=photos, absent=absent)


def _evaluate(world, out: Path, *data: str, extra: tuple[str, ...] = ()) -> dict:
    args = ["evaluate", *data, "--audio-model", world.audio_model, "--image-model",
            world.image_model, "--methods", "cascade_top1,cascade_weighted,map_ridge",
            "--bootstrap", "20", "--no-figures", "--quiet", "--device", "cpu",
            "--out", str(out), *extra]  # fmt: skip
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        assert main(args) == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("user-data")
    ssw = make_fake_ssw60(
        root / "ssw", n_species=N_SPECIES, clips_per_split=2, images_per_split=2, clip_s=2.0,
        sample_rate_hz=16_000,
    )  # fmt: skip
    mine = _copy_as_user_data(ssw, root / "mine")
    return SimpleNamespace(
        root=root, ssw=ssw, mine=mine, audio_model=str(tiny_models[0]),
        image_model=str(tiny_models[1]),
    )  # fmt: skip


@pytest.fixture(scope="module")
def runs(world):
    """The same files three ways: SSW60, manifests with a split column, manifests without."""
    m = world.mine.root
    ssw60 = _evaluate(world, world.root / "ssw60" / "RESULTS.json", "--ssw60", str(world.ssw))
    split = _evaluate(
        world, world.root / "split" / "RESULTS.json", "--audio", str(m / "recordings.csv"),
        "--photos", str(m / "photos.csv"), "--species", str(m / "birds.csv"),
    )  # fmt: skip
    out, emb = world.root / "nosplit" / "RESULTS.json", world.root / "nosplit" / "emb"
    nosplit = _evaluate(
        world, out, "--audio", str(m / "queries.csv"), "--photos", str(m / "gallery.csv"),
        "--species", str(m / "birds.csv"), extra=("--save-embeddings", str(emb)),
    )  # fmt: skip
    return SimpleNamespace(ssw60=ssw60, split=split, nosplit=nosplit, nosplit_out=out, emb=emb)


RETRIEVAL_KEYS = (
    "methods", "audio_to_image", "audio_to_image_ci", "audio_to_image_per_species",
    "image_to_audio", "image_to_audio_ci", "audio_to_image_by_gallery",
    "audio_to_image_by_gallery_ci", "unmatched",
)  # fmt: skip


def test_manifests_with_a_split_score_as_ssw60_does(runs):
    """Same queries, same gallery, same training recordings: every number is the same."""
    a, b = runs.ssw60, runs.split
    assert set(a["retrieval"]["methods"]) == {
        "chance", "cascade_top1", "cascade_weighted", "map_ridge", "oracle"
    }  # fmt: skip
    for key in RETRIEVAL_KEYS:
        assert b["retrieval"][key] == a["retrieval"][key], key
    assert b["discriminability"] == a["discriminability"]
    assert b["alignment"] == a["alignment"]
    assert b["data"]["counts"] == a["data"]["counts"]
    assert a["data"]["counts"]["gallery"] == {"nabirds": 7, "inat": 8, "all": 15}
    assert "skipped_tasks" not in b


def test_manifests_without_a_split_use_every_row_and_skip_the_probes(runs):
    a, b = runs.ssw60, runs.nosplit
    assert b["retrieval"]["audio_to_image"] == a["retrieval"]["audio_to_image"]
    assert b["retrieval"]["image_to_audio"] == a["retrieval"]["image_to_audio"]
    assert b["alignment"]["focal"] == a["alignment"]["focal"]  # zero-shot on the queries
    assert set(b["retrieval"]["audio_to_image_by_gallery"]) == {"all"}  # no source column
    assert "discriminability" not in b and "train" not in b["data"]["counts"]
    assert "no split column" in b["skipped_tasks"]["discriminability"]
    md = runs.nosplit_out.with_suffix(".md").read_text()
    assert "Not run: discriminability" in md and "## Audio discriminability" not in md
    assert "## mAP by gallery" not in md  # one gallery: the main table says it all
    assert "not run: discriminability" in _summary(b)
    from songsight.index.store import load_embeddings

    gallery, g_emb, _ = load_embeddings(runs.emb / "gallery.parquet")
    assert len(gallery) == len(g_emb) == b["data"]["counts"]["gallery"]["all"] == 15
    queries, _, _ = load_embeddings(runs.emb / "queries_oracle.parquet")
    assert len(queries) == b["data"]["counts"]["queries"] == 8


def _summary(res: dict) -> str:
    from songsight.eval.report import format_summary

    return format_summary(res)


def test_results_say_which_files_were_scored(runs, world):
    m = world.mine.root
    data = runs.split["data"]
    assert data["kind"] == "manifests"
    for key, name in (("audio", "recordings.csv"), ("photos", "photos.csv"),
                      ("species_table", "birds.csv")):  # fmt: skip
        assert data[key]["path"] == str(m / name)
        assert data[key]["sha256"] == hashlib.sha256((m / name).read_bytes()).hexdigest()
    assert data["audio"]["rows"] == len(world.mine.audio)
    assert data["species_table"]["species"] == N_SPECIES
    assert data["missing"] == world.mine.absent and len(world.mine.absent) == 1
    prov = runs.split["provenance"]["dataset"]
    assert prov["photos"] == data["photos"] and {"audio_test", "gallery"} <= set(
        prov["manifest_sha256"]
    )
    assert runs.ssw60["data"]["kind"] == "ssw60" and runs.ssw60["data"]["root"] == str(world.ssw)
    md = (world.root / "split" / "RESULTS.md").read_text()
    assert f"`recordings.csv` (sha256 {data['audio']['sha256'][:12]})" in md
    assert "NABirds 7, iNat 8" in md
    assert f"SSW60 at `{world.ssw}`" in (world.root / "ssw60" / "RESULTS.md").read_text()


def test_unmatched_species_bad_and_absent_files_are_counted_not_fatal(world, tmp_path):
    """Queries of a species with no photo and photos of a species with no query leave the
    means (no relevant item) and are counted; an undecodable photo and an absent one are
    skipped and listed."""
    m = world.mine.root
    audio = pd.read_csv(m / "queries.csv")
    photos = pd.read_csv(m / "gallery.csv")
    audio = audio[audio["label"] != "Canada Goose"]  # species 0: photos, no query
    photos = photos[photos["label"] != "Junco hyemalis"]  # species 3: queries, no photo
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    bad = pd.DataFrame({"path": [tmp_path / "broken.jpg", tmp_path / "gone.jpg"],
                        "label": ["Aix sponsa", "Aix sponsa"]})  # fmt: skip
    photos = pd.concat([photos.assign(path=[m / p for p in photos["path"]]), bad])
    photos.to_csv(tmp_path / "photos.csv", index=False)
    audio.assign(path=[m / p for p in audio["path"]]).to_csv(tmp_path / "audio.csv", index=False)
    res = _evaluate(
        world, tmp_path / "RESULTS.json", "--audio", str(tmp_path / "audio.csv"), "--photos",
        str(tmp_path / "photos.csv"), "--species", str(m / "birds.csv"),
        extra=("--tasks", "retrieval", "--bootstrap", "0"),
    )  # fmt: skip
    counts, ret = res["data"]["counts"], res["retrieval"]
    assert ret["unmatched"] == {"query_species_without_photos": [3], "photo_species_without_queries": [0]}  # fmt: skip
    assert counts["queries"] == 6 and counts["queries_without_photos"] == 2
    assert counts["photos_without_queries"] == 4
    assert ret["audio_to_image_ci"]["oracle"]["map"]["n"] == 4  # species 3's queries left out
    assert ret["audio_to_image_per_species"]["oracle"]["3"] is None
    assert [s["path"] for s in res["data"]["skipped"]] == [str(tmp_path / "broken.jpg")]
    assert res["data"]["missing"] == [str(tmp_path / "gone.jpg")]
    md = (tmp_path / "RESULTS.md").read_text()
    assert "2 recording(s) of species with no photo are left out of the audio-to-image means" in md


def _error(capsys, *args: str) -> str:
    assert main(["evaluate", *args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # One error line, after any one-line notes (files absent, tasks skipped) that led to it.
    assert err[-1].startswith("songsight: error: ")
    assert all(line.startswith("songsight: ") for line in err), err
    return err[-1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "say what to evaluate: --ssw60 ROOT, or your own"),
        (("--ssw60", "x", "--audio", "a.csv"), "--ssw60 and --audio are two ways"),
        (("--audio", "a.csv"), "--audio also needs --photos MANIFEST and --species TAXA_CSV"),
        (("--audio", "a.csv", "--photos", "p.csv"), "also need --species TAXA_CSV"),
        (("--audio", "a", "--photos", "p", "--species", "s", "--gallery", "inat"), "SSW60's image"),
    ],
)
def test_data_flags_one_line_errors(capsys, args, message):
    assert message in _error(capsys, *args)


def test_data_problems_are_one_line_errors_before_any_model(world, tmp_path, capsys):
    m = world.mine.root
    mine = ["--photos", str(m / "photos.csv"), "--species", str(m / "birds.csv")]
    val = world.mine.audio.assign(split="val", path=[str(m / p) for p in world.mine.audio["path"]])
    val.to_csv(tmp_path / "val.csv", index=False)
    assert "no rows with split 'test'" in _error(
        capsys, "--audio", str(tmp_path / "val.csv"), *mine
    )
    dodo = pd.DataFrame({"path": ["x.wav"], "label": ["Raphus cucullatus"]})
    dodo.to_csv(tmp_path / "dodo.csv", index=False)
    assert "not in the species table" in _error(
        capsys, "--audio", str(tmp_path / "dodo.csv"), *mine
    )
    nosplit = ["--audio", str(m / "queries.csv"), *mine]
    assert "no task left to run" in _error(capsys, *nosplit, "--tasks", "discriminability")
    assert "several --audio-templates" in _error(capsys, *nosplit, "--audio-templates", "sound", "none")  # fmt: skip
    assert "nope.csv" in _error(capsys, "--audio", str(tmp_path / "nope.csv"), *mine)


def test_help_documents_the_user_data_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--ssw60 ROOT", "--audio MANIFEST", "--photos MANIFEST", "--species TAXA_CSV"):
        assert flag in text
    assert "without one every row is a query and the probes are skipped" in text
