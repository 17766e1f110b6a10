"""The page in a real browser: headless Chromium (Playwright) against uvicorn on a free port.

Uploads a simulated recording of two species, waits for the results, checks the photos and
species names the page shows against what the searcher answered (the search's body is the
CLI's list of records; duration, sample rate and the spectrogram come in response headers), clicks through the timeline,
records through Chromium's fake microphone (MediaRecorder -> WAV in the page -> upload), and
saves a screenshot under the pytest tmp dir (also to ``$SONGSIGHT_SCREENSHOT`` when set).
Skips, saying why, when Playwright or Chromium is missing; nothing is downloaded.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip install playwright)"
)

from songsight.retrieval.results import Hit, SpeciesScore, WindowResult  # noqa: E402
from songsight.serve.app import create_app  # noqa: E402
from songsight.sim.calls import render_call  # noqa: E402
from songsight.sim.photos import render_photo  # noqa: E402
from songsight.sim.world import WorldConfig, build_world, item_rng  # noqa: E402
from tests.helpers import FakeGallery, free_port  # noqa: E402

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # A fake microphone (a beep) and no permission prompt, for the recording path.
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
]  # fmt: skip
SPECIES_SHOWN = 4
PHOTOS_EACH = 3
WINDOW_S = 4.0
K = 8


def chromium_path() -> str:
    """``$SONGSIGHT_CHROMIUM`` if set, else Debian's /usr/bin/chromium or one on PATH."""
    wanted = os.environ.get("SONGSIGHT_CHROMIUM")
    candidates = [wanted] if wanted else ["/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")]  # fmt: skip
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip(
        f"Chromium not found ({wanted or 'chromium'}): apt-get install chromium "
        "(scripts/ci_browser_deps.sh)"
    )


# ---- a searcher over simulated species: names the species whose song band is loudest --------


class BandSearcher:
    """`Searcher`'s interface and result types: the species whose song band is loudest wins.

    Like the real one: the whole recording first (``window`` None), then each window.
    """

    answered_by = "distilled"

    def __init__(self, gallery: FakeGallery, names: list[tuple[str, str]], bands_hz: list[tuple]):
        self.gallery, self.names, self.bands_hz = gallery, names, bands_hz
        self.answers: list[list[WindowResult]] = []

    def search(self, recordings, k=10, window_s=None, hop_s=None) -> list[WindowResult]:
        window_s = window_s or WINDOW_S
        out = []
        for r, (waveform, rate) in enumerate(recordings):
            n = int(window_s * rate)
            out.append(self._answer(waveform, rate, 0.0, None, k, r))
            if len(waveform) > n:
                for i, start in enumerate(range(0, len(waveform) - n // 2, n)):
                    out.append(
                        self._answer(waveform[start : start + n], rate, start / rate, i, k, r)
                    )
        self.answers.append(out)
        return out

    def _answer(self, chunk, rate, start_s, window, k, r) -> WindowResult:
        power = np.abs(np.fft.rfft(chunk)) ** 2
        freqs = np.fft.rfftfreq(len(chunk), 1 / rate)
        energy = np.array([power[(freqs >= lo) & (freqs <= hi)].mean() for lo, hi in self.bands_hz])
        share = energy / energy.sum()
        species = [
            SpeciesScore(self.names[j][0], float(share[j]), "species", int(j), self.names[j][1])
            for j in np.argsort(-share)
        ]
        labels = self.gallery.labels
        scored = sorted(
            ((0.55 * share[lab] + 0.3 - 0.01 * n, n) for n, lab in enumerate(labels)), reverse=True
        )
        hits = [
            Hit(
                n,
                str(self.gallery.paths[n]),
                round(float(s), 4),
                *self.names[labels[n]][:1],
                labels[n],
                self.names[labels[n]][1],
            )
            for s, n in scored[:k]
        ]
        end_s = start_s + len(chunk) / rate
        return WindowResult(
            f"<array {r}>", start_s, end_s, hits, species, window, None, "distilled"
        )


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world_files(tmp_path_factory):
    """A gallery of simulated photos, its searcher, and a recording: species A, B, then A."""
    root = tmp_path_factory.mktemp("browser")
    world = build_world(WorldConfig.quick(image_size=192, distractors_per_10s=0.0))
    # Species whose song centres lie apart, so each window has one clear answer.
    chosen: list[int] = []
    for label in np.argsort([a.centre_hz for a in world.acoustic]):
        if all(world.acoustic[label].centre_hz > 1.3 * world.acoustic[c].centre_hz for c in chosen):
            chosen.append(int(label))
    chosen = chosen[:SPECIES_SHOWN]
    assert len(chosen) == SPECIES_SHOWN
    paths, labels = [], []
    for i, label in enumerate(chosen):
        for j in range(PHOTOS_EACH):
            path = root / "gallery" / f"{world.species[label].code}-{j}.jpg"
            path.parent.mkdir(exist_ok=True)
            sf_image = render_photo(world, label, item_rng(0, "browser-photo", label, j), "nabirds")
            from PIL import Image

            Image.fromarray(sf_image).save(path, quality=92)
            paths.append(path)
            labels.append(i)
    names = [(world.species[c].scientific_name, world.species[c].common_name) for c in chosen]
    bands = [(world.acoustic[c].centre_hz / 1.2, world.acoustic[c].centre_hz * 1.2) for c in chosen]
    searcher = BandSearcher(FakeGallery(paths, labels), names, bands)
    rate = world.config.sample_rate_hz
    parts = [
        render_call(world, chosen[i], item_rng(0, "browser-call", i, n), WINDOW_S)
        for n, i in enumerate((0, 1, 0))
    ]
    audio = np.concatenate(parts)
    audio = 0.8 * audio / np.abs(audio).max()
    wav = root / "dawn chorus.wav"
    sf.write(wav, audio, rate, subtype="PCM_16")
    return searcher, wav


@pytest.fixture(scope="module")
def server(world_files, tmp_path_factory):
    searcher, _ = world_files
    app = create_app(searcher, temp_dir=tmp_path_factory.mktemp("uploads"))
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, server):
    context = browser.new_context(viewport={"width": 1200, "height": 900}, base_url=server)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def console(msg) -> None:
        # The browser logs every 4xx; only a missing asset (404) or a server failure counts.
        refused = "status of 4" in msg.text and "status of 404" not in msg.text
        if msg.type == "error" and not refused:
            errors.append(msg.text)

    page.on("console", console)
    yield page
    context.close()
    assert errors == [], f"the page logged errors: {errors}"


def shown(page, selector: str) -> list[str]:
    return [t.strip() for t in page.locator(selector).all_inner_texts()]


def images_loaded(page, selector: str) -> bool:
    return page.eval_on_selector_all(
        selector, "els => els.length > 0 && els.every(e => e.complete && e.naturalWidth > 0)"
    )


def eventually(page, condition, what: str, timeout_s: float = 10.0) -> None:
    """Poll ``condition()`` until it holds; fail naming ``what`` after ``timeout_s``.

    For state the page sets from asynchronous media events (a seek, a playhead), where
    asserting right after the click races the event.
    """
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        page.wait_for_timeout(50)


# ---- the tests -------------------------------------------------------------------------------


def test_upload_shows_photos_species_and_timeline(page, world_files, tmp_path):
    searcher, wav = world_files
    page.goto("/")
    # Locator waits, not wait_for_function: the page's CSP (rightly) forbids string eval.
    sync_api.expect(page.locator("#health")).to_contain_text("photos")
    n_photos = SPECIES_SHOWN * PHOTOS_EACH
    assert page.inner_text("#health") == f"{n_photos} photos in the gallery · answered by distilled"
    page.select_option("#k", str(K))
    page.set_input_files("#file", str(wav))
    page.wait_for_selector(".photo img", timeout=20_000)
    answer = searcher.answers[-1]
    assert [r.window for r in answer] == [None, 0, 1, 2]  # the whole clip, then A, B, A

    def common(items) -> list[str]:
        return [x.common_name for x in items]

    # The body is the CLI's list; duration, rate and the spectrogram come from the headers.
    assert page.inner_text("#rec-name") == wav.name
    rate_hz = sf.info(str(wav)).samplerate
    duration_s = 3 * WINDOW_S
    assert page.inner_text("#rec-meta") == f"{duration_s:g} s · {rate_hz / 1000:.1f} kHz"
    assert page.inner_text("#fmax") == f"{min(12_000, rate_hz / 2) / 1000:.0f} kHz"
    assert page.get_attribute("#spectro-img", "src").startswith("/api/spectrogram/")
    chips = shown(page, "#timeline .chip")
    assert chips[0].startswith("Whole recording") and chips[2].startswith("4 s – 8 s")
    assert shown(page, "#timeline .chip small") == [r.species[0].common_name for r in answer]
    assert answer[1].species[0].name != answer[2].species[0].name
    # The whole recording is selected first: its photos in the searcher's order, its species.
    assert page.inner_text("#window-title") == "The whole recording"
    assert shown(page, ".photo .species-name") == common(answer[0].hits)
    assert shown(page, ".photo .sci") == [h.species for h in answer[0].hits]
    assert len(shown(page, ".photo .species-name")) == K
    assert shown(page, "#species .name span:first-child") == common(answer[0].species)
    eventually(
        page,
        lambda: images_loaded(page, ".photo img") and images_loaded(page, "#spectro-img"),
        "the photos and the spectrogram to load",
    )
    assert page.get_attribute("#player", "src").startswith("blob:")
    assert page.locator("#selection").is_hidden()

    # Clicking a window shows its hits and marks it on the spectrogram.
    for i in (1, 2):
        page.locator("#timeline .chip").nth(i).click()
        assert page.get_attribute(f"#timeline .chip >> nth={i}", "aria-selected") == "true"
        assert shown(page, ".photo .species-name") == common(answer[i].hits)
        assert shown(page, "#species .name span:first-child") == common(answer[i].species)
    assert page.inner_text("#window-title") == "Window 4 s – 8 s"
    box = page.locator("#selection").bounding_box()
    spectro = page.locator("#spectro").bounding_box()
    assert box["x"] - spectro["x"] == pytest.approx(spectro["width"] / 3, abs=3)

    # Clicking the spectrogram at 70% (8.4 s) picks the window there and seeks the player.
    spectro = page.locator("#spectro")
    spectro.click(position={"x": 0.7 * spectro.bounding_box()["width"], "y": 20})
    assert page.get_attribute("#timeline .chip >> nth=3", "aria-selected") == "true"
    # The seek completes and the playhead moves on the player's 'seeked' event, later than the
    # click returns: wait for the condition, then assert it.
    eventually(
        page,
        lambda: (
            page.eval_on_selector("#player", "p => p.currentTime") == pytest.approx(8.4, abs=0.1)
        ),
        "the player to seek to 8.4 s",
    )
    spectro_box = spectro.bounding_box()

    def head_offset() -> float | None:
        head = page.locator("#playhead").bounding_box()
        return None if head is None else head["x"] - spectro_box["x"]

    eventually(
        page,
        lambda: head_offset() == pytest.approx(0.7 * spectro_box["width"], abs=4),
        "the playhead to move to 70% of the spectrogram",
    )
    page.locator("#timeline .chip").nth(2).click()

    shot = tmp_path / "songsight-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("SONGSIGHT_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["SONGSIGHT_SCREENSHOT"])


def test_rejected_upload_shows_the_server_message(page, tmp_path):
    fake = tmp_path / "not-audio.wav"
    fake.write_bytes(b"RIFF\x24\x00\x00\x00WAVEthis is not really a wav file" * 8)
    page.goto("/")
    page.set_input_files("#file", str(fake))
    page.wait_for_selector("#status.error", timeout=10_000)
    text = page.inner_text("#status")
    assert "not a recording this server reads" in text and "request" in text
    assert page.locator("#results").is_hidden()


def test_recording_is_converted_to_wav_and_searched(page, world_files):
    searcher, _ = world_files
    page.goto("/")
    if page.is_disabled("#record"):
        pytest.skip("this Chromium offers no MediaRecorder / microphone")
    before = len(searcher.answers)
    page.click("#record")
    sync_api.expect(page.locator("#record")).to_have_text(re.compile(r"^Stop"))
    page.wait_for_timeout(1500)
    page.click("#record")
    page.wait_for_selector(".photo img", timeout=20_000)
    assert len(searcher.answers) == before + 1
    assert page.inner_text("#rec-name") == "recording.wav"
    meta = page.inner_text("#rec-meta")
    assert " s ·" in meta and "kHz" in meta


# ---- the demo's report page: HTML tables, embedded figures, example calls ---------------------


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    """The demo's report.html over a small rendered world: real photos and calls on disk,
    embeddings that cluster by species, and the real evaluation scoring and figures."""
    import pandas as pd
    from PIL import Image

    from songsight.eval.audio_to_image import chance_queries, score_retrieval
    from songsight.eval.figures import write_figures
    from songsight.eval.outputs import save_store
    from songsight.sim.demo import write_html_report
    from songsight.taxonomy import Species, write_species_csv

    root = tmp_path_factory.mktemp("report")
    world = build_world(WorldConfig.quick(image_size=96, distractors_per_10s=0.0))
    n_species, photos, calls = 4, 3, 2
    species = [
        Species(i, world.species[i].scientific_name, world.species[i].common_name)
        for i in range(n_species)
    ]
    (root / "world" / "images").mkdir(parents=True)
    (root / "world" / "audio").mkdir()
    write_species_csv(species, root / "world" / "taxa.csv")
    rate = world.config.sample_rate_hz
    gallery, queries = [], []
    for i in range(n_species):
        for j in range(photos):
            path = root / "world" / "images" / f"{i}-{j}.jpg"
            photo = render_photo(world, i, item_rng(1, "report", i, j), "nabirds")
            Image.fromarray(photo).save(path)
            gallery.append((str(path), i))
        for j in range(calls):
            path = root / "world" / "audio" / f"{i}-{j}.wav"
            sf.write(path, render_call(world, i, item_rng(1, "report-call", i, j), 3.0), rate)
            queries.append((str(path), i))
    g_df = pd.DataFrame(gallery, columns=["path", "label"]).assign(source="nabirds")
    q_df = pd.DataFrame(queries, columns=["path", "label"])
    rng = np.random.default_rng(0)
    centres = chance_queries(n_species, 16, 1)
    g_emb = centres[g_df["label"]] + 0.3 * rng.standard_normal((len(g_df), 16))
    q_labels = q_df["label"].to_numpy()
    methods = {
        "chance": chance_queries(len(q_df), 16, 2),
        "cascade_top1": centres[(q_labels + (np.arange(len(q_df)) % 3 == 0)) % n_species],
        "distilled": centres[q_labels] + 0.5 * rng.standard_normal((len(q_df), 16)),
        "oracle": centres[q_labels],
    }
    g_emb = g_emb / np.linalg.norm(g_emb, axis=1, keepdims=True)
    methods = {m: q / np.linalg.norm(q, axis=1, keepdims=True) for m, q in methods.items()}
    scored = score_retrieval(methods, q_labels, g_emb, g_df["label"].to_numpy(), n_boot=50)
    sims = scored.pop("_similarity")
    results = {
        "format_version": 1,
        "retrieval": {"gallery": "all", "methods": list(methods), **scored},
        "species": [{"label": s.label, "common_name": s.common_name,
                     "scientific_name": s.scientific_name} for s in species],
        "data": {"counts": {"species": n_species, "queries": len(q_df),
                            "gallery": {"all": len(g_df), "nabirds": len(g_df), "inat": 0}}},
        "template_selection": {"prompt_format": "com", "n": 8, "chosen": "{common} singing",
                               "candidates": [{"spec": "sound", "templates": ["{}"] * 4, "top1": 0.25},
                                              {"spec": "{common} singing", "templates": ["{common} singing"], "top1": 0.5}]},
    }  # fmt: skip
    save_store(root / "embeddings" / "gallery.parquet", g_df, g_emb.astype(np.float32), {})
    save_store(root / "embeddings" / "queries_distilled.parquet", q_df,
               methods["distilled"].astype(np.float32), {})  # fmt: skip
    write_figures(results, sims, q_df, g_df, root / "results_figures", n_examples=2)
    page = write_html_report(root, root / "world", results, {"teacher_zero_shot": 0.9, "student_zero_shot": 0.4})  # fmt: skip
    return page, results


def test_report_page_shows_tables_figures_and_calls(browser, demo_report, tmp_path):
    from songsight.eval.report_tables import LABELS, RETRIEVAL_ROWS

    report, results = demo_report
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(report.as_uri())
    assert page.locator("pre").count() == 0  # no Markdown shown raw any more

    # The audio-to-image table: one row per method, values as RESULTS.json has them.
    ret = results["retrieval"]
    table = page.locator("#results table").first
    rows = [[c.strip() for c in r] for r in table.locator("tbody tr").evaluate_all(
        "rows => rows.map(r => Array.from(r.cells, c => c.innerText))")]  # fmt: skip
    expected = [m for m in RETRIEVAL_ROWS if m in ret["audio_to_image"] or m == "original"]
    assert [r[0] for r in rows] == [LABELS[m] for m in expected]
    for method, row in zip(expected, rows, strict=True):
        if method == "original":
            assert row[1] == "n/a"
            continue
        ci = ret["audio_to_image_ci"][method]["map"]
        pct = [f"{100 * ci[k]:.1f}" for k in ("mean", "ci_low", "ci_high")]
        assert row[1] == f"{pct[0]} [{pct[1]}, {pct[2]}]"
        assert row[2] == f"{100 * ret['audio_to_image'][method]['recall@1']:.1f}"
    assert table.locator("td.num").first.evaluate("c => getComputedStyle(c).textAlign") == "right"
    # The template choice, the chosen one marked.
    choice = page.locator("#results table").last.locator("tbody tr")
    assert choice.count() == 2 and "✔" in choice.nth(1).inner_text()

    # The figures are in the page itself (data URIs) and decode.
    figures = page.locator("#figures figure img")
    assert figures.count() == 2
    sources = figures.evaluate_all("i => i.map(x => x.src)")
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    eventually(page, lambda: images_loaded(page, "#figures figure img"), "the figures to decode")
    assert "95% bootstrap" in page.inner_text("#figures")

    # Example calls as before: spectrogram, player, five photos framed by correctness.
    cards = page.locator("#examples .card")
    assert cards.count() == 6
    assert page.locator("#examples audio").count() == 6
    eventually(page, lambda: images_loaded(page, "#examples img"), "the example photos to load")
    card = cards.first
    species = card.locator("h3").inner_text()
    for hit in card.locator(".hits figure").all():
        assert (hit.get_attribute("class") == "ok") == hit.inner_text().startswith(species)

    shot = tmp_path / "songsight-report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("SONGSIGHT_REPORT_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["SONGSIGHT_REPORT_SCREENSHOT"])
    context.close()
    assert errors == [], errors
