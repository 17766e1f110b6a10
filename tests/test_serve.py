"""The HTTP API: JSON contract, upload limits, content sniffing, busy/timeout, safe image route.

``POST /api/search`` answers the list ``songsight search --format json`` writes (checked against
the CLI itself on a tiny real gallery), with the request's facts in response headers.

A fake searcher with the `songsight.retrieval.searcher.Searcher` interface stands in for the models: it
names the species whose tone frequency dominates each window, so the tests also check that the
uploaded audio really was decoded and windowed before the search saw it.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from songsight.retrieval.results import Hit, SpeciesScore, WindowResult  # noqa: E402
from songsight.retrieval.writers import results_to_records  # noqa: E402
from songsight.serve.app import create_app  # noqa: E402
from songsight.serve.spectrogram import spectrogram_png  # noqa: E402
from songsight.serve.upload import sniff_audio  # noqa: E402
from tests.helpers import FakeGallery, peak_hz, tone  # noqa: E402

SPECIES = ("Cresus raefoticus", "Laniella azura", "Picoides barratus")
COMMON = ("Spotted Chat", "Azure Shrike", "Barred Woodpecker")
TONES_HZ = (1000.0, 2500.0, 4000.0)  # the "song" of each species in the fake
TONE_AMP = 0.4
PHOTOS_PER_SPECIES = 2
RATE_HZ = 16_000


# ---- the fake searcher -----------------------------------------------------------------------


@dataclass
class FakeSearcher:
    """`Searcher`'s interface and result types; the loudest tone's species wins each window.

    Like the real one: a clip-level result (``window`` None) first, then one per window when
    there is more than one; the default window is 2 s here.
    """

    gallery: FakeGallery
    answered_by: str = "distilled"
    provenance: dict = field(
        default_factory=lambda: {
            "answered_by": "distilled",
            "audio_model": {
                "model_id": "/srv/models/distilled-v1",
                "revision": "abc123",
                "dim": 768,
            },
            "gallery": {"directory": "/srv/galleries/ssw60", "count": 6},
        }
    )
    gate: threading.Event | None = None  # when set, search waits for it (busy / timeout tests)
    fail: Exception | None = None
    calls: list = field(default_factory=list)
    answers: list = field(default_factory=list)

    def search(self, recordings, k=10, window_s=None, hop_s=None) -> list[WindowResult]:
        self.calls.append({"n": len(recordings), "k": k, "window_s": window_s, "hop_s": hop_s})
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        window_s = window_s or 2.0
        hop_s = hop_s or window_s
        out = []
        for n, (waveform, rate) in enumerate(recordings):
            duration_s = len(waveform) / rate
            out.append(self._answer(waveform, rate, 0.0, duration_s, None, k, n))
            if duration_s <= window_s:
                continue
            start_s, i = 0.0, 0
            while True:
                end_s = min(start_s + window_s, duration_s)
                chunk = waveform[int(start_s * rate) : int(end_s * rate)]
                out.append(self._answer(chunk, rate, start_s, end_s, i, k, n))
                if end_s >= duration_s:
                    break
                start_s, i = start_s + hop_s, i + 1
        self.answers.append(out)
        return out

    def _answer(self, chunk, rate, start_s, end_s, window, k, n) -> WindowResult:
        loudest_hz = peak_hz(chunk, rate, hann=False)
        label = int(np.argmin([abs(loudest_hz - t) for t in TONES_HZ]))
        labels = self.gallery.labels
        scores = sorted(
            ((0.9 if lab == label else 0.2) - 0.01 * j, j) for j, lab in enumerate(labels)
        )[::-1]
        hits = [
            Hit(j, str(self.gallery.paths[j]), s, SPECIES[labels[j]], labels[j], COMMON[labels[j]])
            for s, j in scores[:k]
        ]
        others = [o for o in range(len(SPECIES)) if o != label]
        species = [SpeciesScore(SPECIES[label], 0.9, "species", label, COMMON[label])]
        species += [SpeciesScore(SPECIES[o], 0.05, "species", o, COMMON[o]) for o in others]
        species.append(SpeciesScore("Cresidae", 0.95, "family"))
        return WindowResult(
            f"<array {n}>", start_s, end_s, hits, species, window, None, "distilled"
        )


# ---- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture()
def gallery(tmp_path) -> FakeGallery:
    root = tmp_path / "gallery"
    root.mkdir()
    paths, labels = [], []
    for label in range(len(SPECIES)):
        for j in range(PHOTOS_PER_SPECIES):
            path = root / f"{label}-{j}.jpg"
            Image.new("RGB", (8, 8), (80 * label, 40 * j, 200)).save(path)
            paths.append(path)
            labels.append(label)
    (tmp_path / "secret.txt").write_text("root:x:0:0 do not serve me")
    return FakeGallery(paths, labels)


@pytest.fixture()
def uploads(tmp_path) -> Path:
    """The temp folder uploads go to; every test ends with it empty."""
    path = tmp_path / "uploads"
    path.mkdir()
    yield path
    deadline = time.monotonic() + 5
    while any(path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(path.iterdir()), "an upload was left behind"


@pytest.fixture()
def searcher(gallery) -> FakeSearcher:
    return FakeSearcher(gallery)


def make_client(searcher, uploads, **limits) -> TestClient:
    app = create_app(searcher, temp_dir=uploads, **limits)
    return TestClient(app)


@pytest.fixture()
def client(searcher, uploads) -> TestClient:
    return make_client(searcher, uploads)


def encode(audio: np.ndarray, fmt: str, subtype: str, rate_hz: int = RATE_HZ) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, rate_hz, format=fmt, subtype=subtype)
    return buf.getvalue()


SEARCH_HEADERS = (
    "Link", "X-Spectrogram-Max-Hz", "X-Duration-S", "X-Sample-Rate-Hz", "X-Silent",
    "X-Answered-By", "X-K",
)  # fmt: skip


def facts(response) -> dict:
    """The search's facts from its response headers, parsed (the body carries only records)."""
    h = response.headers
    link = re.fullmatch(r'<(/api/spectrogram/[\w-]+)>; rel="spectrogram"', h["link"])
    assert link, h["link"]
    assert h["x-silent"] in ("true", "false")
    return {
        "request_id": h["x-request-id"],
        "spectrogram_url": link[1],
        "max_hz": float(h["x-spectrogram-max-hz"]),
        "duration_s": float(h["x-duration-s"]),
        "sample_rate_hz": int(h["x-sample-rate-hz"]),
        "silent": h["x-silent"] == "true",
        "answered_by": h["x-answered-by"],
        "k": int(h["x-k"]),
    }


def assert_clean_error(response, status: int) -> dict:
    """A deliberate error: the status, the JSON shape, the request id, and no traceback."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message", "request_id"}
    assert body["request_id"] == response.headers["x-request-id"]
    assert not [h for h in SEARCH_HEADERS if h in response.headers]  # only a success has them
    for leak in ("Traceback", 'File "', "line ", "site-packages", ".py"):
        assert leak not in response.text
    return body


# ---- health, page, OpenAPI -------------------------------------------------------------------


def test_health(client, gallery):
    body = client.get("/api/health").json()
    assert body["status"] == "ok"
    assert body["gallery_size"] == len(gallery) == 6
    assert body["answered_by"] == "distilled"
    # Provenance without server paths: folders dropped, a local model named by its folder.
    assert body["models"] == {
        "answered_by": "distilled",
        "audio_model": {"model_id": "distilled-v1", "revision": "abc123", "dim": 768},
        "gallery": {"count": 6},
    }
    assert "/srv/" not in client.get("/api/health").text
    assert body["limits"]["max_upload_mb"] == 20 and body["busy"] is False
    assert body["queue"]["depth"] == body["queue"]["admitted"] == 0


def test_page_static_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert (
        "/static/app.js" in page.text
        and "default-src 'self'" in page.headers["content-security-policy"]
    )
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/api/search"]["post"]
    body = post["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"]["required"] == ["audio"]
    # The 200 body is the CLI's list; every header the search sets is documented.
    ok = post["responses"]["200"]
    schema = ok["content"]["application/json"]["schema"]
    assert schema["type"] == "array" and "hits" in schema["items"]["properties"]
    assert set(ok["headers"]) == {"X-Request-ID", "X-Species-Unknown", *SEARCH_HEADERS}
    assert {"/api/health", "/api/images/{image_id}"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


# ---- search: the contract --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "subtype", "name", "ctype"),
    [
        ("WAV", "PCM_16", "bird.wav", "audio/wav"),
        ("OGG", "VORBIS", "bird.ogg", "audio/ogg"),
        ("MP3", "MPEG_LAYER_III", "bird.mp3", "audio/mpeg"),
        ("FLAC", "PCM_16", "no-extension", "application/octet-stream"),
    ],
)
def test_search_formats(client, searcher, gallery, fmt, subtype, name, ctype):
    # Species 1 sings for the first 2 s, species 2 for the next 2 s: the whole clip, then two
    # 2 s windows. The fake hears only the loudest tone, so species 1 or 2 wins the clip.
    data = encode(tone([TONES_HZ[1], TONES_HZ[2]], 2.0, RATE_HZ, TONE_AMP), fmt, subtype)
    response = client.post("/api/search", files={"audio": (name, data, ctype)}, data={"k": "3"})
    assert response.status_code == 200, response.text
    results = response.json()
    assert isinstance(results, list)
    assert searcher.calls == [{"n": 1, "k": 3, "window_s": None, "hop_s": None}]
    meta = facts(response)
    assert meta["k"] == 3 and meta["request_id"]
    assert meta["duration_s"] == pytest.approx(4.0, abs=0.1)  # MP3 adds encoder padding
    assert meta["sample_rate_hz"] == RATE_HZ and meta["silent"] is False
    assert meta["answered_by"] == "distilled"
    assert [r["window"] for r in results[:3]] == [None, 0, 1]
    assert [r["start_s"] for r in results[:3]] == [0.0, 0.0, 2.0]
    assert results[1]["end_s"] == pytest.approx(2.0)
    # The CLI's records (songsight.retrieval.writers.results_to_records) plus url on each hit.
    cli = results_to_records(searcher.answers[-1])
    for web, plain in zip(results, cli, strict=True):
        assert web["path"] == name and plain["path"] == "<array 0>"
        assert {k: v for k, v in web.items() if k not in ("path", "hits")} == {
            k: v for k, v in plain.items() if k not in ("path", "hits")
        }
        for hit, plain_hit in zip(web["hits"], plain["hits"], strict=True):
            assert hit == {**plain_hit, "image": Path(plain_hit["image"]).name, "url": hit["url"]}
    for result, label in zip(results[1:3], (1, 2), strict=True):
        assert result["species"][0]["name"] == SPECIES[label]
        assert result["species"][0]["common_name"] == COMMON[label]
        hits = result["hits"]
        assert len(hits) == 3
        assert [h["species"] for h in hits[:2]] == [SPECIES[label]] * 2
        scores = [h["score"] for h in hits]
        assert scores == sorted(scores, reverse=True)
        for hit in hits:
            assert hit["url"] == f"/api/images/{hit['image_id']}"
            assert hit["image"] == gallery.paths[hit["image_id"]].name  # no server folders
            photo = client.get(hit["url"])
            assert photo.status_code == 200 and photo.headers["content-type"] == "image/jpeg"
            assert photo.content == gallery.paths[hit["image_id"]].read_bytes()
    assert str(gallery.paths[0].parent) not in response.text
    png = client.get(meta["spectrogram_url"])
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert meta["max_hz"] == pytest.approx(RATE_HZ / 2, rel=0.01)


def test_search_windows_and_stereo(client, searcher):
    stereo = np.stack(
        [
            tone([TONES_HZ[0]] * 6, 1.0, RATE_HZ, TONE_AMP),
            tone([TONES_HZ[0]] * 6, 1.0, RATE_HZ, TONE_AMP),
        ],
        axis=1,
    )
    data = encode(stereo, "WAV", "FLOAT")
    fields = {"k": "2", "window_s": "4", "hop_s": "2"}
    response = client.post("/api/search", files={"audio": ("s.wav", data)}, data=fields)
    assert searcher.calls[-1] == {"n": 1, "k": 2, "window_s": 4.0, "hop_s": 2.0}
    spans = [(r["window"], r["start_s"], r["end_s"]) for r in response.json()]
    assert spans == [(None, 0, 6), (0, 0, 4), (1, 2, 6)]
    assert all(r["species"][0]["name"] == SPECIES[0] for r in response.json())
    assert facts(response)["duration_s"] == 6.0 and facts(response)["k"] == 2


def test_search_refused_window_is_422(searcher, uploads):
    from songsight.errors import SongsightError

    searcher.fail = SongsightError("window_s must be in (0, 10] s (the model's window)")
    client = make_client(searcher, uploads)
    data = encode(tone([1000.0], 1.0, RATE_HZ, TONE_AMP), "WAV", "PCM_16")
    response = client.post("/api/search", files={"audio": ("a.wav", data)}, data={"window_s": "30"})
    assert "(0, 10] s" in assert_clean_error(response, 422)["message"]


def test_search_unusable_recording_is_422(searcher, uploads):
    def unusable(recordings, **kw):
        return [WindowResult("<array 0>", 0.0, 0.0, error="zero-length audio (no samples)")]

    searcher.search = unusable
    client = make_client(searcher, uploads)
    data = encode(tone([1000.0], 1.0, RATE_HZ, TONE_AMP), "WAV", "PCM_16")
    body = assert_clean_error(client.post("/api/search", files={"audio": ("a.wav", data)}), 422)
    assert body["message"] == "could not search this recording: zero-length audio (no samples)"


def test_search_silent_recording_is_flagged(client):
    data = encode(np.zeros(RATE_HZ, np.float32), "WAV", "PCM_16")
    response = client.post("/api/search", files={"audio": ("quiet.wav", data)})
    meta = facts(response)
    assert meta["silent"] is True and meta["k"] == 10 and meta["duration_s"] == 1.0
    assert [r["path"] for r in response.json()] == ["quiet.wav"]


def test_search_headers_stay_one_line(searcher, uploads):
    # A model name with a line break or non-ASCII text must neither break nor add headers.
    searcher.answered_by = "distilled\r\nSet-Cookie: x=1 \u2014 \u00fc"
    client = make_client(searcher, uploads)
    data = encode(tone([1000.0], 1.0, RATE_HZ, TONE_AMP), "WAV", "PCM_16")
    response = client.post("/api/search", files={"audio": ("a.wav", data)})
    assert response.status_code == 200, response.text
    assert facts(response)["answered_by"] == "distilled??Set-Cookie: x=1 ? ?"
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize(
    "fields",
    [{"k": "0"}, {"k": "101"}, {"k": "many"}, {"k": "2.5"}, {"window_s": "nan"}, {"hop_s": "-1"}],
)
def test_search_rejects_bad_fields(client, searcher, fields):
    data = encode(tone([1000.0], 1.0, RATE_HZ, TONE_AMP), "WAV", "PCM_16")
    response = client.post("/api/search", files={"audio": ("a.wav", data)}, data=fields)
    assert_clean_error(response, 422)
    assert searcher.calls == []


def test_search_needs_the_audio_field(client):
    response = client.post("/api/search", files={"sound": ("a.wav", b"RIFF")}, data={"k": "3"})
    assert assert_clean_error(response, 422)["error"] == "invalid_request"
    assert_clean_error(client.post("/api/search", files={"audio": ("a.wav", b"")}), 422)
    assert_clean_error(client.post("/api/search", json={"audio": "x"}), 415)


# ---- limits ----------------------------------------------------------------------------------


def test_oversized_upload_is_413(searcher, uploads):
    client = make_client(searcher, uploads, max_upload_mb=0.05)  # 50 kB
    big = encode(tone([1000.0], 3.0, RATE_HZ, TONE_AMP), "WAV", "PCM_16")  # ~96 kB
    assert_clean_error(client.post("/api/search", files={"audio": ("big.wav", big)}), 413)
    # Without Content-Length (chunked) the stream itself is cut at the limit.
    boundary = "b0undary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="x.wav"\r\n\r\n'

    def chunks():
        yield head.encode()
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post(
        "/api/search",
        content=chunks(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_clean_error(response, 413)
    small = encode(
        tone([1000.0], 1.0, RATE_HZ, TONE_AMP), "WAV", "PCM_16"
    )  # 32 kB: under the limit
    assert client.post("/api/search", files={"audio": ("ok.wav", small)}).status_code == 200
    assert len(searcher.calls) == 1


def test_too_long_recording_is_413(searcher, uploads):
    client = make_client(searcher, uploads, max_duration_s=2.0)
    data = encode(tone([1000.0], 3.0, RATE_HZ, TONE_AMP), "FLAC", "PCM_16")
    body = assert_clean_error(client.post("/api/search", files={"audio": ("long.flac", data)}), 413)
    assert body["error"] == "too_long"
    assert searcher.calls == []


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        png_bytes(),
        b"just some text, not a recording at all\n" * 20,
        b"RIFF\x24\x00\x00\x00WAVEgarbage-after-a-wav-magic"
        * 4,  # passes the sniff, not libsndfile
        b"\xff\xf1\x50\x80" + bytes(400),  # ADTS AAC: MPEG sync but layer 00
        b"GIF89a" + bytes(64),
    ],
    ids=["png", "text", "fake-wav", "aac", "gif"],
)
def test_wrong_type_is_415(client, searcher, data):
    # The name and Content-Type claim WAV; the content decides.
    response = client.post("/api/search", files={"audio": ("bird.wav", data, "audio/wav")})
    assert assert_clean_error(response, 415)["error"] == "unsupported_media_type"
    assert searcher.calls == []


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "wav"),
        (b"RF64\xff\xff\xff\xffWAVEds64", "wav"),
        (b"RIFF\x00\x00\x00\x00AVI LIST", None),
        (b"fLaC\x00\x00\x00\x22", "flac"),
        (b"OggS\x00\x02", "ogg"),
        (b"ID3\x04\x00", "mp3"),
        (b"\xff\xfb\x90\x64", "mp3"),
        (b"\xff\xf3\x88\xc4", "mp3"),
        (b"\xff\xf1\x50\x80", None),
        (b"\x89PNG\r\n\x1a\n", None),
        (b"", None),
    ],
)
def test_sniff_audio(head, kind):
    assert sniff_audio(head) == kind


# ---- busy and timeout ------------------------------------------------------------------------


def test_busy_is_503_with_retry_after(searcher, uploads):
    client = make_client(searcher, uploads, max_queue=1)
    queue = client.app.state.queue
    assert queue.try_admit()  # another search holds the only place in the queue
    data = encode(tone([1000.0], 1.0, RATE_HZ, TONE_AMP), "WAV", "PCM_16")
    try:
        response = client.post("/api/search", files={"audio": ("a.wav", data)})
        assert assert_clean_error(response, 503)["error"] == "busy"
        assert int(response.headers["retry-after"]) > 0
        assert client.get("/api/health").json()["busy"] is True
    finally:
        queue.release()
    assert client.post("/api/search", files={"audio": ("a.wav", data)}).status_code == 200
    assert len(searcher.calls) == 1


def test_timeout_is_504_and_the_place_comes_back(searcher, uploads):
    searcher.gate = threading.Event()
    client = make_client(searcher, uploads, request_timeout_s=0.3)
    data = encode(tone([1000.0], 1.0, RATE_HZ, TONE_AMP), "WAV", "PCM_16")
    response = client.post("/api/search", files={"audio": ("a.wav", data)})
    assert assert_clean_error(response, 504)["error"] == "timeout"
    assert not searcher.answers  # answered while the search still waited at its gate
    queue = client.app.state.queue
    assert queue.admitted == 1  # the search still runs: its place and temp file are still held
    assert len(list(uploads.iterdir())) == 1
    searcher.gate.set()
    deadline = time.monotonic() + 5
    while queue.admitted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert queue.admitted == 0  # the `uploads` fixture checks the temp file went too


# ---- failures stay generic -------------------------------------------------------------------


def test_unexpected_error_is_a_generic_500(searcher, uploads, caplog):
    searcher.fail = RuntimeError("secret detail /home/someone/model.bin")
    client = make_client(searcher, uploads)
    data = encode(tone([1000.0], 1.0, RATE_HZ, TONE_AMP), "WAV", "PCM_16")
    with caplog.at_level(logging.ERROR, logger="songsight.serve"):
        response = client.post("/api/search", files={"audio": ("a.wav", data)})
    body = assert_clean_error(response, 500)
    assert "secret" not in response.text and "RuntimeError" not in response.text
    assert body["request_id"] in caplog.text and "secret detail" in caplog.text


def test_input_file_error_from_the_searcher_is_422(searcher, uploads):
    from songsight.errors import InputFileError

    searcher.fail = InputFileError("<array>", "audio contains NaN or infinite samples")
    client = make_client(searcher, uploads)
    data = encode(tone([1000.0], 1.0, RATE_HZ, TONE_AMP), "WAV", "PCM_16")
    body = assert_clean_error(client.post("/api/search", files={"audio": ("a.wav", data)}), 422)
    assert body["message"] == "audio contains NaN or infinite samples"


# ---- the image route never takes a path ------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/api/images/../../etc/passwd",
        "/api/images/..%2F..%2Fetc%2Fpasswd",
        "/api/images/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/api/images/..%2fsecret.txt",
        "/api/images/%2Fetc%2Fpasswd",
        "/api/images/0%2F..%2F..%2Fsecret.txt",
        "/api/images/secret.txt",
        "/api/images/1.5",
        "/api/images/0x1",
        "/api/images/",
        "/api/images/6",
        "/api/images/-1",
        "/api/images/99999999999999999999999",
        "/static/../../secret.txt",
        "/static/%2e%2e/%2e%2e/secret.txt",
    ],
)
def test_image_route_refuses_paths(client, url):
    response = client.get(url)
    assert response.status_code in (404, 422)
    assert_clean_error(response, response.status_code)
    assert b"root:" not in response.content


def test_image_route_serves_every_id(client, gallery):
    for image_id, path in enumerate(gallery.paths):
        response = client.get(f"/api/images/{image_id}")
        assert response.content == path.read_bytes()
    path = gallery.paths[0]
    path.unlink()  # an id whose file vanished is a 404, not a 500
    assert_clean_error(client.get("/api/images/0"), 404)
    assert_clean_error(client.get("/api/spectrogram/not-a-real-id"), 404)
    assert_clean_error(client.post("/api/images/1"), 405)


# ---- the spectrogram -------------------------------------------------------------------------


@pytest.mark.parametrize("rate_hz", [16_000, 48_000])
def test_spectrogram_tone_lands_on_its_row(rate_hz):
    # A 3 kHz tone: the brightest row sits at 3 kHz, counted from the bottom of the image.
    audio = tone([3000.0], 2.0, rate_hz, TONE_AMP)
    png, top_hz = spectrogram_png(audio, rate_hz, max_hz=12_000)
    image = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    height, width = image.shape
    assert top_hz == pytest.approx(min(12_000, rate_hz / 2), rel=0.01)
    brightest_row = int(np.argmax(image.mean(axis=1)))
    row_hz = (height - 1 - brightest_row) * top_hz / (height - 1)
    assert row_hz == pytest.approx(3000, abs=2 * rate_hz / 1024)
    assert width <= 1200


def test_spectrogram_pools_long_audio_and_keeps_short_calls():
    # 60 s of silence with one 0.2 s call at 30 s: pooling to 300 columns must keep it.
    audio = np.zeros(60 * RATE_HZ, np.float32)
    call = tone([2000.0], 0.2, RATE_HZ, TONE_AMP)
    audio[30 * RATE_HZ : 30 * RATE_HZ + len(call)] = call
    png, _ = spectrogram_png(audio, RATE_HZ, width_px=300)
    image = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    assert image.shape[1] == 300
    loudest = int(np.argmax(image.max(axis=0)))
    assert abs(loudest - 150) <= 2
    # Silence and very short input still give a valid image.
    for samples in (np.zeros(RATE_HZ, np.float32), np.ones(10, np.float32) * 0.1):
        png, _ = spectrogram_png(samples, RATE_HZ)
        assert Image.open(io.BytesIO(png)).size[0] >= 1


# ---- wiring: serve() and the real serialiser -------------------------------------------------


def test_serve_builds_the_searcher_and_runs_uvicorn(monkeypatch, gallery, capsys):
    import uvicorn

    import songsight.retrieval.searcher

    made, ran = {}, {}

    class Searcher(FakeSearcher):
        def __init__(self, gallery_dir, model=None, **options):
            made.update(gallery_dir=gallery_dir, model=model, **options)
            super().__init__(gallery)

    monkeypatch.setattr(songsight.retrieval.searcher, "Searcher", Searcher)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(app=app, **kw))
    from songsight.serve import serve

    serve("some/gallery", "127.0.0.1", 8123, model="ckpt", device="cpu", max_concurrency=2)
    assert made == {
        "gallery_dir": "some/gallery",
        "model": "ckpt",
        "device": "cpu",
        "runtime": "auto",
    }
    assert ran["host"] == "127.0.0.1" and ran["port"] == 8123
    health = TestClient(ran["app"]).get("/api/health").json()
    assert health["gallery_size"] == 6 and health["limits"]["max_concurrency"] == 2
    assert "6 photos, answered by distilled" in capsys.readouterr().out


@pytest.fixture()
def tiny_gallery(tmp_path, tiny_image_encoder):
    """A real `Gallery` of three random photos, one per species, under ``tmp_path/gallery``."""
    import csv

    from songsight.gallery import Gallery
    from songsight.taxonomy import Species, write_species_csv

    names = enumerate(zip(SPECIES, COMMON, strict=True))
    taxa = [Species(i, s, c, order="Passeriformes", family="Cresidae") for i, (s, c) in names]
    rows = []
    for s in taxa:
        path = tmp_path / "photos" / f"{s.label}.png"
        path.parent.mkdir(exist_ok=True)
        rng = np.random.default_rng(s.label)
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)
        rows.append({"path": str(path), "label": s.label})
    write_species_csv(taxa, tmp_path / "taxa.csv")
    with (tmp_path / "photos.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return Gallery.build(
        [], tmp_path / "gallery", tiny_image_encoder, manifest=tmp_path / "photos.csv",
        species_csv=tmp_path / "taxa.csv", progress=False,
    )  # fmt: skip


def test_real_searcher_on_a_tiny_gallery(tmp_path, uploads, tiny_models, tiny_gallery):
    """The app over the real `Searcher` (zero-shot cascade, tiny models, three photos)."""
    from songsight.retrieval.searcher import Searcher

    gallery = tiny_gallery
    searcher = Searcher(gallery, audio_model=tiny_models[0], device="cpu")
    client = TestClient(create_app(searcher, temp_dir=uploads))

    health = client.get("/api/health").json()
    assert health["gallery_size"] == 3 and health["answered_by"] == "cascade: top1"
    assert health["models"]["audio_model"]["revision"]
    assert str(tmp_path) not in json.dumps(health)

    data = encode(tone([TONES_HZ[0]], 5.0, RATE_HZ, TONE_AMP), "OGG", "VORBIS")
    response = client.post("/api/search", files={"audio": ("a.ogg", data)}, data={"k": "2"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert str(tmp_path) not in response.text
    assert facts(response)["answered_by"] == "cascade: top1"
    # The same search straight through the library gives the same records.
    audio, rate = sf.read(io.BytesIO(data), dtype="float32")
    direct = results_to_records(searcher.search([(audio, rate)], k=2))
    assert len(body) == len(direct) > 1
    for web, plain in zip(body, direct, strict=True):
        assert (web["window"], web["start_s"], web["end_s"]) == (
            plain["window"],
            plain["start_s"],
            plain["end_s"],
        )
        assert [h["image_id"] for h in web["hits"]] == [h["image_id"] for h in plain["hits"]]
        assert [h["score"] for h in web["hits"]] == pytest.approx(
            [h["score"] for h in plain["hits"]], abs=1e-5
        )
        for hit in web["hits"]:
            photo = client.get(hit["url"]).content
            assert photo == Path(gallery.image_path(hit["image_id"])).read_bytes()
    assert_clean_error(client.get("/api/images/3"), 404)


def test_search_body_is_what_the_cli_writes(tmp_path, uploads, tiny_models, tiny_gallery):
    """``POST /api/search`` answers what ``songsight search --format json`` writes for the file:
    the reference is the CLI itself, run through `songsight.cli.main` on the same gallery."""
    from songsight.cli import main
    from songsight.retrieval.searcher import Searcher

    searcher = Searcher(tiny_gallery, audio_model=tiny_models[0], device="cpu")
    client = TestClient(create_app(searcher, temp_dir=uploads))
    # Two species one after the other, long enough for several windows.
    rate_hz = searcher.sample_rate_hz
    wav = tmp_path / "dawn chorus.wav"
    sf.write(
        wav, tone([TONES_HZ[0], TONES_HZ[2]], 3.0, rate_hz, TONE_AMP), rate_hz, subtype="FLOAT"
    )
    out = tmp_path / "cli.json"
    code = main(
        ["search", str(wav), "--gallery", str(tiny_gallery.directory), "--audio-model",
         str(tiny_models[0]), "--k", "2", "--device", "cpu", "--format", "json", "--out",
         str(out), "--quiet"]
    )  # fmt: skip
    assert code == 0
    cli = json.loads(out.read_text())
    response = client.post(
        "/api/search", files={"audio": (wav.name, wav.read_bytes(), "audio/wav")}, data={"k": "2"}
    )
    assert response.status_code == 200, response.text
    web = response.json()
    assert isinstance(web, list) and len(web) == len(cli) > 2
    assert [r["window"] for r in web] == [None, *range(len(web) - 1)]
    assert facts(response)["k"] == 2 and facts(response)["duration_s"] == pytest.approx(6.0)
    for w, c in zip(web, cli, strict=True):
        assert c["path"] == str(wav) and w["path"] == wav.name  # the server's folders stay
        assert set(w) == set(c)
        for key in ("window", "answered_by"):
            assert w[key] == c[key], key
        assert (w["start_s"], w["end_s"]) == pytest.approx((c["start_s"], c["end_s"]), abs=1e-6)
        assert len(w["species"]) == len(c["species"]) > 0
        for ws, cs in zip(w["species"], c["species"], strict=True):
            assert set(ws) == set(cs)
            assert {k: v for k, v in ws.items() if k != "score"} == {
                k: v for k, v in cs.items() if k != "score"
            }
            assert ws["score"] == pytest.approx(cs["score"], abs=1e-5)
        assert len(w["hits"]) == len(c["hits"]) == 2
        for wh, ch in zip(w["hits"], c["hits"], strict=True):
            assert set(wh) == set(ch) | {"url"}  # a superset: the web adds the photo's URL
            assert wh["image"] == Path(ch["image"]).name and "/" not in wh["image"]
            assert wh["score"] == pytest.approx(ch["score"], abs=1e-5)
            for key in ("image_id", "species", "label", "common_name"):
                assert wh.get(key) == ch.get(key), key
            assert wh["url"] == f"/api/images/{ch['image_id']}"
