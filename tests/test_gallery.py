"""Photo galleries: real photo kinds indexed, metadata joined, resume, add, refusals, ANN == exact."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from songsight.encoders.bioclip import BioCLIPEncoder
from songsight.errors import DataNotFoundError, ProvenanceMismatchError, SongsightError
from songsight.gallery import (
    METADATA_COLUMNS,
    Gallery,
    add_to_gallery,
    build_gallery,
    read_gallery_manifest,
)
from songsight.index.search import ExactIndex, HNSWIndex
from songsight.index.store import load_embeddings
from songsight.provenance import package_version
from songsight.taxonomy import Species, write_species_csv
from tests.helpers import (
    brute_force,
    interrupt_after,
    noise_pixels,
    random_photos,
    unit_rows,
    write_csv,
)

TAXA = [
    Species(0, "Branta canadensis", "Canada Goose", order="Anseriformes", family="Anatidae"),
    Species(1, "Aix sponsa", "Wood Duck", order="Anseriformes", family="Anatidae"),
    Species(2, "Junco hyemalis", "Dark-eyed Junco", order="Passeriformes", family="Passerellidae"),
]


@pytest.fixture
def photos(tmp_path):
    """Every kind of photo a user has, one broken file and a stray text file."""
    root = tmp_path / "photos"
    (root / "nested").mkdir(parents=True)
    Image.fromarray(noise_pixels(1, (40, 30))).save(root / "rgb.jpg", quality=95)
    rgba = np.zeros((30, 30, 4), np.uint8)
    rgba[..., 1] = 180
    rgba[10:, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(root / "nested" / "alpha.png")
    Image.new("L", (25, 35), 120).save(root / "gray.png")
    Image.new("CMYK", (48, 32), (0, 200, 200, 10)).save(root / "nested" / "cmyk.jpg")
    stored = Image.fromarray(noise_pixels(2, (48, 24)))
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    stored.save(root / "rotated.jpg", exif=exif, quality=95)
    (root / "nested" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "notes.txt").write_text("not a photo")
    good = [
        root / "rgb.jpg",
        root / "nested" / "alpha.png",
        root / "gray.png",
        root / "nested" / "cmyk.jpg",
        root / "rotated.jpg",
    ]
    return root, good, root / "nested" / "broken.jpg"


def test_build_indexes_every_photo_kind(photos, tiny_models, tiny_image_encoder, tmp_path):
    root, good, broken = photos
    out = tmp_path / "gallery"
    report = build_gallery([root], out, image_model=tiny_models[1], progress=False)
    assert (report.n_files, report.n_embedded, report.n_failed, report.exit_code) == (6, 5, 1, 1)
    assert "errors in" in report.summary()

    gallery = Gallery.open(out)
    assert len(gallery) == 5 and gallery.dim == 48
    names = pq.read_schema(out / "gallery.parquet").names
    assert names == ["path", "sha256", *METADATA_COLUMNS, "embedding"]
    meta, vectors, prov = load_embeddings(out / "gallery.parquet")
    assert sorted(meta["path"]) == sorted(str(p.absolute()) for p in good)
    # Vectors are the encoder's own, photo by photo.
    ref = tiny_image_encoder.embed_images([Path(p) for p in meta["path"]])
    np.testing.assert_allclose(vectors, ref, atol=1e-5)
    # EXIF orientation was applied: same vector as a copy rotated by hand without the tag.
    rotated = Image.open(root / "rotated.jpg").transpose(Image.Transpose.ROTATE_270)
    rotated.save(tmp_path / "upright.png")
    row = list(meta["path"]).index(str((root / "rotated.jpg").absolute()))
    upright = tiny_image_encoder.embed_images([tmp_path / "upright.png"])[0]
    assert float(vectors[row] @ upright) > 0.999

    with (out / "errors.csv").open(newline="") as fh:
        errors = list(csv.DictReader(fh))
    assert [e["path"] for e in errors] == [str(broken.absolute())]
    assert "corrupt image" in errors[0]["error"]
    assert not (out / "gallery.errors.csv").exists()

    info = json.loads((out / "gallery.json").read_text())
    assert info["image_model"]["model_id"] == str(Path(tiny_models[1]).resolve())
    assert info["image_model"]["revision"].startswith("local-")
    assert info["image_model"]["preprocessing"]["choice"] == "model"
    assert info["songsight_version"] == package_version() and info["count"] == 5
    assert info["index"] == {"requested": "auto", "kind": "exact", "hnsw_options": {}}
    assert info["vector_dtype"] == "float32" and gallery.provenance == info
    assert isinstance(gallery.index, ExactIndex) and not (out / "index").exists()

    rec = gallery.record(row)
    assert rec["id"] == row and rec["path"] == str((root / "rotated.jpg").absolute())
    assert rec["label"] is None and rec["species"] is None and len(rec["sha256"]) == 64
    assert gallery.image_path(row) == (root / "rotated.jpg").absolute()
    assert not gallery.has_species
    with pytest.raises(DataNotFoundError):
        gallery.record(5)

    # Search is the exact top-k over the stored vectors.
    queries = unit_rows(4, 48, 0)
    scores, ids = gallery.search(queries, k=3)
    ref_s, ref_i = brute_force(vectors, queries, 3)
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    scores, ids = gallery.search(queries, k=8)  # more than the gallery holds: padded
    assert (ids[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()


def test_manifest_metadata_and_species_table(photos, tiny_image_encoder, tmp_path):
    root, good, broken = photos
    taxa = tmp_path / "taxa.csv"
    write_species_csv(TAXA, taxa)
    missing = root / "gone.jpg"
    manifest = write_csv(
        tmp_path / "photos.csv",
        [
            {"path": "photos/rgb.jpg", "label": 0, "common_name": ""},
            {"path": "photos/gray.png", "label": 2, "common_name": "Junco"},
            {"path": str(broken), "label": 1, "common_name": ""},
            {"path": str(missing), "label": 1, "common_name": ""},
        ],
    )
    report = build_gallery(
        [root / "rotated.jpg"],
        tmp_path / "g",
        image_model=tiny_image_encoder,
        manifest=manifest,
        species_csv=taxa,
        progress=False,
    )
    assert (report.n_files, report.n_embedded, report.n_failed) == (5, 3, 2)
    gallery = Gallery.open(tmp_path / "g")
    by_path = {gallery.record(i)["path"]: gallery.record(i) for i in range(len(gallery))}
    goose = by_path[str((root / "rgb.jpg").absolute())]
    assert goose["label"] == 0 and goose["species"] == "Branta canadensis"
    assert goose["common_name"] == "Canada Goose" and goose["genus"] == "Branta"
    assert goose["family"] == "Anatidae" and goose["order"] == "Anseriformes"
    junco = by_path[str((root / "gray.png").absolute())]
    assert junco["common_name"] == "Junco"  # the manifest's own cell wins over the table
    assert by_path[str((root / "rotated.jpg").absolute())]["species"] is None
    assert gallery.has_species and [s.label for s in gallery.species_list()] == [0, 2]
    errors = {r["path"]: r["error"] for r in csv.DictReader((tmp_path / "g" / "errors.csv").open())}
    assert errors[str(missing)] == "file not found" and "corrupt" in errors[str(broken)]

    # A manifest with names and no labels; SSW60-style family descriptions are trimmed.
    df = read_gallery_manifest(
        write_csv(
            tmp_path / "named.csv",
            [
                {
                    "path": "a.jpg",
                    "scientific_name": "Corvus corax",
                    "family": "Corvidae (Crows, Jays, and Magpies)",
                }
            ],
        )
    )
    row = df.iloc[0]
    assert row["path"] == str((tmp_path / "a.jpg").absolute()) and row["label"] is pd_na()
    assert (row["species"], row["genus"], row["family"]) == ("Corvus corax", "Corvus", "Corvidae")
    # With a species table a name finds its label and ranks; a species the table does not
    # hold keeps the manifest's own names.
    both = read_gallery_manifest(
        write_csv(tmp_path / "named2.csv", [{"path": "b.jpg", "scientific_name": "Aix sponsa"}, {"path": "a.jpg", "scientific_name": "Corvus corax"}]),
        species_csv=taxa,
    )  # fmt: skip
    assert both["label"].tolist()[0] == 1 and both["common_name"].tolist()[0] == "Wood Duck"
    assert both["common_name"].isna().tolist() == [False, True]
    assert (
        both["species"].tolist() == ["Aix sponsa", "Corvus corax"]
        and both["label"].isna().tolist()[1]
    )
    with pytest.raises(DataNotFoundError, match=r"\[7\]"):
        read_gallery_manifest(
            write_csv(tmp_path / "bad.csv", [{"path": "a.jpg", "label": 7}]), species_csv=taxa
        )


def pd_na():
    import pandas as pd

    return pd.NA


def test_interrupted_build_resumes_and_loses_nothing(
    photos, tiny_image_encoder, tmp_path, monkeypatch
):
    root, good, _ = photos
    taxa = tmp_path / "taxa.csv"
    write_species_csv(TAXA, taxa)
    manifest = write_csv(
        tmp_path / "photos.csv",
        [{"path": str(p), "label": i % 3} for i, p in enumerate(sorted(good))],
    )
    original = BioCLIPEncoder.iter_images
    calls: list[int] = []

    def counting(self, sources):
        calls.append(len(sources))
        yield from original(self, sources)

    out = tmp_path / "g"
    interrupt_after(monkeypatch, BioCLIPEncoder, "iter_images", 2)
    with pytest.raises(KeyboardInterrupt):
        build_gallery([], out, image_model=tiny_image_encoder, manifest=manifest, species_csv=taxa, progress=False)  # fmt: skip
    with pytest.raises(DataNotFoundError, match="interrupted"):
        Gallery.open(out)
    # The rerun needs neither the manifest nor the taxa: what was parked is joined on.
    monkeypatch.setattr(BioCLIPEncoder, "iter_images", counting)
    report = add_to_gallery(sorted(good), out, image_model=tiny_image_encoder, progress=False)
    assert calls == [3] and (report.n_embedded, report.n_skipped) == (3, 2)
    gallery = Gallery.open(out)
    assert len(gallery) == 5 and not (out / "pending-metadata.parquet").exists()
    labels = {Path(r["path"]).name: r["label"] for r in map(gallery.record, range(5))}
    assert labels == {p.name: i % 3 for i, p in enumerate(sorted(good))}
    assert all(gallery.record(i)["species"] for i in range(5))


def test_add_embeds_only_new_photos(photos, tiny_image_encoder, tmp_path, monkeypatch):
    root, good, _ = photos
    out = tmp_path / "g"
    gallery = Gallery.build(good[:3], out, tiny_image_encoder, progress=False)
    before = [gallery.record(i) for i in range(3)]
    original = BioCLIPEncoder.iter_images
    seen: list[list] = []

    def spy(self, sources):
        seen.append([Path(s).name for s in sources])
        yield from original(self, sources)

    monkeypatch.setattr(BioCLIPEncoder, "iter_images", spy)
    report = gallery.add([root], image_model=tiny_image_encoder, progress=False)
    assert sorted(seen[0]) == ["broken.jpg", "cmyk.jpg", "rotated.jpg"] and len(seen) == 1
    assert (report.n_embedded, report.n_skipped, report.n_failed) == (2, 3, 1)
    assert len(gallery) == 5 and [gallery.record(i) for i in range(3)] == before  # ids stable
    # Adding the same files again embeds nothing; the earlier error is still listed.
    seen.clear()
    report = gallery.add(good, image_model=tiny_image_encoder, progress=False)
    assert seen in ([], [[]]) and report.n_embedded == 0 and len(gallery) == 5
    assert (out / "errors.csv").read_text().count("broken.jpg") == 1
    meta, vectors, _ = load_embeddings(out / "gallery.parquet")
    np.testing.assert_allclose(
        vectors, tiny_image_encoder.embed_images([Path(p) for p in meta["path"]]), atol=1e-5
    )


def test_other_image_model_is_refused(photos, tiny_models, tmp_path):
    from songsight.sim.tiny_models import build_tiny_open_clip

    root, good, _ = photos
    other = build_tiny_open_clip(tmp_path / "other-image", seed=1)
    out = tmp_path / "g"
    build_gallery(good[:2], out, image_model=tiny_models[1], progress=False)
    with pytest.raises(ProvenanceMismatchError, match="revision"):
        add_to_gallery(good[2:], out, image_model=other, progress=False)
    with pytest.raises(ProvenanceMismatchError):
        build_gallery(good[2:], out, image_model=other, progress=False)
    with pytest.raises(ProvenanceMismatchError, match="float16"):
        build_gallery(good[2:], out, image_model=tiny_models[1], vector_dtype="float16", progress=False)  # fmt: skip
    assert len(Gallery.open(out)) == 2  # nothing was added
    # The gallery's own model, named again, is accepted; overwrite starts a new gallery.
    assert (
        add_to_gallery(good[2:3], out, image_model=tiny_models[1], progress=False).n_embedded == 1
    )
    with pytest.raises(SongsightError, match="--overwrite would remove all 3 photos.*--yes"):
        Gallery.build(good[:1], out, other, overwrite=True, progress=False)
    assert len(Gallery.open(out)) == 3  # shown, not removed
    gallery = Gallery.build(good[:1], out, other, overwrite=True, yes=True, progress=False)
    assert len(gallery) == 1 and gallery.image_model["model_id"] == str(other.resolve())
    with pytest.raises(DataNotFoundError, match="no gallery"):
        add_to_gallery(good, tmp_path / "nowhere", progress=False)
    with pytest.raises(DataNotFoundError, match="no gallery"):
        Gallery.open(tmp_path / "nowhere")


@pytest.mark.parametrize("vector_dtype", ["float32", "float16"])
def test_ann_gallery_equals_exact_search(tiny_image_encoder, tmp_path, vector_dtype):
    first = random_photos(tmp_path / "a", 40, 1)
    out = tmp_path / "g"
    options = {"min_candidates": 12, "rerank_factor": 2, "threads": 1}
    gallery = Gallery.build(
        first, out, tiny_image_encoder, ann=True, hnsw_options=options,
        vector_dtype=vector_dtype, progress=False,
    )  # fmt: skip
    assert isinstance(gallery.index, HNSWIndex) and (out / "index" / "graph.usearch").is_file()
    assert gallery.provenance["index"]["kind"] == "hnsw"
    assert pq.read_schema(out / "gallery.parquet").field("embedding").type.value_type == vector_dtype  # fmt: skip

    def check(g: Gallery) -> None:
        _, vectors, _ = load_embeddings(out / "gallery.parquet")  # float16 rows, as stored
        queries = unit_rows(10, 48, 3)
        scores, ids = g.search(queries, k=5)  # 12 graph candidates of 40+, re-ranked exactly
        ref_s, ref_i = brute_force(vectors, queries, 5)
        np.testing.assert_array_equal(ids, ref_i)
        np.testing.assert_allclose(scores, ref_s, atol=1e-5)

    check(gallery)
    reopened = Gallery.open(out)
    assert isinstance(reopened.index, HNSWIndex) and len(reopened.index) == 40
    check(reopened)
    # Adding extends the saved graph; the ids of the first rows do not move.
    reopened.add(random_photos(tmp_path / "b", 8, 2), image_model=tiny_image_encoder, progress=False)  # fmt: skip
    assert len(reopened) == 48 and len(reopened.index) == 48
    assert reopened.index.metadata["gallery_rows"] == 48
    check(reopened)
    # A stale graph (e.g. an add killed before the index update) is rebuilt, never trusted.
    stale = HNSWIndex.load(out / "index")
    stale.metadata = {**stale.metadata, "sha256_digest": "0" * 16}
    stale.save(out / "index")
    check(Gallery.open(out))
