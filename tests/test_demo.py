"""`songsight demo --quick`: the whole job end to end in the simulated world, offline."""

from __future__ import annotations

import json

import numpy as np
import pytest

LEARNED = (
    "cascade_top1",
    "cascade_weighted",
    "map_ridge",
    "map_procrustes",
    "map_mlp",
    "distilled",
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from songsight.cli import main

    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    return out


def test_quick_demo_writes_the_contract(demo):
    assert (demo / "report.html").is_file()
    results = json.loads((demo / "results.json").read_text())
    assert set(results["retrieval"]["audio_to_image"]) >= {"chance", "oracle", *LEARNED}
    for name in ("taxa.csv", "audio_ml.csv", "images_nabirds.csv", "images_inat.csv"):
        assert (demo / "world" / name).is_file()
    from songsight.data.ssw60 import SSW60

    assert len(SSW60(demo / "world").audio("test")) > 0
    page = (demo / "report.html").read_text()
    assert "<audio" in page and page.count('class="ok"') + page.count('class="no"') >= 5


def test_every_method_clears_chance_and_none_beats_the_oracle(demo):
    """Audio-to-image mAP: each method at least 5 points above chance with its 95% bootstrap
    interval above chance's estimate, and none above the oracle."""
    retrieval = json.loads((demo / "results.json").read_text())["retrieval"]
    a2i, ci = retrieval["audio_to_image"], retrieval["audio_to_image_ci"]
    chance, oracle = a2i["chance"]["map"], a2i["oracle"]["map"]
    assert oracle > chance + 0.2
    for method in LEARNED:
        value = a2i[method]["map"]
        assert value >= chance + 0.05, (method, value, chance)
        assert ci[method]["map"]["ci_low"] > chance, (method, ci[method]["map"], chance)
        assert value <= oracle + 1e-9, (method, value, oracle)


def test_models_load_through_the_real_loaders(demo):
    from songsight.encoders.bioclip import BioCLIPEncoder
    from songsight.encoders.biolingual import BioLingualEncoder
    from songsight.encoders.distilled import DistilledEncoder

    models = demo / "models"
    teacher = BioCLIPEncoder(models / "teacher", device="cpu")
    student = BioLingualEncoder(models / "student", device="cpu")
    distilled = DistilledEncoder(models / "distilled", device="cpu")
    clip = sorted((demo / "world" / "audio_ml").glob("*.wav"))[0]
    a = distilled.embed_audio([clip])
    assert a.shape == (1, teacher.dim)
    assert student.embed_audio([clip]).shape == (1, student.dim)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_cached_rerun_is_fast_and_evaluation_is_deterministic(demo):
    import time

    from songsight.sim.demo import run_demo

    before = json.loads((demo / "results.json").read_text())["retrieval"]["audio_to_image"]
    t0 = time.time()
    run_demo(demo, quick=True)  # everything cached: world, stand-ins, distilled model, results
    assert time.time() - t0 < 60
    (demo / "results.key").unlink()  # force the evaluation to run again on the same models
    again = run_demo(demo, quick=True)["retrieval"]["audio_to_image"]
    for method, metrics in before.items():
        assert again[method]["map"] == pytest.approx(metrics["map"], abs=1e-9), method


def test_printed_next_steps_run_the_product_on_the_demo_world(demo, tmp_path):
    """The commands the demo prints (gallery, search) work as printed, with the demo's models."""
    import shlex

    from songsight.cli import main
    from songsight.sim.demo import next_steps

    text = next_steps(demo, demo / "world")
    commands = [shlex.split(line) for line in text.splitlines() if line.startswith("  songsight")]
    assert [c[1] for c in commands] == ["index", "search", "serve"]
    index, search, _ = commands
    assert main([*index[1:], "--quiet"]) == 0
    out = tmp_path / "hits.json"
    assert main([*search[1:], "--format", "json", "--out", str(out), "--quiet"]) == 0
    results = json.loads(out.read_text())
    assert results and all(r["hits"] and r["species"] for r in results if not r.get("error"))
    assert all(r["answered_by"] == "distilled" for r in results)
