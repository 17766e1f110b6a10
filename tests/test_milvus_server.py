"""The gallery on a real Milvus server (PyPI's ``milvus`` package on loopback, see
tests/milvus_server.py): songsight's commands end to end, the server's own indexes and their
knobs, `index move` between the embedded file and the server, a provenance refusal, a kill -9
of the server mid-ingest, and the client and server versions songsight supports.

Every answer is checked against exact search: same photos, same order, same scores, so each
query's recall@10 is 1.0. ``SONGSIGHT_MILVUS_URI=http://host:19530`` runs these tests against
a server of your own instead of starting one (the kill drill and version tests then skip).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

import songsight
from songsight.cli import main
from songsight.errors import ProvenanceMismatchError, SongsightError
from songsight.gallery import Gallery, build_gallery
from songsight.index.search import ExactIndex
from songsight.index.store import load_embeddings
from tests.helpers import clustered, random_photos, warble, write_csv
from tests.test_gallery import TAXA

if not all(importlib.util.find_spec(m) for m in ("pymilvus", "milvus_lite")):
    pytest.skip("the 'milvus' extra: pip install 'songsight[milvus]'", allow_module_level=True)

from songsight.gallery.milvus import milvus_config  # noqa: E402
from songsight.index.milvus import MilvusIndex  # noqa: E402
from songsight.index.milvus.connect import MIN_SERVER_VERSION, connect  # noqa: E402
from tests.milvus_server import (  # noqa: E402
    OTHER_VENVS,
    REPO,
    MilvusServer,
    installed_version,
    milvus_server,  # noqa: F401  (the session's server, a fixture)
    server_venv,
    skip_reason,
)
from tests.test_milvus import _same_answers  # noqa: E402

# A server takes ~10-30 s to start and each test builds galleries through it.
pytestmark = pytest.mark.slow

DIM = 48  # the tiny image model's


def _collection() -> str:
    """A collection of the test's own on the shared server."""
    return f"t_{uuid.uuid4().hex[:12]}"


def _index(cmd: str, *args: str) -> int:
    return main(["index", cmd, *args, "--quiet"])


def _photos_and_manifest(folder: Path, n: int, seed: int) -> tuple[Path, Path, Path]:
    from songsight.taxonomy import write_species_csv

    photos = random_photos(folder / "photos", n, seed)
    taxa = folder / "taxa.csv"
    write_species_csv(TAXA, taxa)
    manifest = write_csv(
        folder / "photos.csv", [{"path": str(p), "label": i % 3} for i, p in enumerate(photos)]
    )
    return folder / "photos", manifest, taxa


def _exact_reference(gallery_dir: Path) -> ExactIndex:
    """Exact search over the gallery's stored vectors, by store row (the gallery's ids)."""
    _, vectors, _ = load_embeddings(gallery_dir / "gallery.parquet")
    ref = ExactIndex(DIM)
    ref.add(vectors, np.arange(len(vectors)))
    return ref


def _assert_exact(gallery: Gallery, queries: np.ndarray, k: int = 10) -> None:
    """Every query's top-k is exact search's (recall@k 1.0 for each), scores too."""
    want_scores, want = _exact_reference(gallery.directory).search(queries, k)
    scores, found = gallery.search(queries, k)
    per_query = [len(set(a) & set(b)) / k for a, b in zip(found, want, strict=True)]
    assert min(per_query) == 1.0, per_query
    np.testing.assert_array_equal(found, want)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


@pytest.fixture(scope="module")
def built(milvus_server, tiny_models, tmp_path_factory):  # noqa: F811
    """The same 30 photos built by `songsight index build` twice: songsight's own index and
    the Milvus server."""
    root = tmp_path_factory.mktemp("server-galleries")
    photos, manifest, taxa = _photos_and_manifest(root, 30, 1)
    common = [str(photos), "--manifest", str(manifest), "--species", str(taxa),
              "--image-model", str(tiny_models[1]), "--device", "cpu"]  # fmt: skip
    assert _index("build", *common, "--gallery", str(root / "exact")) == 0
    collection = _collection()
    assert _index("build", *common, "--gallery", str(root / "server"), "--backend", "milvus",
                  "--milvus-uri", milvus_server.uri, "--collection", collection) == 0  # fmt: skip
    return root / "exact", root / "server", collection


def test_build_on_the_server_answers_as_the_exact_gallery(built, milvus_server):  # noqa: F811
    exact_dir, server_dir, collection = built
    meta = json.loads((server_dir / "gallery.json").read_text())
    assert meta["index"]["milvus"] | {"settings": {}} == {
        **meta["index"]["milvus"], "uri": milvus_server.uri, "collection": collection,
    }  # fmt: skip
    assert not (server_dir / "milvus.db").exists()  # nothing embedded: the rows are the server's
    exact, gallery = Gallery.open(exact_dir), Gallery.open(server_dir)
    try:
        assert isinstance(gallery.index, MilvusIndex) and gallery.index.uri == milvus_server.uri
        keys = [r["key"] for b in gallery.index.iter_rows() for r in b]
        assert sorted(keys) == sorted(gallery.metadata["sha256"]) and len(set(keys)) == 30
        queries = clustered(24, DIM, 3, seed=40)
        _same_answers(exact, gallery, queries, k=10)
        _assert_exact(gallery, queries)
        # The species filter runs inside the server: one expression, exact over those photos.
        sent: list[dict] = []
        search = gallery.index.client.search
        gallery.index.client.search = lambda *a, **kw: sent.append(kw) or search(*a, **kw)
        allowed = ["Aix sponsa", "Junco hyemalis"]
        rows = [i for i in range(30) if gallery.record(i)["species"] in allowed]
        _, vectors, _ = load_embeddings(server_dir / "gallery.parquet")
        ref = ExactIndex(DIM)
        ref.add(vectors[rows], np.asarray(rows))
        for found in (
            gallery.index.search(queries, 5, allowed_species=allowed)[1],
            gallery.index.search(queries, 5, allowed_ids=np.asarray(rows))[1],
        ):
            np.testing.assert_array_equal(found, ref.search(queries, 5)[1])
        assert [kw["filter"] for kw in sent] == ['species in ["Aix sponsa", "Junco hyemalis"]'] * 2
    finally:
        gallery.index.close()


def test_search_and_serve_read_the_server_from_the_manifest(built, tiny_models, tiny_image_encoder, tmp_path, capsys):  # fmt: skip
    import io

    import pandas as pd
    import soundfile as sf
    from fastapi.testclient import TestClient

    from songsight.retrieval.searcher import Searcher
    from songsight.serve.app import create_app
    from tests.test_retrieval import RATE, _checkpoint

    exact_dir, server_dir, _ = built
    checkpoint = _checkpoint(tmp_path / "distilled", tiny_models[0], tiny_image_encoder.provenance())  # fmt: skip
    rec = tmp_path / "rec"
    rec.mkdir()
    sf.write(rec / "short.wav", warble(700, 1.5), RATE)
    sf.write(rec / "long.wav", warble(1200, 5.3, seed=1), RATE)
    printed = []
    for g in (exact_dir, server_dir):
        assert main(["search", str(rec), "--gallery", str(g), "--model", str(checkpoint), "--k", "5",
                     "--format", "csv", "--device", "cpu", "--quiet"]) == 0  # fmt: skip
        printed.append(capsys.readouterr().out)
    a, b = (pd.read_csv(io.StringIO(text)) for text in printed)
    numbers = [c for c in a.columns if pd.api.types.is_float_dtype(a[c])]
    pd.testing.assert_frame_equal(a.drop(columns=numbers), b.drop(columns=numbers))
    np.testing.assert_allclose(a[numbers].to_numpy(float), b[numbers].to_numpy(float), atol=2e-6)
    # `songsight serve`'s app, on each gallery: the same photos for the same recording.
    answers = []
    for g in (exact_dir, server_dir):
        searcher = Searcher(g, model=checkpoint, device="cpu")
        uploads = tmp_path / f"up-{g.name}"
        uploads.mkdir()
        client = TestClient(create_app(searcher, temp_dir=uploads))
        wav = (rec / "long.wav").read_bytes()
        reply = client.post("/api/search", files={"audio": ("long.wav", wav)}, data={"k": "5"})
        assert reply.status_code == 200, reply.text
        answers.append(_photo_paths(reply.json()))
        if hasattr(searcher.gallery.index, "close"):
            searcher.gallery.index.close()
    assert answers[0] == answers[1] and len(answers[0]) >= 5


def _photo_paths(reply) -> list[str]:
    """Every photo (``image``, its file name) in a search reply, in order."""
    out: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "image" and isinstance(value, str):
                    out.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(reply)
    return out


def test_add_and_remove_keep_the_server_in_step(built, milvus_server, tiny_models, tmp_path, capfd):  # noqa: F811  # fmt: skip
    exact_dir, server_dir, _ = built
    more = random_photos(tmp_path / "more", 6, 2)
    capfd.readouterr()
    # A build into a new collection, adds and removes: none of them scans the collection, so
    # pymilvus's "failed to get mvccTs" (a 2.3 server gives its query iterator no timestamp)
    # is never reached; the scans that remain keep it quiet (`songsight.index.milvus.connect.quiet_iterator`).
    assert _index("build", *map(str, more), "--gallery", str(tmp_path / "new"), "--image-model",
                  str(tiny_models[1]), "--device", "cpu", "--backend", "milvus",
                  "--milvus-uri", milvus_server.uri, "--collection", _collection()) == 0  # fmt: skip
    for g in (exact_dir, server_dir):
        assert _index("add", *map(str, more), "--gallery", str(g), "--device", "cpu") == 0
    # Adding them again writes nothing.
    assert _index("add", *map(str, more), "--gallery", str(server_dir), "--device", "cpu") == 0
    exact, gallery = Gallery.open(exact_dir), Gallery.open(server_dir)
    gone = [gallery.record(3), gallery.record(20)]
    assert sum(len(b) for b in gallery.index.iter_rows()) == 36  # a scan, quiet
    gallery.index.close()
    for g in (exact_dir, server_dir):
        assert main(["index", "remove", gone[0]["path"], gone[1]["sha256"], "--gallery", str(g),
                     "--quiet", "--yes"]) == 0  # fmt: skip
    assert "mvccTs" not in capfd.readouterr().err
    exact, gallery = Gallery.open(exact_dir), Gallery.open(server_dir)
    try:
        assert len(gallery) == len(gallery.index) == 34
        assert not gallery.index.existing_keys([g["sha256"] for g in gone])
        queries = clustered(16, DIM, 3, seed=41)
        _same_answers(exact, gallery, queries, k=10)
        _assert_exact(gallery, queries)
    finally:
        gallery.index.close()


def test_builds_and_adds_insert_new_photos_and_upsert_only_changed_ones(milvus_server, tiny_models, tmp_path, monkeypatch):  # noqa: F811  # fmt: skip
    """A server applies an upsert as a delete plus an insert, and a million deletes made it
    compact and re-index every segment for half an hour (docs/scale.md): new photos are
    inserted after a Strong read of the collection, and only a photo the collection holds
    with other metadata is upserted. Nothing is duplicated (the kill -9 drill below covers a
    killed writer)."""
    import pymilvus

    writes: list[tuple[str, int]] = []
    for name in ("insert", "upsert"):
        original = getattr(pymilvus.MilvusClient, name)

        def recording(self, collection, data, *a, _name=name, _original=original, **kw):
            writes.append((_name, len(data)))
            return _original(self, collection, data, *a, **kw)

        monkeypatch.setattr(pymilvus.MilvusClient, name, recording)
    photos = random_photos(tmp_path / "photos", 8, 5)
    common = ["--image-model", str(tiny_models[1]), "--device", "cpu"]
    g = tmp_path / "g"
    assert _index("build", *map(str, photos[:5]), "--gallery", str(g), *common, "--backend",
                  "milvus", "--milvus-uri", milvus_server.uri, "--collection", _collection()) == 0  # fmt: skip
    assert writes and {name for name, _ in writes} == {"insert"}
    assert sum(n for _, n in writes) == 5
    writes.clear()
    # Three new photos and two already held: only the new ones are written, by insert.
    assert _index("add", *map(str, photos[3:]), "--gallery", str(g), "--device", "cpu") == 0
    assert {name for name, _ in writes} == {"insert"} and sum(n for _, n in writes) == 3
    gallery = Gallery.open(g)
    try:
        keys = [gallery.record(i)["sha256"] for i in range(8)]
        assert len(gallery.index) == 8 and len(gallery.index.existing_keys(keys)) == 8
    finally:
        gallery.index.close()


def test_server_hnsw_its_knobs_and_the_other_server_indexes(milvus_server):  # noqa: F811
    data = clustered(3000, 32, 40, seed=20)
    queries = clustered(100, 32, 40, seed=21)
    exact = ExactIndex(32)
    exact.add(data, np.arange(3000))
    want_scores, want = exact.search(queries, 10)
    name = _collection()
    knobs = {"flat_threshold": 1000, "hnsw_m": 16, "hnsw_ef_construction": 128, "hnsw_ef": 300}
    index = MilvusIndex(32, milvus_server.uri, name, settings=knobs)
    try:
        index.add(data[:800], np.arange(800))
        assert index.index_type == "FLAT"
        index.add(data[800:], np.arange(800, 3000))
        index.flush()
        index.wait_for_index(300)
        # Past flat_threshold a server builds HNSW with the knobs asked for, and has built it.
        info = index.client.describe_index(name, "embedding")
        assert (info["index_type"], int(info["M"]), int(info["efConstruction"])) == (
            "HNSW",
            16,
            128,
        )
        assert int(info["indexed_rows"]) == 3000
        sent: list[dict] = []
        search = index.client.search
        index.client.search = lambda *a, **kw: sent.append(kw["search_params"]) or search(*a, **kw)
        scores, found = index.search(queries, 10)
        assert sent == [{"metric_type": "IP", "params": {"ef": 300}}]
        per_query = [len(set(a) & set(b)) / 10 for a, b in zip(found, want, strict=True)]
        assert min(per_query) >= 0.99
        same = found == want
        np.testing.assert_allclose(scores[same], want_scores[same], atol=1e-5)
        index.client.search = search
        index.close()
        # New build knobs on the same collection rebuild its index (what `index move` to the
        # same place with --milvus-option does); the rows stay.
        index = MilvusIndex(32, milvus_server.uri, name, settings={**knobs, "hnsw_m": 24})
        index.tune_index()
        index.wait_for_index(300)
        assert int(index.client.describe_index(name, "embedding")["M"]) == 24 and len(index) == 3000
        assert [len(set(a) & set(b)) for a, b in zip(index.search(queries, 10)[1], want, strict=True)] == [10] * 100  # fmt: skip
    finally:
        index.drop()
        index.close()
    # IVF on a server: lists retrained as the collection grows, nprobe sent as asked; SQ8's
    # quantised scores re-scored from the stored vectors. (DISKANN is not tested: PyPI's
    # `milvus` build fails every DiskANN build, "C Runtime Exception: bad_function_call".)
    for settings in ({"index_type": "IVF_FLAT", "ivf_nprobe": 64}, {"index_type": "IVF_SQ8"}):
        index = MilvusIndex(32, milvus_server.uri, _collection(), settings=settings)
        try:
            index.add(data[:400], np.arange(400))
            index.add(data[400:], np.arange(400, 3000))
            index.flush()
            index.wait_for_index(300)
            nlist = int(4 * np.sqrt(3000))
            assert index.index_params() == {"nlist": nlist}
            assert index.search_params() == {"nprobe": settings.get("ivf_nprobe", 32)}
            scores, found = index.search(queries, 10)
            assert [len(set(a) & set(b)) for a, b in zip(found, want, strict=True)] == [10] * 100
            np.testing.assert_allclose(scores, want_scores, atol=1e-5)
        finally:
            index.drop()
            index.close()
    # An index type this server does not build is one clear error, and leaves nothing behind.
    name = _collection()
    index = MilvusIndex(32, milvus_server.uri, name, settings={"index_type": "HNSW_SQ"})
    try:
        with pytest.raises(SongsightError, match="refused a HNSW_SQ index"):
            index.add(data[:10], np.arange(10))
        assert not index.client.has_collection(name)
    finally:
        index.close()


def test_index_move_embedded_to_server_and_back_answers_the_same(milvus_server, tiny_image_encoder, tmp_path):  # noqa: F811  # fmt: skip
    photos, manifest, taxa = _photos_and_manifest(tmp_path, 40, 3)
    options = dict(manifest=manifest, species_csv=taxa, progress=False)
    exact = Gallery.build([], tmp_path / "exact", tiny_image_encoder, **options)
    embedded = Gallery.build([], tmp_path / "g", tiny_image_encoder, milvus=milvus_config(), **options)  # fmt: skip
    queries = clustered(20, DIM, 3, seed=42)
    first = embedded.search(queries, 10)
    embedded.index.close()
    g = str(tmp_path / "g")
    collection = _collection()
    steps = [
        (
            "server",
            ["--backend", "milvus", "--milvus-uri", milvus_server.uri, "--collection", collection],
        ),  # fmt: skip
        # The same place with other build knobs: the index is rebuilt, no row rewritten.
        (
            "server HNSW m=8",
            [
                "--backend",
                "milvus",
                "--milvus-uri",
                milvus_server.uri,
                "--collection",
                collection,
                "--milvus-index",
                "HNSW",
                "--milvus-option",
                "hnsw_m=8",
            ],
        ),  # fmt: skip
        ("embedded", ["--backend", "milvus"]),
        ("local", []),
    ]
    for label, flags in steps:
        assert _index("move", "--gallery", g, *flags) == 0, label
        moved = Gallery.open(g)
        try:
            meta = moved.provenance["index"]
            if label.startswith("server"):
                assert meta["milvus"]["uri"] == milvus_server.uri and len(moved.index) == 40
                moved.index.wait_for_index(300)
            if label == "server HNSW m=8":
                info = moved.index.client.describe_index(collection, "embedding")
                assert (info["index_type"], info["M"]) == ("HNSW", "8")
            if label == "embedded":
                assert meta["milvus"]["uri"] is None and len(moved.index) == 40
            scores, ids = moved.search(queries, 10)
            np.testing.assert_array_equal(ids, first[1], err_msg=label)
            np.testing.assert_allclose(scores, first[0], atol=1e-5, err_msg=label)
            _same_answers(exact, moved, queries, k=10)
        finally:
            if isinstance(moved.index, MilvusIndex):
                moved.index.close()


def test_collection_of_another_model_on_the_server_is_refused(built, milvus_server, tmp_path):  # noqa: F811  # fmt: skip
    from songsight.sim.tiny_models import build_tiny_open_clip

    _, _, collection = built
    other = build_tiny_open_clip(tmp_path / "other-image", seed=1)
    with pytest.raises(ProvenanceMismatchError, match="not comparable"):
        build_gallery(random_photos(tmp_path / "x", 2, 3), tmp_path / "other", image_model=other,
                      milvus=milvus_config(milvus_server.uri, collection), progress=False)  # fmt: skip


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(songsight.__file__).parents[1]), "HF_HUB_OFFLINE": "1"}  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "songsight.cli", *args], env=env, **kw)


def test_kill_9_of_the_server_mid_ingest_then_rerun_loses_nothing(milvus_server, tiny_models, tmp_path):  # noqa: F811  # fmt: skip
    """The crash drill: `songsight index build` writing to the server, the server killed with
    -9, restarted on its data, the command run again: every photo once, by sha256."""
    if not isinstance(milvus_server, MilvusServer):
        pytest.skip("the kill drill needs a server this run started (not SONGSIGHT_MILVUS_URI)")
    random_photos(tmp_path / "photos", 3000, 5)
    out = tmp_path / "g"
    build = ("index", "build", str(tmp_path / "photos"), "--gallery", str(out), "--image-model",
             str(tiny_models[1]), "--device", "cpu", "--backend", "milvus",
             "--milvus-uri", milvus_server.uri, "--collection", _collection())  # fmt: skip
    proc = _cli(*build, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress = re.compile(rb"writing to Milvus:.*?\| *(\d+)/(\d+) ")
    seen = b""
    while chunk := os.read(proc.stderr.fileno(), 4096):
        seen += chunk
        if any(0 < int(a) < int(b) for a, b in progress.findall(seen)):
            milvus_server.kill()
            break
    assert milvus_server.proc is None, seen.decode()[-2000:]
    written_before_kill = max(int(a) for a, _ in progress.findall(seen))
    # Keep reading what the build says, so a full pipe never stalls it.
    tail: list[bytes] = []
    drain = threading.Thread(target=lambda: tail.extend(iter(lambda: os.read(proc.stderr.fileno(), 65536), b"")))  # fmt: skip
    drain.start()
    milvus_server.start()  # same folder, same port: what it had stored, recovered
    # The build either rode out the outage (pymilvus retries) or stopped with an error.
    try:
        proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    drain.join()
    proc.stderr.close()
    said = b"".join(tail).decode(errors="replace").strip().splitlines()
    print(f"killed at {written_before_kill}/3000 written; the build then exited {proc.returncode}: {said[-1:] if said else ''}")  # fmt: skip
    # Riding it out is a success; stopping is one clear line saying what to do (not a crash).
    assert proc.returncode == 0 or (proc.returncode == 2 and "run the same command again" in said[-1])  # fmt: skip
    assert _cli(*build, "--quiet", stderr=subprocess.DEVNULL).wait() == 0
    g = Gallery.open(out)
    try:
        stored = list(g.metadata["sha256"])
        keys = [r["key"] for batch in g.index.iter_rows() for r in batch]
        assert 0 < written_before_kill < 3000 and len(stored) == len(set(stored)) == 3000
        assert len(keys) == len(set(keys)) == len(g.index) == 3000  # none duplicated
        assert set(keys) == set(stored)  # none missing
        _assert_exact(g, clustered(20, DIM, 3, seed=43))
    finally:
        g.index.close()


# --- versions -------------------------------------------------------------------------------
# .ci/run installs the other ends (scripts/milvus_versions_setup.sh): the oldest server songsight
# supports (2.3.4), two it refuses (2.3.3, and 2.3.0 which calls itself "v2.2-testing"), and
# the oldest pymilvus it allows (2.6.0).
CLIENT_OVERLAYS = sorted((REPO / ".venv").glob("pymilvus-*"))


def test_server_settings_reach_its_config_and_unknown_ones_are_refused(tmp_path):
    """``MilvusServer(settings=...)`` / ``scripts/milvus_server.py --set`` (benchmarks/search.py's
    ``--server-config``) write the dotted key into milvus.yaml; a key the YAML lacks, which
    the package's writer would skip without a word, stops the launcher with its name."""
    import yaml

    venv = server_venv()
    if skip_reason(venv):
        pytest.skip(skip_reason(venv))
    launcher = [str(venv / "bin" / "python"), str(REPO / "scripts" / "milvus_server.py")]
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import milvus_server as m; "
        "from pathlib import Path; "
        "m.write_config(Path(sys.argv[2]), {'proxy_port': 1, 'etcd_port': 2, 'etcd_peer_port': 3}, "
        "dict(a.split('=', 1) for a in sys.argv[3:]))"
    )
    args = [str(venv / "bin" / "python"), "-c", code, str(REPO / "scripts")]
    subprocess.run([*args, str(tmp_path / "shipped")], check=True)
    subprocess.run([*args, str(tmp_path), "dataCoord.segment.maxSize=4096", "queryNode.segcore.chunkRows=2048"], check=True)  # fmt: skip
    config = yaml.safe_load((tmp_path / "configs" / "milvus.yaml").read_text())
    shipped_text = (tmp_path / "shipped" / "configs" / "milvus.yaml").read_text()
    shipped = yaml.safe_load(shipped_text.replace(str(tmp_path / "shipped"), str(tmp_path)))
    assert config["dataCoord"]["segment"]["maxSize"] == 4096
    assert config["queryNode"]["segcore"]["chunkRows"] == 2048
    assert shipped["dataCoord"]["segment"]["maxSize"] != 4096  # so the setting did something
    # everything else as shipped
    config["dataCoord"]["segment"]["maxSize"] = shipped["dataCoord"]["segment"]["maxSize"]
    config["queryNode"]["segcore"]["chunkRows"] = shipped["queryNode"]["segcore"]["chunkRows"]
    assert config == shipped
    bad = subprocess.run(
        [*launcher, "--data", str(tmp_path / "bad"), "--set", "dataCoord.segment.maxSizes=1"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode != 0 and "no 'dataCoord.segment.maxSizes' to set" in bad.stderr


def test_server_versions_at_both_ends(tmp_path_factory):
    """Each other installed server: a supported one runs this module's gallery tests (in a
    child pytest pointed at it); an older one is refused by name when songsight connects."""
    if os.environ.get("SONGSIGHT_MILVUS_URI"):
        pytest.skip("runs inside the version test itself")
    if not OTHER_VENVS:
        pytest.skip("no other Milvus server installed: bash scripts/milvus_versions_setup.sh")
    for venv in OTHER_VENVS:
        if skip_reason(venv):
            continue
        version = installed_version(venv)
        server = MilvusServer(venv, tmp_path_factory.mktemp(f"milvus-{version}")).start()
        try:
            if tuple(int(x) for x in version.split(".")[:3]) < MIN_SERVER_VERSION:
                with pytest.raises(SongsightError, match="needs Milvus 2.3.4 or newer"):
                    connect(server.uri)
            else:
                _child_pytest(server.uri, {})
        finally:
            server.stop()


def test_client_versions_at_both_ends(milvus_server):  # noqa: F811
    """The oldest pymilvus songsight allows, in place of the installed one (a folder on
    PYTHONPATH), runs this module's gallery tests against the session's server."""
    if os.environ.get("SONGSIGHT_MILVUS_URI"):
        pytest.skip("runs inside the version test itself")
    if not CLIENT_OVERLAYS:
        pytest.skip("no other pymilvus installed: bash scripts/milvus_versions_setup.sh")
    for overlay in CLIENT_OVERLAYS:
        version = overlay.name.removeprefix("pymilvus-")
        _child_pytest(milvus_server.uri, {"PYTHONPATH": str(overlay), "SONGSIGHT_EXPECT_PYMILVUS": version})  # fmt: skip


def _child_pytest(uri: str, env: dict) -> None:
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow",
            str(Path(__file__)), "-k", "not versions_at_both_ends"]  # fmt: skip
    run = subprocess.run(args, cwd=REPO, env={**os.environ, "SONGSIGHT_MILVUS_URI": uri, **env},
                         capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout


def test_client_is_the_version_asked_for():
    """In a child pytest of the client version test: the pymilvus imported is the old one."""
    want = os.environ.get("SONGSIGHT_EXPECT_PYMILVUS")
    if not want:
        pytest.skip("only inside the client version test")
    import pymilvus

    assert pymilvus.__version__ == want
