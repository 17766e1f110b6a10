"""What a field trial of ``songsight serve`` found: misspelt fields and query parameters that
were silently ignored, an upload under the wrong field name, non-ASCII species names lost in a
header, a /docs page that needed the internet, a port out of range that crashed, and photos
gone from disk that the server never mentioned. Fixtures and helpers are `tests.test_serve`'s.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from urllib.parse import unquote

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from songsight.cli import main  # noqa: E402
from songsight.serve import public, upload  # noqa: E402
from songsight.serve.app import create_app  # noqa: E402
from tests import test_serve as _base  # noqa: E402
from tests.helpers import FakeGallery, tone  # noqa: E402
from tests.test_serve import (  # noqa: E402
    RATE_HZ,
    TONE_AMP,
    FakeSearcher,
    assert_clean_error,
    encode,
)

client, gallery, searcher, tiny_gallery, uploads = (
    _base.client, _base.gallery, _base.searcher, _base.tiny_gallery, _base.uploads,
)  # fmt: skip


def wav() -> bytes:
    return encode(tone([1000.0], 1.0, RATE_HZ, TONE_AMP), "WAV", "PCM_16")


# ---- unknown form fields and query parameters ------------------------------------------------


def test_unknown_form_field_is_refused_naming_the_accepted_ones(client, searcher):
    response = client.post(
        "/api/search",
        files={"audio": ("a.wav", wav())},
        data={"species-list": "Laniella azura", "k": "3"},
    )
    message = assert_clean_error(response, 422)["message"]
    assert "'species-list'" in message
    assert all(name in message for name in upload.FORM_FIELDS)
    assert searcher.calls == []


def test_openapi_documents_exactly_the_accepted_form_fields(client):
    spec = client.get("/openapi.json").json()
    schema = spec["paths"]["/api/search"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert set(schema["schema"]["properties"]) == set(upload.FORM_FIELDS)
    assert schema["schema"]["additionalProperties"] is False


def _api_calls(spec: dict):
    """(method, url) for every operation of the OpenAPI document, path parameters filled in."""
    for path, operations in spec["paths"].items():
        url = re.sub(r"\{image_id\}", "0", path)
        url = re.sub(r"\{\w+\}", "some-id", url)
        for method in operations:
            yield method.upper(), url


def test_unknown_query_parameter_is_refused_on_every_api_route(client, searcher):
    spec = client.get("/openapi.json").json()
    calls = list(_api_calls(spec))
    assert ("POST", "/api/search") in calls and ("GET", "/api/health") in calls
    for method, url in calls:
        files = {"audio": ("a.wav", wav())} if method == "POST" else None
        response = client.request(method, f"{url}?colour=red", files=files)
        body = assert_clean_error(response, 422)
        assert "'colour'" in body["message"], (method, url, body)
        assert "no query parameters" in body["message"], (method, url, body)
    # The search's options are form fields, and the refusal says so.
    response = client.post("/api/search?k=3", files={"audio": ("a.wav", wav())})
    assert "form fields" in assert_clean_error(response, 422)["message"]
    assert searcher.calls == []
    # Every operation's documented query parameters: none, as accepted.
    for operations in spec["paths"].values():
        for operation in operations.values():
            assert [p for p in operation.get("parameters", []) if p["in"] == "query"] == []
    # The page, its files and the docs are not the API: a stray parameter does no harm there.
    assert client.get("/?utm_source=mail").status_code == 200
    assert client.get("/static/app.js?v=2").status_code == 200


def test_the_query_check_names_a_route_s_declared_parameters(searcher, uploads):
    # A route that declares query parameters accepts those and names them when refusing others.
    app = create_app(searcher, temp_dir=uploads)

    @app.get("/api/echo")
    def echo(word: str = "", times: int = 1) -> dict:
        return {"echo": word * times}

    client = TestClient(app)
    assert client.get("/api/echo?word=ab&times=2").json() == {"echo": "abab"}
    body = assert_clean_error(client.get("/api/echo?word=ab&time=2"), 422)
    assert "'time'" in body["message"] and "times" in body["message"]
    assert "word" in body["message"]


# ---- an upload under the wrong field name ----------------------------------------------------


def test_a_file_under_another_field_name_is_told_to_use_audio(client, searcher):
    response = client.post("/api/search", files={"file": ("bird.wav", wav(), "audio/wav")})
    message = assert_clean_error(response, 422)["message"]
    assert "too long" not in message
    assert "'audio'" in message and "'file'" in message
    assert searcher.calls == []


# ---- non-ASCII species in a header -----------------------------------------------------------


@pytest.mark.parametrize(
    "names",
    [["Pájaro Niño"], ["Pájaro Niño", "Not a bird"], ["100% wren", "Œdicnème criard", "鳥"]],
)
def test_header_utf8_round_trips(names):
    text = ", ".join(names)
    value = public.header_utf8(text)
    assert re.fullmatch(r"[\x20-\x7e]*", value)  # printable ASCII: a valid header value
    assert unquote(value) == text  # as JavaScript's decodeURIComponent reads it
    assert public.header_utf8("Not a bird") == "Not a bird"  # plain names stay readable


def test_species_unknown_header_keeps_non_ascii_names(searcher, uploads):
    searcher.species = SimpleNamespace(unknown=["Pájaro Niño", "50% Wren"], warning=lambda: None)
    client = TestClient(create_app(searcher, temp_dir=uploads))
    response = client.post("/api/search", files={"audio": ("a.wav", wav())})
    assert response.status_code == 200, response.text
    raw = response.headers["x-species-unknown"]
    assert "?" not in raw
    assert unquote(raw) == "Pájaro Niño, 50% Wren"
    doc = client.get("/openapi.json").json()["paths"]["/api/search"]["post"]
    assert (
        "percent-encoded" in doc["responses"]["200"]["headers"]["X-Species-Unknown"]["description"]
    )


# ---- /docs offline ---------------------------------------------------------------------------


def test_docs_page_needs_nothing_outside_the_server(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    urls = re.findall(r"""https?://[^\s"'<>)]+""", page.text)
    assert urls == [], urls
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        assert asset.startswith("/"), asset
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert response.content, asset
    js = next(a for a in assets if a.endswith(".js"))
    assert "javascript" in client.get(js).headers["content-type"]
    # Swagger UI 5 or later: FastAPI writes OpenAPI 3.1, which Swagger UI 4 cannot show.
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
    assert "openapi: 3.1" in client.get(js).text
    # ReDoc would load from a CDN: not served.
    assert client.get("/redoc").status_code == 404


def test_docs_render_in_a_browser_with_no_request_leaving(searcher, uploads):
    """Swagger UI really draws the API from the package's assets, in headless Chromium, with
    every request that would leave the server blocked and counted (skips without Chromium)."""
    import threading
    import time

    import uvicorn

    sync_api = pytest.importorskip("playwright.sync_api")
    from tests.helpers import free_port
    from tests.test_browser import CHROMIUM_ARGS, chromium_path

    executable = chromium_path()
    port = free_port()
    config = uvicorn.Config(create_app(searcher, temp_dir=uploads), host="127.0.0.1", port=port,
                            log_level="warning")  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    outside, errors = [], []

    def only_here(route) -> None:
        if route.request.url.startswith(f"{base}/"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
            page.route("**/*", only_here)
            page.goto(f"{base}/docs")
            page.wait_for_selector(".opblock", timeout=20_000)
            operations = page.locator(".opblock-summary-path").all_inner_texts()
            browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
    assert {"/api/health", "/api/search", "/api/images/{image_id}"} <= {
        o.strip().replace("\u200b", "") for o in operations
    }, operations
    assert outside == [] and errors == [], (outside, errors)


# ---- the command line: a port out of range, a count that is not whole -------------------------


@pytest.mark.parametrize(
    ("argv", "wanted"),
    [
        (["serve", "--gallery", "g", "--port", "80000"], "--port: a port is a whole number from 1 to 65535, got 80000"),
        (["serve", "--gallery", "g", "--port", "0"], "--port: a port is a whole number from 1 to 65535, got 0"),
        (["serve", "--gallery", "g", "--port", "80.5"], "--port: needs a whole number, got '80.5'"),
        (["serve", "--gallery", "g", "--port", "http"], "--port: not a number: 'http'"),
        (["search", "a.wav", "--gallery", "g", "--k", "2.5"], "--k: needs a whole number, got '2.5'"),
        (["serve", "--gallery", "g", "--workers", "1e3"], "--workers: needs a whole number, got '1e3'"),
    ],
)  # fmt: skip
def test_bad_numbers_are_usage_errors(argv, wanted, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].endswith(wanted), err
    assert "Traceback" not in err


def test_good_ports_parse():
    from songsight.cli import build_parser

    for text in ("1", "8000", "65535"):
        assert build_parser().parse_args(["serve", "--gallery", "g", "--port", text]).port == int(
            text
        )


# ---- photos gone from disk -------------------------------------------------------------------


class StoredGallery(FakeGallery):
    """A `FakeGallery` with `Gallery`'s ``metadata["path"]`` column (photo paths in id order)."""

    def __init__(self, paths, labels):
        super().__init__(paths, labels)
        self.metadata = {"path": [str(p) for p in paths]}


def test_serve_says_at_start_which_photos_are_gone(monkeypatch, gallery, capsys):
    import uvicorn

    import songsight.retrieval.searcher

    stored = StoredGallery(gallery.paths, gallery.labels)
    for path in gallery.paths[:4]:
        path.unlink()
    ran = {}

    class Searcher(FakeSearcher):
        def __init__(self, gallery_dir, model=None, **options):
            super().__init__(stored)

    monkeypatch.setattr(songsight.retrieval.searcher, "Searcher", Searcher)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(app=app, **kw))
    from songsight.serve import serve

    serve("my/gallery", "127.0.0.1", 8123)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if "no longer on disk" in line]
    assert len(lines) == 1, captured.err
    assert "4 of 6 photos" in lines[0] and "songsight index check --gallery my/gallery" in lines[0]
    assert "no longer on disk" not in captured.out
    client = TestClient(ran["app"])
    assert client.get("/api/health").json()["missing_photos"] == 4
    body = assert_clean_error(client.get("/api/images/0"), 404)
    assert body["error"] == "image_missing"
    assert "gone from the server's disk" in body["message"]
    assert client.get("/api/images/5").status_code == 200


def test_no_note_when_every_photo_is_there(monkeypatch, gallery, capsys):
    import uvicorn

    import songsight.retrieval.searcher

    class Searcher(FakeSearcher):
        def __init__(self, gallery_dir, model=None, **options):
            super().__init__(StoredGallery(gallery.paths, gallery.labels))

    monkeypatch.setattr(songsight.retrieval.searcher, "Searcher", Searcher)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    from songsight.serve import serve

    serve("my/gallery", "127.0.0.1", 8123)
    assert "on disk" not in capsys.readouterr().err


def test_health_counts_missing_photos_of_a_real_gallery(tiny_gallery, tiny_models, uploads):
    from songsight.gallery import Gallery
    from songsight.retrieval.searcher import Searcher

    Gallery(tiny_gallery.directory).image_path(1).unlink()
    searcher = Searcher(tiny_gallery.directory, audio_model=tiny_models[0], device="cpu")
    client = TestClient(create_app(searcher, temp_dir=uploads))
    assert client.get("/api/health").json()["missing_photos"] == 1
    assert client.app.state.missing_photos[0][0] == 1
