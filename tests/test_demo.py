"""`songsight demo --quick`: the whole job end to end in the simulated world, offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import must_not_run

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
    # The results as HTML tables, not Markdown in <pre>; both figures embedded in the page.
    assert "<pre" not in page and page.count("<table>") >= 4 and "| Method |" not in page
    assert page.count('<figure><img src="data:image/png;base64,') == 2


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


def test_cached_rerun_does_no_work_and_evaluation_is_deterministic(demo, monkeypatch):
    import songsight.distill.train
    import songsight.eval.tasks
    import songsight.sim.export
    import songsight.sim.pretrain
    from songsight.sim.demo import run_demo

    before = json.loads((demo / "results.json").read_text())["retrieval"]["audio_to_image"]
    # Everything cached: world, stand-ins, distilled model, results; none is made again.
    # (How long the cached rerun takes is benchmarks/cli_latency.py --demo's to print.)
    with monkeypatch.context() as patch:
        for module, name in [
            (songsight.sim.export, "export_world"),
            (songsight.sim.pretrain, "unpack_asset"),
            (songsight.sim.pretrain, "train_stand_in"),
            (songsight.sim.pretrain, "_spawn_teacher"),
            (songsight.distill.train, "distill"),
            (songsight.eval.tasks, "run_evaluation"),
        ]:
            patch.setattr(module, name, must_not_run(name))
        cached = run_demo(demo, quick=True)["retrieval"]["audio_to_image"]
    assert cached == before
    (demo / "results.key").unlink()  # force the evaluation to run again on the same models
    again = run_demo(demo, quick=True)["retrieval"]["audio_to_image"]
    for method, metrics in before.items():
        assert again[method]["map"] == pytest.approx(metrics["map"], abs=1e-9), method


def test_printed_next_steps_run_the_product_on_the_demo_world(demo, tmp_path):
    """The commands the demo prints (gallery, search) run as printed, pasted into a shell of a
    fresh clone: no virtual environment active, no songsight on PATH, another working folder."""
    import os
    import shlex
    import subprocess
    import sys

    from songsight.cli import build_parser
    from songsight.sim.demo import next_steps

    text = next_steps(demo, demo / "world")
    lines = [line.strip() for line in text.splitlines() if line.startswith("  ")]
    commands = [shlex.split(line) for line in lines]
    subcommand = 1 if Path(commands[0][0]).name.startswith("songsight") else 3  # or python -m
    assert [c[subcommand] for c in commands] == ["index", "search", "serve"]
    assert all(Path(c[0]).is_absolute() and os.access(c[0], os.X_OK) for c in commands)
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"} | {"PATH": path}
    which = subprocess.run(["sh", "-c", "command -v songsight"], env=env, capture_output=True)
    assert which.returncode != 0  # the premise: a plain `songsight` would not be found

    def run(line: str):
        return subprocess.run(["sh", "-c", line], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=600)  # fmt: skip

    index, search, serve = lines
    proc = run(f"{index} --quiet")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "hits.json"
    proc = run(f"{search} --format json --out {shlex.quote(str(out))} --quiet")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert results and all(r["hits"] and r["species"] for r in results if not r.get("error"))
    from songsight.encoders.distilled import read_meta

    chosen = read_meta(demo / "models" / "distilled")["readout"]["method"]
    assert all(r["answered_by"] == chosen for r in results)  # the validated readout
    # serve would block: its arguments parse as the CLI's.
    args = build_parser().parse_args(commands[2][subcommand:])
    assert args.command == "serve" and Path(args.model).is_dir()
