"""Milvus backend: index types and the species filter against exact search, galleries searched
through Milvus answering as the exact gallery does, remove / move, and a SIGKILLed add.

The backend-agnostic contract (ordering, ties, padding, save/load, bad inputs) is tested for
Milvus with every other backend in test_search.py.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import songsight
from songsight.cli import main
from songsight.errors import ProvenanceMismatchError, SongsightError
from songsight.gallery import Gallery, add_to_gallery, build_gallery
from songsight.index.search import ExactIndex
from songsight.index.store import load_embeddings
from tests.helpers import clustered, random_photos, recall, warble, write_csv
from tests.test_gallery import TAXA

if not all(importlib.util.find_spec(m) for m in ("pymilvus", "milvus_lite")):
    pytest.skip("the 'milvus' extra: pip install 'songsight[milvus]'", allow_module_level=True)

from songsight.gallery.milvus import milvus_config, open_milvus_index  # noqa: E402
from songsight.index.milvus import MilvusIndex  # noqa: E402
from songsight.index.milvus.options import (  # noqa: E402
    MilvusSettings,
    choose_index_type,
    species_filter,
)


@pytest.fixture
def milvus_file(tmp_path):
    """A fresh embedded Milvus file; every index opened on it is closed afterwards."""
    opened: list[MilvusIndex] = []

    def make(dim, **kw):
        opened.append(MilvusIndex(dim, tmp_path / "m.db", **kw))
        return opened[-1]

    yield make
    for index in opened:
        index.close()


@pytest.mark.parametrize("index_type", ["FLAT", "IVF_FLAT"])
def test_every_index_type_agrees_with_exact(milvus_file, index_type):
    gallery = clustered(3000, 32, 40, seed=20)
    queries = clustered(100, 32, 40, seed=21)
    index = milvus_file(32, settings={"index_type": index_type})
    index.add(gallery, np.arange(3000))
    assert index.index_type == index_type and len(index) == 3000
    exact = ExactIndex(32)
    exact.add(gallery, np.arange(3000))
    want_scores, want = exact.search(queries, 10)
    scores, found = index.search(queries, 10)
    assert recall(found, want) >= 0.99
    # Candidates are re-scored exactly: the scores of shared hits are exact search's.
    same = found == want
    np.testing.assert_allclose(scores[same], want_scores[same], atol=1e-5)


def test_approximate_scores_are_rescored_from_the_stored_vectors(milvus_file, monkeypatch):
    """Index types that may score from quantised codes get their candidates' vectors back and
    re-scored here; FLAT, which scores exactly, is only re-ordered (same answers either way)."""
    from songsight.index.milvus import search as milvus_search

    gallery = clustered(400, 16, 4, seed=33).astype(np.float16).astype(np.float32)
    queries = clustered(4, 16, 4, seed=34)
    index = milvus_file(16, storage_dtype="float16")
    index.add(gallery, np.arange(400))
    ordered = index.search(queries, 5)
    monkeypatch.setattr(milvus_search, "APPROXIMATE_SCORES", frozenset({"FLAT"}))
    rescored = index.search(queries, 5)
    exact = ExactIndex(16)
    exact.add(gallery, np.arange(400))
    want_scores, want = exact.search(queries, 5)
    for scores, found in (ordered, rescored):
        np.testing.assert_array_equal(found, want)
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_index_type_follows_the_size(milvus_file):
    index = milvus_file(16, settings={"flat_threshold": 500, "ivf_nprobe": 64})
    data = clustered(800, 16, 8, seed=22)
    index.add(data[:400], np.arange(400))
    assert index.index_type == "FLAT"
    index.add(data[400:], np.arange(400, 800))
    assert index.index_type == "IVF_FLAT"  # rebuilt once the collection passed the threshold
    _, top1 = index.search(data[::50], 1)
    np.testing.assert_array_equal(top1[:, 0], np.arange(0, 800, 50))
    s = MilvusSettings()
    assert choose_index_type(s.flat_threshold, s, embedded=True) == "FLAT"
    assert choose_index_type(s.flat_threshold + 1, s, embedded=True) == "IVF_FLAT"
    assert choose_index_type(s.flat_threshold + 1, s, embedded=False) == "HNSW"
    # Milvus Lite builds no graph: only a server moves to HNSW, then DiskANN.
    assert choose_index_type(s.diskann_threshold + 1, s, embedded=True) == "IVF_FLAT"
    assert choose_index_type(s.diskann_threshold + 1, s, embedded=False) == "DISKANN"
    assert choose_index_type(10, MilvusSettings(index_type="hnsw"), embedded=False) == "HNSW"
    with pytest.raises(SongsightError, match="embedded Milvus file builds only"):
        choose_index_type(10, MilvusSettings(index_type="HNSW"), embedded=True)


@pytest.mark.parametrize("server", [True, False], ids=["server", "embedded"])
def test_ivf_lists_follow_the_size_on_a_server_and_stay_in_the_embedded_file(
    milvus_file, monkeypatch, server
):
    """On a server an IVF index trained on a small collection is retrained once the collection
    calls for twice as many lists (4 * sqrt(N)). The embedded file searches Milvus's interim
    index whatever nlist says, so retraining there would only reload every vector: it keeps
    its lists. Either way exact search's top-10 is found."""
    if server:  # the server's retraining logic, run against the embedded engine
        monkeypatch.setattr(MilvusIndex, "embedded", property(lambda self: False))
    data = clustered(2400, 24, 30, seed=26)
    queries = clustered(60, 24, 30, seed=27)
    index = milvus_file(24, settings={"index_type": "IVF_FLAT"})
    index.add(data[:400], np.arange(400))
    # Created empty with the smallest list count (16); a server retrains as it grows.
    assert index.index_params() == {"nlist": int(4 * np.sqrt(400)) if server else 16}
    index.add(data[400:], np.arange(400, 2400))
    built = {"nlist": int(4 * np.sqrt(2400)) if server else 16}
    assert index.index_params() == built
    exact = ExactIndex(24)
    exact.add(data, np.arange(2400))
    assert recall(index.search(queries, 10)[1], exact.search(queries, 10)[1]) >= 0.99
    # A reopened index knows the lists it was built with.
    index.close()
    reopened = milvus_file(24, settings={"index_type": "IVF_FLAT"})
    assert reopened.index_params() == built


def test_ivf_knobs_on_the_embedded_file_say_they_do_nothing(milvus_file, caplog):
    with caplog.at_level("WARNING", logger="songsight.milvus"):
        milvus_file(8, settings={"ivf_nprobe": 64}).close()
    assert "no effect on the embedded Milvus Lite file" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="songsight.milvus"):
        milvus_file(8)
    assert caplog.text == ""


def test_species_filter_is_exact_search_over_the_allowed_rows(milvus_file):
    rng = np.random.default_rng(23)
    gallery = clustered(600, 24, 6, seed=24)
    names = ["Aix sponsa", 'Branta "canadensis"', "Junco hyemalis", "Corvus\\corax"]
    species = [names[i] for i in rng.integers(0, len(names), 600)]
    index = milvus_file(24, scalar_fields={"species": "str"})
    index.add(gallery, np.arange(600), fields={"species": species})
    queries = clustered(20, 24, 6, seed=25)
    for allowed in (names[1:3], names[3:], ["Nothing here"], []):
        rows = np.flatnonzero(np.isin(species, allowed))
        exact = ExactIndex(24)
        exact.add(gallery[rows], rows)
        want_scores, want = exact.search(queries, 10)
        scores, found = index.search(queries, 10, allowed_species=allowed)
        np.testing.assert_array_equal(found, want)
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    # Quotes and backslashes in names are escaped, not read as expression syntax.
    assert species_filter(['B "c"', "a\\b"]) == 'species in ["B \\"c\\"", "a\\\\b"]'


def test_allowed_ids_are_exact_search_over_the_subset(milvus_file, monkeypatch):
    from songsight.index.milvus import search as milvus_search

    gallery = clustered(2000, 24, 20, seed=35)
    ids = np.arange(2000) * 2 + 1
    queries = clustered(15, 24, 20, seed=36)
    index = milvus_file(24)
    index.add(gallery, ids)
    rng = np.random.default_rng(37)
    # Many allowed ids are searched in chunks of keys whose answers are merged.
    monkeypatch.setattr(milvus_search, "_KEYS_PER_FILTER", 150)
    for share in (0.5, 0.02):
        keep = np.sort(rng.choice(2000, int(share * 2000), replace=False))
        allowed = np.concatenate([ids[keep], [10**6, 4]])  # ids the index lacks are ignored
        exact = ExactIndex(24)
        exact.add(gallery[keep], ids[keep])
        want_scores, want = exact.search(queries, 10)
        scores, found = index.search(queries, 10, allowed_ids=allowed)
        np.testing.assert_array_equal(found, want)
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    scores, found = index.search(queries[:2], 5, allowed_ids=[])
    assert (found == -1).all() and np.isneginf(scores).all()
    with pytest.raises(SongsightError, match="allowed_ids"):
        index.search(queries, 5, allowed_ids=[[1, 2]])


def test_keys_make_re_adding_a_no_op(milvus_file):
    index = milvus_file(8, scalar_fields={"species": "str", "label": "int"})
    data = clustered(5, 8, 1, seed=26)
    keys = [f"{i:064x}" for i in range(5)]
    index.add(data, keys=keys, fields={"species": ["A"] * 5, "label": [None, 1, 2, 3, 4]})
    index.add(data[:3], keys=keys[:3], fields={"species": ["B"] * 3})
    assert len(index) == 5 and index.fetch(keys[:1], ["species", "label"]) == {keys[0]: {"species": "A", "label": -1}}  # fmt: skip
    index.add(data[:1], keys=keys[:1], fields={"species": ["B"]}, replace=True)
    assert len(index) == 5 and index.fetch(keys[:1], ["species"])[keys[0]]["species"] == "B"
    assert index.remove([keys[0], "f" * 64]) == 1 and len(index) == 4
    with pytest.raises(SongsightError, match="unique"):
        index.add(data[:2], keys=["x", "x"])
    with pytest.raises(SongsightError, match="unknown fields"):
        index.add(data[:1], keys=["y"], fields={"genus": ["Aix"]})


def test_bad_settings_and_missing_extra(milvus_file, monkeypatch, tmp_path):
    with pytest.raises(SongsightError, match="index type must be one of"):
        MilvusSettings(index_type="SCANN")
    with pytest.raises(SongsightError, match="unknown Milvus settings"):
        MilvusSettings.from_dict({"ef": 3})
    with pytest.raises(SongsightError, match="collection names"):
        milvus_config(collection="my-photos")
    with pytest.raises(SongsightError, match="server"):
        milvus_config(uri=str(tmp_path / "x.db"))
    index = milvus_file(8)
    index.add(clustered(3, 8, 1, seed=27), np.arange(3))
    with pytest.raises(SongsightError, match="holds 8-d vectors"):
        milvus_file(16)
    monkeypatch.setitem(sys.modules, "pymilvus", None)
    with pytest.raises(SongsightError, match=r"songsight\[milvus\]"):
        MilvusIndex(8, tmp_path / "other.db")


# --- galleries ------------------------------------------------------------------------------


@pytest.fixture
def two_galleries(tiny_image_encoder, tmp_path):
    """The same 30 photos with species, built as an exact gallery and a Milvus one."""
    from songsight.taxonomy import write_species_csv

    photos = random_photos(tmp_path / "photos", 30, 1)
    taxa = tmp_path / "taxa.csv"
    write_species_csv(TAXA, taxa)
    manifest = write_csv(
        tmp_path / "photos.csv", [{"path": str(p), "label": i % 3} for i, p in enumerate(photos)]
    )
    options = dict(manifest=manifest, species_csv=taxa, progress=False)
    exact = Gallery.build([], tmp_path / "exact", tiny_image_encoder, **options)
    milvus = Gallery.build([], tmp_path / "milvus", tiny_image_encoder, milvus=milvus_config(), **options)  # fmt: skip
    yield exact, milvus
    milvus.index.close()


def _same_answers(a: Gallery, b: Gallery, queries: np.ndarray, k: int = 8) -> None:
    """Photo by photo: the same paths, in the same order, with the same scores."""
    sa, ia = a.search(queries, k)
    sb, ib = b.search(queries, k)
    path = {-1: None} | {i: a.record(i)["path"] for i in range(len(a))}
    other = {-1: None} | {i: b.record(i)["path"] for i in range(len(b))}
    assert [[path[i] for i in row] for row in ia] == [[other[i] for i in row] for row in ib]
    np.testing.assert_allclose(sa, sb, atol=1e-5)


def test_milvus_gallery_answers_as_the_exact_one(two_galleries, tiny_image_encoder, tmp_path):
    exact, gallery = two_galleries
    assert (
        isinstance(gallery.index, MilvusIndex) and gallery.provenance["index"]["kind"] == "milvus"
    )
    assert (gallery.directory / "milvus.db").exists()
    queries = clustered(12, 48, 3, seed=28)
    _same_answers(exact, gallery, queries)
    # The collection holds the photos' metadata and the model's provenance as fields.
    row = gallery.record(4)
    held = gallery.index.fetch([row["sha256"]], ["path", "species", "genus", "family", "label", "model_revision"])  # fmt: skip
    assert held[row["sha256"]] == {
        "path": row["path"], "species": row["species"], "genus": row["genus"],
        "family": row["family"], "label": row["label"],
        "model_revision": gallery.image_model["revision"],
    }  # fmt: skip
    # The species filter, pushed down to Milvus, is exact search over that species' photos.
    allowed = ["Aix sponsa", "Junco hyemalis"]
    rows = [i for i in range(len(exact)) if exact.record(i)["species"] in allowed]
    _, vectors, _ = load_embeddings(exact.directory / "gallery.parquet")
    ref = ExactIndex(48)
    ref.add(vectors[rows], np.asarray(rows))
    np.testing.assert_array_equal(
        gallery.index.search(queries, 5, allowed_species=allowed)[1], ref.search(queries, 5)[1]
    )
    # A species list arrives as photo ids: every photo of those species is pushed down as a
    # species expression, any other set of ids as keys; both answer as exact search does.
    filters: list[str] = []
    search = gallery.index._client.search
    gallery.index._client.search = lambda *a, **kw: filters.append(kw["filter"]) or search(*a, **kw)
    np.testing.assert_array_equal(
        gallery.index.search(queries, 5, allowed_ids=np.asarray(rows))[1], ref.search(queries, 5)[1]
    )
    assert filters == ['species in ["Aix sponsa", "Junco hyemalis"]']
    some = np.asarray(rows[:3] + [10_000])  # parts of two species, and an id the gallery lacks
    ref = ExactIndex(48)
    ref.add(vectors[some[:-1]], some[:-1])
    np.testing.assert_array_equal(
        gallery.index.search(queries, 5, allowed_ids=some)[1], ref.search(queries, 5)[1]
    )
    assert filters[-1].startswith("key in [") and filters[-1].count(",") == len(some) - 2
    gallery.index._client.search = search
    # Adding embeds and writes only new photos; adding them again changes nothing.
    more = random_photos(tmp_path / "more", 6, 2)
    gallery.index.close()
    report = gallery.add(more, image_model=tiny_image_encoder, progress=False)
    assert (report.n_embedded, len(gallery), len(gallery.index)) == (6, 36, 36)
    exact.add(more, image_model=tiny_image_encoder, progress=False)
    _same_answers(exact, gallery, queries)
    gallery.index.close()
    report = gallery.add(more, image_model=tiny_image_encoder, progress=False)
    assert (report.n_embedded, len(gallery.index)) == (0, 36)


def test_sync_inserts_new_photos_and_upserts_only_changed_metadata(
    tiny_image_encoder, tmp_path, monkeypatch
):
    """New photos are added as rows the sync vouches absent (inserted, on a server too: Milvus
    Lite's upsert slows as a collection grows, a server's sets off compactions); a photo whose
    metadata drifted is upserted back in line."""
    import json

    from songsight.gallery import milvus as gallery_milvus
    from songsight.gallery.format import META_FILE
    from songsight.taxonomy import write_species_csv

    calls: list[tuple[int, bool, bool]] = []
    original = MilvusIndex.add

    def recording(self, vectors, ids=None, *, keys=None, fields=None, replace=False, absent=False):
        calls.append((len(vectors), replace, absent))
        return original(
            self, vectors, ids, keys=keys, fields=fields, replace=replace, absent=absent
        )

    monkeypatch.setattr(MilvusIndex, "add", recording)
    photos = random_photos(tmp_path / "photos", 12, 2)
    taxa = tmp_path / "taxa.csv"
    write_species_csv(TAXA, taxa)
    manifest = write_csv(
        tmp_path / "photos.csv", [{"path": str(p), "label": i % 3} for i, p in enumerate(photos)]
    )
    gallery = Gallery.build([], tmp_path / "g", tiny_image_encoder, manifest=manifest,
                            species_csv=taxa, milvus=milvus_config(), progress=False)  # fmt: skip
    assert calls and all(absent and not replace for _, replace, absent in calls)
    assert sum(n for n, _, _ in calls) == 12
    row = gallery.record(4)
    want = gallery.index.fetch([row["sha256"]], ["species"])[row["sha256"]]["species"]
    # The collection's copy of one photo drifts (a species renamed by hand)...
    names = list(gallery_milvus.SCALAR_FIELDS)
    held = gallery.index.fetch([row["sha256"]], ["embedding", *names])[row["sha256"]]
    drifted = {name: [held[name]] for name in names} | {"species": ["Wrongus wrongus"]}
    original(gallery.index, np.asarray([held["embedding"]], np.float32), keys=[row["sha256"]],
             fields=drifted, replace=True)  # fmt: skip
    assert gallery.index.fetch([row["sha256"]], ["species"])[row["sha256"]]["species"] != want
    gallery.index.close()
    # ...and a full sync puts it back with one upsert, leaving the other 11 rows alone.
    calls.clear()
    meta = json.loads((tmp_path / "g" / META_FILE).read_text())
    gallery_milvus.sync_milvus(tmp_path / "g", meta, full=True)
    assert calls == [(1, True, False)]
    reopened = Gallery.open(tmp_path / "g")
    assert reopened.index.fetch([row["sha256"]], ["species"])[row["sha256"]]["species"] == want
    assert len(reopened.index) == 12
    reopened.index.close()


def test_remove_and_move(two_galleries, capsys):
    exact, gallery = two_galleries
    gallery.index.close()
    first, second = gallery.record(0), gallery.record(7)
    for g in (exact, gallery):
        code = main(["index", "remove", first["path"], second["sha256"], "/no/such.png",
                     "--gallery", str(g.directory), "--quiet"])  # fmt: skip
        assert code == 1
        assert "2 removed; 28 photos" in capsys.readouterr().out
    exact, gallery = Gallery.open(exact.directory), Gallery.open(gallery.directory)
    assert len(gallery.index) == 28 and not gallery.index.existing_keys([first["sha256"]])
    queries = clustered(10, 48, 3, seed=29)
    _same_answers(exact, gallery, queries)
    gallery.index.close()
    # Move the exact gallery into Milvus (a second collection) and the Milvus one back.
    assert main(["index", "move", "--gallery", str(exact.directory), "--backend", "milvus",
                 "--collection", "moved", "--quiet"]) == 0  # fmt: skip
    assert main(["index", "move", "--gallery", str(gallery.directory), "--quiet"]) == 0
    moved, back = Gallery.open(exact.directory), Gallery.open(gallery.directory)
    assert isinstance(moved.index, MilvusIndex) and moved.index.collection == "moved"
    assert isinstance(back.index, ExactIndex)
    _same_answers(back, moved, queries)
    moved.index.close()
    with pytest.raises(SystemExit):
        main(["index", "move", "--gallery", str(exact.directory), "--backend", "cloud"])
    assert main(["index", "move", "--gallery", str(exact.directory), "--milvus-uri", "x"]) == 2


def test_collection_of_another_model_is_refused(two_galleries, tmp_path):
    import shutil

    from songsight.sim.tiny_models import build_tiny_open_clip

    _, gallery = two_galleries
    gallery.index.close()
    other = build_tiny_open_clip(tmp_path / "other-image", seed=1)
    # A gallery of another model pointed at a collection holding the first model's photos.
    target = tmp_path / "other-gallery"
    target.mkdir()
    shutil.copy2(gallery.directory / "milvus.db", target / "milvus.db")
    with pytest.raises(ProvenanceMismatchError, match="not comparable"):
        build_gallery(random_photos(tmp_path / "x", 2, 3), target, image_model=other,
                      milvus=milvus_config(), progress=False)  # fmt: skip
    with pytest.raises(SongsightError, match="index move"):
        Gallery.build([gallery.record(0)["path"]], gallery.directory, gallery.image_model["model_id"],
                      milvus=milvus_config(collection="elsewhere"), progress=False)  # fmt: skip


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(songsight.__file__).parents[1]), "HF_HUB_OFFLINE": "1"}  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "songsight.cli", *args], env=env, **kw)


def test_sigkill_during_add_then_rerun_loses_nothing(tiny_models, tmp_path):
    """A real `songsight index add` killed while it writes to Milvus, then run again."""
    image_model = str(tiny_models[1])
    out = tmp_path / "g"
    build_gallery(random_photos(tmp_path / "a", 5, 4), out, image_model=image_model,
                  milvus=milvus_config(), progress=False)  # fmt: skip
    # Enough photos that writing them to Milvus outlasts a few progress-bar updates (~1 s).
    random_photos(tmp_path / "b", 4000, 5)
    add = ("index", "add", str(tmp_path / "b"), "--gallery", str(out))
    # While another process holds the embedded file, add stops at once with one clear line.
    held = Gallery.open(out)
    busy = _cli(*add, "--quiet", stderr=subprocess.PIPE)
    assert busy.wait() == 2 and b"another process holds it" in busy.stderr.read()
    held.index.close()
    proc = _cli(*add, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Kill as soon as its progress bar says some, not all, photos reached Milvus.
    progress = re.compile(rb"writing to Milvus:.*?\| *(\d+)/(\d+) ")
    seen = b""
    while chunk := os.read(proc.stderr.fileno(), 4096):
        seen += chunk
        done = [(int(a), int(b)) for a, b in progress.findall(seen)]
        if any(0 < a < b for a, b in done):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, seen.decode()[-2000:]
    # What the kill left: every photo stored, only some written to Milvus.
    g = Gallery.open(out)
    stored = set(g.metadata["sha256"])
    held_after_kill = len(g.index)
    g.index.close()
    assert len(stored) == 4005 and 5 < held_after_kill < 4005
    assert _cli(*add, "--quiet", stderr=subprocess.DEVNULL).wait() == 0
    g = Gallery.open(out)
    keys = [r["key"] for batch in g.index.iter_rows() for r in batch]
    assert len(keys) == len(set(keys)) == 4005 and set(keys) == stored  # no duplicate, no gap
    queries = clustered(10, 48, 3, seed=30)
    ref = ExactIndex(48)
    ref.add(load_embeddings(out / "gallery.parquet")[1], np.arange(4005))
    np.testing.assert_array_equal(g.search(queries, 10)[1], ref.search(queries, 10)[1])
    g.index.close()


def test_open_milvus_index_maps_keys_to_rows(two_galleries):
    exact, gallery = two_galleries
    gallery.index.close()
    index = open_milvus_index(gallery.directory, gallery.provenance, gallery.metadata[:10])
    try:
        _, ids = index.search(clustered(3, 48, 1, seed=31), 30)
        # Rows the reader does not know (past its 10) are left out, never mis-numbered.
        assert set(ids[ids >= 0].tolist()) <= set(range(10)) and (ids == -1).any()
    finally:
        index.close()


def test_songsight_search_prints_the_same_through_either_backend(
    two_galleries, tiny_models, tiny_image_encoder, tmp_path, capsys
):
    import soundfile as sf

    from tests.test_retrieval import RATE, _checkpoint

    exact, gallery = two_galleries
    gallery.index.close()
    checkpoint = _checkpoint(tmp_path / "distilled", tiny_models[0], tiny_image_encoder.provenance())  # fmt: skip
    rec = tmp_path / "rec"
    rec.mkdir()
    sf.write(rec / "short.wav", warble(700, 1.5), RATE)
    sf.write(rec / "long.wav", warble(1200, 5.3, seed=1), RATE)
    printed = []
    for g in (exact, gallery):
        args = ["search", str(rec), "--gallery", str(g.directory), "--model", str(checkpoint),
                "--k", "5", "--format", "csv", "--device", "cpu", "--quiet"]  # fmt: skip
        assert main(args) == 0
        printed.append(capsys.readouterr().out)
    # Same photos and species, row by row; scores agree to float32 rounding (the exact
    # index sums in torch, the re-rank in numpy).
    a, b = (pd.read_csv(io.StringIO(text)) for text in printed)
    assert list(a.columns) == list(b.columns) and len(a) == len(b) >= 3
    numbers = [c for c in a.columns if pd.api.types.is_float_dtype(a[c])]
    pd.testing.assert_frame_equal(a.drop(columns=numbers), b.drop(columns=numbers))
    np.testing.assert_allclose(a[numbers].to_numpy(float), b[numbers].to_numpy(float), atol=2e-6)
    assert a.astype(str).apply(lambda col: col.str.contains(r"\.png")).to_numpy().sum() >= 5
    assert a.astype(str).apply(lambda col: col.str.contains("Aix sponsa")).to_numpy().any()


@pytest.mark.slow
def test_ray_workers_write_straight_into_the_collection(local_ray, tiny_models, tiny_image_encoder, tmp_path, monkeypatch):  # fmt: skip
    """`--engine ray --backend milvus`: the workers write the photos (the driver's sync finds
    nothing left to write), and the gallery answers as one built on this machine does."""
    from songsight.gallery.milvus import sync as gallery_milvus
    from songsight.taxonomy import write_species_csv

    photos = random_photos(tmp_path / "photos", 12, 6)
    taxa = tmp_path / "taxa.csv"
    write_species_csv(TAXA, taxa)
    manifest = write_csv(
        tmp_path / "photos.csv", [{"path": str(p), "label": i % 3} for i, p in enumerate(photos)]
    )
    driver_writes: list[int] = []
    original = gallery_milvus._write_rows
    monkeypatch.setattr(gallery_milvus, "_write_rows", lambda *a, **kw: driver_writes.append(len(a[4])) or original(*a, **kw))  # fmt: skip
    gallery = Gallery.build(
        [], tmp_path / "ray", str(tiny_models[1]), manifest=manifest, species_csv=taxa,
        engine="ray", workers=2, batch_size=4, device="cpu", milvus=milvus_config(),
        progress=False,
    )  # fmt: skip
    assert driver_writes == [] and len(gallery.index) == 12
    row = gallery.record(3)
    assert gallery.index.fetch([row["sha256"]], ["species", "path"])[row["sha256"]] == {
        "species": row["species"], "path": row["path"],
    }  # fmt: skip
    exact = Gallery.build([], tmp_path / "exact", tiny_image_encoder, manifest=manifest,
                          species_csv=taxa, progress=False)  # fmt: skip
    queries = clustered(8, 48, 3, seed=32)
    # Row order may differ between the engines: compare photo by photo.
    _same_answers(exact, gallery, queries)
    gallery.index.close()
    # Resumed by hash: one new photo is embedded and written, by a worker again.
    new = random_photos(tmp_path / "photos", 13, 6)[-1:]
    report = add_to_gallery(new, tmp_path / "ray", engine="ray", workers=1, device="cpu", progress=False)  # fmt: skip
    assert (report.n_embedded, report.n_images, driver_writes) == (1, 13, [])
    assert len(Gallery.open(tmp_path / "ray").index) == 13


def test_ray_sink_builds_its_writer_where_it_is_unpickled(tiny_image_encoder, tmp_path):
    """What a Ray worker gets (the sink, pickled as ``ray.put`` does) names its own writer: the
    worker builds it and writes photos with the manifest's names straight into the collection,
    and the Ray job needs not know the gallery."""
    import json
    import pickle

    from songsight.gallery import read_gallery_manifest
    from songsight.gallery.format import META_FILE
    from songsight.gallery.milvus import ray_sink
    from songsight.inputs.files import sha256_file
    from songsight.taxonomy import write_species_csv

    photos = random_photos(tmp_path / "photos", 5, 8)
    taxa = tmp_path / "taxa.csv"
    write_species_csv(TAXA, taxa)
    gallery = Gallery.build(photos[:3], tmp_path / "g", tiny_image_encoder, milvus=milvus_config(),
                            progress=False)  # fmt: skip
    gallery.index.close()
    meta = json.loads((tmp_path / "g" / META_FILE).read_text())
    manifest = write_csv(tmp_path / "more.csv", [{"path": str(p), "label": 1} for p in photos[3:]])
    sink, holder = ray_sink(tmp_path / "g", meta, read_gallery_manifest(manifest, taxa))
    try:
        worker_sink = pickle.loads(pickle.dumps(sink))
        writer = worker_sink["writer"](worker_sink)
        hashes = [sha256_file(p) for p in photos[3:]]
        writer.write([str(p) for p in photos[3:]], hashes, tiny_image_encoder.embed_images(photos[3:]))  # fmt: skip
        writer.index.close()
        held = holder.fetch(hashes, ["path", "species", "label"])
        assert {h: (r["path"], r["species"], r["label"]) for h, r in held.items()} == {
            h: (str(p), "Aix sponsa", 1) for h, p in zip(hashes, photos[3:], strict=True)
        }
    finally:
        holder.close()


def _offer_ports(monkeypatch, ports: list[int]) -> None:
    """The launcher's sockets get ``ports`` from the system, in that order, one a bind."""
    from types import SimpleNamespace

    from tests.milvus_server import _LAUNCHER

    offered = iter(ports)

    class OfferedSocket:
        def bind(self, address):
            self.port = next(offered)

        def getsockname(self):
            return ("127.0.0.1", self.port)

        def close(self):
            pass

    monkeypatch.setattr(_LAUNCHER, "socket", SimpleNamespace(socket=OfferedSocket))


def test_a_new_servers_ports_are_distinct_even_when_the_system_offers_one_twice(tmp_path, monkeypatch):  # fmt: skip
    """scripts/milvus_server.py picks every port of a new server: a port the system offers
    twice (or one already given) is not used twice; a CI start once gave the proxy and the
    query coordinator one port, and the proxy never answered."""
    from tests.milvus_server import _LAUNCHER

    _offer_ports(monkeypatch, [47009, 47009, 34251, 47009, 50000, 50001])
    names = ["proxy_port", "query_coord_port", "root_coord_port", "data_coord_port"]
    ports = _LAUNCHER._ports(tmp_path, names, {"root_coord_port": 34251})
    assert ports == {"proxy_port": 47009, "query_coord_port": 50000, "root_coord_port": 34251, "data_coord_port": 50001}  # fmt: skip
    assert (tmp_path / "ports.json").read_text().count("47009") == 1  # what a restart reads


def test_a_restart_keeps_its_ports_unless_one_is_now_given_to_another_name(tmp_path, monkeypatch):  # fmt: skip
    """A kept port (ports.json of the last start) that a given port now claims is replaced by
    a new free one, whichever order the names come in."""
    from tests.milvus_server import _LAUNCHER

    (tmp_path / "ports.json").write_text('{"query_coord_port": 40000, "proxy_port": 40001}')
    _offer_ports(monkeypatch, [40000, 50000])
    monkeypatch.setattr(_LAUNCHER, "_bindable", lambda port: True)
    ports = _LAUNCHER._ports(tmp_path, ["query_coord_port", "proxy_port"], {"proxy_port": 40000})
    assert ports == {"query_coord_port": 50000, "proxy_port": 40000}
