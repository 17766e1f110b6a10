"""A gallery a user keeps for months: photos moved and copied, files deleted, empty folders,
manifests written by hand, and the image model a rerun must keep using."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from songsight.cli import main
from songsight.errors import DataNotFoundError
from songsight.index.gallery_check import check_gallery
from songsight.index.store import load_embeddings
from songsight.retrieval.gallery import Gallery, add_to_gallery, build_gallery
from songsight.taxonomy import Species, write_species_csv
from tests.helpers import write_noise_photo

TAXA = [
    Species(0, "Branta canadensis", "Canada Goose", order="Anseriformes", family="Anatidae", code="cangoo"),
    Species(1, "Aix sponsa", "Wood Duck", order="Anseriformes", family="Anatidae", code="wooduc"),
]  # fmt: skip


def _csv(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_moved_photo_takes_its_new_path_and_keeps_its_id(tiny_image_encoder, tmp_path):
    a, b = (
        write_noise_photo(tmp_path / "p" / "a.JPG", 1, (18, 18)),
        write_noise_photo(tmp_path / "p" / "b.png", 2, (18, 18)),
    )
    gallery = Gallery.build([tmp_path / "p"], tmp_path / "g", tiny_image_encoder, progress=False)
    ids = {gallery.record(i)["path"]: i for i in range(2)}
    _, before, _ = load_embeddings(tmp_path / "g" / "gallery.parquet")
    moved = tmp_path / "p" / "renamed" / "a_moved.JPG"
    moved.parent.mkdir()
    a.rename(moved)
    report = gallery.add([tmp_path / "p"], image_model=tiny_image_encoder, progress=False)
    assert (report.n_embedded, report.n_moved, len(gallery)) == (0, 1, 2)
    assert f"{a} -> {moved}" in report.summary() and "moved" in report.summary()
    assert gallery.record(ids[str(a)])["path"] == str(moved)  # same id, new path
    assert gallery.image_path(ids[str(b)]) == b
    _, after, _ = load_embeddings(tmp_path / "g" / "gallery.parquet")
    np.testing.assert_array_equal(after, before)  # not embedded again
    assert check_gallery(tmp_path / "g").missing == []


def test_index_check_lists_deleted_photos_and_prunes_them(tiny_image_encoder, tmp_path, capsys):
    photos = [write_noise_photo(tmp_path / "p" / f"{i}.png", 10 + i, (18, 18)) for i in range(4)]
    build_gallery([tmp_path / "p"], tmp_path / "g", image_model=tiny_image_encoder, ann=True,
                  hnsw_options={"threads": 1}, progress=False)  # fmt: skip
    photos[1].unlink()
    assert main(["index", "check", "--gallery", str(tmp_path / "g")]) == 1
    out = capsys.readouterr().out
    assert f"1: {photos[1]}" in out and "--prune" in out and "index add" in out
    assert main(["index", "check", "--gallery", str(tmp_path / "g"), "--prune"]) == 0
    assert "pruned 1" in capsys.readouterr().out
    gallery = Gallery.open(tmp_path / "g")
    assert [gallery.record(i)["path"] for i in range(3)] == [str(p) for p in photos if p.exists()]
    assert gallery.provenance["count"] == 3 and len(gallery.index) == 3
    # The rebuilt index answers with the remaining rows' own vectors.
    _, vectors, _ = load_embeddings(tmp_path / "g" / "gallery.parquet")
    np.testing.assert_array_equal(gallery.search(vectors, 1)[1][:, 0], [0, 1, 2])
    assert check_gallery(tmp_path / "g").exit_code == 0


def test_copies_are_held_once_and_keep_every_name(tiny_image_encoder, tmp_path):
    original = write_noise_photo(tmp_path / "p" / "duck.png", 3, (18, 18))
    copy = tmp_path / "p" / "the copy of duck.png"  # met after the original (sorted)
    shutil.copy(original, copy)
    other = write_noise_photo(tmp_path / "p" / "goose.png", 4, (18, 18))
    gallery = Gallery.build([tmp_path / "p"], tmp_path / "g", tiny_image_encoder, progress=False)
    assert len(gallery) == 2 and gallery.report.n_copies == 1  # one build: one row per photo
    assert "cop" in gallery.report.summary()
    # An add whose manifest names the copy: the name lands on the photo's one row.
    taxa = write_species_csv(TAXA, tmp_path / "taxa.csv") or tmp_path / "taxa.csv"
    manifest = _csv(tmp_path / "m.csv", f"path,label\n{copy.name},Wood Duck\ngoose.png,0\n")
    shutil.move(manifest, tmp_path / "p" / "m.csv")
    report = gallery.add(manifest=tmp_path / "p" / "m.csv", species_csv=taxa,
                         image_model=tiny_image_encoder, progress=False)  # fmt: skip
    assert report.n_embedded == 0 and len(gallery) == 2
    by_path = {gallery.record(i)["path"]: gallery.record(i) for i in range(2)}
    assert (
        by_path[str(original)]["species"] == "Aix sponsa" and by_path[str(original)]["label"] == 1
    )
    assert by_path[str(other)]["species"] == "Branta canadensis"
    assert by_path[str(original)]["species_code"] == "wooduc"
    # A copy named otherwise never renames the photo; the contradiction is reported.
    _csv(tmp_path / "p" / "m2.csv", f"path,species\n{copy.name},Anas platyrhynchos\n")
    report = gallery.add(manifest=tmp_path / "p" / "m2.csv", image_model=tiny_image_encoder, progress=False)  # fmt: skip
    assert {gallery.record(i)["species"] for i in range(2)} == {"Aix sponsa", "Branta canadensis"}
    assert "Anas platyrhynchos" in report.summary() and "kept 'Aix sponsa'" in report.summary()


def test_empty_folders_and_empty_galleries_say_so(tiny_image_encoder, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    with pytest.raises(DataNotFoundError, match="no photos found"):
        build_gallery([tmp_path / "empty"], tmp_path / "g", image_model=tiny_image_encoder, progress=False)  # fmt: skip
    assert not (tmp_path / "g").exists()
    # A manifest whose every file is gone: a gallery with nothing, which says so, and a
    # search of it that says why.
    _csv(tmp_path / "m.csv", "path,label\ngone.png,0\n")
    report = build_gallery([], tmp_path / "g", image_model=tiny_image_encoder, manifest=tmp_path / "m.csv", progress=False)  # fmt: skip
    assert report.exit_code == 1 and "holds no photos" in report.summary()
    from songsight.errors import SongsightError
    from songsight.retrieval.searcher import Searcher

    with pytest.raises(SongsightError, match="holds no photos"):
        Searcher(tmp_path / "g", device="cpu")


def test_handwritten_manifest_columns_are_read_or_refused(tiny_image_encoder, tmp_path):
    write_noise_photo(tmp_path / "photos" / "a.png", 5, (18, 18))
    write_noise_photo(tmp_path / "photos" / "b.png", 6, (18, 18))
    (tmp_path / "lists").mkdir()
    manifest = _csv(
        tmp_path / "lists" / "mine.csv",
        "File,Scientific_Name,common name,Family,Photographer\n"
        "../photos/a.png,Aix sponsa,Wood Duck,Anatidae,me\n"
        "sub/../../photos/b.png,,Canada Goose,,me\n",
    )
    report = build_gallery([], tmp_path / "g", image_model=tiny_image_encoder, manifest=manifest, progress=False)  # fmt: skip
    assert "Photographer" in report.summary()  # read, not used: said so
    gallery = Gallery.open(tmp_path / "g")
    rows = {gallery.record(i)["path"]: gallery.record(i) for i in range(2)}
    a, b = str(tmp_path / "photos" / "a.png"), str(tmp_path / "photos" / "b.png")
    assert set(rows) == {a, b}  # relative to the manifest's folder, normalised
    assert (rows[a]["species"], rows[a]["common_name"], rows[a]["family"]) == ("Aix sponsa", "Wood Duck", "Anatidae")  # fmt: skip
    assert rows[b]["common_name"] == "Canada Goose" and rows[b]["species"] is None
    # A near-miss is an error that names the column; no readable column at all too.
    typo = _csv(tmp_path / "lists" / "typo.csv", "path,specis\n../photos/a.png,Aix sponsa\n")
    with pytest.raises(DataNotFoundError, match="'specis'.*did you mean 'species'"):
        add_to_gallery([], tmp_path / "g", manifest=typo, image_model=tiny_image_encoder, progress=False)  # fmt: skip
    unknown = _csv(tmp_path / "lists" / "bird.csv", "path,bird\n../photos/a.png,Aix sponsa\n")
    with pytest.raises(DataNotFoundError, match="unknown column.*bird"):
        add_to_gallery([], tmp_path / "g", manifest=unknown, image_model=tiny_image_encoder, progress=False)  # fmt: skip
    # Names in the label column, without a species table: binomials are scientific names.
    named = _csv(tmp_path / "lists" / "named.csv", "path,label\n../photos/a.png,Anas platyrhynchos\n../photos/b.png,Mallard\n")  # fmt: skip
    from songsight.retrieval.gallery import read_gallery_manifest

    df = read_gallery_manifest(named)
    assert (
        df["species"].tolist()[0] == "Anas platyrhynchos"
        and df["common_name"].tolist()[1] == "Mallard"
    )
    assert df["label"].isna().all()


def test_build_on_an_existing_gallery_uses_its_own_image_model(tiny_models, tmp_path, capsys):
    write_noise_photo(tmp_path / "p" / "a.png", 7, (18, 18))
    g = str(tmp_path / "g")
    assert main(["index", "build", str(tmp_path / "p"), "--gallery", g, "--image-model", str(tiny_models[1]), "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    write_noise_photo(tmp_path / "p" / "b.png", 8, (18, 18))
    # No --image-model: the gallery's own (a tiny local model), not BioCLIP-2 from the Hub.
    assert main(["index", "build", str(tmp_path / "p"), "--gallery", g, "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    assert len(Gallery.open(g)) == 2
    assert "1 embedded, 1 already in the gallery" in capsys.readouterr().out
