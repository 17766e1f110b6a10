"""``songsight embed audio|images``: folders in, Parquet with provenance out, errors aside, resumable.

Runs ``songsight.cli.main`` in-process on the tiny models (one subprocess run at the end).
"""

from __future__ import annotations

import csv
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from PIL import Image

from songsight.cli import main
from songsight.encoders.image_batches import BatchedImageEncoder
from songsight.encoders.windows import WindowedAudioEncoder
from songsight.index.store import load_embeddings, read_provenance
from songsight.inputs.audio import window_bounds
from songsight.provenance import package_version
from tests.helpers import interrupt_after, tone

RATE = 16_000


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def audio_tree(tmp_path):
    """A nested folder of good recordings, one bad file, one silent file and a stray text file."""
    root = tmp_path / "recordings"
    (root / "site_a" / "deep").mkdir(parents=True)
    (root / "site_b").mkdir()
    good = {
        root / "r0.wav": (tone(600, 1.25, RATE), RATE),
        root / "site_a" / "r1.flac": (tone(900, 3.125, RATE), RATE),
        root / "site_a" / "deep" / "r2.wav": (tone(1500, 30_000 / 22_050, 22_050), 22_050),
        root / "site_b" / "r3.ogg": (tone(2000, 1.0, RATE), RATE),
    }
    for path, (wave, rate) in good.items():
        sf.write(path, wave, rate)
    silent = root / "site_b" / "quiet.wav"
    sf.write(silent, np.zeros(8_000, np.float32), RATE)
    bad = root / "site_b" / "broken.wav"
    bad.write_text("this is not audio")
    (root / "site_a" / "notes.txt").write_text("not media, not walked")
    return root, sorted([*good, silent]), bad


def run(argv: list) -> int:
    return main([str(a) for a in argv])


def audio_args(paths, out, model, *extra):
    return ["embed", "audio", *paths, "--out", out, "--audio-model", model, "--device", "cpu", "--quiet",
            "--batch-size", "4", *extra]  # fmt: skip


def test_embed_audio_folder(audio_tree, tiny_models, tiny_audio_encoder, tmp_path, capsys):
    root, good, bad = audio_tree
    out = tmp_path / "out" / "audio.parquet"
    assert run(audio_args([root], out, tiny_models[0])) == 1  # one file failed, the rest are stored
    assert "1 failed" in capsys.readouterr().out

    meta, vectors, prov = load_embeddings(out)
    columns = {"path", "sha256", "embedding", "start_s", "end_s", "window", "duration_s", "silent"}
    assert columns <= set(pq.read_schema(out).names)
    # Walked recursively; the .txt is not walked; the bad file is left out.
    assert sorted(set(meta["path"])) == sorted(map(str, good))
    for path in good:
        rows = meta[meta["path"] == str(path)].sort_values("window")
        assert set(rows["sha256"]) == {sha256(path)}
        expected = tiny_audio_encoder.embed_clips([path])[0]
        assert (
            len(rows)
            == len(expected.windows)
            == len(window_bounds(round(expected.duration_s * RATE), RATE, 2.0, 1.0))
        )
        np.testing.assert_allclose(rows["start_s"], expected.starts_s, atol=1e-9)
        np.testing.assert_allclose(rows["end_s"], expected.ends_s, atol=1e-9)
        np.testing.assert_allclose(vectors[rows.index.to_numpy()], expected.windows, atol=1e-5)
        assert bool(rows["silent"].iloc[0]) == (path.name == "quiet.wav")
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    # Provenance in the Parquet metadata.
    assert prov == read_provenance(out)
    assert prov["model_id"] == str(tiny_models[0].resolve())
    assert prov["revision"].startswith("local-")
    assert prov["encoder"] == "biolingual" and prov["dim"] == tiny_audio_encoder.dim
    assert prov["preprocessing"]["window_s"] == 2.0 and prov["preprocessing"]["hop_s"] == 1.0
    assert prov["preprocessing"]["sample_rate_hz"] == RATE
    assert prov["environment"]["songsight"] == package_version() != "unknown"

    # The side file lists the bad file with a reason.
    errors_csv = out.with_name("audio.errors.csv")
    with errors_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows == [{"path": str(bad), "error": rows[0]["error"]}]
    assert "not a readable audio file" in rows[0]["error"]
    assert not out.with_name("audio.parquet.parts").exists()


def test_all_good_exits_zero_without_error_file(audio_tree, tiny_models, tmp_path):
    _, good, _ = audio_tree
    out = tmp_path / "good.parquet"
    assert run(audio_args(good[:2], out, tiny_models[0])) == 0
    assert not (tmp_path / "good.errors.csv").exists()
    meta, _, _ = load_embeddings(out)
    assert sorted(set(meta["path"])) == sorted(map(str, good[:2]))


def test_window_and_hop_options(audio_tree, tiny_models, tmp_path):
    _, good, _ = audio_tree
    flac = next(p for p in good if p.suffix == ".flac")  # 50,000 samples = 3.125 s
    out = tmp_path / "w.parquet"
    assert run(audio_args([flac], out, tiny_models[0], "--window-s", "1", "--hop-s", "0.5")) == 0
    meta, _, prov = load_embeddings(out)
    assert prov["preprocessing"]["window_s"] == 1.0 and prov["preprocessing"]["hop_s"] == 0.5
    assert len(meta) == len(window_bounds(50_000, RATE, 1.0, 0.5)) == 6
    assert meta["end_s"].max() == pytest.approx(3.125)


def test_refusals_exit_2(audio_tree, tiny_models, tmp_path, capsys):
    _, good, _ = audio_tree
    out = tmp_path / "o.parquet"
    assert run(audio_args(good[:1], out, tiny_models[0])) == 0
    before = out.read_bytes()
    capsys.readouterr()

    # An existing output is not overwritten by surprise.
    assert run(audio_args(good[:1], out, tiny_models[0])) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--resume" in err and "Traceback" not in err
    assert out.read_bytes() == before
    # ...unless asked.
    assert run(audio_args(good[1:3], out, tiny_models[0], "--overwrite")) == 0
    meta, _, _ = load_embeddings(out)
    assert sorted(set(meta["path"])) == sorted(map(str, good[1:3]))

    # Missing input, missing model: nothing can run.
    assert run(audio_args([tmp_path / "nowhere"], tmp_path / "a.parquet", tiny_models[0])) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert run(audio_args(good[:1], tmp_path / "b.parquet", tmp_path / "no-model")) == 2
    assert "model folder not found" in capsys.readouterr().err
    assert run(audio_args(good[:1], tmp_path / "c.parquet", tiny_models[1])) == 2  # an image model
    assert "preprocessor_config.json" in capsys.readouterr().err
    # A window longer than the model's is a bad argument.
    assert run(audio_args(good[:1], tmp_path / "d.parquet", tiny_models[0], "--window-s", "5")) == 2
    assert "exceeds" in capsys.readouterr().err
    # Argument errors: argparse's exit 2.
    with pytest.raises(SystemExit) as info:
        main(["embed", "audio", str(good[0])])  # no --out
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["embed", "video", str(good[0]), "--out", "x.parquet"])
    assert info.value.code == 2
    assert main([]) == 2


@pytest.mark.parametrize(("flag", "value"), [("--window-s", "0"), ("--hop-s", "-1"), ("--hop-s", "nan"),
                                             ("--window-s", "abc"), ("--batch-size", "0")])  # fmt: skip
def test_bad_numbers_are_argument_errors(flag, value, capsys):
    with pytest.raises(SystemExit) as info:
        main(["embed", "audio", "x.wav", "--out", "o.parquet", flag, value])
    assert info.value.code == 2
    assert flag in capsys.readouterr().err


def record_sources(monkeypatch, seen: list):
    original = WindowedAudioEncoder.embed_windows

    def embed_windows(self, sources, *args, **kwargs):
        seen.extend(map(str, sources))
        yield from original(self, sources, *args, **kwargs)

    monkeypatch.setattr(WindowedAudioEncoder, "embed_windows", embed_windows)


def test_resume_after_interruption(audio_tree, tiny_models, tmp_path, capsys):
    root, good, bad = audio_tree
    out = tmp_path / "r.parquet"
    parts = tmp_path / "r.parquet.parts"
    with pytest.MonkeyPatch.context() as mp:
        first: list = []
        interrupt_after(mp, WindowedAudioEncoder, "embed_windows", 3, first)
        assert run(audio_args([root], out, tiny_models[0])) == 130
    assert "--resume" in capsys.readouterr().err
    assert not out.exists() and parts.is_dir()
    done = {str(p) for t in map(pq.read_table, sorted(parts.glob("part-*.parquet")))
            for p in t.column("path").to_pylist()}  # fmt: skip
    assert 1 <= len(done) <= 3 and done <= set(first)  # what finished before the kill was kept

    # A fresh run into the same output is refused; a resume with other settings too.
    assert run(audio_args([root], out, tiny_models[0])) == 2
    assert run(audio_args([root], out, tiny_models[0], "--resume", "--window-s", "1")) == 2
    assert "different settings" in capsys.readouterr().err
    other_model = tmp_path / "other-model"
    shutil.copytree(tiny_models[0], other_model)
    assert run(audio_args([root], out, other_model, "--resume")) == 2
    assert "model_id" in capsys.readouterr().err
    first_rows = {(r["path"], r["window"]): np.asarray(r["embedding"], np.float32)
                  for p in sorted(parts.glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()}  # fmt: skip

    with pytest.MonkeyPatch.context() as mp:
        second: list = []
        record_sources(mp, second)
        assert run(audio_args([root], out, tiny_models[0], "--resume")) == 1  # the bad file again
    assert not set(second) & done  # finished files are not embedded again
    assert set(second) | done == {*map(str, good), str(bad)}
    assert not parts.exists()

    meta, vectors, _ = load_embeddings(out)
    assert sorted(set(meta["path"])) == sorted(map(str, good))  # every file, once
    assert not meta.duplicated(["path", "window"]).any()
    for path in good:
        rows = meta[meta["path"] == str(path)]
        assert list(rows["window"]) == list(range(len(rows)))
    records = meta.to_dict("records")
    final_rows = {(r["path"], r["window"]): v for r, v in zip(records, vectors, strict=True)}
    # Rows written before the interruption are kept as they were.
    assert first_rows and set(first_rows) <= set(final_rows)
    for key, vec in first_rows.items():
        np.testing.assert_array_equal(final_rows[key], vec)


def test_resume_finished_store(audio_tree, tiny_models, tmp_path, capsys):
    _, good, _ = audio_tree
    out = tmp_path / "f.parquet"
    assert run(audio_args(good[:2], out, tiny_models[0])) == 0
    # Same settings, more files: only the new ones are embedded.
    seen: list = []
    with pytest.MonkeyPatch.context() as mp:
        record_sources(mp, seen)
        assert run(audio_args(good, out, tiny_models[0], "--resume")) == 0
    assert seen == [str(p) for p in good[2:]]
    assert "2 already done" in capsys.readouterr().out
    meta, _, _ = load_embeddings(out)
    assert sorted(set(meta["path"])) == sorted(map(str, good))
    # A finished store with another window is refused too.
    assert run(audio_args(good, out, tiny_models[0], "--resume", "--hop-s", "0.5")) == 2
    assert "hop_s" in capsys.readouterr().err
    assert len(load_embeddings(out)[0]) == len(meta)


@pytest.fixture
def image_tree(tmp_path):
    root = tmp_path / "photos"
    (root / "nested").mkdir(parents=True)
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "rgb.jpg", quality=95)
    Image.new("CMYK", (48, 32), (0, 200, 200, 10)).save(root / "nested" / "cmyk.jpg")
    rgba = np.zeros((30, 30, 4), np.uint8)
    rgba[..., 1] = 180
    rgba[10:, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(root / "nested" / "alpha.png")
    Image.new("L", (25, 35), 120).save(root / "gray.png")
    (root / "nested" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "readme.md").write_text("not walked")
    good = sorted(
        [
            root / "rgb.jpg",
            root / "nested" / "cmyk.jpg",
            root / "nested" / "alpha.png",
            root / "gray.png",
        ]
    )
    return root, good, root / "nested" / "broken.jpg"


def image_args(paths, out, model, *extra):
    return ["embed", "images", *paths, "--out", out, "--image-model", model, "--device", "cpu", "--quiet",
            "--batch-size", "3", *extra]  # fmt: skip


def test_embed_images_folder(image_tree, tiny_models, tiny_image_encoder, tmp_path):
    root, good, bad = image_tree
    out = tmp_path / "img.parquet"
    assert run(image_args([root], out, tiny_models[1])) == 1
    meta, vectors, prov = load_embeddings(out)
    assert set(pq.read_schema(out).names) == {"path", "sha256", "embedding"}
    assert sorted(meta["path"]) == sorted(map(str, good))
    order = [Path(p) for p in meta["path"]]
    assert list(meta["sha256"]) == [sha256(p) for p in order]
    np.testing.assert_allclose(vectors, tiny_image_encoder.embed_images(order), atol=1e-5)
    assert prov["encoder"] == "bioclip" and prov["model_id"] == str(tiny_models[1].resolve())
    assert (
        prov["preprocessing"]["choice"] == "model"
        and prov["environment"]["songsight"] == package_version()
    )
    with (tmp_path / "img.errors.csv").open(newline="") as fh:
        errors = list(csv.DictReader(fh))
    assert [e["path"] for e in errors] == [str(bad)] and "corrupt image" in errors[0]["error"]

    # Resume with the other preprocessing is refused; with the same one, nothing is redone.
    assert run(image_args([root], out, tiny_models[1], "--resume", "--preprocess", "squash")) == 2
    assert run(image_args([root], out, tiny_models[1], "--resume")) == 1
    assert len(load_embeddings(out)[0]) == len(good)


def test_image_resume_after_interruption(image_tree, tiny_models, tmp_path, monkeypatch):
    root, good, _ = image_tree
    out = tmp_path / "ri.parquet"
    original = interrupt_after(monkeypatch, BatchedImageEncoder, "iter_images", 2)
    assert run(image_args([root], out, tiny_models[1])) == 130
    monkeypatch.setattr(BatchedImageEncoder, "iter_images", original)
    assert run(image_args([root], out, tiny_models[1], "--resume")) == 1
    meta, _, _ = load_embeddings(out)
    assert sorted(meta["path"]) == sorted(map(str, good))


def test_cli_subprocess_end_to_end(image_tree, tiny_models, tmp_path):
    root, good, _ = image_tree
    out = tmp_path / "sub.parquet"
    script = Path(sys.executable).with_name("songsight")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "songsight.cli"]
    proc = subprocess.run([*cmd, *map(str, image_args([root], out, tiny_models[1]))],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "4 embedded" in proc.stdout and "1 failed" in proc.stdout
    meta, vectors, _ = load_embeddings(out)
    assert len(meta) == 4 and vectors.shape == (4, 48)
