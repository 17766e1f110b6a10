"""The server's wait queue and micro-batching (`songsight.serve.batching`).

Searches are held back with a gate on the searcher (never with sleeps), so which searches wait
together, and so share a batch, is decided by the test, not by the machine's speed. The
reference for every batched answer is the same search run alone.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from songsight.serve.app import create_app  # noqa: E402
from tests import test_serve  # noqa: E402
from tests.helpers import tone  # noqa: E402
from tests.test_serve import SPECIES, TONE_AMP, TONES_HZ, FakeSearcher, assert_clean_error, encode  # noqa: E402

# test_serve's fixtures, used here by name.
gallery, searcher, uploads = test_serve.gallery, test_serve.searcher, test_serve.uploads
tiny_gallery = test_serve.tiny_gallery


def wait_until(condition, what: str, limit_s: float = 20.0) -> None:
    """Poll until ``condition()``; the limit only stops a broken test from hanging."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.005)


def wav(label: int, seconds: float = 1.0, rate_hz: int = 16_000) -> bytes:
    return encode(tone([TONES_HZ[label]], seconds, rate_hz, TONE_AMP), "WAV", "PCM_16", rate_hz)


def post(client, data: bytes, **fields):
    return client.post("/api/search", files={"audio": ("bird.wav", data)}, data=fields)


def ok_body(response) -> list[dict]:
    assert response.status_code == 200, response.text
    return response.json()


class GatedFirst:
    """Hold the first call of ``fn`` until ``release`` is set; later calls run freely."""

    def __init__(self, fn):
        self.fn, self.release, self.entered, self.first = (
            fn,
            threading.Event(),
            threading.Event(),
            True,
        )

    def __call__(self, *args, **kwargs):
        if self.first:
            self.first = False
            self.entered.set()
            self.release.wait(30)
        return self.fn(*args, **kwargs)


def test_full_queue_is_503_with_retry_after_and_the_waiting_are_answered(searcher, uploads):
    searcher.search = GatedFirst(searcher.search)
    with TestClient(create_app(searcher, temp_dir=uploads, max_queue=2)) as client:
        queue = client.app.state.queue
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, client, wav(0))
            wait_until(searcher.search.entered.is_set, "the first search started")
            second = pool.submit(post, client, wav(1))
            wait_until(lambda: queue.depth == 1, "the second search waits")
            # The waiting search is a file on disk, not audio in memory.
            assert len(list(uploads.iterdir())) == 2
            health = client.get("/api/health").json()
            assert health["queue"] == {**health["queue"], "depth": 1, "running": 1, "admitted": 2}
            assert health["busy"] is True
            refused = post(client, wav(2))
            assert assert_clean_error(refused, 503)["error"] == "busy"
            assert int(refused.headers["retry-after"]) >= 1
            searcher.search.release.set()
            answers = [first.result(30), second.result(30)]
        for response, label in zip(answers, (0, 1), strict=True):
            assert ok_body(response)[0]["species"][0]["name"] == SPECIES[label]
        # A slot is given back once its response has gone out, which the client may see first.
        wait_until(lambda: queue.admitted == queue.depth == queue.running == 0, "every slot given back")  # fmt: skip
        assert queue.admitted == queue.depth == queue.running == 0


def test_waiting_searches_share_one_call_and_get_their_own_answers(searcher, uploads):
    labels = [0, 1, 2, 1, 0]
    clips = [wav(label, seconds=1.0 + 0.5 * i) for i, label in enumerate(labels)]
    alone = FakeSearcher(searcher.gallery)
    with TestClient(create_app(alone, temp_dir=uploads, max_batch=1)) as client:
        reference = [ok_body(post(client, c, k="3")) for c in clips]
    assert [c["n"] for c in alone.calls] == [1] * len(clips)

    searcher.search = GatedFirst(searcher.search)
    with TestClient(create_app(searcher, temp_dir=uploads, max_batch=4)) as client:
        queue = client.app.state.queue
        with ThreadPoolExecutor(len(clips)) as pool:
            futures = [pool.submit(post, client, clips[0], k="3")]
            wait_until(searcher.search.entered.is_set, "the first search started")
            futures += [pool.submit(post, client, c, k="3") for c in clips[1:]]
            wait_until(lambda: queue.depth == 4, "four searches wait")
            searcher.search.release.set()
            batched = [ok_body(f.result(30)) for f in futures]
        health = client.get("/api/health").json()["queue"]
    # One call for the first, one for the four that waited together.
    calls = searcher.calls
    assert [c["n"] for c in calls] == [1, 4]
    assert health["batches"] == 2 and health["searches"] == 5 and health["largest_batch"] == 4
    assert batched == reference


def test_searches_with_other_options_do_not_share_a_call(searcher, uploads):
    searcher.search = GatedFirst(searcher.search)
    with TestClient(create_app(searcher, temp_dir=uploads, max_batch=8)) as client:
        queue = client.app.state.queue
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(post, client, wav(0), k="2")]
            wait_until(searcher.search.entered.is_set, "the first search started")
            futures += [pool.submit(post, client, wav(i % 3), k=k) for i, k in enumerate("232")]
            wait_until(lambda: queue.depth == 3, "three searches wait")
            searcher.search.release.set()
            bodies = [ok_body(f.result(30)) for f in futures]
    calls = searcher.calls
    assert sorted((c["k"], c["n"]) for c in calls[1:]) == [(2, 2), (3, 1)]
    assert [len(b[0]["hits"]) for b in bodies] == [2, 2, 3, 2]


def test_a_waiting_search_whose_client_gave_up_is_dropped(searcher, uploads):
    searcher.search = GatedFirst(searcher.search)
    app = create_app(searcher, temp_dir=uploads, request_timeout_s=0.5)
    with TestClient(app) as client:
        queue = client.app.state.queue
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, client, wav(0))
            wait_until(searcher.search.entered.is_set, "the first search started")
            second = pool.submit(post, client, wav(1))
            assert_clean_error(first.result(30), 504)
            assert_clean_error(second.result(30), 504)
        searcher.search.release.set()
        wait_until(lambda: queue.admitted == 0, "every place is given back")
    assert len(searcher.calls) == 1  # the second never ran


def test_real_searcher_batches_forward_passes_across_requests(uploads, tiny_models, tiny_gallery):
    """Concurrent searches with the real `Searcher` (tiny models): the waiting ones share the
    encoder's forward passes, and each answer equals the same search run alone."""
    from songsight.retrieval.searcher import Searcher

    real = Searcher(tiny_gallery, audio_model=tiny_models[0], device="cpu", batch_size=16)
    rate_hz = real.sample_rate_hz
    clips = [
        encode(tone([TONES_HZ[i % 3]], 1.5 + i, rate_hz, TONE_AMP), "WAV", "PCM_16", rate_hz)
        for i in range(4)
    ]
    reference = []
    with TestClient(create_app(real, temp_dir=uploads, max_batch=1)) as client:
        reference = [ok_body(post(client, c, k="2")) for c in clips]

    forward = real.encoder._forward
    sizes: list[int] = []

    def counted(batch):
        sizes.append(len(batch))
        return forward(batch)

    gated = GatedFirst(counted)
    real.encoder._forward = gated
    try:
        with TestClient(create_app(real, temp_dir=uploads, max_batch=8)) as client:
            queue = client.app.state.queue
            with ThreadPoolExecutor(len(clips) + 1) as pool:
                futures = [pool.submit(post, client, clips[0], k="2")]
                wait_until(gated.entered.is_set, "the first forward pass started")
                futures += [pool.submit(post, client, c, k="2") for c in clips]
                wait_until(lambda: queue.depth == len(clips), "the others wait")
                gated.release.set()
                batched = [ok_body(f.result(60)) for f in futures]
    finally:
        del real.encoder._forward
    windows_alone = [len(r) - 1 if len(r) > 1 else 1 for r in reference]
    # The waiting searches' windows went through one forward pass together.
    assert sizes[1:] == [sum(windows_alone)]
    for got, want in zip(batched, [reference[0], *reference], strict=True):
        assert [(r["window"], r["start_s"], r["end_s"]) for r in got] == [
            (r["window"], r["start_s"], r["end_s"]) for r in want
        ]
        for g, w in zip(got, want, strict=True):
            assert [h["image_id"] for h in g["hits"]] == [h["image_id"] for h in w["hits"]]
            assert np.allclose([h["score"] for h in g["hits"]], [h["score"] for h in w["hits"]],
                               atol=1e-5)  # fmt: skip
            assert [s["name"] for s in g["species"]] == [s["name"] for s in w["species"]]
