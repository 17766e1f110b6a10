"""A gallery a user keeps for months: photos moved and copied, files deleted, empty folders,
manifests written by hand, and the image model a rerun must keep using."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from songsight.cli import main
from songsight.errors import DataNotFoundError
from songsight.gallery import Gallery, add_to_gallery, build_gallery
from songsight.gallery.check import check_gallery
from songsight.index.store import load_embeddings
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
    from songsight.gallery import read_gallery_manifest

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


def test_prune_of_a_moved_folder_shows_the_photos_and_needs_yes(tiny_image_encoder, tmp_path, capsys):  # fmt: skip
    """A photo folder that moved looks like every photo deleted: --prune once emptied the
    gallery without asking (60 of 60). It now shows them, changes nothing, and needs --yes."""
    photos = [write_noise_photo(tmp_path / "p" / f"{i}.png", 30 + i, (18, 18)) for i in range(3)]
    build_gallery([tmp_path / "p"], tmp_path / "g", image_model=tiny_image_encoder, progress=False)  # fmt: skip
    shutil.move(tmp_path / "p", tmp_path / "moved")
    g = str(tmp_path / "g")
    assert main(["index", "check", "--gallery", g, "--prune"]) == 2
    err = capsys.readouterr().err
    assert "--prune would remove all 3 photos" in err and "--yes" in err and "index add" in err
    assert str(photos[0]) in err
    assert len(Gallery.open(g)) == 3  # nothing changed
    # Found again by content instead, nothing removed:
    assert main(["index", "add", str(tmp_path / "moved"), "--gallery", g, "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    assert check_gallery(g).missing == []
    shutil.rmtree(tmp_path / "moved")
    assert main(["index", "check", "--gallery", g, "--prune", "--yes"]) == 0
    assert "pruned 3" in capsys.readouterr().out and len(Gallery.open(g)) == 0


def test_removing_many_photos_needs_yes_and_a_few_do_not(tiny_image_encoder, tmp_path, capsys):
    from songsight.gallery.format import FEW_PHOTOS

    n = FEW_PHOTOS + 3
    photos = [write_noise_photo(tmp_path / "p" / f"{i}.png", 50 + i, (18, 18)) for i in range(n)]
    build_gallery([tmp_path / "p"], tmp_path / "g", image_model=tiny_image_encoder, progress=False)  # fmt: skip
    g = str(tmp_path / "g")
    many = [str(p) for p in photos[: FEW_PHOTOS + 1]]
    assert main(["index", "remove", *many, "--gallery", g]) == 2
    assert f"index remove would remove {FEW_PHOTOS + 1} of the {n} photos" in capsys.readouterr().err  # fmt: skip
    assert len(Gallery.open(g)) == n
    assert main(["index", "remove", str(photos[0]), "--gallery", g]) == 0  # a few: no question
    assert main(["index", "remove", *many[1:], "--gallery", g, "--yes"]) == 0
    assert len(Gallery.open(g)) == n - FEW_PHOTOS - 1


def test_removed_photos_stay_removed_until_added_by_name(tiny_image_encoder, tmp_path):
    """`index remove` a photo, then `index add` its folder: it once came back, without its
    species. A folder walk now leaves it out (and says so); naming it brings it back."""
    write_species_csv(TAXA, tmp_path / "taxa.csv")
    a = write_noise_photo(tmp_path / "p" / "a.png", 61, (18, 18))
    b = write_noise_photo(tmp_path / "p" / "b.png", 62, (18, 18))
    manifest = _csv(tmp_path / "m.csv", f"path,label\n{a},0\n{b},1\n")
    gallery = Gallery.build(manifest=manifest, species_csv=tmp_path / "taxa.csv", gallery_dir=tmp_path / "g",
                            image_model=tiny_image_encoder, progress=False)  # fmt: skip
    from songsight.gallery.edit import remove_from_gallery

    remove_from_gallery([a], tmp_path / "g", progress=False)
    report = gallery.add([tmp_path / "p"], image_model=tiny_image_encoder, progress=False)
    assert len(gallery) == 1 and report.n_embedded == 0
    assert "removed earlier with `index remove` left out" in report.summary() and str(a) in report.summary()  # fmt: skip
    report = gallery.add(manifest=manifest, species_csv=tmp_path / "taxa.csv", image_model=tiny_image_encoder, progress=False)  # fmt: skip
    assert len(gallery) == 2 and report.n_embedded == 1
    back = [gallery.record(i) for i in range(2) if gallery.record(i)["path"] == str(a)][0]
    assert back["species"] == "Branta canadensis"  # named again, with its species
    assert gallery.add([tmp_path / "p"], image_model=tiny_image_encoder, progress=False).n_embedded == 0  # fmt: skip
    assert len(gallery) == 2  # no longer held back, and not embedded twice


def test_an_opened_gallery_keeps_itself(tiny_image_encoder, tmp_path):
    """`Gallery.remove`, `check` and `move` do what the functions of the folder do and leave
    the object answering for the gallery as it now is."""
    photos = [write_noise_photo(tmp_path / "p" / f"{i}.png", 30 + i, (18, 18)) for i in range(4)]
    gallery = Gallery.build([tmp_path / "p"], tmp_path / "g", tiny_image_encoder, progress=False)
    assert gallery.remove([photos[0]]).n_removed == 1 and len(gallery) == 3
    photos[2].unlink()
    assert [p for _, p in gallery.check().missing] == [str(photos[2])] and len(gallery) == 3
    assert gallery.check(prune=True).pruned and len(gallery) == 2
    assert [gallery.record(i)["path"] for i in range(2)] == [str(photos[1]), str(photos[3])]
    assert gallery.move() == "exact" and gallery.provenance["index"]["kind"] == "exact"
    _, vectors, _ = load_embeddings(tmp_path / "g" / "gallery.parquet")
    np.testing.assert_array_equal(gallery.search(vectors, 1)[1][:, 0], [0, 1])
