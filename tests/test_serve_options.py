"""The HTTP API's newer answers: flags in the body, species lists and min_score per request,
photos the browser can show, a clear 404 for a photo whose file is gone, and a busy port
refused before any model loads. Fixtures and helpers are those of `tests.test_serve`."""

from __future__ import annotations

import io
import socket

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from songsight.errors import SongsightError  # noqa: E402
from songsight.serve.app import create_app  # noqa: E402
from tests import test_serve as _base  # noqa: E402
from tests.helpers import tone  # noqa: E402
from tests.test_serve import (  # noqa: E402
    COMMON,
    RATE_HZ,
    SPECIES,
    TONE_AMP,
    TONES_HZ,
    assert_clean_error,
    encode,
)

client, gallery, searcher, tiny_gallery, uploads = (
    _base.client, _base.gallery, _base.searcher, _base.tiny_gallery, _base.uploads,
)  # fmt: skip


@pytest.fixture()
def real_client(tiny_gallery, tiny_models, uploads):
    from songsight.retrieval.searcher import Searcher

    s = Searcher(tiny_gallery, audio_model=tiny_models[0], device="cpu")
    return TestClient(create_app(s, temp_dir=uploads)), s


def test_body_flags_silence_and_names_nothing(real_client):
    client, _ = real_client
    silent = encode(np.zeros(16_000 * 3, np.float32), "WAV", "PCM_16")
    response = client.post("/api/search", files={"audio": ("quiet.wav", silent)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["x-silent"] == "true"
    assert body and all(
        r["flags"] == ["silent"] and not r["hits"] and not r["species"] for r in body
    )
    loud = encode(tone([TONES_HZ[0]], 1.0, RATE_HZ, TONE_AMP), "WAV", "PCM_16")
    body = client.post("/api/search", files={"audio": ("a.wav", loud)}).json()
    assert body[0]["flags"] == [] and body[0]["hits"] and body[0]["species"]


def test_species_list_and_min_score_fields(real_client):
    client, searcher = real_client
    audio = encode(tone([TONES_HZ[0], TONES_HZ[2]], 1.5, RATE_HZ, TONE_AMP), "WAV", "PCM_16")
    response = client.post(
        "/api/search",
        files={"audio": ("a.wav", audio)},
        data={"species_list": f"{COMMON[1]}\nNot a bird", "k": "3"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-species-unknown"] == "Not a bird"
    for record in response.json():
        assert {h["species"] for h in record["hits"]} == {SPECIES[1]}
        assert {s["name"] for s in record["species"] if s["rank"] == "species"} == {SPECIES[1]}
    refused = client.post(
        "/api/search", files={"audio": ("a.wav", audio)}, data={"species_list": "Not a bird"}
    )
    assert "none of its" in assert_clean_error(refused, 422)["message"]
    # min_score: the records keep only probabilities at or above it, and only the windows
    # that keep a species; the whole recording is always there.
    everything = client.post("/api/search", files={"audio": ("a.wav", audio)}).json()
    tops = [max(s["score"] for s in r["species"] if s["rank"] == "species") for r in everything[1:]]
    threshold = float(np.median(tops))
    kept = client.post(
        "/api/search", files={"audio": ("a.wav", audio)}, data={"min_score": str(threshold)}
    ).json()
    assert kept[0]["window"] is None and len(kept) == 1 + sum(t >= threshold for t in tops)
    assert all(s["score"] >= threshold for r in kept for s in r["species"])
    bad = client.post("/api/search", files={"audio": ("a.wav", audio)}, data={"min_score": "2"})
    assert_clean_error(bad, 422)


def test_tiff_is_sent_as_png_and_a_lost_file_says_so(searcher, gallery, uploads):
    rgb = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    tif = gallery.paths[0].with_suffix(".tif")
    Image.fromarray(rgb).save(tif)
    odd = gallery.paths[1].with_name("photo.JPG_original")  # a JPEG by content, not by name
    gallery.paths[1].rename(odd)
    gallery.paths[0], gallery.paths[1] = tif, odd
    client = TestClient(create_app(searcher, temp_dir=uploads))
    response = client.get("/api/images/0")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(response.content))), rgb)
    assert client.get("/api/images/1").headers["content-type"] == "image/jpeg"
    gallery.paths[2].unlink()
    body = assert_clean_error(client.get("/api/images/2"), 404)
    assert body["error"] == "image_missing" and "index check" in body["message"]
    assert assert_clean_error(client.get("/api/images/99"), 404)["error"] == "not_found"


def test_busy_port_is_refused_before_the_models_load(monkeypatch):
    import songsight.retrieval.searcher

    def never(*args, **kwargs):
        raise AssertionError("the models were loaded before the port was checked")

    monkeypatch.setattr(songsight.retrieval.searcher, "Searcher", never)
    from songsight.serve import serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SongsightError, match=f"port {port} .* already in use.*--port"):
            serve("some/gallery", "127.0.0.1", port)
